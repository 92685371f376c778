// Tests of the TF fake-quant ops (include/lowbit/ops/fake_quant.h): every tf_fake_quant and
// tf_fake_quant_per_channel case of ../shared/testdata/fakequant_examples.json bit for bit, the
// edge cases of shared quantization-semantics.md section 6 (rows 1-12), the straight-through
// gradients, symbolic use and the error cases. Exact values were computed by hand from the spec's
// formulas in f32 and agree with the values the spec lists.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::expect_gradients_match;
using testing::expect_throws_with;
using testing::note_reference_tested;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

Tensor f32(std::vector<float> v, Shape s) { return Tensor::from_vector<float>(v, s); }
Tensor f32(std::vector<float> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return Tensor::from_vector<float>(v, {n});
}
Tensor scalar(float v) { return Tensor::scalar(v); }

// "0x1.8p+0 (1.5)": the exact bits and a readable value.
std::string exact(float v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a (%.9g)", static_cast<double>(v), static_cast<double>(v));
  return buf;
}

// The spec's comparison: == on every element (so -0 == 0), NaN only equal to NaN.
::testing::AssertionResult floats_equal(const Tensor& got, const std::vector<float>& want) {
  if (got.dtype() != DType::kF32 || got.numel() != static_cast<int64_t>(want.size()))
    return ::testing::AssertionFailure()
           << "got " << got.str() << ", want " << want.size() << " f32 values";
  const float* g = got.data<float>();
  for (size_t i = 0; i < want.size(); ++i) {
    const bool same = std::isnan(want[i]) ? std::isnan(g[i]) : g[i] == want[i];
    if (!same)
      return ::testing::AssertionFailure()
             << "element " << i << ": got " << exact(g[i]) << ", want " << exact(want[i]);
  }
  return ::testing::AssertionSuccess();
}

// Runs f once with the reference kernels and once with the fastest ones.
template <class F>
void for_each_kernel_choice(F f) {
  const KernelChoice saved = kernel_choice();
  for (KernelChoice choice : {KernelChoice::kReference, KernelChoice::kFastest}) {
    SCOPED_TRACE(choice == KernelChoice::kReference ? "reference kernels" : "fastest kernels");
    set_kernel_choice(choice);
    f();
  }
  set_kernel_choice(saved);
}

void note_all_tested() {
  for (const char* op : {"fake_quant_with_min_max_args", "fake_quant_with_min_max_args_gradient",
                         "fake_quant_with_min_max_vars", "fake_quant_with_min_max_vars_gradient",
                         "fake_quant_with_min_max_vars_per_channel",
                         "fake_quant_with_min_max_vars_per_channel_gradient"})
    note_reference_tested(op);
}

// ---- golden vectors (../shared/testdata/fakequant_examples.json) ----------------------------

// A float as the schema writes it: a number (shortest round-trip decimal of the f32 value) or
// one of the strings "nan", "inf", "-inf".
float json_float(const nlohmann::json& j) {
  if (j.is_string()) {
    const std::string s = j.get<std::string>();
    if (s == "nan") return kNaN;
    if (s == "inf") return kInf;
    if (s == "-inf") return -kInf;
    ADD_FAILURE() << "unexpected float string '" << s << "'";
    return 0;
  }
  return static_cast<float>(j.get<double>());
}

// A nested list of floats, flattened row-major, with its shape.
struct Floats {
  std::vector<float> v;
  std::vector<int64_t> shape;
  Tensor tensor() const { return f32(v, Shape(shape)); }
};
void flatten(const nlohmann::json& j, Floats& out, size_t depth) {
  if (!j.is_array()) {
    out.v.push_back(json_float(j));
    return;
  }
  if (out.shape.size() <= depth) out.shape.push_back(static_cast<int64_t>(j.size()));
  for (const auto& e : j) flatten(e, out, depth + 1);
}
Floats json_floats(const nlohmann::json& j) {
  Floats f;
  flatten(j, f, 0);
  return f;
}

const nlohmann::json& golden_cases() {
  static const nlohmann::json cases = [] {
    const std::string path = testing::shared_dir() + "/testdata/fakequant_examples.json";
    std::ifstream in(path);
    if (!in) throw IoError("cannot open " + path);
    return nlohmann::json::parse(in).at("cases");
  }();
  return cases;
}

std::vector<nlohmann::json> cases_of_kind(const std::string& kind) {
  std::vector<nlohmann::json> out;
  for (const auto& c : golden_cases())
    if (c.at("kind") == kind) out.push_back(c);
  return out;
}

TEST(FakeQuantGolden, EveryTfFakeQuantCase) {
  note_all_tested();
  const auto cases = cases_of_kind("tf_fake_quant");
  ASSERT_GE(cases.size(), 8u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c.at("id").get<std::string>());
    const auto& p = c.at("params");
    const std::string variant = p.at("variant");
    const double min = json_float(p.at("min")), max = json_float(p.at("max"));
    const int bits = p.at("num_bits");
    const bool narrow = p.at("narrow_range");
    const Tensor x = json_floats(c.at("inputs").at("x")).tensor();
    const auto& e = c.at("expected");
    if (e.contains("error")) {
      ASSERT_EQ(variant, "args") << "only args rejects a range when the op is built";
      expect_throws_with<ValueError>(
          [&] { ops::fake_quant_with_min_max_args(x, min, max, bits, narrow); }, "min < max");
      continue;
    }
    const Tensor dy = json_floats(c.at("inputs").at("dy")).tensor();
    for_each_kernel_choice([&] {
      if (variant == "args") {
        EXPECT_TRUE(floats_equal(ops::fake_quant_with_min_max_args(x, min, max, bits, narrow),
                                 json_floats(e.at("y")).v));
        EXPECT_TRUE(
            floats_equal(ops::fake_quant_with_min_max_args_gradient(dy, x, min, max, bits, narrow),
                         json_floats(e.at("dx")).v));
      } else {
        ASSERT_EQ(variant, "vars");
        const Tensor tmin = scalar(static_cast<float>(min)), tmax = scalar(static_cast<float>(max));
        EXPECT_TRUE(floats_equal(ops::fake_quant_with_min_max_vars(x, tmin, tmax, bits, narrow),
                                 json_floats(e.at("y")).v));
        auto g = ops::fake_quant_with_min_max_vars_gradient(dy, x, tmin, tmax, bits, narrow);
        EXPECT_TRUE(floats_equal(g.dx, json_floats(e.at("dx")).v));
        EXPECT_TRUE(floats_equal(g.dmin, {json_float(e.at("dmin"))}));
        EXPECT_TRUE(floats_equal(g.dmax, {json_float(e.at("dmax"))}));
      }
    });
    if (e.contains("nudged_min")) {
      const ops::FakeQuantNudge n =
          ops::fake_quant_nudge(static_cast<float>(min), static_cast<float>(max), bits, narrow);
      EXPECT_EQ(n.nudged_min, json_float(e.at("nudged_min")));
      EXPECT_EQ(n.nudged_max, json_float(e.at("nudged_max")));
      EXPECT_EQ(n.scale, json_float(e.at("nudged_scale")));
    }
  }
}

