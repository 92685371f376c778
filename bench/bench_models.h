// The fixed benchmark models, shared by the benches that train or run them (train_bench,
// int8_infer_bench): the same architectures as the PyTorch peers (../shared/peers/models.py,
// bench/peers_int8/qmodels.py).
//
// (a) CNN: Conv2D(32,3,same)-BN-ReLU, Conv2D(64,3,s2,same)-BN-ReLU, Conv2D(64,3,s2,same)-BN-ReLU,
//     GlobalAveragePooling2D, Dense(10) on 28x28x1 (convs without bias, as the peer: BN follows;
//     BN momentum 0.9, PyTorch's 0.1, so the moving statistics settle within the 8k images)
// (b) MLP: 784-256-256-10 with ReLU
// (c) MobileNetV2-1.0 (torchvision's mobilenet_v2, Sandler et al. 2018) on 224x224x3: a 3x3
//     stride-2 conv (32) + BN + ReLU6, 17 inverted-residual blocks (t, c, n, s) = (1, 16, 1, 1),
//     (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
//     (6, 320, 1, 1): [1x1 expand conv + BN + ReLU6,] 3x3 depthwise (stride s) + BN + ReLU6, 1x1
//     project conv + BN, Add of the block input where the stride is 1 and the channels equal;
//     a 1x1 conv (1280) + BN + ReLU6, global average pooling, Dense(1000). Convs without bias
//     (BN follows); "same" padding (TensorFlow's: the odd cell of a stride-2 window at the end,
//     where torchvision pads 1 on both sides: the same work). 3.5 M parameters, ~300 M MACs.
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

inline nn::ModelPtr build_mobilenet_v2(uint64_t seed, int64_t classes = 1000) {
  nn::set_random_seed(seed);
  const nn::BatchNormalizationOptions bn{.momentum = 0.9};
  auto conv_bn = [&](nn::KTensor x, int64_t filters, int64_t k, int64_t stride, bool relu6) {
    x = (*nn::Conv2D(filters, k, {.strides = stride, .padding = "same", .use_bias = false}))(x);
    x = (*nn::BatchNormalization(bn))(x);
    return relu6 ? (*nn::ReLU({.max_value = 6.0}))(x) : x;
  };
  nn::KTensor in = nn::Input({224, 224, 3});
  nn::KTensor x = conv_bn(in, 32, 3, 2, true);
  int64_t channels = 32;
  struct Stage {
    int64_t t, c, n, s;
  };
  for (const Stage& st :
       {Stage{1, 16, 1, 1}, Stage{6, 24, 2, 2}, Stage{6, 32, 3, 2}, Stage{6, 64, 4, 2},
        Stage{6, 96, 3, 1}, Stage{6, 160, 3, 2}, Stage{6, 320, 1, 1}})
    for (int64_t i = 0; i < st.n; ++i) {
      const int64_t stride = i == 0 ? st.s : 1;
      nn::KTensor h = x;
      if (st.t != 1) h = conv_bn(h, channels * st.t, 1, 1, true);
      h = (*nn::DepthwiseConv2D(3, {.strides = stride, .padding = "same", .use_bias = false}))(h);
      h = (*nn::ReLU({.max_value = 6.0}))((*nn::BatchNormalization(bn))(h));
      h = conv_bn(h, st.c, 1, 1, false);
      x = stride == 1 && channels == st.c ? (*nn::Add())({x, h}) : h;
      channels = st.c;
    }
  x = conv_bn(x, 1280, 1, 1, true);
  x = (*nn::GlobalAveragePooling2D())(x);
  nn::KTensor out = (*nn::Dense(classes))(x);
  return nn::Model::create({in}, {out}, "mobilenet_v2_1.0_224");
}

}  // namespace lowbit::bench
