// The integer-only inference ops (include/lowbit/ops/int8.h) against an independent route to the
// same codes: the int32 accumulator from the FLOAT ops on exact small integers (conv2d, matmul,
// pools: every value and partial sum is an integer below 2^24, so f32 is exact), then the output
// stage of fixed_point.h (its primitives are checked against gemmlowp's golden vectors in
// tests/quant/fixed_point_test.cc). Also: every code within 1 of round(acc * M) (the double
// rounding costs at most one), thread-count independence, and the errors.
#include "lowbit/ops/int8.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "lowbit/fixed_point.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::expect_throws_with;
using testing::note_reference_tested;
using testing::random_int_tensor;
using testing::tensors_equal;

Attrs conv_quant_attrs(int64_t channels, bool per_channel, const std::string& act,
                       int64_t zp_out = -5) {
  std::vector<double> sw;
  for (int64_t c = 0; c < (per_channel ? channels : 1); ++c) sw.push_back(0.002 + 0.0005 * c);
  return {{"input_scale", 0.031}, {"input_zero_point", 7},       {"weight_scales", sw},
          {"output_scale", 0.1},  {"output_zero_point", zp_out}, {"activation", act},
          {"rounding", "double"}};
}

// The codes qconv2d / qfully_connected must produce, from the exact accumulators `acc`
// ([..., C] f32 holding integers) and the attributes.
Tensor expected_codes(const Tensor& acc, const Attrs& a) {
  const int64_t channels = acc.shape()[acc.shape().rank() - 1];
  const std::vector<double>& sw = a.floats("weight_scales");
  const quant::FusedActivation act = quant::fused_activation_from_name(a.s("activation"));
  Tensor out(acc.shape(), DType::kS8);
  const float* pa = acc.data<float>();
  int8_t* po = out.data<int8_t>();
  for (int64_t i = 0; i < acc.numel(); ++i) {
    const int64_t c = i % channels;
    const quant::ConvOutputStage st = quant::make_conv_output_stage(
        {.input_scale = static_cast<float>(a.f("input_scale")),
         .weight_scale = static_cast<float>(sw.size() == 1 ? sw[0] : sw[c]),
         .output_scale = static_cast<float>(a.f("output_scale")),
         .output_zero_point = static_cast<int32_t>(a.i("output_zero_point")),
         .activation = act});
    const int32_t want = st.apply(static_cast<int32_t>(pa[i]));
    // Within one code of the exactly rounded real result (before the clamp).
    const double exact = std::round(pa[i] * st.effective_multiplier) + st.output_zero_point;
    const double clamped = std::min<double>(std::max<double>(exact, st.act_min), st.act_max);
    EXPECT_LE(std::fabs(want - clamped), 1.0) << "element " << i;
    po[i] = static_cast<int8_t>(want);
  }
  return out;
}

Tensor as_f32_minus(const Tensor& q, int zp) {
  return q.to(DType::kF32) - Tensor::scalar(static_cast<float>(zp));
}

struct ConvCase {
  Shape x, w;
  Attrs window;
  bool per_channel;
  std::string act;
};

void check_qconv2d(const ConvCase& t, uint64_t seed) {
  Rng rng(seed);
  const Tensor x = random_int_tensor(t.x, rng, -128, 127, DType::kS8);
  const Tensor w = random_int_tensor(t.w, rng, -127, 127, DType::kS8);
  const int64_t out_c = t.w[3];
  const Tensor bias = random_int_tensor({out_c}, rng, -2000, 2000, DType::kS32);
  Attrs a = conv_quant_attrs(out_c, t.per_channel, t.act);
  for (const auto& [k, v] : t.window.items()) a.set(k, v);
  const Tensor got = ops::qconv2d(x, w, bias, a);
  const Tensor acc =
      ops::conv2d(as_f32_minus(x, 7), w.to(DType::kF32), t.window) + bias.to(DType::kF32);
  EXPECT_TRUE(tensors_equal(got, expected_codes(acc, a)))
      << "x " << t.x.str() << " w " << t.w.str() << " " << t.window.str();
}