TEST(FakeQuantGolden, EveryTfFakeQuantPerChannelCase) {
  note_all_tested();
  const auto cases = cases_of_kind("tf_fake_quant_per_channel");
  ASSERT_GE(cases.size(), 1u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c.at("id").get<std::string>());
    const auto& p = c.at("params");
    const Tensor min = json_floats(p.at("min")).tensor(), max = json_floats(p.at("max")).tensor();
    const int bits = p.at("num_bits");
    const bool narrow = p.at("narrow_range");
    const Tensor x = json_floats(c.at("inputs").at("x")).tensor();
    const Tensor dy = json_floats(c.at("inputs").at("dy")).tensor();
    const auto& e = c.at("expected");
    for_each_kernel_choice([&] {
      EXPECT_TRUE(
          floats_equal(ops::fake_quant_with_min_max_vars_per_channel(x, min, max, bits, narrow),
                       json_floats(e.at("y")).v));
      auto g =
          ops::fake_quant_with_min_max_vars_per_channel_gradient(dy, x, min, max, bits, narrow);
      EXPECT_TRUE(floats_equal(g.dx, json_floats(e.at("dx")).v));
      EXPECT_TRUE(floats_equal(g.dmin, json_floats(e.at("dmin")).v));
      EXPECT_TRUE(floats_equal(g.dmax, json_floats(e.at("dmax")).v));
      EXPECT_EQ(g.dmin.shape(), min.shape());
    });
  }
}

// ---- spec section 6, rows 1-12 --------------------------------------------------------------

Tensor vars(const Tensor& x, float min, float max, int bits = 8, bool narrow = false) {
  return ops::fake_quant_with_min_max_vars(x, scalar(min), scalar(max), bits, narrow);
}

TEST(FakeQuantEdgeCases, Row1And2TiesGoUpAndTheF32AdditionRounds) {
  note_all_tested();
  for_each_kernel_choice([] {
    EXPECT_TRUE(floats_equal(vars(f32({0.5f, 1.5f, 2.5f, 127.5f}), 0, 255), {1, 2, 3, 128}));
    // 0.49999997 + 0.5 rounds to 1.0 in f32, so the largest float below 0.5 goes up.
    EXPECT_TRUE(floats_equal(vars(f32({0.49999997f}), 0, 255), {1.0f}));
  });
}

TEST(FakeQuantEdgeCases, Row3NegativeTiesGoTowardPlusInfinity) {
  for_each_kernel_choice([] {
    EXPECT_TRUE(floats_equal(vars(f32({-2.5f, -1.5f, -0.5f}), -128, 127), {-2, -1, 0}));
  });
}

TEST(FakeQuantEdgeCases, Row4MinusOneToOneIsNudgedToZeroPoint127) {
  const ops::FakeQuantNudge n = ops::fake_quant_nudge(-1, 1, 8, false);
  EXPECT_EQ(n.zero_point, 127);
  EXPECT_EQ(n.quant_min, 0);
  EXPECT_EQ(n.quant_max, 255);
  EXPECT_EQ(n.scale, 2.0f / 255.0f);
  EXPECT_EQ(n.inv_scale, 127.5f);
  EXPECT_EQ(n.nudged_min, -0.996078491f);
  EXPECT_EQ(n.nudged_max, 1.00392163f);
  for_each_kernel_choice([] {
    EXPECT_TRUE(floats_equal(ops::fake_quant_with_min_max_args(f32({-1, 1, 0}), -1, 1),
                             {-0.996078491f, 1.00392163f, 0}));
  });
}

TEST(FakeQuantEdgeCases, Row5MinusSixSitsOnATieAndGoesUp) {
  const ops::FakeQuantNudge n = ops::fake_quant_nudge(-6, 6);
  EXPECT_EQ(n.zero_point, 128);
  for_each_kernel_choice([] {
    EXPECT_TRUE(floats_equal(ops::fake_quant_with_min_max_args(f32({-6}), -6, 6), {-5.97647047f}));
  });
}

TEST(FakeQuantEdgeCases, Row6PositiveRangeIsShiftedToZero) {
  const ops::FakeQuantNudge n = ops::fake_quant_nudge(12, 123);
  EXPECT_EQ(n.zero_point, 0);
  EXPECT_EQ(n.nudged_min, 0.0f);
  EXPECT_EQ(n.nudged_max, 111.0f);
  for_each_kernel_choice([] {
    EXPECT_TRUE(floats_equal(ops::fake_quant_with_min_max_args(f32({123, 5}), 12, 123),
                             {111, 4.78823519f}));
  });
}

TEST(FakeQuantEdgeCases, Row7NegativeRangeIsShiftedToZero) {
  const ops::FakeQuantNudge n = ops::fake_quant_nudge(-123, -12);
  EXPECT_EQ(n.zero_point, 255);
  EXPECT_EQ(n.nudged_max, 0.0f);
  for_each_kernel_choice([] {
    EXPECT_TRUE(floats_equal(vars(f32({-12, -200, 5}), -123, -12), {-12.1882353f, -111, 0}));
  });
}

