// Elementwise ops: arithmetic, math functions, activations, comparisons, select, cast; plus the
// broadcasting helpers sum_like / broadcast_like / fill_like / reshape_like used by gradients.
#include <cmath>
#include <limits>
#include <numbers>
#include <type_traits>

#include "lowbit/ops.h"
#include "ops/elementwise_common.h"
#include "ops/families.h"

namespace lowbit::detail {

namespace {
struct AddOp {
  template <class T>
  T operator()(T a, T b) const {
    return static_cast<T>(a + b);
  }
};
struct SubOp {
  template <class T>
  T operator()(T a, T b) const {
    return static_cast<T>(a - b);
  }
};
struct MulOp {
  template <class T>
  T operator()(T a, T b) const {
    return static_cast<T>(a * b);
  }
};
struct DivOp {
  template <class T>
  T operator()(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>)
      return a / b;
    else
      return b == 0 ? T{0} : static_cast<T>(a / b);
  }
};
struct PowOp {
  float operator()(float a, float b) const { return std::pow(a, b); }
};
// NaN in either operand propagates (as numpy.maximum); ties pick a.
struct MaximumOp {
  template <class T>
  T operator()(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>)
      if (std::isnan(a)) return a;
    return a >= b ? a : b;
  }
};
struct MinimumOp {
  template <class T>
  T operator()(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>)
      if (std::isnan(a)) return a;
    return a <= b ? a : b;
  }
};
struct EqualOp {
  template <class T>
  bool operator()(T a, T b) const {
    return a == b;
  }
};
struct NotEqualOp {
  template <class T>
  bool operator()(T a, T b) const {
    return a != b;
  }
};
struct LessOp {
  template <class T>
  bool operator()(T a, T b) const {
    return a < b;
  }
};
struct LessEqualOp {
  template <class T>
  bool operator()(T a, T b) const {
    return a <= b;
  }
};
struct GreaterOp {
  template <class T>
  bool operator()(T a, T b) const {
    return a > b;
  }
};
struct GreaterEqualOp {
  template <class T>
  bool operator()(T a, T b) const {
    return a >= b;
  }
};
struct LogicalAndOp {
  template <class T>
  bool operator()(T a, T b) const {
    return static_cast<bool>(a) && static_cast<bool>(b);
  }
};
struct LogicalOrOp {
  template <class T>
  bool operator()(T a, T b) const {
    return static_cast<bool>(a) || static_cast<bool>(b);
  }
};

// Float unary kernels. Each is the definition of its op (docs in include/lowbit/ops/elementwise.h).
struct ExpOp {
  float operator()(float x) const { return std::exp(x); }
};
struct LogOp {
  float operator()(float x) const { return std::log(x); }
};
struct SqrtOp {
  float operator()(float x) const { return std::sqrt(x); }
};
struct RsqrtOp {
  float operator()(float x) const { return 1.0f / std::sqrt(x); }
};
struct TanhOp {
  float operator()(float x) const { return std::tanh(x); }
};
struct ErfOp {
  float operator()(float x) const { return std::erf(x); }
};
// exp(-|x|) never overflows: 1/(1+e) for x >= 0, e/(1+e) for x < 0.
struct SigmoidOp {
  float operator()(float x) const {
    const float e = std::exp(-std::fabs(x));
    const float r = 1.0f / (1.0f + e);
    return x >= 0 ? r : e * r;
  }
};
// max(x,0) + log1p(exp(-|x|)): exact to rounding for every x, no overflow.
struct SoftplusOp {
  float operator()(float x) const {
    return std::max(x, 0.0f) + std::log1p(std::exp(-std::fabs(x)));
  }
};
// Written so that NaN propagates (NaN < 0 and NaN > 6 are both false).
struct ReluOp {
  float operator()(float x) const { return x < 0 ? 0.0f : x; }
};
struct Relu6Op {
  float operator()(float x) const { return x < 0 ? 0.0f : (x > 6 ? 6.0f : x); }
};

constexpr float kSqrtHalf = 0.7071067811865476f;       // 1/sqrt(2)
constexpr double kInvSqrt2Pi = 0.3989422804014327;     // 1/sqrt(2*pi)
constexpr float kGeluTanhScale = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluTanhCubic = 0.044715f;
constexpr double kTwoOverSqrtPi = 1.1283791670955126;  // 2/sqrt(pi), erf'(0)

