// Tests of the fused optimizer updates (include/lowbit/ops/optim.h) and the fused relu / relu6
// gradients: each must equal, bit for bit, the composed elementwise formula it replaces.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "lowbit/graph.h"
#include "lowbit/op.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::random_tensor;
using testing::tensors_equal;

Tensor scalar_f32(float v) {
  Tensor t = Tensor::zeros(Shape{}, DType::kF32);
  t.data<float>()[0] = v;
  return t;
}

// Sizes below and above the parallel grain, so both loop branches run.
class OptimOpsSized : public ::testing::TestWithParam<int64_t> {};

TEST_P(OptimOpsSized, AdamMatchesComposedFormulaBitForBit) {
  Rng rng(7);
  const Shape s{GetParam()};
  Tensor w = random_tensor(s, rng), g = random_tensor(s, rng),
         m = random_tensor(s, rng, -0.1f, 0.1f);
  Tensor v = random_tensor(s, rng, 0.0f, 0.05f), vh = random_tensor(s, rng, 0.0f, 0.05f);
  Tensor alpha = scalar_f32(0.0031f);
  const double b1 = 0.9, b2 = 0.999, eps = 1e-7;
  // The composed graph Adam used before fusion (src/nn/optimizers.cc).
  Tensor m1 = m + (g - m) * (1.0 - b1);
  Tensor v1 = v + (ops::square(g) - v) * (1.0 - b2);
  Tensor w1 = w - (m1 * alpha) / (ops::sqrt(v1) + eps);
  std::vector<Tensor> r = ops::adam_update(w, g, m, v, alpha, b1, b2, eps);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_TRUE(tensors_equal(r[0], w1));
  EXPECT_TRUE(tensors_equal(r[1], m1));
  EXPECT_TRUE(tensors_equal(r[2], v1));
  Tensor vh1 = ops::maximum(vh, v1);
  Tensor w2 = w - (m1 * alpha) / (ops::sqrt(vh1) + eps);
  std::vector<Tensor> ra = ops::adam_update(w, g, m, v, vh, alpha, b1, b2, eps);
  ASSERT_EQ(ra.size(), 4u);
  EXPECT_TRUE(tensors_equal(ra[0], w2));
  EXPECT_TRUE(tensors_equal(ra[1], m1));
  EXPECT_TRUE(tensors_equal(ra[2], v1));
  EXPECT_TRUE(tensors_equal(ra[3], vh1));
  testing::note_reference_tested("adam_update");
}

TEST_P(OptimOpsSized, SgdMomentumMatchesComposedFormulaBitForBit) {
  Rng rng(8);
  const Shape s{GetParam()};
  Tensor w = random_tensor(s, rng), g = random_tensor(s, rng), m = random_tensor(s, rng);
  Tensor lr = scalar_f32(0.01f);
  const double mom = 0.9;
  Tensor m1 = m * mom - g * lr;
  std::vector<Tensor> r = ops::sgd_momentum_update(w, g, m, lr, mom, false);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_TRUE(tensors_equal(r[0], w + m1));
  EXPECT_TRUE(tensors_equal(r[1], m1));
  std::vector<Tensor> rn = ops::sgd_momentum_update(w, g, m, lr, mom, true);
  EXPECT_TRUE(tensors_equal(rn[0], w + (m1 * mom - g * lr)));
  EXPECT_TRUE(tensors_equal(rn[1], m1));
  testing::note_reference_tested("sgd_momentum_update");
}

