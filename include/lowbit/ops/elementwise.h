// Elementwise ops with NumPy broadcasting. Both operands of a binary op must have the same
// dtype (cast first); the result has the broadcast shape. Gradients of broadcast operands are
// summed back to their shapes. Every function works on Tensors (computed now) and on graph
// Values (a node is appended), and the op it runs has the function's name.
//
//   Tensor x = Tensor::from_vector<float>({-2, 0.5f, 3}, {3});
//   Tensor y = ops::relu(x);                             // [0, 0.5, 3]
//   Tensor m = ops::greater(x, ops::zeros_like(x));       // bool [false, true, true]
//   Tensor z = ops::where(m, x, ops::scalar_like(x, 0));  // [0, 0.5, 3]
//
// Broadcasting: shapes are aligned from the right; each pair of dims must be equal or one of
// them 1 ([2,1,3] with [4,1] gives [2,4,3]; a rank-0 scalar goes with anything; a 0-sized dim
// stays 0: [0,3] with [3] gives [0,3]). Dims unknown at graph-build time (kUnknown) are
// checked again at run time.
//
// Errors, thrown when the op is applied (eagerly or when the graph node is built):
//   DTypeError  an operand has a dtype the op does not take, or binary operands differ
//               ("add: arguments 'a' and 'b' must have the same dtype but found f32[2] and s32[2]",
//                "exp: argument 'x': expected dtype f32 but found s32[3]");
//   ShapeError  shapes do not broadcast ("... do not broadcast: dimension -1 is 3 vs 4");
//   ValueError  an attribute is missing or invalid (clip without 'min', hard_sigmoid mode).
//
// Gradients follow TensorFlow's conventions at the points where the derivative is undefined;
// each is stated below. Ops with integer or bool results have no gradient; integer inputs of
// abs/square/sign/maximum/minimum/where/cast get none.
#pragma once

#include "lowbit/ops/base.h"

