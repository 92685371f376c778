// Registration of built-in layer classes for layer_from_config (called once, lazily).
#pragma once

namespace lowbit::nn::detail {
void register_core_layers();  // src/nn/layers_core.cc
void register_builtin_layers();
}  // namespace lowbit::nn::detail
