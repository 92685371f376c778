// The integer-only inference ops (include/lowbit/ops/int8.h) against an independent route to the
// same codes: the int32 accumulator from the FLOAT ops on exact small integers (conv2d, matmul,
// pools: every value and partial sum is an integer below 2^24, so f32 is exact), then the output
// stage of fixed_point.h (its primitives are checked against gemmlowp's golden vectors in
// tests/quant/fixed_point_test.cc). Also: every code within 1 of round(acc * M) (the double
// rounding costs at most one), thread-count independence, and the errors.
#include "lowbit/ops/int8.h"

#include <gtest/gtest.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "lowbit/fixed_point.h"
#include "lowbit/isa.h"
#include "lowbit/op.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::expect_fast_matches_reference;
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

// ---- fast kernels: bit for bit the reference ---------------------------------------------------

struct Quant {
  bool per_channel = true;
  std::string act = "none";
  int64_t zp_in = 7, zp_out = -5;
  std::string rounding = "double";
  double input_scale = 0.031, output_scale = 0.1;
};

Attrs fast_attrs(int64_t channels, const Quant& q) {
  std::vector<double> sw;
  for (int64_t c = 0; c < (q.per_channel ? channels : 1); ++c)
    sw.push_back(0.002 + 0.0005 * static_cast<double>(c % 37));
  return {{"input_scale", q.input_scale},   {"input_zero_point", q.zp_in},   {"weight_scales", sw},
          {"output_scale", q.output_scale}, {"output_zero_point", q.zp_out}, {"activation", q.act},
          {"rounding", q.rounding}};
}

// Every listed row that runs here against the reference (exact), on random codes; returns how
// many rows ran.
int fast_conv_case(const Shape& xs, const Shape& ws, const Attrs& window, const Quant& q,
                   uint64_t seed, const std::function<bool(const FastKernel&)>& which = {},
                   int64_t bias_range = 20000) {
  Rng rng(seed);
  const Tensor x = random_int_tensor(xs, rng, -128, 127, DType::kS8);
  const Tensor w = random_int_tensor(ws, rng, -128, 127, DType::kS8);
  const Tensor b = random_int_tensor({ws[3]}, rng, -bias_range, bias_range, DType::kS32);
  Attrs a = fast_attrs(ws[3], q);
  for (const auto& [k, v] : window.items()) a.set(k, v);
  SCOPED_TRACE("x " + xs.str() + " w " + ws.str() + " " + a.str());
  return expect_fast_matches_reference("qconv2d", {x, w, b}, a, 0.0, 0.0, which);
}

// The qconv2d rows that must run on this geometry: the general rows always, the depthwise row
// when groups == in_c > 1 (k_h <= 16), the few-input-channel row when groups == 1, in_c <= 4
// and the dilation along w is 1 (kernels/fast/int8.h).
int conv_rows(const Shape& xs, const Shape& ws, const Attrs& window) {
  const int64_t groups = window.has("groups") ? window.i("groups") : 1;
  const int64_t in_c = xs[3];
  const int64_t dil_w = window.has("dilations") ? window.ints("dilations")[1] : 1;
  int n = 0;
  for (const FastKernel& fk : find_op("qconv2d").fast) {
    if (!cpu_has(fk.isa)) continue;
    if (fk.name.find("depthwise") != std::string::npos)
      n += groups > 1 && groups == in_c && ws[0] <= 16;
    else if (fk.name.find("fewc") != std::string::npos)
      n += groups == 1 && in_c <= 4 && dil_w == 1;
    else
      ++n;
  }
  return n;
}

bool row_named(const FastKernel& fk, const char* part) {
  return fk.name.find(part) != std::string::npos;
}

int fast_fc_case(const Shape& xs, int64_t units, const Quant& q, uint64_t seed) {
  Rng rng(seed);
  const int64_t k = xs[xs.rank() - 1];
  const Tensor x = random_int_tensor(xs, rng, -128, 127, DType::kS8);
  const Tensor w = random_int_tensor({k, units}, rng, -128, 127, DType::kS8);
  const Tensor b = random_int_tensor({units}, rng, -20000, 20000, DType::kS32);
  SCOPED_TRACE("x " + xs.str() + " units " + std::to_string(units));
  return expect_fast_matches_reference("qfully_connected", {x, w, b}, fast_attrs(units, q), 0.0,
                                       0.0);
}

// The rows that this CPU can run (0 on a CPU without AVX2: nothing to compare).
int runnable_rows(const std::string& op) {
  int n = 0;
  for (const FastKernel& fk : find_op(op).fast) n += cpu_has(fk.isa) ? 1 : 0;
  return n;
}

