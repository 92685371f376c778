// fake_quant_pot, fixed_logistic, fixed_tanh (include/lowbit/ops/integer_numerics.h): hand-checked
// values, idempotency on the grid, agreement with the integer functions, gradients, errors.
#include "lowbit/ops/integer_numerics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "lowbit/fixed_point.h"
#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "lowbit/ops/fake_quant.h"
#include "lowbit/rng.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::expect_gradients_match;
using testing::expect_throws_with;
using testing::note_reference_tested;
using testing::random_tensor;
using testing::tensors_equal;

Tensor f32(std::vector<float> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return Tensor::from_vector<float>(v, {n});
}
Tensor scalar(float v) { return Tensor::scalar(v); }

TEST(FakeQuantPot, RoundsTiesAwayFromZeroAndSaturates) {
  note_reference_tested("fake_quant_pot");
  // Grid 0.5, 4 bit: codes [-8, 7] -> [-4, 3.5].
  Tensor x = f32({0.25f, -0.25f, 0.75f, -0.75f, 0.2f, 3.6f, -4.3f, 100.f, -1e30f, 0.f});
  Tensor y = ops::fake_quant_pot(x, scalar(-1), 4);
  EXPECT_TRUE(tensors_equal(y, f32({0.5f, -0.5f, 1.f, -1.f, 0.f, 3.5f, -4.f, 3.5f, -4.f, 0.f})));
  // Default 16 bit on the Q3.12 grid: the largest code is 8 - 2^-12.
  Tensor g = ops::fake_quant_pot(f32({9.f, -9.f, 1.5f / 4096}), -12);
  EXPECT_TRUE(tensors_equal(g, f32({8.f - 1.f / 4096, -8.f, 2.f / 4096})));
  // NaN stays NaN.
  EXPECT_TRUE(std::isnan(ops::fake_quant_pot(f32({NAN}), 0).data<float>()[0]));
}

TEST(FakeQuantPot, IsIdempotentOnItsGrid) {
  Rng rng(3);
  for (int e : {-15, -12, -9, 0, 3}) {
    Tensor x = random_tensor({257}, rng, -40000.f, 40000.f) * std::ldexp(1.f, e);
    Tensor y = ops::fake_quant_pot(x, e);
    EXPECT_TRUE(tensors_equal(ops::fake_quant_pot(y, e), y)) << e;
  }
}

TEST(FakeQuantPot, GradientIsTheStraightThroughEstimatorInsideTheRange) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, Shape{4});
  Value y = ops::fake_quant_pot(x, -1, 4);
  Value dx = gradients(ops::sum(y * g.constant(f32({1, 2, 3, 4}))), {x})[0];
  Executor ex(g, {dx});
  // range [-4, 3.5], ends included
  Tensor r = ex.run({{x, f32({-4.f, 3.5f, 3.6f, -4.1f})}})[0];
  EXPECT_TRUE(tensors_equal(r, f32({1, 2, 0, 0})));
  Rng rng(5);
  Tensor xs = random_tensor({3, 4}, rng, -1, 1);
  float* p = xs.data<float>();
  for (int i = 0; i < 12; i += 3) p[i] = (i % 2 ? 5.f : -5.f) + 0.1f * p[i];  // outside [-4, 4)
  expect_gradients_match("fake_quant_pot", {xs, scalar(-13)}, {{"bits", 16}}, {.wrt = {0}});
}

