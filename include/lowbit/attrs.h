// Op attributes: a small name -> value map (ints, floats, bools, strings, int lists, float
// lists, dtypes, tensors). Getters throw ValueError naming the attribute when it is missing or
// has another type.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "lowbit/dtype.h"
#include "lowbit/tensor.h"

namespace lowbit {

class Attr {
 public:
  using Variant = std::variant<int64_t, double, bool, std::string, std::vector<int64_t>,
                               std::vector<double>, DType, Tensor>;
  Attr(int v) : v_(int64_t{v}) {}
  Attr(int64_t v) : v_(v) {}
  Attr(uint64_t v) : v_(static_cast<int64_t>(v)) {}
  Attr(double v) : v_(v) {}
  Attr(float v) : v_(double{v}) {}
  Attr(bool v) : v_(v) {}
  Attr(const char* v) : v_(std::string(v)) {}
  Attr(std::string v) : v_(std::move(v)) {}
  Attr(std::vector<int64_t> v) : v_(std::move(v)) {}
  Attr(std::initializer_list<int64_t> v) : v_(std::vector<int64_t>(v)) {}
  Attr(std::vector<double> v) : v_(std::move(v)) {}
  Attr(DType v) : v_(v) {}
  Attr(Tensor v) : v_(std::move(v)) {}
  const Variant& get() const { return v_; }
  std::string str() const;

 private:
  Variant v_;
};

class Attrs {
 public:
  Attrs() = default;
  Attrs(std::initializer_list<std::pair<const std::string, Attr>> init) : m_(init) {}
  Attrs& set(const std::string& name, Attr v) {
    m_.insert_or_assign(name, std::move(v));
    return *this;
  }
  bool has(const std::string& name) const { return m_.count(name) != 0; }
  int64_t i(const std::string& name) const;
  int64_t i(const std::string& name, int64_t dflt) const { return has(name) ? i(name) : dflt; }
  double f(const std::string& name) const;  // accepts an int too
  double f(const std::string& name, double dflt) const { return has(name) ? f(name) : dflt; }
  bool b(const std::string& name) const;
  bool b(const std::string& name, bool dflt) const { return has(name) ? b(name) : dflt; }
  const std::string& s(const std::string& name) const;
  std::string s(const std::string& name, const std::string& dflt) const {
    return has(name) ? s(name) : dflt;
  }
  const std::vector<int64_t>& ints(const std::string& name) const;
  std::vector<int64_t> ints(const std::string& name, std::vector<int64_t> dflt) const {
    return has(name) ? ints(name) : dflt;
  }
  const std::vector<double>& floats(const std::string& name) const;
  DType dtype(const std::string& name) const;
  const Tensor& tensor(const std::string& name) const;
  const std::map<std::string, Attr>& items() const { return m_; }
  // "axis=1, keepdims=true" (tensors print as their shape).
  std::string str() const;

 private:
  const Attr& find(const std::string& name) const;
  std::map<std::string, Attr> m_;
};

}  // namespace lowbit
