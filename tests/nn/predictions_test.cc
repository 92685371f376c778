// nn::top1 / top1_accuracy / top1_agreement (lowbit/nn/predictions.h).
#include "lowbit/nn/predictions.h"

#include <gtest/gtest.h>

#include "testing/op_testing.h"

namespace lowbit::nn {
namespace {

using lowbit::testing::expect_throws_with;

TEST(Top1, AccuracyAndAgreementByHand) {
  // Rows pick 1, 0, 2, 0 (the first of the tied maxima in the last row).
  const Tensor a = Tensor::from_vector<float>({0, 3, 1, 5, 2, 1, 0, 0, 9, 4, 4, 1}, {4, 3});
  const Tensor b = Tensor::from_vector<float>({0, 3, 1, 0, 2, 1, 0, 0, 9, 1, 4, 1}, {4, 3});
  EXPECT_EQ(top1(a), (std::vector<int64_t>{1, 0, 2, 0}));
  EXPECT_DOUBLE_EQ(top1_accuracy(a, Tensor::from_vector<int64_t>({1, 0, 0, 0}, {4})), 0.75);
  EXPECT_DOUBLE_EQ(top1_agreement(a, b), 0.5);  // b picks 1, 1, 2, 1
  EXPECT_DOUBLE_EQ(top1_agreement(a, a), 1.0);
}

TEST(Top1, Errors) {
  const Tensor a = Tensor::zeros({2, 3});
  expect_throws_with<ShapeError>([&] { top1(Tensor::zeros({3})); }, "expected f32 scores");
  expect_throws_with<ShapeError>(
      [&] {
        top1_accuracy(a, Tensor::from_vector<int64_t>({0, 1, 2}, {3}));
      },
      "labels [2]");
  expect_throws_with<DTypeError>([&] { top1_accuracy(a, Tensor::zeros({2})); }, "integer");
  expect_throws_with<ShapeError>(
      [&] {
        top1_agreement(a, Tensor::zeros({2, 4}));
      },
      "differ in shape");
}

}  // namespace
}  // namespace lowbit::nn
