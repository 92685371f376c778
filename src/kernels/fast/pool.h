// Fast max pooling, NHWC f32 (src/kernels/fast/pool.cc): the channel loop innermost and
// vectorised, bit-identical to the reference kernels of kernels/reference/conv.h.
#pragma once

#include "kernels/conv_params.h"

namespace lowbit::kernels {

// y = max_pool2d(x) on the geometry p (k_h/k_w the window, in_c = out_c = C).
void max_pool2d_nhwc_f32__portable(const Conv2DParams& p, const float* x, float* y);
// dx = gradient of max_pool2d: dy of each window to its first maximum (NaN wins), overwritten.
void max_pool2d_backward_nhwc_f32__portable(const Conv2DParams& p, const float* x, const float* dy,
                                            float* dx);

}  // namespace lowbit::kernels
