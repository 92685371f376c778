// Tests of the TF range trackers (include/lowbit/quant/range.h): every tf_range_tracking case of
// ../shared/testdata/fakequant_examples.json bit for bit, hand-computed updates of each mode
// (expected values from the spec's f32 formulas, computed separately), per-channel tracking, and
// a tracker running as state updates in a graph.
#include "lowbit/quant/range.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "lowbit/graph.h"
#include "testing/op_testing.h"

namespace lowbit::quant {
namespace {

using testing::expect_throws_with;

Tensor f32(std::vector<float> v, Shape s) { return Tensor::from_vector<float>(v, s); }
Tensor f32(std::vector<float> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return Tensor::from_vector<float>(v, {n});
}

// == per element (the spec's comparison), NaN equal to NaN.
::testing::AssertionResult floats_equal(const Tensor& got, const std::vector<float>& want) {
  if (!got.defined() || got.numel() != static_cast<int64_t>(want.size()))
    return ::testing::AssertionFailure() << "got " << (got.defined() ? got.str() : "undefined")
                                         << ", want " << want.size() << " values";
  for (size_t i = 0; i < want.size(); ++i) {
    const float g = got.data<float>()[i];
    if (std::isnan(want[i]) ? !std::isnan(g) : g != want[i])
      return ::testing::AssertionFailure() << "element " << i << ": got " << g << ", want "
                                           << want[i] << " (got " << got.str(9) << ")";
  }
  return ::testing::AssertionSuccess();
}

float json_float(const nlohmann::json& j) {
  if (j.is_string()) {
    const std::string s = j.get<std::string>();
    if (s == "nan") return std::numeric_limits<float>::quiet_NaN();
    if (s == "inf") return std::numeric_limits<float>::infinity();
    if (s == "-inf") return -std::numeric_limits<float>::infinity();
    ADD_FAILURE() << "unexpected float string '" << s << "'";
  }
  return static_cast<float>(j.get<double>());
}

TEST(RangeTrackingGolden, EveryTfRangeTrackingCase) {
  const std::string path = testing::shared_dir() + "/testdata/fakequant_examples.json";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot open " << path;
  const nlohmann::json cases = nlohmann::json::parse(in).at("cases");
  int ran = 0;
  for (const auto& c : cases) {
    if (c.at("kind") != "tf_range_tracking") continue;
    SCOPED_TRACE(c.at("id").get<std::string>());
    const auto& p = c.at("params");
    RangeConfig cfg;
    // The vectors' "moving_average" is TFMOT's (no bias correction).
    cfg.mode = parse_range_mode(p.at("mode").get<std::string>());
    cfg.num_bits = p.at("num_bits");
    cfg.narrow_range = p.at("narrow_range");
    cfg.symmetric = p.at("symmetric");
    cfg.ema_decay = p.at("ema_decay");
    cfg.init_min = json_float(p.at("init_min"));
    cfg.init_max = json_float(p.at("init_max"));
    RangeState<Tensor> s = initial_range_state(cfg);
    const auto& batches = c.at("inputs").at("batches");
    const auto& want = c.at("expected").at("min_max_after_each_batch");
    ASSERT_EQ(batches.size(), want.size());
    for (size_t b = 0; b < batches.size(); ++b) {
      SCOPED_TRACE("batch " + std::to_string(b));
      std::vector<float> x;
      for (const auto& v : batches[b]) x.push_back(json_float(v));
      s = update_range(s, f32(x), cfg);
      EXPECT_TRUE(floats_equal(s.min, {json_float(want[b][0])}));
      EXPECT_TRUE(floats_equal(s.max, {json_float(want[b][1])}));
    }
    ++ran;
  }
  EXPECT_GE(ran, 2);
}

// The batches of the golden cases, reused by the hand-computed tests.
const std::vector<Tensor>& batches() {
  static const std::vector<Tensor> b = {f32({-0.5f, 0.25f, 3}), f32({-1, 2, 0.5f}),
                                        f32({0.1f, 0.2f, 0.3f})};
  return b;
}

struct Expected {
  float min, max;
};

void expect_track(const RangeConfig& cfg, const std::vector<Expected>& want, double rtol = 0) {
  RangeState<Tensor> s = initial_range_state(cfg);
  for (size_t b = 0; b < want.size(); ++b) {
    SCOPED_TRACE("batch " + std::to_string(b));
    s = update_range(s, batches()[b], cfg);
    if (rtol == 0) {
      EXPECT_TRUE(floats_equal(s.min, {want[b].min}));
      EXPECT_TRUE(floats_equal(s.max, {want[b].max}));
    } else {
      EXPECT_NEAR(s.min.item<float>(), want[b].min, rtol * std::abs(want[b].min));
      EXPECT_NEAR(s.max.item<float>(), want[b].max, rtol * std::abs(want[b].max));
    }
  }
}

TEST(RangeTracking, MovingAverageWithoutDebiasStartsFromTheInitialRange) {
  RangeConfig cfg;  // TFMOT activations: asymmetric, decay 0.999, init -6 / 6
  expect_track(
      cfg, {{-5.99450016f, 5.99700022f}, {-5.98950577f, 5.99300337f}, {-5.98351622f, 5.98731041f}});
  cfg.ema_decay = 0.9;
  expect_track(
      cfg, {{-5.44999981f, 5.69999981f}, {-5.00499964f, 5.32999992f}, {-4.50449944f, 4.82700014f}});
}

// (1 - d)^n is powf: exact to its last bit only where powf is, hence the ulp-level tolerance.
constexpr double kPowRtol = 3e-7;

TEST(RangeTracking, DebiasedMovingAverageIgnoresTheInitialRange) {
  RangeConfig cfg;
  cfg.mode = RangeMode::kMovingAverageDebiased;
  cfg.init_min = -100;  // never read
  cfg.init_max = 100;
  // First update: r * d / (1 - f32(1 - d)), i.e. r up to a relative 1.3e-5 at decay 0.999.
  expect_track(
      cfg,
      {{-0.500006437f, 3.00003862f}, {-0.750139773f, 2.49979877f}, {-0.499836504f, 1.76577795f}},
      kPowRtol);
  cfg.ema_decay = 0.9;
  expect_track(
      cfg,
      {{-0.499999881f, 2.99999952f}, {-0.763157666f, 2.4736836f}, {-0.481549621f, 1.67158628f}},
      kPowRtol);
  RangeState<Tensor> s = initial_range_state(cfg);
  ASSERT_TRUE(s.count.defined());
  s = update_range(s, batches()[0], cfg);
  s = update_range(s, batches()[1], cfg);
  EXPECT_TRUE(floats_equal(s.count, {2}));
  EXPECT_EQ(s.biased_min.shape(), Shape({}));
}

TEST(RangeTracking, LastValueAndAllValuesKeepZeroInside) {
  RangeConfig cfg;
  cfg.mode = RangeMode::kLastValue;
  expect_track(cfg, {{-0.5f, 3}, {-1, 2}, {0, 0.3f}});
  cfg.mode = RangeMode::kAllValues;
  cfg.init_min = cfg.init_max = 0;
  expect_track(cfg, {{-0.5f, 3}, {-1, 3}, {-1, 3}});
  EXPECT_FALSE(initial_range_state(cfg).count.defined());
}

TEST(RangeTracking, SymmetricWideUsesTheTwosComplementRatio) {
  // 8 bit wide: ratio -(256 - 2) / 256 = -0.9921875.
  const Tensor bmin = Tensor::scalar(-0.5f), bmax = Tensor::scalar(3);
  auto r = range_target(bmin, bmax, /*symmetric=*/true, 8, /*narrow_range=*/false);
  EXPECT_TRUE(floats_equal(r.min, {-3.02362204f}));  // 3 / -0.9921875
  EXPECT_TRUE(floats_equal(r.max, {3}));
  r = range_target(Tensor::scalar(-4), Tensor::scalar(1), true, 8, false);
  EXPECT_TRUE(floats_equal(r.min, {-4}));
  EXPECT_TRUE(floats_equal(r.max, {3.96875f}));  // -4 * -0.9921875
  r = range_target(Tensor::scalar(-4), Tensor::scalar(1), true, 8, /*narrow_range=*/true);
  EXPECT_TRUE(floats_equal(r.min, {-4}));
  EXPECT_TRUE(floats_equal(r.max, {4}));
  // 2 bit wide: ratio -(4 - 2) / 4 = -0.5.
  r = range_target(Tensor::scalar(-1), Tensor::scalar(1), true, 2, false);
  EXPECT_TRUE(floats_equal(r.min, {-2}));
  EXPECT_TRUE(floats_equal(r.max, {1}));
  // Asymmetric: 0 is pulled in.
  r = range_target(Tensor::scalar(0.5f), Tensor::scalar(2), false, 8, false);
  EXPECT_TRUE(floats_equal(r.min, {0}));
  EXPECT_TRUE(floats_equal(r.max, {2}));
}

TEST(RangeTracking, PerChannelTracksTheLastAxis) {
  RangeConfig cfg;
  cfg.mode = RangeMode::kLastValue;
  cfg.per_channel = true;
  cfg.symmetric = true;
  cfg.narrow_range = true;
  RangeState<Tensor> s = initial_range_state(cfg, 3);
  EXPECT_TRUE(floats_equal(s.min, {-6, -6, -6}));
  // A conv-kernel-like [2, 2, 3]: channel c = last index.
  const Tensor w = f32({-1, 2, 0.5f, 0.25f, -3, 0.1f, 4, 1, -0.2f, -0.5f, 0.5f, 0.3f}, {2, 2, 3});
  s = update_range(s, w, cfg);
  EXPECT_TRUE(floats_equal(s.min, {-4, -3, -0.5f}));
  EXPECT_TRUE(floats_equal(s.max, {4, 3, 0.5f}));
  cfg.mode = RangeMode::kMovingAverageDebiased;
  cfg.symmetric = false;
  s = initial_range_state(cfg, 3);
  EXPECT_EQ(s.biased_max.shape(), Shape({3}));
  EXPECT_EQ(s.count.shape(), Shape({}));
  s = update_range(s, w, cfg);
  EXPECT_EQ(s.min.shape(), Shape({3}));
  EXPECT_NEAR(s.min.data<float>()[1], -3.0f, 3 * 1.3e-5);
  EXPECT_NEAR(s.max.data<float>()[2], 0.5f, 0.5 * 1.3e-5);
}

TEST(RangeTracking, NaNInABatchMakesTheRangeNaN) {
  RangeConfig cfg;
  RangeState<Tensor> s = initial_range_state(cfg);
  s = update_range(s, f32({1, std::numeric_limits<float>::quiet_NaN(), -1}), cfg);
  EXPECT_TRUE(std::isnan(s.min.item<float>()));
  EXPECT_TRUE(std::isnan(s.max.item<float>()));
}

// The tracker as a layer would use it: state in non-trainable variables, updated by the
// executor after each step, the fake quant reading the just-updated range; no gradient reaches x
// through the statistics.
TEST(RangeTracking, RunsAsStateUpdatesInAGraph) {
  RangeConfig cfg;
  cfg.ema_decay = 0.9;
  const RangeState<Tensor> init = initial_range_state(cfg);
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown});
  RangeState<Value> s{g.variable("min", init.min, false), g.variable("max", init.max, false)};
  RangeState<Value> next = update_range(s, x, cfg);
  Value y = ops::fake_quant_with_min_max_vars(x, next.min, next.max);
  Value dx = gradients(ops::sum(y), {x})[0];
  Executor ex(g, {y, next.min, next.max, dx}, {{s.min, next.min}, {s.max, next.max}});
  RangeState<Tensor> eager = initial_range_state(cfg);
  for (size_t b = 0; b < batches().size(); ++b) {
    SCOPED_TRACE("batch " + std::to_string(b));
    auto r = ex.run({{x, batches()[b]}});
    eager = update_range(eager, batches()[b], cfg);
    EXPECT_TRUE(floats_equal(r[1], eager.min.to_vector<float>()));
    EXPECT_TRUE(floats_equal(r[2], eager.max.to_vector<float>()));
    EXPECT_TRUE(floats_equal(g.variable_tensor(s.min), eager.min.to_vector<float>()));
    EXPECT_TRUE(floats_equal(
        r[0],
        ops::fake_quant_with_min_max_vars(batches()[b], eager.min, eager.max).to_vector<float>()));
    // Only the straight-through dx: the inputs are inside the range, so dx = 1 everywhere.
    EXPECT_TRUE(floats_equal(r[3], {1, 1, 1}));
  }
}