TEST(FixedLogisticTanh, MatchTheIntegerFunctionsOnTheirCodes) {
  note_reference_tested("fixed_logistic");
  note_reference_tested("fixed_tanh");
  EXPECT_EQ(ops::fixed_logistic(f32({0.f})).data<float>()[0], 0.5f);
  EXPECT_EQ(ops::fixed_tanh(f32({0.f}), 3).data<float>()[0], 0.f);
  std::vector<float> xs;
  for (int32_t q = -32768; q <= 32767; q += 37) xs.push_back(std::ldexp(float(q), -12));
  xs.push_back(100.f);        // saturates to the top code
  xs.push_back(-100.f);       // and the bottom one
  xs.push_back(0.5f / 4096);  // a tie: rounds away to code 1
  Tensor x = f32(xs);
  Tensor s = ops::fixed_logistic(x);
  for (int p : {0, 3, 6}) {
    Tensor t = ops::fixed_tanh(x * std::ldexp(1.f, p - 3), p);  // the same codes in Qp
    for (size_t i = 0; i < xs.size(); ++i) {
      const double c = std::clamp(std::round(std::ldexp(double(xs[i]), 12)), -32768.0, 32767.0);
      const auto q = static_cast<int16_t>(c);
      ASSERT_EQ(s.data<float>()[i], std::ldexp(float(quant::logistic_int16(q, 3)), -15)) << i;
      ASSERT_EQ(t.data<float>()[i], std::ldexp(float(quant::tanh_int16(q, p)), -15)) << i;
    }
  }
}

TEST(FixedLogisticTanh, GradientsAreTheFloatDerivativesAtTheQuantizedInput) {
  // The ops step on a 2^-12 grid; a difference step of 0.05 sees the smooth function.
  Rng rng(9);
  Tensor x = random_tensor({3, 5}, rng, -3, 3);
  expect_gradients_match("fixed_logistic", {x}, {}, {.eps = 5e-2, .atol = 3e-3});
  expect_gradients_match("fixed_tanh", {x, scalar(3)}, {}, {.eps = 5e-2, .atol = 3e-3, .wrt = {0}});
  expect_gradients_match("fixed_tanh", {x * 0.3f, scalar(1)}, {},
                         {.eps = 5e-2, .atol = 3e-3, .wrt = {0}});
  // Exactly the float derivative at the grid point.
  Graph g;
  Value v = g.placeholder("x", DType::kF32, Shape{2});
  Value d = gradients(ops::sum(ops::fixed_logistic(v)), {v})[0];
  Executor ex(g, {d});
  const float q = std::ldexp(1229.f, -12);  // 0.3 -> code 1229
  Tensor r = ex.run({{v, f32({0.3f, 20.f})}})[0];
  const float sq = 1 / (1 + std::exp(-q)), s8 = 1 / (1 + std::exp(-(8 - 1.f / 4096)));
  EXPECT_NEAR(r.data<float>()[0], sq * (1 - sq), 1e-6);
  EXPECT_NEAR(r.data<float>()[1], s8 * (1 - s8), 1e-7);  // saturated: still a gradient
}

// ---- the exact integer step: straight_through, fixed_matmul, fake_quant_pot_mul, fixed_hidden

TEST(StraightThrough, ForwardIsTheValueGradientGoesToThePath) {
  note_reference_tested("straight_through");
  Graph g;
  Value a = g.placeholder("a", DType::kF32, Shape{3}),
        b = g.placeholder("b", DType::kF32, Shape{3});
  Value y = ops::straight_through(a * a, b);
  std::vector<Value> d = gradients(ops::sum(y * g.constant(f32({1, 2, 3}))), {a, b});
  Executor ex(g, {y, d[0], d[1]});
  const std::vector<Tensor> r = ex.run({{a, f32({1, -2, 0.5f})}, {b, f32({7, 8, 9})}});
  EXPECT_TRUE(tensors_equal(r[0], f32({7, 8, 9})));
  EXPECT_TRUE(tensors_equal(r[1], f32({2, -8, 3})));  // d(a^2)/da * dy
  EXPECT_TRUE(tensors_equal(r[2], f32({0, 0, 0})));   // none to the value
}

