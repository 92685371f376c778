// The fixed benchmark models, shared by the benches that train or run them (train_bench,
// int8_infer_bench): the same architectures as the PyTorch peers (../shared/peers/models.py,
// bench/peers_int8/qmodels.py).
//
// (a) CNN: Conv2D(32,3,same)-BN-ReLU, Conv2D(64,3,s2,same)-BN-ReLU, Conv2D(64,3,s2,same)-BN-ReLU,
//     GlobalAveragePooling2D, Dense(10) on 28x28x1 (convs without bias, as the peer: BN follows;
//     BN momentum 0.9, PyTorch's 0.1, so the moving statistics settle within the 8k images)
// (b) MLP: 784-256-256-10 with ReLU
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "lowbit/nn/layers.h"
#include "lowbit/nn/model.h"

namespace lowbit::bench {

inline nn::ModelPtr build_bench_model(const std::string& which, uint64_t seed) {
  nn::set_random_seed(seed);
  if (which == "cnn") {
    auto conv_bn_relu = [](int64_t filters, int64_t stride) -> std::vector<nn::LayerPtr> {
      return {nn::Conv2D(filters, 3, {.strides = stride, .padding = "same", .use_bias = false}),
              nn::BatchNormalization({.momentum = 0.9}), nn::ReLU()};
    };
    std::vector<nn::LayerPtr> layers{nn::InputSpec({28, 28, 1})};
    for (auto [f, s] : {std::pair<int64_t, int64_t>{32, 1}, {64, 2}, {64, 2}})
      for (auto& l : conv_bn_relu(f, s)) layers.push_back(l);
    layers.push_back(nn::GlobalAveragePooling2D());
    layers.push_back(nn::Dense(10));
    return nn::Sequential::create(layers, "bench_cnn");
  }
  if (which == "mlp")
    return nn::Sequential::create(
        {nn::InputSpec({28, 28, 1}), nn::Flatten(), nn::Dense(256, {.activation = "relu"}),
         nn::Dense(256, {.activation = "relu"}), nn::Dense(10)},
        "bench_mlp");
  throw ValueError("unknown bench model '" + which + "' (expected cnn or mlp)");
}

}  // namespace lowbit::bench
