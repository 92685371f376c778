// Helpers for writing shape rules: each throws the documented exception with a message that
// names the op, the argument, what was expected and what was found.
#pragma once

#include <string>
#include <vector>

#include "lowbit/error.h"
#include "lowbit/op.h"

namespace lowbit::detail {

inline std::string type_str(const ValueType& t) {
  return std::string(dtype_name(t.dtype)) + t.shape.str();
}

// Throws DTypeError unless input i has dtype `want`.
inline void require_dtype(const InferCtx& c, int i, DType want, const char* arg) {
  if (c.in[i].dtype != want)
    LOWBIT_THROW(DTypeError, c.op, ": argument '", arg, "': expected dtype ", dtype_name(want),
                 " but found ", type_str(c.in[i]));
}
inline void require_float(const InferCtx& c, int i, const char* arg) {
  require_dtype(c, i, DType::kF32, arg);
}
inline void require_same_dtype(const InferCtx& c, int i, int j, const char* a, const char* b) {
  if (c.in[i].dtype != c.in[j].dtype)
    LOWBIT_THROW(DTypeError, c.op, ": arguments '", a, "' and '", b,
                 "' must have the same dtype but found ", type_str(c.in[i]), " and ",
                 type_str(c.in[j]));
}
inline void require_rank(const InferCtx& c, int i, int rank, const char* arg) {
  if (c.in[i].shape.rank() != rank)
    LOWBIT_THROW(ShapeError, c.op, ": argument '", arg, "': expected rank ", rank,
                 " but found shape ", c.in[i].shape.str());
}
// Parameter structs of the simple ops' prepare steps (OpDef::prepare), read by their kernels
// with KernelCtx::params<P>().
struct ScalarParam {  // one number attribute (fill value, alpha, rate, ...)
  double value = 0;
};
struct FlagParam {  // one boolean choice
  bool value = false;
};
struct RangeParam {  // two number attributes (min and max)
  double lo = 0, hi = 0;
};
struct AxisParam {  // an axis, normalised against the input's rank
  int axis = 0;
};

// True when two dims can be equal at run time (either unknown, or the same).
inline bool dims_compatible(int64_t a, int64_t b) {
  return a == kUnknown || b == kUnknown || a == b;
}
// The more informative of two compatible dims.
inline int64_t merge_dim(int64_t a, int64_t b) { return a == kUnknown ? b : a; }

}  // namespace lowbit::detail