bool is_f32(const Value& v) { return v.dtype() == DType::kF32; }
Value scalar(const Value& like, double v) { return ops::scalar_like(like, v); }
// dy where mask holds, 0 elsewhere (mask broadcasts against dy).
Value masked(const Value& mask, const Value& dy) { return ops::where(mask, dy, scalar(dy, 0)); }
Value gt(const Value& x, double v) { return ops::greater(x, scalar(x, v)); }
Value ge(const Value& x, double v) { return ops::greater_equal(x, scalar(x, v)); }
Value lt(const Value& x, double v) { return ops::less(x, scalar(x, v)); }
Value le(const Value& x, double v) { return ops::less_equal(x, scalar(x, v)); }

// A reference kernel applying f (a generic lambda) to every element of a non-bool input.
template <class F>
KernelFn numeric_unary_kernel(F f) {
  return [f](const KernelCtx& k) {
    dispatch_dtype(k.in[0].dtype(), [&](auto tag) {
      using T = decltype(tag);
      if constexpr (std::is_same_v<T, bool>) {
        LOWBIT_CHECK(false, "bool input to a numeric op");
      } else {
        unary_loop<T, T>(k.in[0], k.out[0], [&](T v) { return static_cast<T>(f(v)); });
      }
    });
  };
}

// Element conversion for cast: float -> integer truncates toward zero and saturates at the
// target's range (NaN -> 0), so that no input is undefined behaviour; integer -> narrower
// integer wraps (two's complement); anything -> bool is x != 0.
template <class S, class D>
D convert(S v) {
  if constexpr (std::is_same_v<D, bool>) {
    return v != S{};
  } else if constexpr (std::is_floating_point_v<S> && std::is_integral_v<D>) {
    // Selects rather than branches, so the loop vectorizes. lo and hi are exact powers of two
    // or small integers in float (hi rounds up to 2^31 / 2^63 for s32 / s64): v >= hi saturates,
    // and any v in (lo, hi) truncates to a value in range.
    constexpr S lo = static_cast<S>(std::numeric_limits<D>::lowest());
    constexpr S hi = static_cast<S>(std::numeric_limits<D>::max());
    const S c = v < lo ? lo : (v == v ? v : S{0});  // NaN -> 0
    return c >= hi ? std::numeric_limits<D>::max() : static_cast<D>(c);
  } else {
    return static_cast<D>(v);
  }
}

// Shape rules read their op's attributes once, so that a missing or mistyped attribute is a
// ValueError naming the op when the node is built; kernels then read them without failing.
template <class F>
auto read_attrs(const InferCtx& c, F read) {
  try {
    return read(c.attrs);
  } catch (const ValueError& e) {
    LOWBIT_THROW(ValueError, c.op, ": ", e.what());
  }
}

void check_hard_sigmoid_mode(const InferCtx& c) {
  const std::string mode = read_attrs(c, [](const Attrs& a) { return a.s("mode", "keras3"); });
  if (mode != "keras3" && mode != "tf_keras")
    LOWBIT_THROW(ValueError, c.op,
                 ": attribute 'mode': expected \"keras3\" or \"tf_keras\" but found \"", mode,
                 "\"");
}
}  // namespace

