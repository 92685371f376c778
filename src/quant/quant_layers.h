// Registration of the QAT layer classes (FakeQuant, QuantizeWrapper, FoldedConvBatchNorm) for
// nn::layer_from_config, so load_model rebuilds quantized models. Called once by the nn layer
// registry (src/nn/layer_registry.cc), whatever the program links.
#pragma once

namespace lowbit::quant {
void register_quant_layers();            // src/quant/quantizer.cc
void register_recurrent_quant_layers();  // src/quant/recurrent.cc (QuantizedLSTM, QuantizedGRU)
}  // namespace lowbit::quant