TEST(FakeQuantEdgeCases, Row8ZeroRangeGivesZerosAndPassesTheGradient) {
  const Tensor x = f32({-3, 0, 2.5f, kNaN, kInf});
  const Tensor dy = f32({0.5f, -1, 2, 3, -4});
  for_each_kernel_choice([&] {
    EXPECT_TRUE(floats_equal(vars(x, 0, 0), {0, 0, 0, 0, 0}));
    auto g = ops::fake_quant_with_min_max_vars_gradient(dy, x, scalar(0), scalar(0));
    EXPECT_TRUE(floats_equal(g.dx, dy.to_vector<float>()));
    EXPECT_TRUE(floats_equal(g.dmin, {0}));
    EXPECT_TRUE(floats_equal(g.dmax, {0}));
    // -0.0 == 0 counts as a zero range too (TF compares with ==).
    EXPECT_TRUE(floats_equal(vars(x, -0.0f, 0), {0, 0, 0, 0, 0}));
    // Per channel: only the channel whose range is [0, 0].
    const Tensor xc = f32({-3, 1, 0.3f, 2}, {2, 2});
    const Tensor dyc = f32({1, 2, 3, 4}, {2, 2});
    const Tensor min = f32({0, -1}), max = f32({0, 1});
    EXPECT_TRUE(floats_equal(ops::fake_quant_with_min_max_vars_per_channel(xc, min, max),
                             {0, 1.00392163f, 0, 1.00392163f}));
    auto gc = ops::fake_quant_with_min_max_vars_per_channel_gradient(dyc, xc, min, max);
    EXPECT_TRUE(floats_equal(gc.dx, {1, 2, 3, 0}));
    EXPECT_TRUE(floats_equal(gc.dmin, {0, 0}));
    EXPECT_TRUE(floats_equal(gc.dmax, {0, 4}));
  });
}

TEST(FakeQuantEdgeCases, Row9EqualNonzeroRangeGivesNaNForVarsAndAnErrorForArgs) {
  const Tensor x = f32({-1, 0, 1.5f, 3});
  const Tensor dy = f32({1, 2, 4, 8});
  for_each_kernel_choice([&] {
    EXPECT_TRUE(floats_equal(vars(x, 1.5f, 1.5f), {kNaN, kNaN, kNaN, kNaN}));
    // scale 0: the nudged range is [0, 0], so only x == 0 passes its gradient.
    auto g = ops::fake_quant_with_min_max_vars_gradient(dy, x, scalar(1.5f), scalar(1.5f));
    EXPECT_TRUE(floats_equal(g.dx, {0, 2, 0, 0}));
    EXPECT_TRUE(floats_equal(g.dmin, {1}));
    EXPECT_TRUE(floats_equal(g.dmax, {12}));
    EXPECT_TRUE(floats_equal(ops::fake_quant_with_min_max_vars_per_channel(
                                 f32({1, 2}, {1, 2}), f32({-1, 1.5f}), f32({1, 1.5f})),
                             {1.00392163f, kNaN}));
  });
  expect_throws_with<ValueError>([&] { ops::fake_quant_with_min_max_args(x, 1.5, 1.5); },
                                 "fake_quant_with_min_max_args: attributes 'min' and 'max'");
}

TEST(FakeQuantEdgeCases, Row10SixteenBits) {
  for_each_kernel_choice([] {
    EXPECT_TRUE(
        floats_equal(ops::fake_quant_with_min_max_args(f32({10.03f, -10.23f, 3}), -5, 5, 16),
                     {4.99992371f, -5.00007629f, 3.00007629f}));
  });
}

TEST(FakeQuantEdgeCases, Row11BetweenMinAndNudgedMinIsClampedAndFeedsDmin) {
  const ops::FakeQuantNudge n = ops::fake_quant_nudge(-0.13f, 25.37f);
  EXPECT_EQ(n.nudged_min, -0.1f);
  for_each_kernel_choice([] {
    EXPECT_TRUE(floats_equal(vars(f32({-0.12f}), -0.13f, 25.37f), {-0.1f}));
    auto g = ops::fake_quant_with_min_max_vars_gradient(f32({0.75f}), f32({-0.12f}), scalar(-0.13f),
                                                        scalar(25.37f));
    EXPECT_TRUE(floats_equal(g.dx, {0}));
    EXPECT_TRUE(floats_equal(g.dmin, {0.75f}));
    EXPECT_TRUE(floats_equal(g.dmax, {0}));
  });
}

TEST(FakeQuantEdgeCases, Row12NumBitsOutsideTwoToSixteen) {
  const Tensor x = f32({0.5f});
  for (int bits : {1, 17, 0, -3}) {
    SCOPED_TRACE(bits);
    const std::string want =
        "attribute 'num_bits': expected an integer in [2, 16] but found " + std::to_string(bits);
    expect_throws_with<ValueError>([&] { ops::fake_quant_with_min_max_args(x, -1, 1, bits); },
                                   want);
    expect_throws_with<ValueError>([&] { vars(x, -1, 1, bits); }, want);
    expect_throws_with<ValueError>(
        [&] { ops::fake_quant_with_min_max_vars_per_channel(x, f32({-1}), f32({1}), bits); }, want);
    expect_throws_with<ValueError>(
        [&] { ops::fake_quant_with_min_max_vars_gradient(x, x, scalar(-1), scalar(1), bits); },
        want);
    expect_throws_with<ValueError>([&] { ops::fake_quant_nudge(-1, 1, bits); }, "num_bits");
  }
  for_each_kernel_choice([&] {
    // The extremes are accepted: 2 bits wide has 4 levels, narrow has 3 ({-1, 0, 1}).
    EXPECT_TRUE(floats_equal(ops::fake_quant_with_min_max_args(f32({-1, -0.4f, 0.4f, 1}), -1, 1, 2,
                                                               /*narrow_range=*/true),
                             {-1, 0, 0, 1}));
    EXPECT_TRUE(floats_equal(ops::fake_quant_with_min_max_args(f32({-3, 3}), -1, 1, 16),
                             {-1.00001526f, 0.999984741f}));
  });
}

