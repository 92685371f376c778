// Quantization-aware training (QAT): the layers that carry fake quantizers and their state.
// docs/quantization.md explains where fake quantization goes and why; the numerics are
// docs/spec/quantization-semantics.md (sections 1, 2.1-2.4, 4).
//
// Fake quantization rounds a float tensor to the grid an integer kernel will use and keeps it
// f32, so the loss of a training step sees the quantization error while the optimizer updates
// full-precision weights (the gradient passes straight through the rounding: STE). A trained
// network has two kinds of tensors to put on a grid:
//
//   weights      x ──► conv/matmul ◄── FQ(kernel)        the kernel is quantized BEFORE the
//                                                         conv reads it: QuantizeWrapper
//   activations  conv ─► +bias ─► [BN] ─► [ReLU] ─► FQ   the layer output is quantized AFTER
//                                                         the whole fused pattern: FakeQuant
//
// So calling a fake-quant op "after a conv layer" quantizes the conv's OUTPUT (an activation);
// the weights are quantized by a quantizer on the kernel input of the conv. quantize_model
// (lowbit/quant/quantize_model.h) places both kinds automatically.
//
// A quantizer's state lives in weights of the layer that owns it, like BatchNormalization's
// moving statistics: tracked ranges (min/max, per tensor or per channel) and a step counter are
// non-trainable; a learned step size (LSQ) or clipping level (PACT) is trainable. In training
// mode (CallContext::training()) the range trackers update as state updates and the fake-quant
// op uses the just-updated range in the same step (semantics 2.1); in inference mode the state
// is read only. The state is saved and loaded with the model.
//
//   auto fq = quant::FakeQuant(quant::default_activation_quantizer());   // a layer
//   nn::KTensor y = (*fq)((*nn::ReLU())(x));
//   auto wrapped = quant::QuantizeWrapper(nn::Conv2D(32, 3), {{"kernel",
//                                         quant::default_weight_quantizer()}});
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lowbit/nn/layer.h"
#include "lowbit/quant/observer.h"
#include "lowbit/quant/range.h"

namespace lowbit::quant {

using nn::Json;

// ---- Configuration of one quantizer ---------------------------------------------------------
//
// scheme     what grid and which op (semantics section in brackets):
//   "tf"       TensorFlow fake_quant_with_min_max_vars[_per_channel] with the nudge (1.2-1.4),
//              range from a tracker (2.1). The default.
//   "torch"    PyTorch fake_quantize_per_{tensor,channel}_affine (4.1), (scale, zero_point)
//              from an observer (4.2). Signed grid for symmetric, unsigned for asymmetric.
//   "lsq"      learned step size (4.3): a trainable step per tensor or per channel, initialised
//              to 2 mean|x| / sqrt(Q_P) from the float weights (activations: from init_max).
//   "pact"     activations only: learned clipping level alpha (4.4), range [0, alpha],
//              alpha initialised to init_max.
//   "binary"   weights only: alpha * sign(w), alpha = mean|w| per output channel (or tensor).
//   "ternary"  weights only: TWN, {-alpha, 0, alpha} with threshold 0.7 mean|w|.
//   "none"     identity (keeps the placement without quantizing; tests and ablations).
// bits       2..16 (binary and ternary ignore it).
// symmetric  range symmetric around 0 (weights); narrow_range drops the lowest code
//            (TF: codes [1, 2^b - 1], so an 8-bit symmetric range has 127 steps each side).
// per_channel  one range per channel of the quantized tensor's last axis (for kernels: per
//            output channel; see QuantizeWrapper for DepthwiseConv2D).
// range      how a tracked range follows the data (tf and torch schemes):
//   tf:    "last_value" (weights), "moving_average" (EMA without bias correction, TFMOT),
//          "moving_average_debiased" (TF1 contrib.quantize), "all_values" (model inputs),
//          "fixed" (never updated: [init_min, init_max], which must hold 0; the fixed output
//          grids of sigmoid, tanh and softmax that quantize_model places).
//   torch: "minmax" (running min/max), "moving_average" (first batch, then EMA with
//          averaging constant 1 - ema_decay), "last_value".
// ema_decay  moving-average decay (TF 0.999; PyTorch's averaging constant 0.01 is decay 0.99).
// init_min/init_max  initial range (TFMOT: -6/6 weights and activations, 0/0 all_values).
// freeze_after  training steps after which the range stops tracking (-1: never).
struct QuantizerConfig {
  std::string scheme = "tf";
  int bits = 8;
  bool symmetric = false;
  bool narrow_range = false;
  bool per_channel = false;
  std::string range = "moving_average";
  double ema_decay = 0.999;
  double init_min = -6;
  double init_max = 6;
  int64_t freeze_after = -1;

