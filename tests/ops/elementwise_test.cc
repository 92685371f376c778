// Tests of the elementwise family (include/lowbit/ops/elementwise.h): golden values checked by
// hand or against double-precision formulas, gradient checks, the TF conventions at kinks and
// ties, broadcasting edge cases (3-way, rank 0, size 0, unknown dims) and the error messages.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::expect_gradients_match;
using testing::expect_throws_with;
using testing::note_reference_tested;
using testing::tensors_equal;
using testing::tensors_near;

// f32 kernels use the float libm functions: a few ulp from the double formula.
constexpr double kUlpRtol = 1e-6;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

Tensor f32(std::vector<float> v, Shape s) { return Tensor::from_vector<float>(v, s); }
Tensor f32(std::vector<float> v) {
  const auto n = static_cast<int64_t>(v.size());
  return Tensor::from_vector<float>(v, {n});
}
template <class T>
Tensor vec(std::vector<T> v) {
  const auto n = static_cast<int64_t>(v.size());
  return Tensor::from_vector<T>(v, {n});
}
Tensor bools(std::vector<bool> v, Shape s) { return Tensor::from_vector<bool>(v, s); }
Tensor bools(std::vector<bool> v) {
  const auto n = static_cast<int64_t>(v.size());
  return Tensor::from_vector<bool>(v, {n});
}

// tensors_near for f32 results that may hold inf or NaN: those must match exactly (same
// infinity, NaN for NaN); the finite elements are compared with the tolerances.
::testing::AssertionResult near_ieee(const Tensor& got, const Tensor& want, double atol,
                                     double rtol) {
  if (got.dtype() != DType::kF32 || want.dtype() != DType::kF32 || got.shape() != want.shape())
    return tensors_near(got, want, atol, rtol);
  Tensor g = got.clone(), w = want.clone();
  float* pg = g.data<float>();
  float* pw = w.data<float>();
  for (int64_t i = 0; i < g.numel(); ++i) {
    if (std::isfinite(pg[i]) && std::isfinite(pw[i])) continue;
    const bool same = (std::isnan(pg[i]) && std::isnan(pw[i])) || pg[i] == pw[i];
    if (!same)
      return ::testing::AssertionFailure()
             << "element " << i << ": got " << pg[i] << ", want " << pw[i];
    pg[i] = pw[i] = 0;
  }
  return tensors_near(g, w, atol, rtol);
}

// Runs a unary op eagerly and compares with `want`.
void expect_unary(const std::string& op, const Attrs& attrs, std::vector<float> x,
                  std::vector<float> want, double atol = 0, double rtol = kUlpRtol) {
  SCOPED_TRACE(op + " {" + attrs.str() + "}");
  Tensor y = ops::apply1(op, {f32(x)}, attrs);
  EXPECT_TRUE(near_ieee(y, f32(want), atol, rtol)) << y;
  note_reference_tested(op);
}

// Random f32 tensor whose values keep at least `margin` from every kink (finite differences
// must not straddle one).
Tensor away_from(const Shape& s, Rng& rng, float lo, float hi, std::vector<float> kinks,
                 float margin = 0.05f) {
  Tensor t = testing::random_tensor(s, rng, lo, hi);
  for (float& v : t.span<float>())
    for (float k : kinks)
      if (std::fabs(v - k) < margin) v = k + (v < k ? -margin : margin);
  return t;
}

// d(sum(f(inputs)))/d(inputs[i]) through the graph (autodiff + executor), for every f32 input.
template <class F>
std::vector<Tensor> grads_of(F f, const std::vector<Tensor>& inputs) {
  Graph g;
  std::vector<Value> in, wrt;
  std::vector<std::pair<Value, Tensor>> feeds;
  for (size_t i = 0; i < inputs.size(); ++i) {
    in.push_back(g.placeholder("in" + std::to_string(i), inputs[i].dtype(), inputs[i].shape()));
    feeds.emplace_back(in.back(), inputs[i]);
    if (inputs[i].dtype() == DType::kF32) wrt.push_back(in.back());
  }
  Value y = f(in);
  auto grads = gradients({y}, wrt, {ops::ones_like(y)});
  Executor ex(g, grads);
  return ex.run(feeds);
}
template <class F>
Tensor grad_of_unary(F f, std::vector<float> x) {
  return grads_of([&](const std::vector<Value>& in) { return f(in[0]); }, {f32(x)})[0];
}

// ---------------------------------------------------------------------------------------------
// Unary math

TEST(ElementwiseMath, AbsSquareSignAllNumericDtypes) {
  expect_unary("abs", {}, {-2, -0.5f, 0, 3}, {2, 0.5f, 0, 3});
  expect_unary("square", {}, {-3, 0.5f, 0}, {9, 0.25f, 0});
  expect_unary("sign", {}, {-2, 0, 3, kNaN}, {-1, 0, 1, kNaN});
  EXPECT_TRUE(std::signbit(ops::sign(f32({-0.0f})).data<float>()[0]));

  // Integers: abs of the minimum wraps to itself; square wraps.
  EXPECT_TRUE(tensors_equal(ops::abs(vec<int8_t>({-128, -3, 0, 5})), vec<int8_t>({-128, 3, 0, 5})));
  EXPECT_TRUE(tensors_equal(ops::abs(vec<int32_t>({-7, 7})), vec<int32_t>({7, 7})));
  EXPECT_TRUE(tensors_equal(ops::abs(vec<int64_t>({std::numeric_limits<int64_t>::min(), -9})),
                            vec<int64_t>({std::numeric_limits<int64_t>::min(), 9})));
  EXPECT_TRUE(tensors_equal(ops::abs(vec<uint8_t>({0, 200})), vec<uint8_t>({0, 200})));
  EXPECT_TRUE(tensors_equal(ops::square(vec<int8_t>({-3, 11, 16})), vec<int8_t>({9, 121, 0})));
  EXPECT_TRUE(tensors_equal(ops::square(vec<uint8_t>({15, 16})), vec<uint8_t>({225, 0})));
  EXPECT_TRUE(tensors_equal(ops::square(vec<int32_t>({-46341})), vec<int32_t>({-2147479015})));
  EXPECT_TRUE(
      tensors_equal(ops::square(vec<int64_t>({-3000000000})), vec<int64_t>({9000000000000000000})));
  EXPECT_TRUE(tensors_equal(ops::sign(vec<int32_t>({-5, 0, 9})), vec<int32_t>({-1, 0, 1})));
  EXPECT_TRUE(tensors_equal(ops::sign(vec<uint8_t>({0, 9})), vec<uint8_t>({0, 1})));
}

