// TensorFlow fake quantization: the ops of tf.quantization.fake_quant_with_min_max_{args,vars,
// vars_per_channel}, bit for bit (shared quantization-semantics.md sections 1.1-1.5), their
// gradient ops under TF's names, and min_max, the one-pass range statistic the range trackers
// (lowbit/quant/range.h) feed on.
//
// What fake quantization computes. A range [min, max] and `num_bits` define a grid of
// quant_max - quant_min + 1 equally spaced values, quant_min = narrow_range ? 1 : 0,
// quant_max = 2^num_bits - 1. The op clamps x into the grid's range and rounds it to the nearest
// grid point, so y holds exactly the values an integer kernel can represent, yet stays f32:
// training sees the quantization error in its loss while the weights stay full precision.
//
// The nudge. The grid must contain 0.0 exactly (zero padding, ReLU outputs and biases are
// common and must not pick up an error), so TF moves the range before quantizing. All in f32:
//   scale       = (max - min) / (quant_max - quant_min)      // never changed by the nudge
//   zero_point  = round_half_away(quant_min - min / scale), clamped to [quant_min, quant_max]
//   nudged_min  = (quant_min - zero_point) * scale
//   nudged_max  = (quant_max - zero_point) * scale
// Both ends move by the same amount (less than half a step), so the grid is k * scale for
// integers k in [quant_min - zero_point, quant_max - zero_point], and k = 0 is on it: 0.0 maps
// to exactly 0.0. A range not containing 0 is shifted until it touches 0:
//   [-1, 1], 8 bit:   scale 2/255, zero_point round(127.49999) = 127,
//                     nudged range [-0.99607849, 1.00392163] (not symmetric!)
//   [12, 123]:        zero_point 0, nudged range [0, 111] (an input of 123 gives 111)
//   [-123, -12]:      zero_point 255, nudged range [-111, 0]
// fake_quant_nudge() returns these numbers for any (min, max).
//
// clang-format off
// Forward (per element, f32, one rounding per operation):
//   c = clamp(x, nudged_min, nudged_max)
//   t = (c - nudged_min) * inv_scale    // args and per_channel; inv_scale = (qmax-qmin)/(max-min)
//   t = (c - nudged_min) / scale        // vars DIVIDES (TF's kernels differ there: near ties,
//                                       // args and vars can give neighbouring grid points)
//   y = floor((t - quant_zero) + 0.5) * scale,  quant_zero = floor(-nudged_min * inv_scale + 0.5)
// clang-format on
// Ties go up: with scale 1 and zero point 128, -2.5 -> -2 and 2.5 -> 3.
//
// Backward: the straight-through estimator over the NUDGED range, boundaries included:
//   dx   = dy where nudged_min <= x <= nudged_max, else 0
//   dmin = sum of dy over x < nudged_min,   dmax = sum of dy over x > nudged_max
// (per channel for the per-channel op). The dependence of the nudge itself on min and max is
// ignored, as in TF, so these are not finite-difference derivatives of y. Sums accumulate in
// double in a fixed order (the *_gradient ops below), so they do not depend on the thread count.
//
// Example (eager; the same calls on graph Values build nodes):
//   Tensor w = ...;                                            // conv kernel [3,3,cin,cout]
//   Tensor wq = ops::fake_quant_with_min_max_vars_per_channel( // weights: one range per cout
//       w, wmin, wmax, 8, /*narrow_range=*/true);              // wmin, wmax: f32 [cout]
//   Tensor a = ops::fake_quant_with_min_max_vars(relu_out, amin, amax);  // amin, amax: f32 []
//   Tensor y = ops::fake_quant_with_min_max_args(x, -6, 6);   // fixed range, 8 bit
//
// Degenerate ranges (TF's behaviour):
//   args: min >= max (also NaN) throws ValueError when the op is built.
//   vars / per channel (checked per channel): min == max == 0 gives y = 0, dx = dy,
//     dmin = dmax = 0; min == max != 0 gives scale 0 and y = NaN everywhere (dx = dy only where
//     x == 0, the rest of dy goes to dmin/dmax). min > max is not detected (min and max are
//     run-time values and kernels do not throw): the result is garbage, as in TF. The range
//     trackers of lowbit/quant/range.h always produce min <= 0 <= max.
// NaN inputs (TF leaves them unspecified): y is NaN, dx is 0, and they add nothing to dmin/dmax.
//
// Errors (when the op is applied, eagerly or while a graph is built):
//   ValueError  num_bits outside [2, 16]; args with min >= max;
//   DTypeError  x, min, max, dy not f32;
//   ShapeError  vars: min or max not rank 0; per channel: x of rank 0, or min/max not [d]
//               with d = x's last dim; gradient ops: dy's shape differs from x's.
// Shapes may hold kUnknown dims while a graph is built (e.g. the batch); they are checked
// again with the concrete shapes.
#pragma once