  bool operator==(const QuantizerConfig&) const = default;
};

// Defaults (issue 4): weights per-channel symmetric narrow-range last_value, 8 bit; activations
// per-tensor asymmetric moving average (decay 0.999, init -6/6, no debias, TFMOT); model inputs
// all_values (init 0/0, TFMOT's QuantizeLayer).
QuantizerConfig default_weight_quantizer();
QuantizerConfig default_activation_quantizer();
QuantizerConfig default_input_quantizer();

// The role a quantizer plays; some schemes fit only one (pact: activations; binary, ternary:
// weights).
enum class QuantizerRole { kWeight, kActivation };

// Throws ValueError naming `who` and the field: unknown scheme or range mode, a scheme used in
// the wrong role, bits outside [2, 16], decay outside [0, 1], init_min > init_max, an
// all_values/last_value range that cannot apply, freeze_after < -1.
void validate(const QuantizerConfig& config, QuantizerRole role, const std::string& who);

// {"scheme": ..., "bits": ..., ...}; from_json fills absent fields with the defaults given.
Json to_json(const QuantizerConfig& config);
QuantizerConfig quantizer_config_from_json(const Json& j, const QuantizerConfig& defaults = {});
// One line: "tf 8-bit sym narrow per-channel last_value".
std::string describe(const QuantizerConfig& config);

// QuantizerConfig is the one configuration a user writes. The tf and torch schemes run the
// reference algorithms, whose arguments mirror TF's range tracker and PyTorch's observer
// (RangeConfig, ObserverConfig, tested against their golden vectors); these derive them, the
// one place each field is translated. range_config: mode from `range` (a tf range name, else
// ValueError), bits, symmetric, narrow_range, per_channel, ema_decay, init_min/init_max.
// observer_config: per-tensor or per-channel (last axis) affine, averaging constant
// 1 - ema_decay (PyTorch's defaults for the rest).
RangeConfig range_config(const QuantizerConfig& config);
ObserverConfig observer_config(const QuantizerConfig& config);

// ---- One quantized tensor --------------------------------------------------------------------
//
// A Quantizer is not a layer: it lives in a layer (FakeQuant, QuantizeWrapper,
// FoldedConvBatchNorm) and keeps its state as that layer's weights, named `prefix` + field:
//   tf, torch:  "min", "max"    f32 [] or [channels]   non-trainable (tracked range)
//               debiased EMA also "min_biased", "max_biased", "count"
//   lsq:        "step_size"     f32 [] or [channels]   trainable
//   pact:       "alpha"         f32 []                 trainable
//   binary, ternary, none: no state.
// The owning layer keeps one "step" counter (s64 [], +1 per training step) for quant_delay and
// freeze_after.
class Quantizer {
 public:
  Quantizer() = default;
  Quantizer(std::string prefix, QuantizerConfig config, QuantizerRole role);

  const QuantizerConfig& config() const { return config_; }
  const std::string& prefix() const { return prefix_; }
  QuantizerRole role() const { return role_; }

  // Adds the state weights to `owner` for a tensor of `shape` (per channel: its last dim, which
  // must be known). Throws ShapeError otherwise.
  void build(nn::Layer& owner, const Shape& shape) const;
  // Starts the state from a concrete tensor: ranges as one tracker update from the initial
  // state would set them (last_value: the tensor's range), LSQ's step from its mean |x|.
  // quantize_model calls it for weights right after copying the float weights, so a quantized
  // model predicts sensibly before its first training step.
  void init_from(nn::Layer& owner, const Tensor& x) const;
  // Emits the quantizer on x (f32, last dim = channels when per channel). Training mode: the
  // tracker update is recorded (ctx.add_update) unless this state was already used in this
  // trace (a second call of a shared layer reuses the first call's range), and the op reads
  // the updated range. `step` is the owner's counter (read before its increment); quant_delay
  // > 0 makes the output x itself (identity gradient) while step < quant_delay, in training
  // mode only; trackers update throughout (semantics 2.2).
  // `grid_step`, when given, receives the step of the grid y lies on (grid()'s scale, f32 [] or
  // [channels], computed from the range this call used), or an undefined Value when y is not
  // on a stored grid (torch, binary, ternary schemes; a warm-up delay in training).
  Value apply(const Value& x, nn::CallContext& ctx, const nn::Layer& owner, const Value& step,
              int64_t quant_delay, Value* grid_step = nullptr) const;

