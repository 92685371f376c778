// The int8 nonlinearities of include/lowbit/ops/int8.h (qlogistic, qtanh, qsoftmax) against an
// independent route: the real function in f64 of the dequantized codes, rounded to the fixed
// output grid. TFLite computes the logistic/tanh tables in f32 and the softmax in gemmlowp
// fixed point, so a code may differ from the f64 rounding by one where the real value lies
// within a rounding error of a half step; elsewhere the codes must be equal. No int8 golden
// vectors for these ops exist in ../shared/testdata (its Keras vectors are float), so the
// hand-checked values below are derived here, in the comments. The fast rows
// (kernels/fast/int8_lut.h) are compared with the reference bit for bit at the end: every code,
// edge sizes, every softmax path.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "lowbit/fixed_point.h"
#include "lowbit/isa.h"
#include "lowbit/op.h"
#include "lowbit/ops.h"
#include "lowbit/ops/int8.h"
#include "lowbit/rng.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::expect_throws_with;
using testing::note_reference_tested;

Tensor all_codes() {
  Tensor x({256}, DType::kS8);
  for (int q = -128; q <= 127; ++q) x.data<int8_t>()[q + 128] = static_cast<int8_t>(q);
  return x;
}

// |got - round(want)| <= 1 for every code, equal where want is farther than `tie` from a half
// step; returns the number of codes off by one.
int expect_near_real(const Tensor& got, const std::vector<double>& want, double tie,
                     const std::string& what) {
  int off = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double w = std::clamp(want[i], -128.0, 127.0);
    const double r = std::clamp(std::round(w), -128.0, 127.0);
    const int g = got.data<int8_t>()[i];
    const double frac = std::fabs(w - std::floor(w) - 0.5);
    if (frac > tie || w <= -128 || w >= 127)
      EXPECT_EQ(g, r) << what << " element " << i << " (real code " << want[i] << ")";
    else
      EXPECT_LE(std::fabs(g - r), 1.0) << what << " element " << i;
    off += g != r;
  }
  return off;
}

// The f32 input scales below are the converter's: s_in as f32.
double f32(double v) { return static_cast<float>(v); }

TEST(QLogisticTanh, AreTheRealFunctionOnTheFixedOutputGrid) {
  note_reference_tested("qlogistic");
  note_reference_tested("qtanh");
  const Tensor x = all_codes();
  for (const auto& [s_in, zp] : std::vector<std::pair<double, int>>{
           {0.0625, 0}, {0.1, -20}, {0.0235294122, 17}, {0.5, 127}, {0.004, -128}}) {
    const Attrs a = {{"input_scale", s_in}, {"input_zero_point", int64_t{zp}}};
    const Tensor yl = ops::qlogistic(x, a);
    const Tensor yt = ops::qtanh(x, a);
    std::vector<double> wl, wt;
    for (int q = -128; q <= 127; ++q) {
      const double r = f32(s_in) * (q - zp);
      wl.push_back(256.0 / (1.0 + std::exp(-r)) - 128.0);  // scale 1/256, zero point -128
      wt.push_back(128.0 * std::tanh(r));                  // scale 1/128, zero point 0
    }
    // f32 tables: a relative 2^-22 on values up to 256 is < 1e-4 of a step.
    EXPECT_LE(expect_near_real(yl, wl, 1e-4, "logistic"), 2) << s_in;
    EXPECT_LE(expect_near_real(yt, wt, 1e-4, "tanh"), 2) << s_in;
    for (int i = 1; i < 256; ++i) {  // monotone in the code
      EXPECT_GE(yl.data<int8_t>()[i], yl.data<int8_t>()[i - 1]);
      EXPECT_GE(yt.data<int8_t>()[i], yt.data<int8_t>()[i - 1]);
    }
  }
  // By hand, s_in = 1/16, zp 0: logistic(0) = 1/2 -> 128 steps -> code 0; q = 127 is 7.94,
  // sigmoid 0.99964 -> 255.9 -> 256 -> clamped to 127; q = -128 is -8, 0.086 steps -> -128.
  // tanh(1) (q = 16) = 0.76159 -> 97.48 -> 97; tanh(-1) -> -97; q = 127: 0.99999975 -> 128 ->
  // clamped to 127.
  const Attrs a = {{"input_scale", 0.0625}, {"input_zero_point", int64_t{0}}};
  const Tensor l = ops::qlogistic(x, a), t = ops::qtanh(x, a);
  EXPECT_EQ(l.data<int8_t>()[128 + 0], 0);
  EXPECT_EQ(l.data<int8_t>()[128 + 127], 127);
  EXPECT_EQ(l.data<int8_t>()[0], -128);
  EXPECT_EQ(t.data<int8_t>()[128 + 0], 0);
  EXPECT_EQ(t.data<int8_t>()[128 + 16], 97);
  EXPECT_EQ(t.data<int8_t>()[128 - 16], -97);
  EXPECT_EQ(t.data<int8_t>()[128 + 127], 127);
  // Any shape: elementwise.
  Rng rng(3);
  const Tensor x3 = testing::random_int_tensor({2, 3, 5}, rng, -128, 127, DType::kS8);
  const Tensor y3 = ops::qtanh(x3, a);
  ASSERT_EQ(y3.shape(), x3.shape());
  for (int64_t i = 0; i < x3.numel(); ++i)
    EXPECT_EQ(y3.data<int8_t>()[i], t.data<int8_t>()[x3.data<int8_t>()[i] + 128]);
}

