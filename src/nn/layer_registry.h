// Registration of built-in layer classes for layer_from_config (called once, lazily).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "lowbit/nn/layer.h"

namespace lowbit::nn::detail {
void register_core_layers();       // src/nn/layers_core.cc
void register_conv_layers();       // src/nn/layers_conv.cc
void register_pool_layers();       // src/nn/layers_pool.cc
void register_reshape_layers();    // src/nn/layers_reshape.cc
void register_merge_layers();      // src/nn/layers_merge.cc
void register_embedding_layers();  // src/nn/layers_embedding.cc
void register_rnn_layers();        // src/nn/layers_rnn.cc
void register_masking_layers();    // src/nn/layers_masking.cc
void register_builtin_layers();
// The registration hook for layer classes defined by modules above nn (the QAT layers of
// src/quant), so that load_model rebuilds a quantized model whatever the program calls. nn only
// declares it: the composition root src/wiring/layers.cc defines it, so nn includes nothing of
// quant and every program linking nn still gets the quant layers.
void register_layers_of_other_modules();
// Mask rules of layer classes defined elsewhere (recurrent layers), src/nn/layers_masking.cc.
std::vector<std::pair<std::string, MaskRule>> builtin_mask_rules();
}  // namespace lowbit::nn::detail
