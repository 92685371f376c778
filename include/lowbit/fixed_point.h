// Integer-inference arithmetic: the fixed-point helpers an int8 converter and integer kernels use
// to stay bit-identical with TFLite (gemmlowp arithmetic). Plain functions on scalars, not ops.
// Part of core (the ground floor, docs/design.md): ops, kernels and quant all use it. The names
// keep their namespace lowbit::quant (they are the quantization vocabulary).
// Normative text: docs/spec/quantization-semantics.md, sections 2.5 and 3.1-3.6 (cited "spec
// 3.4" below); golden vectors: shared/testdata/fakequant_examples.json.
//
// Words used throughout:
//   code        an integer q of the storage type; it stands for the real value
//               scale * (q - zero_point)  (spec 3.1)
//   multiplier  a real number M > 0 stored as an int32 `multiplier` m and an exponent `shift` s
//               with M ~= m * 2^(s - 31); normalised m lies in [2^30, 2^31)  (spec 3.3)
//   SRDHM       saturating_rounding_doubling_high_mul; RDPOT: rounding_divide_by_pot;
//   MBQM        multiply_by_quantized_multiplier (computes round(x * M) the TFLite way)
//
// The requantisation at the end of an int8 conv, as a kernel runs it:
//
//   ConvOutputStage os = make_conv_output_stage({.input_scale = 0.0235294122f,
//       .weight_scale = 0.0039215689f, .output_scale = 0.0470588244f,
//       .output_zero_point = -128, .activation = FusedActivation::kRelu6});
//   // os.multiplier == {1077952640, -8}, os.act_min == -128, os.act_max == 0
//   int32_t q = os.apply(1000);   // SRDHM(1000, m) = 502, RDPOT(502, 8) = 2, 2 - 128 = -126
//
// Errors. Functions that prepare parameters (quantize_multiplier, activation_range,
// make_conv_output_stage, make_add_stage, the converter functions, the name parsers) are API
// boundaries: they throw lowbit::ValueError naming the function, the argument, what was expected
// and what was found. The per-element primitives (saturating_rounding_doubling_high_mul,
// rounding_divide_by_pot, multiply_by_quantized_multiplier, affine_quantize, dequantize,
// average_pool_mean and the apply() members) never throw: their argument ranges are
// preconditions checked with LOWBIT_DCHECK (abort in debug builds, free in release builds), as
// the prepare step already guaranteed them.
//
// Rounding vocabulary (spec 0): round_away = C `round` (ties away from zero); "half up" = ties
// toward +infinity.
#pragma once

#include <cmath>
#include <cstdint>
#include <iosfwd>
#include <limits>
#include <string>

#include "lowbit/dtype.h"
#include "lowbit/error.h"