TEST(SoftmaxFixedPoint, PrimitivesMatchTheRealFunctions) {
  // exp of Q5.26 codes (the softmax's): gemmlowp's 4th-order Taylor step on [-1/4, 0) is good
  // to about 2e-7 of exp over [-31, 0].
  for (double v = -31.0; v <= 0.0; v += 0.0371) {
    const int32_t a = static_cast<int32_t>(std::round(v * (1 << 26)));
    const double got = quant::exp_on_negative_values_int32(a, 5) / 2147483648.0;
    EXPECT_NEAR(got, std::exp(a / 67108864.0), 2e-7) << v;
  }
  EXPECT_EQ(quant::exp_on_negative_values_int32(0, 5), INT32_MAX);
  // Other integer bits: Q0.31 and Q3.28.
  EXPECT_NEAR(quant::exp_on_negative_values_int32(-(1 << 30), 0) / 2147483648.0, std::exp(-0.5),
              2e-7);
  EXPECT_NEAR(quant::exp_on_negative_values_int32(-(3 << 27), 3) / 2147483648.0, std::exp(-1.5),
              2e-7);
  // 1 / (1 + a) on [0, 1).
  for (double v = 0.0; v < 1.0; v += 0.013) {
    const int32_t a = static_cast<int32_t>(v * 2147483648.0);
    EXPECT_NEAR(quant::one_over_one_plus_x_int32(a) / 2147483648.0, 1.0 / (1.0 + a / 2147483648.0),
                4e-9)
        << v;
  }
  // GetReciprocal: 1/x = r * 2^-bits for a Q12.19 sum.
  for (int32_t x : {1 << 19, 3 << 19, 123456789, 2000000000}) {
    int bits = 0;
    const int32_t r = quant::reciprocal_int32(x, 12, &bits);
    EXPECT_NEAR(r / 2147483648.0 * std::ldexp(1.0, -bits), 524288.0 / x, 1e-8 * 524288.0 / x) << x;
  }
  // Prepare: s_in = f32(0.1) = 0.100000001490116, beta 1: * 2^26 = 6710886.5 -> frexp
  // 0.800000011920929 * 2^23 -> M0 = round(that * 2^31) = 1717986944, left shift 23; radius
  // 31 * 2^26 / 2^23 = 248.
  const quant::SoftmaxStage s = quant::make_softmax_stage(0.1f, 1.0);
  EXPECT_EQ(s.input_multiplier, 1717986944);
  EXPECT_EQ(s.input_left_shift, 23);
  EXPECT_EQ(s.diff_min, -248);
  expect_throws_with<ValueError>([] { quant::make_softmax_stage(1e-9f, 1.0); }, "must be > 1");
  expect_throws_with<ValueError>([] { quant::make_softmax_stage(0.1f, 0.0); }, "beta");
}

// The real softmax of one row of codes, as codes on the output grid (scale 1/256, zp -128).
std::vector<double> real_softmax_codes(const int8_t* x, int64_t c, double s_in, double beta) {
  double mx = -1e300;
  for (int64_t j = 0; j < c; ++j) mx = std::max(mx, static_cast<double>(x[j]));
  double sum = 0;
  std::vector<double> e(c);
  for (int64_t j = 0; j < c; ++j) sum += e[j] = std::exp(beta * s_in * (x[j] - mx));
  for (int64_t j = 0; j < c; ++j) e[j] = 256.0 * e[j] / sum - 128.0;
  return e;
}

