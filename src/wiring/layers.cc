// The composition root of the layer registry: nn's registration hook
// (nn::detail::register_layers_of_other_modules, src/nn/layer_registry.h) calls the layer
// registrations of the modules above nn. nn never includes them (docs/design.md, include-rules);
// this file may, being above both.
#include "nn/layer_registry.h"
#include "quant/quant_layers.h"

namespace lowbit::nn::detail {
void register_layers_of_other_modules() {
  quant::register_quant_layers();            // FakeQuant, QuantizeWrapper, FoldedConvBatchNorm
  quant::register_recurrent_quant_layers();  // QuantizedLSTM, QuantizedGRU, ...
}
}  // namespace lowbit::nn::detail