namespace lowbit::quant {

// ---- types ---------------------------------------------------------------------------------

// How multiply_by_quantized_multiplier rounds (spec 3.4).
//   kDouble: TFLite's default build and gemmlowp: SRDHM rounds x*m/2^31 half up, then RDPOT
//            rounds the right shift half away from zero. Two roundings, so not always the
//            nearest integer: 5 * 0.25 -> 2.
//   kSingle: TFLITE_SINGLE_ROUNDING (and ruy): one rounding of the exact product, half up.
//            quantize_multiplier caps its shift at 30 for this build.
enum class Rounding : uint8_t { kDouble, kSingle };

// Storage type of quantized codes, one of the tensor dtypes (one vocabulary for tensors and
// quantization parameters): DType::kS8 = int8 [-128, 127] (TFLite's current scheme), kU8 =
// uint8 [0, 255] (the legacy scheme), kS16 = int16 [-32768, 32767] (16x8 activations, LSTM
// gates). Other dtypes are not code types.
using QuantDType = DType;

// Activation fused into a kernel's output clamp (TFLite's fused_activation_function).
enum class FusedActivation : uint8_t { kNone, kRelu, kRelu6, kReluN1To1 };

// An inclusive range of codes [min, max].
struct QuantRange {
  int32_t min = 0;
  int32_t max = 0;
  bool operator==(const QuantRange&) const = default;
};

// Stored (scale, zero_point) of a tensor as a model file holds them: real = scale * (q - zp).
struct QuantParams {
  float scale = 1.0f;
  int32_t zero_point = 0;
  bool operator==(const QuantParams&) const = default;
};

// M ~= multiplier * 2^(shift - 31). quantize_multiplier returns multiplier in [2^30, 2^31) or
// the pair (0, 0) for M == 0 (and for M < 2^-32, which it flushes to 0).
struct QuantizedMultiplier {
  int32_t multiplier = 0;
  int shift = 0;
  bool operator==(const QuantizedMultiplier&) const = default;
};

// Printing (test messages, logs): "(m, shift)", "[min, max]", "{scale, zero_point}".
std::ostream& operator<<(std::ostream& os, const QuantizedMultiplier& qm);
std::ostream& operator<<(std::ostream& os, const QuantRange& r);
std::ostream& operator<<(std::ostream& os, const QuantParams& p);

// The full code range of `dtype`; narrow_range drops the lowest code, so that the range is
// symmetric for signed types: s8 narrow = [-127, 127], u8 narrow = [1, 255] (the TF fake-quant
// narrow grid), s16 narrow = [-32767, 32767].
constexpr QuantRange quant_range(QuantDType dtype, bool narrow_range = false) {
  QuantRange r = dtype == QuantDType::kS8   ? QuantRange{-128, 127}
                 : dtype == QuantDType::kU8 ? QuantRange{0, 255}
                                            : QuantRange{-32768, 32767};
  if (narrow_range) ++r.min;
  return r;
}

// "int8", "uint8", "int16" (the names of the golden-vector files).
const char* quant_dtype_name(QuantDType dtype);
// Accepts "int8"/"s8", "uint8"/"u8", "int16"/"s16"; throws ValueError otherwise.
QuantDType quant_dtype_from_name(const std::string& name);
// "none", "relu", "relu6", "relu_n1_to_1".
const char* fused_activation_name(FusedActivation activation);
// Accepts the names above; throws ValueError otherwise.
FusedActivation fused_activation_from_name(const std::string& name);

// ---- multipliers (spec 3.3) ----------------------------------------------------------------

// QuantizeMultiplier: splits a real multiplier M >= 0 into (m, shift), M ~= m * 2^(shift - 31):
//   M == 0                   -> (0, 0)
//   (q, shift) = frexp(M)       M = q * 2^shift, q in [0.5, 1)
//   m = round_away(q * 2^31)    f64, exact product
//   m == 2^31                -> (2^30, shift + 1)   the carry: 1 - 2^-33 -> (2^30, 1)
//   shift < -31              -> (0, 0)              flush: M < 2^-32 always multiplies to 0
//   kSingle only: shift > 30 -> (2^31 - 1, 30)      saturate what single rounding cannot shift
// Examples: 1e-6 -> (1125899907, -19); 0.1 -> (1717986918, -3); 1.0 -> (2^30, 1);
// 3.0 -> (1610612736, 2); 1e-10 -> (0, 0); 2^31 -> kDouble (2^30, 32), kSingle (2^31 - 1, 30).
// shift > 0 (a left shift) exactly when M >= 1. The double-rounding multiply accepts only
// shift <= 30, i.e. M < 2^30; quantize_multiplier still returns larger shifts unchanged (as
// TFLite does) and leaves the check to its caller (make_conv_output_stage throws for them).
// Throws ValueError if M is negative, NaN or infinite.
QuantizedMultiplier quantize_multiplier(double real_multiplier,
                                        Rounding rounding = Rounding::kDouble);

// The real value multiplier * 2^(shift - 31) (exact in f64).
inline double quantized_multiplier_value(QuantizedMultiplier qm) {
  return std::ldexp(static_cast<double>(qm.multiplier), qm.shift - 31);
}

// ---- fixed-point primitives (spec 3.4, gemmlowp fixedpoint.h) -------------------------------

namespace detail {
constexpr int32_t saturate_s32(int64_t v) {
  return v > std::numeric_limits<int32_t>::max()   ? std::numeric_limits<int32_t>::max()
         : v < std::numeric_limits<int32_t>::min() ? std::numeric_limits<int32_t>::min()
                                                   : static_cast<int32_t>(v);
}
}  // namespace detail

// SaturatingRoundingDoublingHighMul (ARM VQRDMULH): the high 32 bits of 2*a*b, i.e. a*b / 2^31
// rounded half toward +infinity (-0.5 -> 0, +0.5 -> 1):
//   p = a*b (int64); nudge = p >= 0 ? 2^30 : 1 - 2^30; result = (p + nudge) / 2^31 (truncating)
// The one overflow, a == b == INT32_MIN (result 2^31), saturates to INT32_MAX.
// Examples: (3, 2^30) -> 2; (INT32_MIN, 2^31 - 1) -> -2147483647. Defined for all inputs.
inline int32_t saturating_rounding_doubling_high_mul(int32_t a, int32_t b) {
  if (a == b && a == std::numeric_limits<int32_t>::min())
    return std::numeric_limits<int32_t>::max();
  const int64_t ab = static_cast<int64_t>(a) * b;
  const int64_t nudge = ab >= 0 ? (int64_t{1} << 30) : (1 - (int64_t{1} << 30));
  return static_cast<int32_t>((ab + nudge) / (int64_t{1} << 31));
}

// RoundingDivideByPOT: x / 2^exponent rounded half away from zero (-2.5 -> -3, 2.5 -> 3):
//   mask = 2^e - 1; r = x & mask; threshold = (mask >> 1) + (x < 0);
//   result = (x >> e) + (r > threshold)                       (>> is arithmetic)
// Examples: (-5, 1) -> -3; (7, 2) -> 2; (-1, 31) -> 0; (INT32_MIN, 31) -> -1.
// Precondition (DCHECK): 0 <= exponent <= 31.
inline int32_t rounding_divide_by_pot(int32_t x, int exponent) {
  LOWBIT_DCHECK(exponent >= 0 && exponent <= 31,
                "rounding_divide_by_pot: exponent must be in [0, 31] but is ", exponent);
  const int32_t mask = static_cast<int32_t>((int64_t{1} << exponent) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

// MultiplyByQuantizedMultiplier: x * M rounded to an integer, M = multiplier * 2^(shift - 31).
//   kDouble (TFLite default):
//     left = max(shift, 0); right = max(-shift, 0)
//     result = RDPOT(SRDHM(x * 2^left, multiplier), right)
//     Not correctly rounded: (5, 2^30, -1) is 1.25 -> 2; (52266, 2091764047, -2) is
//     12727.47 -> 12728; (-2, 2^30, -1) is -0.5 -> -1 (the final shift rounds away from 0).
//   kSingle (TFLITE_SINGLE_ROUNDING, ruy):
//     result = (x * multiplier + 2^(30 - shift)) >> (31 - shift)   in int64
//     i.e. the exact product rounded once, half up: (52266, 2091764047, -2) -> 12727,
//     (-2, 2^30, -1) -> 0.
// Both give -2147483647 for (INT32_MIN, 2^31 - 1, 0). The two differ by at most 1.
// Preconditions (DCHECK): -31 <= shift <= 30; kSingle also multiplier >= 0. Where TFLite is
// undefined (x * 2^left overflows int32 in kDouble; the result leaves int32 in kSingle) lowbit
// saturates to int32: with a normalised multiplier the result then has the sign of the exact
// product and a magnitude of at least 2^30 - 1, so a later clamp to an 8- or 16-bit range gives
// the code exact arithmetic would.
inline int32_t multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int shift,
                                                Rounding rounding = Rounding::kDouble) {
  LOWBIT_DCHECK(shift >= -31 && shift <= 30,
                "multiply_by_quantized_multiplier: shift must be in [-31, 30] but is ", shift);
  if (rounding == Rounding::kSingle) {
    LOWBIT_DCHECK(multiplier >= 0,
                  "multiply_by_quantized_multiplier: single rounding needs multiplier >= 0 but "
                  "it is ",
                  multiplier);
    const int total_shift = 31 - shift;  // in [1, 62]; |x * m| < 2^62, so no int64 overflow
    const int64_t round = int64_t{1} << (total_shift - 1);
    return detail::saturate_s32((static_cast<int64_t>(x) * multiplier + round) >> total_shift);
  }
  const int left = shift > 0 ? shift : 0;
  const int right = shift > 0 ? 0 : -shift;
  const int32_t shifted = detail::saturate_s32(static_cast<int64_t>(x) * (int64_t{1} << left));
  return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right);
}
inline int32_t multiply_by_quantized_multiplier(int32_t x, QuantizedMultiplier qm,
                                                Rounding rounding = Rounding::kDouble) {
  return multiply_by_quantized_multiplier(x, qm.multiplier, qm.shift, rounding);
}

// ---- int16 logistic and tanh (spec 3.7, gemmlowp fixedpoint.h) ------------------------------
//
// The gate nonlinearities of TFLite's integer LSTM ("8x8_16"): gemmlowp's fixed-point logistic
// and tanh on raw int16 codes, bit for bit. Input: a code x of the format Qm.(15-m), i.e. the
// real value x / 2^(15-m) with m = input_int_bits in [0, 6] (LSTM gates: m = 3, Q3.12, range
// [-8, 8); the cell state: m = p). Output: a Q0.15 code y, the real value y / 2^15:
//   logistic_int16: y in [0, 32767]; logistic_int16(0, m) = 16384 (0.5); the top code 32767
//                   stands for 1 (not representable).
//   tanh_int16:     y in [-32767, 32767] (odd: tanh_int16(-x) = -tanh_int16(x) for x > -32768);
//                   tanh_int16(0, m) = 0.
// Accuracy over the whole int16 input range (tested for every m): logistic within 7 units of
// 2^-15 of the real function of x / 2^(15-m), tanh within 13. The last step computes the result
// in Q2.13 and shifts it left by 1 (logistic) or 2 (tanh), so the outputs move in steps of 2 or
// 4 codes and are monotone only up to a few codes (neighbouring inputs can step back).
// How (all int16 fixed point: products by SRDHM16 = a*b / 2^15 rounded half up, saturating
// only (-1)*(-1); additions wrap as gemmlowp's int16 arithmetic): exp(v) for v < 0 splits
// v = q + r with r in [-1/4, 0) the remainder modulo 1/4, exp(r) by a 4th-order Taylor step
// around -1/8, times exp(-2^k) for each set bit k of the integer part (a barrel shifter of
// constants, k from -2 up to m - 1); exp of inputs below -32 is 0 (only reachable for m > 5).
// Then 1 / (1 + e) (logistic of |x|, mirrored for x < 0) and (1 - e) / (1 + e) with e =
// exp(-2|x|) (tanh) by three Newton-Raphson steps in Q2.13 from the initial guess
// 48/17 - 32/17 d, d = (1 + e) / 2. Constants are gemmlowp's Q0.31 values rounded to 16 bits.
// Precondition (DCHECK): 0 <= input_int_bits <= 6.
int16_t logistic_int16(int16_t x, int input_int_bits = 3);
int16_t tanh_int16(int16_t x, int input_int_bits);

// ---- int8 softmax (spec 3.6, TFLite reference_ops::Softmax, gemmlowp fixedpoint.h) ----------
//
// The int32 fixed-point pieces of TFLite's reference int8 softmax, bit for bit (the default,
// double-rounding build):
//   exp_on_negative_values_int32(a, m): exp of a <= 0 given as a Qm.(31-m) code (m in [0, 6]),
//     a Q0.31 result (exp(0) = INT32_MAX). The int16 algorithm above on int32 codes: a Taylor
//     step on [-1/4, 0) around -1/8, a barrel shifter of exp(-2^k) constants, 0 below -32.
//   one_over_one_plus_x_int32(a): 1 / (1 + a) for a Q0.31 code a in [0, 1), a Q0.31 result
//     (three Newton-Raphson steps in Q2.29 from 48/17 - 32/17 d, d = (1 + a) / 2).
//   reciprocal_int32(x, int_bits, &bits_over_unit): TFLite's GetReciprocal: x > 0 a Q(int_bits)
//     code, normalised by its leading zeros h (bits_over_unit = int_bits - h) to 1 + a in
//     [1, 2), returns one_over_one_plus_x_int32(a): 1/x = result * 2^-bits_over_unit.
// Softmax over one row of int8 codes q[0..C-1] (output scale 1/256, zero point -128):
//   (M, left) = QuantizeMultiplier(min(beta * s_in * 2^26, 2^31 - 1))     (> 1: left >= 0)
//   diff_min  = -floor(31 * 2^26 / 2^left)                 (CalculateInputRadius(5, left))
//   d = q - max(q); for d >= diff_min: e = exp_on_negative_values_int32(SRDHM(d * 2^left, M), 5)
//   S = sum of RDPOT(e, 12) (Q12.19);  r = reciprocal_int32(S, 12, &b)
//   y = clamp(RDPOT(SRDHM(r, e), b + 23) - 128, -128, 127); d < diff_min: y = -128.
// make_softmax_stage prepares (M, left, diff_min); throws ValueError for a scale or beta that is
// not finite and > 0, or beta * s_in * 2^26 <= 1 (TFLite's QuantizeMultiplierGreaterThanOne).
// softmax_row_s8 computes one row (a row of C codes; S saturates at INT32_MAX where TFLite's
// int32 sum would overflow, C > 4096).
int32_t exp_on_negative_values_int32(int32_t a, int integer_bits);
int32_t one_over_one_plus_x_int32(int32_t a);
int32_t reciprocal_int32(int32_t x, int integer_bits, int* bits_over_unit);

struct SoftmaxStage {
  int32_t input_multiplier = 0;
  int input_left_shift = 0;
  int32_t diff_min = 0;
};
SoftmaxStage make_softmax_stage(float input_scale, double beta);
void softmax_row_s8(const SoftmaxStage& s, int64_t depth, const int8_t* x, int8_t* y);
// The steps of softmax_row_s8, for kernels that take them in another order (the fast rows of
// kernels/fast/int8_lut.h tabulate softmax_exp for the 256 differences at prepare):
//   softmax_exp(s, d)        e = exp_on_negative_values_int32(SRDHM(d * 2^left, M), 5), Q0.31,
//                            for diff_min <= d <= 0 (DCHECK)
//   softmax_row_scale(sum)   the row's (r, exponent = b + 23) from S = the sum of RDPOT(e, 12),
//                            saturated at INT32_MAX (precondition: S > 0)
//   softmax_code(rs, e)      clamp((exponent <= 31 ? RDPOT(SRDHM(r, e), exponent) : 0) - 128);
//                            an element below diff_min gives -128 (as softmax_code(rs, 0) does)
struct SoftmaxRowScale {
  int32_t reciprocal = 0;
  int exponent = 0;
};
int32_t softmax_exp(const SoftmaxStage& s, int32_t d);
SoftmaxRowScale softmax_row_scale(int64_t sum);
int32_t softmax_code(const SoftmaxRowScale& rs, int32_t e);

// ---- quantize / dequantize (spec 3.6) --------------------------------------------------------

// TFLite Quantize (float -> code): clamp(round_away(x / scale) + zero_point, range.min,
// range.max), the division in f32. Ties go away from zero: x = -1.25, scale 0.5 -> -3 (the TF
// fake quant sends that tie up, to -2). NaN gives zero_point (TFLite: undefined).
// Precondition (DCHECK): scale > 0.
inline int32_t affine_quantize(float x, float scale, int32_t zero_point, QuantRange range) {
  LOWBIT_DCHECK(scale > 0.0f, "affine_quantize: scale must be > 0 but is ", scale);
  const float rounded = std::round(x / scale);
  if (std::isnan(rounded)) return zero_point;
  // Clamp in f64: a large x / scale does not fit int32.
  const double q = static_cast<double>(rounded) + zero_point;
  return q < range.min ? range.min : q > range.max ? range.max : static_cast<int32_t>(q);
}
inline int32_t affine_quantize(float x, QuantParams p, QuantDType dtype) {
  return affine_quantize(x, p.scale, p.zero_point, quant_range(dtype));
}

// TFLite Dequantize (code -> float): f32(f64(scale) * (q - zero_point)).
inline float dequantize(int32_t q, float scale, int32_t zero_point) {
  return static_cast<float>(static_cast<double>(scale) *
                            static_cast<double>(static_cast<int64_t>(q) - zero_point));
}
inline float dequantize(int32_t q, QuantParams p) { return dequantize(q, p.scale, p.zero_point); }

// ---- fused activation clamp (spec 3.5) ---------------------------------------------------------

// The clamp bounds [act_min, act_max] of a kernel's output codes for a fused activation, with
// quantize(f) = zero_point + round_away(f32(f) / f32(scale)) and [qmin, qmax] = quant_range(dtype):
//   kNone      -> [qmin, qmax]
//   kRelu      -> [max(qmin, quantize(0)), qmax]
//   kRelu6     -> [max(qmin, quantize(0)), min(qmax, quantize(6))]
//   kReluN1To1 -> [max(qmin, quantize(-1)), min(qmax, quantize(1))]
// Examples: scale 0.05, zp -10, ReLU6, int8 -> [-10, 110]; scale 0.0470588, zp -128, ReLU6,
// int8 -> [-128, 0] (QAT ranges [0, 6] make the bounds the int8 limits). Where quantize(f)
// would leave int32 (TFLite: an error) the bound is simply the type's limit.
// Throws ValueError unless scale is finite and > 0 and zero_point lies in quant_range(dtype).
QuantRange activation_range(float scale, int32_t zero_point, FusedActivation activation,
                            QuantDType dtype);

// ---- conv / depthwise / fully-connected output stage (spec 3.2) -------------------------------

// The effective multiplier of a conv output channel:
//   M = f64(input_scale) * f64(weight_scale) / f64(output_scale)          (int8, per channel)
//   M = f64(f32(input_scale * weight_scale)) / f64(output_scale)          (legacy uint8 path)
// Example: 0.5, 0.001956947147846222, 0.17000000178813934 -> 0.0057557268448886435.
double conv_effective_multiplier(float input_scale, float weight_scale, float output_scale,
                                 bool legacy_float_product = false);

struct ConvOutputStageConfig {
  float input_scale = 1.0f;
  float weight_scale = 1.0f;  // of this output channel (per-channel int8) or of the tensor
  float output_scale = 1.0f;
  int32_t output_zero_point = 0;
  FusedActivation activation = FusedActivation::kNone;
  QuantDType dtype = QuantDType::kS8;  // of the output
  bool legacy_float_product = false;   // the uint8 path: f32 product of the input scales first
  Rounding rounding = Rounding::kDouble;
};

// Requantises an int32 accumulator acc = sum (q_w - zp_w)(q_x - zp_x) + q_bias to an output code:
//   out = clamp(MBQM(acc, multiplier) + output_zero_point, act_min, act_max)
// gemmlowp's OutputStageScaleInt32ByFixedPointAndExponent followed by the activation clamp.
struct ConvOutputStage {
  double effective_multiplier = 0.0;
  QuantizedMultiplier multiplier;
  int32_t output_zero_point = 0;
  int32_t act_min = 0;
  int32_t act_max = 0;
  Rounding rounding = Rounding::kDouble;