// ---- gradients ------------------------------------------------------------------------------

TEST(FakeQuantGradient, StraightThroughInsideZeroOutsideBoundariesIncluded) {
  // [-1, 1] narrow 8 bit is not nudged: scale 2/254, zero point 128.
  const Tensor x = f32({-2, -1, -0.3f, 0, 0.77f, 1, 1.5f, kNaN, -kInf, kInf});
  const Tensor dy = f32({1, 2, 4, 8, 16, 32, 64, 128, 256, 512});
  for_each_kernel_choice([&] {
    EXPECT_TRUE(floats_equal(ops::fake_quant_with_min_max_args_gradient(dy, x, -1, 1, 8, true),
                             {0, 2, 4, 8, 16, 32, 0, 0, 0, 0}));
    auto g = ops::fake_quant_with_min_max_vars_gradient(dy, x, scalar(-1), scalar(1), 8, true);
    EXPECT_TRUE(floats_equal(g.dx, {0, 2, 4, 8, 16, 32, 0, 0, 0, 0}));
    EXPECT_TRUE(floats_equal(g.dmin, {1 + 256}));   // -2 and -inf; NaN goes nowhere
    EXPECT_TRUE(floats_equal(g.dmax, {64 + 512}));  // 1.5 and +inf
    EXPECT_TRUE(floats_equal(ops::fake_quant_with_min_max_vars(x, scalar(-1), scalar(1), 8, true),
                             {-1, -1, -0.299212605f, 0, 0.771653533f, 1, 1, kNaN, -1, 1}));
  });
}

TEST(FakeQuantGradient, PerChannelSumsEachChannelOnTheLastAxis) {
  // [2, 2, 3]: channel c sees 4 rows. Ranges: [-1, 1], [0, 2], [-4, -2] -> nudged [-2, 0].
  const Tensor x = f32({-3, 3, -5, 0.5f, -1, -1, 2, 0.1f, 1, -1.5f, 2.5f, -2}, {2, 2, 3});
  const Tensor dy = f32({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048}, {2, 2, 3});
  const Tensor min = f32({-1, 0, -4}), max = f32({1, 2, -2});
  for_each_kernel_choice([&] {
    auto g = ops::fake_quant_with_min_max_vars_per_channel_gradient(dy, x, min, max);
    EXPECT_EQ(g.dx.shape(), x.shape());
    // Channel 0: [-1, 1] nudged to [-0.99607849, 1.00392163]; channel 2 includes its boundary -2.
    EXPECT_TRUE(floats_equal(g.dx, {0, 0, 0, 8, 0, 32, 0, 128, 0, 0, 0, 2048}));
    EXPECT_TRUE(floats_equal(g.dmin, {1 + 512, 16, 4}));
    EXPECT_TRUE(floats_equal(g.dmax, {64, 2 + 1024, 256}));
  });
}

// Finite differences of y are zero or infinite on the grid (y is a step function), and dmin/dmax
// ignore the nudge's dependence on min and max by definition, so a finite-difference check is
// meaningful only where y is flat in every argument it is checked against: x strictly outside
// the nudged range, where dx = 0.
TEST(FakeQuantGradient, FiniteDifferencesAgreeOutsideTheRange) {
  const Tensor x = f32({-3, 2.5f, -1.8f, 4}, {2, 2});
  testing::GradCheckOptions only_x;
  only_x.wrt = {0};
  expect_gradients_match("fake_quant_with_min_max_args", {x},
                         {{"min", -1.0}, {"max", 1.5}, {"num_bits", 8}, {"narrow_range", false}},
                         only_x);
  expect_gradients_match("fake_quant_with_min_max_vars", {x, scalar(-1), scalar(1.5f)},
                         {{"num_bits", 4}, {"narrow_range", true}}, only_x);
  expect_gradients_match("fake_quant_with_min_max_vars_per_channel",
                         {x, f32({-1, -1.5f}), f32({1.5f, 1})},
                         {{"num_bits", 8}, {"narrow_range", false}}, only_x);
}