void register_broadcast_helpers() {
  register_op({.name = "sum_like",
               .num_inputs = 2,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 // x must broadcast from `like`'s shape: check via broadcast_shapes.
                 Shape b = broadcast_shapes(c.in[0].shape, c.in[1].shape, c.op.c_str());
                 if (b.rank() != c.in[0].shape.rank())
                   LOWBIT_THROW(ShapeError, c.op, ": cannot sum ", c.in[0].shape.str(), " down to ",
                                c.in[1].shape.str());
                 return {{c.in[0].dtype, c.in[1].shape}};
               },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::broadcast_like(g.dy(), g.in[0]), Value()};
               },
               .reference =
                   [](const KernelCtx& k) {
                     const Tensor& x = k.in[0];
                     Tensor& out = k.out[0];
                     dispatch_dtype(x.dtype(), [&](auto tag) {
                       using T = decltype(tag);
                       if constexpr (std::is_same_v<T, bool>) {
                         LOWBIT_CHECK(false, "sum_like on bool");
                       } else {
                         using Acc =
                             std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;
                         std::vector<Acc> acc(out.numel(), Acc{0});
                         const T* px = static_cast<const T*>(x.raw());
                         if (out.numel() == x.numel()) {
                           for (int64_t i = 0; i < x.numel(); ++i) acc[i] = px[i];
                         } else {
                           const std::vector<int64_t> st[1] = {
                               kernels::broadcast_strides(out.shape(), x.shape())};
                           kernels::for_each_broadcast<1>(
                               x.shape(), st, [&](int64_t i, int64_t o) { acc[o] += px[i]; });
                         }
                         T* po = static_cast<T*>(out.raw());
                         for (int64_t i = 0; i < out.numel(); ++i) po[i] = static_cast<T>(acc[i]);
                       }
                     });
                   },
               .doc = "sum x over the broadcast axes down to like's shape"});
  register_op({.name = "broadcast_like",
               .num_inputs = 2,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 Shape b = broadcast_shapes(c.in[0].shape, c.in[1].shape, c.op.c_str());
                 if (b.rank() != c.in[1].shape.rank())
                   LOWBIT_THROW(ShapeError, c.op, ": cannot broadcast ", c.in[0].shape.str(),
                                " to ", c.in[1].shape.str());
                 for (int d = 0; d < b.rank(); ++d)
                   if (b[d] != c.in[1].shape[d] && c.in[1].shape[d] != kUnknown)
                     LOWBIT_THROW(ShapeError, c.op, ": cannot broadcast ", c.in[0].shape.str(),
                                  " to ", c.in[1].shape.str());
                 return {{c.in[0].dtype, c.in[1].shape}};
               },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::sum_like(g.dy(), g.in[0]), Value()};
               },
               .reference =
                   [](const KernelCtx& k) {
                     const Tensor& x = k.in[0];
                     Tensor& out = k.out[0];
                     const size_t es = dtype_size(x.dtype());
                     const char* px = static_cast<const char*>(x.raw());
                     char* po = static_cast<char*>(out.raw());
                     const std::vector<int64_t> st[1] = {
                         kernels::broadcast_strides(x.shape(), out.shape())};
                     // A constant-size memcpy compiles to one move; a run-time size is a libc
                     // call per element.
                     auto copy = [&]<size_t kEs>() {
                       kernels::for_each_broadcast<1>(out.shape(), st, [&](int64_t o, int64_t i) {
                         std::memcpy(po + o * kEs, px + i * kEs, kEs);
                       });
                     };
                     switch (es) {
                       case 1:
                         return copy.template operator()<1>();
                       case 4:
                         return copy.template operator()<4>();
                       case 8:
                         return copy.template operator()<8>();
                       default:
                         kernels::for_each_broadcast<1>(out.shape(), st, [&](int64_t o, int64_t i) {
                           std::memcpy(po + o * es, px + i * es, es);
                         });
                     }
                   },
               .doc = "broadcast x to like's shape"});
  register_op(
      {.name = "fill_like",
       .num_inputs = 1,
       .infer = [](const InferCtx& c) -> std::vector<ValueType> { return {c.in[0]}; },
       .grad = [](const GradCtx&) -> std::vector<Value> { return {Value()}; },
       .prepare = [](const PrepareCtx& c) -> std::any { return ScalarParam{c.attrs.f("value")}; },
       .reference = [](const KernelCtx& k) { k.out[0].fill(k.params<ScalarParam>().value); },
       .doc = "a tensor of like's shape and dtype filled with a value"});
  register_op({.name = "reshape_like",
               .num_inputs = 2,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 int64_t a = c.in[0].shape.numel(), b = c.in[1].shape.numel();
                 if (a != kUnknown && b != kUnknown && a != b)
                   LOWBIT_THROW(ShapeError, c.op, ": cannot reshape ", c.in[0].shape.str(), " to ",
                                c.in[1].shape.str());
                 return {{c.in[0].dtype, c.in[1].shape}};
               },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::reshape_like(g.dy(), g.in[0]), Value()};
               },
               .reference =
                   [](const KernelCtx& k) {
                     std::memcpy(k.out[0].raw(), k.in[0].raw(), k.out[0].nbytes());
                   },
               .view_of_input = 0,
               .doc = "reshape x to like's shape (a view)"});
}