namespace lowbit::ops {

// ---- Arithmetic (every dtype; bool operands compute in int and convert back) ----
template <Operand T>
T add(const T& a, const T& b) {
  return apply1("add", {a, b});
}
template <Operand T>
T sub(const T& a, const T& b) {
  return apply1("sub", {a, b});
}
template <Operand T>
T mul(const T& a, const T& b) {
  return apply1("mul", {a, b});
}
// Float division; integer division truncates toward zero (division by zero gives 0).
template <Operand T>
T div(const T& a, const T& b) {
  return apply1("div", {a, b});
}
// -x. Signed dtypes only (f32, s8, s32, s64): DTypeError for u8 and bool.
template <Operand T>
T neg(const T& a) {
  return apply1("neg", {a});
}

// a^b (f32 only), std::pow semantics: a < 0 with a non-integer b gives NaN, 0^negative gives inf.
// Gradient (as TF): d/da = b a^(b-1); d/db = a^b log(a) where a > 0 and 0 where a <= 0.
template <Operand T>
T pow(const T& a, const T& b) {
  return apply1("pow", {a, b});
}
// Elementwise max / min, every dtype but bool. NaN in either operand gives NaN.
// Gradient (f32; as TF): dy goes to a where a >= b (maximum) / a <= b (minimum), to b elsewhere,
// so ties send the whole gradient to the first argument.
template <Operand T>
T maximum(const T& a, const T& b) {
  return apply1("maximum", {a, b});
}
template <Operand T>
T minimum(const T& a, const T& b) {
  return apply1("minimum", {a, b});
}

// ---- Unary math ----
// |x|, every dtype but bool. Integers: abs of the most negative value wraps to itself (s8:
// abs(-128) = -128); u8 is unchanged. Gradient (f32): dy * sign(x), so 0 at x = 0 (as TF).
template <Operand T>
T abs(const T& x) {
  return apply1("abs", {x});
}
// x * x, every dtype but bool; integer overflow wraps (two's complement). Gradient (f32): 2 x dy.
template <Operand T>
T square(const T& x) {
  return apply1("square", {x});
}
// -1, 0 or 1 by the sign of x, every dtype but bool (u8: 0 or 1). f32 keeps -0 and NaN.
// Gradient (f32): zero.
template <Operand T>
T sign(const T& x) {
  return apply1("sign", {x});
}
// f32 only from here to the end of the unary section.
// e^x (overflows to inf above ~88.7). Gradient: dy * e^x.
template <Operand T>
T exp(const T& x) {
  return apply1("exp", {x});
}
// Natural log: log(0) = -inf, log(x < 0) = NaN. Gradient: dy / x.
template <Operand T>
T log(const T& x) {
  return apply1("log", {x});
}
// sqrt(x); NaN for x < 0. Gradient: dy / (2 sqrt(x)) (inf at 0, as TF).
template <Operand T>
T sqrt(const T& x) {
  return apply1("sqrt", {x});
}
// 1 / sqrt(x); inf at 0. Gradient: -dy / (2 x^1.5).
template <Operand T>
T rsqrt(const T& x) {
  return apply1("rsqrt", {x});
}
// The error function erf(x) = 2/sqrt(pi) * integral_0^x e^-t^2 dt. Gradient: dy 2/sqrt(pi) e^-x^2.
template <Operand T>
T erf(const T& x) {
  return apply1("erf", {x});
}

// ---- Activations (f32 only; Keras 3 semantics, docs/spec/layer-semantics.md section 7.5) ----
// tanh(x); saturates to +-1 without overflow. Gradient: dy (1 - y^2).
template <Operand T>
T tanh(const T& x) {
  return apply1("tanh", {x});
}
// 1 / (1 + e^-x), computed from e^-|x| so that no intermediate overflows: exactly 0 < y <= 1
// for finite x (sigmoid(-100) ~ 3.7e-44, sigmoid(100) = 1). Gradient: dy y (1 - y).
template <Operand T>
T sigmoid(const T& x) {
  return apply1("sigmoid", {x});
}
// log(1 + e^x) as max(x, 0) + log1p(e^-|x|): finite for every finite x (softplus(100) = 100).
// Gradient: dy sigmoid(x).
template <Operand T>
T softplus(const T& x) {
  return apply1("softplus", {x});
}
// max(x, 0) (NaN propagates). Gradient: dy where x > 0, else 0 (0 at x = 0, as TF).
template <Operand T>
T relu(const T& x) {
  return apply1("relu", {x});
}
// min(max(x, 0), 6). Gradient: dy where 0 < x < 6, else 0 (as TF's Relu6Grad).
template <Operand T>
T relu6(const T& x) {
  return apply1("relu6", {x});
}
// The gradient of relu from its output y = relu(x) and the incoming gradient dy (one pass):
// dy where y > 0, else 0. y, dy: f32, broadcast together. Gradient: w.r.t. dy,
// relu_backward(y, ddx); none w.r.t. y.
template <Operand T>
T relu_backward(const T& y, const T& dy) {
  return apply1("relu_backward", {y, dy});
}
// The gradient of relu6 from its output y: dy where 0 < y < 6, else 0. As relu_backward.
template <Operand T>
T relu6_backward(const T& y, const T& dy) {
  return apply1("relu6_backward", {y, dy});
}
// GELU. approximate = false (default, attr "approximate"): 0.5 x (1 + erf(x / sqrt 2)), computed
// as 0.5 x erfc(-x / sqrt 2) (as TF). approximate = true: the tanh form
// 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed as x sigmoid(2u) (the same
// function, without the cancellation of 1 + tanh(u) for x << 0). Gradient: the derivative of
// the chosen form.
template <Operand T>
T gelu(const T& x, bool approximate = false) {
  return apply1("gelu", {x}, {{"approximate", approximate}});
}
// Piecewise-linear sigmoid; attr "mode" (default "keras3"):
//   "keras3"   relu6(x + 3) / 6 = clip(x/6 + 1/2, 0, 1) (Keras 3); slope 1/6 where
//              0 < x + 3 < 6 (the relu6 convention: 0 at the kinks);
//   "tf_keras" clip(0.2 x + 0.5, 0, 1) (tf.keras 2.x, Keras <= 2, tfjs: what old LSTM
//              recurrent_activation='hard_sigmoid' meant); slope 0.2 where 0 <= 0.2x + 0.5 <= 1
//              (the clip_by_value convention: passes at the kinks).
// Throws ValueError for any other mode.
template <Operand T>
T hard_sigmoid(const T& x, const std::string& mode = "keras3") {
  return apply1("hard_sigmoid", {x}, {{"mode", mode}});
}
// x if x > 0 else alpha (e^x - 1) (attr "alpha", default 1.0, as Keras ELU). Gradient: dy where
// x > 0, else dy (y + alpha) = dy alpha e^x (alpha at x = 0, as TF).
template <Operand T>
T elu(const T& x, double alpha = 1.0) {
  return apply1("elu", {x}, {{"alpha", alpha}});
}
// x if x > 0 else alpha x (attr "alpha", default 0.2 as keras.activations.leaky_relu and
// tf.nn.leaky_relu; note the Keras 3 LeakyReLU *layer* defaults to negative_slope = 0.3, so a
// layer passes its own value). Gradient: dy where x > 0, else alpha dy (alpha at x = 0, as TF).
template <Operand T>
T leaky_relu(const T& x, double alpha = 0.2) {
  return apply1("leaky_relu", {x}, {{"alpha", alpha}});
}
// min(max(x, min), max) (attrs "min" and "max", required, converted to f32; NaN propagates).
// Gradient (as TF clip_by_value): dy where min <= x <= max, including both ends; 0 outside.
// Throws ValueError unless min <= max.
template <Operand T>
T clip(const T& x, double min, double max) {
  return apply1("clip", {x}, {{"min", min}, {"max", max}});
}

// ---- Comparisons: any dtype (both operands the same), broadcasting, bool result ----
// IEEE semantics for NaN: every comparison with NaN is false except not_equal. No gradient.
template <Operand T>
T equal(const T& a, const T& b) {
  return apply1("equal", {a, b});
}
template <Operand T>
T not_equal(const T& a, const T& b) {
  return apply1("not_equal", {a, b});
}
template <Operand T>
T less(const T& a, const T& b) {
  return apply1("less", {a, b});
}
template <Operand T>
T less_equal(const T& a, const T& b) {
  return apply1("less_equal", {a, b});
}
template <Operand T>
T greater(const T& a, const T& b) {
  return apply1("greater", {a, b});
}
template <Operand T>
T greater_equal(const T& a, const T& b) {
  return apply1("greater_equal", {a, b});
}
// Logical ops: bool operands only (DTypeError otherwise), broadcasting, bool result.
template <Operand T>
T logical_and(const T& a, const T& b) {
  return apply1("logical_and", {a, b});
}
template <Operand T>
T logical_or(const T& a, const T& b) {
  return apply1("logical_or", {a, b});
}
template <Operand T>
T logical_not(const T& x) {
  return apply1("logical_not", {x});
}

// ---- Selection and conversion ----
// cond ? a : b elementwise. cond is bool; a and b have the same dtype (any); the three shapes
// broadcast together and the result has a's dtype. Gradient (f32): dy where cond to a, dy
// where !cond to b, each summed back to its operand's shape; none for cond.
template <Operand T>
T where(const T& cond, const T& a, const T& b) {
  return apply1("where", {cond, a, b});
}
// Another name for where (TF 1 tf.select).
template <Operand T>
T select(const T& cond, const T& a, const T& b) {
  return where(cond, a, b);
}
// Converts x to `dtype` (attr "dtype"), same shape:
//   f32 -> integer: truncates toward zero like a C cast (-1.7 -> -1, 2.9 -> 2); values beyond
//     the target range saturate to its min/max and NaN gives 0 (where a C cast is undefined);
//   integer -> narrower integer: wraps, two's complement (s32 300 -> s8 44, s8 -1 -> u8 255);
//   integer -> f32: nearest float;  bool -> number: 0 or 1;  anything -> bool: x != 0 (NaN ->
//   true).
// Gradient: identity for f32 -> f32; none otherwise.
template <Operand T>
T cast(const T& x, DType dtype) {
  return apply1("cast", {x}, {{"dtype", dtype}});
}

}  // namespace lowbit::ops

