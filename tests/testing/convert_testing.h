// Test helpers shared by the converter's tests (tests/quant/convert*_test.cc): the MNIST split,
// a QAT model's tensor by layer name, its values as codes of an integer tensor's grid, and what
// an integer model's ops are.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lowbit/data/idx.h"
#include "lowbit/nn/model.h"
#include "lowbit/quant/convert.h"
#include "testing/op_testing.h"

namespace lowbit::testing {

// The MNIST training and test splits of ../shared/data (8,000 and 2,000 images), read once.
struct Mnist {
  MnistSplit train, test;
};
inline const Mnist& mnist() {
  static const Mnist m{load_mnist(shared_dir() + "/data", true),
                       load_mnist(shared_dir() + "/data", false)};
  return m;
}

// The symbolic tensor of model m produced by the layer named `name` (undefined if none).
inline nn::KTensor find_output(const nn::Model& m, const std::string& name) {
  std::function<nn::KTensor(const nn::KTensor&)> walk = [&](const nn::KTensor& k) -> nn::KTensor {
    if (k.node->layer->name() == name) return k;
    for (const nn::KTensor& i : k.node->inputs)
      if (nn::KTensor r = walk(i); r.defined()) return r;
    return {};
  };
  return walk(m.outputs()[0]);
}

inline const nn::Layer* find_layer(const nn::Model& m, const std::string& name) {
  const nn::KTensor k = find_output(m, name);
  return k.defined() ? k.node->layer.get() : nullptr;
}

// A QAT model's output on the integer tensor t's grid (q / s + z, rounded, clamped), as s8 codes.
inline Tensor qat_codes(const Tensor& out, const quant::IntegerTensor& t) {
  Tensor c(out.shape(), DType::kS8);
  for (int64_t e = 0; e < out.numel(); ++e)
    c.data<int8_t>()[e] = static_cast<int8_t>(std::clamp<double>(
        std::round(out.data<float>()[e] / t.scale[0]) + t.zero_point[0], -128.0, 127.0));
  return c;
}

// The class row r of f32 logits [n, classes] picks.
inline int64_t argmax_row(const Tensor& t, int64_t r) {
  const int64_t c = t.shape()[1];
  const float* p = t.data<float>() + r * c;
  return std::max_element(p, p + c) - p;
}

// The op names of an integer model, in order, and how many ops are named `op`.
inline std::vector<std::string> op_kinds(const quant::IntegerModel& im) {
  std::vector<std::string> k;
  for (const auto& op : im.ops) k.push_back(op.op);
  return k;
}
inline int64_t count_of(const quant::IntegerModel& im, const std::string& op) {
  const auto k = op_kinds(im);
  return std::count(k.begin(), k.end(), op);
}

}  // namespace lowbit::testing