TEST(QConv2D, MatchesTheExactAccumulatorAndTheOutputStage) {
  note_reference_tested("qconv2d");
  const std::vector<ConvCase> cases = {
      {{1, 1, 1, 1}, {1, 1, 1, 1}, {}, true, "none"},
      {{2, 5, 6, 3}, {3, 3, 3, 4}, {{"padding", "same"}}, true, "relu"},
      {{1, 7, 7, 5}, {3, 3, 5, 7}, {{"strides", {2, 2}}, {"padding", "same"}}, true, "relu6"},
      {{1, 9, 8, 4}, {3, 2, 4, 3}, {{"dilations", {2, 2}}}, false, "none"},
      {{2, 6, 6, 6}, {3, 3, 1, 6}, {{"groups", 6}, {"padding", "same"}}, true, "relu6"},
      {{1, 5, 5, 4}, {3, 3, 1, 8}, {{"groups", 4}, {"strides", 2}}, true, "none"},  // mult 2
      {{1, 4, 4, 17}, {1, 1, 17, 33}, {}, true, "relu"},
  };
  uint64_t seed = 1;
  for (const ConvCase& c : cases) check_qconv2d(c, seed++);
}

TEST(QConv2D, DoesNotDependOnTheThreadCount) {
  Rng rng(9);
  const Tensor x = random_int_tensor({2, 16, 16, 16}, rng, -128, 127, DType::kS8);
  const Tensor w = random_int_tensor({3, 3, 16, 32}, rng, -127, 127, DType::kS8);
  const Tensor b = random_int_tensor({32}, rng, -500, 500, DType::kS32);
  Attrs a = conv_quant_attrs(32, true, "relu");
  a.set("padding", "same");
  const int before = num_threads();
  set_num_threads(1);
  const Tensor one = ops::qconv2d(x, w, b, a);
  set_num_threads(2);
  const Tensor two = ops::qconv2d(x, w, b, a);
  set_num_threads(before);
  EXPECT_TRUE(tensors_equal(one, two));
}

TEST(QFullyConnected, MatchesTheExactAccumulatorAndTheOutputStage) {
  note_reference_tested("qfully_connected");
  uint64_t seed = 20;
  for (const auto& [x_shape, units] : std::vector<std::pair<Shape, int64_t>>{
           {{1, 1}, 1}, {{3, 17}, 5}, {{4, 64}, 10}, {{2, 3, 9}, 4}}) {
    Rng rng(seed++);
    const int64_t k = x_shape[x_shape.rank() - 1];
    const Tensor x = random_int_tensor(x_shape, rng, -128, 127, DType::kS8);
    const Tensor w = random_int_tensor({k, units}, rng, -127, 127, DType::kS8);
    const Tensor bias = random_int_tensor({units}, rng, -3000, 3000, DType::kS32);
    const Attrs a = conv_quant_attrs(units, units > 1, "relu");
    const Tensor got = ops::qfully_connected(x, w, bias, a);
    const Tensor x2 = as_f32_minus(x, 7).reshape(Shape{x.numel() / k, k});
    Tensor acc = ops::matmul(x2, w.to(DType::kF32)) + bias.to(DType::kF32);
    std::vector<int64_t> d = x_shape.dims();
    d.back() = units;
    acc = acc.reshape(Shape(d));
    EXPECT_TRUE(tensors_equal(got, expected_codes(acc, a))) << x_shape.str();
  }
}