TEST(QConv2DFast, MatchesTheReferenceOnEdgeShapes) {
  const Attrs same{{"padding", "same"}};
  uint64_t seed = 100;
  // Output channels around both tile widths (16 for AVX2, 32 for AVX-512), odd input channels,
  // batch 1 and 2, pixel counts that leave row tails.
  for (int64_t oc : {1, 7, 15, 16, 17, 31, 32, 33, 64, 65})
    for (int64_t ic : {1, 3, 5, 16})
      EXPECT_EQ(fast_conv_case({oc % 2 ? 1 : 2, 5, 6, ic}, {3, 3, ic, oc}, same, {}, seed++),
                conv_rows({1, 5, 6, ic}, {3, 3, ic, oc}, same));
  const std::vector<std::pair<std::pair<Shape, Shape>, Attrs>> windows = {
      {{{1, 7, 7, 5}, {3, 3, 5, 7}}, {}},  // valid
      {{{2, 9, 8, 3}, {3, 3, 3, 9}}, {{"strides", {2, 2}}, {"padding", "same"}}},
      {{{1, 9, 9, 4}, {3, 2, 4, 33}}, {{"dilations", {2, 2}}}},
      {{{1, 9, 9, 4}, {3, 3, 4, 5}}, {{"dilations", {2, 2}}, {"padding", "same"}}},
      {{{2, 8, 7, 6}, {2, 2, 6, 3}}, {{"strides", {2, 1}}, {"padding", "same"}}},
      {{{1, 4, 4, 17}, {1, 1, 17, 33}}, {}},
      {{{2, 6, 6, 8}, {3, 3, 4, 6}}, {{"groups", 2}, {"padding", "same"}}},
      {{{1, 6, 6, 9}, {1, 1, 3, 36}}, {{"groups", 3}}},
      {{{1, 5, 5, 4}, {3, 3, 1, 8}}, {{"groups", 4}, {"strides", 2}}},  // multiplier 2
      // depthwise: channels below, at and above the vector widths
      {{{2, 6, 6, 6}, {3, 3, 1, 6}}, {{"groups", 6}, {"padding", "same"}}},
      {{{1, 7, 7, 17}, {3, 3, 1, 17}}, {{"groups", 17}, {"padding", "same"}}},
      {{{1, 7, 6, 33}, {3, 3, 1, 33}}, {{"groups", 33}, {"strides", 2}, {"padding", "same"}}},
      {{{2, 9, 9, 16}, {3, 3, 1, 16}}, {{"groups", 16}, {"dilations", {2, 2}}}},
      {{{1, 5, 5, 8}, {5, 5, 1, 8}}, {{"groups", 8}, {"padding", "same"}}},
      // large enough to split across threads
      {{{2, 16, 16, 32}, {3, 3, 32, 64}}, {{"padding", "same"}}},
      {{{2, 40, 40, 96}, {3, 3, 1, 96}}, {{"groups", 96}, {"padding", "same"}}},
  };
  for (const auto& [shapes, window] : windows)
    EXPECT_EQ(fast_conv_case(shapes.first, shapes.second, window, {}, seed++),
              conv_rows(shapes.first, shapes.second, window));
}

TEST(QConv2DFast, MatchesTheReferenceForEveryOutputStage) {
  const Attrs same{{"padding", "same"}}, dw{{"groups", 17}, {"padding", "same"}};
  const int rows = conv_rows({1, 5, 5, 3}, {3, 3, 3, 33}, same);
  const int dw_rows = conv_rows({1, 6, 6, 17}, {3, 3, 1, 17}, dw);
  std::vector<Quant> quants;
  for (const char* rounding : {"double", "single"})
    for (const char* act : {"none", "relu", "relu6"})
      for (const bool pc : {true, false})
        for (const auto& [zi, zo] : std::vector<std::pair<int64_t, int64_t>>{
                 {-128, -128}, {127, 127}, {-128, 127}, {0, 0}})
          quants.push_back(
              {.per_channel = pc, .act = act, .zp_in = zi, .zp_out = zo, .rounding = rounding});
  // Multipliers >= 1 (left shifts that saturate int32), tiny ones (right shifts near 31).
  for (const char* rounding : {"double", "single"}) {
    quants.push_back(
        {.zp_in = -128, .rounding = rounding, .input_scale = 1.0, .output_scale = 1e-6});
    quants.push_back({.rounding = rounding, .input_scale = 0.5, .output_scale = 1e-3});
    quants.push_back({.rounding = rounding, .input_scale = 1e-3, .output_scale = 1e3});
  }
  uint64_t seed = 300;
  for (const Quant& q : quants) {
    EXPECT_EQ(fast_conv_case({1, 5, 5, 3}, {3, 3, 3, 33}, same, q, seed++), rows);
    EXPECT_EQ(fast_conv_case({1, 6, 6, 17}, {3, 3, 1, 17}, dw, q, seed++), dw_rows);
    // 81 channels: a 64-channel chunk (the depthwise row's packed order) and a 17-channel tail.
    EXPECT_EQ(fast_conv_case({1, 5, 4, 81}, {3, 3, 1, 81}, {{"groups", 81}, {"padding", "same"}}, q,
                             seed++),
              dw_rows);
    // Depthwise with multiplier 2, and an input with 9 channels (the general rows).
    EXPECT_EQ(fast_conv_case({1, 5, 4, 9}, {3, 3, 1, 18}, {{"groups", 9}, {"padding", "same"}}, q,
                             seed++),
              conv_rows({1, 5, 4, 9}, {3, 3, 1, 18}, {{"groups", 9}}));
  }
  // A narrower clamp (act_min / act_max).
  Attrs a{{"padding", "same"}, {"act_min", -20}, {"act_max", 30}};
  EXPECT_EQ(fast_conv_case({1, 5, 5, 3}, {3, 3, 3, 20}, a, {}, seed++), rows);
  Attrs ad{{"padding", "same"}, {"groups", 17}, {"act_min", -20}, {"act_max", 30}};
  EXPECT_EQ(fast_conv_case({1, 6, 6, 17}, {3, 3, 1, 17}, ad, {}, seed++), dw_rows);
  Attrs ad81{{"padding", "same"}, {"groups", 81}, {"act_min", -20}, {"act_max", 30}};
  EXPECT_EQ(fast_conv_case({1, 5, 4, 81}, {3, 3, 1, 81}, ad81, {}, seed++), dw_rows);
  // Biases near +-2^30: the lean output stage declines (kernels/fast/int8.cc, set_lean); the
  // accumulators may wrap modulo 2^32 as the reference's int32 arithmetic does not, so keep the
  // sums inside int32 (|bias| <= 2^30, 9 taps of at most 255 * 128).
  for (const bool pc : {true, false}) {
    const Quant q{.per_channel = pc, .act = "relu6"};
    EXPECT_EQ(fast_conv_case({1, 6, 6, 17}, {3, 3, 1, 17}, dw, q, seed++, {}, int64_t{1} << 30),
              dw_rows);
    EXPECT_EQ(fast_conv_case({1, 5, 4, 81}, {3, 3, 1, 81}, {{"groups", 81}, {"padding", "same"}}, q,
                             seed++, {}, int64_t{1} << 30),
              dw_rows);
    EXPECT_EQ(fast_conv_case({1, 5, 5, 3}, {3, 3, 3, 33}, same, q, seed++, {}, int64_t{1} << 30),
              rows);
  }
}