TEST(QSoftmax, IsTheRealSoftmaxOnTheFixedOutputGrid) {
  note_reference_tested("qsoftmax");
  // By hand: four equal codes are 1/4 each, 64 steps: code -64. One class: 1 -> 256 steps ->
  // clamped to 127. Two codes 10 apart at s_in 0.1 (beta 1): e^-1 / (1 + e^-1) = 0.26894 ->
  // 68.85 -> 69 -> -59, and 0.73106 -> 187.15 -> 187 -> 59.
  auto run = [](std::vector<int8_t> v, double s_in, double beta = 1.0) {
    Tensor x({1, static_cast<int64_t>(v.size())}, DType::kS8);
    std::copy(v.begin(), v.end(), x.data<int8_t>());
    const Tensor y =
        ops::qsoftmax(x, {{"input_scale", s_in}, {"input_zero_point", int64_t{3}}, {"beta", beta}});
    return std::vector<int>(y.data<int8_t>(), y.data<int8_t>() + y.numel());
  };
  EXPECT_EQ(run({5, 5, 5, 5}, 0.1), (std::vector<int>{-64, -64, -64, -64}));
  EXPECT_EQ(run({-7}, 0.1), (std::vector<int>{127}));
  EXPECT_EQ(run({0, 10}, 0.1), (std::vector<int>{-59, 59}));
  // beta scales the input: beta 2 at s_in 0.05 is beta 1 at 0.1.
  EXPECT_EQ(run({0, 10, -30, 7}, 0.05, 2.0), run({0, 10, -30, 7}, 0.1));
  // 1000 equal codes: 0.256 steps each -> 0 -> -128 (TFLite's reference CHECK-fails on a row
  // summing past 2^28 in Q12.19; lowbit rounds the tiny share to 0).
  EXPECT_EQ(run(std::vector<int8_t>(1000, 9), 0.1), std::vector<int>(1000, -128));

  // Random rows against the real softmax of the dequantized codes.
  Rng rng(11);
  int64_t total = 0, off = 0;
  for (const auto& [shape, s_in] : std::vector<std::pair<Shape, double>>{{{64, 10}, 0.1},
                                                                         {{8, 3, 7}, 0.0235294122},
                                                                         {{32, 1}, 0.3},
                                                                         {{16, 100}, 0.05},
                                                                         {{40, 10}, 0.4},
                                                                         {{5, 33}, 0.01}}) {
    const Tensor x = testing::random_int_tensor(shape, rng, -128, 127, DType::kS8);
    const Tensor y = ops::qsoftmax(x, {{"input_scale", s_in}, {"input_zero_point", int64_t{-5}}});
    ASSERT_EQ(y.shape(), x.shape());
    const int64_t c = shape[shape.rank() - 1];
    for (int64_t r = 0; r < x.numel() / c; ++r) {
      const std::vector<double> want =
          real_softmax_codes(x.data<int8_t>() + r * c, c, f32(s_in), 1.0);
      Tensor row({c}, DType::kS8);
      std::copy(y.data<int8_t>() + r * c, y.data<int8_t>() + (r + 1) * c, row.data<int8_t>());
      // Fixed point: exp within 2^-28, the reciprocal within 2^-29: < 1e-5 of a step.
      off += expect_near_real(row, want, 1e-5, "softmax " + shape.str());
      total += c;
    }
  }
  EXPECT_LE(off, total / 1000);
}

TEST(QNonlinear, RefuseOtherOutputParametersAndBadAttributes) {
  const Tensor x = Tensor::zeros({2, 4}, DType::kS8);
  const Attrs in = {{"input_scale", 0.1}, {"input_zero_point", int64_t{0}}};
  Attrs wrong = in;
  wrong.set("output_scale", 0.004);
  expect_throws_with<ValueError>([&] { ops::qlogistic(x, wrong); }, "fixed at scale");
  wrong = in;
  wrong.set("output_zero_point", int64_t{-127});
  expect_throws_with<ValueError>([&] { ops::qsoftmax(x, wrong); }, "fixed at scale");
  wrong = in;
  wrong.set("output_zero_point", int64_t{-128});  // tanh's is 0
  expect_throws_with<ValueError>([&] { ops::qtanh(x, wrong); }, "fixed at scale");
  Attrs fixed = in;
  fixed.set("output_scale", 1.0 / 128);
  fixed.set("output_zero_point", int64_t{0});
  EXPECT_NO_THROW(ops::qtanh(x, fixed));
  expect_throws_with<ValueError>([&] { ops::qtanh(x, Attrs{}); }, "'input_scale' is required");
  Attrs beta = in;
  beta.set("beta", -1.0);
  expect_throws_with<ValueError>([&] { ops::qsoftmax(x, beta); }, "beta");
  expect_throws_with<DTypeError>([&] { ops::qlogistic(Tensor::zeros({3}), in); }, "'x'");
  expect_throws_with<ShapeError>([&] { ops::qsoftmax(Tensor::zeros({}, DType::kS8), in); },
                                 "scalar");
}

}  // namespace
}  // namespace lowbit