TEST(QPool2D, MaxAndAverageMatchTheFloatPoolsOnCodes) {
  note_reference_tested("qmax_pool2d");
  note_reference_tested("qavg_pool2d");
  Rng rng(5);
  for (const Attrs& window : {Attrs{{"ksize", {2, 2}}},
                              Attrs{{"ksize", {3, 3}}, {"strides", {2, 2}}, {"padding", "same"}},
                              Attrs{{"ksize", {2, 3}}, {"strides", {1, 2}}}}) {
    const Tensor x = random_int_tensor({2, 7, 6, 5}, rng, -128, 127, DType::kS8);
    const Tensor xf = x.to(DType::kF32);
    EXPECT_TRUE(
        tensors_equal(ops::qmax_pool2d(x, window), ops::max_pool2d(xf, window).to(DType::kS8)))
        << window.str();
    // The float mean of integers, rounded half away from zero (exact: ties are exact in f32).
    Tensor mean = ops::avg_pool2d(xf, window);
    for (int64_t i = 0; i < mean.numel(); ++i)
      mean.data<float>()[i] = std::round(mean.data<float>()[i]);
    EXPECT_TRUE(tensors_equal(ops::qavg_pool2d(x, window), mean.to(DType::kS8))) << window.str();
  }
  // The clamp of a fused ReLU: codes below act_min are raised.
  const Tensor x = Tensor::from_vector<int8_t>({-100, -50, 20, 30}, {1, 2, 2, 1});
  const Tensor y = ops::qmax_pool2d(x, {{"ksize", {1, 1}}, {"act_min", -60}});
  EXPECT_TRUE(tensors_equal(y, Tensor::from_vector<int8_t>({-60, -50, 20, 30}, {1, 2, 2, 1})));
}

// With output parameters the mean is rounded once to the output grid: round((sum - count * zp_in)
// * s_in / (s_out * count)) + zp_out, from the float mean of the real values (single rounding:
// within 1e-6 of an exact tie only by chance; the test's scales make no ties).
TEST(QPool2D, AverageWithOutputParametersRoundsTheMeanOnceToTheOutputGrid) {
  Rng rng(6);
  const double s_in = 0.05, s_out = 0.043;
  const int64_t zp_in = -3, zp_out = 9;
  for (const Attrs& window : {Attrs{{"ksize", {2, 2}}},
                              Attrs{{"ksize", {3, 3}}, {"strides", {2, 2}}, {"padding", "same"}},
                              Attrs{{"ksize", {7, 6}}}}) {
    const Tensor x = random_int_tensor({2, 7, 6, 5}, rng, -128, 127, DType::kS8);
    Attrs a = window;
    a.set("input_scale", s_in);
    a.set("input_zero_point", zp_in);
    a.set("output_scale", s_out);
    a.set("output_zero_point", zp_out);
    a.set("rounding", "single");
    const Tensor y = ops::qavg_pool2d(x, a);
    Tensor real = x.to(DType::kF32);
    for (int64_t i = 0; i < real.numel(); ++i)
      real.data<float>()[i] = static_cast<float>(
          s_in * (static_cast<double>(real.data<float>()[i]) - static_cast<double>(zp_in)));
    const Tensor mean = ops::avg_pool2d(real, window);
    ASSERT_EQ(y.shape(), mean.shape());
    int64_t off = 0;
    for (int64_t i = 0; i < y.numel(); ++i) {
      const double want =
          std::clamp(std::floor(mean.data<float>()[i] / s_out + 0.5) + static_cast<double>(zp_out),
                     -128.0, 127.0);
      off += std::fabs(want - y.data<int8_t>()[i]) > 0;
      ASSERT_LE(std::fabs(want - y.data<int8_t>()[i]), 1) << i;
    }
    EXPECT_LE(off, y.numel() / 1000 + 1) << window.str();  // f32 ties of the check, at most
  }
  expect_throws_with<ValueError>(
      [] {
        ops::qavg_pool2d(Tensor({1, 2, 2, 1}, DType::kS8),
                         {{"ksize", {2, 2}}, {"input_scale", 0.1}, {"output_scale", 0.2}});
      },
      "give all of input_scale, input_zero_point, output_scale and output_zero_point");
  expect_throws_with<ValueError>(
      [] {
        ops::qmax_pool2d(Tensor({1, 2, 2, 1}, DType::kS8), {{"ksize", {2, 2}},
                                                            {"input_scale", 0.1},
                                                            {"input_zero_point", 0},
                                                            {"output_scale", 0.2},
                                                            {"output_zero_point", 0}});
      },
      "keeps the input's parameters");
}

