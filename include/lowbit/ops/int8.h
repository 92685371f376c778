// Integer-only inference ops (int8 activations and weights, int32 biases): what a converted
// model (lowbit/quant/convert.h) runs. TFLite's int8 reference semantics, bit for bit
// (docs/spec/quantization-semantics.md 3.1-3.6); every number they need beyond the codes is an
// attribute, turned into fixed-point output stages once per plan by the op's prepare step
// (include/lowbit/fixed_point.h), so a run does only integer work.
//
// Codes and their parameters: real = scale * (q - zero_point). Activations s8 with a zero
// point; weights s8 symmetric (zero point 0), one scale per output channel or one per tensor;
// biases s32 at scale f32(s_in * s_w[c]) with zero point 0. The uint8 scheme of an integer model
// (u8 activations, lowbit/quant/convert.h ActivationScheme::kUint8) runs on these s8 ops: its
// codes and zero points - 128, made once when the model's graph is built (every op here reads
// codes only as q - zp, by order, or through a table built from q - zp, so its codes come out
// the u8 ones - 128; docs/integer-inference.md "The uint8 scheme").
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
//   qlogistic(x s8) -> s8 at scale 1/256, zero point -128 (TFLite LOGISTIC's fixed output);
//   qtanh(x s8) -> s8 at scale 1/128, zero point 0 (TFLite TANH's): attributes input_scale,
//     input_zero_point; a 256-entry table built at prepare time, table[q] =
//     clamp(floor(f(s_in * (q - zp_in)) / s_out + 1/2) + zp_out), the real function in f64 of
//     the f32 input scale, rounded half up (TFLite's LUTPopulate rounds the f32 value half away
//     from zero; the two differ only on exact ties). Within 1/2 output step of the real function.
//   qsoftmax(x s8 [..., C]) -> s8 at scale 1/256, zero point -128 (TFLite SOFTMAX's), over the
//     last axis; attributes input_scale, input_zero_point, beta (default 1). Integer only at run
//     time: E(d) = floor(2^30 exp(-beta s_in d) + 1/2) for d = max_row - q in [0, 255] (a
//     256-entry int32 table built at prepare time), S = the row's int64 sum of E, y =
//     clamp(floor(256 E / S + 1/2) - 128) by exact integer division. Not TFLite's gemmlowp
//     reference (exp in Q5.26, a Newton reciprocal), which can be one code off from this;
//     within 1/2 step + 2^-21 of the real softmax of the dequantized input.
//   For all three, output_scale / output_zero_point may be given but must be the fixed values.
//   requantize(x s8) -> s8: the same values at other parameters (input_scale,
//     input_zero_point, output_scale, output_zero_point, rounding; optional act_min, act_max:
//     the clamp, default the int8 range). With the plain `concat` (ops/shape_ops.h, any dtype)
//     it is TFLite's int8 concatenation: each input whose parameters differ from the output's
//     requantized to them, then the codes copied.
//   quantize(x f32) -> s8 (scale, zero_point): clamp(round_away(x / scale) + zp).
//   dequantize(q s8) -> f32 (scale, zero_point): scale * (q - zp).
//
// Recurrent (spec 3.7 "8x8_16"; src/ops/int8_recurrent_ops.cc; docs/integer-inference.md):
//   qlstm(x s8 [B,T,D], w_x s8 [D,4U], w_h s8 [U,4U], bias s32 [4U] [, mask bool [B,T]])
//   qgru(x, w_x s8 [D,3U], w_h s8 [U,3U], input_bias s32 [3U], recurrent_bias s32 [3U]
//        [, mask]) -> s8 [B,T,U] (return_sequences, in processing order) or [B,U]
//     Gate blocks side by side in Keras' order (LSTM i, f, c, o; GRU z, r, h); weights
//     symmetric, one scale per gate block; biases at s_side * s_W,g (the LSTM's and a
//     reset_after = false GRU's biases on the input side only: its recurrent_bias is not
//     read). h0 = 0, c0 = 0.
//     Attributes: input_scale, input_zero_point (x), hidden_scale, hidden_zero_point (h and the
//     output: one grid), input_weight_scales and recurrent_weight_scales (G f64 each),
//     cell_int_bits p in [0, 6] (qlstm: cell codes at 2^(p-15)), reset_after (qgru, default
//     true), return_sequences, go_backwards, zero_output_for_mask (bools, default false),
//     reverse_output (with return_sequences and go_backwards only: the output of the step that
//     read x[:, t] is stored at t, the input's time order, as Keras' Bidirectional reverses
//     its backward sequence).
//     Gate sums Q3.12 (int16), gates Q0.15 by gemmlowp's logistic_int16/tanh_int16. At a step
//     with mask false h and c keep their codes and the output repeats the last valid output
//     (hidden_zero_point before the first valid step, or always with zero_output_for_mask).
//     Kernels: the reference, and fast rows qlstm_s8__avx512_vnni / __avx2, qgru_s8__... (one
//     GEMM for every step's input projection; src/kernels/fast/int8_rnn.h), bit-identical.
//   timestep_mask(x f32 [B,T,D]) -> bool [B,T]: any(x[b,t,:] != mask_value) (Keras Masking).
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
T qlogistic(const T& x, const Attrs& attrs) {
  return apply1("qlogistic", {x}, attrs);
}
template <Operand T>
T qtanh(const T& x, const Attrs& attrs) {
  return apply1("qtanh", {x}, attrs);
}
template <Operand T>
T qsoftmax(const T& x, const Attrs& attrs) {
  return apply1("qsoftmax", {x}, attrs);
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
// The integer LSTM / GRU (above); `mask` may be undefined (no mask).
template <Operand T>
T qlstm(const T& x, const T& w_x, const T& w_h, const T& bias, const T& mask, const Attrs& attrs) {
  if (!mask.defined()) return apply1("qlstm", {x, w_x, w_h, bias}, attrs);
  return apply1("qlstm", {x, w_x, w_h, bias, mask}, attrs);
}
template <Operand T>
T qgru(const T& x, const T& w_x, const T& w_h, const T& input_bias, const T& recurrent_bias,
       const T& mask, const Attrs& attrs) {
  if (!mask.defined()) return apply1("qgru", {x, w_x, w_h, input_bias, recurrent_bias}, attrs);
  return apply1("qgru", {x, w_x, w_h, input_bias, recurrent_bias, mask}, attrs);
}
template <Operand T>
T timestep_mask(const T& x, double mask_value) {
  return apply1("timestep_mask", {x}, {{"mask_value", mask_value}});
}
template <Operand T>
T dequantize(const T& x, double scale, int64_t zero_point) {
  return apply1("dequantize", {x}, {{"scale", scale}, {"zero_point", zero_point}});
}

}  // namespace lowbit::ops
