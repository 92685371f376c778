// Shapes: row-major dimension lists. A dimension may be kUnknown (-1) while a graph is built
// (batch or time sizes known only at run time); concrete tensors always have known dims.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace lowbit {

inline constexpr int64_t kUnknown = -1;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) : dims_(dims) {}
  explicit Shape(std::vector<int64_t> dims) : dims_(std::move(dims)) {}

  int rank() const { return static_cast<int>(dims_.size()); }
  // Dimension i; negative i counts from the end (-1 is the last).
  int64_t operator[](int i) const { return dims_[i < 0 ? i + rank() : i]; }
  int64_t& operator[](int i) { return dims_[i < 0 ? i + rank() : i]; }
  const std::vector<int64_t>& dims() const { return dims_; }
  std::vector<int64_t>& dims() { return dims_; }
  // Product of dims (1 for a scalar); kUnknown if any dim is unknown.
  int64_t numel() const;
  bool is_known() const;
  bool operator==(const Shape& o) const { return dims_ == o.dims_; }
  bool operator!=(const Shape& o) const { return dims_ != o.dims_; }
  // "[2,3,?]" (unknown dims print as '?').
  std::string str() const;
  // Normalises an axis in [-rank, rank) to [0, rank); throws ValueError naming `who`.
  int axis(int a, const char* who) const;

 private:
  std::vector<int64_t> dims_;
};

std::ostream& operator<<(std::ostream& os, const Shape& s);

// NumPy broadcasting of two shapes (unknown dims allowed); throws ShapeError naming `who`.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* who);

}  // namespace lowbit