// The depthwise row (groups == in_c) on the edge shapes of its loops: channels around the 16-lane
// blocks and the 64-channel chunks, depth multipliers 1 and 2, kernels 1x1 / 3x3 / 5x5, strides,
// dilation, same / valid padding, batch 1 and 3, inputs smaller than the kernel (same padding).
TEST(QConv2DFast, DepthwiseRowMatchesTheReference) {
  const int want = cpu_has(Isa::kAvx512Vnni) ? 1 : 0;
  auto dw_row = [](const FastKernel& fk) { return row_named(fk, "depthwise"); };
  uint64_t seed = 900;
  int cases = 0;
  for (int64_t c : {2, 15, 16, 17, 31, 32, 33, 65, 145})
    for (int64_t mult : {1, 2})
      for (int64_t k : {1, 3, 5})
        for (int64_t stride : {1, 2})
          for (int64_t dil : {1, 2})
            for (const bool same : {true, false}) {
              const int64_t k_eff = (k - 1) * dil + 1;
              // Same padding: alternately a 4 x 3 input (smaller than a 5x5 window) and 7 x 6.
              const int64_t h = same ? (seed % 2 ? 4 : 7) : k_eff + 1, w = same ? h - 1 : k_eff;
              const int64_t batch = seed % 3 == 0 ? 3 : 1;
              Attrs window{{"groups", c},
                           {"strides", {stride, stride}},
                           {"dilations", {dil, dil}},
                           {"padding", same ? "same" : "valid"}};
              const Quant q{.per_channel = seed % 2 == 0,
                            .act = seed % 3 == 0 ? "relu" : (seed % 3 == 1 ? "relu6" : "none")};
              EXPECT_EQ(
                  fast_conv_case({batch, h, w, c}, {k, k, 1, c * mult}, window, q, seed++, dw_row),
                  want);
              ++cases;
            }
  // Large enough to split across threads; a 7x7 window (two row groups of four).
  EXPECT_EQ(fast_conv_case({2, 40, 40, 96}, {3, 3, 1, 96}, {{"groups", 96}, {"padding", "same"}},
                           {}, seed++, dw_row),
            want);
  EXPECT_EQ(fast_conv_case({1, 9, 9, 20}, {7, 7, 1, 20}, {{"groups", 20}, {"padding", "same"}}, {},
                           seed++, dw_row),
            want);
  EXPECT_GT(cases, 0);
}

// The few-input-channel row (groups == 1, in_c <= 4): the first conv of a network.
TEST(QConv2DFast, FewInputChannelRowMatchesTheReference) {
  const int want = cpu_has(Isa::kAvx512Vnni) ? 1 : 0;
  auto few_row = [](const FastKernel& fk) { return row_named(fk, "fewc"); };
  uint64_t seed = 1900;
  for (int64_t c : {1, 2, 3, 4})
    for (int64_t oc : {1, 15, 16, 17, 32, 33, 65})
      for (int64_t k : {1, 3, 5})
        for (int64_t stride : {1, 2})
          for (const bool same : {true, false}) {
            const int64_t h = same ? (seed % 2 ? 4 : 9) : k + 2, w = same ? h - 1 : k + 5;
            const int64_t batch = seed % 3 == 0 ? 3 : 1;
            Attrs window{{"strides", {stride, stride}}, {"padding", same ? "same" : "valid"}};
            if (seed % 4 == 0) window.set("dilations", std::vector<int64_t>{2, 1});
            if (!same && seed % 4 == 0) continue;  // valid padding: keep the window inside
            const Quant q{.per_channel = seed % 2 == 0,
                          .act = seed % 3 == 0 ? "relu" : (seed % 3 == 1 ? "relu6" : "none")};
            EXPECT_EQ(fast_conv_case({batch, h, w, c}, {k, k, c, oc}, window, q, seed++, few_row),
                      want);
          }
  // MobileNetV2's first conv (3x3 stride 2 on 3 channels) on a smaller image, threads split it.
  EXPECT_EQ(fast_conv_case({1, 64, 64, 3}, {3, 3, 3, 32},
                           {{"strides", {2, 2}}, {"padding", "same"}}, {}, seed++, few_row),
            want);
}