// abs, square, sign: every numeric dtype; exp, log, ...: f32.
void register_math_ops() {
  register_op({.name = "abs",
               .num_inputs = 1,
               .infer = [](const InferCtx& c) { return infer_unary(c, DTypes::kNumeric); },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 if (!is_f32(g.in[0])) return {Value()};
                 return {g.dy() * ops::sign(g.in[0])};
               },
               .reference = numeric_unary_kernel([](auto v) {
                 using T = decltype(v);
                 if constexpr (std::is_floating_point_v<T>) {
                   return std::fabs(v);
                 } else if constexpr (std::is_signed_v<T>) {
                   // Through unsigned so that abs(min) wraps to min instead of overflowing.
                   using U = std::make_unsigned_t<T>;
                   return static_cast<T>(v < 0 ? static_cast<U>(U{0} - static_cast<U>(v))
                                               : static_cast<U>(v));
                 } else {
                   return v;
                 }
               }),
               .doc = "|x|"});
  register_op({.name = "square",
               .num_inputs = 1,
               .infer = [](const InferCtx& c) { return infer_unary(c, DTypes::kNumeric); },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 if (!is_f32(g.in[0])) return {Value()};
                 return {g.dy() * g.in[0] * 2.0};
               },
               .reference = numeric_unary_kernel([](auto v) {
                 using T = decltype(v);
                 if constexpr (std::is_floating_point_v<T>) {
                   return v * v;
                 } else {
                   // Unsigned product: overflow wraps instead of being undefined.
                   using U = std::make_unsigned_t<T>;
                   return static_cast<T>(static_cast<U>(v) * static_cast<U>(v));
                 }
               }),
               .doc = "x * x"});
  register_op({.name = "sign",
               .num_inputs = 1,
               .infer = [](const InferCtx& c) { return infer_unary(c, DTypes::kNumeric); },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 if (!is_f32(g.in[0])) return {Value()};
                 return {ops::zeros_like(g.in[0])};
               },
               .reference = numeric_unary_kernel([](auto v) {
                 using T = decltype(v);
                 if constexpr (std::is_signed_v<T>) {
                   return v > 0 ? T{1} : (v < 0 ? T{-1} : v);  // keeps 0, -0 and NaN
                 } else {
                   return v > 0 ? T{1} : T{0};
                 }
               }),
               .doc = "-1, 0 or 1 by the sign of x"});
  register_unary_float<ExpOp>(
      "exp", [](const GradCtx& g) -> std::vector<Value> { return {g.dy() * g.out[0]}; }, "e^x");
  register_unary_float<LogOp>(
      "log", [](const GradCtx& g) -> std::vector<Value> { return {g.dy() / g.in[0]}; },
      "natural logarithm");
  register_unary_float<SqrtOp>(
      "sqrt", [](const GradCtx& g) -> std::vector<Value> { return {g.dy() / g.out[0] * 0.5}; },
      "square root");
  register_unary_float<RsqrtOp>(
      "rsqrt",
      [](const GradCtx& g) -> std::vector<Value> {
        const Value& y = g.out[0];
        return {g.dy() * y * y * y * -0.5};
      },
      "1 / sqrt(x)");
  register_unary_float<ErfOp>(
      "erf",
      [](const GradCtx& g) -> std::vector<Value> {
        const Value& x = g.in[0];
        return {g.dy() * ops::exp(ops::neg(ops::square(x))) * kTwoOverSqrtPi};
      },
      "the error function");
  register_binary<PowOp, DTypes::kFloat>(
      "pow",
      [](const GradCtx& g) -> std::vector<Value> {
        // TF's convention: d/db uses log(a) only where a > 0 (0 elsewhere).
        const Value &a = g.in[0], &b = g.in[1];
        Value dy = g.dy();
        Value da = ops::sum_like(dy * b * ops::pow(a, b - 1.0), a);
        Value pos = gt(a, 0);
        Value log_a = ops::where(pos, ops::log(ops::where(pos, a, scalar(a, 1))), scalar(a, 0));
        Value db = ops::sum_like(dy * g.out[0] * log_a, b);
        return {da, db};
      },
      "a ^ b");
  register_binary<MaximumOp, DTypes::kNumeric>(
      "maximum",
      [](const GradCtx& g) -> std::vector<Value> {
        if (!is_f32(g.in[0])) return {Value(), Value()};
        // Ties go to a (TF: greater_equal selects a).
        Value pick_a = ops::greater_equal(g.in[0], g.in[1]);
        Value dy = g.dy();
        return {ops::sum_like(masked(pick_a, dy), g.in[0]),
                ops::sum_like(ops::where(pick_a, scalar(dy, 0), dy), g.in[1])};
      },
      "max(a, b)");
  register_binary<MinimumOp, DTypes::kNumeric>(
      "minimum",
      [](const GradCtx& g) -> std::vector<Value> {
        if (!is_f32(g.in[0])) return {Value(), Value()};
        // Ties go to a (TF: less_equal selects a).
        Value pick_a = ops::less_equal(g.in[0], g.in[1]);
        Value dy = g.dy();
        return {ops::sum_like(masked(pick_a, dy), g.in[0]),
                ops::sum_like(ops::where(pick_a, scalar(dy, 0), dy), g.in[1])};
      },
      "min(a, b)");
}

