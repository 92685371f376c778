// Registration of the QAT layer classes (FakeQuant, QuantizeWrapper, FoldedConvBatchNorm) for
// nn::layer_from_config, so load_model rebuilds quantized models. Called once through the nn
// layer registry's hook (src/wiring/layers.cc), whatever the program links.
#pragma once

#include "lowbit/graph.h"
#include "lowbit/nn/layer.h"

namespace lowbit::quant {
// The layer's step counter: s64 [] weight "step", +1 per training step (read before the
// increment); created on first use (call it from build).
nn::Weight& step_weight(nn::Layer& l);
const nn::Weight& step_weight(const nn::Layer& l);
// Binds the step counter; records its increment once per trace in training mode.
Value bind_step(nn::Layer& l, nn::CallContext& ctx);

void register_quant_layers();            // src/quant/quantizer.cc
void register_recurrent_quant_layers();  // src/quant/recurrent.cc (QuantizedLSTM, QuantizedGRU)
}  // namespace lowbit::quant