// The executor's choice (KernelChoice::kFastest) on MobileNetV2's depthwise shape and on a
// first conv is the specialised row, where the CPU has it.
TEST(QConv2DFast, ChoosesTheDepthwiseAndFewChannelRows) {
  if (!cpu_has(Isa::kAvx512Vnni)) GTEST_SKIP() << "no AVX-512 VNNI";
  const OpDef& def = find_op("qconv2d");
  auto chosen = [&](const Shape& xs, const Shape& ws, const Attrs& window) {
    Attrs a = fast_attrs(ws[3], {});
    for (const auto& [k, v] : window.items()) a.set(k, v);
    std::vector<ValueType> in_t{{DType::kS8, xs}, {DType::kS8, ws}, {DType::kS32, Shape{ws[3]}}};
    const std::vector<ValueType> out_t = infer_op(def, in_t, a);
    std::vector<Tensor> in{Tensor(xs, DType::kS8), Tensor(ws, DType::kS8),
                           Tensor(Shape{ws[3]}, DType::kS32)};
    std::vector<Tensor> out{Tensor(out_t[0].shape, DType::kS8)};
    const std::any params = prepare_op(def, in_t, out_t, a);
    const FastKernel* fk = choose_kernel(def, KernelCtx{in, out, &params}, KernelChoice::kFastest);
    return fk ? fk->name : std::string("reference");
  };
  EXPECT_EQ(chosen({1, 56, 56, 144}, {3, 3, 1, 144}, {{"groups", 144}, {"padding", "same"}}),
            "qconv2d_depthwise_s8__avx512_vnni");
  EXPECT_EQ(chosen({1, 224, 224, 3}, {3, 3, 3, 32}, {{"strides", {2, 2}}, {"padding", "same"}}),
            "qconv2d_fewc_s8__avx512_vnni");
  EXPECT_EQ(chosen({1, 28, 28, 1}, {3, 3, 1, 32}, {{"padding", "same"}}),
            "qconv2d_fewc_s8__avx512_vnni");
  EXPECT_EQ(chosen({1, 28, 28, 32}, {3, 3, 32, 64}, {{"padding", "same"}}),
            "qconv2d_s8__avx512_vnni");
}

TEST(QFullyConnectedFast, MatchesTheReferenceOnEdgeShapes) {
  const int rows = runnable_rows("qfully_connected");
  uint64_t seed = 500;
  for (int64_t units : {1, 10, 15, 16, 17, 31, 32, 33, 100})
    for (const Shape& xs : {Shape{1, 1}, Shape{1, 3}, Shape{3, 17}, Shape{9, 64}, Shape{2, 3, 9}})
      EXPECT_EQ(fast_fc_case(xs, units, {}, seed++), rows);
  EXPECT_EQ(fast_fc_case({256, 64}, 10, {}, seed++), rows);
  EXPECT_EQ(fast_fc_case({64, 1280}, 100, {}, seed++), rows);  // split across threads
  for (const char* rounding : {"double", "single"})
    for (const char* act : {"none", "relu", "relu6"})
      for (const auto& [zi, zo] :
           std::vector<std::pair<int64_t, int64_t>>{{-128, -128}, {127, 127}, {3, -7}})
        for (const bool pc : {true, false})
          EXPECT_EQ(
              fast_fc_case(
                  {5, 19}, 33,
                  {.per_channel = pc, .act = act, .zp_in = zi, .zp_out = zo, .rounding = rounding},
                  seed++),
              rows);
}

// One plan's params run twice: the packed weights are reused for equal weights and redone for
// new ones (the workspace compares what it packed).
TEST(QConv2DFast, RepacksWhenTheWeightsChange) {
  struct Case {
    const char* op;
    Shape xs, ws;
    int64_t groups;
  };
  // A general conv, a depthwise one, a first conv (3 input channels), a fully connected layer.
  const Case cases[] = {{"qconv2d", {1, 6, 6, 8}, {3, 3, 8, 20}, 1},
                        {"qconv2d", {1, 6, 6, 20}, {3, 3, 1, 20}, 20},
                        {"qconv2d", {1, 6, 6, 3}, {3, 3, 3, 20}, 1},
                        {"qfully_connected", {4, 24}, {24, 20}, 1}};
  std::map<std::string, int> ran;
  for (const Case& cs : cases) {
    const char* op = cs.op;
    const OpDef& def = find_op(op);
    Rng rng(77);
    const bool conv = std::string(op) == "qconv2d";
    const Shape xs = cs.xs, ws = cs.ws;
    Attrs a = fast_attrs(20, {});
    if (conv) a.set("padding", "same");
    if (cs.groups > 1) a.set("groups", cs.groups);
    const Tensor x = random_int_tensor(xs, rng, -128, 127, DType::kS8);
    const Tensor b = random_int_tensor({20}, rng, -1000, 1000, DType::kS32);
    std::vector<ValueType> in_t{{DType::kS8, xs}, {DType::kS8, ws}, {DType::kS32, Shape{20}}};
    const std::vector<ValueType> out_t = infer_op(def, in_t, a);
    for (const FastKernel& fk : def.fast) {
      if (!cpu_has(fk.isa)) continue;
      const std::any params = prepare_op(def, in_t, out_t, a);
      for (int round = 0; round < 3; ++round) {
        const Tensor w = random_int_tensor(ws, rng, -128, 127, DType::kS8);
        for (int again = 0; again < 2; ++again) {
          std::vector<Tensor> in{x, w, b};
          std::vector<Tensor> fast{Tensor(out_t[0].shape, DType::kS8)};
          std::vector<Tensor> ref{Tensor(out_t[0].shape, DType::kS8)};
          KernelCtx kf{in, fast, &params}, kr{in, ref, &params};
          if (fk.supports && !fk.supports(kf)) continue;  // a specialised row, another shape
          ++ran[fk.name];
          fk.run(kf);
          def.reference(kr);
          EXPECT_TRUE(tensors_equal(fast[0], ref[0])) << fk.name << " round " << round;
        }
      }
    }
  }
  for (const char* op : {"qconv2d", "qfully_connected"})
    for (const FastKernel& fk : find_op(op).fast)
      if (cpu_has(fk.isa)) {
        EXPECT_GT(ran[fk.name], 0) << fk.name;
      }
}