// The gradient rules wire the gradient ops into autodiff: d sum(w * fq(x)) / d{x, min, max}
// equals the gradient op with dy = w, bit for bit, for inputs on both sides of the range.
TEST(FakeQuantGradient, AutodiffUsesTheGradientOps) {
  Rng rng(7);
  const Tensor xt = testing::random_tensor({5, 3}, rng, -2, 2);
  const Tensor wt = testing::random_tensor({5, 3}, rng, -1, 1);
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 3});
  Value w = g.placeholder("w", DType::kF32, {kUnknown, 3});
  Value min = g.placeholder("min", DType::kF32, {});
  Value max = g.placeholder("max", DType::kF32, {});
  Value cmin = g.placeholder("cmin", DType::kF32, {3});
  Value cmax = g.placeholder("cmax", DType::kF32, {3});
  Value y_args = ops::fake_quant_with_min_max_args(x, -1.0, 1.2, 5);
  Value y_vars = ops::fake_quant_with_min_max_vars(x, min, max, 5);
  Value y_pc = ops::fake_quant_with_min_max_vars_per_channel(x, cmin, cmax, 5);
  auto ga = gradients(ops::sum(w * y_args), {x});
  auto gv = gradients(ops::sum(w * y_vars), {x, min, max});
  auto gp = gradients(ops::sum(w * y_pc), {x, cmin, cmax});
  EXPECT_EQ(gp[0].shape(), Shape({kUnknown, 3}));
  EXPECT_EQ(gp[1].shape(), Shape({3}));
  Executor ex(g, {ga[0], gv[0], gv[1], gv[2], gp[0], gp[1], gp[2]});
  const Tensor mint = scalar(-0.7f), maxt = scalar(1.1f);
  const Tensor cmint = f32({-1, -0.5f, 0.2f}), cmaxt = f32({1, 1.5f, 0.9f});
  auto r = ex.run({{x, xt}, {w, wt}, {min, mint}, {max, maxt}, {cmin, cmint}, {cmax, cmaxt}});
  const Tensor da = ops::fake_quant_with_min_max_args_gradient(wt, xt, -1.0, 1.2, 5);
  auto dv = ops::fake_quant_with_min_max_vars_gradient(wt, xt, mint, maxt, 5);
  auto dp = ops::fake_quant_with_min_max_vars_per_channel_gradient(wt, xt, cmint, cmaxt, 5);
  EXPECT_TRUE(floats_equal(r[0], da.to_vector<float>()));
  EXPECT_TRUE(floats_equal(r[1], dv.dx.to_vector<float>()));
  EXPECT_TRUE(floats_equal(r[2], dv.dmin.to_vector<float>()));
  EXPECT_TRUE(floats_equal(r[3], dv.dmax.to_vector<float>()));
  EXPECT_TRUE(floats_equal(r[4], dp.dx.to_vector<float>()));
  EXPECT_TRUE(floats_equal(r[5], dp.dmin.to_vector<float>()));
  EXPECT_TRUE(floats_equal(r[6], dp.dmax.to_vector<float>()));
  // The inputs straddle the ranges, so each kind of element occurred.
  EXPECT_NE(dv.dmin.item<float>(), 0.0f);
  EXPECT_NE(dv.dmax.item<float>(), 0.0f);
  int passed = 0;
  for (float v : da.to_vector<float>()) passed += v != 0;
  EXPECT_GT(passed, 0);
  EXPECT_LT(passed, 15);
}

// ---- symbolic use ---------------------------------------------------------------------------

TEST(FakeQuantGraph, UnknownBatchRunsThroughAnExecutor) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 2, 4});
  Value min = g.variable("min", f32({-1, -2, 0, -0.5f}), /*trainable=*/false);
  Value max = g.variable("max", f32({1, 2, 3, 0.5f}), /*trainable=*/false);
  Value vmin = g.variable("vmin", scalar(-1.5f), false);
  Value vmax = g.variable("vmax", scalar(2.0f), false);
  Value y_pc = ops::fake_quant_with_min_max_vars_per_channel(x, min, max, 4, true);
  Value y_v = ops::fake_quant_with_min_max_vars(x, vmin, vmax, 6);
  Value y_a = ops::fake_quant_with_min_max_args(x, -3.0, 3.0, 3);
  EXPECT_EQ(y_pc.shape(), Shape({kUnknown, 2, 4}));
  EXPECT_EQ(y_v.shape(), Shape({kUnknown, 2, 4}));
  EXPECT_EQ(y_a.shape(), Shape({kUnknown, 2, 4}));
  Executor ex(g, {y_pc, y_v, y_a});
  Rng rng(3);
  for (int64_t batch : {1, 5}) {
    const Tensor xt = testing::random_tensor({batch, 2, 4}, rng, -3, 3);
    auto r = ex.run({{x, xt}});
    EXPECT_EQ(r[0].shape(), Shape({batch, 2, 4}));
    EXPECT_TRUE(floats_equal(r[0], ops::fake_quant_with_min_max_vars_per_channel(
                                       xt, f32({-1, -2, 0, -0.5f}), f32({1, 2, 3, 0.5f}), 4, true)
                                       .to_vector<float>()));
    EXPECT_TRUE(floats_equal(r[1], vars(xt, -1.5f, 2.0f, 6).to_vector<float>()));
    EXPECT_TRUE(
        floats_equal(r[2], ops::fake_quant_with_min_max_args(xt, -3.0, 3.0, 3).to_vector<float>()));
  }
}

// ---- min_max --------------------------------------------------------------------------------

TEST(MinMax, PerTensorAndPerChannelInOnePass) {
  note_reference_tested("min_max");
  const Tensor x = f32({-1, 2, 0.5f, 0.25f, -3, 0.1f, 4, 1, -0.2f, -0.5f, 0.5f, 0.3f}, {2, 2, 3});
  for_each_kernel_choice([&] {
    auto t = ops::min_max(x);
    EXPECT_EQ(t.min.shape(), Shape({}));
    EXPECT_TRUE(floats_equal(t.min, {-3}));
    EXPECT_TRUE(floats_equal(t.max, {4}));
    auto c = ops::min_max(x, /*per_channel=*/true);
    EXPECT_EQ(c.min.shape(), Shape({3}));
    EXPECT_TRUE(floats_equal(c.min, {-1, -3, -0.2f}));
    EXPECT_TRUE(floats_equal(c.max, {4, 2, 0.5f}));
    // A scalar per tensor; a rank-1 tensor per channel is one row.
    auto s = ops::min_max(scalar(-2.5f));
    EXPECT_TRUE(floats_equal(s.min, {-2.5f}));
    EXPECT_TRUE(floats_equal(s.max, {-2.5f}));
    EXPECT_TRUE(floats_equal(ops::min_max(f32({1, -2}), true).min, {1, -2}));
  });
}

