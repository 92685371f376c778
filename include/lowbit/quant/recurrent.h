// Quantization-aware training of LSTM and GRU layers on the integer LSTM's grid
// (shared quantization-semantics.md 3.7, "8x8_16": int8 input, weights and hidden state, int16
// gate sums and cell state). quantize_model (lowbit/quant/quantize_model.h) turns every LSTM and
// GRU into one of these layers; they can also be built by hand:
//
//   auto q = quant::QuantizedRecurrent(nn::LSTM(32, {.return_sequences = true}));
//   nn::KTensor y = (*q)(x);          // masks reach it as they reach the float layer
//
// The layer holds a float LSTM/GRU as its sublayer (same config and weights, Keras layout, saved
// as "<name>/<name>/kernel", ...) and computes, unrolled over time with graph ops (so autodiff
// gives backpropagation through time), the integer step in float. Per step, in processing order:
//
//   x_q   = FQ_x(x)                        int8 asymmetric, EMA range ("x_min", "x_max")
//   W_q   = FQ_w(W) per gate block          int8 symmetric narrow, one range per gate block of
//                                           kernel and recurrent_kernel (last value;
//                                           "kernel_min"/"kernel_max" [G], ...); biases float
//   a_g   = P(P(x_q W_x,g + b_g) + P(h W_h,g))   P = fake_quant_pot(., -12): the Q3.12 grid, so
//                                           the sum is also clamped to [-8, 8 - 2^-12]
//   LSTM (gates i, f, c, o):
//     i, f, o = fixed_logistic(a);  g = fixed_tanh(a_c, 3)       Q0.15 (gemmlowp int16)
//     c' = C(C(f c) + C(i g))              C = fake_quant_pot(., p - 15): the int16 cell grid
//                                           2^(p-15), ties away from zero, saturating
//     h' = FQ_h(o fixed_tanh(c', p))       int8 asymmetric EMA ("h_min", "h_max"), ONE quantizer
//                                           for the output sequence and the recurrent input
//   GRU (gates z, r, h; Keras reset_after = true; the spec's lowbit extension):
//     z, r = fixed_logistic(a_z, a_r)
//     hh = fixed_tanh(P(P(x_q W_x,h + b_x,h) + P(r P(h W_h,h + b_h,h))), 3)
//     h' = FQ_h(z h + (1 - 2^-15 - z) hh)   (1 - z is the code 32767 - z)
//     reset_after = false: r h is requantized with h's quantizer before its matmul, and the
//     candidate's recurrent partial sum carries no bias.
//
// Exactness: the forward is the integer op's (qlstm/qgru) arithmetic, not a float rounding of
// the formulas above: the partial sums are ops::fixed_matmul of the codes (the bias rounded to
// its int32 grid s_side s_W,g, the (M0, shift) multiplier f32(s_side s_W,g) / 2^-12 with double
// rounding; the recurrent sum of a gate is not saturated before it is added, the GRU
// candidate's is), the products f c, i g, r p_h are rounded exactly (ops::fake_quant_pot_mul),
// and the new h (and r h) code is the op's (ops::fixed_hidden: MBQM, RDPOT, ties away from
// zero). Each such value goes through ops::straight_through: its gradient is that of the float
// expression written above (FQ's, P's and C's straight-through estimators). With dropout or
// recurrent_dropout in training the inputs are off their grids and the float expressions are
// the forward there (the integer model has no dropout).
//
// The cell exponent p (LSTM) is the smallest integer in [0, 6] with 2^p >= m, m the cell's
// tracked max |c| ("cell_max_abs", EMA over the sums before saturation, so it can grow). Since
// c depends on p, the forward of a training step uses the ranges of h and the cell as they were
// BEFORE this step's update (the recurrence needs them at step 1), while x and the weights use
// their just-updated ranges (semantics 2.1); at inference every range is read unchanged.
//
// Masks (spec 3.7 "Masks"; layer-semantics.md 6.3): the timestep mask of x (ctx.input_masks[0])
// selects with ops::where: at a masked step h and c keep their quantized values bit for bit and
// the output repeats the last valid output (zeros before the first valid step; zeros at every
// masked step with zero_output_for_mask). Masked steps of x are replaced by 0 before anything
// reads them, so padded garbage (huge values, Inf, NaN) changes neither valid outputs, nor
// gradients, nor ranges. Trackers update in training mode only and from valid steps only; a
// batch without any valid step leaves them unchanged.
//
// Options of the float layer: return_sequences, return_state, go_backwards, initial states (h0
// is put on h's grid, c0 on the cell grid), zero_output_for_mask, use_bias. dropout on x (one
// mask per sequence and feature, Keras' rule) and recurrent_dropout on h where it enters the
// recurrent products (ONE mask [B, U] shared by the gate blocks: a simplification of Keras'
// per-gate masks) apply in training mode, as float noise after quantization. activation must be
// tanh and recurrent_activation sigmoid (what the integer kernel computes); the number of
// timesteps must be known when the layer is traced (it is unrolled). Otherwise UnsupportedError
// naming the layer.
//
// Settings: `activations` (scheme "tf" only; bits, ema_decay, init_min/init_max, range
// "moving_average" or "all_values" or "last_value") for x and h; the cell tracker uses its
// ema_decay and starts at max(|init_min|, |init_max|) (6 -> p = 3); `weight_bits` for the
// blocks (narrow, symmetric). `activations.freeze_after` (>= 0) stops the x, h and cell trackers
// after that many training steps; `quant_delay` > 0 runs the float cell (sigmoid, tanh, float
// weights and states, 1 - z) for the first quant_delay training steps while the trackers run.
// Both use a step counter weight "step" (present only when one of them is set).
// Config {"layer": {class_name, config}, "activations": {...}, "weight_bits": b,
// "quant_delay": d}; class names
// "QuantizedLSTM" and "QuantizedGRU" (registered: load_model rebuilds them).
#pragma once

