// Fused recurrences (LSTM, GRU, SimpleRNN) over a whole sequence, with Keras semantics
// (shared docs/spec/layer-semantics.md section 6). f32 throughout.
//
// The input projection is NOT part of these ops: project every step at once with one matmul
// (x [B,T,D] @ kernel [D,G*U] + bias -> x_proj [B,T,G*U]) and hand x_proj over. The op runs
// the per-step recurrence h_{t-1} @ recurrent_kernel [U,G*U] and the gates, and its gradient is
// one fused backward-through-time op. G is the number of gate blocks: 4 (LSTM, blocks i f c o),
// 3 (GRU, blocks z r h), 1 (SimpleRNN).
//
//   Value xp = ops::matmul(x, kernel) + bias;                       // [B,T,4U], one GEMM
//   auto r = ops::lstm_sequence(xp, recurrent_kernel, h0, c0, {}, mask);
//   Value y = r.y;  Value h = r.states[0], c = r.states[1];
//
// Cells, with act = `activation` (default tanh) and ract = `recurrent_activation` (default
// sigmoid), one step on the carried state (h, c), x_t = x_proj[:, t]:
//   LSTM       z = x_t + h @ R;  i = ract(z_i) f = ract(z_f) g = act(z_c) o = ract(z_o)
//              c' = f c + i g;  h' = o act(c')
//   GRU, reset_after = true (Keras default; rb = the recurrent bias, Keras bias[1]):
//              [r_z|r_r|r_h] = h @ R + rb;  z = ract(x_z + r_z)  r = ract(x_r + r_r)
//              hh = act(x_h + r * r_h);  h' = z h + (1 - z) hh
//   GRU, reset_after = false: z, r from h @ R[:, :2U] + rb[:2U];
//              hh = act(x_h + (r * h) @ R[:, 2U:] + rb[2U:]);  h' = z h + (1 - z) hh
//              (Keras has no recurrent bias here: pass zeros)
//   SimpleRNN  h' = act(x_t + h @ R)
// Supported activations: tanh, sigmoid, hard_sigmoid (Keras 3: relu6(x+3)/6), relu, linear
// (ValueError otherwise).
//
// Time and masks (Keras' generic masked recurrence, layer-semantics.md 6.3). Steps run in
// processing order t = 0..T-1, reading input step T-1-t when `go_backwards`. `mask` [B,T] (bool,
// or f32 where nonzero = valid; indexed by INPUT time) marks valid steps; without a mask every
// step is valid. At a masked step nothing is computed from x_t: the states carry over
// unchanged (selection, never arithmetic blending: Inf/NaN in x_proj at masked steps cannot
// leak, and their gradient is exactly 0) and the output is
//   out_t = out_{t-1} (out_{-1} = 0, zeros, not h0)   or, with zero_output_for_mask, 0.
// At a valid step out_t = h'. Outputs:
//   y       return_sequences: [B,T,U], y[:, t] = out_t in PROCESSING order (reversed w.r.t. the
//           input when go_backwards, as Keras); otherwise [B,U] = out_{T-1} (the last valid
//           output, zeros for a fully masked row; with zero_output_for_mask, zeros when the
//           last processed step is masked).
//   states  the carried states after the last step: {h, c} (LSTM) or {h}; the initial states
//           for a fully masked row.
// The op has further outputs that the backward pass reads (workspace, indexed by input time):
// h_prev [B,T,U] and (LSTM) c_prev [B,T,U], the states carried INTO each step, and the gates
// [B,T,W] of valid steps (0 at masked steps): LSTM W = 5U (i, f, g, o, act(c')), GRU W = 4U
// (z, r, hh, then r_h for reset_after or r * h otherwise), SimpleRNN W = U (h'). They carry no
// gradient: a graph that differentiates through them throws UnsupportedError.
//
// `recurrent_dropout_mask` (optional, f32 [B, G*U], Keras' recurrent dropout when
// recurrent_dropout > 0): block k of the mask multiplies h before it enters gate block k of
// the recurrent product (h @ R becomes (h * m_k) @ R_k per block; for GRU reset_after=false
// the candidate uses (r * h * m_h) @ R_h). The carried state itself is not masked. Runs on the
// reference kernel only (slow).
//
// Gradients (one fused backward-through-time op per cell, *_sequence_backward): w.r.t. x_proj,
// recurrent_kernel, the recurrent bias (GRU) and the initial states; none for the masks.
// Shapes may hold kUnknown batch and time dims in graphs. Errors: DTypeError (not f32; a mask
// neither bool nor f32), ShapeError (ranks, U or G*U disagreeing between arguments, a mask
// not [B,T]), ValueError (unknown activation, wrong input count for the flags).
#pragma once

#include <string>
#include <vector>

#include "lowbit/ops/base.h"