TEST(ElementwiseMath, ExpLogSqrtRsqrtErf) {
  const double e = std::exp(1.0);
  expect_unary("exp", {}, {0, 1, -1, 100}, {1, float(e), float(1 / e), kInf});
  expect_unary("log", {}, {1, float(e), 0.5f, 0, -1}, {0, 1, float(std::log(0.5)), -kInf, kNaN},
               1e-7);
  expect_unary("sqrt", {}, {4, 2, 0}, {2, float(std::sqrt(2.0)), 0});
  expect_unary("rsqrt", {}, {4, 0.25f, 0}, {0.5f, 2, kInf});
  expect_unary("erf", {}, {0, 0.5f, 1, -2}, {0, 0.5204998778f, 0.8427007929f, -0.9953222650f});
}

TEST(ElementwiseMath, PowMaximumMinimum) {
  Tensor a = f32({2, 9, 2, 0, -2, -8}), b = f32({3, 0.5f, -1, 0, 2, 1.0f / 3});
  Tensor y = ops::pow(a, b);
  EXPECT_TRUE(near_ieee(y, f32({8, 3, 0.5f, 1, 4, kNaN}), 0, kUlpRtol)) << y;
  note_reference_tested("pow");

  Tensor p = f32({1, -2, kNaN, 4}), q = f32({0, 3, 1, kNaN});
  EXPECT_TRUE(near_ieee(ops::maximum(p, q), f32({1, 3, kNaN, kNaN}), 0, 0));
  EXPECT_TRUE(near_ieee(ops::minimum(p, q), f32({0, -2, kNaN, kNaN}), 0, 0));
  EXPECT_TRUE(tensors_equal(ops::maximum(vec<int8_t>({-128, 5}), vec<int8_t>({3, 127})),
                            vec<int8_t>({3, 127})));
  EXPECT_TRUE(tensors_equal(ops::minimum(vec<uint8_t>({200, 5}), vec<uint8_t>({3, 255})),
                            vec<uint8_t>({3, 5})));
  EXPECT_TRUE(tensors_equal(ops::maximum(vec<int64_t>({-1, 1LL << 40}), vec<int64_t>({0, 1})),
                            vec<int64_t>({0, 1LL << 40})));
  EXPECT_TRUE(tensors_equal(ops::minimum(vec<int32_t>({-1, 7}), vec<int32_t>({0, 1})),
                            vec<int32_t>({-1, 1})));
  note_reference_tested("maximum");
  note_reference_tested("minimum");
}

// ---------------------------------------------------------------------------------------------
// Activations

TEST(ElementwiseActivation, GoldenValues) {
  expect_unary("tanh", {}, {0, 1, -100, 100}, {0, 0.7615941560f, -1, 1});
  expect_unary("sigmoid", {}, {0, 2, -2, 100}, {0.5f, 0.8807970780f, 0.1192029220f, 1});
  expect_unary("softplus", {}, {0, 2, -2, 100, 30},
               {float(std::log(2.0)), 2.1269280110f, 0.1269280110f, 100, 30});
  expect_unary("relu", {}, {-1, 0, 2.5f, -kInf, kNaN}, {0, 0, 2.5f, 0, kNaN});
  expect_unary("relu6", {}, {-1, 0, 3, 6, 7, kNaN}, {0, 0, 3, 6, 6, kNaN});
  expect_unary("gelu", {}, {-1, 0, 1, 2, -3},
               {-0.15865525393f, 0, 0.84134474607f, 1.95449973610f, -0.00404969409f});
  expect_unary("gelu", {{"approximate", true}}, {-1, 0, 1, 2, -3},
               {-0.15880800939f, 0, 0.84119199061f, 1.95459769409f, -0.00363739208f}, 0, 2e-6);
  expect_unary("hard_sigmoid", {}, {-4, -3, -1.5f, 0, 1.5f, 3, 4},
               {0, 0, 0.25f, 0.5f, 0.75f, 1, 1});
  expect_unary("hard_sigmoid", {{"mode", "tf_keras"}}, {-3, -2.5f, -1, 0, 1, 2.5f, 3},
               {0, 0, 0.3f, 0.5f, 0.7f, 1, 1});
  expect_unary("elu", {}, {-1, 0, 2}, {-0.6321205588f, 0, 2});
  expect_unary("elu", {{"alpha", 0.5}}, {-2, 3}, {-0.4323323584f, 3});
  expect_unary("leaky_relu", {}, {-2, 0, 3}, {-0.4f, 0, 3});
  expect_unary("leaky_relu", {{"alpha", 0.1}}, {-2, 0, 3}, {-0.2f, 0, 3});
  expect_unary("clip", {{"min", -1.0}, {"max", 1.0}}, {-2, -1, 0.5f, 1, 3, kNaN},
               {-1, -1, 0.5f, 1, 1, kNaN});
  expect_unary("clip", {{"min", 2}, {"max", 2}}, {1, 3}, {2, 2});
}

