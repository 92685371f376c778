#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <numbers>
#include <sstream>

#include "lowbit/attrs.h"
#include "lowbit/dtype.h"
#include "lowbit/error.h"
#include "lowbit/rng.h"
#include "lowbit/shape.h"
#include "lowbit/tensor.h"
#include "lowbit/threads.h"

namespace lowbit {

namespace detail {
void check_failed(const char* file, int line, const char* cond, const std::string& msg) {
  std::fprintf(stderr, "lowbit: check failed at %s:%d: %s %s\n", file, line, cond, msg.c_str());
  std::abort();
}
}  // namespace detail

// ---- dtype ----
size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32:
      return 4;
    case DType::kS8:
      return 1;
    case DType::kU8:
      return 1;
    case DType::kS16:
      return 2;
    case DType::kS32:
      return 4;
    case DType::kS64:
      return 8;
    case DType::kBool:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "f32";
    case DType::kS8:
      return "s8";
    case DType::kU8:
      return "u8";
    case DType::kS16:
      return "s16";
    case DType::kS32:
      return "s32";
    case DType::kS64:
      return "s64";
    case DType::kBool:
      return "bool";
  }
  return "?";
}

DType dtype_from_name(const std::string& name) {
  for (DType t :
       {DType::kF32, DType::kS8, DType::kU8, DType::kS16, DType::kS32, DType::kS64, DType::kBool})
    if (name == dtype_name(t)) return t;
  LOWBIT_THROW(ValueError,
               "dtype_from_name: expected one of f32, s8, u8, s16, s32, s64, bool but found '",
               name, "'");
}

// ---- shape ----
int64_t Shape::numel() const {
  int64_t n = 1;
  for (int64_t d : dims_) {
    if (d < 0) return kUnknown;
    n *= d;
  }
  return n;
}

bool Shape::is_known() const {
  return std::all_of(dims_.begin(), dims_.end(), [](int64_t d) { return d >= 0; });
}

std::string Shape::str() const {
  std::string s = "[";
  for (size_t i = 0; i < dims_.size(); ++i) {
    if (i) s += ",";
    s += dims_[i] < 0 ? std::string("?") : std::to_string(dims_[i]);
  }
  return s + "]";
}

int Shape::axis(int a, const char* who) const {
  int r = rank();
  if (a < -r || a >= r || (r == 0 && a != 0))
    LOWBIT_THROW(ValueError, who, ": axis ", a, " is out of range for a tensor of rank ", r,
                 " (shape ", str(), "); expected an axis in [", -r, ", ", r, ")");
  return a < 0 ? a + r : a;
}

std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.str(); }

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* who) {
  int r = std::max(a.rank(), b.rank());
  std::vector<int64_t> out(r);
  for (int i = 0; i < r; ++i) {
    int ia = a.rank() - r + i, ib = b.rank() - r + i;
    int64_t da = ia >= 0 ? a.dims()[ia] : 1;
    int64_t db = ib >= 0 ? b.dims()[ib] : 1;
    if (da == db) {
      out[i] = da;
    } else if (da == 1) {
      out[i] = db;
    } else if (db == 1) {
      out[i] = da;
    } else if (da == kUnknown) {
      out[i] = db;  // db > 1: the unknown dim must equal it (checked at run time)
    } else if (db == kUnknown) {
      out[i] = da;
    } else {
      LOWBIT_THROW(ShapeError, who, ": shapes ", a.str(), " and ", b.str(),
                   " do not broadcast: dimension ", i - r, " is ", da, " vs ", db,
                   " (expected equal sizes or one of them 1)");
    }
  }
  return Shape(std::move(out));
}

// ---- storage / tensor ----
Storage::Storage(size_t bytes) : bytes_(bytes), owned_(true) {
  size_t n = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  data_ = std::aligned_alloc(64, n);
  if (!data_) throw std::bad_alloc();
}
Storage::Storage(void* borrowed, size_t bytes) : data_(borrowed), bytes_(bytes), owned_(false) {}
Storage::~Storage() {
  if (owned_) std::free(data_);
}
bool Storage::swap_buffers(Storage& other) {
  if (!owned_ || !other.owned_ || bytes_ != other.bytes_) return false;
  std::swap(data_, other.data_);
  return true;
}

Tensor::Tensor(const Shape& shape, DType dtype) : shape_(shape), dtype_(dtype) {
  if (!shape.is_known())
    LOWBIT_THROW(ShapeError, "Tensor: expected a shape with known dims but found ", shape.str());
  numel_ = shape.numel();
  storage_ = std::make_shared<Storage>(nbytes());
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t(shape, dtype);
  std::memset(t.raw(), 0, t.nbytes());
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype) {
  Tensor t(shape, dtype);
  t.fill(value);
  return t;
}

