// Fast int8 max / average pooling, NHWC (src/kernels/fast/int8_pool.cc): channel loops
// innermost, compiled for AVX2, bit-identical to qmax_pool2d_s8_reference and
// qavg_pool2d_s8_reference (kernels/reference/int8.h).
#pragma once

#include <cstdint>

#include "kernels/conv_params.h"
#include "kernels/reference/int8.h"

namespace lowbit::kernels {

// The average's division runs in f64, exact while a window has fewer than 2^21 taps.
constexpr int64_t kMaxFastPoolTaps = int64_t{1} << 20;

void qmax_pool2d_nhwc_s8__avx2(const Conv2DParams& p, int32_t act_min, int32_t act_max,
                               const int8_t* x, int8_t* y);
// requant: nullptr (the input's parameters, TFLite's rounding of the mean) or the output stage
// of a requantizing average (the window's sum, rounded once to the output's parameters).
void qavg_pool2d_nhwc_s8__avx2(const Conv2DParams& p, int32_t act_min, int32_t act_max,
                               const QAvgRequant* requant, const int8_t* x, int8_t* y);

}  // namespace lowbit::kernels