  // The state tensors (undefined when the scheme has none): tracked min/max, or the range a
  // learned quantizer currently spans.
  Tensor min(const nn::Layer& owner) const;
  Tensor max(const nn::Layer& owner) const;
  // The grid this quantizer fake-quantizes onto in inference mode, from its current state: the
  // value of code q (in [qmin, qmax]) is scale[c] * (q - zero_point[c]), one entry per channel
  // (or one). What an integer converter stores (lowbit/quant/convert.h).
  //   tf     the nudge of fake_quant_with_min_max_vars (semantics 1.2, f32): codes [0 or 1,
  //          2^bits - 1], the nudged zero point and scale (max - min) / (qmax - qmin)
  //   lsq    step_size, zero point 0, codes lsq_range(bits, symmetric)
  //   pact   alpha / (2^bits - 1), zero point 0, codes [0, 2^bits - 1]
  // Other schemes (torch, binary, ternary, none) have no grid of this form here: UnsupportedError
  // naming the owner and the scheme.
  struct Grid {
    std::vector<float> scale;
    std::vector<int32_t> zero_point;
    int32_t qmin = 0, qmax = 255;
  };
  Grid grid(const nn::Layer& owner) const;
  // "kernel: tf 8-bit sym narrow per-channel(32) last_value, range [-0.41, 0.39]".
  std::string summary(const nn::Layer& owner) const;

 private:
  const nn::Weight* find(const nn::Layer& owner, const std::string& field) const;
  nn::Weight& get(nn::Layer& owner, const std::string& field) const;

  std::string prefix_;
  QuantizerConfig config_;
  QuantizerRole role_ = QuantizerRole::kActivation;
};

// ---- Layers -----------------------------------------------------------------------------------

// An activation (or model input) quantizer: y = FQ(x) with a tracked or learned range.
// Config {"quantizer": {...}, "quant_delay": n}. Weights: its Quantizer's state and "step".
class FakeQuantLayer : public nn::Layer {
 public:
  FakeQuantLayer(QuantizerConfig config, int64_t quant_delay, std::string name);
  std::string class_name() const override { return "FakeQuant"; }
  bool has_quantizer_state() const override { return true; }
  // Its range has not been updated by any training-mode step yet (step counter 0).
  bool awaiting_calibration() const override;
  void build(const std::vector<Shape>& input_shapes) override;
  std::vector<Value> call(const std::vector<Value>& inputs, nn::CallContext& ctx) override;
  Json get_config() const override;
  std::string summary_note() const override;

  const Quantizer& quantizer() const { return quantizer_; }
  int64_t quant_delay() const { return quant_delay_; }