// Every listed kernel (the AVX-512 rows where the CPU has AVX-512) against the reference.
TEST_P(OptimOpsSized, FastKernelsEqualReferenceBitForBit) {
  Rng rng(9);
  const Shape s{GetParam()};
  Tensor w = random_tensor(s, rng), g = random_tensor(s, rng),
         m = random_tensor(s, rng, -0.1f, 0.1f), v = random_tensor(s, rng, 0.0f, 0.05f);
  const int fast = cpu_has(Isa::kAvx512) ? 1 : 0;
  const Attrs adam{{"beta_1", 0.9}, {"beta_2", 0.999}, {"epsilon", 1e-7}};
  EXPECT_EQ(testing::expect_fast_matches_reference("adam_update", {w, g, m, v, scalar_f32(0.0031f)},
                                                   adam, 0, 0),
            fast);
  for (bool nesterov : {false, true})
    EXPECT_EQ(
        testing::expect_fast_matches_reference("sgd_momentum_update", {w, g, m, scalar_f32(0.01f)},
                                               {{"momentum", 0.9}, {"nesterov", nesterov}}, 0, 0),
        fast);
  // Through the ops' own entry points too.
  auto run = [&](KernelChoice c) {
    set_kernel_choice(c);
    std::vector<Tensor> r = ops::adam_update(w, g, m, v, scalar_f32(0.0031f), 0.9, 0.999, 1e-7);
    for (bool nesterov : {false, true}) {
      std::vector<Tensor> q = ops::sgd_momentum_update(w, g, m, scalar_f32(0.01f), 0.9, nesterov);
      r.insert(r.end(), q.begin(), q.end());
    }
    set_kernel_choice(KernelChoice::kFastest);
    return r;
  };
  std::vector<Tensor> ref = run(KernelChoice::kReference), got = run(KernelChoice::kFastest);
  ASSERT_EQ(ref.size(), got.size());
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_TRUE(tensors_equal(got[i], ref[i])) << i;
}

// Issue 14: the same with NaN, +Inf and -Inf in the gradient and the weights (a NaN gradient
// must give a NaN update in both kernels: the training step guard relies on seeing it).
TEST(OptimOps, FastKernelsEqualReferenceOnNonFiniteValues) {
  Rng rng(10);
  const Shape s{37};
  Tensor w = random_tensor(s, rng), g = random_tensor(s, rng),
         m = random_tensor(s, rng, -0.1f, 0.1f), v = random_tensor(s, rng, 0.0f, 0.05f);
  const float inf = std::numeric_limits<float>::infinity();
  g.data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
  g.data<float>()[17] = inf;
  g.data<float>()[36] = -inf;
  w.data<float>()[5] = inf;
  w.data<float>()[20] = std::numeric_limits<float>::quiet_NaN();
  auto run = [&](KernelChoice c) {
    set_kernel_choice(c);
    std::vector<Tensor> r = ops::adam_update(w, g, m, v, scalar_f32(0.0031f), 0.9, 0.999, 1e-7);
    for (bool nesterov : {false, true}) {
      std::vector<Tensor> q = ops::sgd_momentum_update(w, g, m, scalar_f32(0.01f), 0.9, nesterov);
      r.insert(r.end(), q.begin(), q.end());
    }
    set_kernel_choice(KernelChoice::kFastest);
    return r;
  };
  std::vector<Tensor> ref = run(KernelChoice::kReference), fast = run(KernelChoice::kFastest);
  ASSERT_EQ(ref.size(), fast.size());
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_TRUE(tensors_equal(fast[i], ref[i])) << i;
  EXPECT_TRUE(std::isnan(ref[0].data<float>()[0]));  // the NaN gradient reaches the weight
  ASSERT_FALSE(find_op("adam_update").fast.empty());
  ASSERT_FALSE(find_op("sgd_momentum_update").fast.empty());
  testing::nonfinite_checked_ops().insert("adam_update");
  testing::nonfinite_checked_ops().insert("sgd_momentum_update");
}

// 16/17: one full AVX-512 vector and a masked tail; 2^15 + 5: several parallel chunks.
INSTANTIATE_TEST_SUITE_P(Sizes, OptimOpsSized,
                         ::testing::Values(1, 16, 17, 37, (1 << 15) + 5, 100003));

