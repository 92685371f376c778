// Built-in layers (channels-last, Keras defaults). Each factory returns a shared layer:
//
//   auto d = nn::Dense(128, {.activation = "relu"});
//
// Every layer's config round-trips through JSON (layer_to_config / layer_from_config).
#pragma once

#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "lowbit/nn/layer.h"

namespace lowbit::nn {

// Applies a Keras activation by name: linear, relu, relu6, sigmoid, hard_sigmoid (Keras 3),
// tanh, softmax, log_softmax, gelu, elu, selu, softplus, softsign, swish/silu, leaky_relu,
// exponential. Throws ValueError for an unknown name.
Value activation(const std::string& name, const Value& x);
void check_activation_name(const std::string& name);

struct DenseOptions {
  std::string activation = "linear";
  bool use_bias = true;
  std::string kernel_initializer = "glorot_uniform";
  std::string bias_initializer = "zeros";
  std::string name;
};
// y = activation(x @ kernel + bias); kernel (in, units) acts on the last axis.
LayerPtr Dense(int64_t units, DenseOptions o = {});

struct ActivationOptions {
  std::string name;
};
LayerPtr Activation(const std::string& activation, ActivationOptions o = {});

struct RescalingOptions {
  std::vector<int64_t> param_shape;  // {}: scalar scale and offset (Keras)
  std::string name;
};
// y = x * scale + offset (Keras' Rescaling). scale and offset are non-trainable weights of
// shape param_shape, initialised to the given numbers, that broadcast against the input's
// non-batch dims aligned to the right ({C}: per channel); set their values to vary them per
// element (the ONNX importer does for Mul/Add by a constant). ShapeError when first called on
// dims param_shape does not broadcast against.
LayerPtr Rescaling(double scale, double offset = 0.0, RescalingOptions o = {});

struct ReLUOptions {
  std::optional<double> max_value;
  double negative_slope = 0.0;
  double threshold = 0.0;
  std::string name;
};
// relu(x) = max_value-capped, with a slope below the threshold (Keras ReLU layer).
LayerPtr ReLU(ReLUOptions o = {});

struct DropoutOptions {
  std::vector<int64_t> noise_shape;  // empty: the input's shape; -1 entries take the input dim
  int64_t seed = -1;                 // -1: derived from the layer name
  std::string name;
};
// Inverted dropout in training mode; identity in inference mode (rate in [0, 1]).
LayerPtr Dropout(double rate, DropoutOptions o = {});

struct BatchNormalizationOptions {
  int axis = -1;
  double momentum = 0.99;
  double epsilon = 1e-3;
  bool center = true;
  bool scale = true;
  std::string name;
};
// Training mode (and trainable): batch statistics, moving statistics updated with
// moving = moving*momentum + batch*(1-momentum) (biased variance). Inference mode or frozen:
// moving statistics.
LayerPtr BatchNormalization(BatchNormalizationOptions o = {});

// ---------------------------------------------------------------------------------------------
// Convolution, pooling, reshaping, merging and embedding layers. All are channels-last
// (data_format "channels_last"; "channels_first" configs are rejected with ValueError), take
// Keras 3 constructor defaults and config names, and throw, when first called (build), a
// ShapeError naming the layer for an input of the wrong rank or size. A built layer called again
// on inputs whose non-batch dims differ from the first call throws ShapeError (Layer::apply;
// note Keras lets convolutions and pooling run on other spatial sizes).

// A size per spatial dim, given as one int for every dim or one int per dim, as Keras accepts:
//   Conv2D(16, 3) is Conv2D(16, {3, 3});  Conv1D(8, 5, {.strides = 2});
// An empty Ints (`{}`) means "the default" where a field says so (pooling strides).
class Ints {
 public:
  Ints() = default;
  Ints(int v) : v_{v} {}  // NOLINT: implicit on purpose (Keras' `kernel_size=3`)
  Ints(int64_t v) : v_{v} {}
  Ints(std::initializer_list<int64_t> v) : v_(v) {}
  Ints(std::vector<int64_t> v) : v_(std::move(v)) {}
  const std::vector<int64_t>& values() const { return v_; }
  bool empty() const { return v_.empty(); }