namespace lowbit::ops {

struct RnnOptions {
  bool go_backwards = false;
  bool return_sequences = true;
  bool zero_output_for_mask = false;
  std::string activation = "tanh";
  std::string recurrent_activation = "sigmoid";  // LSTM and GRU
  bool reset_after = true;                       // GRU only
};

template <Operand T>
struct RnnOutputs {
  T y;                    // [B,T,U] or [B,U] (see return_sequences)
  std::vector<T> states;  // final {h, c} (LSTM) or {h}, each [B,U]
};

}  // namespace lowbit::ops

namespace lowbit::detail {
// The attributes and the optional trailing inputs (mask, recurrent dropout mask) of a
// *_sequence op.
template <Operand T>
std::vector<T> rnn_inputs(std::vector<T> in, const T& mask, const T& recurrent_dropout_mask,
                          Attrs& attrs) {
  if (mask.defined()) in.push_back(mask);
  if (recurrent_dropout_mask.defined()) in.push_back(recurrent_dropout_mask);
  attrs.set("masked", mask.defined());
  attrs.set("recurrent_dropout", recurrent_dropout_mask.defined());
  return in;
}
inline Attrs rnn_attrs(const ops::RnnOptions& o, bool gated) {
  Attrs a{{"go_backwards", o.go_backwards},
          {"return_sequences", o.return_sequences},
          {"zero_output_for_mask", o.zero_output_for_mask},
          {"activation", o.activation}};
  if (gated) a.set("recurrent_activation", o.recurrent_activation);
  return a;
}
}  // namespace lowbit::detail

namespace lowbit::ops {

// "lstm_sequence": x_proj [B,T,4U], recurrent_kernel [U,4U], h0 [B,U], c0 [B,U] (+ mask,
// recurrent dropout mask). Outputs y, h, c, then the workspace h_prev, c_prev, gates [B,T,5U].
template <Operand T>
RnnOutputs<T> lstm_sequence(const T& x_proj, const T& recurrent_kernel, const T& h0, const T& c0,
                            const RnnOptions& o = {}, const T& mask = T(),
                            const T& recurrent_dropout_mask = T()) {
  Attrs attrs = lowbit::detail::rnn_attrs(o, true);
  auto in = lowbit::detail::rnn_inputs<T>({x_proj, recurrent_kernel, h0, c0}, mask,
                                          recurrent_dropout_mask, attrs);
  std::vector<T> r = apply("lstm_sequence", in, attrs);
  return {r[0], {r[1], r[2]}};
}

// "gru_sequence": x_proj [B,T,3U], recurrent_kernel [U,3U], recurrent_bias [3U], h0 [B,U]
// (+ mask, recurrent dropout mask). Outputs y, h, then the workspace h_prev, gates [B,T,4U].
template <Operand T>
RnnOutputs<T> gru_sequence(const T& x_proj, const T& recurrent_kernel, const T& recurrent_bias,
                           const T& h0, const RnnOptions& o = {}, const T& mask = T(),
                           const T& recurrent_dropout_mask = T()) {
  Attrs attrs = lowbit::detail::rnn_attrs(o, true);
  attrs.set("reset_after", o.reset_after);
  auto in = lowbit::detail::rnn_inputs<T>({x_proj, recurrent_kernel, recurrent_bias, h0}, mask,
                                          recurrent_dropout_mask, attrs);
  std::vector<T> r = apply("gru_sequence", in, attrs);
  return {r[0], {r[1]}};
}

// "simple_rnn_sequence": x_proj [B,T,U], recurrent_kernel [U,U], h0 [B,U] (+ mask, recurrent
// dropout mask). Outputs y, h, then the workspace h_prev, gates [B,T,U] (h' of valid steps).
template <Operand T>
RnnOutputs<T> simple_rnn_sequence(const T& x_proj, const T& recurrent_kernel, const T& h0,
                                  const RnnOptions& o = {}, const T& mask = T(),
                                  const T& recurrent_dropout_mask = T()) {
  Attrs attrs = lowbit::detail::rnn_attrs(o, false);
  auto in = lowbit::detail::rnn_inputs<T>({x_proj, recurrent_kernel, h0}, mask,
                                          recurrent_dropout_mask, attrs);
  std::vector<T> r = apply("simple_rnn_sequence", in, attrs);
  return {r[0], {r[1]}};
}

// The backward ops (used by the gradient rules; not differentiable), same attributes as their
// forward op:
//   lstm_sequence_backward(dy, dh, dc, recurrent_kernel, h_prev, c_prev, gates [, mask]
//                          [, recurrent_dropout_mask]) -> d x_proj, d recurrent_kernel, dh0, dc0
//   gru_sequence_backward(dy, dh, recurrent_kernel, h_prev, gates [, masks])
//                          -> d x_proj, d recurrent_kernel, d recurrent_bias, dh0
//   simple_rnn_sequence_backward(dy, dh, recurrent_kernel, h_prev, gates [, masks])
//                          -> d x_proj, d recurrent_kernel, dh0
// dy has y's shape; dh, dc are the gradients of the final states.

}  // namespace lowbit::ops