Tensor Tensor::wrap(void* data, const Shape& shape, DType dtype) {
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.numel_ = shape.numel();
  t.storage_ = std::make_shared<Storage>(data, t.nbytes());
  return t;
}

void Tensor::fill(double value) {
  dispatch_dtype(dtype_, [&](auto tag) {
    using T = decltype(tag);
    T v = static_cast<T>(value);
    T* p = static_cast<T*>(raw());
    std::fill(p, p + numel_, v);
  });
}

double Tensor::get_as_double(int64_t i) const {
  return dispatch_dtype(dtype_, [&](auto tag) -> double {
    using T = decltype(tag);
    return static_cast<double>(static_cast<const T*>(raw())[i]);
  });
}

void Tensor::set_from_double(int64_t i, double v) {
  dispatch_dtype(dtype_, [&](auto tag) {
    using T = decltype(tag);
    static_cast<T*>(raw())[i] = static_cast<T>(v);
  });
}

int64_t Tensor::flat_index(std::initializer_list<int64_t> index) const {
  if (static_cast<int>(index.size()) != rank())
    LOWBIT_THROW(ShapeError, "Tensor::at: expected ", rank(), " indices for shape ", shape_.str(),
                 " but found ", index.size());
  int64_t flat = 0;
  int i = 0;
  for (int64_t ix : index) {
    if (ix < 0 || ix >= shape_[i])
      LOWBIT_THROW(ValueError, "Tensor::at: index ", ix, " out of range for dimension ", i,
                   " of shape ", shape_.str());
    flat = flat * shape_[i] + ix;
    ++i;
  }
  return flat;
}

void Tensor::throw_dtype(DType want) const {
  LOWBIT_THROW(DTypeError, "Tensor::data: expected dtype ", dtype_name(want), " but the tensor is ",
               dtype_name(dtype_), " ", shape_.str());
}

Tensor Tensor::reshape(const Shape& shape) const {
  std::vector<int64_t> dims = shape.dims();
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] == -1) {
      if (infer >= 0)
        LOWBIT_THROW(ShapeError, "reshape: at most one dimension may be -1 but found ",
                     shape.str());
      infer = static_cast<int>(i);
    } else if (dims[i] < 0) {
      LOWBIT_THROW(ShapeError, "reshape: negative dimension in ", shape.str());
    } else {
      known *= dims[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || numel_ % known != 0)
      LOWBIT_THROW(ShapeError, "reshape: cannot reshape ", shape_.str(), " (", numel_,
                   " elements) into ", shape.str());
    dims[infer] = numel_ / known;
  }
  Shape s(dims);
  if (s.numel() != numel_)
    LOWBIT_THROW(ShapeError, "reshape: cannot reshape ", shape_.str(), " (", numel_,
                 " elements) into ", s.str(), " (", s.numel(), " elements)");
  Tensor t = *this;
  t.shape_ = std::move(s);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t(shape_, dtype_);
  std::memcpy(t.raw(), raw(), nbytes());
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return clone();
  Tensor t(shape_, dtype);
  dispatch_dtype(dtype_, [&](auto stag) {
    using S = decltype(stag);
    dispatch_dtype(dtype, [&](auto dtag) {
      using D = decltype(dtag);
      const S* s = static_cast<const S*>(raw());
      D* d = static_cast<D*>(t.raw());
      for (int64_t i = 0; i < numel_; ++i) {
        if constexpr (std::is_same_v<D, bool>) {
          d[i] = s[i] != S{};
        } else {
          d[i] = static_cast<D>(s[i]);
        }
      }
    });
  });
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  if (src.dtype_ != dtype_ || src.numel_ != numel_)
    LOWBIT_THROW(ShapeError, "Tensor::copy_from: expected ", dtype_name(dtype_), shape_.str(),
                 " but found ", dtype_name(src.dtype_), src.shape_.str());
  if (same_storage(src)) return;
  std::memmove(raw(), src.raw(), nbytes());
}

namespace {
void print_rec(std::ostream& os, const Tensor& t, int dim, int64_t offset, int64_t stride_below,
               int maxn) {
  if (t.rank() == 0) {
    os << t.get_as_double(0);
    return;
  }
  int64_t n = t.shape()[dim];
  int64_t inner = stride_below / std::max<int64_t>(n, 1);
  os << "[";
  for (int64_t i = 0; i < n; ++i) {
    if (n > maxn && i == maxn / 2) {
      os << "...";
      i = n - maxn / 2 - 1;
      if (i + 1 < n) os << ", ";
      continue;
    }
    if (dim + 1 == t.rank()) {
      double v = t.get_as_double(offset + i);
      if (t.dtype() == DType::kBool)
        os << (v != 0 ? "true" : "false");
      else
        os << v;
    } else {
      print_rec(os, t, dim + 1, offset + i * inner, inner, maxn);
    }
    if (i + 1 < n) os << ", ";
  }
  os << "]";
}
}  // namespace