#include <string>

#include "lowbit/nn/layer.h"
#include "lowbit/quant/quantizer.h"

namespace lowbit::quant {

class QuantizedRecurrentLayer : public nn::Layer {
 public:
  // `layer`: an LSTM or GRU (ValueError otherwise); UnsupportedError for the cases above.
  // quant_delay: float warm-up steps, as FakeQuant's (quantize_model.h): before it the layer is
  // the float LSTM/GRU (sigmoid, tanh, no grids) while its range trackers already run.
  QuantizedRecurrentLayer(nn::LayerPtr layer, QuantizerConfig activations, int weight_bits,
                          std::string name, int64_t quant_delay = 0);
  std::string class_name() const override { return lstm_ ? "QuantizedLSTM" : "QuantizedGRU"; }
  bool has_quantizer_state() const override { return true; }
  // Its x/h ranges were never updated (step counter 0, or without one: both still at their
  // initial values).
  bool awaiting_calibration() const override;
  int num_inputs() const override { return -1; }
  void build(const std::vector<Shape>& input_shapes) override;
  std::vector<Value> call(const std::vector<Value>& inputs, nn::CallContext& ctx) override;
  std::vector<Value> compute_mask(const std::vector<Value>& inputs,
                                  const std::vector<Value>& outputs, nn::CallContext& ctx) override;
  Json get_config() const override;
  std::string summary_note() const override;
  std::vector<nn::LayerPtr> sublayers() const override { return {layer_}; }
  void set_trainable(bool t) override;

  const nn::LayerPtr& layer() const { return layer_; }
  const QuantizerConfig& activations() const { return act_; }
  int weight_bits() const { return weight_bits_; }
  int64_t quant_delay() const { return quant_delay_; }
  // Sets the weight ranges from the float weights (quantize_model calls it after copying them).
  void init_from_weights();
  // The fake-quantized kernel and recurrent kernel the layer computes with (inference mode).
  Tensor quantized_kernel() const;
  Tensor quantized_recurrent_kernel() const;
  // The cell's integer bits p in [0, 6] from the tracked max |c| (LSTM; 0 for a GRU).
  int cell_int_bits() const;

 private:
  const nn::Weight& state(const std::string& name) const;
  nn::Weight& state(const std::string& name);
  Value quantize_blocks(const Value& w, const std::string& name, nn::CallContext& ctx,
                        Value* steps = nullptr);

  nn::LayerPtr layer_;
  QuantizerConfig act_;
  int weight_bits_;
  int64_t quant_delay_ = 0;
  bool lstm_ = true;
  Json inner_;  // the float layer's config
  int64_t units_ = 0;
  int gates_ = 4;
};

// Bidirectional(LSTM | GRU) for QAT ("QuantizedBidirectional"): the float Bidirectional's two
// recurrent layers as two QuantizedLSTM/QuantizedGRU (named like the float ones,
// "forward_lstm", "backward_lstm"), with the float wrapper's merge (concat, sum, ave, mul,
// none), output order, masks (both directions see the input mask; zeros at masked steps when
// returning sequences) and initial states (the first half to the forward layer). Each direction
// has its own x and h quantizers (spec 3.7 suggests one h quantizer for both so that a concat
// needs no requantization; a converter can still take the union of the two ranges).
// `bidirectional_config`: the float layer's get_config(); ValueError for another inner class.
class QuantizedBidirectionalLayer : public nn::Layer {
 public:
  QuantizedBidirectionalLayer(const Json& bidirectional_config, QuantizerConfig activations,
                              int weight_bits, std::string name, int64_t quant_delay = 0);
  std::string class_name() const override { return "QuantizedBidirectional"; }
  bool has_quantizer_state() const override { return true; }
  int num_inputs() const override { return -1; }
  void build(const std::vector<Shape>& input_shapes) override;
  std::vector<Value> call(const std::vector<Value>& inputs, nn::CallContext& ctx) override;
  std::vector<Value> compute_mask(const std::vector<Value>& inputs,
                                  const std::vector<Value>& outputs, nn::CallContext& ctx) override;
  Json get_config() const override;
  std::vector<nn::LayerPtr> sublayers() const override { return {forward_, backward_}; }
  void set_trainable(bool t) override;
  // Both directions' quantizers (each as QuantizedRecurrentLayer::summary_note).
  std::string summary_note() const override;

  const std::shared_ptr<QuantizedRecurrentLayer>& forward_layer() const { return forward_; }
  const std::shared_ptr<QuantizedRecurrentLayer>& backward_layer() const { return backward_; }
  // Copies the float weights of `bidirectional` (a built float Bidirectional with the same
  // config: weights "forward_lstm/kernel", ...) into the two directions and sets their weight
  // ranges from them (quantize_model calls it).
  void copy_float_weights(const nn::Layer& bidirectional);

 private:
  std::shared_ptr<QuantizedRecurrentLayer> forward_, backward_;
  std::string merge_mode_;
  bool sequences_ = false;
};

// A QuantizedLSTM / QuantizedGRU around `layer` (name: the layer's).
nn::LayerPtr QuantizedRecurrent(nn::LayerPtr layer,
                                QuantizerConfig activations = default_activation_quantizer(),
                                int weight_bits = 8, const std::string& name = "",
                                int64_t quant_delay = 0);

}  // namespace lowbit::quant
