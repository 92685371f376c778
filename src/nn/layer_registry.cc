#include "nn/layer_registry.h"

#include "lowbit/nn/model.h"

namespace lowbit::nn::detail {
void register_builtin_layers() {
  register_core_layers();
  register_conv_layers();
  register_pool_layers();
  register_reshape_layers();
  register_merge_layers();
  register_embedding_layers();
  register_rnn_layers();
  register_layers_of_other_modules();  // the hook: QAT layers (src/wiring/layers.cc)
  register_masking_layers();
  register_layer("InputLayer", [](const Json& c) {
    return InputSpec(Shape(c.at("shape").get<std::vector<int64_t>>()),
                     dtype_from_name(c.value("dtype", "f32")), c.value("name", ""));
  });
}
}  // namespace lowbit::nn::detail