std::string Tensor::str(int max_per_dim) const {
  std::ostringstream os;
  if (!defined()) return "Tensor(undefined)";
  os << "Tensor(" << dtype_name(dtype_) << ", " << shape_.str() << ") ";
  os.precision(6);
  print_rec(os, *this, 0, 0, numel_, max_per_dim);
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

// ---- attrs ----
std::string Attr::str() const {
  std::ostringstream os;
  std::visit(
      [&](const auto& v) {
        using V = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<V, bool>) {
          os << (v ? "true" : "false");
        } else if constexpr (std::is_same_v<V, std::vector<int64_t>> ||
                             std::is_same_v<V, std::vector<double>>) {
          os << "[";
          for (size_t i = 0; i < v.size(); ++i) os << (i ? "," : "") << v[i];
          os << "]";
        } else if constexpr (std::is_same_v<V, DType>) {
          os << dtype_name(v);
        } else if constexpr (std::is_same_v<V, Tensor>) {
          os << "tensor" << dtype_name(v.dtype()) << v.shape().str();
        } else {
          os << v;
        }
      },
      v_);
  return os.str();
}

const Attr& Attrs::find(const std::string& name) const {
  auto it = m_.find(name);
  if (it == m_.end())
    LOWBIT_THROW(ValueError, "missing attribute '", name, "' (have: ", str(), ")");
  return it->second;
}

namespace {
template <class V>
const V& attr_as(const Attr& a, const std::string& name, const char* want) {
  const V* p = std::get_if<V>(&a.get());
  if (!p)
    LOWBIT_THROW(ValueError, "attribute '", name, "': expected ", want, " but found ", a.str());
  return *p;
}
}  // namespace

int64_t Attrs::i(const std::string& name) const {
  const Attr& a = find(name);
  if (auto* b = std::get_if<bool>(&a.get())) return *b;
  return attr_as<int64_t>(a, name, "an integer");
}
double Attrs::f(const std::string& name) const {
  const Attr& a = find(name);
  if (auto* p = std::get_if<int64_t>(&a.get())) return static_cast<double>(*p);
  return attr_as<double>(a, name, "a number");
}
bool Attrs::b(const std::string& name) const {
  const Attr& a = find(name);
  if (auto* p = std::get_if<int64_t>(&a.get())) return *p != 0;
  return attr_as<bool>(a, name, "a bool");
}
const std::string& Attrs::s(const std::string& name) const {
  return attr_as<std::string>(find(name), name, "a string");
}
const std::vector<int64_t>& Attrs::ints(const std::string& name) const {
  return attr_as<std::vector<int64_t>>(find(name), name, "a list of integers");
}
const std::vector<double>& Attrs::floats(const std::string& name) const {
  return attr_as<std::vector<double>>(find(name), name, "a list of numbers");
}
DType Attrs::dtype(const std::string& name) const {
  return attr_as<DType>(find(name), name, "a dtype");
}
const Tensor& Attrs::tensor(const std::string& name) const {
  return attr_as<Tensor>(find(name), name, "a tensor");
}
std::string Attrs::str() const {
  std::string s;
  for (const auto& [k, v] : m_) {
    if (!s.empty()) s += ", ";
    s += k + "=" + v.str();
  }
  return s;
}

// ---- threads ----
void set_num_threads(int n) {
  if (n < 1) LOWBIT_THROW(ValueError, "set_num_threads: expected n >= 1 but found ", n);
  omp_set_num_threads(n);
}
int num_threads() { return omp_get_max_threads(); }

// ---- rng ----
std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 2> key, std::array<uint32_t, 4> ctr) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(kM0) * ctr[0];
    uint64_t p1 = static_cast<uint64_t>(kM1) * ctr[2];
    uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr = {hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0};
    key[0] += kW0;
    key[1] += kW1;
  }
  return ctr;
}

float philox_uniform(uint64_t seed, uint64_t step, uint64_t index) {
  auto r = philox4x32({static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)},
                      {static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                       static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32)});
  return static_cast<float>(r[0] >> 8) * (1.0f / 16777216.0f);
}

uint32_t Rng::next_u32() {
  auto r = philox4x32({static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32)},
                      {static_cast<uint32_t>(counter_), static_cast<uint32_t>(counter_ >> 32),
                       0xA5A5A5A5u, 0x5A5A5A5Au});
  ++counter_;
  return r[0];
}
float Rng::uniform() { return static_cast<float>(next_u32() >> 8) * (1.0f / 16777216.0f); }
float Rng::uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }
float Rng::normal() {
  float u1 = std::max(uniform(), 1e-7f);
  float u2 = uniform();
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(2.0f * std::numbers::pi_v<float> * u2);
}

}  // namespace lowbit