 private:
  std::vector<int64_t> v_;
};

// ---- Convolutions ----
//
// Padding per spatial dim, with k_eff = (k-1)*dilation + 1 (TensorFlow/Keras arithmetic):
//   "valid":  out = floor((in - k_eff) / s) + 1, no padding (the window must fit: ShapeError)
//   "same":   out = ceil(in / s); total padding max((out-1)*s + k_eff - in, 0), the odd extra
//             cell at the END (bottom/right), as TensorFlow (PyTorch pads symmetrically)
//   "causal": Conv1D only: (k-1)*dilation zeros on the left, then valid (out = in / s, rounded up)
// It is cross-correlation (no kernel flip). strides > 1 together with dilation_rate > 1 is a
// ValueError (as Keras). Padded cells are zeros.
struct ConvOptions {
  Ints strides = 1;
  std::string padding = "valid";  // valid | same | causal (Conv1D only)
  Ints dilation_rate = 1;
  int64_t groups = 1;  // input channels and filters must both divide by it
  std::string activation = "linear";
  bool use_bias = true;
  std::string kernel_initializer = "glorot_uniform";
  std::string bias_initializer = "zeros";
  std::string name;
};
using Conv1DOptions = ConvOptions;
using Conv2DOptions = ConvOptions;

// x [B, L, Cin] -> [B, OL, filters]; weights kernel [k, Cin/groups, filters], bias [filters].
LayerPtr Conv1D(int64_t filters, Ints kernel_size, Conv1DOptions o = {});
// x [B, H, W, Cin] -> [B, OH, OW, filters]; weights kernel [kh, kw, Cin/groups, filters]
// (HWIO), bias [filters]. Conv2D(32, 3) on 1 channel has 3*3*1*32 + 32 = 320 parameters.
LayerPtr Conv2D(int64_t filters, Ints kernel_size, Conv2DOptions o = {});

struct DepthwiseConv2DOptions {
  Ints strides = 1;
  std::string padding = "valid";  // valid | same
  int64_t depth_multiplier = 1;
  Ints dilation_rate = 1;
  std::string activation = "linear";
  bool use_bias = true;
  std::string depthwise_initializer = "glorot_uniform";
  std::string bias_initializer = "zeros";
  std::string name;
};
// Each input channel c filtered by its own depth_multiplier (M) kernels: x [B, H, W, C] ->
// [B, OH, OW, C*M], output channel c*M + m. Weights depthwise_kernel [kh, kw, C, M],
// bias [C*M].
LayerPtr DepthwiseConv2D(Ints kernel_size, DepthwiseConv2DOptions o = {});

struct SeparableConv2DOptions {
  Ints strides = 1;
  std::string padding = "valid";  // valid | same
  Ints dilation_rate = 1;
  int64_t depth_multiplier = 1;
  std::string activation = "linear";
  bool use_bias = true;
  std::string depthwise_initializer = "glorot_uniform";
  std::string pointwise_initializer = "glorot_uniform";
  std::string bias_initializer = "zeros";
  std::string name;
};
// A depthwise convolution (strides, padding and dilation apply here) followed by a pointwise
// 1x1 convolution to `filters` channels, then bias and activation. Weights depthwise_kernel
// [kh, kw, C, M], pointwise_kernel [1, 1, C*M, filters], bias [filters].
LayerPtr SeparableConv2D(int64_t filters, Ints kernel_size, SeparableConv2DOptions o = {});

// ---- Pooling ----
//
// Windows of pool_size cells moved by strides (default: pool_size); output sizes as for
// convolutions. With "same", windows are clipped to the input: max pooling ignores the padded
// cells, average pooling divides by the number of VALID cells in the window (TensorFlow).
struct PoolingOptions {
  Ints strides;                   // empty: pool_size
  std::string padding = "valid";  // valid | same
  std::string name;
};
using MaxPooling1DOptions = PoolingOptions;
using MaxPooling2DOptions = PoolingOptions;
using AveragePooling1DOptions = PoolingOptions;
using AveragePooling2DOptions = PoolingOptions;
// x [B, L, C] -> [B, OL, C].
LayerPtr MaxPooling1D(Ints pool_size = 2, MaxPooling1DOptions o = {});
LayerPtr AveragePooling1D(Ints pool_size = 2, AveragePooling1DOptions o = {});
// x [B, H, W, C] -> [B, OH, OW, C].
LayerPtr MaxPooling2D(Ints pool_size = 2, MaxPooling2DOptions o = {});
LayerPtr AveragePooling2D(Ints pool_size = 2, AveragePooling2DOptions o = {});

struct GlobalPoolingOptions {
  bool keepdims = false;  // true: [B, 1, C] / [B, 1, 1, C] instead of [B, C]
  std::string name;
};
// Mean or max over the steps (1-D: x [B, L, C]) or the spatial dims (2-D: x [B, H, W, C]),
// per channel: -> [B, C].
LayerPtr GlobalAveragePooling1D(GlobalPoolingOptions o = {});
LayerPtr GlobalAveragePooling2D(GlobalPoolingOptions o = {});
LayerPtr GlobalMaxPooling1D(GlobalPoolingOptions o = {});
LayerPtr GlobalMaxPooling2D(GlobalPoolingOptions o = {});

// ---- Reshaping ----
struct FlattenOptions {
  std::string name;
};
// [B, d1, d2, ...] -> [B, d1*d2*...], row-major over the channels-last dims (a view).
LayerPtr Flatten(FlattenOptions o = {});

struct ReshapeOptions {
  std::string name;
};
// [B, ...] -> [B, target_shape...]; target_shape excludes the batch dim and may hold one -1,
// resolved from the input's (known) size. ValueError for a bad target (zero, several -1),
// ShapeError when the sizes cannot match.
LayerPtr Reshape(std::vector<int64_t> target_shape, ReshapeOptions o = {});

struct PermuteOptions {
  std::string name;
};
// [B, d1, ..., dn] -> [B, d_dims[0], ..., d_dims[n-1]] (Keras' Permute): dims is a permutation
// of 1..n (1-based, the batch axis stays first). ValueError otherwise; ShapeError for an input
// of another rank.
LayerPtr Permute(std::vector<int64_t> dims, PermuteOptions o = {});

struct ZeroPadding2DOptions {
  std::string name;
};
// Zeros around the spatial dims of x [B, H, W, C] -> [B, H+t+b, W+l+r, C]. padding: one int
// (every side), {h, w} (symmetric per dim) or {t, b, l, r} (Keras' ((t, b), (l, r))).
LayerPtr ZeroPadding2D(Ints padding = 1, ZeroPadding2DOptions o = {});

// ---- Merging: layers of several inputs (num_inputs() = -1) ----
//
// Add and Multiply combine inputs elementwise. Shapes follow Keras' Merge rules on the
// non-batch dims: equal, or 1 (broadcast), or unknown; an input of lower rank gets size-1 dims
// inserted after the batch dim. Anything else is a ShapeError naming the layer and the shapes.
struct MergeOptions {
  std::string name;
};
LayerPtr Add(MergeOptions o = {});
LayerPtr Multiply(MergeOptions o = {});

struct ConcatenateOptions {
  int axis = -1;
  std::string name;
};
// Joins the inputs along `axis`; every other dim must match (ShapeError otherwise).
LayerPtr Concatenate(ConcatenateOptions o = {});

// ---- Embedding ----
struct EmbeddingOptions {
  std::string embeddings_initializer = "uniform";  // U(-0.05, 0.05)
  // true: id 0 means padding; the output carries the timestep mask ids != 0 (ids must then be
  // [batch, timesteps]). Row 0 is still looked up, so input_dim must count it (vocab + 1).
  bool mask_zero = false;
  std::string name;
};
// A lookup table: ids [B, ...] (s32, s64, other integer types, or f32 truncated toward zero as
// Keras' cast to int32) -> f32 [B, ..., output_dim], output[b, t, :] = embeddings[ids[b, t], :].
// Weight embeddings [input_dim, output_dim].
// Ids outside [0, input_dim) are an error, reported BEFORE the graph runs: Model calls
// (predict_on_batch, operator(), Model::validate_inputs) check the tensors fed to model inputs
// that reach an Embedding directly, through Layer::validate_input, and throw ValueError naming
// the layer, the id, its position and the range. (Ids computed inside the graph cannot be
// checked on the host; the gather kernel aborts on them.)
LayerPtr Embedding(int64_t input_dim, int64_t output_dim, EmbeddingOptions o = {});

// ---------------------------------------------------------------------------------------------
// Recurrent layers: SimpleRNN, LSTM, GRU and the Bidirectional wrapper (src/nn/layers_rnn.cc).
// Keras 3 equations, defaults, weight layouts and names (layer-semantics.md 6): x [B, T, D] ->
// output [B, T, U] (return_sequences) or [B, U]; with return_state the final states follow as
// extra outputs ([output, h, c] for LSTM, [output, h] otherwise).
//
// Weights (Keras get_weights() order), G gate blocks side by side in the columns:
//   kernel [D, G*U], recurrent_kernel [U, G*U], bias
//   LSTM G = 4 (i, f, c, o), bias [4U]; unit_forget_bias puts 1 in the f block at init
//   GRU  G = 3 (z, r, h), bias [2, 3U] with reset_after (row 0 input, row 1 recurrent bias),
//        [3U] without; h = z * h_prev + (1 - z) * hh
//   SimpleRNN G = 1, bias [U]
// Initializers: kernel glorot_uniform, recurrent_kernel orthogonal, bias zeros.
// How it runs: the input projection of all steps is one matmul (x @ kernel + bias), then one
// fused recurrence op (ops::lstm_sequence etc., include/lowbit/ops/rnn.h).
//
// Inputs: x, then optionally the initial states (LSTM: h0, c0; GRU and SimpleRNN: h0), each
// [B, U]; without them the states start at zero. ValueError for another input count.
//
// MASKS — how a timestep mask reaches a recurrent layer: through CallContext::input_masks.
// When ctx.input_masks[0] is defined when the layer is applied, it is the mask of x: bool or f32
// [B, T] (true / nonzero = valid step), else ShapeError/DTypeError naming the layer. In a
// model, masks propagate (docs/masking.md): from Masking, Embedding(mask_zero), or an explicit
// mask passed at the call, typically a model input:
//     KTensor x = Input({T, F}), m = Input({T}, DType::kBool);
//     KTensor h = (*LSTM(8))(x, {.masks = {m}});   // Model::create({x, m}, {...})
// When tracing a layer into a graph by hand, set it yourself:
//     CallContext ctx(g, training);
//     ctx.input_masks = {mask_value};          // a graph Value [B, T]
//     Value y = lstm->apply({x}, ctx)[0];
// Whatever a masked step holds (NaN, Inf) never reaches the arithmetic, forward or backward.
// A model called without masks runs the layers unmasked. At a masked step the states and the
// output carry over unchanged (zeros before the first valid step; zeros at masked steps with
// zero_output_for_mask), and nothing computed from the masked input reaches the result
// (layer-semantics.md 6.3). Fully masked rows give zero outputs and the initial states.
//
// Dropout (training mode only; identity at inference), Keras 3 semantics: masks drawn once per
// call and shared by every timestep (Philox keyed by the layer seed and the model's step).
//   dropout: on x. With recurrent_dropout == 0: one mask [B, D] for all gates; otherwise one per
//            gate block (Keras' implementation 1). Applies when 0 < rate < 1 (SimpleRNN:
//            0 < rate <= 1, as Keras).
//   recurrent_dropout: on h_{t-1} where it enters the recurrent product, one mask [B, U] per
//            gate block (the carried state is not masked). Runs on the slow reference kernel.
//
// stateful = true is not supported (ValueError from configs); `unroll` is accepted and has no
// effect on the numbers. Errors when first called: ShapeError for x not [B, T, D] with D known,
// initial states not [B, U].
struct SimpleRNNOptions {
  std::string activation = "tanh";
  bool use_bias = true;
  std::string kernel_initializer = "glorot_uniform";
  std::string recurrent_initializer = "orthogonal";
  std::string bias_initializer = "zeros";
  double dropout = 0.0;
  double recurrent_dropout = 0.0;
  bool return_sequences = false;
  bool return_state = false;
  bool go_backwards = false;
  bool zero_output_for_mask = false;
  bool unroll = false;
  int64_t seed = -1;  // dropout seed; -1: derived from the layer name
  std::string name;
};
struct LSTMOptions {
  std::string activation = "tanh";
  std::string recurrent_activation = "sigmoid";
  bool use_bias = true;
  std::string kernel_initializer = "glorot_uniform";
  std::string recurrent_initializer = "orthogonal";
  std::string bias_initializer = "zeros";
  bool unit_forget_bias = true;
  double dropout = 0.0;
  double recurrent_dropout = 0.0;
  bool return_sequences = false;
  bool return_state = false;
  bool go_backwards = false;
  bool zero_output_for_mask = false;
  bool unroll = false;
  int64_t seed = -1;
  std::string name;
};
struct GRUOptions {
  std::string activation = "tanh";
  std::string recurrent_activation = "sigmoid";
  bool use_bias = true;
  std::string kernel_initializer = "glorot_uniform";
  std::string recurrent_initializer = "orthogonal";
  std::string bias_initializer = "zeros";
  double dropout = 0.0;
  double recurrent_dropout = 0.0;
  bool reset_after = true;
  bool return_sequences = false;
  bool return_state = false;
  bool go_backwards = false;
  bool zero_output_for_mask = false;
  bool unroll = false;
  int64_t seed = -1;
  std::string name;
};
// activation / recurrent_activation: tanh, sigmoid, hard_sigmoid, relu or linear (ValueError
// otherwise); units >= 1; rates in [0, 1].
LayerPtr SimpleRNN(int64_t units, SimpleRNNOptions o = {});
LayerPtr LSTM(int64_t units, LSTMOptions o = {});
LayerPtr GRU(int64_t units, GRUOptions o = {});

struct BidirectionalOptions {
  // "concat" (default), "sum", "mul", "ave", or "none" (no merge: the two outputs separately).
  std::string merge_mode = "concat";
  // The layer for the reversed direction; null: a copy of `layer` with go_backwards = true.
  // It must be a recurrent layer with the other go_backwards value and the same
  // return_sequences / return_state (ValueError otherwise).
  LayerPtr backward_layer;
  std::string name;
};
// Runs a fresh copy of `layer` (a SimpleRNN, LSTM or GRU; named "forward_<name>") forward and
// a backward layer over the sequence and merges their outputs; with return_sequences the
// backward output is flipped back to input order first. Both see the input mask, and masked
// steps output zeros when returning sequences (Keras forces zero_output_for_mask). Outputs:
// [merged] or, for "none", [forward, backward]; then with return_state the forward states and
// the backward states. Initial states (extra inputs): the first half go to the forward layer.
// Weights: the forward layer's then the backward layer's, named "forward_lstm/kernel", ...
LayerPtr Bidirectional(const LayerPtr& layer, BidirectionalOptions o = {});

// Bidirectional's output rule, for layers that run two recurrent directions themselves (QAT's
// QuantizedBidirectional): `forward` and `backward` are the two layers' outputs (sequence or
// last output first, then states); with `sequences` the backward output is flipped to input
// order; merge_mode as above. Returns [merged] or [forward, backward], then the forward states,
// then the backward ones.
std::vector<Value> merge_bidirectional(const std::vector<Value>& forward,
                                       const std::vector<Value>& backward,
                                       const std::string& merge_mode, bool sequences);

}  // namespace lowbit::nn
