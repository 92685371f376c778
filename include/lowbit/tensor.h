// Tensor: a dense, row-major, contiguous array with a dtype, over reference-counted storage
// aligned to 64 bytes. Copying a Tensor shares the storage (cheap); clone() copies the data.
// reshape() returns a view over the same storage.
//
//   Tensor x = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
//   Tensor y = x.reshape({3, 2});        // view, shares storage
//   float v = x.at<float>({1, 2});       // 6
//   std::cout << x;                      // Tensor(f32, [2,3]) [[1, 2, 3], [4, 5, 6]]
#pragma once

#include <cstring>
#include <iosfwd>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "lowbit/dtype.h"
#include "lowbit/error.h"
#include "lowbit/shape.h"

namespace lowbit {

// Owns (or borrows) one aligned block of bytes.
class Storage {
 public:
  explicit Storage(size_t bytes);         // owns a 64-byte aligned block
  Storage(void* borrowed, size_t bytes);  // borrows memory owned elsewhere
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  bool owned() const { return owned_; }
  // Exchanges the memory blocks of two owned storages of equal size, so that every tensor on
  // either storage sees the other's data (the executor's double-buffered variable updates).
  // Returns false, changing nothing, when a storage is borrowed or the sizes differ.
  bool swap_buffers(Storage& other);

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  bool owned_ = true;
};

class Tensor {
 public:
  Tensor() = default;  // undefined tensor
  // Uninitialised tensor of the given shape (all dims must be known).
  Tensor(const Shape& shape, DType dtype);

  static Tensor empty(const Shape& shape, DType dtype = DType::kF32) {
    return Tensor(shape, dtype);
  }
  static Tensor zeros(const Shape& shape, DType dtype = DType::kF32);
  // Every element set to `value`, converted to dtype.
  static Tensor full(const Shape& shape, double value, DType dtype = DType::kF32);
  static Tensor scalar(float value) { return full({}, value, DType::kF32); }
  template <class T>
  static Tensor from_vector(const std::vector<T>& data, const Shape& shape);
  // A tensor over memory owned elsewhere; the caller keeps it alive.
  static Tensor wrap(void* data, const Shape& shape, DType dtype);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }

  void* raw() const { return static_cast<char*>(storage_->data()) + offset_; }
  // Typed pointer; throws DTypeError if T does not match dtype().
  template <class T>
  T* data() const {
    if (dtype_of<T>() != dtype_) throw_dtype(dtype_of<T>());
    return static_cast<T*>(raw());
  }
  template <class T>
  std::span<T> span() const {
    return {data<T>(), static_cast<size_t>(numel_)};
  }
  template <class T>
  std::vector<T> to_vector() const {
    auto s = span<T>();
    return {s.begin(), s.end()};
  }
  // Element at a multi-index (bounds-checked; for tests and printing, not for loops).
  template <class T>
  T& at(std::initializer_list<int64_t> index) const {
    return data<T>()[flat_index(index)];
  }
  // The single element of a one-element tensor, converted to T.
  template <class T>
  T item() const;
  // Element i converted to double, whatever the dtype (for printing and tests).
  double get_as_double(int64_t i) const;
  void set_from_double(int64_t i, double v);

  // View with another shape of the same numel; one dim may be -1 (inferred).
  Tensor reshape(const Shape& shape) const;
  Tensor clone() const;
  // Converts to dtype (float -> int truncates toward zero as a C cast; bool is x != 0).
  Tensor to(DType dtype) const;
  // Copies the data of `src` (same shape and dtype) into this tensor's storage.
  void copy_from(const Tensor& src);
  void fill(double value);
  // True when both view the same bytes.
  bool same_storage(const Tensor& o) const {
    return storage_ == o.storage_ && offset_ == o.offset_;
  }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  // "Tensor(f32, [2,3]) [[1, 2, 3], [4, 5, 6]]"; long tensors are elided with "...".
  std::string str(int max_per_dim = 6) const;

 private:
  int64_t flat_index(std::initializer_list<int64_t> index) const;
  [[noreturn]] void throw_dtype(DType want) const;

  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::kF32;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& data, const Shape& shape) {
  Tensor t(shape, dtype_of<T>());
  if (static_cast<int64_t>(data.size()) != t.numel())
    LOWBIT_THROW(ShapeError, "Tensor::from_vector: expected ", t.numel(), " elements for shape ",
                 shape.str(), " but found ", data.size());
  if constexpr (std::is_same_v<T, bool>) {
    for (size_t i = 0; i < data.size(); ++i) t.data<bool>()[i] = data[i];
  } else {
    std::memcpy(t.raw(), data.data(), t.nbytes());
  }
  return t;
}

template <class T>
T Tensor::item() const {
  if (numel_ != 1)
    LOWBIT_THROW(ShapeError, "Tensor::item: expected one element but found shape ", shape_.str());
  return static_cast<T>(get_as_double(0));
}

}  // namespace lowbit