 private:
  Quantizer quantizer_;
  int64_t quant_delay_;
};
nn::LayerPtr FakeQuant(QuantizerConfig config = default_activation_quantizer(),
                       int64_t quant_delay = 0, const std::string& name = "");

// Names of the weights a layer's fake quantizers act on (never biases): Dense, Conv1D, Conv2D
// "kernel"; DepthwiseConv2D "depthwise_kernel"; SeparableConv2D "depthwise_kernel" and
// "pointwise_kernel"; Embedding "embeddings"; SimpleRNN, LSTM, GRU "kernel" and
// "recurrent_kernel" (per channel: per column, i.e. per gate unit); empty for other classes.
std::vector<std::string> quantizable_weights(const nn::Layer& layer);

// Weight quantization of a wrapped layer: the wrapped layer runs its own code, but when it reads
// a quantized weight through CallContext::var() it receives FQ(weight) (a weight hook,
// nn::CallContext::WeightHookScope); the float weight stays what the optimizer updates (its
// gradient is the STE gradient of the fake quant). The output is NOT quantized here: activation
// quantizers are FakeQuant layers placed after the fused pattern.
//
// Per channel means per OUTPUT channel: the kernel's last axis (Dense [in, units], Conv
// [.., cin, filters], SeparableConv2D pointwise [1, 1, C*M, filters], Embedding [ids, dim]: per
// output feature). DepthwiseConv2D kernels [kh, kw, C, M] produce output channel c*M + m, so
// they are viewed as [kh*kw, C*M] and quantized with C*M ranges (TFMOT's "last axis" would give
// only M, usually 1); the same for SeparableConv2D's depthwise kernel.
//
// Name: the wrapped layer's (so per-layer settings and get_layer() keep working); its weights
// are saved as "<name>/<name>/kernel" and the quantizer state as "<name>/kernel_min", ...
// Config {"layer": {class_name, config}, "weight_quantizers": {weight: {...}}, "quant_delay"}.
class QuantizeWrapperLayer : public nn::Layer {
 public:
  QuantizeWrapperLayer(nn::LayerPtr layer, std::map<std::string, QuantizerConfig> quantizers,
                       int64_t quant_delay, std::string name);
  std::string class_name() const override { return "QuantizeWrapper"; }
  bool has_quantizer_state() const override { return true; }
  int num_inputs() const override { return layer_->num_inputs(); }
  void build(const std::vector<Shape>& input_shapes) override;
  std::vector<Value> call(const std::vector<Value>& inputs, nn::CallContext& ctx) override;
  Json get_config() const override;
  std::string summary_note() const override;
  std::vector<nn::LayerPtr> sublayers() const override { return {layer_}; }
  void set_trainable(bool t) override;
  void validate_input(int index, const Tensor& value) const override;

  const nn::LayerPtr& layer() const { return layer_; }
  // The quantizer of weight `name` (ValueError if that weight is not quantized).
  const Quantizer& quantizer(const std::string& name) const;
  const std::map<std::string, Quantizer>& quantizers() const { return quantizers_; }
  int64_t quant_delay() const { return quant_delay_; }
  // Re-initialises every quantizer from the wrapped layer's current weights (Quantizer::init_from).
  void init_from_weights();
  // The weights the wrapped layer computes with (FQ of each quantized weight, inference mode),
  // evaluated eagerly: what an integer kernel would use.
  std::map<std::string, Tensor> effective_weights() const;
  // Bias rounding (QuantizeConfig::quantize_bias): when on and the input's grid step is known
  // (nn::CallContext::grid_step: the input comes from a FakeQuant, maybe through max pooling or
  // a reshape), the bias is rounded in the forward pass to its int32 grid s_in * s_w[c]
  // (ops::fake_quant_bias, straight through), as the integer model stores it: the QAT model
  // then computes what convert_to_integer's model computes. Off: a float bias (TF MOT and
  // PyTorch QAT). Saved as config "quantize_bias" (absent: off).
  void set_quantize_bias(bool on) { quantize_bias_ = on; }
  bool quantize_bias() const { return quantize_bias_; }

 private:
  // The kernel as the quantizer sees it (DepthwiseConv2D-style kernels flattened) and back.
  template <typename T>
  T to_channels_last(const std::string& weight, const T& w) const;

