// Built-in layers (channels-last, Keras defaults). Each factory returns a shared layer:
//
//   auto d = nn::Dense(128, {.activation = "relu"});
//
// Every layer's config round-trips through JSON (layer_to_config / layer_from_config).
#pragma once

#include <optional>

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

}  // namespace lowbit::nn