// Against finite differences: with the value tied to the path (y = straight_through(x, x), the
// forward is x), the rule's gradient must be the derivative of the forward, dL/dx = w.
TEST(StraightThrough, GradientMatchesFiniteDifferencesWhenTheValueIsThePath) {
  testing::gradchecked_ops().insert("straight_through");
  Graph g;
  Value x = g.placeholder("x", DType::kF32, Shape{4});
  const Tensor w = f32({0.5f, -1.25f, 2.0f, 3.0f});
  Value loss = ops::sum(ops::straight_through(x, x) * g.constant(w));
  Value dx = gradients(loss, {x})[0];
  Executor ex(g, {loss, dx});
  const Tensor x0 = f32({0.3f, -0.7f, 1.1f, 0.0f});
  const Tensor analytic = ex.run({{x, x0}})[1];
  const float eps = 1e-2f;
  for (int64_t i = 0; i < 4; ++i) {
    Tensor xp = x0.clone(), xm = x0.clone();
    xp.data<float>()[i] += eps;
    xm.data<float>()[i] -= eps;
    const float fd =
        (ex.run({{x, xp}})[0].data<float>()[0] - ex.run({{x, xm}})[0].data<float>()[0]) / (2 * eps);
    EXPECT_NEAR(analytic.data<float>()[i], fd, 1e-4f) << i;
  }
}

// The qlstm partial sum written out: codes, int32 bias, (M0, shift) with double rounding.
TEST(FixedMatmul, IsTheIntegerPartialSumOfTheCodes) {
  note_reference_tested("fixed_matmul");
  const float sx = 0.013f, sw0 = 0.0041f, sw1 = 0.0077f;
  Rng rng(9);
  Tensor xc = random_tensor({4, 3}, rng, -128, 127), wc = random_tensor({3, 4}, rng, -127, 127);
  Tensor x({4, 3}, DType::kF32), w({3, 4}, DType::kF32);
  for (int64_t i = 0; i < 12; ++i) {
    xc.data<float>()[i] = std::round(xc.data<float>()[i]);
    wc.data<float>()[i] = std::round(wc.data<float>()[i]);
    x.data<float>()[i] = xc.data<float>()[i] * sx;
    w.data<float>()[i] = wc.data<float>()[i] * (i % 4 < 2 ? sw0 : sw1);
  }
  const Tensor b = f32({0.3f, -0.07f, 1.9f, 0.0f});
  for (bool sat : {true, false}) {
    const Tensor y =
        ops::fixed_matmul(x, scalar(sx), w, f32({sw0, sw1}), b, sat) * std::ldexp(1.0f, 12);
    for (int64_t n = 0; n < 4; ++n)
      for (int64_t c = 0; c < 4; ++c) {
        const float sw = c < 2 ? sw0 : sw1, bs = sx * sw;
        int64_t acc = quant::quantize_bias(b.data<float>()[c], bs);
        for (int64_t k = 0; k < 3; ++k)
          acc += int64_t(xc.data<float>()[n * 3 + k]) * int64_t(wc.data<float>()[k * 4 + c]);
        int32_t want = quant::multiply_by_quantized_multiplier(
            static_cast<int32_t>(acc), quant::quantize_multiplier(std::ldexp(double(bs), 12)));
        if (sat) want = std::clamp(want, -32768, 32767);
        EXPECT_EQ(y.data<float>()[n * 4 + c], float(want)) << n << " " << c << " " << sat;
      }
  }
  // Saturation: a large sum.
  const Tensor big = ops::fixed_matmul(f32({100}).reshape(Shape{1, 1}), scalar(1),
                                       f32({100}).reshape(Shape{1, 1}), f32({1}), Tensor());
  EXPECT_EQ(big.data<float>()[0], 8.0f - 1.0f / 4096);
}