TEST(FakeQuantBias, RoundsToTheInt32GridTheIntegerOpsStore) {
  note_reference_tested("fake_quant_bias");
  const Tensor b = Tensor::from_vector<float>({0.3f, -0.0123f, 1e-9f, 5.0f}, {4});
  const Tensor s_in = Tensor::scalar(0.02f);
  const Tensor s_w = Tensor::from_vector<float>({0.01f, 0.003f, 0.5f, 0.0f}, {4});
  const Tensor y = ops::fake_quant_bias(b, s_in, s_w);
  for (int64_t c = 0; c < 3; ++c) {
    const float bs = quant::bias_scale(0.02f, s_w.data<float>()[c]);
    EXPECT_EQ(y.data<float>()[c],
              static_cast<float>(quant::quantize_bias(b.data<float>()[c], bs)) * bs)
        << c;
  }
  EXPECT_EQ(y.data<float>()[0], 1500.0f * (0.02f * 0.01f));  // 0.3 / 2e-4 = 1500 exactly
  EXPECT_EQ(y.data<float>()[2], 0.0f);                       // far below half a step
  EXPECT_EQ(y.data<float>()[3], 5.0f);  // a zero step (no range yet): unchanged
  // One weight step for all channels.
  const Tensor y1 = ops::fake_quant_bias(b, s_in, Tensor::scalar(0.01f));
  const float bs1 = quant::bias_scale(0.02f, 0.01f);
  EXPECT_EQ(y1.data<float>()[1], static_cast<float>(quant::quantize_bias(-0.0123f, bs1)) * bs1);
  expect_throws_with<ShapeError>(
      [&] {
        ops::fake_quant_bias(b, s_in, Tensor::from_vector<float>({1, 2}, {2}));
      },
      "weight_step");
  expect_throws_with<ShapeError>([&] { ops::fake_quant_bias(b, s_w, s_w); }, "input_step");
}

// Straight through: with a bias step far below the finite-difference step, y = b + O(1e-6) is
// smooth at the scale of eps and its derivative is the identity the rule says.
TEST(FakeQuantBias, GradientIsStraightThrough) {
  testing::GradCheckOptions only_b;
  only_b.wrt = {0};
  testing::expect_gradients_match(
      "fake_quant_bias",
      {Tensor::from_vector<float>({0.31f, -0.77f, 0.05f}, {3}), Tensor::scalar(1e-3f),
       Tensor::from_vector<float>({1e-3f, 2e-3f, 5e-4f}, {3})},
      {}, only_b);
}

TEST(QAdd, IsTheAddStageElementwiseAndWithinOneCodeOfTheRealSum) {
  note_reference_tested("qadd");
  Rng rng(6);
  const Tensor a = random_int_tensor({3, 37}, rng, -128, 127, DType::kS8);
  const Tensor b = random_int_tensor({3, 37}, rng, -128, 127, DType::kS8);
  const Attrs at{{"input1_scale", 0.02},    {"input1_zero_point", -3}, {"input2_scale", 0.035},
                 {"input2_zero_point", 10}, {"output_scale", 0.05},    {"output_zero_point", 1}};
  const Tensor y = ops::qadd(a, b, at);
  for (int64_t i = 0; i < y.numel(); ++i) {
    const double real = 0.02 * (a.data<int8_t>()[i] + 3) + 0.035 * (b.data<int8_t>()[i] - 10);
    const double code = std::clamp(std::round(real / 0.05) + 1, -128.0, 127.0);
    EXPECT_LE(std::fabs(y.data<int8_t>()[i] - code), 1.0) << i;
  }
}

