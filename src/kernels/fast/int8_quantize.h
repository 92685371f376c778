// Fast f32 -> int8 quantization (src/kernels/fast/int8_quantize.cc), AVX2, bit-identical to
// quantize_s8_reference (kernels/reference/int8.h): per element clamp(round_away(x / scale) +
// zero_point, -128, 127), NaN -> zero_point. The division is the same IEEE f32 division; the
// rounding is trunc(v) plus sign(v) where |v - trunc(v)| >= 0.5 (v - trunc(v) is exact in f32),
// which is C `round`; the clamp happens in f32 on integers below 2^24 in magnitude or on
// infinities, so nothing overflows before the conversion to int32.
#pragma once

#include <cstdint>

#include "lowbit/fixed_point.h"

namespace lowbit::kernels {

void quantize_f32_s8__avx2(quant::QuantParams p, int64_t n, const float* x, int8_t* y);

}  // namespace lowbit::kernels