TEST(OptimOps, AdamHandValues) {
  // w=1, g=0.5, m=0, v=0, alpha=0.1, beta_1=0.9, beta_2=0.999, eps=0:
  // m' = 0.05, v' = 0.00025, w' = 1 - 0.005 / sqrt(0.00025) = 1 - 0.316227...
  Tensor w = Tensor::from_vector<float>({1.0f}, Shape{1});
  Tensor g = Tensor::from_vector<float>({0.5f}, Shape{1});
  Tensor z = Tensor::zeros(Shape{1}, DType::kF32);
  std::vector<Tensor> r = ops::adam_update(w, g, z, z, scalar_f32(0.1f), 0.9, 0.999, 0.0);
  EXPECT_NEAR(r[1].data<float>()[0], 0.05, 1e-7);
  EXPECT_NEAR(r[2].data<float>()[0], 0.00025, 1e-9);
  EXPECT_NEAR(r[0].data<float>()[0], 1.0 - 0.005 / std::sqrt(0.00025), 1e-6);
}

TEST(OptimOps, ShapeAndDTypeErrors) {
  Tensor w = Tensor::zeros(Shape{3}, DType::kF32), bad = Tensor::zeros(Shape{4}, DType::kF32);
  Tensor a = scalar_f32(0.1f);
  testing::expect_throws_with<ShapeError>(
      [&] { ops::adam_update(w, bad, w, w, a, 0.9, 0.999, 1e-7); }, "argument 'g'");
  testing::expect_throws_with<ShapeError>(
      [&] { ops::adam_update(w, w, w, w, w, 0.9, 0.999, 1e-7); }, "'alpha'");
  Tensor wi = Tensor::zeros(Shape{3}, DType::kS32);
  testing::expect_throws_with<DTypeError>(
      [&] { ops::sgd_momentum_update(wi, w, w, a, 0.9, false); }, "argument 'w'");
}

TEST(ReluBackward, MatchesComposedMaskIncludingZeroAndNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor x = Tensor::from_vector<float>({-2.0f, -0.0f, 0.0f, 1e-30f, 3.0f, 5.99f, 6.0f, 7.0f, nan},
                                        Shape{9});
  Tensor dy = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6, 7, 8, 9}, Shape{9});
  Tensor y = ops::relu(x);
  EXPECT_TRUE(tensors_equal(ops::relu_backward(y, dy),
                            Tensor::from_vector<float>({0, 0, 0, 4, 5, 6, 7, 8, 0}, Shape{9})));
  Tensor y6 = ops::relu6(x);
  EXPECT_TRUE(tensors_equal(ops::relu6_backward(y6, dy),
                            Tensor::from_vector<float>({0, 0, 0, 4, 5, 6, 0, 0, 0}, Shape{9})));
  testing::note_reference_tested("relu_backward");
  testing::note_reference_tested("relu6_backward");
}

TEST(ReluBackward, GradientWrtDy) {
  Rng rng(3);
  Tensor y = ops::relu(random_tensor(Shape{4, 5}, rng, -1.0f, 7.0f));
  Tensor dy = random_tensor(Shape{4, 5}, rng);
  testing::expect_gradients_match("relu_backward", {y, dy}, {}, {.wrt = {1}});
  testing::expect_gradients_match("relu6_backward", {y, dy}, {}, {.wrt = {1}});
}

TEST(ReluBackward, ReluGradientIsTheFusedOp) {
  // The relu gradient rule now emits relu_backward; its value is unchanged.
  Rng rng(4);
  Tensor xv = random_tensor(Shape{3, 4}, rng, -2.0f, 8.0f);
  Graph g;
  Value x = g.placeholder("x", DType::kF32, Shape{3, 4});
  Value l = ops::sum(ops::relu(x) * 2.0) + ops::sum(ops::relu6(x) * 3.0);
  Value dx = gradients(l, {x})[0];
  Executor ex(g, {dx});
  Tensor got = ex.run({{x, xv}})[0];
  Tensor want = ops::where(
      ops::greater(xv, ops::scalar_like(xv, 0)),
      ops::scalar_like(xv, 2.0) + ops::where(ops::less(xv, ops::scalar_like(xv, 6)),
                                             ops::scalar_like(xv, 3.0), ops::scalar_like(xv, 0.0)),
      ops::scalar_like(xv, 0.0));
  EXPECT_TRUE(testing::tensors_near(got, want, 1e-6, 1e-6));
}

}  // namespace
}  // namespace lowbit
