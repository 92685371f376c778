#include <gtest/gtest.h>

#include <cmath>

#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::tensors_near;

TEST(Autodiff, ValueUsedTwiceAccumulates) {
  // y = x * x + x  ->  dy/dx = 2x + 1
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {3});
  Value y = x * x + x;
  auto grads = gradients({y}, {x}, {g.constant(Tensor::full({3}, 1.0))});
  Executor ex(g, {y, grads[0]});
  auto out = ex.run({{x, Tensor::from_vector<float>({1, -2, 0.5f}, {3})}});
  EXPECT_TRUE(tensors_near(out[0], Tensor::from_vector<float>({2, 2, 0.75f}, {3}), 0, 0));
  EXPECT_TRUE(tensors_near(out[1], Tensor::from_vector<float>({3, -3, 2}, {3}), 0, 0));
}

TEST(Autodiff, BroadcastingIsUndoneBySumming) {
  Graph g;
  Value a = g.placeholder("a", DType::kF32, {kUnknown, 3});
  Value b = g.placeholder("b", DType::kF32, {3});
  Value c = g.placeholder("c", DType::kF32, {kUnknown, 1});
  Value y = (a + b) * c;
  auto grads = gradients({y}, {a, b, c}, {ops::ones_like(y)});
  EXPECT_EQ(grads[1].shape(), Shape({3}));
  EXPECT_EQ(grads[2].shape(), Shape({kUnknown, 1}));
  Executor ex(g, grads);
  Tensor ta = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor tb = Tensor::from_vector<float>({10, 20, 30}, {3});
  Tensor tc = Tensor::from_vector<float>({2, 3}, {2, 1});
  auto out = ex.run({{a, ta}, {b, tb}, {c, tc}});
  EXPECT_TRUE(tensors_near(out[0], Tensor::from_vector<float>({2, 2, 2, 3, 3, 3}, {2, 3}), 0, 0));
  EXPECT_TRUE(tensors_near(out[1], Tensor::from_vector<float>({5, 5, 5}, {3}), 0, 0));
  EXPECT_TRUE(tensors_near(out[2], Tensor::from_vector<float>({66, 75}, {2, 1}), 0, 0));
}

TEST(Autodiff, UnrelatedVariableGetsZeros) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {2});
  Value w = g.variable("w", Tensor::full({2}, 3.0));
  Value y = x * x;
  auto grads = gradients({y}, {w}, {ops::ones_like(y)});
  Executor ex(g, grads);
  auto out = ex.run({{x, Tensor::full({2}, 1.0)}});
  EXPECT_TRUE(tensors_near(out[0], Tensor::zeros({2}), 0, 0));
}

TEST(Autodiff, GradcheckArithmetic) {
  Rng rng(3);
  auto r = [&](Shape s) { return testing::random_tensor(s, rng, 0.5f, 2.0f); };
  testing::expect_gradients_match("add", {r({2, 3}), r({3})});
  testing::expect_gradients_match("sub", {r({2, 1}), r({1, 4})});
  testing::expect_gradients_match("mul", {r({2, 3}), r({2, 3})});
  testing::expect_gradients_match("div", {r({4}), r({1})});
  testing::expect_gradients_match("neg", {r({5})});
  testing::expect_gradients_match("sum_like", {r({2, 3}), r({1, 3})}, {}, {.wrt = {0}});
  testing::expect_gradients_match("broadcast_like", {r({3}), r({2, 3})}, {}, {.wrt = {0}});
  testing::expect_gradients_match("reshape_like", {r({2, 3}), r({3, 2})}, {}, {.wrt = {0}});
  // fill_like ignores its input's values: its gradient is zero.
  testing::expect_gradients_match("fill_like", {r({2, 2})}, {{"value", 3.0}});
}

TEST(Executor, StateUpdatesAreWrittenAfterTheStep) {
  Graph g;
  Value w = g.variable("w", Tensor::full({2}, 1.0));
  Value x = g.placeholder("x", DType::kF32, {2});
  Value y = w * x;
  Executor ex(g, {y}, {{w, w + x}});
  Tensor tx = Tensor::full({2}, 2.0);
  auto o1 = ex.run({{x, tx}});
  EXPECT_EQ(o1[0].to_vector<float>(), (std::vector<float>{2, 2}));  // read before the update
  EXPECT_EQ(g.variable_tensor(w).to_vector<float>(), (std::vector<float>{3, 3}));
  auto o2 = ex.run({{x, tx}});
  EXPECT_EQ(o2[0].to_vector<float>(), (std::vector<float>{6, 6}));
}

TEST(Executor, CommitGuardSkipsUpdates) {
  Graph g;
  Value w = g.variable("w", Tensor::full({1}, 1.0));
  Value x = g.placeholder("x", DType::kF32, {1});
  Executor ex(g, {x + w}, {{w, w + x}});
  auto finite = [](const std::vector<Tensor>& f) { return std::isfinite(f[0].data<float>()[0]); };
  ex.run({{x, Tensor::full({1}, 2.0)}}, finite);
  EXPECT_EQ(g.variable_tensor(w).data<float>()[0], 3.0f);
  ex.run({{x, Tensor::full({1}, NAN)}}, finite);  // refused: w keeps its last good value
  EXPECT_EQ(g.variable_tensor(w).data<float>()[0], 3.0f);
}

TEST(Executor, FeedErrorsAreClear) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 3});
  Value y = x + x;
  Executor ex(g, {y});
  testing::expect_throws_with<ShapeError>(
      [&] {
        ex.run({{x, Tensor::zeros({2, 4})}});
      },
      "expects shape [?,3] but was fed [2,4]");
  testing::expect_throws_with<DTypeError>(
      [&] {
        ex.run({{x, Tensor::zeros({2, 3}, DType::kS32)}});
      },
      "expects dtype f32");
  testing::expect_throws_with<GraphError>([&] { ex.run({}); }, "'x' is needed");
}

}  // namespace
}  // namespace lowbit