// ---- fast rows (kernels/fast/int8_lut.h) against the reference, bit for bit ------------------

namespace lowbit {
namespace {

using testing::expect_fast_matches_reference;

int runnable_rows(const std::string& op) {
  int n = 0;
  for (const FastKernel& fk : find_op(op).fast) n += cpu_has(fk.isa) ? 1 : 0;
  return n;
}

// n codes running through all 256 from `start` (every code at every offset modulo 256 once
// n >= 256), every 7th replaced by a random one.
Tensor cycling_codes(const Shape& shape, int start, Rng& rng) {
  Tensor x(shape, DType::kS8);
  int8_t* p = x.data<int8_t>();
  for (int64_t i = 0; i < x.numel(); ++i)
    p[i] = static_cast<int8_t>(i % 7 == 6 ? static_cast<int>(rng.next_u32() % 256) - 128
                                          : (start + i) % 256 - 128);
  return x;
}

// Sizes around every vector width (16 and 32 bytes for AVX2's int32 and byte steps, 64 for
// AVX-512), past the 256 codes, and past the threads' blocks (2^14; parallel above 2^22: one
// size below).
const int64_t kLutSizes[] = {1,  2,   15,  16,  17,  31,  32,  33,   63,    64,
                             65, 127, 128, 129, 255, 256, 257, 1000, 16385, 70001};

TEST(QLogisticTanhFast, MatchEveryCodeOfTheReferenceTable) {
  for (const char* op : {"qlogistic", "qtanh"}) {
    const int rows = runnable_rows(op);
    Rng rng(83);
    // The table itself: all 256 codes in order, then shifted by 1 and 37 so each code meets
    // other lanes; scales from steep to flat, zero points at both int8 ends.
    const std::vector<std::pair<double, int64_t>> params = {
        {0.0625, 0}, {0.1, -20}, {0.0235294122, 17}, {0.5, 127}, {0.004, -128}, {1.7, -128}};
    for (const auto& [s_in, zp] : params) {
      const Attrs a = {{"input_scale", s_in}, {"input_zero_point", zp}};
      for (int start : {0, 1, 37})
        EXPECT_EQ(
            expect_fast_matches_reference(op, {cycling_codes({256}, start, rng)}, a, 0.0, 0.0),
            rows)
            << op << " " << a.str();
    }
    for (const int64_t n : kLutSizes) {
      const double s_in = rng.uniform(0.002, 0.3);
      const int64_t zp = static_cast<int64_t>(rng.next_u32() % 256) - 128;
      const Attrs a = {{"input_scale", s_in}, {"input_zero_point", zp}};
      EXPECT_EQ(expect_fast_matches_reference(
                    op, {cycling_codes({n}, static_cast<int>(n % 256), rng)}, a, 0.0, 0.0),
                rows)
          << op << " n " << n << " " << a.str();
    }
    // Threads (above 2^22 codes), once.
    EXPECT_EQ(
        expect_fast_matches_reference(op, {cycling_codes({(int64_t{1} << 22) + 17}, 5, rng)},
                                      {{"input_scale", 0.05}, {"input_zero_point", 1}}, 0.0, 0.0),
        rows);
    // A 4-D activation with a channel tail.
    const Attrs a = {{"input_scale", 0.05}, {"input_zero_point", int64_t{-3}}};
    EXPECT_EQ(
        expect_fast_matches_reference(op, {cycling_codes({2, 5, 7, 24}, 9, rng)}, a, 0.0, 0.0),
        rows);
  }
}

// Softmax rows of every kind the fast rows distinguish: depths 1, 2, 10, the vector widths
// +-1, 1001, 5000 (a sum past INT32_MAX saturates: 5000 equal codes); rows of random codes
// over the whole range (the short-row path: each element computed), narrow rows (the per-row
// table), constant rows (exponent > 31 for 512 or more codes: all -128), rows holding -128 and
// 127; input scales and betas from gentle (diff_min below -255: no cut) to steep (diff_min
// of a few codes: most of a row cut to -128).
TEST(QSoftmaxFast, MatchesTheReferenceOnEveryRowKind) {
  const int rows = runnable_rows("qsoftmax");
  Rng rng(97);
  const std::vector<std::pair<double, double>> params = {
      {0.1, 1.0},  {0.0235294122, 1.0}, {0.004, 1.0}, {1e-6, 1.0}, {0.3, 1.0},
      {1.0, 10.0}, {0.05, 2.0},         {16.0, 1.0},  {0.25, 0.7}};
  auto fill = [&](Tensor& x, int kind) {
    int8_t* p = x.data<int8_t>();
    const int64_t depth = x.dim(-1);
    const int base = static_cast<int>(rng.next_u32() % 256) - 128;
    for (int64_t i = 0; i < x.numel(); ++i) {
      int v = 0;
      switch (kind) {
        case 0:  // the whole range
          v = static_cast<int>(rng.next_u32() % 256) - 128;
          break;
        case 1:  // a narrow range of 9 codes
          v = std::clamp(base + static_cast<int>(rng.next_u32() % 9) - 4, -128, 127);
          break;
        case 2:  // constant
          v = base;
          break;
        default: {  // the ends and their neighbours
          const int64_t j = (i % depth) % 4;
          v = j == 0 ? 127 : j == 1 ? -128 : j == 2 ? 126 : -127;
        }
      }
      p[i] = static_cast<int8_t>(v);
    }
  };
  for (const int64_t depth : {1,  2,  3,   10,  15,  16,  17,  31,  32,  33,   63,
                              64, 65, 100, 127, 128, 129, 255, 256, 257, 1001, 5000})
    for (int kind = 0; kind < 4; ++kind) {
      const auto& [s_in, beta] = params[rng.next_u32() % params.size()];
      const int64_t n_rows = depth >= 1000 ? 3 : 7;
      Tensor x({n_rows, depth}, DType::kS8);
      fill(x, kind);
      const Attrs a = {{"input_scale", s_in}, {"input_zero_point", int64_t{-128}}, {"beta", beta}};
      EXPECT_EQ(expect_fast_matches_reference("qsoftmax", {x}, a, 0.0, 0.0), rows)
          << "depth " << depth << " kind " << kind << " " << a.str();
    }
  // Every parameter set on the same rows, and a tensor large enough for the threads.
  for (const auto& [s_in, beta] : params)
    for (const Shape& shape : {Shape{40, 10}, Shape{3, 5, 65}, Shape{2, 1001}}) {
      Tensor x(shape, DType::kS8);
      fill(x, static_cast<int>(rng.next_u32() % 2));
      const Attrs a = {{"input_scale", s_in}, {"input_zero_point", int64_t{127}}, {"beta", beta}};
      EXPECT_EQ(expect_fast_matches_reference("qsoftmax", {x}, a, 0.0, 0.0), rows)
          << shape.str() << " " << a.str();
    }
  // Threads: more than 2^22 codes (rows of 1024 in blocks of 16 rows).
  Tensor big({4100, 1024}, DType::kS8);
  fill(big, 0);
  EXPECT_EQ(expect_fast_matches_reference("qsoftmax", {big}, {{"input_scale", 0.05}}, 0.0, 0.0),
            rows);
  // One row of 2^16 + 8 equal codes: 2^13 + 1 values of 2^19 in each of 8 int32 lanes would
  // wrap to 2^19 (AVX2 sums lanes into int64 every 2^14 elements); the reference saturates the
  // sum and gives -128 everywhere.
  Tensor wide({1, (int64_t{1} << 16) + 8}, DType::kS8);
  std::fill(wide.data<int8_t>(), wide.data<int8_t>() + wide.numel(), int8_t{3});
  EXPECT_EQ(expect_fast_matches_reference("qsoftmax", {wide}, {{"input_scale", 0.1}}, 0.0, 0.0),
            rows);
  // Every pair (max, other code): a row [max, q] for each of the 256 x 256 pairs is too many;
  // the 256 rows [127, q] and [q, -128] reach every difference in [-255, 0] from both ends.
  Tensor x({512, 2}, DType::kS8);
  for (int q = 0; q < 256; ++q) {
    x.data<int8_t>()[2 * q] = 127;
    x.data<int8_t>()[2 * q + 1] = static_cast<int8_t>(q - 128);
    x.data<int8_t>()[512 + 2 * q] = static_cast<int8_t>(q - 128);
    x.data<int8_t>()[512 + 2 * q + 1] = -128;
  }
  for (const auto& [s_in, beta] : params)
    EXPECT_EQ(expect_fast_matches_reference("qsoftmax", {x},
                                            {{"input_scale", s_in}, {"beta", beta}}, 0.0, 0.0),
              rows);
}

}  // namespace
}  // namespace lowbit