// The header's default attributes are the op's defaults (and the documented ones).
TEST(ElementwiseActivation, HeaderDefaults) {
  Tensor x = f32({-2, -0.5f, 0.5f, 2.7f});
  EXPECT_TRUE(tensors_equal(ops::leaky_relu(x), ops::apply1("leaky_relu", {x}, {{"alpha", 0.2}})));
  EXPECT_TRUE(tensors_equal(ops::leaky_relu(x), ops::apply1("leaky_relu", {x})));
  EXPECT_TRUE(tensors_equal(ops::elu(x), ops::apply1("elu", {x}, {{"alpha", 1.0}})));
  EXPECT_TRUE(tensors_equal(ops::elu(x), ops::apply1("elu", {x})));
  EXPECT_TRUE(tensors_equal(ops::gelu(x), ops::apply1("gelu", {x}, {{"approximate", false}})));
  EXPECT_TRUE(tensors_equal(ops::gelu(x), ops::apply1("gelu", {x})));
  EXPECT_TRUE(tensors_equal(ops::hard_sigmoid(x), ops::apply1("hard_sigmoid", {x})));
  EXPECT_TRUE(
      tensors_equal(ops::hard_sigmoid(x), ops::apply1("hard_sigmoid", {x}, {{"mode", "keras3"}})));
  EXPECT_FALSE(tensors_equal(ops::gelu(x), ops::gelu(x, true)));
  EXPECT_FALSE(tensors_equal(ops::hard_sigmoid(x), ops::hard_sigmoid(x, "tf_keras")));
}

// Against Keras golden vectors (tfjs-layers 4.22.0; docs/spec/layer-semantics.md section 0).
TEST(ElementwiseActivation, KerasGoldenVectors) {
  const std::string path = testing::shared_dir() + "/testdata/keras/dev_activations.json";
  std::ifstream in(path);
  if (!in) GTEST_SKIP() << "no golden file at " << path;
  nlohmann::json j = nlohmann::json::parse(in);
  const auto& x = j["inputs"]["x"];
  Tensor tx =
      f32(x["data"].get<std::vector<float>>(), Shape(x["shape"].get<std::vector<int64_t>>()));
  const double atol = j["tolerance"]["atol"], rtol = j["tolerance"]["rtol"];
  const std::vector<std::pair<std::string, Tensor>> cases = {
      {"relu", ops::relu(tx)},
      {"relu6", ops::relu6(tx)},
      {"sigmoid", ops::sigmoid(tx)},
      {"tanh", ops::tanh(tx)},
      {"elu", ops::elu(tx)},
      {"softplus", ops::softplus(tx)},
      {"hard_sigmoid_keras3_relu6(x+3)/6", ops::hard_sigmoid(tx)},
      {"hard_sigmoid_tfjs_legacy_0.2x+0.5", ops::hard_sigmoid(tx, "tf_keras")},
  };
  for (const auto& [name, got] : cases) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(j["outputs"].contains(name));
    const auto& o = j["outputs"][name];
    Tensor want =
        f32(o["data"].get<std::vector<float>>(), Shape(o["shape"].get<std::vector<int64_t>>()));
    EXPECT_TRUE(tensors_near(got, want, atol, rtol));
  }
}

// No inf or NaN for large |x|, in the values and in the gradients.
TEST(ElementwiseActivation, StableForLargeInputs) {
  const std::vector<float> x = {-100, -50, 50, 100};
  for (const char* op : {"sigmoid", "tanh", "softplus", "gelu", "elu", "hard_sigmoid"}) {
    SCOPED_TRACE(op);
    Tensor y = ops::apply1(op, {f32(x)});
    for (float v : y.span<float>()) EXPECT_TRUE(std::isfinite(v)) << y;
    Tensor g = grad_of_unary([&](const Value& v) { return ops::apply1(op, {v}); }, x);
    for (float v : g.span<float>()) EXPECT_TRUE(std::isfinite(v)) << g;
  }
  Tensor s = ops::sigmoid(f32({-100, 100}));
  EXPECT_GE(s.data<float>()[0], 0.0f);
  EXPECT_LT(s.data<float>()[0], 1e-40f);
  EXPECT_EQ(s.data<float>()[1], 1.0f);
  Tensor sp = ops::softplus(f32({-100, 100}));
  EXPECT_LT(sp.data<float>()[0], 1e-40f);
  EXPECT_EQ(sp.data<float>()[1], 100.0f);
  EXPECT_TRUE(tensors_near(ops::gelu(f32({-100, 100})), f32({0, 100}), 0, 0));
  EXPECT_TRUE(tensors_near(ops::gelu(f32({-100, 100}), true), f32({0, 100}), 0, 0));
}

// ---------------------------------------------------------------------------------------------
// Gradients

