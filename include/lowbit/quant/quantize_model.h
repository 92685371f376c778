// quantize_model: rewrites a float model for quantization-aware training (issue 4).
//
//   auto qat = quant::quantize_model(*float_model, quant::QuantizeConfig::preset("w8a8"));
//   qat->compile({...});  qat->fit(x, y);       // fine-tune: forward on grid values, updates
//   std::cout << qat->summary();                // to the float weights; quantizers listed
//   qat->save("model.lbm");                     // ranges and weights saved; load_model works
//
// The result is a NEW functional model: every layer is rebuilt from its config and its weights
// are copied, so the float model is left intact (fine-tune several schemes from one float
// model). Where quantizers go (docs/quantization.md; semantics 2.2-2.4):
//
// 1. Weights. Dense, Conv1D, Conv2D, DepthwiseConv2D and Embedding become
//    QuantizeWrapper(layer): their kernels are fake-quantized before the layer reads them. An
//    Embedding table is quantized per tensor (its rows are the output activations, one grid)
//    unless an override sets per_channel. Biases never. A SeparableConv2D is split in two as
//    TF-MOT's SeparableConv transform does (and TFLite deploys it, DEPTHWISE_CONV_2D then CONV_2D
//    with an int8 tensor between): a DepthwiseConv2D "<name>_depthwise" (its depthwise kernel,
//    strides, padding, dilation; no bias, linear), a FakeQuant "<name>_depthwise_quant" (an
//    activation quantizer), then a 1x1 Conv2D "<name>" (its pointwise kernel, bias and activation),
//    each part a QuantizeWrapper with the separable's weight settings; the pattern of rule 2
//    continues from the Conv2D. A conv/dense followed by BatchNormalization is folded instead (rule
//    3). SimpleRNN too (kernel and recurrent_kernel), with a FakeQuant on each output. LSTM and GRU
//    become QuantizedLSTM / QuantizedGRU (lowbit/quant/recurrent.h: the integer LSTM step of
//    semantics 3.7 in float), which read their input unquantized (they quantize x themselves) and
//    whose output and h state are on h's int8 grid (no FakeQuant after; an LSTM's returned cell
//    state is int16 and counts as unquantized); during quant_delay they run the float cell.
//    Bidirectional(LSTM | GRU) becomes a QuantizedBidirectional (two such directions; a merged
//    output gets a FakeQuant after); Bidirectional(SimpleRNN) stays float.
// 2. Activations: one FakeQuant at the END of each fused pattern, never between its parts:
//      conv|dense [+ BatchNormalization] [+ activation]
//      BatchNormalization [+ activation]       (one not after a conv)
//      Add|Multiply [+ activation]
//    where "activation" is ReLU (slope 0, threshold 0, max_value none or 6) or Activation
//    relu|relu6|linear. A pattern continues only through a tensor with exactly one consumer that
//    is not a model output; otherwise it ends there and the tensor is quantized. A layer's own
//    `activation` argument ends its pattern: relu, linear and the rest are quantized after it;
//    softmax, log_softmax, sigmoid, hard_sigmoid and tanh BEFORE it (the layer is rebuilt with
//    activation linear, then FakeQuant, then an Activation layer "<name>_<activation>"): their
//    integer outputs have fixed parameters (semantics 2.3, 3.6). Standalone Activation layers
//    of these functions get their inputs quantized if not already. The output of sigmoid,
//    softmax and tanh then gets a FakeQuant "<activation layer>_quant" on that fixed grid (tf,
//    8 bit, range "fixed", never tracked): [0, 255/256] in steps of 1/256 (int8 scale 1/256,
//    zero point -128) for sigmoid and softmax, [-1, 127/128] in steps of 1/128 (int8 1/128,
//    zero point 0) for tanh, so the QAT model computes the integer ops' codes; whatever the
//    activation scheme or bits (scheme "none": no quantizer). log_softmax and hard_sigmoid
//    outputs stay unquantized (no integer form).
// 3. Batch-norm folding (cfg.fold_batch_norm): a Dense/Conv1D/Conv2D/DepthwiseConv2D with
//    linear activation called once, whose output's only consumer is a BatchNormalization over
//    the last axis called once, becomes FoldedConvBatchNorm (see quantizer.h); after a
//    SeparableConv2D the BN folds into its pointwise Conv2D. Otherwise (a shared layer, folding
//    off) the BN stays a float layer inside the pattern.
// 4. Model inputs (f32, unless every consumer is an Embedding): FakeQuant with cfg.input
//    (all_values), named "<input>_quant".
// 5. Merges: an input of Add/Multiply that is not already quantized gets a FakeQuant first (one
//    per tensor, shared by all merges that need it); Concatenate only copies values, so it gets
//    no input quantizers and one FakeQuant on its output (TFMOT).
// 6. Pass-through layers keep the grid of their input and get no quantizer: MaxPooling and
//    GlobalMaxPooling, Flatten, Reshape, ZeroPadding2D, Dropout. An Embedding's output rows are
//    grid values of its quantized table. Any other layer with an f32 output gets a FakeQuant
//    after it, average pooling included: a mean is off its input's grid, and the integer model
//    rounds it once, to the FakeQuant's grid (qavg_pool2d with output parameters).
// 7. Biases (cfg.quantize_bias, on by default): each conv/dense whose input's grid is known
//    rounds its bias to the int32 grid s_in * s_w[c] in the forward pass (straight through).
// "Quantized" means produced by a FakeQuant, or by a pass-through layer from a quantized input.
//
// Shared layers (one layer object called at several places): one wrapper, one set of weight
// quantizers (the fake-quantized kernel is computed once per step and reused), never folded;
// each call's output gets its own pattern treatment and its own FakeQuant, because each call
// is a separate tensor (and a separate op of an integer model with its own output range).
// Nested models are flattened: their layers are rewritten as if they were called directly (the
// result is one flat functional model). FakeQuant layers are named "<producer>_quant" (with a
// suffix if that name is taken).
//
// Per-layer overrides (cfg.overrides, keyed by the FLOAT model's layer names, unknown names are
// an error): weight settings come from the weighted layer's entry; an activation quantizer
// uses the entry of the layer whose output it quantizes (the pattern's last layer), else of
// the pattern's first layer. `skip` leaves a layer in float: no weight quantizers, it joins no
// pattern and its output is not quantized (later merges will quantize it where rule 5 says).
#pragma once