  nn::LayerPtr layer_;
  std::map<std::string, Quantizer> quantizers_;
  int64_t quant_delay_;
  bool quantize_bias_ = false;
};
nn::LayerPtr QuantizeWrapper(nn::LayerPtr layer, std::map<std::string, QuantizerConfig> quantizers,
                             int64_t quant_delay = 0, const std::string& name = "");

// Batch-norm folding for training (semantics 2.4, Jacob et al. 2018): Dense, Conv1D, Conv2D or
// DepthwiseConv2D (activation linear, bias b optional) followed by BatchNormalization over the
// last axis, as ONE layer holding both originals as sublayers (their weights carry over and are
// saved under "<name>/<conv>/kernel", "<name>/<bn>/gamma", ...). With σ = sqrt(moving_var + ε):
//
//   weights fed to the fake quant:  W_fold = W · γ/σ           (moving σ, per output channel)
//   training, before freeze:  u = conv(x, FQ(W_fold) · σ/γ) + b
//                             y = γ (u − μ_B)/σ_B + β        batch statistics μ_B, σ_B² of u,
//                             moving statistics updated from them with the BN's momentum
//   frozen, and inference:    y = conv(x, FQ(W_fold)) + β + (b − μ)γ/σ
//                             moving statistics, no updates
//
// u equals conv(x, FQ(W_fold)) · σ/γ + b: the float conv output estimated from the quantized
// one, as PyTorch's ConvBn2d computes it, but rescaled through the small kernel rather than the
// large output, so the batch statistics need neither a second (float) convolution, as TF
// contrib's folding does, nor an extra pass over the output: the training step has the float
// model's conv + bias + batch norm, plus fake quant on a kernel-sized tensor. Expanded, the
// output before freeze is Jacob's y = conv(x, FQ(W_fold)) · σ/σ_B + (β − (μ_B − b)γ/σ_B); the
// batch statistics differ from the float conv's only by the weight quantization error, and
// the moving statistics keep their float meaning (they track u). Freeze: training step >=
// freeze_bn_delay (a run-time switch on the step counter; -1: never, and then the training
// graph holds only the batch-statistics path) or the BatchNormalization sublayer frozen
// (trainable = false: inference mode, as Keras). A channel with γ = 0 gets u = b.
// Config {"layer": ..., "batch_norm": ..., "weight_quantizer": ..., "quant_delay",
// "freeze_bn_delay"}.
class FoldedConvBatchNormLayer : public nn::Layer {
 public:
  FoldedConvBatchNormLayer(nn::LayerPtr conv, nn::LayerPtr batch_norm, QuantizerConfig weights,
                           int64_t quant_delay, int64_t freeze_bn_delay, std::string name);
  std::string class_name() const override { return "FoldedConvBatchNorm"; }
  bool has_quantizer_state() const override { return true; }
  void build(const std::vector<Shape>& input_shapes) override;
  std::vector<Value> call(const std::vector<Value>& inputs, nn::CallContext& ctx) override;
  Json get_config() const override;
  std::string summary_note() const override;
  std::vector<nn::LayerPtr> sublayers() const override { return {conv_, bn_}; }
  void set_trainable(bool t) override;

  const nn::LayerPtr& conv() const { return conv_; }
  const nn::LayerPtr& batch_norm() const { return bn_; }
  const Quantizer& quantizer() const { return quantizer_; }
  int64_t quant_delay() const { return quant_delay_; }
  int64_t freeze_bn_delay() const { return freeze_bn_delay_; }
  // Re-initialises the weight quantizer from the folded kernel W·γ/σ.
  void init_from_weights();
  // The folded kernel W·γ/σ (float, before fake quantization) and the folded bias
  // β + (b − μ)γ/σ of the inference form, from the current weights.
  Tensor folded_kernel() const;
  Tensor folded_bias() const;
  // FQ(W_fold) in inference mode, evaluated eagerly: the kernel of the inference form (what an
  // integer kernel uses), the conv's kernel shape.
  Tensor effective_kernel() const;
  const std::string& kernel_name() const { return kernel_name_; }
  // Bias rounding (QuantizeConfig::quantize_bias): when on and the input's grid step is known
  // (nn::CallContext::grid_step: the input comes from a FakeQuant, maybe through max pooling or
  // a reshape), the folded bias of the inference form is rounded in the forward pass to its int32
  // grid s_in * s_w[c] (ops::fake_quant_bias, straight through), as the integer model stores it:
  // the QAT model then computes what convert_to_integer's model computes. Off: a float bias (TF MOT
  // and PyTorch QAT). Saved as config "quantize_bias" (absent: off).
  void set_quantize_bias(bool on) { quantize_bias_ = on; }
  bool quantize_bias() const { return quantize_bias_; }

 private:
  nn::LayerPtr conv_, bn_;
  std::string kernel_name_;
  Quantizer quantizer_;
  int64_t quant_delay_, freeze_bn_delay_;
  double epsilon_ = 1e-3, momentum_ = 0.99;
  bool quantize_bias_ = false;
};
nn::LayerPtr FoldedConvBatchNorm(nn::LayerPtr conv, nn::LayerPtr batch_norm,
                                 QuantizerConfig weights = default_weight_quantizer(),
                                 int64_t quant_delay = 0, int64_t freeze_bn_delay = -1,
                                 const std::string& name = "");

}  // namespace lowbit::quant