void register_activation_ops() {
  register_unary_float<TanhOp>(
      "tanh",
      [](const GradCtx& g) -> std::vector<Value> {
        return {g.dy() * (1.0 - ops::square(g.out[0]))};
      },
      "hyperbolic tangent");
  register_unary_float<SigmoidOp>(
      "sigmoid",
      [](const GradCtx& g) -> std::vector<Value> {
        const Value& y = g.out[0];
        return {g.dy() * y * (1.0 - y)};
      },
      "1 / (1 + e^-x)");
  register_unary_float<SoftplusOp>(
      "softplus",
      [](const GradCtx& g) -> std::vector<Value> { return {g.dy() * ops::sigmoid(g.in[0])}; },
      "log(1 + e^x)");
  register_unary_float<ReluOp>(
      "relu",
      [](const GradCtx& g) -> std::vector<Value> {
        return {ops::relu_backward(g.out[0], g.dy())};  // y > 0 exactly where x > 0
      },
      "max(x, 0)");
  register_unary_float<Relu6Op>(
      "relu6",
      [](const GradCtx& g) -> std::vector<Value> {
        return {ops::relu6_backward(g.out[0], g.dy())};  // 0 < y < 6 exactly where 0 < x < 6
      },
      "min(max(x, 0), 6)");
  // Fused gradients of relu / relu6 (one pass, no bool temporary). Linear in dy.
  register_op({.name = "relu_backward",
               .num_inputs = 2,
               .infer = [](const InferCtx& c) { return infer_binary(c, DTypes::kFloat); },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {Value(), ops::sum_like(ops::relu_backward(g.in[0], g.dy()), g.in[1])};
               },
               .reference =
                   [](const KernelCtx& k) {
                     binary_loop<float, float>(k.in[0], k.in[1], k.out[0], [](float y, float dy) {
                       return select_value(y > 0.0f, dy, 0.0f);
                     });
                   },
               .doc = "relu gradient: dy where y > 0, else 0"});
  register_op({.name = "relu6_backward",
               .num_inputs = 2,
               .infer = [](const InferCtx& c) { return infer_binary(c, DTypes::kFloat); },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {Value(), ops::sum_like(ops::relu6_backward(g.in[0], g.dy()), g.in[1])};
               },
               .reference =
                   [](const KernelCtx& k) {
                     binary_loop<float, float>(k.in[0], k.in[1], k.out[0], [](float y, float dy) {
                       return select_value(y > 0.0f && y < 6.0f, dy, 0.0f);
                     });
                   },
               .doc = "relu6 gradient: dy where 0 < y < 6, else 0"});
  register_op({.name = "gelu",
               .num_inputs = 1,
               .infer =
                   [](const InferCtx& c) {
                     read_attrs(c, [](const Attrs& a) { return a.b("approximate", false); });
                     return infer_unary(c, DTypes::kFloat);
                   },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 const Value& x = g.in[0];
                 if (!g.attrs.b("approximate", false)) {
                   // Phi(x) + x * phi(x)
                   Value cdf = (ops::erf(x * static_cast<double>(kSqrtHalf)) + 1.0) * 0.5;
                   Value pdf = ops::exp(ops::square(x) * -0.5) * kInvSqrt2Pi;
                   return {g.dy() * (cdf + x * pdf)};
                 }
                 // y = x/2 (1 + tanh(u)), u = s (x + c x^3): y' = (1 + t)/2 + x/2 (1 - t^2) u'
                 const double s = kGeluTanhScale, c = kGeluTanhCubic;
                 Value x2 = ops::square(x);
                 Value t = ops::tanh((x + x * x2 * c) * s);
                 Value du = (x2 * (3 * c) + 1.0) * s;
                 return {g.dy() * ((t + 1.0) * 0.5 + x * 0.5 * (1.0 - ops::square(t)) * du)};
               },
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return FlagParam{c.attrs.b("approximate", false)};
               },
               .reference =
                   [](const KernelCtx& k) {
                     if (k.params<FlagParam>().value) {
                       // 0.5 (1 + tanh(u)) = sigmoid(2u): no cancellation for x << 0.
                       unary_loop<float, float>(k.in[0], k.out[0], [](float x) {
                         const float u = kGeluTanhScale * (x + kGeluTanhCubic * x * x * x);
                         return x * SigmoidOp{}(2.0f * u);
                       });
                     } else {
                       // erfc(-x/sqrt2) = 1 + erf(x/sqrt2), without cancellation for x << 0.
                       unary_loop<float, float>(k.in[0], k.out[0], [](float x) {
                         return 0.5f * x * std::erfc(-x * kSqrtHalf);
                       });
                     }
                   },
               .doc = "Gaussian error linear unit"});
  register_op({.name = "hard_sigmoid",
               .num_inputs = 1,
               .infer =
                   [](const InferCtx& c) {
                     check_hard_sigmoid_mode(c);
                     return infer_unary(c, DTypes::kFloat);
                   },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 // The masks recompute the kernel's inner value with the same f32 ops, so the
                 // slope region matches the forward pass exactly.
                 const Value& x = g.in[0];
                 if (g.attrs.s("mode", "keras3") == "keras3") {
                   Value z = x + 3.0;  // relu6 convention: open interval
                   return {masked(ops::logical_and(gt(z, 0), lt(z, 6)), g.dy() / 6.0)};
                 }
                 Value z = x * 0.2 + 0.5;  // clip_by_value convention: closed interval
                 return {masked(ops::logical_and(ge(z, 0), le(z, 1)), g.dy() * 0.2)};
               },
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return FlagParam{c.attrs.s("mode", "keras3") == "keras3"};
               },
               .reference =
                   [](const KernelCtx& k) {
                     if (k.params<FlagParam>().value) {
                       unary_loop<float, float>(k.in[0], k.out[0], [](float x) {
                         const float z = x + 3.0f;
                         const float r = select_value(z > 6, 6.0f, z);
                         return select_value(z < 0, 0.0f, r) / 6.0f;
                       });
                     } else {
                       unary_loop<float, float>(k.in[0], k.out[0], [](float x) {
                         const float z = x * 0.2f + 0.5f;
                         return select_value(z < 0, 0.0f, select_value(z > 1, 1.0f, z));
                       });
                     }
                   },
               .doc = "piecewise-linear sigmoid (Keras 3 or tf.keras slope)"});
  register_op({.name = "elu",
               .num_inputs = 1,
               .infer =
                   [](const InferCtx& c) {
                     read_attrs(c, [](const Attrs& a) { return a.f("alpha", 1.0); });
                     return infer_unary(c, DTypes::kFloat);
                   },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 // x <= 0: d/dx alpha (e^x - 1) = alpha e^x = y + alpha
                 const double alpha = g.attrs.f("alpha", 1.0);
                 Value dy = g.dy();
                 return {ops::where(gt(g.in[0], 0), dy, dy * (g.out[0] + alpha))};
               },
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return ScalarParam{c.attrs.f("alpha", 1.0)};
               },
               .reference =
                   [](const KernelCtx& k) {
                     const float alpha = static_cast<float>(k.params<ScalarParam>().value);
                     unary_loop<float, float>(k.in[0], k.out[0], [alpha](float x) {
                       return x > 0 ? x : alpha * std::expm1(x);
                     });
                   },
               .doc = "x if x > 0 else alpha (e^x - 1)"});
  register_op({.name = "leaky_relu",
               .num_inputs = 1,
               .infer =
                   [](const InferCtx& c) {
                     read_attrs(c, [](const Attrs& a) { return a.f("alpha", 0.2); });
                     return infer_unary(c, DTypes::kFloat);
                   },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 const double alpha = g.attrs.f("alpha", 0.2);
                 Value dy = g.dy();
                 return {ops::where(gt(g.in[0], 0), dy, dy * alpha)};
               },
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return ScalarParam{c.attrs.f("alpha", 0.2)};
               },
               .reference =
                   [](const KernelCtx& k) {
                     const float alpha = static_cast<float>(k.params<ScalarParam>().value);
                     unary_loop<float, float>(k.in[0], k.out[0], [alpha](float x) {
                       return select_value(x > 0, x, alpha * x);
                     });
                   },
               .doc = "x if x > 0 else alpha x"});
  register_op(
      {.name = "clip",
       .num_inputs = 1,
       .infer =
           [](const InferCtx& c) {
             const double lo = read_attrs(c, [](const Attrs& a) { return a.f("min"); });
             const double hi = read_attrs(c, [](const Attrs& a) { return a.f("max"); });
             if (!(lo <= hi))
               LOWBIT_THROW(ValueError, c.op,
                            ": attributes 'min' and 'max': expected min <= max but found min=", lo,
                            ", max=", hi);
             return infer_unary(c, DTypes::kFloat);
           },
       .grad = [](const GradCtx& g) -> std::vector<Value> {
         // TF clip_by_value: the gradient passes on the closed interval [min, max].
         const Value& x = g.in[0];
         return {
             masked(ops::logical_and(ge(x, g.attrs.f("min")), le(x, g.attrs.f("max"))), g.dy())};
       },
       .prepare = [](const PrepareCtx& c) -> std::any {
         return RangeParam{c.attrs.f("min"), c.attrs.f("max")};
       },
       .reference =
           [](const KernelCtx& k) {
             const float lo = static_cast<float>(k.params<RangeParam>().lo);
             const float hi = static_cast<float>(k.params<RangeParam>().hi);
             unary_loop<float, float>(
                 k.in[0], k.out[0], [lo, hi](float x) { return x < lo ? lo : (x > hi ? hi : x); });
           },
       .doc = "min(max(x, min), max)"});
}