TEST(Requantize, RescalesCodesAndClamps) {
  note_reference_tested("requantize");
  const Tensor x = Tensor::from_vector<int8_t>({-128, -1, 0, 1, 10, 127}, {6});
  // s_in / s_out = 2: (q - 0) * 2 - 3, clamped.
  const Tensor y = ops::requantize(x, {{"input_scale", 0.2},
                                       {"input_zero_point", 0},
                                       {"output_scale", 0.1},
                                       {"output_zero_point", -3}});
  EXPECT_TRUE(tensors_equal(y, Tensor::from_vector<int8_t>({-128, -5, -3, -1, 17, 127}, {6})));
}

TEST(QuantizeDequantize, FollowTfliteRounding) {
  note_reference_tested("quantize");
  note_reference_tested("dequantize");
  const Tensor x = Tensor::from_vector<float>({-1.25f, 0.25f, 0.26f, 100.f, -100.f, NAN}, {6});
  const Tensor q = ops::quantize(x, 0.5, 2);
  // round_away: -2.5 -> -3 (+2 = -1), 0.5 -> 1 (+2 = 3), 0.52 -> 1, saturation, NaN -> zp.
  EXPECT_TRUE(tensors_equal(q, Tensor::from_vector<int8_t>({-1, 3, 3, 127, -128, 2}, {6})));
  const Tensor d = ops::dequantize(q, 0.5, 2);
  EXPECT_TRUE(
      tensors_equal(d, Tensor::from_vector<float>({-1.5f, 0.5f, 0.5f, 62.5f, -65.f, 0.f}, {6})));
}

TEST(Int8Ops, RefuseBadInputsNamingTheArgument) {
  Rng rng(1);
  const Tensor x = random_int_tensor({1, 4, 4, 2}, rng, -5, 5, DType::kS8);
  const Tensor w = random_int_tensor({3, 3, 2, 3}, rng, -5, 5, DType::kS8);
  const Tensor b = random_int_tensor({3}, rng, -5, 5, DType::kS32);
  const Attrs a = conv_quant_attrs(3, true, "none");
  expect_throws_with<DTypeError>([&] { ops::qconv2d(x.to(DType::kF32), w, b, a); },
                                 "qconv2d: argument 'x': expected dtype s8");
  expect_throws_with<DTypeError>([&] { ops::qconv2d(x, w, b.to(DType::kF32), a); },
                                 "argument 'bias': expected dtype s32");
  expect_throws_with<ShapeError>(
      [&] { ops::qconv2d(x, w, random_int_tensor({4}, rng, 0, 1, DType::kS32), a); },
      "argument 'bias': expected shape [3]");
  Attrs bad = a;
  bad.set("weight_scales", std::vector<double>{0.1, 0.2});
  expect_throws_with<ValueError>([&] { ops::qconv2d(x, w, b, bad); },
                                 "'weight_scales': expected 1 or 3 scales");
  bad = a;
  bad.set("output_scale", -1.0);
  expect_throws_with<ValueError>([&] { ops::qconv2d(x, w, b, bad); },
                                 "'output_scale': expected a finite scale > 0");
  bad = a;
  bad.set("input_zero_point", 300);
  expect_throws_with<ValueError>([&] { ops::qconv2d(x, w, b, bad); },
                                 "'input_zero_point': expected an int8 zero point");
  bad = a;
  bad.set("output_scale", 1e-15);  // M = 0.031 * 0.002 / 1e-15 >= 2^30
  expect_throws_with<ValueError>([&] { ops::qconv2d(x, w, b, bad); }, "output channel 0");
  bad = a;
  bad.set("activation", "gelu");
  expect_throws_with<ValueError>([&] { ops::qconv2d(x, w, b, bad); }, "'activation'");
  expect_throws_with<ValueError>([&] { ops::quantize(x.to(DType::kF32), 0.0, 0); },
                                 "quantize: attribute 'scale'");
  expect_throws_with<ShapeError>(
      [&] {
        ops::qfully_connected(random_int_tensor({2, 5}, rng, 0, 1, DType::kS8),
                              random_int_tensor({4, 3}, rng, 0, 1, DType::kS8), b, a);
      },
      "expected x [..., K] and w [K, U]");
}

}  // namespace
}  // namespace lowbit