TEST(ElementwiseGrad, UnaryGradcheck) {
  Rng rng(11);
  const Shape s{2, 3};
  auto any = [&] { return away_from(s, rng, -2, 2, {0}); };
  auto pos = [&] { return testing::random_tensor(s, rng, 0.5f, 2.0f); };
  expect_gradients_match("abs", {any()});
  expect_gradients_match("square", {any()});
  expect_gradients_match("sign", {any()});
  expect_gradients_match("exp", {any()});
  expect_gradients_match("log", {pos()});
  expect_gradients_match("sqrt", {pos()});
  expect_gradients_match("rsqrt", {pos()});
  expect_gradients_match("erf", {any()});
  expect_gradients_match("tanh", {any()});
  expect_gradients_match("sigmoid", {away_from(s, rng, -5, 5, {})});
  expect_gradients_match("softplus", {away_from(s, rng, -5, 5, {})});
  expect_gradients_match("relu", {any()});
  expect_gradients_match("relu6", {away_from({3, 4}, rng, -2, 8, {0, 6})});
  expect_gradients_match("gelu", {away_from(s, rng, -3, 3, {})});
  expect_gradients_match("gelu", {away_from(s, rng, -3, 3, {})}, {{"approximate", true}});
  expect_gradients_match("hard_sigmoid", {away_from({3, 4}, rng, -5, 5, {-3, 3})});
  expect_gradients_match("hard_sigmoid", {away_from({3, 4}, rng, -4, 4, {-2.5f, 2.5f})},
                         {{"mode", "tf_keras"}});
  expect_gradients_match("elu", {any()});
  expect_gradients_match("elu", {any()}, {{"alpha", 0.3}});
  expect_gradients_match("leaky_relu", {any()});
  expect_gradients_match("leaky_relu", {any()}, {{"alpha", 0.01}});
  expect_gradients_match("clip", {away_from({3, 4}, rng, -2, 2, {-0.5f, 1})},
                         {{"min", -0.5}, {"max", 1.0}});
  expect_gradients_match("cast", {any()}, {{"dtype", DType::kF32}});
}

TEST(ElementwiseGrad, BinaryAndWhereGradcheckWithBroadcasting) {
  Rng rng(12);
  expect_gradients_match("pow", {testing::random_tensor({2, 3}, rng, 0.5f, 2.0f),
                                 testing::random_tensor({3}, rng, -1.5f, 1.5f)});
  expect_gradients_match("pow", {testing::random_tensor({1, 3}, rng, 0.5f, 2.0f),
                                 testing::random_tensor({2, 1}, rng, -1.5f, 1.5f)});
  // Differences between a and b are >= 0.1 everywhere: no tie within the finite difference.
  Tensor a = f32({0.3f, -1.2f, 2.0f, 0.9f, -0.4f, 1.5f}, {2, 3});
  Tensor b = f32({0.1f, -0.7f, 1.1f}, {3});
  expect_gradients_match("maximum", {a, b});
  expect_gradients_match("minimum", {a, b});
  // 3-way broadcast [2,1,3] x [4,1] x [] -> [2,4,3].
  Tensor cond = bools({true, false, true, false, false, true}, {2, 1, 3});
  expect_gradients_match(
      "where", {cond, testing::random_tensor({4, 1}, rng), testing::random_tensor({}, rng)});
  expect_gradients_match("where",
                         {bools({true, false, false}, {3}), testing::random_tensor({2, 3}, rng),
                          testing::random_tensor({2, 1}, rng)});
}

// TF's choices where the derivative is undefined (each documented in elementwise.h).
TEST(ElementwiseGrad, KinksAndTiesFollowTensorFlow) {
  auto g1 = [](auto f, std::vector<float> x) { return grad_of_unary(f, x); };
  EXPECT_TRUE(tensors_equal(g1([](Value v) { return ops::relu(v); }, {-1, 0, 1}), f32({0, 0, 1})));
  EXPECT_TRUE(tensors_equal(g1([](Value v) { return ops::relu6(v); }, {-1, 0, 3, 6, 7}),
                            f32({0, 0, 1, 0, 0})));
  EXPECT_TRUE(tensors_equal(g1([](Value v) { return ops::abs(v); }, {-2, 0, 2}), f32({-1, 0, 1})));
  EXPECT_TRUE(tensors_near(g1([](Value v) { return ops::leaky_relu(v); }, {-1, 0, 1}),
                           f32({0.2f, 0.2f, 1}), 0, 0));
  EXPECT_TRUE(
      tensors_near(g1([](Value v) { return ops::elu(v, 0.5); }, {0, 1}), f32({0.5f, 1}), 0, 0));
  // clip passes the gradient on the closed interval [min, max].
  EXPECT_TRUE(
      tensors_equal(g1([](Value v) { return ops::clip(v, -1, 2); }, {-1.5f, -1, 0, 2, 2.5f}),
                    f32({0, 1, 1, 1, 0})));
  // hard_sigmoid: Keras 3 form has an open slope region (relu6), tf.keras a closed one (clip).
  EXPECT_TRUE(tensors_near(g1([](Value v) { return ops::hard_sigmoid(v); }, {-3, -1, 3}),
                           f32({0, 1.0f / 6, 0}), 0, 1e-7));
  EXPECT_TRUE(tensors_near(
      g1([](Value v) { return ops::hard_sigmoid(v, "tf_keras"); }, {-2.6f, -2.5f, 0, 2.5f, 2.6f}),
      f32({0, 0.2f, 0.2f, 0.2f, 0}), 0, 1e-7));

  // maximum/minimum ties: all of the gradient to the first argument.
  auto max_g = grads_of([](const std::vector<Value>& v) { return ops::maximum(v[0], v[1]); },
                        {f32({1, 2, 3}), f32({1, 5, 0})});
  EXPECT_TRUE(tensors_equal(max_g[0], f32({1, 0, 1})));
  EXPECT_TRUE(tensors_equal(max_g[1], f32({0, 1, 0})));
  auto min_g = grads_of([](const std::vector<Value>& v) { return ops::minimum(v[0], v[1]); },
                        {f32({1, 2, 3}), f32({1, 5, 0})});
  EXPECT_TRUE(tensors_equal(min_g[0], f32({1, 1, 0})));
  EXPECT_TRUE(tensors_equal(min_g[1], f32({0, 0, 1})));

  // pow: d/db is 0 where a <= 0 (no NaN from log), d/da = b a^(b-1).
  auto pow_g = grads_of([](const std::vector<Value>& v) { return ops::pow(v[0], v[1]); },
                        {f32({0, -2, 2}), f32({2, 2, 3})});
  EXPECT_TRUE(tensors_near(pow_g[0], f32({0, -4, 12}), 0, kUlpRtol));
  EXPECT_TRUE(tensors_near(pow_g[1], f32({0, 0, float(8 * std::log(2.0))}), 0, kUlpRtol));
}

