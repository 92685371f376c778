// Parameter preparation for the integer primitives of lowbit/fixed_point.h. The formulas
// and their sources are in the header and in docs/spec/quantization-semantics.md 2.5, 3.2-3.6.
#include "lowbit/fixed_point.h"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <ostream>

namespace lowbit::quant {
namespace {

void require_positive_scale(const char* fn, const char* arg, double scale) {
  if (!(std::isfinite(scale) && scale > 0.0))
    LOWBIT_THROW(ValueError, fn, ": argument '", arg, "': expected a finite scale > 0 but found ",
                 scale);
}

void require_zero_point(const char* fn, const char* arg, int32_t zero_point, QuantDType dtype) {
  const QuantRange r = quant_range(dtype);
  if (zero_point < r.min || zero_point > r.max)
    LOWBIT_THROW(ValueError, fn, ": argument '", arg, "': expected a zero point in [", r.min, ", ",
                 r.max, "] (", quant_dtype_name(dtype), ") but found ", zero_point);
}

// round_away(f32(f) / f32(scale)) + zero_point, in f64 so that it cannot overflow.
double quantize_for_clamp(float f, float scale, int32_t zero_point) {
  return static_cast<double>(std::round(f / scale)) + zero_point;
}

}  // namespace

std::ostream& operator<<(std::ostream& os, const QuantizedMultiplier& qm) {
  return os << "(" << qm.multiplier << ", " << qm.shift << ")";
}
std::ostream& operator<<(std::ostream& os, const QuantRange& r) {
  return os << "[" << r.min << ", " << r.max << "]";
}
std::ostream& operator<<(std::ostream& os, const QuantParams& p) {
  return os << "{scale " << p.scale << ", zero_point " << p.zero_point << "}";
}

const char* quant_dtype_name(QuantDType dtype) {
  switch (dtype) {
    case QuantDType::kS8:
      return "int8";
    case QuantDType::kU8:
      return "uint8";
    case QuantDType::kS16:
      return "int16";
    default:
      break;
  }
  return "?";
}

QuantDType quant_dtype_from_name(const std::string& name) {
  if (name == "int8" || name == "s8") return QuantDType::kS8;
  if (name == "uint8" || name == "u8") return QuantDType::kU8;
  if (name == "int16" || name == "s16") return QuantDType::kS16;
  LOWBIT_THROW(ValueError, "quant_dtype_from_name: expected one of int8, uint8, int16 but found '",
               name, "'");
}

const char* fused_activation_name(FusedActivation activation) {
  switch (activation) {
    case FusedActivation::kNone:
      return "none";
    case FusedActivation::kRelu:
      return "relu";
    case FusedActivation::kRelu6:
      return "relu6";
    case FusedActivation::kReluN1To1:
      return "relu_n1_to_1";
  }
  return "?";
}

FusedActivation fused_activation_from_name(const std::string& name) {
  for (FusedActivation a : {FusedActivation::kNone, FusedActivation::kRelu, FusedActivation::kRelu6,
                            FusedActivation::kReluN1To1})
    if (name == fused_activation_name(a)) return a;
  LOWBIT_THROW(ValueError,
               "fused_activation_from_name: expected one of none, relu, relu6, relu_n1_to_1 but "
               "found '",
               name, "'");
}

QuantizedMultiplier quantize_multiplier(double real_multiplier, Rounding rounding) {
  if (!(std::isfinite(real_multiplier) && real_multiplier >= 0.0))
    LOWBIT_THROW(ValueError,
                 "quantize_multiplier: argument 'real_multiplier': expected a finite value >= 0 "
                 "but found ",
                 real_multiplier);
  if (real_multiplier == 0.0) return {0, 0};
  int shift = 0;
  const double q = std::frexp(real_multiplier, &shift);  // q in [0.5, 1)
  // q * 2^31 is exact in f64; std::round rounds half away from zero. The result is at most 2^31.
  int64_t m = static_cast<int64_t>(std::round(q * static_cast<double>(int64_t{1} << 31)));
  if (m == (int64_t{1} << 31)) {  // q rounded up to 1.0: renormalise
    m /= 2;
    ++shift;
  }
  // A shift below -31 would shift every bit out: such an M (< 2^-32) multiplies to 0 anyway.
  if (shift < -31) return {0, 0};
  // The single-rounding multiply shifts right by 31 - shift >= 1 and cannot shift left further.
  if (rounding == Rounding::kSingle && shift > 30) return {std::numeric_limits<int32_t>::max(), 30};
  return {static_cast<int32_t>(m), shift};
}

QuantRange activation_range(float scale, int32_t zero_point, FusedActivation activation,
                            QuantDType dtype) {
  require_positive_scale("activation_range", "scale", scale);
  require_zero_point("activation_range", "zero_point", zero_point, dtype);
  const QuantRange type = quant_range(dtype);
  auto lower = [&](float f) {
    return static_cast<int32_t>(
        std::max<double>(type.min, quantize_for_clamp(f, scale, zero_point)));
  };
  auto upper = [&](float f) {
    return static_cast<int32_t>(
        std::min<double>(type.max, quantize_for_clamp(f, scale, zero_point)));
  };
  switch (activation) {
    case FusedActivation::kNone:
      return type;
    case FusedActivation::kRelu:
      return {lower(0.0f), type.max};
    case FusedActivation::kRelu6:
      return {lower(0.0f), upper(6.0f)};
    case FusedActivation::kReluN1To1:
      return {lower(-1.0f), upper(1.0f)};
  }
  return type;
}

double conv_effective_multiplier(float input_scale, float weight_scale, float output_scale,
                                 bool legacy_float_product) {
  if (legacy_float_product)
    return static_cast<double>(input_scale * weight_scale) / static_cast<double>(output_scale);
  return static_cast<double>(input_scale) * static_cast<double>(weight_scale) /
         static_cast<double>(output_scale);
}

ConvOutputStage make_conv_output_stage(const ConvOutputStageConfig& c) {
  constexpr const char* fn = "make_conv_output_stage";
  require_positive_scale(fn, "input_scale", c.input_scale);
  require_positive_scale(fn, "weight_scale", c.weight_scale);
  require_positive_scale(fn, "output_scale", c.output_scale);
  require_zero_point(fn, "output_zero_point", c.output_zero_point, c.dtype);
  ConvOutputStage os;
  os.effective_multiplier = conv_effective_multiplier(c.input_scale, c.weight_scale, c.output_scale,
                                                      c.legacy_float_product);
  // Check the unsaturated shift: the single-rounding cap would silently change M.
  const QuantizedMultiplier unsaturated = quantize_multiplier(os.effective_multiplier);
  if (unsaturated.shift > 30)
    LOWBIT_THROW(ValueError, fn, ": effective multiplier input_scale * weight_scale / output_scale",
                 " = ", os.effective_multiplier, " must be < 2^30 (shift <= 30) but its shift is ",
                 unsaturated.shift);
  os.multiplier = quantize_multiplier(os.effective_multiplier, c.rounding);
  os.output_zero_point = c.output_zero_point;
  const QuantRange act =
      activation_range(c.output_scale, c.output_zero_point, c.activation, c.dtype);
  os.act_min = act.min;
  os.act_max = act.max;
  os.rounding = c.rounding;
  return os;
}

AddStage make_add_stage(const AddConfig& c) {
  constexpr const char* fn = "make_add_stage";
  require_positive_scale(fn, "input1_scale", c.input1_scale);
  require_positive_scale(fn, "input2_scale", c.input2_scale);
  require_positive_scale(fn, "output_scale", c.output_scale);
  require_zero_point(fn, "input1_zero_point", c.input1_zero_point, c.dtype);
  require_zero_point(fn, "input2_zero_point", c.input2_zero_point, c.dtype);
  require_zero_point(fn, "output_zero_point", c.output_zero_point, c.dtype);
  if (c.left_shift < 0 || c.left_shift > 30)
    LOWBIT_THROW(ValueError, fn, ": argument 'left_shift': expected a value in [0, 30] but found ",
                 c.left_shift);
  const QuantRange type = quant_range(c.dtype);
  for (int32_t zp : {c.input1_zero_point, c.input2_zero_point}) {
    const int64_t widest = std::max<int64_t>(int64_t{type.max} - zp, int64_t{zp} - type.min);
    if (widest * (int64_t{1} << c.left_shift) > std::numeric_limits<int32_t>::max())
      LOWBIT_THROW(ValueError, fn, ": argument 'left_shift': ", c.left_shift,
                   " is too large: (q - zero_point) * 2^left_shift reaches ", widest, " * 2^",
                   c.left_shift, " for ", quant_dtype_name(c.dtype), " codes with zero point ", zp,
                   ", beyond int32");
  }
  const double twice_max = 2.0 * static_cast<double>(std::max(c.input1_scale, c.input2_scale));
  const double m1 = static_cast<double>(c.input1_scale) / twice_max;
  const double m2 = static_cast<double>(c.input2_scale) / twice_max;
  // 2^left_shift * s_out is exact (a power of two times an f32, well inside f64's range).
  const double mo =
      twice_max / (std::ldexp(1.0, c.left_shift) * static_cast<double>(c.output_scale));
  if (!(mo < 1.0))
    LOWBIT_THROW(ValueError, fn,
                 ": the output multiplier 2 * max(input scales) / (2^left_shift * output_scale) "
                 "must be < 1 but is ",
                 mo, " (output_scale ", c.output_scale, " is too small for left_shift ",
                 c.left_shift, ")");
  AddStage s;
  s.input1_offset = -c.input1_zero_point;
  s.input2_offset = -c.input2_zero_point;
  s.left_shift = c.left_shift;
  s.input1_multiplier = quantize_multiplier(m1, c.rounding);
  s.input2_multiplier = quantize_multiplier(m2, c.rounding);
  s.output_multiplier = quantize_multiplier(mo, c.rounding);
  s.output_zero_point = c.output_zero_point;
  const QuantRange act =
      activation_range(c.output_scale, c.output_zero_point, c.activation, c.dtype);
  s.act_min = act.min;
  s.act_max = act.max;
  s.rounding = c.rounding;
  return s;
}

ConverterParams quant_params_from_min_max(float min, float max, QuantRange range) {
  constexpr const char* fn = "quant_params_from_min_max";
  if (!std::isfinite(min) || !std::isfinite(max) || min > max)
    LOWBIT_THROW(ValueError, fn, ": expected finite min <= max but found min ", min, ", max ", max);
  if (range.min >= range.max)
    LOWBIT_THROW(ValueError, fn, ": argument 'range': expected min < max but found [", range.min,
                 ", ", range.max, "]");
  const double rmin = min, rmax = max;
  const double qmin = range.min, qmax = range.max;
  if (std::fabs(rmax - rmin) < DBL_EPSILON) return {1.0, range.min};
  const double scale = (rmax - rmin) / (qmax - qmin);
  const double zf_min = qmin - rmin / scale;
  const double err_min = std::fabs(qmin) + std::fabs(rmin / scale);
  const double zf_max = qmax - rmax / scale;
  const double err_max = std::fabs(qmax) + std::fabs(rmax / scale);
  const double zf = err_min < err_max ? zf_min : zf_max;
  const int32_t zero_point = zf < qmin   ? range.min
                             : zf > qmax ? range.max
                                         : static_cast<int32_t>(std::round(zf));
  return {scale, zero_point};
}

ConverterParams symmetric_weight_params(float max_abs, QuantRange range) {
  constexpr const char* fn = "symmetric_weight_params";
  if (!(std::isfinite(max_abs) && max_abs >= 0.0f))
    LOWBIT_THROW(ValueError, fn, ": argument 'max_abs': expected a finite value >= 0 but found ",
                 max_abs);
  if (!(range.min < 0 && range.max > 0))
    LOWBIT_THROW(ValueError, fn, ": argument 'range': expected min < 0 < max but found [",
                 range.min, ", ", range.max, "]");
  if (max_abs == 0.0f) return {1.0, 0};
  return {static_cast<double>(max_abs) / range.max, 0};
}

int32_t quantize_weight(double w, double scale, int32_t zero_point, QuantRange range) {
  constexpr const char* fn = "quantize_weight";
  if (!std::isfinite(w))
    LOWBIT_THROW(ValueError, fn, ": argument 'w': expected a finite value but found ", w);
  require_positive_scale(fn, "scale", scale);
  const double q = std::round(w / scale) + zero_point;
  return q < range.min ? range.min : q > range.max ? range.max : static_cast<int32_t>(q);
}

int32_t quantize_bias(float bias, float bias_scale) {
  constexpr const char* fn = "quantize_bias";
  if (!std::isfinite(bias))
    LOWBIT_THROW(ValueError, fn, ": argument 'bias': expected a finite value but found ", bias);
  require_positive_scale(fn, "bias_scale", bias_scale);
  const float inv = static_cast<float>(1.0 / static_cast<double>(bias_scale));
  const double q = std::round(bias * inv);  // f32 product, rounded away from zero
  constexpr double kLimit = std::numeric_limits<int32_t>::max();  // +-(2^31 - 1)
  return static_cast<int32_t>(std::clamp(q, -kLimit, kLimit));
}

// ---- int16 logistic and tanh ----------------------------------------------------------------
//
// Raw int16 fixed point as gemmlowp computes it: a format Qm.(15-m) is only a convention of the
// caller; products and sums act on the raw codes. Written from the algorithm description in
// the header (gemmlowp fixedpoint.h's exp / tanh / logistic for the int16 raw type).
namespace {
namespace fx16 {

constexpr int32_t kMax16 = 32767;
constexpr int32_t kMin16 = -32768;

// Plain int16 arithmetic: wraps (gemmlowp's non-saturating Add/Sub on int16).
int16_t wrap(int32_t v) { return static_cast<int16_t>(v); }

// SaturatingRoundingDoublingHighMul on int16: a*b / 2^15 rounded half up; (-1)*(-1) -> max.
int16_t mul(int16_t a, int16_t b) {
  if (a == kMin16 && b == kMin16) return static_cast<int16_t>(kMax16);
  const int32_t p = static_cast<int32_t>(a) * b;
  const int32_t nudge = p >= 0 ? (1 << 14) : (1 - (1 << 14));
  return static_cast<int16_t>((p + nudge) / (1 << 15));
}
int16_t rdpot(int16_t x, int e) { return static_cast<int16_t>(rounding_divide_by_pot(x, e)); }
int16_t saturating_add(int16_t a, int16_t b) {
  return static_cast<int16_t>(std::clamp<int32_t>(int32_t{a} + b, kMin16, kMax16));
}
// x * 2^e, e > 0, saturating (gemmlowp's SaturatingRoundingMultiplyByPOT for positive e).
int16_t shift_left_saturating(int16_t x, int e) {
  const int32_t threshold = (1 << (15 - e)) - 1;
  if (x > threshold) return static_cast<int16_t>(kMax16);
  if (x < -threshold) return static_cast<int16_t>(kMin16);
  return wrap(int32_t{x} * (1 << e));
}
// From `src` integer bits to `dst` integer bits.
int16_t rescale(int16_t x, int src, int dst) {
  const int e = src - dst;
  return e > 0 ? shift_left_saturating(x, e) : e < 0 ? rdpot(x, -e) : x;
}
// A Q0.31-style int32 constant brought to 16 bits (rounding right shift by 16).
int16_t constant(int32_t raw32) { return static_cast<int16_t>(rounding_divide_by_pot(raw32, 16)); }
// (a + b) / 2 rounded half away from zero.
int16_t rounding_half_sum(int16_t a, int16_t b) {
  const int32_t s = int32_t{a} + b;
  return static_cast<int16_t>((s + (s >= 0 ? 1 : -1)) / 2);
}

// exp(a) for a in [-1/4, 0), Q0.15 in and out: Taylor around -1/8.
int16_t exp_quarter(int16_t a) {
  const int16_t e_eighth = constant(1895147668);  // exp(-1/8)
  const int16_t third = constant(715827883);      // 1/3
  const int16_t x = wrap(a + (1 << 12));          // a + 1/8
  const int16_t x2 = mul(x, x), x3 = mul(x2, x), x4 = mul(x2, x2);
  // x^2/2 + x^3/6 + x^4/24 = ((x^4/4 + x^3) / 3 + x^2) / 2
  const int16_t tail = rdpot(wrap(mul(wrap(rdpot(x4, 2) + x3), third) + x2), 1);
  return saturating_add(e_eighth, mul(e_eighth, wrap(x + tail)));
}

// exp(a) for a <= 0 given with m integer bits; Q0.15 result (exp(0) = 32767).
int16_t exp_negative(int16_t a, int m) {
  const int f = 15 - m;
  const int16_t quarter = static_cast<int16_t>(1 << (f - 2));
  // a = (a mod 1/4 - 1/4) - remainder, with a mod 1/4 - 1/4 in [-1/4, 0).
  const int16_t low = wrap((a & (quarter - 1)) - quarter);
  int16_t result = exp_quarter(rescale(low, m, 0));
  const int16_t remainder = wrap(low - a);  // >= 0: the multiples of 1/4 to take away
  // exp(-2^k) for k = -2 .. 4 as Q0.31 constants.
  static constexpr int32_t kExpNegPow2[] = {1672461947, 1302514674, 790015084, 290630308,
                                            39332535,   720401,     242};
  for (int k = -2; k <= 4; ++k)
    if (m > k && (remainder & (1 << (f + k)))) result = mul(result, constant(kExpNegPow2[k + 2]));
  if (m > 5 && a < -(1 << (20 - m))) result = 0;  // below -32: 0
  if (a == 0) result = static_cast<int16_t>(kMax16);
  return result;
}

// Three Newton-Raphson steps for 1 / d, d = half_denominator in [1/2, 1): Q2.13 result.
int16_t reciprocal_q2(int16_t half_denominator) {
  const int16_t c48_17 = constant(1515870810);    // 48/17 in Q2
  const int16_t cm32_17 = constant(-1010580540);  // -32/17 in Q2
  const int16_t one = 1 << 13;
  int16_t x = wrap(c48_17 + mul(half_denominator, cm32_17));
  for (int i = 0; i < 3; ++i) {
    const int16_t e = wrap(one - mul(half_denominator, x));  // 1 - d x
    x = wrap(x + shift_left_saturating(mul(x, e), 2));       // x + x (1 - d x), Q4 -> Q2
  }
  return x;
}

}  // namespace fx16
}  // namespace

int16_t logistic_int16(int16_t x, int input_int_bits) {
  LOWBIT_DCHECK(input_int_bits >= 0 && input_int_bits <= 6,
                "logistic_int16: input_int_bits must be in [0, 6] but is ", input_int_bits);
  using namespace fx16;
  if (x == 0) return 1 << 14;
  const bool positive = x > 0;
  const int16_t magnitude = positive ? x : wrap(-int32_t{x});
  const int16_t e = exp_negative(wrap(-int32_t{magnitude}), input_int_bits);  // exp(-|x|)
  // 1 / (1 + e): the reciprocal of (1 + e) / 2 in Q2 is 2 / (1 + e); halve it into Q0.
  const int16_t r = reciprocal_q2(rounding_half_sum(e, static_cast<int16_t>(kMax16)));
  const int16_t sigma = shift_left_saturating(r, 1);
  return positive ? sigma : wrap(kMax16 - sigma);
}

int16_t tanh_int16(int16_t x, int input_int_bits) {
  LOWBIT_DCHECK(input_int_bits >= 0 && input_int_bits <= 6,
                "tanh_int16: input_int_bits must be in [0, 6] but is ", input_int_bits);
  using namespace fx16;
  if (x == 0) return 0;
  const bool negative = x < 0;
  const int16_t n = negative ? x : wrap(-int32_t{x});  // -|x|
  // exp(-2|x|): the same code read with one more integer bit.
  const int16_t e = exp_negative(n, input_int_bits + 1);
  // (1 - e) / (1 + e) = 2 / (1 + e) - 1.
  const int16_t r = reciprocal_q2(rounding_half_sum(e, static_cast<int16_t>(kMax16)));
  const int16_t t = shift_left_saturating(wrap(r - (1 << 13)), 2);
  return negative ? wrap(-int32_t{t}) : t;
}

// ---- int8 softmax (int32 gemmlowp fixed point) ------------------------------------------------
//
// Written from the algorithm description in the header (gemmlowp fixedpoint.h's int32
// exp_on_negative_values and one_over_one_plus_x_for_x_in_0_1, TFLite's GetReciprocal and
// PreprocessSoftmaxScaling). Raw int32 codes; products are SRDHM (a*b / 2^31 rounded half up).
namespace {
namespace fx32 {

constexpr int32_t kMax32 = std::numeric_limits<int32_t>::max();
constexpr int32_t kMin32 = std::numeric_limits<int32_t>::min();

// gemmlowp's int32 additions wrap (two's complement); no call below overflows in practice.
int32_t wrap(int64_t v) { return static_cast<int32_t>(static_cast<uint32_t>(v)); }
int32_t mul(int32_t a, int32_t b) { return saturating_rounding_doubling_high_mul(a, b); }
// x * 2^e, 0 < e < 31, saturating (SaturatingRoundingMultiplyByPOT for a positive exponent).
int32_t shift_left_saturating(int32_t x, int e) {
  const int32_t threshold = static_cast<int32_t>((int64_t{1} << (31 - e)) - 1);
  if (x > threshold) return kMax32;
  if (x < -threshold) return kMin32;
  return wrap(int64_t{x} * (int64_t{1} << e));
}
// (a + b) / 2 rounded half away from zero (gemmlowp RoundingHalfSum).
int32_t rounding_half_sum(int32_t a, int32_t b) {
  const int64_t s = int64_t{a} + b;
  return static_cast<int32_t>((s + (s >= 0 ? 1 : -1)) / 2);
}

// exp(a) for a in [-1/4, 0), Q0.31 in and out: Taylor around -1/8.
int32_t exp_quarter(int32_t a) {
  constexpr int32_t kExpMinusEighth = 1895147668;  // exp(-1/8)
  constexpr int32_t kThird = 715827883;            // 1/3
  const int32_t x = wrap(int64_t{a} + (1 << 28));  // a + 1/8
  const int32_t x2 = mul(x, x), x3 = mul(x2, x), x4 = mul(x2, x2);
  // x^2/2 + x^3/6 + x^4/24 = ((x^4/4 + x^3) / 3 + x^2) / 2
  const int32_t x4_4 = rounding_divide_by_pot(x4, 2);
  const int32_t tail =
      rounding_divide_by_pot(wrap(int64_t{mul(wrap(int64_t{x4_4} + x3), kThird)} + x2), 1);
  return wrap(int64_t{kExpMinusEighth} + mul(kExpMinusEighth, wrap(int64_t{x} + tail)));
}

}  // namespace fx32
}  // namespace

int32_t exp_on_negative_values_int32(int32_t a, int integer_bits) {
  LOWBIT_DCHECK(integer_bits >= 0 && integer_bits <= 6,
                "exp_on_negative_values_int32: integer_bits must be in [0, 6] but is ",
                integer_bits);
  using namespace fx32;
  const int m = integer_bits, f = 31 - m;
  const int32_t quarter = int32_t{1} << (f - 2);
  // a = (a mod 1/4 - 1/4) - remainder, with a mod 1/4 - 1/4 in [-1/4, 0).
  const int32_t low = wrap(int64_t{a & (quarter - 1)} - quarter);
  int32_t result = exp_quarter(m > 0 ? shift_left_saturating(low, m) : low);
  const int32_t remainder = wrap(int64_t{low} - a);  // >= 0: the multiples of 1/4 to take away
  // exp(-2^k) for k = -2 .. 4 in Q0.31.
  static constexpr int32_t kExpNegPow2[] = {1672461947, 1302514674, 790015084, 290630308,
                                            39332535,   720401,     242};
  for (int k = -2; k <= 4; ++k)
    if (m > k && (remainder & (int32_t{1} << (f + k)))) result = mul(result, kExpNegPow2[k + 2]);
  if (m > 5 && a < -(int32_t{1} << (36 - m))) result = 0;  // below -32: 0
  if (a == 0) result = kMax32;
  return result;
}

int32_t one_over_one_plus_x_int32(int32_t a) {
  using namespace fx32;
  const int32_t half_denominator = rounding_half_sum(a, kMax32);  // (1 + a) / 2, Q0.31
  constexpr int32_t k48_17 = 1515870810;                          // 48/17 in Q2.29
  constexpr int32_t kMinus32_17 = -1010580540;                    // -32/17 in Q2.29
  int32_t x = wrap(int64_t{k48_17} + mul(half_denominator, kMinus32_17));
  for (int i = 0; i < 3; ++i) {
    const int32_t e = wrap((int64_t{1} << 29) - mul(half_denominator, x));  // 1 - d x, Q2.29
    x = wrap(int64_t{x} + shift_left_saturating(mul(x, e), 2));  // x + x (1 - d x), Q4 -> Q2
  }
  return shift_left_saturating(x, 1);  // 2 / (1 + a) in Q2.29 read as Q1.30, to Q0.31
}

int32_t reciprocal_int32(int32_t x, int integer_bits, int* bits_over_unit) {
  LOWBIT_DCHECK(x > 0, "reciprocal_int32: x must be > 0 but is ", x);
  const int headroom_plus_one = std::countl_zero(static_cast<uint32_t>(x));
  *bits_over_unit = integer_bits - headroom_plus_one;
  const int32_t shifted_minus_one =
      static_cast<int32_t>((static_cast<uint32_t>(x) << headroom_plus_one) - (uint32_t{1} << 31));
  return one_over_one_plus_x_int32(shifted_minus_one);
}

SoftmaxStage make_softmax_stage(float input_scale, double beta) {
  require_positive_scale("make_softmax_stage", "input_scale", input_scale);
  if (!(std::isfinite(beta) && beta > 0.0))
    LOWBIT_THROW(ValueError, "make_softmax_stage: argument 'beta': expected a finite value > 0 ",
                 "but found ", beta);
  // TFLite keeps beta as f32; the product in f64, capped at the largest multiplier.
  constexpr int kScaledDiffIntegerBits = 5;
  const double real =
      std::min(static_cast<double>(static_cast<float>(beta)) * static_cast<double>(input_scale) *
                   static_cast<double>(int64_t{1} << (31 - kScaledDiffIntegerBits)),
               static_cast<double>((int64_t{1} << 31) - 1));
  if (!(real > 1.0))
    LOWBIT_THROW(ValueError, "make_softmax_stage: beta * input_scale * 2^26 = ", real,
                 " must be > 1 (TFLite's QuantizeMultiplierGreaterThanOne): input_scale ",
                 input_scale, " is too small");
  const QuantizedMultiplier qm = quantize_multiplier(real);
  SoftmaxStage s;
  s.input_multiplier = qm.multiplier;
  s.input_left_shift = qm.shift;  // >= 1, since real > 1
  // CalculateInputRadius(5, left): the largest |d| whose rescaled value fits Q5.26.
  const double radius = 31.0 * static_cast<double>(int64_t{1} << (31 - kScaledDiffIntegerBits)) /
                        static_cast<double>(int64_t{1} << s.input_left_shift);
  s.diff_min = -static_cast<int32_t>(std::floor(radius));
  return s;
}

int32_t softmax_exp(const SoftmaxStage& s, int32_t d) {
  LOWBIT_DCHECK(d >= s.diff_min && d <= 0, "softmax_exp: d must be in [diff_min, 0] but is ", d);
  // |d| * 2^left <= 31 * 2^26 for d >= diff_min: no overflow.
  const int32_t rescaled = saturating_rounding_doubling_high_mul(
      static_cast<int32_t>(int64_t{d} * (int64_t{1} << s.input_left_shift)), s.input_multiplier);
  return exp_on_negative_values_int32(rescaled, 5);  // Q5.26 in, Q0.31 out
}

SoftmaxRowScale softmax_row_scale(int64_t sum) {
  const int32_t sum32 = static_cast<int32_t>(std::min<int64_t>(sum, fx32::kMax32));
  int bits_over_unit = 0;
  SoftmaxRowScale rs;
  rs.reciprocal = reciprocal_int32(sum32, 12, &bits_over_unit);
  rs.exponent = bits_over_unit + 31 - 8;
  return rs;
}

int32_t softmax_code(const SoftmaxRowScale& rs, int32_t e) {
  const int32_t p = saturating_rounding_doubling_high_mul(rs.reciprocal, e);  // in [0, 2^31)
  // TFLite checks exponent <= 31 (a row summing to < 2^28: fewer than 512 near-maximal
  // codes); beyond, p / 2^exponent < 1/2 rounds to 0.
  const int32_t unsat = rs.exponent <= 31 ? rounding_divide_by_pot(p, rs.exponent) : 0;
  return std::clamp(unsat - 128, -128, 127);
}

void softmax_row_s8(const SoftmaxStage& s, int64_t depth, const int8_t* x, int8_t* y) {
  int32_t mx = -128;
  for (int64_t j = 0; j < depth; ++j) mx = std::max<int32_t>(mx, x[j]);
  int64_t sum = 0;  // Q12.19
  for (int64_t j = 0; j < depth; ++j) {
    const int32_t d = int32_t{x[j]} - mx;
    if (d >= s.diff_min) sum += rounding_divide_by_pot(softmax_exp(s, d), 12);
  }
  const SoftmaxRowScale rs = softmax_row_scale(sum);
  for (int64_t j = 0; j < depth; ++j) {
    const int32_t d = int32_t{x[j]} - mx;
    y[j] = static_cast<int8_t>(d >= s.diff_min ? softmax_code(rs, softmax_exp(s, d)) : -128);
  }
}

}  // namespace lowbit::quant
