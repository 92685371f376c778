// The quantizer ops beyond TF's fake quant (lowbit/ops/fake_quant.h): PyTorch-style affine fake
// quantization and its observer arithmetic (calculate_qparams), and the learned / binary /
// ternary quantizers (LSQ, PACT, DoReFa) of quantization-aware training. Every function works on
// Tensors (computed now) and on graph Values (a node is appended); all are f32 in, f32 out. The
// numerics are those of the team's quantization-semantics.md, sections 4 (PyTorch) and 5 (binary,
// ternary, DoReFa), bit for bit: f32 arithmetic with one rounding per operation, evaluated left to
// right as written below.
//
//   Tensor s = Tensor::scalar(0.1f), zp = Tensor::scalar(128);
//   Tensor y = ops::fake_quantize_per_tensor_affine(x, s, zp, 0, 255);   // quint8 grid
//   Value  w_q = ops::lsq_quantize(w, step, /*bits=*/4);                  // LSQ on a weight
//   Value  a_q = ops::pact_quantize(relu_out, alpha, /*bits=*/4);         // PACT activation
//
// Rounding: round_even = round half to even (C nearbyint in the default mode, torch.round).
// Gradients are straight-through estimators (STE); each is stated with its op. Where a
// parameter has no gradient the op gives none (autodiff then yields zeros for it).
//
// Common errors, thrown when the op is applied (eagerly or when the graph node is built):
//   DTypeError  an input is not f32;
//   ShapeError  scale/zero_point/alpha have the wrong shape (rank 0 per tensor, [C] per channel
//               with C = x's size along the axis), or dy differs from x in a backward op;
//   ValueError  bad attributes: quant_min > quant_max, a quantization range outside
//               [-2^23, 2^23] (codes must be exact in f32), an axis outside [-rank, rank),
//               bits out of range.
// Eager calls (Tensors) also check the parameter values, which a graph only knows when it runs:
// scale > 0 and finite, zero_point an integer in [quant_min, quant_max] (non-learnable ops),
// alpha > 0 (PACT) - ValueError otherwise. In a graph the kernels evaluate the formulas on
// whatever values arrive (a zero scale then gives inf/NaN), as PyTorch does.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "lowbit/fixed_point.h"
#include "lowbit/ops/base.h"
#include "lowbit/ops/elementwise.h"
#include "lowbit/ops/reduce.h"

namespace lowbit::detail {
// Eager-only value checks (see above); no-ops for graph values.
void check_affine_qparams(const char* op, const Tensor& scale, const Tensor& zero_point,
                          int64_t quant_min, int64_t quant_max, bool check_zero_point);
inline void check_affine_qparams(const char*, const Value&, const Value&, int64_t, int64_t, bool) {}
void check_positive(const char* op, const char* arg, const Tensor& t);
inline void check_positive(const char*, const char*, const Value&) {}
}  // namespace lowbit::detail