// Integer and bool paths carry no gradient: they stop it instead of failing.
TEST(ElementwiseGrad, IntegerPathsCarryNoGradient) {
  auto g = grad_of_unary(
      [](Value v) {
        Value i = ops::abs(ops::square(ops::cast(v, DType::kS32)));
        Value m = ops::maximum(i, ops::minimum(i, i));
        return ops::cast(ops::where(ops::greater(m, ops::zeros_like(m)), m, m), DType::kF32) + v;
      },
      {1.5f, -2.5f});
  EXPECT_TRUE(tensors_equal(g, f32({1, 1})));
}

// ---------------------------------------------------------------------------------------------
// Comparisons, logical ops, where, cast

TEST(ElementwiseCompare, AllDtypesWithBroadcasting) {
  Tensor a = f32({1, 2, 3, kNaN}), b = f32({2});
  EXPECT_TRUE(tensors_equal(ops::equal(a, b), bools({false, true, false, false})));
  EXPECT_TRUE(tensors_equal(ops::not_equal(a, b), bools({true, false, true, true})));
  EXPECT_TRUE(tensors_equal(ops::less(a, b), bools({true, false, false, false})));
  EXPECT_TRUE(tensors_equal(ops::less_equal(a, b), bools({true, true, false, false})));
  EXPECT_TRUE(tensors_equal(ops::greater(a, b), bools({false, false, true, false})));
  EXPECT_TRUE(tensors_equal(ops::greater_equal(a, b), bools({false, true, true, false})));
  for (const char* op : {"equal", "not_equal", "less", "less_equal", "greater", "greater_equal"})
    note_reference_tested(op);

  // Integers: s8 and u8 compare by value (no sign confusion), s64 beyond 2^53.
  EXPECT_TRUE(
      tensors_equal(ops::less(vec<int8_t>({-1, 5}), vec<int8_t>({0, 5})), bools({true, false})));
  EXPECT_TRUE(tensors_equal(ops::greater(vec<uint8_t>({255, 0}), vec<uint8_t>({1, 0})),
                            bools({true, false})));
  EXPECT_TRUE(tensors_equal(ops::equal(vec<int64_t>({(1LL << 53) + 1}), vec<int64_t>({1LL << 53})),
                            bools({false})));
  EXPECT_TRUE(tensors_equal(ops::greater_equal(vec<int32_t>({3, 4}), vec<int32_t>({4, 4})),
                            bools({false, true})));
  // bool: false < true.
  EXPECT_TRUE(tensors_equal(ops::less(bools({false, true, false}), bools({true, true, false})),
                            bools({true, false, false})));
  EXPECT_TRUE(tensors_equal(ops::equal(bools({true, false}), bools({true})), bools({true, false})));
  // [2,1] vs [3] -> [2,3]
  Tensor c = ops::less_equal(f32({1, 2}, {2, 1}), f32({0, 1, 2}));
  EXPECT_TRUE(tensors_equal(c, bools({false, true, true, false, false, true}, {2, 3})));
}

TEST(ElementwiseCompare, LogicalOps) {
  Tensor a = bools({false, false, true, true}), b = bools({false, true, false, true});
  EXPECT_TRUE(tensors_equal(ops::logical_and(a, b), bools({false, false, false, true})));
  EXPECT_TRUE(tensors_equal(ops::logical_or(a, b), bools({false, true, true, true})));
  EXPECT_TRUE(tensors_equal(ops::logical_not(a), bools({true, true, false, false})));
  EXPECT_TRUE(
      tensors_equal(ops::logical_and(bools({true, false}, {2, 1}), bools({true, false, true})),
                    bools({true, false, true, false, false, false}, {2, 3})));
  note_reference_tested("logical_and");
  note_reference_tested("logical_or");
  note_reference_tested("logical_not");
}

TEST(ElementwiseSelect, WhereAndSelect) {
  Tensor cond = bools({true, false, true});
  EXPECT_TRUE(tensors_equal(ops::where(cond, f32({1, 2, 3}), f32({-1, -2, -3})), f32({1, -2, 3})));
  EXPECT_TRUE(tensors_equal(ops::select(cond, f32({1, 2, 3}), f32({-1, -2, -3})), f32({1, -2, 3})));
  EXPECT_TRUE(tensors_equal(ops::where(cond, vec<int8_t>({1, 2, 3}), vec<int8_t>({0})),
                            vec<int8_t>({1, 0, 3})));
  EXPECT_TRUE(
      tensors_equal(ops::where(cond, bools({false}), bools({true})), bools({false, true, false})));
  EXPECT_TRUE(
      tensors_equal(ops::where(bools({false}, {}), vec<int64_t>({5, 6}), vec<int64_t>({7, 8})),
                    vec<int64_t>({7, 8})));
  // Full-shape cond and a, scalar b (the gradient rules' pattern).
  EXPECT_TRUE(tensors_equal(ops::where(cond, f32({4, 5, 6}), Tensor::scalar(0)), f32({4, 0, 6})));
  note_reference_tested("where");
}