TEST(QConv2DFast, DoesNotDependOnTheThreadCount) {
  Rng rng(19);
  const Tensor x = random_int_tensor({2, 20, 20, 24}, rng, -128, 127, DType::kS8);
  const Tensor w = random_int_tensor({3, 3, 24, 40}, rng, -128, 127, DType::kS8);
  const Tensor b = random_int_tensor({40}, rng, -500, 500, DType::kS32);
  Attrs a = fast_attrs(40, {});
  a.set("padding", "same");
  const int before = num_threads();
  set_num_threads(1);
  const Tensor one = ops::qconv2d(x, w, b, a);
  set_num_threads(2);
  const Tensor two = ops::qconv2d(x, w, b, a);
  set_num_threads(before);
  EXPECT_TRUE(tensors_equal(one, two));
  // The depthwise and first-conv rows split output rows too (above 2^21 / 2^22 multiply-adds).
  const Tensor xd = random_int_tensor({2, 40, 40, 80}, rng, -128, 127, DType::kS8);
  const Tensor wd = random_int_tensor({3, 3, 1, 80}, rng, -128, 127, DType::kS8);
  const Tensor bd = random_int_tensor({80}, rng, -500, 500, DType::kS32);
  Attrs ad = fast_attrs(80, {});
  ad.set("padding", "same");
  ad.set("groups", 80);
  const Tensor xf = random_int_tensor({2, 96, 96, 3}, rng, -128, 127, DType::kS8);
  const Tensor wf = random_int_tensor({3, 3, 3, 40}, rng, -128, 127, DType::kS8);
  const Tensor bf = random_int_tensor({40}, rng, -500, 500, DType::kS32);
  Attrs af = fast_attrs(40, {});
  af.set("padding", "same");
  set_num_threads(1);
  const Tensor d1 = ops::qconv2d(xd, wd, bd, ad), f1 = ops::qconv2d(xf, wf, bf, af);
  set_num_threads(2);
  const Tensor d2 = ops::qconv2d(xd, wd, bd, ad), f2 = ops::qconv2d(xf, wf, bf, af);
  set_num_threads(before);
  EXPECT_TRUE(tensors_equal(d1, d2));
  EXPECT_TRUE(tensors_equal(f1, f2));
}

TEST(QPool2DFast, MatchesTheReferenceOnEdgeShapes) {
  const int rows = runnable_rows("qmax_pool2d");  // one row each, the same ISA
  Rng rng(41);
  const std::vector<Attrs> windows = {
      {{"ksize", {2, 2}}},
      {{"ksize", {2, 2}}, {"strides", {2, 2}}},
      {{"ksize", {3, 3}}, {"strides", {2, 2}}, {"padding", "same"}},
      {{"ksize", {3, 3}}, {"padding", "same"}, {"act_min", -20}, {"act_max", 40}},
      {{"ksize", {2, 3}}, {"strides", {1, 2}}},
      {{"ksize", {7, 7}}},  // a global pool of a 7x7 input
  };
  for (const int64_t c : {1, 5, 63, 64, 65, 130})
    for (const int64_t n : {1, 2})
      for (const Attrs& window : windows) {
        const Tensor x = random_int_tensor({n, 7, 7, c}, rng, -128, 127, DType::kS8);
        for (const char* op : {"qmax_pool2d", "qavg_pool2d"})
          EXPECT_EQ(expect_fast_matches_reference(op, {x}, window, 0.0, 0.0), rows)
              << op << " " << window.str() << " c " << c;
      }
  // Sums far from zero: every code at an extreme (rounding of negative and positive means).
  for (const int64_t v : {-128, 127, -3}) {
    const Tensor x = Tensor::full({1, 6, 6, 20}, static_cast<double>(v), DType::kS8);
    for (const char* op : {"qmax_pool2d", "qavg_pool2d"})
      EXPECT_EQ(
          expect_fast_matches_reference(
              op, {x}, {{"ksize", {3, 3}}, {"strides", {2, 2}}, {"padding", "same"}}, 0.0, 0.0),
          rows);
  }
  // Large enough to split across threads.
  const Tensor big = random_int_tensor({4, 28, 28, 64}, rng, -128, 127, DType::kS8);
  for (const char* op : {"qmax_pool2d", "qavg_pool2d"})
    EXPECT_EQ(expect_fast_matches_reference(op, {big}, {{"ksize", {2, 2}}, {"strides", {2, 2}}},
                                            0.0, 0.0),
              rows);
}

