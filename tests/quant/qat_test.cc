// Quantization-aware training: quantizer state and its updates, batch-norm folding, training
// through fake quantizers, saving and loading (include/lowbit/quant/quantizer.h).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "lowbit/nn/layers.h"
#include "lowbit/ops.h"
#include "lowbit/quant/quantize_model.h"
#include "testing/op_testing.h"

namespace lowbit::quant {
namespace {

using nn::KTensor;
using testing::random_tensor;
using testing::tensors_near;

Tensor weight(const nn::Layer& l, const std::string& name) {
  for (const auto& w : l.weights())
    if (w.name == name) return w.value;
  ADD_FAILURE() << l.name() << " has no weight " << name;
  return Tensor();
}

// Gives a BatchNormalization non-trivial parameters and statistics (gamma of both signs).
void randomize_bn(nn::Layer& bn, Rng& rng) {
  for (auto& w : bn.weights()) {
    float* p = w.value.data<float>();
    for (int64_t i = 0; i < w.value.numel(); ++i) {
      if (w.name == "gamma") p[i] = (i % 3 == 2 ? -1.0f : 1.0f) * rng.uniform(0.5f, 1.5f);
      if (w.name == "beta") p[i] = rng.uniform(-0.5f, 0.5f);
      if (w.name == "moving_mean") p[i] = rng.uniform(-0.3f, 0.3f);
      if (w.name == "moving_variance") p[i] = rng.uniform(0.3f, 2.0f);
    }
  }
}

QuantizeConfig float_config() {
  QuantizeConfig c;
  c.weights.scheme = "none";
  c.activations.scheme = "none";
  c.inputs.scheme = "none";
  return c;
}

struct FoldCase {
  std::string name;
  std::function<nn::LayerPtr()> conv;
  Shape input;
};

std::vector<FoldCase> fold_cases() {
  return {
      {"conv2d",
       [] { return nn::Conv2D(6, 3, {.padding = "same", .use_bias = false}); },
       {5, 5, 3}},
      {"conv2d_bias", [] { return nn::Conv2D(4, 3, {.strides = 2}); }, {7, 7, 2}},
      {"dense", [] { return nn::Dense(5); }, {7}},
      {"conv1d", [] { return nn::Conv1D(3, 2); }, {6, 2}},
      {"depthwise", [] { return nn::DepthwiseConv2D(3, {.depth_multiplier = 2}); }, {5, 5, 3}},
  };
}

// The folded layer computes conv followed by batch norm: in inference mode (moving statistics)
// and in training mode (batch statistics, and the same moving-statistic updates).
TEST(BatchNormFolding, FoldedLayerEqualsConvThenBatchNorm) {
  for (const FoldCase& fc : fold_cases()) {
    SCOPED_TRACE(fc.name);
    nn::reset_layer_names();
    nn::set_random_seed(7);
    auto model = nn::Sequential::create(
        {nn::InputSpec(fc.input), fc.conv(), nn::BatchNormalization({.momentum = 0.9})});
    Rng rng(11);
    randomize_bn(*model->layers().back(), rng);
    auto q = quantize_model(*model, float_config());
    auto fold = std::dynamic_pointer_cast<FoldedConvBatchNormLayer>(q->layers().at(2));
    ASSERT_TRUE(fold) << q->summary();

    std::vector<int64_t> dims{4};
    dims.insert(dims.end(), fc.input.dims().begin(), fc.input.dims().end());
    Tensor x = random_tensor(Shape(dims), rng);
    EXPECT_TRUE(tensors_near((*q)(x), (*model)(x), 1e-5, 1e-5));

    // Training mode: batch statistics of u = z'·σ/γ (exactly the conv output here, no
    // quantization), updates of the moving statistics as the float BN's.
    Tensor yq = (*q)(x, {.training = true});
    Tensor yf = (*model)(x, {.training = true});
    EXPECT_TRUE(tensors_near(yq, yf, 2e-5, 2e-5));
    auto& fbn = *model->layers().back();
    auto& qbn = *fold->batch_norm();
    EXPECT_TRUE(tensors_near(weight(qbn, "moving_mean"), weight(fbn, "moving_mean"), 1e-6, 1e-5));
    EXPECT_TRUE(
        tensors_near(weight(qbn, "moving_variance"), weight(fbn, "moving_variance"), 1e-6, 1e-5));
    // And again in inference, with the updated statistics.
    EXPECT_TRUE(tensors_near((*q)(x), (*model)(x), 1e-5, 1e-5));
  }
}

TEST(BatchNormFolding, FreezeSwitchesToMovingStatisticsAtTheStep) {
  nn::reset_layer_names();
  nn::set_random_seed(2);
  auto model = nn::Sequential::create(
      {nn::InputSpec({4, 4, 2}), nn::Conv2D(3, 3, {.padding = "same"}), nn::BatchNormalization()});
  Rng rng(5);
  randomize_bn(*model->layers().back(), rng);
  QuantizeConfig cfg = float_config();
  cfg.freeze_bn_delay = 2;
  auto q = quantize_model(*model, cfg);
  auto fold = std::dynamic_pointer_cast<FoldedConvBatchNormLayer>(q->layers().at(2));
  ASSERT_TRUE(fold);
  Tensor x = random_tensor({3, 4, 4, 2}, rng);
  Tensor infer = (*q)(x);
  for (int step = 0; step < 4; ++step) {
    Tensor mm_before = weight(*fold->batch_norm(), "moving_mean").clone();
    Tensor y = (*q)(x, {.training = true});
    Tensor mm_after = weight(*fold->batch_norm(), "moving_mean");
    if (step < 2) {
      // Batch statistics: differs from the inference output; moving statistics move.
      EXPECT_FALSE(tensors_near(y, infer, 1e-3, 0)) << "step " << step;
      EXPECT_FALSE(tensors_near(mm_after, mm_before, 1e-7, 0)) << "step " << step;
    } else {
      // Frozen: the inference form with the (now fixed) moving statistics.
      EXPECT_TRUE(tensors_near(y, (*q)(x), 1e-5, 1e-5)) << "step " << step;
      EXPECT_TRUE(testing::tensors_equal(mm_after, mm_before)) << "step " << step;
    }
  }
  EXPECT_EQ(weight(*fold, "step").item<int64_t>(), 4);
}

}  // namespace
}  // namespace lowbit::quant