TEST(RangeTracking, ConfigErrors) {
  RangeConfig cfg;
  cfg.num_bits = 1;
  expect_throws_with<ValueError>(
      [&] { initial_range_state(cfg); },
      "RangeConfig: 'num_bits': expected an integer in [2, 16] but found 1");
  cfg = {};
  cfg.ema_decay = 1.5;
  expect_throws_with<ValueError>([&] { validate(cfg); }, "'ema_decay'");
  cfg = {};
  cfg.init_min = 1;
  cfg.init_max = -1;
  expect_throws_with<ValueError>([&] { validate(cfg); }, "init_min <= init_max");
  cfg = {};
  cfg.per_channel = true;
  expect_throws_with<ValueError>([&] { initial_range_state(cfg); }, "argument 'channels'");
  expect_throws_with<ValueError>([&] { parse_range_mode("ema"); },
                                 "expected one of last_value, moving_average, "
                                 "moving_average_debiased, all_values but found 'ema'");
  for (RangeMode m : {RangeMode::kLastValue, RangeMode::kMovingAverage,
                      RangeMode::kMovingAverageDebiased, RangeMode::kAllValues})
    EXPECT_EQ(parse_range_mode(range_mode_name(m)), m);
  // A per-channel state fed a tensor with another channel count fails in the ops.
  cfg = {};
  cfg.per_channel = true;
  const RangeState<Tensor> s = initial_range_state(cfg, 3);
  EXPECT_THROW(update_range(s, f32({1, 2, 3, 4}, {2, 2}), cfg), ShapeError);
}

}  // namespace
}  // namespace lowbit::quant