void register_compare_ops() {
  register_predicate<EqualOp>("equal", DTypes::kAll, "a == b");
  register_predicate<NotEqualOp>("not_equal", DTypes::kAll, "a != b");
  register_predicate<LessOp>("less", DTypes::kAll, "a < b");
  register_predicate<LessEqualOp>("less_equal", DTypes::kAll, "a <= b");
  register_predicate<GreaterOp>("greater", DTypes::kAll, "a > b");
  register_predicate<GreaterEqualOp>("greater_equal", DTypes::kAll, "a >= b");
  register_predicate<LogicalAndOp>("logical_and", DTypes::kBool, "a && b");
  register_predicate<LogicalOrOp>("logical_or", DTypes::kBool, "a || b");
  register_op({.name = "logical_not",
               .num_inputs = 1,
               .infer = [](const InferCtx& c) { return infer_unary(c, DTypes::kBool); },
               .reference =
                   [](const KernelCtx& k) {
                     unary_loop<bool, bool>(k.in[0], k.out[0], [](bool v) { return !v; });
                   },
               .doc = "!x"});
}

void register_select_cast_ops() {
  register_op({.name = "where",
               .num_inputs = 3,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_dtype(c, 0, DType::kBool, "cond");
                 require_same_dtype(c, 1, 2, "a", "b");
                 const char* who = c.op.c_str();
                 Shape s = broadcast_shapes(c.in[0].shape, c.in[1].shape, who);
                 return {{c.in[1].dtype, broadcast_shapes(s, c.in[2].shape, who)}};
               },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 if (!is_f32(g.in[1])) return {Value(), Value(), Value()};
                 const Value& cond = g.in[0];
                 Value dy = g.dy();
                 return {Value(), ops::sum_like(masked(cond, dy), g.in[1]),
                         ops::sum_like(ops::where(cond, scalar(dy, 0), dy), g.in[2])};
               },
               .reference =
                   [](const KernelCtx& k) {
                     dispatch_dtype(k.in[1].dtype(), [&](auto tag) {
                       using T = decltype(tag);
                       ternary_loop<bool, T, T>(
                           k.in[0], k.in[1], k.in[2], k.out[0],
                           [](bool c, T a, T b) { return select_value(c, a, b); });
                     });
                   },
               .doc = "cond ? a : b"});
  register_op(
      {.name = "cast",
       .num_inputs = 1,
       .infer = [](const InferCtx& c) -> std::vector<ValueType> {
         return {{read_attrs(c, [](const Attrs& a) { return a.dtype("dtype"); }), c.in[0].shape}};
       },
       .grad = [](const GradCtx& g) -> std::vector<Value> {
         if (!is_f32(g.in[0]) || !is_f32(g.out[0])) return {Value()};
         return {g.dy()};
       },
       .reference =
           [](const KernelCtx& k) {
             dispatch_dtype(k.in[0].dtype(), [&](auto stag) {
               using S = decltype(stag);
               dispatch_dtype(k.out[0].dtype(), [&](auto dtag) {
                 using D = decltype(dtag);
                 unary_loop<S, D>(k.in[0], k.out[0], [](S v) { return convert<S, D>(v); });
               });
             });
           },
       .doc = "convert to attribute dtype"});
}

