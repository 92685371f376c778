#include <gtest/gtest.h>

#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::random_tensor;
using testing::tensors_equal;

// A 10-layer MLP (forward, backward and SGD updates) on a symbolic batch.
struct Mlp {
  Graph g;
  Value x, loss;
  std::vector<Value> params;
  std::vector<std::pair<Value, Value>> updates;
  explicit Mlp(int layers = 10, int64_t width = 64) {
    Rng rng(5);
    x = g.placeholder("x", DType::kF32, {kUnknown, width});
    Value h = x;
    for (int i = 0; i < layers; ++i) {
      Graph::Scope s(g, "dense" + std::to_string(i));
      Value w = g.variable("kernel", random_tensor({width, width}, rng, -0.2f, 0.2f));
      Value b = g.variable("bias", random_tensor({width}, rng, -0.1f, 0.1f));
      params.push_back(w);
      params.push_back(b);
      h = ops::matmul(h, w) + b;
      if (i + 1 < layers) h = ops::relu(h);
    }
    loss = ops::mean(ops::square(h));
    auto grads = gradients(loss, params);
    for (size_t i = 0; i < params.size(); ++i)
      updates.emplace_back(params[i], params[i] - 0.01 * grads[i]);
  }
};

TEST(Executor, PeakMemoryOfMlpIsBelowTheSumOfIntermediates) {
  Mlp m;
  Executor ex(m.g, {m.loss}, m.updates);
  Rng rng(1);
  ex.run({{m.x, random_tensor({32, 64}, rng)}});
  EXPECT_GT(ex.total_intermediate_bytes(), 0u);
  EXPECT_LT(ex.peak_bytes(), ex.total_intermediate_bytes() / 2)
      << "peak " << ex.peak_bytes() << " of " << ex.total_intermediate_bytes();
}

TEST(Executor, BufferReuseDoesNotChangeResults) {
  Mlp a, b;  // same seeds: identical initial weights
  Executor reuse(a.g, {a.loss}, a.updates, {.reuse_memory = true});
  Executor no_reuse(b.g, {b.loss}, b.updates, {.reuse_memory = false});
  Rng rng(2);
  for (int step = 0; step < 5; ++step) {
    // Varying batch sizes exercise several plans sharing one arena.
    Tensor xb = random_tensor({step % 2 ? 7 : 16, 64}, rng);
    Tensor la = reuse.run({{a.x, xb}})[0];
    Tensor lb = no_reuse.run({{b.x, xb}})[0];
    EXPECT_TRUE(tensors_equal(la, lb)) << "step " << step;
  }
  for (size_t i = 0; i < a.params.size(); ++i)
    EXPECT_TRUE(tensors_equal(a.g.variable_tensor(a.params[i]), b.g.variable_tensor(b.params[i])));
  EXPECT_LT(reuse.peak_bytes(), no_reuse.peak_bytes());
}

TEST(Executor, TrainingStepLowersTheLoss) {
  Mlp m(3, 16);
  Executor ex(m.g, {m.loss}, m.updates);
  Rng rng(3);
  Tensor xb = random_tensor({8, 16}, rng);
  float first = ex.run({{m.x, xb}})[0].item<float>();
  float last = first;
  for (int i = 0; i < 50; ++i) last = ex.run({{m.x, xb}})[0].item<float>();
  EXPECT_LT(last, first * 0.9f);
}

TEST(Executor, DotExportNamesNodesAndShapes) {
  Mlp m(2, 8);
  std::string dot = m.g.to_dot({m.loss});
  EXPECT_NE(dot.find("digraph"), std::string::npos);
  EXPECT_NE(dot.find("dense0/kernel"), std::string::npos);
  EXPECT_NE(dot.find("matmul"), std::string::npos);
  EXPECT_NE(dot.find("f32[?,8]"), std::string::npos);
  // Line breaks inside labels are DOT's \n escape, not an escaped backslash.
  EXPECT_NE(dot.find("dense0/kernel\\nvariable"), std::string::npos) << dot;
  EXPECT_EQ(dot.find("\\\\n"), std::string::npos) << dot;
  EXPECT_EQ(dot.find("gradients/"), std::string::npos) << "only the loss's dependencies are drawn";
  m.g.verify();
}

}  // namespace
}  // namespace lowbit

namespace lowbit {
namespace {

// Updates are double-buffered (the new value is computed into a spare block that is swapped
// with the variable's): tensors held on the variable's storage must see every new value, values
// read during the step must be the old ones, and a refused step must change nothing.
TEST(Executor, DoubleBufferedUpdatesAreVisibleThroughEveryHandle) {
  Graph g;
  Tensor init = Tensor::from_vector<float>({1, 2, 3}, Shape{3});
  Value w = g.variable("w", init);
  Value c = g.variable("c", Tensor::from_vector<float>({0, 0, 0}, Shape{3}));
  Value w2 = w * 2.0;     // becomes w's new value: swapped in
  Value read = w + 0.0;   // reads w during the step: must see the old value
  Value fetched = c + w;  // fetched AND c's new value: copied, not swapped
  Executor ex(g, {read, fetched}, {{w, w2}, {c, fetched}});
  Tensor handle = g.variable_tensor(w);  // another handle on w's storage (as a layer Weight)
  for (int step = 1; step <= 3; ++step) {
    std::vector<Tensor> r = ex.run({});
    const float old0 = static_cast<float>(1 << (step - 1));
    EXPECT_EQ(r[0].data<float>()[0], old0) << step;
    EXPECT_EQ(handle.data<float>()[0], 2 * old0) << step;
    EXPECT_EQ(handle.data<float>()[2], 6 * old0) << step;
    EXPECT_TRUE(handle.same_storage(g.variable_tensor(w)));
  }
  // c accumulated the old w of each step: 1 + 2 + 4.
  EXPECT_EQ(g.variable_tensor(c).data<float>()[0], 7.0f);
  // A step refused by the commit guard leaves both variables as they were.
  std::function<bool(const std::vector<Tensor>&)> refuse = [](const std::vector<Tensor>&) {
    return false;
  };
  ex.run({}, refuse);
  EXPECT_EQ(handle.data<float>()[0], 8.0f);
  EXPECT_EQ(g.variable_tensor(c).data<float>()[0], 7.0f);
  ex.run({});
  EXPECT_EQ(handle.data<float>()[0], 16.0f);
}

}  // namespace
}  // namespace lowbit
