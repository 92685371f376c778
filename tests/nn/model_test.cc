#include "lowbit/nn/model.h"

#include <gtest/gtest.h>

#include "lowbit/nn/layers.h"
#include "lowbit/ops.h"
#include "testing/op_testing.h"

namespace lowbit::nn {
namespace {

TEST(Model, FunctionalDenseStackRunsAndSummarises) {
  reset_layer_names();
  set_random_seed(1);
  KTensor in = Input({4});
  KTensor h = (*Dense(8, {.activation = "relu"}))(in);
  KTensor out = (*Dense(3))(h);
  auto model = Model::create({in}, {out}, "mlp");
  EXPECT_EQ(out.shape(), Shape({kUnknown, 3}));
  Tensor x = Tensor::full({2, 4}, 0.5);
  Tensor y = (*model)(x);
  EXPECT_EQ(y.shape(), Shape({2, 3}));
  std::string s = model->summary();
  EXPECT_NE(s.find("dense (Dense)"), std::string::npos) << s;
  EXPECT_NE(s.find("(None, 8)"), std::string::npos) << s;
  EXPECT_NE(s.find("Total params: 67"), std::string::npos) << s;  // 4*8+8 + 8*3+3
}

TEST(Model, SequentialWithBatchNormTrainingVsInference) {
  reset_layer_names();
  auto model = Sequential::create({InputSpec({3}), BatchNormalization({.momentum = 0.5})});
  Tensor x = Tensor::from_vector<float>({1, 2, 3, 3, 4, 5}, {2, 3});
  Tensor inf = (*model)(x);  // moving stats: mean 0, var 1 -> x / sqrt(1 + eps)
  EXPECT_NEAR(inf.at<float>({0, 0}), 1.0f / std::sqrt(1.001f), 1e-5);
  Tensor tr = (*model)(x, {.training = true});  // batch stats: +-1 / sqrt(1 + eps)
  EXPECT_NEAR(tr.at<float>({0, 0}), -1.0f / std::sqrt(1.001f), 1e-5);
  auto bn = model->layers().back();
  EXPECT_NEAR(bn->weights()[2].value.at<float>({0}), 1.0f, 1e-6);  // 0*0.5 + 2*0.5
  bn->set_trainable(false);  // frozen BN: inference mode even in training
  Tensor frozen = (*model)(x, {.training = true});
  EXPECT_NEAR(frozen.at<float>({0, 0}), 0.0f, 1e-5);
}

}  // namespace
}  // namespace lowbit::nn
