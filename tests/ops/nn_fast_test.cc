// Fast batch-norm kernels (src/kernels/fast/batch_norm.cc) against the reference kernels.
#include <gtest/gtest.h>

#include <cmath>

#include "lowbit/ops.h"
#include "lowbit/threads.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::random_tensor;

TEST(FastBatchNorm, MatchesReferenceOnEdgeShapes) {
  Rng rng(11);
  // rows x channels: 1, odd, prime, the block size and around it, large.
  for (Shape s : {Shape{1, 1}, Shape{3, 5}, Shape{7, 13}, Shape{256, 16}, Shape{257, 3},
                  Shape{4, 9, 9, 32}, Shape{64, 14, 14, 64}}) {
    SCOPED_TRACE(s.str());
    const int64_t c = s[-1];
    Tensor x = random_tensor(s, rng, -2, 3);
    Tensor gamma = random_tensor({c}, rng, 0.5f, 1.5f), beta = random_tensor({c}, rng);
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      EXPECT_EQ(testing::expect_fast_matches_reference("batch_norm_training", {x, gamma, beta},
                                                       {{"epsilon", 1e-3}}, 1e-5, 1e-4),
                1);
      auto fwd =
          run_op(find_op("batch_norm_training"), {x, gamma, beta}, {}, KernelChoice::kReference);
      Tensor dy = random_tensor(s, rng);
      EXPECT_EQ(testing::expect_fast_matches_reference(
                    "batch_norm_training_backward", {x, gamma, fwd[1], fwd[2], dy}, {}, 1e-5, 1e-4),
                1);
    }
    set_num_threads(1);
  }
}

TEST(FastBatchNorm, SameResultAtAnyThreadCount) {
  Rng rng(12);
  Tensor x = random_tensor({64, 28, 28, 32}, rng), gamma = random_tensor({32}, rng),
         beta = random_tensor({32}, rng);
  set_num_threads(1);
  auto one = run_op(find_op("batch_norm_training"), {x, gamma, beta}, {}, KernelChoice::kFastest);
  set_num_threads(2);
  auto two = run_op(find_op("batch_norm_training"), {x, gamma, beta}, {}, KernelChoice::kFastest);
  set_num_threads(1);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(testing::tensors_equal(one[i], two[i]));
}

TEST(FastBatchNorm, OtherAxesUseTheReference) {
  Rng rng(13);
  Tensor x = random_tensor({4, 3, 5}, rng), g = random_tensor({3}, rng),
         b = random_tensor({3}, rng);
  EXPECT_EQ(testing::expect_fast_matches_reference("batch_norm_training", {x, g, b}, {{"axis", 1}}),
            0);
}

}  // namespace
}  // namespace lowbit

namespace lowbit {
namespace {

TEST(FastMaxPool, BitIdenticalToReference) {
  Rng rng(21);
  struct Case {
    Shape x;
    Attrs a;
  };
  std::vector<Case> cases = {
      {{2, 4, 4, 3}, {{"ksize", std::vector<int64_t>{2, 2}}}},
      {{1, 5, 7, 1}, {{"ksize", std::vector<int64_t>{2, 2}}, {"padding", "same"}}},
      {{3, 7, 5, 17},
       {{"ksize", std::vector<int64_t>{3, 3}},
        {"strides", std::vector<int64_t>{1, 1}},
        {"padding", "same"}}},
      {{2, 9, 9, 8},
       {{"ksize", std::vector<int64_t>{3, 2}}, {"strides", std::vector<int64_t>{2, 1}}}},
      {{64, 28, 28, 32}, {{"ksize", std::vector<int64_t>{2, 2}}}},
  };
  for (const auto& cs : cases) {
    SCOPED_TRACE(cs.x.str() + " " + cs.a.str());
    Tensor x = testing::random_tensor(cs.x, rng);
    // Ties: quantise some inputs so windows hold equal maxima.
    for (int64_t i = 0; i < x.numel(); i += 3)
      x.data<float>()[i] = std::round(x.data<float>()[i] * 2) / 2;
    EXPECT_EQ(testing::expect_fast_matches_reference("max_pool2d", {x}, cs.a, 0, 0), 1);
    Tensor y = run_op(find_op("max_pool2d"), {x}, cs.a, KernelChoice::kReference)[0];
    Tensor dy = testing::random_tensor(y.shape(), rng);
    EXPECT_EQ(testing::expect_fast_matches_reference("max_pool2d_backward", {x, dy}, cs.a, 0, 0),
              1);
  }
}

}  // namespace
}  // namespace lowbit