#include <map>
#include <optional>
#include <string>

#include "lowbit/nn/model.h"
#include "lowbit/quant/quantizer.h"

namespace lowbit::quant {

struct LayerOverride {
  std::optional<int> weight_bits;
  std::optional<int> activation_bits;
  // Applies to the weights; also to the activations when the scheme fits them (tf, torch, lsq,
  // pact; pact only to activations, binary/ternary only to weights).
  std::optional<std::string> scheme;
  std::optional<bool> per_channel;  // weights
  bool skip = false;
};

struct QuantizeConfig {
  QuantizerConfig weights = default_weight_quantizer();
  QuantizerConfig activations = default_activation_quantizer();
  QuantizerConfig inputs = default_input_quantizer();
  // Float warm-up: for training steps < quant_delay every fake quant outputs its input
  // (identity gradient) while the range trackers keep updating (semantics 2.2). Inference
  // always quantizes.
  int64_t quant_delay = 0;
  bool fold_batch_norm = true;
  // Training steps after which folded batch norms use their moving statistics (-1: never).
  int64_t freeze_bn_delay = -1;
  // Round each conv/dense bias in the forward pass to the int32 grid s_in * s_w[c] the integer
  // model (convert_to_integer) stores it on, straight through in the backward pass, where the
  // input's grid is known (it comes from a FakeQuant, maybe through max pooling, reshapes or
  // dropout): the QAT model then computes the integer model's codes. At 4-bit weights s_w is
  // coarse enough that a float bias would differ from its int32 form by several percent of an
  // output step. false: float biases, as TF MOT and PyTorch's QAT train them.
  bool quantize_bias = true;
  // Weight bits of the first and the last layer with weights (in topological order; skipped
  // layers do not count), e.g. 8 as the LSQ/PACT/DoReFa papers' protocol: those two layers hold
  // few weights and cost the most accuracy at very low bit widths. Unset: the same as the
  // others. Per-layer overrides win.
  std::optional<int> first_last_weight_bits;
  std::map<std::string, LayerOverride> overrides;

  // Presets (wN = N-bit weights, aM = M-bit activations; inputs 8 bit all_values):
  //   "w8a8"  TF scheme: weights 8-bit per-channel symmetric narrow last_value, activations
  //           8-bit asymmetric EMA (decay 0.999) — TFLite's int8 scheme.
  //   "w4a8"  the same with 4-bit weights (per-channel symmetric narrow: 15 levels).
  //   "w2a8"  2-bit LSQ weights per channel (signed, levels {-2, -1, 0, 1} x step, learned
  //           step sizes: at 2 bits a tracked min/max range wastes levels on outliers), 8-bit
  //           TF activations; the first and the last layer with weights keep 8-bit (LSQ)
  //           weights (first_last_weight_bits = 8, the protocol of the LSQ paper; set it to
  //           2 for 2 bits everywhere). In the demo CNN they hold 0.4% of the weights; with
  //           them at 2 bits too, 3 epochs of fine-tuning lose 3 to 4 points instead of 0.2.
  //   "w4a4"  4-bit TF weights as w4a8, 4-bit TF activations (asymmetric EMA; use a "pact"
  //           activations override for learned clipping).
  // Throws ValueError for another name.
  static QuantizeConfig preset(const std::string& name);
};

// Reads the settings of a JSON file (what `lowbit quantize --config` takes) into `base`:
//   {"overrides": {"conv2d": {"weight_bits": 4, "activation_bits": 8, "scheme": "lsq",
//                             "per_channel": true, "skip": false}, ...},
//    "quant_delay": 100, "fold_batch_norm": true, "first_last_weight_bits": 8}
// Every key is optional; an override replaces base's entry for that layer. Throws ValueError
// naming the key for an unknown key ("quantize config: unknown key 'overides'; known: ...") or
// a value of the wrong type ("overrides.conv2d.weight_bits: expected an integer but found
// \"4\""). Layer names are checked later, by quantize_model.
QuantizeConfig quantize_config_from_json(const nn::Json& j, QuantizeConfig base);

// Checks every quantizer config (validate()), quant_delay >= 0, freeze_bn_delay >= -1; throws
// ValueError naming the field.
void validate(const QuantizeConfig& cfg);

// The rewrite described above. Throws ValueError for an invalid config, an override naming
// no layer of the model or a model that is already quantized, UnsupportedError for a layer class
// that cannot be copied (not in the layer registry), or a model whose flattened layer names clash.
nn::ModelPtr quantize_model(const nn::Model& model, const QuantizeConfig& cfg = {});

}  // namespace lowbit::quant
