// Integer-inference primitives (lowbit/fixed_point.h) against
// shared/testdata/fakequant_examples.json (every case of the integer kinds, exact; schema in
// quantization-semantics.md section 0), the spec's worked examples (3.2, 3.3, 3.4, section 6
// rows 14-21), exact 128-bit cross-checks of the multiply on random inputs, and the converter's
// agreement with the TF fake-quant nudge (2.5, against ops::fake_quant_nudge).
#include "lowbit/fixed_point.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "lowbit/ops/fake_quant.h"
#include "testing/op_testing.h"

namespace lowbit::quant {
namespace {

using Json = nlohmann::json;
using testing::expect_throws_with;

constexpr int32_t kMin32 = std::numeric_limits<int32_t>::min();
constexpr int32_t kMax32 = std::numeric_limits<int32_t>::max();

// ---- the golden file -----------------------------------------------------------------------

const Json& examples() {
  static const Json j = [] {
    const std::string path = testing::shared_dir() + "/testdata/fakequant_examples.json";
    std::ifstream f(path);
    if (!f) throw IoError("cannot open " + path);
    return Json::parse(f);
  }();
  return j;
}

// Cases of one kind; fails the test if the file has none (a renamed kind must not pass silently).
std::vector<Json> cases_of(const std::string& kind) {
  std::vector<Json> out;
  for (const Json& c : examples().at("cases"))
    if (c.at("kind") == kind) out.push_back(c);
  EXPECT_FALSE(out.empty()) << "no cases of kind " << kind;
  return out;
}

// A float field: a number (shortest round-trip decimal of a double) or "nan"/"inf"/"-inf".
double number(const Json& j) {
  if (j.is_string()) {
    const std::string s = j.get<std::string>();
    if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
    if (s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-inf") return -std::numeric_limits<double>::infinity();
    throw ValueError("bad number string " + s);
  }
  return j.get<double>();
}
float f32(const Json& j) { return static_cast<float>(number(j)); }
int32_t s32(const Json& j) { return j.get<int32_t>(); }
std::vector<int32_t> s32_list(const Json& j) { return j.get<std::vector<int32_t>>(); }

QuantizedMultiplier qm_of(const Json& j) { return {s32(j.at("multiplier")), j.at("shift")}; }

// The kinds this file owns; the golden tests below each count their cases.
const std::set<std::string> kIntegerKinds = {"quantize_multiplier",
                                             "multiply_by_quantized_multiplier",
                                             "saturating_rounding_doubling_high_mul",
                                             "rounding_divide_by_pot",
                                             "activation_range",
                                             "conv_output_stage",
                                             "int8_add",
                                             "avg_pool_rounding",
                                             "tflite_affine_quantize"};

TEST(FixedPointGolden, FileHasTheSchemaAndEveryIntegerKind) {
  EXPECT_EQ(examples().at("schema"), "lowbit-quant-vectors/1");
  std::map<std::string, int> counts;
  for (const Json& c : examples().at("cases")) ++counts[c.at("kind").get<std::string>()];
  for (const std::string& k : kIntegerKinds) EXPECT_GT(counts[k], 0) << k;
}

TEST(FixedPointGolden, QuantizeMultiplier) {
  for (const Json& c : cases_of("quantize_multiplier")) {
    SCOPED_TRACE(c.at("id").get<std::string>());
    const double m = number(c.at("inputs").at("real_multiplier"));
    EXPECT_EQ(quantize_multiplier(m, Rounding::kDouble),
              qm_of(c.at("expected").at("double_rounding")));
    EXPECT_EQ(quantize_multiplier(m, Rounding::kSingle),
              qm_of(c.at("expected").at("single_rounding")));
  }
}

TEST(FixedPointGolden, MultiplyByQuantizedMultiplier) {
  for (const Json& c : cases_of("multiply_by_quantized_multiplier")) {
    SCOPED_TRACE(c.at("id").get<std::string>());
    const Json& in = c.at("inputs");
    const int32_t x = s32(in.at("x")), m = s32(in.at("multiplier"));
    const int shift = in.at("shift");
    EXPECT_EQ(multiply_by_quantized_multiplier(x, m, shift, Rounding::kDouble),
              s32(c.at("expected").at("double_rounding")));
    EXPECT_EQ(multiply_by_quantized_multiplier(x, m, shift, Rounding::kSingle),
              s32(c.at("expected").at("single_rounding")));
    EXPECT_EQ(multiply_by_quantized_multiplier(x, QuantizedMultiplier{m, shift}),
              s32(c.at("expected").at("double_rounding")));
  }
}

TEST(FixedPointGolden, SaturatingRoundingDoublingHighMul) {
  for (const Json& c : cases_of("saturating_rounding_doubling_high_mul")) {
    SCOPED_TRACE(c.at("id").get<std::string>());
    EXPECT_EQ(saturating_rounding_doubling_high_mul(s32(c.at("inputs").at("a")),
                                                    s32(c.at("inputs").at("b"))),
              s32(c.at("expected").at("result")));
  }
}

TEST(FixedPointGolden, RoundingDivideByPot) {
  for (const Json& c : cases_of("rounding_divide_by_pot")) {
    SCOPED_TRACE(c.at("id").get<std::string>());
    EXPECT_EQ(rounding_divide_by_pot(s32(c.at("inputs").at("x")), c.at("inputs").at("exponent")),
              s32(c.at("expected").at("result")));
  }
}

TEST(FixedPointGolden, ActivationRange) {
  for (const Json& c : cases_of("activation_range")) {
    SCOPED_TRACE(c.at("id").get<std::string>());
    const Json& p = c.at("params");
    const QuantRange r = activation_range(f32(p.at("scale")), s32(p.at("zero_point")),
                                          fused_activation_from_name(p.at("activation")),
                                          quant_dtype_from_name(p.at("dtype")));
    EXPECT_EQ(
        r, (QuantRange{s32(c.at("expected").at("act_min")), s32(c.at("expected").at("act_max"))}));
  }
}

TEST(FixedPointGolden, ConvOutputStage) {
  for (const Json& c : cases_of("conv_output_stage")) {
    SCOPED_TRACE(c.at("id").get<std::string>());
    const Json& p = c.at("params");
    const Json& e = c.at("expected");
    const ConvOutputStage os =
        make_conv_output_stage({.input_scale = f32(p.at("input_scale")),
                                .weight_scale = f32(p.at("weight_scale")),
                                .output_scale = f32(p.at("output_scale")),
                                .output_zero_point = s32(p.at("output_zero_point")),
                                .activation = fused_activation_from_name(p.at("activation")),
                                .dtype = quant_dtype_from_name(p.at("dtype")),
                                .legacy_float_product = p.at("legacy_float_product").get<bool>()});
    EXPECT_EQ(os.effective_multiplier, number(e.at("effective_multiplier")));
    EXPECT_EQ(os.multiplier, (QuantizedMultiplier{s32(e.at("multiplier")), e.at("shift")}));
    EXPECT_EQ(os.act_min, s32(e.at("act_min")));
    EXPECT_EQ(os.act_max, s32(e.at("act_max")));
    const std::vector<int32_t> acc = s32_list(c.at("inputs").at("acc"));
    const std::vector<int32_t> want = s32_list(e.at("out"));
    ASSERT_EQ(acc.size(), want.size());
    for (size_t i = 0; i < acc.size(); ++i) EXPECT_EQ(os.apply(acc[i]), want[i]) << acc[i];
  }
}

TEST(FixedPointGolden, Int8Add) {
  for (const Json& c : cases_of("int8_add")) {
    SCOPED_TRACE(c.at("id").get<std::string>());
    const Json& p = c.at("params");
    const Json& e = c.at("expected");
    const AddStage s = make_add_stage({.input1_scale = f32(p.at("input1_scale")),
                                       .input1_zero_point = s32(p.at("input1_zero_point")),
                                       .input2_scale = f32(p.at("input2_scale")),
                                       .input2_zero_point = s32(p.at("input2_zero_point")),
                                       .output_scale = f32(p.at("output_scale")),
                                       .output_zero_point = s32(p.at("output_zero_point")),
                                       .activation = fused_activation_from_name(p.at("activation")),
                                       .dtype = QuantDType::kS8,
                                       .left_shift = p.at("left_shift")});
    EXPECT_EQ(s.input1_multiplier,
              (QuantizedMultiplier{s32(e.at("input1_multiplier")), e.at("input1_shift")}));
    EXPECT_EQ(s.input2_multiplier,
              (QuantizedMultiplier{s32(e.at("input2_multiplier")), e.at("input2_shift")}));
    EXPECT_EQ(s.output_multiplier,
              (QuantizedMultiplier{s32(e.at("output_multiplier")), e.at("output_shift")}));
    EXPECT_EQ(s.act_min, s32(e.at("act_min")));
    EXPECT_EQ(s.act_max, s32(e.at("act_max")));
    const std::vector<int32_t> q1 = s32_list(c.at("inputs").at("q1"));
    const std::vector<int32_t> q2 = s32_list(c.at("inputs").at("q2"));
    const std::vector<int32_t> want = s32_list(e.at("out"));
    ASSERT_EQ(q1.size(), want.size());
    ASSERT_EQ(q2.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_EQ(s.apply(q1[i], q2[i]), want[i]) << q1[i] << " + " << q2[i];
  }
}

TEST(FixedPointGolden, AvgPoolRounding) {
  for (const Json& c : cases_of("avg_pool_rounding")) {
    SCOPED_TRACE(c.at("id").get<std::string>());
    EXPECT_EQ(average_pool_mean(s32(c.at("inputs").at("sum")), s32(c.at("inputs").at("count"))),
              s32(c.at("expected").at("result")));
  }
}

TEST(FixedPointGolden, TfliteAffineQuantize) {
  for (const Json& c : cases_of("tflite_affine_quantize")) {
    SCOPED_TRACE(c.at("id").get<std::string>());
    const Json& p = c.at("params");
    const QuantParams qp{f32(p.at("scale")), s32(p.at("zero_point"))};
    const QuantDType dtype = quant_dtype_from_name(p.at("dtype"));
    const Json& x = c.at("inputs").at("x");
    const std::vector<int32_t> want = s32_list(c.at("expected").at("q"));
    ASSERT_EQ(x.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_EQ(affine_quantize(f32(x[i]), qp, dtype), want[i]) << f32(x[i]);
  }
}

// ---- spec 3.3: quantize_multiplier -----------------------------------------------------------

TEST(FixedPointQuantizeMultiplier, SpecExamples) {
  EXPECT_EQ(quantize_multiplier(1e-6), (QuantizedMultiplier{1125899907, -19}));
  EXPECT_EQ(quantize_multiplier(0.1), (QuantizedMultiplier{1717986918, -3}));
  EXPECT_EQ(quantize_multiplier(1.0), (QuantizedMultiplier{1 << 30, 1}));
  EXPECT_EQ(quantize_multiplier(3.0), (QuantizedMultiplier{1610612736, 2}));
  EXPECT_EQ(quantize_multiplier(0.0), (QuantizedMultiplier{0, 0}));
  EXPECT_EQ(quantize_multiplier(0.0, Rounding::kSingle), (QuantizedMultiplier{0, 0}));
}

// Section 6 row 14: the flush, the 2^31 carry and the single-rounding shift cap.
TEST(FixedPointQuantizeMultiplier, Row14FlushCarryAndCap) {
  for (Rounding r : {Rounding::kDouble, Rounding::kSingle}) {
    EXPECT_EQ(quantize_multiplier(1e-10, r), (QuantizedMultiplier{0, 0}));
    EXPECT_EQ(quantize_multiplier(1.0 - std::ldexp(1.0, -33), r),
              (QuantizedMultiplier{1 << 30, 1}));
  }
  EXPECT_EQ(quantize_multiplier(std::ldexp(1.0, 31), Rounding::kDouble),
            (QuantizedMultiplier{1 << 30, 32}));
  EXPECT_EQ(quantize_multiplier(std::ldexp(1.0, 31), Rounding::kSingle),
            (QuantizedMultiplier{kMax32, 30}));
}

// The flush boundary: M = 2^-32 has frexp shift -31 and survives; just below it is flushed,
// unless the carry lifts it back to 2^-32.
TEST(FixedPointQuantizeMultiplier, FlushBoundary) {
  EXPECT_EQ(quantize_multiplier(std::ldexp(1.0, -32)), (QuantizedMultiplier{1 << 30, -31}));
  EXPECT_EQ(quantize_multiplier(std::ldexp(0.75, -32)), (QuantizedMultiplier{0, 0}));
  // 2^-32 * (1 - 2^-40): frexp shift -32, q * 2^31 rounds to 2^31, the carry makes it -31.
  EXPECT_EQ(quantize_multiplier(std::ldexp(1.0 - std::ldexp(1.0, -40), -32)),
            (QuantizedMultiplier{1 << 30, -31}));
  // The largest M keeping shift 30 in the single-rounding build, and the smallest capped one.
  EXPECT_EQ(quantize_multiplier(std::ldexp(1.0, 29), Rounding::kSingle),
            (QuantizedMultiplier{1 << 30, 30}));
  EXPECT_EQ(quantize_multiplier(std::ldexp(1.0, 30), Rounding::kSingle),
            (QuantizedMultiplier{kMax32, 30}));
  EXPECT_EQ(quantize_multiplier(std::ldexp(1.0, 30), Rounding::kDouble),
            (QuantizedMultiplier{1 << 30, 31}));
}

// On random M: m normalised, shift > 0 iff M >= 1, and |m * 2^(shift-31) - M| <= half a unit of m.
TEST(FixedPointQuantizeMultiplier, RandomMultipliersAreNormalisedAndAccurate) {
  std::mt19937_64 gen(42);
  std::uniform_real_distribution<double> mantissa(0.5, 1.0);
  std::uniform_int_distribution<int> exponent(-31, 30);
  for (int i = 0; i < 20000; ++i) {
    const double m = std::ldexp(mantissa(gen), exponent(gen));
    const QuantizedMultiplier q = quantize_multiplier(m);
    ASSERT_GE(q.multiplier, 1 << 30) << m;
    ASSERT_EQ(q.shift > 0, m >= 1.0) << m;
    const double err = std::fabs(quantized_multiplier_value(q) - m);
    ASSERT_LE(err, std::ldexp(1.0, q.shift - 32)) << m;
    ASSERT_EQ(quantize_multiplier(m, Rounding::kSingle), q) << m;  // below 2^30: the same
  }
}

TEST(FixedPointQuantizeMultiplier, RejectsNegativeAndNonFinite) {
  expect_throws_with<ValueError>([] { quantize_multiplier(-0.5); }, "real_multiplier");
  expect_throws_with<ValueError>(
      [] { quantize_multiplier(std::numeric_limits<double>::quiet_NaN()); }, "finite");
  expect_throws_with<ValueError>(
      [] { quantize_multiplier(std::numeric_limits<double>::infinity()); }, "found inf");
}

// ---- spec 3.4: primitives --------------------------------------------------------------------

// Rows 15-18 of section 6 and the double-rounding counterexamples of 3.4.
TEST(FixedPointPrimitives, SpecRowsAndCounterexamples) {
  // Row 15: -0.5 rounds away from zero in the final shift, up in single rounding.
  EXPECT_EQ(multiply_by_quantized_multiplier(-2, 1 << 30, -1, Rounding::kDouble), -1);
  EXPECT_EQ(multiply_by_quantized_multiplier(-2, 1 << 30, -1, Rounding::kSingle), 0);
  // Row 16.
  for (Rounding r : {Rounding::kDouble, Rounding::kSingle})
    EXPECT_EQ(multiply_by_quantized_multiplier(kMin32, kMax32, 0, r), -2147483647);
  // Row 17: the only SRDHM overflow.
  EXPECT_EQ(saturating_rounding_doubling_high_mul(kMin32, kMin32), kMax32);
  // Row 18.
  EXPECT_EQ(rounding_divide_by_pot(-5, 1), -3);
  EXPECT_EQ(rounding_divide_by_pot(-1, 31), 0);
  EXPECT_EQ(rounding_divide_by_pot(kMin32, 31), -1);
  // 3.4: double rounding is not correct rounding. 5 * 0.25 = 1.25, but SRDHM(5, 2^30) rounds
  // 2.5 up to 3 and RDPOT(3, 1) rounds 1.5 away to 2.
  EXPECT_EQ(saturating_rounding_doubling_high_mul(5, 1 << 30), 3);
  EXPECT_EQ(multiply_by_quantized_multiplier(5, 1 << 30, -1, Rounding::kDouble), 2);
  EXPECT_EQ(multiply_by_quantized_multiplier(5, 1 << 30, -1, Rounding::kSingle), 1);
  // 52266 * 2091764047 * 2^-33 = 12727.47...
  EXPECT_EQ(multiply_by_quantized_multiplier(52266, 2091764047, -2, Rounding::kDouble), 12728);
  EXPECT_EQ(multiply_by_quantized_multiplier(52266, 2091764047, -2, Rounding::kSingle), 12727);
}

TEST(FixedPointPrimitives, SrdhmRoundsHalfUpAndRdpotHalfAway) {
  // a * 2^30 / 2^31 = a / 2: halves go toward +infinity.
  EXPECT_EQ(saturating_rounding_doubling_high_mul(1, 1 << 30), 1);    // 0.5 -> 1
  EXPECT_EQ(saturating_rounding_doubling_high_mul(-1, 1 << 30), 0);   // -0.5 -> 0
  EXPECT_EQ(saturating_rounding_doubling_high_mul(-3, 1 << 30), -1);  // -1.5 -> -1
  EXPECT_EQ(saturating_rounding_doubling_high_mul(3, 1 << 30), 2);    // 1.5 -> 2
  // x / 2: halves go away from zero.
  EXPECT_EQ(rounding_divide_by_pot(5, 1), 3);
  EXPECT_EQ(rounding_divide_by_pot(-3, 1), -2);
  EXPECT_EQ(rounding_divide_by_pot(3, 1), 2);
  EXPECT_EQ(rounding_divide_by_pot(kMax32, 0), kMax32);
  EXPECT_EQ(rounding_divide_by_pot(kMax32, 31), 1);       // 0.99999... -> 1
  EXPECT_EQ(rounding_divide_by_pot(-(1 << 30), 31), -1);  // -0.5 -> -1
  EXPECT_EQ(rounding_divide_by_pot((1 << 30) - 1, 31), 0);
}

// floor(n / d) for d > 0 in 128 bits.
__int128 floor_div(__int128 n, __int128 d) {
  __int128 q = n / d;
  if ((n % d != 0) && (n < 0)) --q;
  return q;
}
// n / 2^k rounded half toward +infinity, exactly.
__int128 round_half_up_pot(__int128 n, int k) {
  const __int128 d = static_cast<__int128>(1) << k;
  return floor_div(2 * n + d, 2 * d);
}
// n / 2^k rounded half away from zero, exactly.
__int128 round_half_away_pot(__int128 n, int k) {
  return n >= 0 ? round_half_up_pot(n, k) : -round_half_up_pot(-n, k);
}
int32_t saturate(__int128 v) {
  return v > kMax32 ? kMax32 : v < kMin32 ? kMin32 : static_cast<int32_t>(v);
}

// Single rounding is the exact x * m * 2^(shift-31) rounded half up: checked against 128-bit
// integer arithmetic and, independently, long double (64-bit significand: x * m has at most 62
// significant bits, so scaling by 2^-k and adding 1/2 are exact).
TEST(FixedPointPrimitives, SingleRoundingMatchesExactRationalOnRandomInputs) {
  std::mt19937_64 gen(7);
  std::uniform_int_distribution<int32_t> any32(kMin32, kMax32);
  std::uniform_int_distribution<int32_t> mult(0, kMax32);
  std::uniform_int_distribution<int32_t> normalised(1 << 30, kMax32);
  std::uniform_int_distribution<int> shift(-31, 30);
  std::uniform_int_distribution<int> small_bits(0, 31);
  constexpr bool kLongDoubleExact = std::numeric_limits<long double>::digits >= 64;
  int checked = 0;
  for (int i = 0; i < 200000; ++i) {
    int32_t x = any32(gen);
    if (i % 3 == 1) x >>= small_bits(gen);  // also small magnitudes
    if (i % 97 == 0) x = (i % 2) ? kMin32 : kMax32;
    const int32_t m = (i % 2) ? mult(gen) : normalised(gen);
    const int s = shift(gen);
    const int32_t got = multiply_by_quantized_multiplier(x, m, s, Rounding::kSingle);
    const __int128 product = static_cast<__int128>(x) * m;
    const int k = 31 - s;
    ASSERT_EQ(got, saturate(round_half_up_pot(product, k))) << x << " " << m << " " << s;
    if (kLongDoubleExact) {
      const long double v = std::floor(std::ldexp(static_cast<long double>(product), -k) + 0.5L);
      const long double clamped = std::fmax(std::fmin(v, kMax32), kMin32);
      ASSERT_EQ(got, static_cast<int32_t>(clamped)) << x << " " << m << " " << s;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 200000);
}

// Double rounding is exactly "round x * 2^left * m / 2^31 half up, then divide by 2^right half
// away", and never more than 1 from single rounding.
TEST(FixedPointPrimitives, DoubleRoundingIsTwoExactRoundings) {
  std::mt19937_64 gen(11);
  std::uniform_int_distribution<int32_t> any32(kMin32, kMax32);
  std::uniform_int_distribution<int32_t> normalised(1 << 30, kMax32);
  std::uniform_int_distribution<int> right_shift(-31, 0);
  std::uniform_int_distribution<int> left_shift(1, 30);
  for (int i = 0; i < 200000; ++i) {
    int32_t x = any32(gen);
    int s = right_shift(gen);
    if (i % 4 == 0) {  // a left shift with x small enough to fit after it
      s = left_shift(gen);
      x >>= s;
    }
    const int32_t m = normalised(gen);
    const int left = s > 0 ? s : 0, right = s > 0 ? 0 : -s;
    const __int128 high =
        round_half_up_pot(static_cast<__int128>(x) * (int64_t{1} << left) * m, 31);
    const int32_t want = saturate(round_half_away_pot(high, right));
    const int32_t got = multiply_by_quantized_multiplier(x, m, s, Rounding::kDouble);
    ASSERT_EQ(got, want) << x << " " << m << " " << s;
    const int32_t single = multiply_by_quantized_multiplier(x, m, s, Rounding::kSingle);
    ASSERT_LE(std::abs(int64_t{got} - single), 1) << x << " " << m << " " << s;
  }
}

// Where TFLite is undefined (x * 2^left leaves int32), lowbit saturates: the sign is right and
// the magnitude is beyond any 8/16-bit clamp.
TEST(FixedPointPrimitives, OverflowSaturates) {
  const QuantizedMultiplier three = quantize_multiplier(3.0);  // shift 2
  // kMax32 * 4 saturates to kMax32; SRDHM(kMax32, 0.75 * 2^31) = 1610612735.25 -> 1610612735.
  EXPECT_EQ(multiply_by_quantized_multiplier(kMax32, three), 1610612735);
  EXPECT_GE(multiply_by_quantized_multiplier(1 << 30, three), 1 << 30);
  EXPECT_LE(multiply_by_quantized_multiplier(-(1 << 30), three), -(1 << 30));
  EXPECT_EQ(multiply_by_quantized_multiplier(1 << 30, three, Rounding::kSingle), kMax32);
  EXPECT_EQ(multiply_by_quantized_multiplier(-(1 << 30), three, Rounding::kSingle), kMin32);
}

#ifndef NDEBUG
// Debug builds abort on violated preconditions of the per-element primitives.
TEST(FixedPointPrimitivesDeathTest, PreconditionsAbortInDebugBuilds) {
  EXPECT_DEATH(rounding_divide_by_pot(1, 32), "exponent");
  EXPECT_DEATH(multiply_by_quantized_multiplier(1, 1 << 30, 31), "shift");
  EXPECT_DEATH(multiply_by_quantized_multiplier(1, -1, 0, Rounding::kSingle), "multiplier");
  EXPECT_DEATH(average_pool_mean(1, 0), "count");
}
#endif

// ---- spec 3.2: conv output stage -------------------------------------------------------------

TEST(FixedPointConvOutputStage, WorkedExampleOsInt8Pc) {
  const ConvOutputStage os = make_conv_output_stage({.input_scale = 0.0235294122f,
                                                     .weight_scale = 0.0039215689f,
                                                     .output_scale = 0.0470588244f,
                                                     .output_zero_point = -128,
                                                     .activation = FusedActivation::kRelu6});
  EXPECT_EQ(os.effective_multiplier, 0.0019607844296842813);
  EXPECT_EQ(os.multiplier, (QuantizedMultiplier{1077952640, -8}));
  EXPECT_EQ(os.act_min, -128);
  EXPECT_EQ(os.act_max, 0);
  EXPECT_EQ(saturating_rounding_doubling_high_mul(1000, os.multiplier.multiplier), 502);
  EXPECT_EQ(rounding_divide_by_pot(502, 8), 2);
  EXPECT_EQ(os.apply(1000), -126);
  EXPECT_EQ(os.apply(-1000), -128);  // below ReLU's 0
  EXPECT_EQ(os.apply(1000000), 0);   // above 6
  EXPECT_EQ(os.apply(kMax32), 0);
}

// The legacy path multiplies the input scales in f32 first; the two multipliers differ.
TEST(FixedPointConvOutputStage, LegacyFloatProduct) {
  const float si = 0.1f, sw = 0.3f, so = 0.7f;
  EXPECT_EQ(conv_effective_multiplier(si, sw, so, true),
            static_cast<double>(si * sw) / static_cast<double>(so));
  EXPECT_EQ(conv_effective_multiplier(si, sw, so, false),
            static_cast<double>(si) * static_cast<double>(sw) / static_cast<double>(so));
  EXPECT_NE(conv_effective_multiplier(si, sw, so, true), conv_effective_multiplier(si, sw, so));
  const ConvOutputStage legacy = make_conv_output_stage({.input_scale = si,
                                                         .weight_scale = sw,
                                                         .output_scale = so,
                                                         .output_zero_point = 128,
                                                         .dtype = QuantDType::kU8,
                                                         .legacy_float_product = true});
  EXPECT_EQ(legacy.effective_multiplier, conv_effective_multiplier(si, sw, so, true));
  EXPECT_EQ(legacy.act_min, 0);
  EXPECT_EQ(legacy.act_max, 255);
  EXPECT_EQ(legacy.apply(70), 128 + 3);  // 70 * 0.0428571 = 3.0
}

TEST(FixedPointConvOutputStage, SingleRoundingOption) {
  ConvOutputStageConfig c{.input_scale = 0.5f, .weight_scale = 0.5f, .output_scale = 1.0f};
  const ConvOutputStage d = make_conv_output_stage(c);
  c.rounding = Rounding::kSingle;
  const ConvOutputStage s = make_conv_output_stage(c);
  // M = 0.25: -2 * 0.25 = -0.5 goes away from zero in double rounding, up in single.
  EXPECT_EQ(d.apply(-2), -1);
  EXPECT_EQ(s.apply(-2), 0);
}

TEST(FixedPointConvOutputStage, Int16Output) {
  const ConvOutputStage os = make_conv_output_stage({.input_scale = 0.001f,
                                                     .weight_scale = 0.002f,
                                                     .output_scale = 0.0001f,
                                                     .activation = FusedActivation::kRelu,
                                                     .dtype = QuantDType::kS16});
  EXPECT_EQ(os.act_min, 0);
  EXPECT_EQ(os.act_max, 32767);
  EXPECT_EQ(os.apply(50000), 1000);  // 50000 * 0.02
  EXPECT_EQ(os.apply(kMax32), 32767);
}

TEST(FixedPointConvOutputStage, RejectsBadConfigs) {
  expect_throws_with<ValueError>([] { make_conv_output_stage({.input_scale = 0.0f}); },
                                 "make_conv_output_stage: argument 'input_scale'");
  expect_throws_with<ValueError>(
      [] { make_conv_output_stage({.weight_scale = std::numeric_limits<float>::quiet_NaN()}); },
      "argument 'weight_scale'");
  expect_throws_with<ValueError>([] { make_conv_output_stage({.output_scale = -1.0f}); },
                                 "argument 'output_scale'");
  expect_throws_with<ValueError>([] { make_conv_output_stage({.output_zero_point = 128}); },
                                 "expected a zero point in [-128, 127] (int8) but found 128");
  expect_throws_with<ValueError>(
      [] { make_conv_output_stage({.output_zero_point = -1, .dtype = QuantDType::kU8}); },
      "(uint8) but found -1");
  // M = 2^30 needs shift 31, for either rounding.
  for (Rounding r : {Rounding::kDouble, Rounding::kSingle})
    expect_throws_with<ValueError>(
        [r] {
          make_conv_output_stage({.input_scale = 1.0f,
                                  .weight_scale = 1.0f,
                                  .output_scale = std::ldexp(1.0f, -30),
                                  .rounding = r});
        },
        "must be < 2^30");
}

// ---- spec 3.5: activation range --------------------------------------------------------------

TEST(FixedPointActivationRange, SpecExamples) {
  // Row 19.
  EXPECT_EQ(activation_range(0.05f, -10, FusedActivation::kRelu6, QuantDType::kS8),
            (QuantRange{-10, 110}));
  // 3.5: QAT range [0, 6] on int8.
  EXPECT_EQ(activation_range(0.0470588f, -128, FusedActivation::kRelu6, QuantDType::kS8),
            (QuantRange{-128, 0}));
}

TEST(FixedPointActivationRange, EveryActivationAndType) {
  EXPECT_EQ(activation_range(0.1f, 3, FusedActivation::kNone, QuantDType::kS8),
            (QuantRange{-128, 127}));
  EXPECT_EQ(activation_range(0.1f, 3, FusedActivation::kNone, QuantDType::kU8),
            (QuantRange{0, 255}));
  EXPECT_EQ(activation_range(0.1f, 3, FusedActivation::kNone, QuantDType::kS16),
            (QuantRange{-32768, 32767}));
  EXPECT_EQ(activation_range(0.1f, 3, FusedActivation::kRelu, QuantDType::kS8),
            (QuantRange{3, 127}));
  EXPECT_EQ(activation_range(0.1f, 3, FusedActivation::kRelu6, QuantDType::kS8),
            (QuantRange{3, 63}));  // 6 / 0.1 = 60 in f32
  EXPECT_EQ(activation_range(0.1f, 3, FusedActivation::kReluN1To1, QuantDType::kS8),
            (QuantRange{-7, 13}));
  EXPECT_EQ(activation_range(0.001f, 0, FusedActivation::kReluN1To1, QuantDType::kS8),
            (QuantRange{-128, 127}));  // +-1000 clamped to the type
  EXPECT_EQ(activation_range(0.001f, 0, FusedActivation::kRelu6, QuantDType::kS16),
            (QuantRange{0, 6000}));
  EXPECT_EQ(activation_range(0.25f, 100, FusedActivation::kReluN1To1, QuantDType::kU8),
            (QuantRange{96, 104}));
  // quantize(6) far outside int32 (TFLite would fail): the type's limit.
  EXPECT_EQ(activation_range(1e-30f, 0, FusedActivation::kRelu6, QuantDType::kS16),
            (QuantRange{0, 32767}));
  // Ties round away from zero: 6 / 4 = 1.5 -> 2, -1 / 0.4 = -2.5 -> -3.
  EXPECT_EQ(activation_range(4.0f, 0, FusedActivation::kRelu6, QuantDType::kS8),
            (QuantRange{0, 2}));
  EXPECT_EQ(activation_range(0.4f, 0, FusedActivation::kReluN1To1, QuantDType::kS8).min, -3);
}

TEST(FixedPointActivationRange, RejectsBadArguments) {
  expect_throws_with<ValueError>(
      [] { activation_range(0.0f, 0, FusedActivation::kRelu, QuantDType::kS8); },
      "activation_range: argument 'scale'");
  expect_throws_with<ValueError>(
      [] {
        activation_range(std::numeric_limits<float>::infinity(), 0, FusedActivation::kRelu,
                         QuantDType::kS8);
      },
      "finite scale > 0");
  expect_throws_with<ValueError>(
      [] { activation_range(0.1f, 256, FusedActivation::kRelu, QuantDType::kU8); },
      "argument 'zero_point': expected a zero point in [0, 255] (uint8) but found 256");
  expect_throws_with<ValueError>([] { quant_dtype_from_name("int4"); }, "found 'int4'");
  expect_throws_with<ValueError>([] { fused_activation_from_name("tanh"); }, "found 'tanh'");
}

TEST(FixedPointNames, RoundTrip) {
  for (QuantDType t : {QuantDType::kS8, QuantDType::kU8, QuantDType::kS16})
    EXPECT_EQ(quant_dtype_from_name(quant_dtype_name(t)), t);
  EXPECT_EQ(quant_dtype_from_name("s8"), QuantDType::kS8);
  EXPECT_EQ(quant_dtype_from_name("u8"), QuantDType::kU8);
  EXPECT_EQ(quant_dtype_from_name("s16"), QuantDType::kS16);
  for (FusedActivation a : {FusedActivation::kNone, FusedActivation::kRelu, FusedActivation::kRelu6,
                            FusedActivation::kReluN1To1})
    EXPECT_EQ(fused_activation_from_name(fused_activation_name(a)), a);
  EXPECT_EQ(quant_range(QuantDType::kS8, true), (QuantRange{-127, 127}));
  EXPECT_EQ(quant_range(QuantDType::kU8, true), (QuantRange{1, 255}));
  EXPECT_EQ(quant_range(QuantDType::kS16, true), (QuantRange{-32767, 32767}));
}

// ---- spec 3.6: add, average pool, quantize / dequantize --------------------------------------

TEST(FixedPointAdd, DifferentScalesAndZeroPoints) {
  const AddStage s = make_add_stage({.input1_scale = 0.05f,
                                     .input1_zero_point = -20,
                                     .input2_scale = 0.02f,
                                     .input2_zero_point = 10,
                                     .output_scale = 0.08f,
                                     .output_zero_point = 5});
  // M1 = 0.5, M2 = 0.2, Mo = 0.1 / (2^20 * 0.08).
  EXPECT_EQ(s.input1_multiplier, quantize_multiplier(0.5));
  EXPECT_EQ(s.input2_multiplier,
            quantize_multiplier(static_cast<double>(0.02f) / (2.0 * static_cast<double>(0.05f))));
  EXPECT_EQ(s.output_multiplier,
            quantize_multiplier(2.0 * static_cast<double>(0.05f) /
                                (std::ldexp(1.0, 20) * static_cast<double>(0.08f))));
  EXPECT_LE(s.input1_multiplier.shift, 0);
  EXPECT_LE(s.output_multiplier.shift, 0);
  // Against real arithmetic for every pair of codes: off by at most one code from the exact
  // sum, which lies away from ties for most pairs.
  int exact = 0;
  for (int q1 = -128; q1 <= 127; ++q1)
    for (int q2 = -128; q2 <= 127; q2 += 5) {
      const double real = 0.05 * (q1 + 20) + 0.02 * (q2 - 10);
      const double want = std::clamp(std::round(real / 0.08) + 5, -128.0, 127.0);
      const int32_t got = s.apply(q1, q2);
      ASSERT_LE(std::fabs(got - want), 1.0) << q1 << " " << q2;
      exact += got == want;
    }
  EXPECT_GT(exact, 256 * 52 * 9 / 10);
  // The same with zero points, hand-computed: (10 - -20) * 0.05 + (10 - 10) * 0.02 = 1.5
  // -> 1.5 / 0.08 = 18.75 -> 19, + 5 = 24.
  EXPECT_EQ(s.apply(10, 10), 24);
}

TEST(FixedPointAdd, Int16WithLeftShift15AndUint8) {
  const AddStage s16 = make_add_stage({.input1_scale = 1.0f / 4096,
                                       .input2_scale = 1.0f / 4096,
                                       .output_scale = 1.0f / 2048,
                                       .dtype = QuantDType::kS16,
                                       .left_shift = 15});
  EXPECT_EQ(s16.apply(32767, 32767), 32767);
  EXPECT_EQ(s16.apply(-32768, -32768), -32768);
  EXPECT_EQ(s16.apply(1000, 3000), 2000);
  EXPECT_EQ(s16.apply(1, 0), 1);    // 0.5 -> away from zero
  EXPECT_EQ(s16.apply(-1, 0), -1);  // -0.5 -> away from zero
  const AddStage u8 = make_add_stage({.input1_scale = 0.1f,
                                      .input1_zero_point = 128,
                                      .input2_scale = 0.1f,
                                      .input2_zero_point = 128,
                                      .output_scale = 0.2f,
                                      .output_zero_point = 128,
                                      .activation = FusedActivation::kRelu,
                                      .dtype = QuantDType::kU8});
  EXPECT_EQ(u8.act_min, 128);
  EXPECT_EQ(u8.apply(138, 148), 143);  // 1.0 + 2.0 = 3.0 -> 15 + 128
  EXPECT_EQ(u8.apply(100, 100), 128);  // negative, clamped by ReLU
}

TEST(FixedPointAdd, RejectsBadConfigs) {
  expect_throws_with<ValueError>([] { make_add_stage({.input2_scale = -1.0f}); },
                                 "make_add_stage: argument 'input2_scale'");
  expect_throws_with<ValueError>([] { make_add_stage({.input1_zero_point = 300}); },
                                 "argument 'input1_zero_point'");
  expect_throws_with<ValueError>([] { make_add_stage({.left_shift = 31}); },
                                 "argument 'left_shift': expected a value in [0, 30]");
  // int8: 255 * 2^24 > 2^31 - 1.
  expect_throws_with<ValueError>([] { make_add_stage({.left_shift = 24}); }, "too large");
  // int16 with zero point -32768: q - zp reaches 65535; 65535 * 2^16 leaves int32, * 2^15 does not.
  expect_throws_with<ValueError>(
      [] {
        make_add_stage({.input1_zero_point = -32768, .dtype = QuantDType::kS16, .left_shift = 16});
      },
      "too large");
  EXPECT_NO_THROW(
      make_add_stage({.input1_zero_point = -32768, .dtype = QuantDType::kS16, .left_shift = 15}));
  // Mo = 2 / (2^20 * 2^-20) = 2 >= 1.
  expect_throws_with<ValueError>([] { make_add_stage({.output_scale = std::ldexp(1.0f, -20)}); },
                                 "must be < 1");
}

TEST(FixedPointAveragePool, RoundsHalfAwayFromZero) {
  EXPECT_EQ(average_pool_mean(-5, 2), -3);  // row 20
  EXPECT_EQ(average_pool_mean(5, 2), 3);
  EXPECT_EQ(average_pool_mean(-4, 3), -1);  // -1.33
  EXPECT_EQ(average_pool_mean(-5, 3), -2);  // -1.67
  EXPECT_EQ(average_pool_mean(0, 7), 0);
  EXPECT_EQ(average_pool_mean(-1152, 9), -128);
  EXPECT_EQ(average_pool_mean(kMax32, 2), 1073741824);  // no int32 overflow of sum + count/2
  EXPECT_EQ(average_pool_mean(kMin32, 1), kMin32);
}

TEST(FixedPointQuantize, TfliteQuantizeRoundsAwayInF32) {
  // Row 21: -1.25 / 0.5 = -2.5 -> -3 (TF fake quant: -2).
  EXPECT_EQ(affine_quantize(-1.25f, QuantParams{0.5f, 0}, QuantDType::kS8), -3);
  EXPECT_EQ(affine_quantize(1.25f, QuantParams{0.5f, 0}, QuantDType::kS8), 3);
  EXPECT_EQ(affine_quantize(1000.0f, QuantParams{0.5f, 0}, QuantDType::kS8), 127);
  EXPECT_EQ(affine_quantize(-1e30f, QuantParams{1e-30f, 0}, QuantDType::kS16), -32768);
  EXPECT_EQ(affine_quantize(0.0f, QuantParams{0.1f, -128}, QuantDType::kS8), -128);
  EXPECT_EQ(affine_quantize(std::numeric_limits<float>::quiet_NaN(), QuantParams{0.1f, 7},
                            QuantDType::kU8),
            7);
  // The division is f32: 0.25f / 0.1f is 2.4999999627 in f64 but 2.5 in f32, which rounds to 3.
  ASSERT_LT(static_cast<double>(0.25f) / static_cast<double>(0.1f), 2.5);
  ASSERT_EQ(0.25f / 0.1f, 2.5f);
  EXPECT_EQ(affine_quantize(0.25f, QuantParams{0.1f, 0}, QuantDType::kS8), 3);
}

TEST(FixedPointQuantize, DequantizeRoundTrips) {
  const QuantParams p{0.0470588244f, -128};
  for (int32_t q = -128; q <= 127; ++q) {
    const float real = dequantize(q, p);
    EXPECT_EQ(real, static_cast<float>(static_cast<double>(p.scale) * (q + 128)));
    EXPECT_EQ(affine_quantize(real, p, QuantDType::kS8), q);
  }
  EXPECT_EQ(dequantize(-128, p), 0.0f);
  EXPECT_EQ(dequantize(kMax32, 1.0f, kMin32), static_cast<float>(4294967295.0));
}

// ---- spec 2.5: the converter ------------------------------------------------------------------

// TF's fake-quant nudged zero point (spec 1.2, f32), as the fake-quant ops compute it, for
// 8 bits: codes [0, 255], or [1, 255] narrow.
int32_t tf_nudged_zero_point(float min, float max, bool narrow_range) {
  return ops::fake_quant_nudge(min, max, 8, narrow_range).zero_point;
}

TEST(FixedPointConverter, SpecFormulaAndExamples) {
  const QuantRange s8 = quant_range(QuantDType::kS8);
  // [-1, 1]: scale 2/255; zf = 127 - 1/scale (the max anchor has the smaller error).
  const ConverterParams p = quant_params_from_min_max(-1.0f, 1.0f, s8);
  EXPECT_EQ(p.scale, 2.0 / 255.0);
  EXPECT_EQ(p.stored(), (QuantParams{static_cast<float>(2.0 / 255.0), p.zero_point}));
  EXPECT_EQ(p.zero_point, static_cast<int32_t>(std::round(127.0 - 1.0 / (2.0 / 255.0))));
  // Asymmetric, min-anchored: [-0.5, 10].
  const ConverterParams a = quant_params_from_min_max(-0.5f, 10.0f, s8);
  EXPECT_EQ(a.scale, 10.5 / 255.0);
  EXPECT_EQ(a.zero_point, -128 + 12);  // -128 + 0.5 / (10.5/255) = -128 + 12.14
  // A range not containing 0 clamps like the nudge: [12, 123] -> zp qmin (real range [0, 111]).
  EXPECT_EQ(quant_params_from_min_max(12.0f, 123.0f, s8).zero_point, -128);
  EXPECT_EQ(quant_params_from_min_max(-123.0f, -12.0f, s8).zero_point, 127);
  // uint8 storage.
  EXPECT_EQ(quant_params_from_min_max(0.0f, 6.0f, quant_range(QuantDType::kU8)).zero_point, 0);
  EXPECT_EQ(quant_params_from_min_max(0.0f, 6.0f, s8).zero_point, -128);
  // Degenerate: |max - min| < f64 epsilon -> scale 1, zero point qmin.
  const ConverterParams z = quant_params_from_min_max(0.0f, 0.0f, s8);
  EXPECT_EQ(z.scale, 1.0);
  EXPECT_EQ(z.zero_point, -128);
  const ConverterParams e =
      quant_params_from_min_max(0.5f, 0.5f, quant_range(QuantDType::kU8, true));
  EXPECT_EQ(e.scale, 1.0);
  EXPECT_EQ(e.zero_point, 1);
  // A difference just above epsilon is an ordinary range.
  const float tiny = 1e-15f;
  EXPECT_EQ(quant_params_from_min_max(0.0f, tiny, s8).scale, static_cast<double>(tiny) / 255.0);
}

// Spec 2.5: the int8 zero point equals TF's uint8 nudged zero point minus 128, except at ties.
TEST(FixedPointConverter, ZeroPointIsTheFakeQuantNudgeShiftedBy128) {
  struct Range {
    float min, max;
  };
  for (bool narrow : {false, true}) {
    const QuantRange s8 = quant_range(QuantDType::kS8, narrow);
    for (Range r : std::vector<Range>{{-0.13f, 25.37f},
                                      {-3.0f, 5.0f},
                                      {-0.5f, 10.0f},
                                      {-10.0f, 0.25f},
                                      {-123.0f, -12.0f},
                                      {12.0f, 123.0f},
                                      {0.0f, 6.0f},
                                      {-6.0f, 0.0f},
                                      {-2.7f, 2.2f},
                                      {-0.001f, 1000.0f}}) {
      SCOPED_TRACE(::testing::Message() << "[" << r.min << ", " << r.max << "] narrow " << narrow);
      EXPECT_EQ(quant_params_from_min_max(r.min, r.max, s8).zero_point,
                tf_nudged_zero_point(r.min, r.max, narrow) - 128);
    }
  }
  // Random ranges: equal unless the zero point is within 1e-3 of a half-integer (f32 vs f64).
  std::mt19937_64 gen(3);
  std::uniform_real_distribution<float> lo(-20.0f, 2.0f), width(0.01f, 30.0f);
  int compared = 0;
  for (int i = 0; i < 20000; ++i) {
    const float min = lo(gen), max = min + width(gen);
    const bool narrow = i % 2;
    const QuantRange s8 = quant_range(QuantDType::kS8, narrow);
    const double zf = s8.min - min / ((static_cast<double>(max) - min) / (s8.max - s8.min));
    if (std::fabs(zf - std::floor(zf) - 0.5) < 1e-3) continue;
    ++compared;
    ASSERT_EQ(quant_params_from_min_max(min, max, s8).zero_point,
              tf_nudged_zero_point(min, max, narrow) - 128)
        << min << " " << max << " narrow " << narrow;
  }
  EXPECT_GT(compared, 19000);
}

// At a tie the two computations may disagree: [-6, 6] wide has its zero point on 127.5.
TEST(FixedPointConverter, TiesMayDisagreeWithTheFakeQuant) {
  EXPECT_EQ(tf_nudged_zero_point(-6.0f, 6.0f, false), 128);  // spec row 5
  // f64: zf_max = 127 - 6 / (12/255) = -0.5 (the max anchor has the smaller error) -> -1.
  EXPECT_EQ(quant_params_from_min_max(-6.0f, 6.0f, quant_range(QuantDType::kS8)).zero_point, -1);
}

TEST(FixedPointConverter, SymmetricWeights) {
  const QuantRange narrow = quant_range(QuantDType::kS8, true);
  for (float max_abs : {0.37f, 1.0f, 6.0f, 123.456f}) {
    const ConverterParams p = symmetric_weight_params(max_abs, narrow);
    EXPECT_EQ(p.zero_point, 0);
    EXPECT_EQ(p.scale, static_cast<double>(max_abs) / 127.0);
    // The same as the general rule on [-max_abs, max_abs].
    const ConverterParams g = quant_params_from_min_max(-max_abs, max_abs, narrow);
    EXPECT_EQ(g.scale, p.scale);
    EXPECT_EQ(g.zero_point, 0);
    EXPECT_EQ(quantize_weight(max_abs, p.scale, 0, narrow), 127);
    EXPECT_EQ(quantize_weight(-max_abs, p.scale, 0, narrow), -127);
  }
  EXPECT_EQ(symmetric_weight_params(0.0f, narrow).scale, 1.0);
  EXPECT_EQ(symmetric_weight_params(0.0f, narrow).zero_point, 0);
  expect_throws_with<ValueError>([&] { symmetric_weight_params(-1.0f, narrow); },
                                 "argument 'max_abs'");
  expect_throws_with<ValueError>(
      [] { symmetric_weight_params(1.0f, quant_range(QuantDType::kU8)); }, "min < 0 < max");
}

TEST(FixedPointConverter, WeightTiesGoAwayFromZero) {
  const QuantRange narrow = quant_range(QuantDType::kS8, true);
  const double scale = 0.5;
  EXPECT_EQ(quantize_weight(-1.25, scale, 0, narrow), -3);  // fake quant trained it as -2
  EXPECT_EQ(quantize_weight(1.25, scale, 0, narrow), 3);
  EXPECT_EQ(quantize_weight(-1000.0, scale, 0, narrow), -127);
  EXPECT_EQ(quantize_weight(0.2, scale, 5, quant_range(QuantDType::kU8)), 5);
  expect_throws_with<ValueError>([&] { quantize_weight(NAN, scale, 0, narrow); }, "argument 'w'");
  expect_throws_with<ValueError>([&] { quantize_weight(1.0, 0.0, 0, narrow); }, "argument 'scale'");
}

TEST(FixedPointConverter, Bias) {
  const float bs = bias_scale(0.0235294122f, 0.0039215689f);
  EXPECT_EQ(bs, 0.0235294122f * 0.0039215689f);
  const float inv = static_cast<float>(1.0 / static_cast<double>(bs));
  for (float b : {0.0f, 0.5f, -0.5f, 1.2345f, -7.0f, 100.0f})
    EXPECT_EQ(quantize_bias(b, bs), static_cast<int32_t>(std::round(b * inv))) << b;
  EXPECT_EQ(quantize_bias(1.5f, 1.0f), 2);  // ties away from zero
  EXPECT_EQ(quantize_bias(-1.5f, 1.0f), -2);
  EXPECT_EQ(quantize_bias(1e30f, 1e-10f), kMax32);  // saturated to +-(2^31 - 1)
  EXPECT_EQ(quantize_bias(-1e30f, 1e-10f), -kMax32);
  expect_throws_with<ValueError>([] { quantize_bias(INFINITY, 1.0f); }, "argument 'bias'");
  expect_throws_with<ValueError>([] { quantize_bias(1.0f, 0.0f); }, "argument 'bias_scale'");
}

TEST(FixedPointConverter, RejectsBadRanges) {
  const QuantRange s8 = quant_range(QuantDType::kS8);
  expect_throws_with<ValueError>([&] { quant_params_from_min_max(1.0f, -1.0f, s8); },
                                 "quant_params_from_min_max: expected finite min <= max");
  expect_throws_with<ValueError>([&] { quant_params_from_min_max(NAN, 1.0f, s8); }, "min <= max");
  expect_throws_with<ValueError>(
      [] {
        quant_params_from_min_max(-1.0f, 1.0f, QuantRange{5, 5});
      },
      "argument 'range'");
}

}  // namespace
}  // namespace lowbit::quant