void register_elementwise_ops() {
  register_broadcast_helpers();
  register_binary<AddOp, DTypes::kAll>(
      "add",
      [](const GradCtx& g) -> std::vector<Value> {
        return {ops::sum_like(g.dy(), g.in[0]), ops::sum_like(g.dy(), g.in[1])};
      },
      "a + b");
  register_binary<SubOp, DTypes::kAll>(
      "sub",
      [](const GradCtx& g) -> std::vector<Value> {
        return {ops::sum_like(g.dy(), g.in[0]), ops::sum_like(ops::neg(g.dy()), g.in[1])};
      },
      "a - b");
  register_binary<MulOp, DTypes::kAll>(
      "mul",
      [](const GradCtx& g) -> std::vector<Value> {
        return {ops::sum_like(g.dy() * g.in[1], g.in[0]), ops::sum_like(g.dy() * g.in[0], g.in[1])};
      },
      "a * b");
  register_binary<DivOp, DTypes::kAll>(
      "div",
      [](const GradCtx& g) -> std::vector<Value> {
        // d(a/b) = dy/b, -dy*a/b^2 = -dy*out/b
        return {ops::sum_like(g.dy() / g.in[1], g.in[0]),
                ops::sum_like(ops::neg(g.dy() * g.out[0] / g.in[1]), g.in[1])};
      },
      "a / b");
  register_op(
      {.name = "neg",
       .num_inputs = 1,
       .infer =
           [](const InferCtx& c) {
             if (c.in[0].dtype == DType::kBool || c.in[0].dtype == DType::kU8)
               LOWBIT_THROW(DTypeError, c.op, ": argument 'x': expected a signed dtype but found ",
                            type_str(c.in[0]));
             return infer_unary(c, false);
           },
       .grad = [](const GradCtx& g) -> std::vector<Value> { return {ops::neg(g.dy())}; },
       .reference =
           [](const KernelCtx& k) {
             dispatch_dtype(k.in[0].dtype(), [&](auto tag) {
               using T = decltype(tag);
               if constexpr (!std::is_same_v<T, bool>)
                 unary_loop<T, T>(k.in[0], k.out[0], [](T v) { return static_cast<T>(-v); });
             });
           },
       .doc = "-x"});
  register_math_ops();
  register_activation_ops();
  register_compare_ops();
  register_select_cast_ops();
}

}  // namespace lowbit::detail