#include <vector>

#include "lowbit/ops/base.h"

namespace lowbit::ops {

// The nudged grid of one range (shared quantization-semantics.md 1.2), as the ops compute it.
struct FakeQuantNudge {
  int quant_min = 0;     // narrow_range ? 1 : 0
  int quant_max = 255;   // 2^num_bits - 1
  int zero_point = 0;    // the nudged zero point, in [quant_min, quant_max]
  float scale = 0;       // (max - min) / (quant_max - quant_min)
  float inv_scale = 0;   // (quant_max - quant_min) / (max - min), not 1 / scale
  float nudged_min = 0;  // (quant_min - zero_point) * scale
  float nudged_max = 0;  // (quant_max - zero_point) * scale
};
// Computes the nudge for min, max (f32) at num_bits/narrow_range. Throws ValueError for num_bits
// outside [2, 16]; any min, max are accepted (see the degenerate cases above; a NaN zero point
// is taken as quant_min).
FakeQuantNudge fake_quant_nudge(float min, float max, int num_bits = 8, bool narrow_range = false);

// ---- forward ---------------------------------------------------------------------------------

// Fake quantization with a range fixed when the op is built (attributes, converted to f32).
// x: f32, any shape; y: x's shape. Defaults as TF: [-6, 6], 8 bit, wide range.
// Throws ValueError unless min < max and 2 <= num_bits <= 16.
// Gradient: dx only (fake_quant_with_min_max_args_gradient).
template <Operand T>
T fake_quant_with_min_max_args(const T& x, double min = -6, double max = 6, int num_bits = 8,
                               bool narrow_range = false) {
  return apply1(
      "fake_quant_with_min_max_args", {x},
      {{"min", min}, {"max", max}, {"num_bits", num_bits}, {"narrow_range", narrow_range}});
}

// Fake quantization with the range given as tensors (f32 rank 0), e.g. variables updated by a
// range tracker. x: f32, any shape; y: x's shape. The quotient (c - nudged_min) / scale is a
// division here (TF's FakeQuantWithMinMaxVars), unlike args and per channel.
// Gradients: dx, dmin, dmax (fake_quant_with_min_max_vars_gradient).
template <Operand T>
T fake_quant_with_min_max_vars(const T& x, const T& min, const T& max, int num_bits = 8,
                               bool narrow_range = false) {
  return apply1("fake_quant_with_min_max_vars", {x, min, max},
                {{"num_bits", num_bits}, {"narrow_range", narrow_range}});
}

// Fake quantization with one range per channel of the LAST axis: x f32 [..., d] (rank >= 1;
// TF's [d], [b, d], [b, h, w, d] are viewed as [b', d]), min and max f32 [d]. Channel c uses
// (min[c], max[c]) with the args formula (multiplies by inv_scale). For a conv kernel
// [kh, kw, cin, cout] this gives one range per output channel.
// Gradients: dx, dmin[d], dmax[d] (fake_quant_with_min_max_vars_per_channel_gradient).
template <Operand T>
T fake_quant_with_min_max_vars_per_channel(const T& x, const T& min, const T& max, int num_bits = 8,
                                           bool narrow_range = false) {
  return apply1("fake_quant_with_min_max_vars_per_channel", {x, min, max},
                {{"num_bits", num_bits}, {"narrow_range", narrow_range}});
}

// ---- gradients -------------------------------------------------------------------------------

// dx = dy where nudged_min <= x <= nudged_max, else 0. dy, x: f32 of the same shape; the
// attributes must be those of the forward op. Not differentiable.
template <Operand T>
T fake_quant_with_min_max_args_gradient(const T& dy, const T& x, double min = -6, double max = 6,
                                        int num_bits = 8, bool narrow_range = false) {
  return apply1(
      "fake_quant_with_min_max_args_gradient", {dy, x},
      {{"min", min}, {"max", max}, {"num_bits", num_bits}, {"narrow_range", narrow_range}});
}

template <Operand T>
struct FakeQuantGradients {
  T dx;    // x's shape
  T dmin;  // min's shape: [] (vars) or [d] (per channel)
  T dmax;  // max's shape
};

// Gradients of fake_quant_with_min_max_vars: dx as above; dmin, dmax (f32 []) are the sums of dy
// over x < nudged_min and x > nudged_max, in double, rounded to f32 once, in a fixed order: blocks
// of 2^15 elements, each summed on 16 interleaved lanes (element i to lane i % 16, as SIMD does),
// lanes then blocks added in order. min == max == 0:
// dx = dy, dmin = dmax = 0. Not differentiable.
template <Operand T>
FakeQuantGradients<T> fake_quant_with_min_max_vars_gradient(const T& dy, const T& x, const T& min,
                                                            const T& max, int num_bits = 8,
                                                            bool narrow_range = false) {
  auto r = apply("fake_quant_with_min_max_vars_gradient", {dy, x, min, max},
                 {{"num_bits", num_bits}, {"narrow_range", narrow_range}});
  return {r[0], r[1], r[2]};
}

// Gradients of fake_quant_with_min_max_vars_per_channel: dx (x's shape), dmin and dmax (f32 [d]),
// each channel as the per-tensor op. Per channel the sums run in double over the rows in order
// and are rounded to f32 once. Not differentiable.
template <Operand T>
FakeQuantGradients<T> fake_quant_with_min_max_vars_per_channel_gradient(const T& dy, const T& x,
                                                                        const T& min, const T& max,
                                                                        int num_bits = 8,
                                                                        bool narrow_range = false) {
  auto r = apply("fake_quant_with_min_max_vars_per_channel_gradient", {dy, x, min, max},
                 {{"num_bits", num_bits}, {"narrow_range", narrow_range}});
  return {r[0], r[1], r[2]};
}

// ---- range statistics ------------------------------------------------------------------------

template <Operand T>
struct MinMax {
  T min;
  T max;
};

// The minimum and maximum of x in one pass over it. x: f32. Per tensor (default): f32 [] each,
// over every element (any rank). per_channel: f32 [d] each, d = x's last dim (rank >= 1, else
// ShapeError), reducing every other axis (for a conv kernel [kh, kw, cin, cout]: one range per
// output channel).
//   NaN: if any element (of a channel) is NaN, both results (of that channel) are NaN.
//   Zeros: a zero result is +0.0 (min(-0, +0) is ambiguous; the canonical zero makes the result
//     independent of the order and the thread count, so fast and reference kernels agree).
//   Empty (no elements in a channel): min = +inf, max = -inf (the identities, as tf.reduce_min).
// No gradient: the outputs are range statistics and act as a stop-gradient (autodiff sends
// nothing back to x through them), as TF's range trackers, whose assign ops block gradients.
template <Operand T>
MinMax<T> min_max(const T& x, bool per_channel = false) {
  auto r = apply("min_max", {x}, {{"per_channel", per_channel}});
  return {r[0], r[1]};
}

}  // namespace lowbit::ops
