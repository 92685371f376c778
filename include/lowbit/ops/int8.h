// Integer-only inference ops (int8 activations and weights, int32 biases): what a converted
// model (lowbit/quant/convert.h) runs. TFLite's int8 reference semantics, bit for bit
// (docs/spec/quantization-semantics.md 3.1-3.6); every number they need beyond the codes is an
// attribute, turned into fixed-point output stages once per plan by the op's prepare step
// (include/lowbit/fixed_point.h), so a run does only integer work.
//
// Codes and their parameters: real = scale * (q - zero_point). Activations s8 with a zero
// point; weights s8 symmetric (zero point 0), one scale per output channel or one per tensor;
// biases s32 at scale f32(s_in * s_w[c]) with zero point 0.
//
// Attributes (quantization):
//   input_scale, input_zero_point     of x (qconv2d, qfully_connected)
//   weight_scales                     list of f64: one per output channel, or one for all
//   output_scale, output_zero_point   of y
//   activation                        "none" | "relu" | "relu6" | "relu_n1_to_1": the clamp
//   rounding                          "double" (gemmlowp, default) | "single" (spec 3.4)
//   act_min, act_max                  optional: a narrower clamp of the output codes (the
//                                     codes of a low-bit grid stored as int8), intersected
//   qconv2d also takes conv2d's window attributes (strides, dilations, padding, groups: see
//   ops/conv.h); the pools take ksize, strides, padding.
//
//   qconv2d(x s8 [N,H,W,Cin], w s8 [KH,KW,Cin/groups,Cout], bias s32 [Cout]) -> s8 [N,OH,OW,Cout]
//     y = clamp(MBQM(bias + sum (x - zp_x) w, M0[c], shift[c]) + zp_y, act_min, act_max),
//     M[c] = s_in * s_w[c] / s_out; taps in the padding are skipped (x = zp_x there).
//   qfully_connected(x s8 [..., K], w s8 [K, U], bias s32 [U]) -> s8 [..., U]: the same with a
//     dot product over K.
//   qmax_pool2d(x), qavg_pool2d(x) s8 -> s8 with x's parameters: the window's max, or its mean
//     rounded half away from zero (TFLite), then the clamp [act_min, act_max] (attributes,
//     default the int8 range).
//   qadd(a, b) s8, same shape -> s8: TFLite's quantized Add (fixed_point.h AddStage); attributes
//     input1_scale, input1_zero_point, input2_scale, input2_zero_point, output_scale,
//     output_zero_point, activation, rounding, and optional act_min, act_max (intersected with
//     the activation's clamp).
//   qavg_pool2d also takes input_scale, input_zero_point, output_scale, output_zero_point (all
//     or none): the mean rounded once to the output's parameters, MBQM(sum - count * zp_in,
//     s_in / (s_out * count)) + zp_out.
//   requantize(x s8) -> s8: the same values at other parameters (input_scale,
//     input_zero_point, output_scale, output_zero_point, rounding; optional act_min, act_max:
//     the clamp, default the int8 range). With the plain `concat` (ops/shape_ops.h, any dtype)
//     it is TFLite's int8 concatenation: each input whose parameters differ from the output's
//     requantized to them, then the codes copied.
//   quantize(x f32) -> s8 (scale, zero_point): clamp(round_away(x / scale) + zp).
//   dequantize(q s8) -> f32 (scale, zero_point): scale * (q - zp).
// None is differentiable (integer outputs). Errors when applied: DTypeError for an argument of
// another dtype, ShapeError for mismatched shapes (naming the argument), ValueError for a
// missing or invalid quantization attribute (a scale that is not finite and > 0, a zero point
// outside int8, a weight_scales list of the wrong length, a multiplier of 2^30 or more).
#pragma once

#include "lowbit/ops/base.h"

namespace lowbit::ops {

template <Operand T>
T qconv2d(const T& x, const T& w, const T& bias, const Attrs& attrs) {
  return apply1("qconv2d", {x, w, bias}, attrs);
}
template <Operand T>
T qfully_connected(const T& x, const T& w, const T& bias, const Attrs& attrs) {
  return apply1("qfully_connected", {x, w, bias}, attrs);
}
template <Operand T>
T qmax_pool2d(const T& x, const Attrs& attrs) {
  return apply1("qmax_pool2d", {x}, attrs);
}
template <Operand T>
T qavg_pool2d(const T& x, const Attrs& attrs) {
  return apply1("qavg_pool2d", {x}, attrs);
}
template <Operand T>
T qadd(const T& a, const T& b, const Attrs& attrs) {
  return apply1("qadd", {a, b}, attrs);
}
template <Operand T>
T requantize(const T& x, const Attrs& attrs) {
  return apply1("requantize", {x}, attrs);
}
template <Operand T>
T quantize(const T& x, double scale, int64_t zero_point) {
  return apply1("quantize", {x}, {{"scale", scale}, {"zero_point", zero_point}});
}
// Quantization-aware training of the bias the integer ops read: b f32 [C], input_step f32 []
// (s_in, the input's grid step), weight_step f32 [] or [C] (s_w). y[c] = q * bs with
// bs = f32(s_in * s_w[c]) and q = quant::quantize_bias(b[c], bs), the int32 code qconv2d and
// qfully_connected get; b[c] unchanged where bs is not finite and > 0. Gradient: dy for b
// (straight through), none for the steps.
template <Operand T>
T fake_quant_bias(const T& bias, const T& input_step, const T& weight_step) {
  return apply1("fake_quant_bias", {bias, input_step, weight_step});
}
template <Operand T>
T dequantize(const T& x, double scale, int64_t zero_point) {
  return apply1("dequantize", {x}, {{"scale", scale}, {"zero_point", zero_point}});
}

}  // namespace lowbit::ops
