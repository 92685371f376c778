// Fast int8 elementwise add (src/kernels/fast/int8_add.cc), AVX2 and AVX-512, chosen at run
// time; bit-identical to qadd_s8_reference (AddStage::apply, kernels/reference/int8.h) lane by
// lane. Every residual block of a MobileNetV2 runs one.
//
// Per element, in int32 lanes (x = q1 or q2, sign-extended from the bytes):
//   s = (x - zp) * 2^left_shift           vpaddd, vpslld: |x - zp| <= 255 and make_add_stage
//                                          keeps the product inside int32
//   a, b = MBQM(s1, M1), MBQM(s2, M2);  out = clamp(MBQM(a + b, Mo) + zp_out, act_min, act_max)
// MBQM with a right shift only (every AddStage multiplier is < 1 but for the carry of a
// multiplier within 2^-32 of 1; qadd_s8_fast_supported declines a left shift):
//   double rounding: SRDHM(v, m) = floor((v*m + 2^30) / 2^31) for m >= 0 (the int64 products of
//     the even and odd lanes, vpmuldq), then RDPOT(v, e) = (v >> e) + ((v & mask) > (mask >> 1)
//     + (v < 0)), as the conv kernels of kernels/fast/int8.h do.
//   single rounding: (v*m + 2^(tshift-1)) >> tshift in int64, tshift = 31 - shift in [31, 62]
//     (AVX2 has no 64-bit arithmetic shift: floor shifts as ~(~v >> t) for v < 0).
// The results of a + b (|.| < 2^28) and of each MBQM fit int32 with room, so the reference's
// int32 saturation never acts. Tails: AVX-512 masks the last bytes; AVX2 runs the reference's
// scalar AddStage::apply on the last n % 32 elements. Threads split blocks of 2^14 elements
// above 2^16 elements; each element is computed alone, so the result does not depend on them.
#pragma once

#include <cstdint>

#include "lowbit/fixed_point.h"

namespace lowbit::kernels {

bool qadd_s8_fast_supported(const quant::AddStage& stage);

void qadd_s8__avx512(const quant::AddStage& stage, int64_t n, const int8_t* a, const int8_t* b,
                     int8_t* y);
void qadd_s8__avx2(const quant::AddStage& stage, int64_t n, const int8_t* a, const int8_t* b,
                   int8_t* y);

}  // namespace lowbit::kernels