TEST(ElementwiseSelect, Cast) {
  Tensor x = f32({-1.7f, -0.5f, 0, 2.9f, 300, -300, 3e9f, -3e9f, kNaN, kInf, -kInf});
  EXPECT_TRUE(tensors_equal(ops::cast(x, DType::kS32),
                            vec<int32_t>({-1, 0, 0, 2, 300, -300, 2147483647, -2147483647 - 1, 0,
                                          2147483647, -2147483647 - 1})));
  EXPECT_TRUE(tensors_equal(ops::cast(x, DType::kS8),
                            vec<int8_t>({-1, 0, 0, 2, 127, -128, 127, -128, 0, 127, -128})));
  EXPECT_TRUE(tensors_equal(ops::cast(x, DType::kU8),
                            vec<uint8_t>({0, 0, 0, 2, 255, 0, 255, 0, 0, 255, 0})));
  // 2^62 is in range (exact), 2^63 and beyond saturate.
  Tensor big = ops::cast(f32({1e19f, -1e19f, 0x1p62f, 0x1p63f, -0x1p63f}), DType::kS64);
  EXPECT_TRUE(tensors_equal(
      big, vec<int64_t>({std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min(),
                         int64_t{1} << 62, std::numeric_limits<int64_t>::max(),
                         std::numeric_limits<int64_t>::min()})));
  EXPECT_TRUE(tensors_equal(ops::cast(x, DType::kBool), bools({true, true, false, true, true, true,
                                                               true, true, true, true, true})));
  // Integer narrowing wraps; integers and bools to float.
  EXPECT_TRUE(tensors_equal(ops::cast(vec<int32_t>({300, -129, 5}), DType::kS8),
                            vec<int8_t>({44, 127, 5})));
  EXPECT_TRUE(tensors_equal(ops::cast(vec<int8_t>({-1, 7}), DType::kU8), vec<uint8_t>({255, 7})));
  EXPECT_TRUE(
      tensors_equal(ops::cast(vec<uint8_t>({255, 0}), DType::kS32), vec<int32_t>({255, 0})));
  EXPECT_TRUE(
      tensors_equal(ops::cast(vec<int64_t>({16777217, -3}), DType::kF32), f32({16777216, -3})));
  EXPECT_TRUE(tensors_equal(ops::cast(bools({true, false}), DType::kF32), f32({1, 0})));
  EXPECT_TRUE(tensors_equal(ops::cast(vec<int32_t>({0, -2}), DType::kBool), bools({false, true})));
  EXPECT_TRUE(near_ieee(ops::cast(x, DType::kF32), x, 0, 0));
  EXPECT_EQ(ops::cast(vec<int32_t>({1}), DType::kS64).dtype(), DType::kS64);
  note_reference_tested("cast");
}

// ---------------------------------------------------------------------------------------------
// Broadcasting edges, big inputs, graphs with unknown dims

TEST(ElementwiseBroadcast, ThreeWayRankZeroAndSizeZero) {
  // [2,1,3] + [4,1] -> [2,4,3]: out[i,j,k] = a[i,0,k] + b[j,0].
  Tensor a = f32({0, 1, 2, 10, 11, 12}, {2, 1, 3});
  Tensor b = f32({100, 200, 300, 400}, {4, 1});
  Tensor y = ops::add(a, b);
  ASSERT_EQ(y.shape(), Shape({2, 4, 3}));
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j)
      for (int k = 0; k < 3; ++k)
        EXPECT_EQ(y.at<float>({i, j, k}), a.at<float>({i, 0, k}) + b.at<float>({j, 0}));
  EXPECT_TRUE(tensors_equal(ops::maximum(b, a), ops::maximum(a, b)));
  Tensor cmp = ops::greater(a, f32({5, 11, 0, 0}, {4, 1}));
  ASSERT_EQ(cmp.shape(), Shape({2, 4, 3}));
  EXPECT_FALSE(cmp.at<bool>({0, 0, 2}));  // 2 > 5
  // where with three different shapes: cond [2,1,3], a [4,1], b [] -> [2,4,3].
  Tensor cond = bools({true, false, true, false, false, true}, {2, 1, 3});
  Tensor w = ops::where(cond, b, Tensor::scalar(-1));
  ASSERT_EQ(w.shape(), Shape({2, 4, 3}));
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j)
      for (int k = 0; k < 3; ++k)
        EXPECT_EQ(w.at<float>({i, j, k}), cond.at<bool>({i, 0, k}) ? b.at<float>({j, 0}) : -1.0f);

  // Rank 0 with rank 0, and rank 0 with rank 2.
  Tensor s = ops::mul(Tensor::scalar(3), Tensor::scalar(4));
  EXPECT_EQ(s.shape(), Shape({}));
  EXPECT_EQ(s.item<float>(), 12.0f);
  EXPECT_EQ(ops::pow(Tensor::scalar(2), Tensor::scalar(10)).item<float>(), 1024.0f);
  EXPECT_EQ(ops::less(Tensor::scalar(2), Tensor::scalar(3)).item<bool>(), true);
  EXPECT_EQ(ops::sigmoid(Tensor::scalar(0)).shape(), Shape({}));
  EXPECT_TRUE(
      tensors_equal(ops::minimum(f32({1, 5}, {1, 2}), Tensor::scalar(2)), f32({1, 2}, {1, 2})));

  // Size 0: [0,3] with [3] gives [0,3]; nothing runs, nothing crashes, gradients too.
  Tensor e = Tensor::zeros({0, 3});
  Tensor v = f32({1, 2, 3});
  EXPECT_EQ(ops::add(e, v).shape(), Shape({0, 3}));
  EXPECT_EQ(ops::add(v, e).shape(), Shape({0, 3}));
  EXPECT_EQ(ops::equal(e, v).shape(), Shape({0, 3}));
  EXPECT_EQ(ops::where(ops::less(e, v), e, v).shape(), Shape({0, 3}));
  EXPECT_EQ(ops::exp(e).shape(), Shape({0, 3}));
  EXPECT_EQ(ops::cast(e, DType::kS8).shape(), Shape({0, 3}));
  EXPECT_EQ(ops::add(Tensor::zeros({0}), Tensor::scalar(1)).shape(), Shape({0}));
  EXPECT_THROW(ops::add(Tensor::zeros({0}), Tensor::zeros({2})), ShapeError);
  auto ge = grads_of(
      [](const std::vector<Value>& in) { return ops::maximum(in[0], in[1]) * in[1]; }, {e, v});
  EXPECT_EQ(ge[0].shape(), Shape({0, 3}));
  EXPECT_TRUE(tensors_equal(ge[1], f32({0, 0, 0})));  // summed over zero rows
}

