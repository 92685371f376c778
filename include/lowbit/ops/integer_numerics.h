// Integer-LSTM numerics as f32 graph ops, for quantization-aware training of recurrent layers
// (shared quantization-semantics.md 3.7; lowbit/quant/recurrent.h uses them). Each op takes and
// returns f32 whose values lie on the grid the integer kernel uses, so a trained model's
// forward is what the integer kernel will compute there.
//
//   fake_quant_pot(x, exponent, bits = 16)   the fixed grid k * 2^exponent, k in
//       [-2^(bits-1), 2^(bits-1) - 1], zero point 0 (the int16 cell state at 2^(p-15), the Q3.12
//       gate sums at 2^-12). Per element: y = clamp(round_away(x / 2^e), kmin, kmax) * 2^e, ties
//       AWAY from zero (as RoundingDivideByPOT; the TF fake quant sends them up). Idempotent:
//       fake_quant_pot(y) == y for y on the grid. NaN stays NaN.
//       Gradient (STE): dx = dy where kmin * 2^e <= x <= kmax * 2^e (ends included), else 0;
//       none for exponent.
//   fixed_logistic(x)   x to its Q3.12 code q = clamp(round_away(x * 2^12), -32768, 32767)
//       (i.e. fake_quant_pot(x, -12) saturated to [-8, 8 - 2^-12]), then gemmlowp's int16
//       logistic (quant::logistic_int16): y = logistic_int16(q) / 2^15, in [0, 32767 / 2^15].
//       fixed_logistic(0) = 0.5.
//   fixed_tanh(x, int_bits)   the same with the format Q(p).(15-p), p = int_bits: code q =
//       clamp(round_away(x * 2^(15-p)), -32768, 32767), y = tanh_int16(q, p) / 2^15, in
//       [-32767, 32767] / 2^15. p = 3 for the LSTM cell input gate, p = the cell's integer bits
//       for tanh(c).
//   Gradient of both (lowbit's choice, spec 3.7 item 4): the FLOAT derivative at the quantized
//       input xq: dy * s (1 - s) with s = sigmoid(xq), and dy * (1 - tanh(xq)^2). So saturated
//       inputs still pass a (small) gradient; none for int_bits.
//
// Arguments: x f32 of any shape; exponent and int_bits are f32 SCALARS (shape []) holding an
// integer, run-time values so that a tracked cell range can move them during training. The
// kernels round them to the nearest integer and clamp them (exponent to [-60, 60], int_bits to
// [0, 6]); they never throw. bits (attribute): 2..16.
// Errors when the op is applied: DTypeError for non-f32 arguments, ShapeError for an exponent or
// int_bits that is not a scalar, ValueError for bits outside [2, 16].
#pragma once

#include <string>
#include <vector>

#include "lowbit/ops/base.h"

namespace lowbit::ops {

template <Operand T>
T fake_quant_pot(const T& x, const T& exponent, int bits = 16) {
  return apply1("fake_quant_pot", {x, exponent}, {{"bits", bits}});
}
template <Operand T>
T fake_quant_pot(const T& x, int exponent, int bits = 16) {
  return fake_quant_pot(x, scalar_like(x, exponent), bits);
}

template <Operand T>
T fixed_logistic(const T& x) {
  return apply1("fixed_logistic", {x});
}

template <Operand T>
T fixed_tanh(const T& x, const T& int_bits) {
  return apply1("fixed_tanh", {x, int_bits});
}
template <Operand T>
T fixed_tanh(const T& x, int int_bits) {
  return fixed_tanh(x, scalar_like(x, int_bits));
}

// The integer LSTM/GRU step exactly (quant/recurrent.cc), forward only (no gradient: combine
// them with straight_through, whose gradient is that of a float expression of the same value):
//   straight_through(path, value)   y = value; dy goes to path only (shapes equal).
//   fixed_matmul(x, x_step, w, w_steps, bias, saturate = true)   x f32 [n, k] on the grid
//       x_step (f32 []), w [k, g*u] with gate block j on the grid w_steps[j] (f32 [g]), bias f32
//       [g*u] or undefined: the qlstm/qgru partial sum MBQM(round(b / bs) + sum kx kw, M) with
//       kx = x / x_step, kw = w / w_steps[j], bs = f32(x_step w_steps[j]), M = bs / 2^-12 as
//       (M0, shift) (double rounding), int32 arithmetic; saturated to int16 (saturate) and
//       returned as code * 2^-12.
//   fake_quant_pot_mul(a, b, exponent, bits = 16)   fake_quant_pot(a * b) with the product
//       exact (f64): RDPOT of a product of two int16 codes.
//   fixed_hidden(..., h_min, h_max, form, num_bits = 8, narrow_range = false)   the new h of
//       the step on h's fake-quant grid (fake_quant_nudge of h_min, h_max), returned as
//       fake_quant_with_min_max_vars returns that code: form "lstm" (o, t): MBQM(o t, 2^-30 /
//       s_h); "gru" (z, h, hh): RDPOT(z k_h + MBQM((32767 - z) hh, 2^-15 / s_h), 15); "reset"
//       (r, h): RDPOT(r k_h, 15); gates Q0.15 codes, k_h = h / s_h; clamped to the grid.
// Garbage inputs (off-grid, huge, NaN) give garbage but never undefined behaviour.
template <Operand T>
T straight_through(const T& path, const T& value) {
  return apply1("straight_through", {path, value});
}
template <Operand T>
T fixed_matmul(const T& x, const T& x_step, const T& w, const T& w_steps, const T& bias,
               bool saturate = true) {
  if (!bias.defined())
    return apply1("fixed_matmul", {x, x_step, w, w_steps}, {{"saturate", saturate}});
  return apply1("fixed_matmul", {x, x_step, w, w_steps, bias}, {{"saturate", saturate}});
}
template <Operand T>
T fake_quant_pot_mul(const T& a, const T& b, const T& exponent, int bits = 16) {
  return apply1("fake_quant_pot_mul", {a, b, exponent}, {{"bits", bits}});
}
template <Operand T>
T fixed_hidden(const std::vector<T>& gates_and_h, const T& h_min, const T& h_max,
               const std::string& form, int num_bits = 8, bool narrow_range = false) {
  std::vector<T> in = gates_and_h;
  in.push_back(h_min);
  in.push_back(h_max);
  return apply1("fixed_hidden", in,
                {{"form", form}, {"num_bits", num_bits}, {"narrow_range", narrow_range}});
}

}  // namespace lowbit::ops