TEST(QPool2DFast, RequantizingAverageMatchesTheReference) {
  // Given output parameters: the fast row's sums with the reference's output stage, for both
  // roundings, multipliers above and below 1, partial windows (same padding) and clamps.
  const int rows = runnable_rows("qavg_pool2d");
  Rng rng(43);
  const std::vector<Attrs> windows = {
      {{"ksize", {2, 2}}, {"strides", {2, 2}}},
      {{"ksize", {3, 3}}, {"strides", {2, 2}}, {"padding", "same"}},
      {{"ksize", {7, 7}}},  // the global pooling of the bench CNN
  };
  struct Out {
    double in_scale, out_scale;
    int64_t zp_in, zp_out;
    const char* rounding;
    int64_t act_min, act_max;
  };
  const std::vector<Out> outs = {{0.05, 0.04, -21, 3, "single", -128, 127},
                                 {0.05, 0.2, 17, -128, "double", -128, 127},
                                 {0.013, 0.011, 0, -40, "double", -40, 100}};
  for (const int64_t c : {1, 17, 64, 65})
    for (const Attrs& window : windows)
      for (const Out& o : outs) {
        const Tensor x = random_int_tensor({2, 7, 7, c}, rng, -128, 127, DType::kS8);
        Attrs a = window;
        a.set("input_scale", o.in_scale);
        a.set("input_zero_point", o.zp_in);
        a.set("output_scale", o.out_scale);
        a.set("output_zero_point", o.zp_out);
        a.set("rounding", o.rounding);
        a.set("act_min", o.act_min);
        a.set("act_max", o.act_max);
        EXPECT_EQ(expect_fast_matches_reference("qavg_pool2d", {x}, a, 0.0, 0.0), rows)
            << a.str() << " c " << c;
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

// The fast qadd rows bit for bit against the reference: lengths around the vector widths (8
// and 32 for AVX2, 16 for AVX-512) and the thread blocks (2^14), both roundings, scale ratios
// from equal to 1:100 (either input the larger), zero points at the int8 ends, output scales
// small enough to saturate, fused ReLU/ReLU6 and a narrow act_min/act_max clamp; codes at both
// int8 ends in every case.
TEST(QAddFast, MatchesTheReferenceOnEdgeShapesAndSaturation) {
  const int rows = runnable_rows("qadd");
  Rng rng(61);
  const std::vector<Attrs> stages = {
      {{"input1_scale", 0.02},
       {"input1_zero_point", -3},
       {"input2_scale", 0.035},
       {"input2_zero_point", 10},
       {"output_scale", 0.05},
       {"output_zero_point", 1}},
      {{"input1_scale", 0.1},
       {"input1_zero_point", -128},
       {"input2_scale", 0.1},
       {"input2_zero_point", 127},
       {"output_scale", 0.1},
       {"output_zero_point", -128},
       {"rounding", "single"}},
      {{"input1_scale", 0.5},
       {"input1_zero_point", 0},
       {"input2_scale", 0.005},
       {"input2_zero_point", -128},
       {"output_scale", 0.01},
       {"output_zero_point", 5},
       {"activation", "relu"}},  // saturates: the output step is 1/50 of input 1's
      {{"input1_scale", 0.003},
       {"input1_zero_point", 127},
       {"input2_scale", 0.3},
       {"input2_zero_point", 0},
       {"output_scale", 0.07},
       {"output_zero_point", -20},
       {"activation", "relu6"},
       {"rounding", "single"}},
      {{"input1_scale", 0.04},
       {"input1_zero_point", 3},
       {"input2_scale", 0.04},
       {"input2_zero_point", 3},
       {"output_scale", 0.0101},
       {"output_zero_point", -120},
       {"act_min", -128},
       {"act_max", -113}},  // a 4-bit output grid stored as int8
      {{"input1_scale", 1.0},
       {"input1_zero_point", 0},
       {"input2_scale", 1.0},
       {"input2_zero_point", 0},
       {"output_scale", 2.0},
       {"output_zero_point", 0}},  // exact ties: (q1 + q2) / 2
      {{"input1_scale", 1.0},
       {"input1_zero_point", 0},
       {"input2_scale", 1.0},
       {"input2_zero_point", 0},
       {"output_scale", 2.0},
       {"output_zero_point", 0},
       {"rounding", "single"}},
  };
  for (const int64_t n :
       {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 16383, 16384, 16385, 70001}) {
    Tensor a = random_int_tensor({n}, rng, -128, 127, DType::kS8);
    Tensor b = random_int_tensor({n}, rng, -128, 127, DType::kS8);
    const int8_t ends[] = {-128, 127, -127, 126, 0};
    for (int64_t i = 0; i < n; i += 3) {
      a.data<int8_t>()[i] = ends[(i / 3) % 5];
      b.data<int8_t>()[i] = ends[(i / 3 + 1) % 5];
    }
    for (const Attrs& at : stages)
      EXPECT_EQ(expect_fast_matches_reference("qadd", {a, b}, at, 0.0, 0.0), rows)
          << "n " << n << " " << at.str();
  }
  // A 4-D tensor of MobileNetV2's residual shape (24 channels: a tail in every row).
  const Tensor a = random_int_tensor({1, 14, 14, 24}, rng, -128, 127, DType::kS8);
  const Tensor b = random_int_tensor({1, 14, 14, 24}, rng, -128, 127, DType::kS8);
  EXPECT_EQ(expect_fast_matches_reference("qadd", {a, b}, stages[0], 0.0, 0.0), rows);
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
  // act_min/act_max: the codes of a 4-bit grid stored as int8 ([-128, -113]).
  const Tensor y4 = ops::requantize(x, {{"input_scale", 0.2},
                                        {"input_zero_point", 0},
                                        {"output_scale", 0.1},
                                        {"output_zero_point", -120},
                                        {"act_min", -128},
                                        {"act_max", -113}});
  EXPECT_TRUE(
      tensors_equal(y4, Tensor::from_vector<int8_t>({-128, -122, -120, -118, -113, -113}, {6})));
  expect_throws_with<ValueError>(
      [&] {
        ops::requantize(x, {{"input_scale", 0.2},
                            {"input_zero_point", 0},
                            {"output_scale", 0.1},
                            {"output_zero_point", 0},
                            {"act_min", 5},
                            {"act_max", 4}});
      },
      "'act_min', 'act_max'");
}

TEST(QAdd, ActMinActMaxNarrowTheClamp) {
  const Tensor a = Tensor::from_vector<int8_t>({-128, -20, 0, 3, 50, 127}, {6});
  const Tensor b = Tensor::from_vector<int8_t>({0, 0, 0, 0, 0, 0}, {6});
  // Both inputs at 0.1 / zp 0, the output at 0.1 / zp -120: y = a - 120 clamped to the
  // 16 codes [-128, -113]; with relu the clamp starts at zp -120 instead.
  Attrs at{{"input1_scale", 0.1},    {"input1_zero_point", 0}, {"input2_scale", 0.1},
           {"input2_zero_point", 0}, {"output_scale", 0.1},    {"output_zero_point", -120},
           {"act_min", -128},        {"act_max", -113},        {"rounding", "single"}};
  EXPECT_TRUE(tensors_equal(
      ops::qadd(a, b, at), Tensor::from_vector<int8_t>({-128, -128, -120, -117, -113, -113}, {6})));
  at.set("activation", "relu");
  EXPECT_TRUE(tensors_equal(
      ops::qadd(a, b, at), Tensor::from_vector<int8_t>({-120, -120, -120, -117, -113, -113}, {6})));
  at.set("act_max", 200);
  expect_throws_with<ValueError>([&] { ops::qadd(a, b, at); }, "qadd: attributes 'act_min'");
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

TEST(QuantizeFast, MatchesTheReferenceOnTiesSaturationAndNonFiniteValues) {
  const int rows = runnable_rows("quantize");
  Rng rng(47);
  for (const int64_t n : {1, 7, 31, 32, 33, 64, 95, 1000}) {
    std::vector<float> v(static_cast<size_t>(n));
    const float specials[] = {-1.25f,   1.25f,     0.25f, -0.25f, 0.75f,   -0.75f,     2.5f,
                              -2.5f,    0.0f,      -0.0f, 1e-40f, -1e-40f, 1e30f,      -1e30f,
                              INFINITY, -INFINITY, NAN,   63.75f, -64.25f, 16777216.0f};
    for (int64_t i = 0; i < n; ++i)
      v[static_cast<size_t>(i)] =
          i % 3 == 0 ? specials[(i / 3) % std::size(specials)]
                     : static_cast<float>(rng.uniform(-80.0, 80.0));  // saturates at both ends
    const Tensor x = Tensor::from_vector<float>(v, {n});
    for (const auto& [scale, zp] :
         {std::pair<double, int64_t>{0.5, 2}, {0.25, -128}, {0.3, 127}, {1.0 / 3.0, 0}})
      EXPECT_EQ(expect_fast_matches_reference("quantize", {x},
                                              {{"scale", scale}, {"zero_point", zp}}, 0.0, 0.0),
                rows)
          << "n " << n << " scale " << scale << " zp " << zp;
  }
}

// n codes running through all 256 from `start`, every 7th replaced by a random one.
Tensor cycling_codes(int64_t n, int start, Rng& rng) {
  Tensor x({n}, DType::kS8);
  for (int64_t i = 0; i < n; ++i)
    x.data<int8_t>()[i] = static_cast<int8_t>(
        i % 7 == 6 ? static_cast<int>(rng.next_u32() % 256) - 128 : (start + i) % 256 - 128);
  return x;
}

// Sizes around the vector widths (8, 16, 32 and 64 elements), past the 256 codes and past the
// threads' blocks (2^14; parallel above 2^22: kThreadedSize, once per op).
const int64_t kElementwiseSizes[] = {1,  2,  7,  8,  9,   15,  16,  17,   31,    32,
                                     33, 63, 64, 65, 127, 256, 257, 1000, 16385, 70001};
constexpr int64_t kThreadedSize = (int64_t{1} << 22) + 17;

// requantize's rows look up a table of the reference's 256 codes: every code, both roundings,
// scale ratios from 1/1000 to 1000 (saturating), zero points at the int8 ends, narrow clamps.
TEST(RequantizeFast, MatchesTheReferenceOnEveryCodeAndStage) {
  const int rows = runnable_rows("requantize");
  Rng rng(71);
  std::vector<Attrs> stages;
  for (const char* rounding : {"double", "single"})
    for (const auto& [s_in, s_out] :
         std::vector<std::pair<double, double>>{{0.2, 0.1},
                                                {0.1, 0.2},
                                                {0.031, 0.047},
                                                {1.0, 1.0},
                                                {1.0, 2.0},
                                                {1.0, 4.0},
                                                {0.001, 1.0},
                                                {1000.0, 1.0},
                                                {0.0235294122, 0.0470588244},
                                                {0.3, 0.7}})
      for (const auto& [zp_in, zp_out] :
           std::vector<std::pair<int64_t, int64_t>>{{0, 0}, {-128, 127}, {127, -128}, {5, -3}})
        stages.push_back({{"input_scale", s_in},
                          {"input_zero_point", zp_in},
                          {"output_scale", s_out},
                          {"output_zero_point", zp_out},
                          {"rounding", rounding}});
  stages.push_back({{"input_scale", 0.2},
                    {"input_zero_point", 0},
                    {"output_scale", 0.1},
                    {"output_zero_point", -120},
                    {"act_min", -128},
                    {"act_max", -113}});  // a 4-bit output grid stored as int8
  for (const Attrs& at : stages)
    EXPECT_EQ(
        expect_fast_matches_reference("requantize", {cycling_codes(256, 0, rng)}, at, 0.0, 0.0),
        rows)
        << at.str();
  EXPECT_EQ(expect_fast_matches_reference("requantize", {cycling_codes(kThreadedSize, 3, rng)},
                                          stages[1], 0.0, 0.0),
            rows);
  for (const int64_t n : kElementwiseSizes) {
    const Attrs& at = stages[rng.next_u32() % stages.size()];
    EXPECT_EQ(expect_fast_matches_reference(
                  "requantize", {cycling_codes(n, static_cast<int>(n % 256), rng)}, at, 0.0, 0.0),
              rows)
        << "n " << n << " " << at.str();
  }
}

// dequantize's rows multiply in f32 where the reference rounds the exact f64 product to f32
// (kernels/fast/int8_lut.h: the same value): the same bits (compared as bytes: -0 and +0
// differ) for every code, on scales whose products round (0.1, 1/3, random significands at
// every exponent), reach subnormals (1e-40) and overflow to infinity (1e37 * 255), also with
// flush-to-zero set.
TEST(DequantizeFast, MatchesTheReferenceBitForBit) {
  const OpDef& def = find_op("dequantize");
  const int rows = runnable_rows("dequantize");
  Rng rng(73);
  std::vector<double> scales = {0.1, 1.0 / 3.0, 0.0235294122, 1e-40, 3e-39, 1e37, 7.0};
  for (int k = 0; k < 64; ++k)
    scales.push_back(
        std::ldexp(rng.uniform(1.0, 2.0), static_cast<int>(rng.next_u32() % 250) - 145));
  const Tensor all = cycling_codes(256, 0, rng);
  auto bits_equal = [&](const Tensor& q, const Attrs& at, const char* what) {
    const Tensor want = run_op(def, {q}, at, KernelChoice::kReference)[0];
    int ran = 0;
    for (const FastKernel& fk : def.fast) {
      std::vector<Tensor> got;
      if (!testing::run_listed_kernel(def, fk, {q}, at, got)) continue;
      ++ran;
      testing::note_kernel_checked(fk, {q});
      EXPECT_EQ(std::memcmp(got[0].data<float>(), want.data<float>(),
                            static_cast<size_t>(q.numel()) * sizeof(float)),
                0)
          << fk.name << " n " << q.numel() << " " << at.str() << what;
    }
    EXPECT_EQ(ran, rows);
  };
  for (const double scale : scales) bits_equal(all, {{"scale", scale}, {"zero_point", 3}}, "");
#if defined(__x86_64__)
  // Flush-to-zero set after the plan was prepared (a subnormal scale is refused under FTZ):
  // the reference's conversion and the rows' product flush the same tiny values to 0.
  for (const double scale : {1e-40, 3e-39, 1e-39, 1.1e-38}) {
    const Attrs at{{"scale", scale}, {"zero_point", -128}};
    const std::vector<ValueType> in_t{{DType::kS8, all.shape()}};
    const std::vector<ValueType> out_t = infer_op(def, in_t, at);
    const std::any params = prepare_op(def, in_t, out_t, at);
    std::vector<Tensor> in{all}, want{Tensor(all.shape(), DType::kF32)};
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8000);
    def.reference(KernelCtx{in, want, &params});
    for (const FastKernel& fk : def.fast) {
      if (!cpu_has(fk.isa)) continue;
      std::vector<Tensor> got{Tensor(all.shape(), DType::kF32)};
      fk.run(KernelCtx{in, got, &params});
      EXPECT_EQ(std::memcmp(got[0].data<float>(), want[0].data<float>(), 256 * sizeof(float)), 0)
          << fk.name << " scale " << scale << " (FTZ)";
    }
    _mm_setcsr(csr);
    EXPECT_EQ(want[0].data<float>()[1], 0.0f) << "FTZ flushed q - zp = 1 times " << scale;
  }
#endif
  for (const double scale : {0.1, 1.0 / 3.0, 0.0235294122, 1e-40, 3e-39, 1e37, 7.0})
    for (const int64_t zp : {int64_t{0}, int64_t{-128}, int64_t{127}, int64_t{-7}})
      for (int64_t n : kElementwiseSizes) {
        if (n == 16385 && scale == 7.0 && zp == -7) n = kThreadedSize;  // threads, once
        const Attrs at{{"scale", scale}, {"zero_point", zp}};
        const Tensor q = cycling_codes(n, static_cast<int>(n % 256), rng);
        const Tensor want = run_op(def, {q}, at, KernelChoice::kReference)[0];
        int ran = 0;
        for (const FastKernel& fk : def.fast) {
          std::vector<Tensor> got;
          if (!testing::run_listed_kernel(def, fk, {q}, at, got)) continue;
          ++ran;
          testing::note_kernel_checked(fk, {q});
          EXPECT_EQ(std::memcmp(got[0].data<float>(), want.data<float>(),
                                static_cast<size_t>(n) * sizeof(float)),
                    0)
              << fk.name << " n " << n << " " << at.str();
        }
        EXPECT_EQ(ran, rows);
        if (n == 257) {
          EXPECT_EQ(expect_fast_matches_reference("dequantize", {q}, at, 0.0, 0.0), rows);
        }
      }
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