  int32_t apply(int32_t acc) const {
    // In int64, so that adding the zero point to a saturated product cannot wrap.
    const int64_t scaled = multiply_by_quantized_multiplier(acc, multiplier, rounding);
    const int64_t out = scaled + output_zero_point;
    return static_cast<int32_t>(out < act_min ? act_min : out > act_max ? act_max : out);
  }
};

// Prepares the output stage of one output channel: conv_effective_multiplier, then
// quantize_multiplier, then activation_range on the output's (scale, zero_point, dtype).
// Example (os_int8_pc): s_in 0.0235294122, s_w 0.0039215689, s_out 0.0470588244, zp -128, ReLU6
// -> M = 0.0019607844296842813, (1077952640, -8), clamp [-128, 0]; apply(1000) == -126.
// Throws ValueError unless every scale is finite and > 0 and the zero point lies in the output
// range, and if M >= 2^30 (a shift above 30, which neither rounding can apply).
ConvOutputStage make_conv_output_stage(const ConvOutputStageConfig& config);

// ---- elementwise add (spec 3.6) ----------------------------------------------------------------

struct AddConfig {
  float input1_scale = 1.0f;
  int32_t input1_zero_point = 0;
  float input2_scale = 1.0f;
  int32_t input2_zero_point = 0;
  float output_scale = 1.0f;
  int32_t output_zero_point = 0;
  FusedActivation activation = FusedActivation::kNone;
  QuantDType dtype = QuantDType::kS8;  // of both inputs and the output
  int left_shift = 20;                 // TFLite: 20 for int8/uint8, 15 for int16
  Rounding rounding = Rounding::kDouble;
};

// TFLite's quantized Add. The inputs are brought to a common scale 2*max(s1, s2) / 2^left_shift
// (left_shift bits of headroom keep the rescaling precise), added, and requantised:
//   twice_max = 2 * f64(max(s1, s2))
//   M1 = s1 / twice_max,  M2 = s2 / twice_max  (both <= 1/2)
//   Mo = twice_max / (2^left_shift * s_out)    (must be < 1)
//   a = MBQM((q1 - zp1) * 2^left_shift, M1);  b = MBQM((q2 - zp2) * 2^left_shift, M2)
//   out = clamp(MBQM(a + b, Mo) + zp_out, act_min, act_max)
// Example: s1 = s2 = 0.02, zp 0, s_out 0.04, zp_out -128, ReLU: M1 = M2 -> (2^30, 0),
// Mo = 2^-20 -> (2^30, -19); apply(127, 127) == -1.
struct AddStage {
  int32_t input1_offset = 0;  // -input1_zero_point
  int32_t input2_offset = 0;  // -input2_zero_point
  int left_shift = 0;
  QuantizedMultiplier input1_multiplier;
  QuantizedMultiplier input2_multiplier;
  QuantizedMultiplier output_multiplier;
  int32_t output_zero_point = 0;
  int32_t act_min = 0;
  int32_t act_max = 0;
  Rounding rounding = Rounding::kDouble;