namespace lowbit {
// Arithmetic operators for tensors and values; a float operand becomes a scalar of the
// other operand's dtype.
template <Operand T>
T operator+(const T& a, const T& b) {
  return ops::add(a, b);
}
template <Operand T>
T operator-(const T& a, const T& b) {
  return ops::sub(a, b);
}
template <Operand T>
T operator*(const T& a, const T& b) {
  return ops::mul(a, b);
}
template <Operand T>
T operator/(const T& a, const T& b) {
  return ops::div(a, b);
}
template <Operand T>
T operator-(const T& a) {
  return ops::neg(a);
}
template <Operand T>
T operator+(const T& a, double b) {
  return ops::add(a, ops::scalar_like(a, b));
}
template <Operand T>
T operator-(const T& a, double b) {
  return ops::sub(a, ops::scalar_like(a, b));
}
template <Operand T>
T operator*(const T& a, double b) {
  return ops::mul(a, ops::scalar_like(a, b));
}
template <Operand T>
T operator/(const T& a, double b) {
  return ops::div(a, ops::scalar_like(a, b));
}
template <Operand T>
T operator+(double a, const T& b) {
  return ops::add(ops::scalar_like(b, a), b);
}
template <Operand T>
T operator-(double a, const T& b) {
  return ops::sub(ops::scalar_like(b, a), b);
}
template <Operand T>
T operator*(double a, const T& b) {
  return ops::mul(ops::scalar_like(b, a), b);
}
template <Operand T>
T operator/(double a, const T& b) {
  return ops::div(ops::scalar_like(b, a), b);
}
}  // namespace lowbit