TEST(MinMax, NaNZerosInfinitiesAndEmptyTensors) {
  for_each_kernel_choice([] {
    // NaN anywhere makes both results NaN (per channel: that channel only).
    auto t = ops::min_max(f32({1, kNaN, -1}));
    EXPECT_TRUE(floats_equal(t.min, {kNaN}));
    EXPECT_TRUE(floats_equal(t.max, {kNaN}));
    auto c = ops::min_max(f32({1, 2, kNaN, 3}, {2, 2}), true);
    EXPECT_TRUE(floats_equal(c.min, {kNaN, 2}));
    EXPECT_TRUE(floats_equal(c.max, {kNaN, 3}));
    // Zeros come out as +0.0 whatever their order and sign.
    for (auto v : {std::vector<float>{-0.0f, 0.0f}, std::vector<float>{0.0f, -0.0f},
                   std::vector<float>{-0.0f}}) {
      auto z = ops::min_max(f32(v));
      EXPECT_FALSE(std::signbit(z.min.item<float>()));
      EXPECT_FALSE(std::signbit(z.max.item<float>()));
    }
    auto i = ops::min_max(f32({kInf, -kInf, 3}));
    EXPECT_TRUE(floats_equal(i.min, {-kInf}));
    EXPECT_TRUE(floats_equal(i.max, {kInf}));
    auto e = ops::min_max(Tensor::zeros({0, 2}));
    EXPECT_TRUE(floats_equal(e.min, {kInf}));
    EXPECT_TRUE(floats_equal(e.max, {-kInf}));
    auto ec = ops::min_max(Tensor::zeros({0, 2}), true);
    EXPECT_TRUE(floats_equal(ec.min, {kInf, kInf}));
    EXPECT_TRUE(floats_equal(ec.max, {-kInf, -kInf}));
  });
}

// min_max is a stop-gradient: autodiff sends nothing back to x through it. The finite-difference
// check agrees where the extremes are too large for the step (eps = 0.01) to move them, so every
// numeric derivative is 0 too; a rule that passed dy to the argmin/argmax would fail it.
TEST(MinMax, StopsTheGradient) {
  expect_gradients_match("min_max", {f32({-1e10f, 0.5f, 1e10f, 0.25f}, {2, 2})},
                         {{"per_channel", false}});
  expect_gradients_match("min_max", {f32({-1e10f, 1e10f, 1e10f, -1e10f}, {2, 2})},
                         {{"per_channel", true}});
  // Through a fake quant whose range comes from the batch: only the straight-through dx.
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown});
  auto r = ops::min_max(x);
  Value y = ops::fake_quant_with_min_max_vars(x, r.min, r.max);
  Value w = g.constant(f32({1, 2, 3, 4}));
  Value dx = gradients(ops::sum(w * y), {x})[0];
  Executor ex(g, {dx});
  EXPECT_TRUE(floats_equal(ex.run({{x, f32({-1, 0.3f, 2, 0.7f})}})[0], {1, 2, 3, 4}));
}

TEST(MinMax, Errors) {
  expect_throws_with<DTypeError>([] { ops::min_max(Tensor::zeros({2}, DType::kS32)); },
                                 "min_max: argument 'x': expected dtype f32");
  expect_throws_with<ShapeError>([] { ops::min_max(scalar(1), true); },
                                 "min_max: argument 'x': expected rank >= 1 for per_channel");
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, kUnknown, 8});
  auto c = ops::min_max(x, true);
  EXPECT_EQ(c.max.shape(), Shape({8}));
}

// ---- fast kernels ---------------------------------------------------------------------------

// Every fast kernel of `op` against the reference, bit for bit (any NaN matches any NaN: payloads
// are not part of the spec). Returns how many fast kernels ran.
int expect_fast_bitwise(const std::string& op, const std::vector<Tensor>& inputs,
                        const Attrs& attrs) {
  SCOPED_TRACE("fast vs reference of " + op + " {" + attrs.str() + "}");
  const OpDef& def = find_op(op);
  const std::vector<Tensor> ref = run_op(def, inputs, attrs, KernelChoice::kReference);
  int ran = 0;
  for (const FastKernel& fk : def.fast) {
    std::vector<Tensor> outs;
    if (!testing::run_listed_kernel(def, fk, inputs, attrs, outs)) continue;
    testing::note_kernel_checked(fk, inputs);
    ++ran;
    for (size_t k = 0; k < outs.size(); ++k) {
      const float* a = outs[k].data<float>();
      const float* b = ref[k].data<float>();
      int64_t bad = -1;
      for (int64_t i = 0; i < outs[k].numel() && bad < 0; ++i)
        if (std::isnan(a[i]) != std::isnan(b[i]) ||
            (!std::isnan(a[i]) && std::memcmp(&a[i], &b[i], sizeof(float)) != 0))
          bad = i;
      EXPECT_LT(bad, 0) << fk.name << " output " << k << " element " << bad << ": got "
                        << exact(a[bad]) << ", reference " << exact(b[bad]);
    }
  }
  // Inputs holding NaN or +-Inf (fast_test_input): the registry's non-finite check is done.
  bool non_finite = false;
  for (const Tensor& t : inputs)
    if (t.dtype() == DType::kF32)
      for (int64_t i = 0; i < t.numel(); ++i) non_finite |= !std::isfinite(t.data<float>()[i]);
  if (ran > 0 && non_finite) testing::nonfinite_checked_ops().insert(op);
  return ran;
}

// Uniform values over [-6, 6] with every 13th element on a special value: the nudged ends, an
// exact grid tie, +-0, +-inf (and NaN when `with_nan`).
Tensor fast_test_input(const Shape& shape, uint64_t seed, bool with_nan) {
  Rng rng(seed);
  Tensor t = testing::random_tensor(shape, rng, -6, 6);
  const float special[] = {-0.996078491f, 1.00392163f, 0.5f * (2.0f / 255.0f), -0.0f, 0.0f,
                           kInf,          -kInf,       2.0f / 255.0f * 3.5f,   kNaN};
  const int kinds = with_nan ? 9 : 8;
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); i += 13) p[i] = special[(i / 13) % kinds];
  return t;
}

// Sizes around the vector widths (8, 16) and the threading block (2^15).
const int64_t kFastSizes[] = {1, 7, 31, 1000, 100003};

// The listed fast kernels this CPU runs (the AVX-512 and the AVX2 build, each where supported).
int fast_kernel_count() {
  int n = 0;
  for (const FastKernel& fk : find_op("fake_quant_with_min_max_vars").fast) n += cpu_has(fk.isa);
  if (cpu_has(Isa::kAvx2)) {
    EXPECT_GE(n, 1) << "an AVX2 CPU must get the fast kernels";
  }
  return n;
}