TEST(FakeQuantPotMul, RoundsTheExactProduct) {
  note_reference_tested("fake_quant_pot_mul");
  Rng rng(2);
  int64_t differ_from_f32 = 0;
  for (int i = 0; i < 2000; ++i) {
    const int32_t fc = static_cast<int32_t>(rng.uniform() * 32767);
    const int32_t cc = static_cast<int32_t>((rng.uniform() - 0.5f) * 65534);
    const float f = std::ldexp(float(fc), -15), c = std::ldexp(float(cc), -13);  // p = 2
    const float y = ops::fake_quant_pot_mul(f32({f}), f32({c}), scalar(-13)).data<float>()[0];
    EXPECT_EQ(std::ldexp(y, 13), float(quant::rounding_divide_by_pot(fc * cc, 15))) << fc << cc;
    differ_from_f32 += ops::fake_quant_pot(f32({f * c}), -13).data<float>()[0] != y;
  }
  (void)differ_from_f32;  // the f32 product f * c sometimes rounds to a neighbouring code
}

TEST(FixedHidden, IsTheIntegerStepsNewHCode) {
  note_reference_tested("fixed_hidden");
  const float hmin = -0.8f, hmax = 0.9f;
  const ops::FakeQuantNudge nd = ops::fake_quant_nudge(hmin, hmax);
  const int32_t lo = nd.quant_min - nd.zero_point, hi = nd.quant_max - nd.zero_point;
  Rng rng(6);
  for (int i = 0; i < 300; ++i) {
    const int32_t a = static_cast<int32_t>(rng.uniform() * 32767);
    const int32_t t = static_cast<int32_t>((rng.uniform() - 0.5f) * 65534);
    const int32_t kh = std::clamp(static_cast<int32_t>((rng.uniform() - 0.5f) * 256), lo, hi);
    const float av = std::ldexp(float(a), -15), tv = std::ldexp(float(t), -15);
    const float hv = float(kh) * nd.scale;
    auto run = [&](std::vector<Tensor> in, const char* form) {
      return ops::fixed_hidden(in, scalar(hmin), scalar(hmax), form).data<float>()[0];
    };
    const int32_t lstm =
        std::clamp(quant::multiply_by_quantized_multiplier(
                       a * t, quant::quantize_multiplier(std::ldexp(1.0, -30) / double(nd.scale))),
                   lo, hi);
    EXPECT_EQ(run({f32({av}), f32({tv})}, "lstm"), float(lstm) * nd.scale);
    EXPECT_EQ(run({f32({av}), f32({hv})}, "reset"),
              float(std::clamp(quant::rounding_divide_by_pot(a * kh, 15), lo, hi)) * nd.scale);
    const int32_t acc =
        a * kh +
        quant::multiply_by_quantized_multiplier(
            (32767 - a) * t, quant::quantize_multiplier(std::ldexp(1.0, -15) / double(nd.scale)));
    EXPECT_EQ(run({f32({av}), f32({hv}), f32({tv})}, "gru"),
              float(std::clamp(quant::rounding_divide_by_pot(acc, 15), lo, hi)) * nd.scale);
  }
  expect_throws_with<ValueError>(
      [&] {
        ops::fixed_hidden(std::vector<Tensor>{f32({0}), f32({0})}, scalar(hmin), scalar(hmax), "x");
      },
      "attribute 'form'");
}

TEST(FixedPointOps, Errors) {
  Tensor x = f32({1, 2});
  expect_throws_with<ShapeError>(
      [&] {
        ops::fake_quant_pot(x, f32({1, 2}));
      },
      "fake_quant_pot: argument 'exponent': expected a scalar");
  expect_throws_with<ValueError>([&] { ops::fake_quant_pot(x, scalar(0), 17); },
                                 "attribute 'bits': expected a value in [2, 16]");
  expect_throws_with<DTypeError>([&] { ops::fixed_logistic(x.to(DType::kS32)); },
                                 "fixed_logistic: argument 'x': expected dtype f32");
  expect_throws_with<ShapeError>([&] { ops::fixed_tanh(x, f32({3})); },
                                 "fixed_tanh: argument 'int_bits': expected a scalar");
}

}  // namespace
}  // namespace lowbit