namespace lowbit::ops {

// ---- PyTorch fake quantization (spec 4.1) ---------------------------------------------------
//
// fake_quantize_per_tensor_affine (torch.fake_quantize_per_tensor_affine):
//   inv_scale = 1.0f / scale
//   q  = zero_point + round_even(x * inv_scale)         rounding BEFORE adding the zero point
//   y  = (clamp(q, quant_min, quant_max) - zero_point) * scale
//   dx = dy * (quant_min <= q <= quant_max ? 1 : 0)     mask decided after rounding, so inputs up
//                                                       to half a step beyond the grid pass
// x: f32 any shape; scale, zero_point: f32 rank 0 (zero_point holds an integer, as PyTorch's
// int zero point). quant_min <= quant_max, e.g. quint8 [0, 255], qint8 [-128, 127], 4 bit
// [0, 15]. Ties go to even (scale 1, zp 0: -2.5 -> -2, 2.5 -> 2, 3.5 -> 4). No gradient for
// scale or zero_point. NaN inputs give NaN and dx 0; +-inf saturate to the grid ends (PyTorch's
// int64 cast is undefined there).
template <Operand T>
T fake_quantize_per_tensor_affine(const T& x, const T& scale, const T& zero_point,
                                  int64_t quant_min, int64_t quant_max) {
  detail::check_affine_qparams("fake_quantize_per_tensor_affine", scale, zero_point, quant_min,
                               quant_max, true);
  return apply1("fake_quantize_per_tensor_affine", {x, scale, zero_point},
                {{"quant_min", quant_min}, {"quant_max", quant_max}});
}

// The same per channel (torch.fake_quantize_per_channel_affine): element x[..., c, ...] (c
// along `axis`, negative counts from the end) uses scale[c] and zero_point[c], both f32 [C],
// C = x.shape[axis]. E.g. a Dense kernel [in, out] per output channel: axis -1; PyTorch's
// conv weight [out, in, kh, kw]: axis 0.
template <Operand T>
T fake_quantize_per_channel_affine(const T& x, const T& scale, const T& zero_point, int axis,
                                   int64_t quant_min, int64_t quant_max) {
  detail::check_affine_qparams("fake_quantize_per_channel_affine", scale, zero_point, quant_min,
                               quant_max, true);
  return apply1("fake_quantize_per_channel_affine", {x, scale, zero_point},
                {{"axis", axis}, {"quant_min", quant_min}, {"quant_max", quant_max}});
}

// Their gradients: dx = dy * mask (recomputed from x; one pass). Not differentiable.
template <Operand T>
T fake_quantize_per_tensor_affine_backward(const T& dy, const T& x, const T& scale,
                                           const T& zero_point, int64_t quant_min,
                                           int64_t quant_max) {
  return apply1("fake_quantize_per_tensor_affine_backward", {dy, x, scale, zero_point},
                {{"quant_min", quant_min}, {"quant_max", quant_max}});
}
template <Operand T>
T fake_quantize_per_channel_affine_backward(const T& dy, const T& x, const T& scale,
                                            const T& zero_point, int axis, int64_t quant_min,
                                            int64_t quant_max) {
  return apply1("fake_quantize_per_channel_affine_backward", {dy, x, scale, zero_point},
                {{"axis", axis}, {"quant_min", quant_min}, {"quant_max", quant_max}});
}

// ---- Learnable scale and zero point: LSQ / LSQ+ (spec 4.3) ----------------------------------
//
// torch._fake_quantize_learnable_per_tensor_affine. scale, zero_point: f32 rank 0, both
// trainable; zero_point is a float here (PyTorch rounds it).
// Forward: fake_quantize_per_tensor_affine with zp = clamp(round_even(zero_point), quant_min,
// quant_max) (a NaN zero point counts as quant_min).
// Backward (PyTorch's recomputation, fused in one pass), with g = f32(grad_factor):
//   zp = trunc(clamp(zero_point + 0.5f, quant_min, quant_max))    (not the forward's rounding)
//   q  = round_even(zp + x * inv_scale)                            (zp added BEFORE rounding)
//   q < quant_min:  dx = 0,  dscale_i = (dy * (quant_min - zp)) * g,  dzp_i = ((-dy) * scale) * g
//   q > quant_max:  dx = 0,  dscale_i = (dy * (quant_max - zp)) * g,  dzp_i = ((-dy) * scale) * g
//   otherwise:      dx = dy, dscale_i = ((dy * (xfq - x)) * inv_scale) * g,  dzp_i = 0,
//                   xfq = (q - zp) * scale
//   dscale = sum_i dscale_i, dzero_point = sum_i dzp_i, accumulated in double in a fixed order
//   (chunks of 16384 elements, 8 lanes by index mod 8 inside a chunk, lanes then chunks added in
//   order) and rounded once to f32, so the result does not depend on the thread count.
// grad_factor: LSQ's gradient scale, e.g. 1/sqrt(numel(x) * quant_max) (PyTorch's
// _LearnableFakeQuantize with use_grad_scaling); 1 for plain gradients. PyTorch's backward also
// insists on quant_min <= 0 <= quant_max; lowbit accepts any range.
template <Operand T>
T fake_quantize_learnable_per_tensor_affine(const T& x, const T& scale, const T& zero_point,
                                            int64_t quant_min, int64_t quant_max,
                                            double grad_factor = 1.0) {
  detail::check_affine_qparams("fake_quantize_learnable_per_tensor_affine", scale, zero_point,
                               quant_min, quant_max, false);
  return apply1("fake_quantize_learnable_per_tensor_affine", {x, scale, zero_point},
                {{"quant_min", quant_min}, {"quant_max", quant_max}, {"grad_factor", grad_factor}});
}

// torch._fake_quantize_learnable_per_channel_affine: scale, zero_point f32 [C] along `axis`
// (per-channel LSQ weights: the output-channel axis). Same formulas per channel, except that
// PyTorch's per-channel op uses zp = clamp(round_even(zero_point[c])) in the forward AND the
// backward. dscale, dzero_point: [C], each channel summed in double in index order (rows along
// the non-channel axes in order; inside a row of the axes after `axis`, 8 lanes by index mod 8).
template <Operand T>
T fake_quantize_learnable_per_channel_affine(const T& x, const T& scale, const T& zero_point,
                                             int axis, int64_t quant_min, int64_t quant_max,
                                             double grad_factor = 1.0) {
  detail::check_affine_qparams("fake_quantize_learnable_per_channel_affine", scale, zero_point,
                               quant_min, quant_max, false);
  return apply1("fake_quantize_learnable_per_channel_affine", {x, scale, zero_point},
                {{"axis", axis},
                 {"quant_min", quant_min},
                 {"quant_max", quant_max},
                 {"grad_factor", grad_factor}});
}

// Fused gradients of the learnable ops: {dx (x's shape), dscale, dzero_point (scale's shape)}.
// Not differentiable. The attribute "use_grad_scaling" (set by lsq_quantize) replaces
// grad_factor by 1/sqrt(numel(x) * quant_max) computed in double when the op runs.
template <Operand T>
std::vector<T> fake_quantize_learnable_per_tensor_affine_backward(
    const T& dy, const T& x, const T& scale, const T& zero_point, int64_t quant_min,
    int64_t quant_max, double grad_factor = 1.0) {
  return apply("fake_quantize_learnable_per_tensor_affine_backward", {dy, x, scale, zero_point},
               {{"quant_min", quant_min}, {"quant_max", quant_max}, {"grad_factor", grad_factor}});
}
template <Operand T>
std::vector<T> fake_quantize_learnable_per_channel_affine_backward(
    const T& dy, const T& x, const T& scale, const T& zero_point, int axis, int64_t quant_min,
    int64_t quant_max, double grad_factor = 1.0) {
  return apply("fake_quantize_learnable_per_channel_affine_backward", {dy, x, scale, zero_point},
               {{"axis", axis},
                {"quant_min", quant_min},
                {"quant_max", quant_max},
                {"grad_factor", grad_factor}});
}

// ---- LSQ convenience (Esser et al. 2019) -----------------------------------------------------

// The LSQ integer range for `bits`: signed [-2^(b-1), 2^(b-1) - 1] (Q_N = 2^(b-1),
// Q_P = 2^(b-1) - 1), bits in [2, 16]; unsigned [0, 2^b - 1] (Q_P = 2^b - 1), bits in [1, 16].
// Throws ValueError otherwise. (quant::QuantRange, the one range struct:
// include/lowbit/fixed_point.h.)
using quant::QuantRange;
QuantRange lsq_range(int bits, bool is_signed);
// LSQ's step-size gradient scale g = 1 / sqrt(n * Q_P) in double (n >= 1: ValueError otherwise).
double lsq_grad_factor(int64_t n, int bits, bool is_signed);

// LSQ fake quantization: the learnable op above with zero point 0 and lsq_range(bits, is_signed):
// y = clamp(round_even(x * (1/step)), -Q_N, Q_P) * step. step: f32 rank 0, or [C] along
// `channel_axis` (per-channel LSQ). Gradients: dx = dy inside, 0 outside; dstep as the learnable
// op (paper: round(x/s) - x/s inside, -Q_N / Q_P outside) times g = 1/sqrt(N * Q_P), where
// N = grad_n if > 0 (e.g. the features per example of an activation, as the paper suggests),
// else numel(x) when the op runs (PyTorch's use_grad_scaling; known only at run time when the
// batch dim is unknown). The masks are PyTorch's, decided after rounding: x/s in
// [Q_P, Q_P + 0.5) still counts as inside (the paper puts the boundary at Q_P).
template <Operand T>
T lsq_quantize(const T& x, const T& step, int bits, bool is_signed = true,
               std::optional<int> channel_axis = std::nullopt, int64_t grad_n = 0) {
  const QuantRange r = lsq_range(bits, is_signed);
  detail::check_positive("lsq_quantize", "step", step);
  Attrs attrs{{"quant_min", r.min}, {"quant_max", r.max}};
  if (grad_n > 0)
    attrs.set("grad_factor", lsq_grad_factor(grad_n, bits, is_signed));
  else
    attrs.set("use_grad_scaling", true);
  if (channel_axis) {
    attrs.set("axis", *channel_axis);
    return apply1("fake_quantize_learnable_per_channel_affine", {x, step, zeros_like(step)}, attrs);
  }
  return apply1("fake_quantize_learnable_per_tensor_affine", {x, step, scalar_like(x, 0.0)}, attrs);
}

// LSQ's initial step 2 * mean(|x|) / sqrt(Q_P) (f32 ops: abs, mean accumulated in double, * 2,
// / f32(sqrt(Q_P))). Per tensor: rank 0; with channel_axis: [C], the mean over every other axis.
template <Operand T>
T lsq_init_step(const T& x, int bits, bool is_signed = true,
                std::optional<int> channel_axis = std::nullopt) {
  const QuantRange r = lsq_range(bits, is_signed);
  std::vector<int64_t> axes;
  if (channel_axis) {
    const int a = x.shape().axis(*channel_axis, "lsq_init_step");
    for (int d = 0; d < x.shape().rank(); ++d)
      if (d != a) axes.push_back(d);
    if (axes.empty()) return (abs(x) * 2.0) / std::sqrt(static_cast<double>(r.max));
  }
  return (mean(abs(x), axes) * 2.0) / std::sqrt(static_cast<double>(r.max));
}

// ---- PACT (Choi et al. 2018, spec 4.4) ------------------------------------------------------
//
// Learned clipping for activations, its own op: with n = f32(2^bits - 1), s = alpha / n,
//   c = clamp(x, 0, alpha);  y = round_even(c / s) * s        (grid {0, s, ..., n s}, zp 0)
// Gradients (paper STE): dx = dy for 0 <= x < alpha, else 0; dalpha = sum of dy over x >= alpha
// (TensorFlow's dmax, except that x == alpha goes to alpha, as the paper says; TF's fake quant
// would send it to dx). alpha: f32 rank 0, > 0; bits in [1, 16]. dalpha is summed like the
// learnable op's dscale (fixed chunks and lanes, double, thread-count independent).
template <Operand T>
T pact_quantize(const T& x, const T& alpha, int bits) {
  detail::check_positive("pact_quantize", "alpha", alpha);
  return apply1("pact_quantize", {x, alpha}, {{"bits", bits}});
}
// {dx, dalpha} of pact_quantize. Not differentiable.
template <Operand T>
std::vector<T> pact_quantize_backward(const T& dy, const T& x, const T& alpha, int bits) {
  return apply("pact_quantize_backward", {dy, x, alpha}, {{"bits", bits}});
}

// ---- Binary, ternary and DoReFa quantizers (spec 5) -----------------------------------------
//
// Per-channel variants take the channel as the LAST axis (Keras kernels: Dense [in, out],
// Conv2D [kh, kw, in, out]) and need rank >= 1. Means and sums run in double in index order and
// are rounded once to f32.

// BNN / BinaryConnect sign: y = +1 for x >= 0 (sign(0) = +1), -1 for x < 0, NaN stays NaN.
// Gradient: dy where |x| <= clip, else 0 (BNN's clip 1; clip = inf is the identity STE).
template <Operand T>
T sign_ste(const T& x, double clip = 1.0) {
  return apply1("sign_ste", {x}, {{"clip", clip}});
}

// BWN / XNOR-Net weights: y = alpha * sign(w) (sign(0) = +1), alpha = mean|w| per output channel
// (last axis) or over the whole tensor (per_channel = false; DoReFa's k = 1, golden method
// "bwn"). alpha is a constant for the gradient: dw = dy where |w| <= clip (default inf: identity,
// as DoReFa); clip = 1 gives XNOR-Net's sign mask.
template <Operand T>
T binary_quantize(const T& w, bool per_channel = true,
                  double clip = std::numeric_limits<double>::infinity()) {
  return apply1("binary_quantize", {w}, {{"per_channel", per_channel}, {"clip", clip}});
}

// TWN ternary weights: delta = 0.7 * mean|W| (double); y = +alpha where w > delta, -alpha where
// w < -delta, else 0, with alpha = mean{|w_i| : |w_i| > delta} (0 if none, e.g. all zeros). Per
// output channel (last axis) or per tensor. Gradient: identity (STE).
template <Operand T>
T ternary_quantize(const T& w, bool per_channel = true) {
  return apply1("ternary_quantize", {w}, {{"per_channel", per_channel}});
}

// DoReFa's quantize_k: y = round_even(r * n) / n with n = f32(2^bits - 1), bits in [1, 16].
// Gradient: identity (STE). Meant for r in [0, 1].
template <Operand T>
T dorefa_quantize(const T& r, int bits) {
  return apply1("dorefa_quantize", {r}, {{"bits", bits}});
}

// DoReFa activations (golden method "dorefa_activation"): y = dorefa_quantize(clamp(x, 0, 1), k),
// one fused op; gradient dy for 0 <= x <= 1, else 0.
template <Operand T>
T dorefa_activation(const T& x, int bits) {
  return apply1("dorefa_activation", {x}, {{"bits", bits}});
}

// DoReFa weights (golden method "dorefa_weight"), composed from ops:
//   bits >= 2: t = tanh(w); y = 2 * dorefa_quantize(t / (2 * max|t|) + 0.5, bits) - 1, max over
//              the whole tensor; the gradient flows through tanh and the max (shared among ties);
//   bits == 1: y = E * sign(w), E = mean|w| (a constant), identity gradient
//              (= binary_quantize(w, false)).
// Throws ValueError for bits outside [1, 16].
template <Operand T>
T dorefa_weight(const T& w, int bits) {
  if (bits < 1 || bits > 16)
    LOWBIT_THROW(ValueError,
                 "dorefa_weight: argument 'bits': expected a value in [1, 16] but found ", bits);
  if (bits == 1) return binary_quantize(w, false);
  const T t = tanh(w);
  const T u = t / (max(abs(t)) * 2.0) + 0.5;
  return dorefa_quantize(u, bits) * 2.0 - 1.0;
}

// dx = dy * (lo <= x <= hi ? 1 : 0) (attributes "lo", "hi"): the STE mask of sign_ste,
// binary_quantize and dorefa_activation. Not differentiable.
template <Operand T>
T ste_range_backward(const T& dy, const T& x, double lo, double hi) {
  return apply1("ste_range_backward", {dy, x}, {{"lo", lo}, {"hi", hi}});
}

}  // namespace lowbit::ops
