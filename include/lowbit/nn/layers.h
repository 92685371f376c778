// Built-in layers (channels-last, Keras defaults). Each factory returns a shared layer:
//
//   auto d = nn::Dense(128, {.activation = "relu"});
//
// Every layer's config round-trips through JSON (layer_to_config / layer_from_config).
#pragma once

#include <initializer_list>
#include <optional>
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
  // Stored in the config; id 0 will mean "padding" once masks propagate (not yet applied).
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

}  // namespace lowbit::nn