TEST(ElementwiseBroadcast, ComparisonTieDetail) {
  // 11 > 11 is false, 11 >= 11 is true: the [2,4,3] comparison above at (1,1,1).
  Tensor a = f32({0, 1, 2, 10, 11, 12}, {2, 1, 3});
  Tensor t = f32({5, 11, 0, 0}, {4, 1});
  EXPECT_FALSE(ops::greater(a, t).at<bool>({1, 1, 1}));
  EXPECT_TRUE(ops::greater_equal(a, t).at<bool>({1, 1, 1}));
  EXPECT_TRUE(ops::greater(a, t).at<bool>({1, 1, 2}));
}

// Inputs above the parallel grain take the threaded (simd) loops; results are per element, so
// they must equal the single-element computation (exactly, but for libm calls).
TEST(ElementwiseBroadcast, LargeInputsMatchElementwiseDefinition) {
  Rng rng(5);
  const int64_t n = 100003;  // prime, above the grain
  Tensor a = testing::random_tensor({n}, rng, -3, 3), b = testing::random_tensor({n}, rng, -3, 3);
  Tensor sum = ops::add(a, b), sig = ops::sigmoid(a), mx = ops::maximum(a, Tensor::scalar(0.5f));
  Tensor w = ops::where(ops::less(a, b), a, b);
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  for (int64_t i = 0; i < n; i += 997) {
    EXPECT_EQ(sum.data<float>()[i], pa[i] + pb[i]);
    EXPECT_NEAR(sig.data<float>()[i], ops::sigmoid(Tensor::scalar(pa[i])).item<float>(), 1e-7);
    EXPECT_EQ(mx.data<float>()[i], std::max(pa[i], 0.5f));
    EXPECT_EQ(w.data<float>()[i], std::min(pa[i], pb[i]));
  }
}

// Symbolic use with an unknown batch dim, run through an Executor at two batch sizes.
TEST(ElementwiseGraph, UnknownBatchDim) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 3});
  Value b = g.placeholder("b", DType::kF32, {3});
  Value y = ops::where(ops::greater(x, b), x * b, ops::maximum(x, b * 0.5));
  EXPECT_EQ(y.shape(), Shape({kUnknown, 3}));
  auto grads = gradients({y}, {x, b}, {ops::ones_like(y)});
  EXPECT_EQ(grads[0].shape(), Shape({kUnknown, 3}));
  EXPECT_EQ(grads[1].shape(), Shape({3}));
  g.verify();
  Executor ex(g, {y, grads[0], grads[1]});
  Tensor tb = f32({2, -1, 1});
  // Worked by hand: row 0 [1,-2,3]: x > b at k=2 only; maximum(1, 1) is a tie -> x.
  auto o = ex.run({{x, f32({1, -2, 3, 0.5f, 4, -1}, {2, 3})}, {b, tb}});
  EXPECT_TRUE(tensors_equal(o[0], f32({1, -0.5f, 3, 1, -4, 0.5f}, {2, 3})));
  EXPECT_TRUE(tensors_equal(o[1], f32({1, 0, 1, 0, -1, 0}, {2, 3})));
  EXPECT_TRUE(tensors_equal(o[2], f32({0.5f, 4.5f, 3.5f})));
  o = ex.run({{x, f32({3, 0, 0}, {1, 3})}, {b, tb}});
  EXPECT_TRUE(tensors_equal(o[0], f32({6, 0, 0.5f}, {1, 3})));
  EXPECT_TRUE(tensors_equal(o[1], f32({2, -1, 0}, {1, 3})));
  EXPECT_TRUE(tensors_equal(o[2], f32({3, 0, 0.5f})));
}