  // q1, q2: codes of the inputs' type, so that (q - zp) * 2^left_shift fits int32 (DCHECK).
  int32_t apply(int32_t q1, int32_t q2) const {
    const int32_t shifted1 = shift_input(q1, input1_offset);
    const int32_t shifted2 = shift_input(q2, input2_offset);
    const int32_t a = multiply_by_quantized_multiplier(shifted1, input1_multiplier, rounding);
    const int32_t b = multiply_by_quantized_multiplier(shifted2, input2_multiplier, rounding);
    const int64_t out =
        static_cast<int64_t>(multiply_by_quantized_multiplier(a + b, output_multiplier, rounding)) +
        output_zero_point;
    return static_cast<int32_t>(out < act_min ? act_min : out > act_max ? act_max : out);
  }

 private:
  int32_t shift_input(int32_t q, int32_t offset) const {
    const int64_t v = (static_cast<int64_t>(q) + offset) * (int64_t{1} << left_shift);
    LOWBIT_DCHECK(
        v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max(),
        "AddStage::apply: code ", q, " is outside the input type");
    return static_cast<int32_t>(v);
  }
};

// Prepares an AddStage. Throws ValueError unless the scales are finite and > 0, the zero points
// lie in quant_range(dtype), left_shift is in [0, 30] and leaves (q - zp) * 2^left_shift inside
// int32 for every code q, and Mo < 1 (an output scale larger than 2 * max(s1, s2) / 2^left_shift).
AddStage make_add_stage(const AddConfig& config);

// ---- average pool (spec 3.6) -------------------------------------------------------------------

// The mean of `count` valid taps from their int32 sum, rounded half away from zero:
//   sum > 0 ? (sum + count/2) / count : (sum - count/2) / count      (C division)
// Examples: (-5, 2) -> -3; (6, 4) -> 2; (13, 3) -> 4. Computed in int64 (TFLite's int32 sum
// +- count/2 could overflow). Precondition (DCHECK): count > 0.
inline int32_t average_pool_mean(int32_t sum, int32_t count) {
  LOWBIT_DCHECK(count > 0, "average_pool_mean: count must be > 0 but is ", count);
  const int64_t s = sum, c = count;
  return static_cast<int32_t>(s > 0 ? (s + c / 2) / c : (s - c / 2) / c);
}

// ---- converter: trained ranges -> integer parameters (spec 2.5) --------------------------------

// The converter's parameters: `scale` in f64 as computed (the MLIR converter quantizes constants
// with it); the model file stores stored().scale = f32(scale).
struct ConverterParams {
  double scale = 1.0;
  int32_t zero_point = 0;
  QuantParams stored() const { return {static_cast<float>(scale), zero_point}; }
};

// (min, max) of a trained fake quant -> (scale, zero_point) for codes `range`, in f64
// (MLIR FakeQuantSupport's nudge):
//   |max - min| < f64 epsilon -> scale 1, zero_point range.min   (an all-zero tensor)
//   scale  = (max - min) / (qmax - qmin)
//   zf_min = qmin - min/scale,  err_min = |qmin| + |min/scale|
//   zf_max = qmax - max/scale,  err_max = |qmax| + |max/scale|
//   zero_point = clamp(round_away(err_min < err_max ? zf_min : zf_max), qmin, qmax)
// The int8 zero point equals TF's fake-quant (uint8) nudged zero point minus 128, except when the
// zero point sits on a tie and f64 vs f32 (or the anchor choice) round it differently:
// [-6, 6] wide gives -1 here but 128 in the fake quant. A range not containing 0 clamps like the
// fake quant's nudge: [12, 123] -> zero_point qmin, i.e. real range [0, 111].
// Throws ValueError if min or max is not finite, min > max, or range.min >= range.max.
ConverterParams quant_params_from_min_max(float min, float max, QuantRange range);

// Symmetric weight parameters: zero_point 0, scale = max_abs / range.max in f64 (int8 narrow:
// max|w| / 127; the same as quant_params_from_min_max(-max_abs, max_abs, [-127, 127])).
// max_abs == 0 (an all-zero weight) gives scale 1 (lowbit's choice; every code then is 0).
// Throws ValueError if max_abs is negative or not finite, or unless range.min < 0 < range.max.
ConverterParams symmetric_weight_params(float max_abs, QuantRange range);

// A weight (or any constant) to its code, in f64: clamp(round_away(w / scale) + zero_point).
// Ties go away from zero, whereas the training fake quant sent them up: w = -2.5 * scale with
// zero_point 0 converts to -3 but trained as -2. Throws ValueError if w is not finite or
// scale is not > 0.
int32_t quantize_weight(double w, double scale, int32_t zero_point, QuantRange range);

// The int32 bias scale of one output channel: f32(input_scale * weight_scale) (zero point 0).
inline float bias_scale(float input_scale, float weight_scale) {
  return input_scale * weight_scale;
}
// A bias to int32 as TFLite's quantization_utils does: inv = f32(1.0 / f64(bias_scale)),
// q = round_away(f32(bias * inv)), saturated to +-(2^31 - 1).
// Throws ValueError if bias is not finite or bias_scale is not finite and > 0.
int32_t quantize_bias(float bias, float bias_scale);

}  // namespace lowbit::quant