TEST(FakeQuantFast, PerTensorKernelsMatchTheReferenceBitForBit) {
  const int fast_kernels = fast_kernel_count();
  for (int64_t n : kFastSizes) {
    SCOPED_TRACE("n = " + std::to_string(n));
    for (bool with_nan : {false, true}) {
      const Tensor x = fast_test_input({n}, 10 + n, with_nan);
      const Tensor dy = fast_test_input({n}, 20 + n, false);
      for (auto [bits, narrow] : {std::pair{8, false}, std::pair{4, true}, std::pair{16, false}}) {
        const Attrs a{{"num_bits", bits}, {"narrow_range", narrow}};
        Attrs args = a;
        args.set("min", -1.0).set("max", 1.0);
        EXPECT_EQ(expect_fast_bitwise("fake_quant_with_min_max_args", {x}, args), fast_kernels);
        expect_fast_bitwise("fake_quant_with_min_max_args_gradient", {dy, x}, args);
        for (auto [lo, hi] : {std::pair{-1.0f, 1.0f}, std::pair{-0.13f, 25.37f},
                              std::pair{0.0f, 0.0f}, std::pair{1.5f, 1.5f}}) {
          SCOPED_TRACE("range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
          expect_fast_bitwise("fake_quant_with_min_max_vars", {x, scalar(lo), scalar(hi)}, a);
          expect_fast_bitwise("fake_quant_with_min_max_vars_gradient",
                              {dy, x, scalar(lo), scalar(hi)}, a);
        }
      }
      EXPECT_EQ(expect_fast_bitwise("min_max", {x}, {{"per_channel", false}}), fast_kernels);
      if (!with_nan) {
        // The shared helper too (exact tolerances; it takes only finite values), so the registry
        // sees the kernels checked.
        Rng rng(static_cast<uint64_t>(n));
        const Tensor xf = testing::random_tensor({n}, rng, -2, 2);
        const Tensor dyf = testing::random_tensor({n}, rng, -1, 1);
        const Attrs a{{"num_bits", 8}, {"narrow_range", false}};
        testing::expect_fast_matches_reference("fake_quant_with_min_max_vars_gradient",
                                               {dyf, xf, scalar(-1), scalar(1)}, a, 0, 0);
        testing::expect_fast_matches_reference("min_max", {xf}, {{"per_channel", false}}, 0, 0);
      }
    }
  }
}

TEST(FakeQuantFast, PerChannelKernelsMatchTheReferenceBitForBit) {
  for (int64_t d : {1, 3, 64, 17}) {
    for (int64_t rows : {1, 5, 1000}) {
      SCOPED_TRACE("[" + std::to_string(rows) + ", " + std::to_string(d) + "]");
      for (bool with_nan : {false, true}) {
        const Tensor x = fast_test_input({rows, d}, 30 + d * rows, with_nan);
        const Tensor dy = fast_test_input({rows, d}, 40 + d * rows, false);
        // Ranges of every kind, one per channel, including [0, 0] and an equal nonzero pair.
        Rng rng(static_cast<uint64_t>(d));
        Tensor min({d}, DType::kF32), max({d}, DType::kF32);
        for (int64_t c = 0; c < d; ++c) {
          float lo = rng.uniform(-4, 1), hi = rng.uniform(-1, 4);
          if (lo > hi) std::swap(lo, hi);
          if (c % 11 == 5) lo = hi = 0;
          if (c % 11 == 7) lo = hi = 1.5f;
          min.data<float>()[c] = lo;
          max.data<float>()[c] = hi;
        }
        for (auto [bits, narrow] : {std::pair{8, true}, std::pair{3, false}}) {
          const Attrs a{{"num_bits", bits}, {"narrow_range", narrow}};
          EXPECT_EQ(
              expect_fast_bitwise("fake_quant_with_min_max_vars_per_channel", {x, min, max}, a),
              fast_kernel_count());
          expect_fast_bitwise("fake_quant_with_min_max_vars_per_channel_gradient",
                              {dy, x, min, max}, a);
        }
        expect_fast_bitwise("min_max", {x}, {{"per_channel", true}});
        if (!with_nan) {
          Rng frng(static_cast<uint64_t>(rows));
          testing::expect_fast_matches_reference("min_max",
                                                 {testing::random_tensor({rows, d}, frng, -2, 2)},
                                                 {{"per_channel", true}}, 0, 0);
        }
      }
    }
  }
}

// Sums split across threads by fixed blocks (per tensor) or channels (per channel), so the
// results are the same bits at any thread count.
TEST(FakeQuantFast, ResultsDoNotDependOnTheThreadCount) {
  const int saved = num_threads();
  Rng rng(5);
  const Tensor x = testing::random_tensor({300001}, rng, -3, 3);
  const Tensor dy = testing::random_tensor({300001}, rng, -1, 1);
  const Tensor xw = testing::random_tensor({2000, 96}, rng, -3, 3);
  const Tensor dyw = testing::random_tensor({2000, 96}, rng, -1, 1);
  const Tensor cmin = Tensor::full({96}, -1.0), cmax = Tensor::full({96}, 1.5);
  // Wide rows (>= 512 channels, a tail of 8): the per-channel gradient splits channels between
  // threads.
  const Tensor xv = testing::random_tensor({100, 1000}, rng, -3, 3);
  const Tensor dyv = testing::random_tensor({100, 1000}, rng, -1, 1);
  const Tensor vmin = testing::random_tensor({1000}, rng, -2, -0.5);
  const Tensor vmax = testing::random_tensor({1000}, rng, 0.5, 2);
  std::vector<std::vector<Tensor>> results;
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    std::vector<Tensor> r;
    for_each_kernel_choice([&] {
      auto g = ops::fake_quant_with_min_max_vars_gradient(dy, x, scalar(-1), scalar(1.5f));
      auto gc = ops::fake_quant_with_min_max_vars_per_channel_gradient(dyw, xw, cmin, cmax);
      auto m = ops::min_max(xw, true);
      for (const Tensor& t : {g.dx, g.dmin, g.dmax, gc.dx, gc.dmin, gc.dmax, m.min, m.max,
                              ops::fake_quant_with_min_max_vars(x, scalar(-1), scalar(1.5f))})
        r.push_back(t);
      auto gv = ops::fake_quant_with_min_max_vars_per_channel_gradient(dyv, xv, vmin, vmax);
      for (const Tensor& t : {gv.dx, gv.dmin, gv.dmax}) r.push_back(t);
    });
    results.push_back(r);
  }
  set_num_threads(saved);
  ASSERT_EQ(results[0].size(), results[1].size());
  for (size_t i = 0; i < results[0].size(); ++i)
    EXPECT_TRUE(floats_equal(results[1][i], results[0][i].to_vector<float>())) << "result " << i;
  // And the fast and reference kernels agree on the big sums (the same run, both choices).
  EXPECT_TRUE(floats_equal(results[0][1], results[0][13].to_vector<float>()));
  EXPECT_TRUE(floats_equal(results[0][10], results[0][22].to_vector<float>()));  // wide dmin
  EXPECT_NE(results[0][1].item<float>(), 0.0f);
}