TEST(ElementwiseGraph, UnknownDimsBroadcastAndCast) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 1});
  Value t = g.placeholder("t", DType::kF32, {kUnknown});
  Value y = ops::pow(ops::abs(x) + 1.0, ops::cast(ops::cast(t, DType::kS32), DType::kF32));
  EXPECT_EQ(y.shape(), Shape({kUnknown, kUnknown}));
  auto grads = gradients({y}, {x, t}, {ops::ones_like(y)});
  EXPECT_EQ(grads[0].shape(), Shape({kUnknown, 1}));
  Executor ex(g, {y, grads[0], grads[1]});
  auto o = ex.run({{x, f32({1, -2}, {2, 1})}, {t, f32({2.7f, 1.2f, 0})}});
  EXPECT_TRUE(tensors_equal(o[0], f32({4, 2, 1, 9, 3, 1}, {2, 3})));
  // d/dx sum_k (|x|+1)^t_k = sign(x) sum_k t_k (|x|+1)^(t_k-1); t truncates to [2,1,0].
  EXPECT_TRUE(tensors_equal(o[1], f32({4 + 1, -(6 + 1)}, {2, 1})));
  EXPECT_TRUE(tensors_equal(o[2], f32({0, 0, 0})));  // through an integer cast: no gradient
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(ElementwiseErrors, DTypes) {
  Tensor fi = vec<int32_t>({1, 2}), ff = f32({1, 2}), fb = bools({true, false});
  for (const char* op : {"exp", "log", "sqrt", "rsqrt", "erf", "tanh", "sigmoid", "softplus",
                         "relu", "relu6", "gelu", "hard_sigmoid", "elu", "leaky_relu"})
    expect_throws_with<DTypeError>(
        [&] { ops::apply1(op, {fi}); },
        std::string(op) + ": argument 'x': expected dtype f32 but found s32[2]");
  expect_throws_with<DTypeError>([&] { ops::clip(fi, 0, 1); },
                                 "clip: argument 'x': expected dtype f32");
  for (const char* op : {"abs", "square", "sign"})
    expect_throws_with<DTypeError>([&] { ops::apply1(op, {fb}); },
                                   std::string(op) + ": argument 'x': expected a numeric dtype");
  expect_throws_with<DTypeError>([&] { ops::pow(fi, fi); },
                                 "pow: argument 'a': expected dtype f32 but found s32[2]");
  expect_throws_with<DTypeError>([&] { ops::maximum(fb, fb); },
                                 "maximum: argument 'a': expected a numeric dtype");
  expect_throws_with<DTypeError>(
      [&] { ops::minimum(ff, fi); },
      "minimum: arguments 'a' and 'b' must have the same dtype but found f32[2] and s32[2]");
  expect_throws_with<DTypeError>([&] { ops::less(ff, fi); },
                                 "less: arguments 'a' and 'b' must have the same dtype");
  expect_throws_with<DTypeError>([&] { ops::logical_and(ff, ff); },
                                 "logical_and: argument 'a': expected dtype bool but found f32[2]");
  expect_throws_with<DTypeError>([&] { ops::logical_or(fi, fi); },
                                 "logical_or: argument 'a': expected dtype bool");
  expect_throws_with<DTypeError>([&] { ops::logical_not(ff); },
                                 "logical_not: argument 'x': expected dtype bool");
  expect_throws_with<DTypeError>([&] { ops::where(ff, ff, ff); },
                                 "where: argument 'cond': expected dtype bool but found f32[2]");
  expect_throws_with<DTypeError>(
      [&] { ops::where(fb, ff, fi); },
      "where: arguments 'a' and 'b' must have the same dtype but found f32[2] and s32[2]");
  expect_throws_with<DTypeError>([&] { ops::neg(vec<uint8_t>({1})); },
                                 "neg: argument 'x': expected a signed dtype");
}

TEST(ElementwiseErrors, ShapesAndAttributes) {
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({4});
  for (const char* op : {"add", "pow", "maximum", "minimum", "equal", "greater"})
    expect_throws_with<ShapeError>(
        [&] {
          ops::apply1(op, {a, b});
        },
        std::string(op) + ": shapes [2,3] and [4] do not broadcast");
  expect_throws_with<ShapeError>(
      [&] {
        ops::logical_or(bools({true, false}), bools({true, false, true}));
      },
      "logical_or: shapes [2] and [3] do not broadcast");
  expect_throws_with<ShapeError>(
      [&] {
        ops::where(bools({true, false}), a, a);
      },
      "where: shapes [2] and [2,3] do not broadcast");
  expect_throws_with<ShapeError>(
      [&] {
        ops::where(bools({true, false, true}), a, b);
      },
      "where: shapes [2,3] and [4] do not broadcast");
  // Caught when the graph is built, too (known dims), and at run time for unknown ones.
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 3});
  expect_throws_with<ShapeError>([&] { ops::maximum(x, g.constant(b)); },
                                 "maximum: shapes [?,3] and [4]");
  Value y = ops::minimum(x, g.placeholder("z", DType::kF32, {kUnknown, 3}));
  Executor ex(g, {y});
  expect_throws_with<GraphError>(
      [&] {
        ex.run({{x, Tensor::zeros({2, 3})}, {g.find("z"), Tensor::zeros({4, 3})}});
      },
      "minimum: shapes [2,3] and [4,3] do not broadcast");

  Tensor f = f32({1, 2});
  expect_throws_with<ValueError>(
      [&] {
        ops::apply1("clip", {f}, {{"max", 1.0}});
      },
      "clip: missing attribute 'min'");
  expect_throws_with<ValueError>(
      [&] {
        ops::apply1("clip", {f}, {{"min", 1.0}});
      },
      "clip: missing attribute 'max'");
  expect_throws_with<ValueError>(
      [&] { ops::clip(f, 2, 1); },
      "clip: attributes 'min' and 'max': expected min <= max but found min=2, max=1");
  expect_throws_with<ValueError>([&] { ops::clip(f, std::nan(""), 1); }, "expected min <= max");
  expect_throws_with<ValueError>(
      [&] { ops::hard_sigmoid(f, "keras2"); },
      "hard_sigmoid: attribute 'mode': expected \"keras3\" or \"tf_keras\" but found \"keras2\"");
  expect_throws_with<ValueError>([&] { ops::apply1("cast", {f}); },
                                 "cast: missing attribute 'dtype'");
  expect_throws_with<ValueError>(
      [&] {
        ops::apply1("cast", {f}, {{"dtype", "f32"}});
      },
      "cast: attribute 'dtype': expected a dtype");
  expect_throws_with<ValueError>(
      [&] {
        ops::apply1("elu", {f}, {{"alpha", "big"}});
      },
      "elu: attribute 'alpha': expected a number");
  expect_throws_with<ValueError>(
      [&] {
        ops::apply1("leaky_relu", {f}, {{"alpha", "big"}});
      },
      "leaky_relu: attribute 'alpha'");
  expect_throws_with<ValueError>(
      [&] {
        ops::apply1("gelu", {f}, {{"approximate", "yes"}});
      },
      "gelu: attribute 'approximate': expected a bool");
}

}  // namespace
}  // namespace lowbit