// ---- errors ---------------------------------------------------------------------------------

TEST(FakeQuantErrors, ArgsRangeMustBeIncreasing) {
  const Tensor x = f32({0.5f});
  expect_throws_with<ValueError>([&] { ops::fake_quant_with_min_max_args(x, 2.0, 1.0); },
                                 "expected min < max (as f32) but found min 2, max 1");
  expect_throws_with<ValueError>([&] { ops::fake_quant_with_min_max_args(x, 0.5, 0.5); },
                                 "min < max");
  expect_throws_with<ValueError>([&] { ops::fake_quant_with_min_max_args(x, std::nan(""), 1.0); },
                                 "min < max");
  // Distinct doubles that are the same f32 are an empty range too.
  expect_throws_with<ValueError>([&] { ops::fake_quant_with_min_max_args(x, 1.0, 1.0 + 1e-12); },
                                 "min < max");
  expect_throws_with<ValueError>(
      [&] { ops::fake_quant_with_min_max_args_gradient(x, x, 1.0, -1.0); }, "min < max");
  // Symbolic: rejected when the node is built.
  Graph g;
  Value v = g.placeholder("x", DType::kF32, {kUnknown});
  expect_throws_with<ValueError>([&] { ops::fake_quant_with_min_max_args(v, 3.0, -3.0); },
                                 "fake_quant_with_min_max_args");
}

TEST(FakeQuantErrors, WrongShapes) {
  const Tensor x = f32({1, 2, 3, 4, 5, 6}, {2, 3});
  expect_throws_with<ShapeError>(
      [&] { ops::fake_quant_with_min_max_vars(x, f32({-1}), scalar(1)); },
      "fake_quant_with_min_max_vars: argument 'min': expected a scalar "
      "(shape []) but found [1]");
  expect_throws_with<ShapeError>(
      [&] { ops::fake_quant_with_min_max_vars(x, scalar(-1), f32({1})); },
      "argument 'max': expected a scalar");
  expect_throws_with<ShapeError>(
      [&] {
        ops::fake_quant_with_min_max_vars_per_channel(x, f32({-1, -1}), f32({1, 1, 1}));
      },
      "fake_quant_with_min_max_vars_per_channel: argument 'min': expected shape [3] (one value "
      "per channel, the last dim of x [2,3]) but found [2]");
  expect_throws_with<ShapeError>(
      [&] {
        ops::fake_quant_with_min_max_vars_per_channel(x, f32({-1, -1, -1}), scalar(1));
      },
      "argument 'max': expected shape [3]");
  expect_throws_with<ShapeError>(
      [&] { ops::fake_quant_with_min_max_vars_per_channel(scalar(1), f32({-1}), f32({1})); },
      "argument 'x': expected rank >= 1");
  expect_throws_with<ShapeError>(
      [&] {
        ops::fake_quant_with_min_max_args_gradient(f32({1, 2}), x);
      },
      "fake_quant_with_min_max_args_gradient: argument 'dy': expected the shape of 'x' [2,3] but "
      "found [2]");
  expect_throws_with<ShapeError>(
      [&] { ops::fake_quant_with_min_max_vars_gradient(f32({1}), x, scalar(-1), scalar(1)); },
      "argument 'dy'");
  expect_throws_with<ShapeError>(
      [&] { ops::fake_quant_with_min_max_vars_per_channel_gradient(x, x, f32({-1}), f32({1})); },
      "argument 'min': expected shape [3]");
  // Symbolic: a known channel count that disagrees is caught while building.
  Graph g;
  Value v = g.placeholder("x", DType::kF32, {kUnknown, 3});
  Value m4 = g.placeholder("m", DType::kF32, {4});
  expect_throws_with<ShapeError>([&] { ops::fake_quant_with_min_max_vars_per_channel(v, m4, m4); },
                                 "expected shape [3]");
}

TEST(FakeQuantErrors, WrongDTypes) {
  const Tensor x = f32({1, 2});
  const Tensor xi = Tensor::zeros({2}, DType::kS32);
  const Tensor si = Tensor::zeros({}, DType::kS32);
  expect_throws_with<DTypeError>([&] { ops::fake_quant_with_min_max_args(xi); },
                                 "fake_quant_with_min_max_args: argument 'x': expected dtype f32 "
                                 "but found s32[2]");
  expect_throws_with<DTypeError>([&] { ops::fake_quant_with_min_max_vars(x, si, scalar(1)); },
                                 "argument 'min': expected dtype f32 but found s32[]");
  expect_throws_with<DTypeError>(
      [&] {
        ops::fake_quant_with_min_max_vars_per_channel(x, f32({-1, -1}), xi);
      },
      "argument 'max': expected dtype f32");
  expect_throws_with<DTypeError>(
      [&] { ops::fake_quant_with_min_max_vars_gradient(xi, x, scalar(-1), scalar(1)); },
      "argument 'dy': expected dtype f32");
}

}  // namespace
}  // namespace lowbit
