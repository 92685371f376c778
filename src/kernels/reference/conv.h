// Reference (plain-loop) 2-D convolution and pooling, NHWC activations and HWIO filters, with
// groups, strides, dilations and asymmetric padding from Conv2DParams (see conv_params.h). The
// definition the oneDNN kernels are checked against.
//
// Convolution here is cross-correlation (as in TensorFlow/Keras):
//   y[n, oh, ow, oc] = sum_{kh, kw, ic'} x[n, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw, g*cig + ic']
//                                         * w[kh, kw, ic', oc]
// with g = oc / (out_c / groups), cig = in_c / groups, and x = 0 outside the input (padding).
#pragma once

#include "kernels/conv_params.h"

namespace lowbit::kernels {

// x [n,in_h,in_w,in_c], w [k_h,k_w,in_c/groups,out_c] (HWIO), y [n,out_h,out_w,out_c]
void conv2d_forward_f32_reference(const Conv2DParams& p, const float* x, const float* w, float* y);
// dx [n,in_h,in_w,in_c] = d(sum(y * dy)) / dx, overwritten (not accumulated).
void conv2d_backward_input_f32_reference(const Conv2DParams& p, const float* dy, const float* w,
                                         float* dx);
// dw [k_h,k_w,in_c/groups,out_c] = d(sum(y * dy)) / dw, overwritten (not accumulated).
void conv2d_backward_filter_f32_reference(const Conv2DParams& p, const float* x, const float* dy,
                                          float* dw);

// Pooling over k_h x k_w windows of x [n,in_h,in_w,in_c] -> y [n,out_h,out_w,in_c] (out_c ==
// in_c, dilation 1). Windows are clipped to the input: padded cells never take part.
// max: the largest valid cell. avg: the mean of the valid cells (TensorFlow: padded cells are
// not counted).
void max_pool2d_f32_reference(const Conv2DParams& p, const float* x, float* y);
void avg_pool2d_f32_reference(const Conv2DParams& p, const float* x, float* y);
// dx = d(sum(y * dy)) / dx, overwritten. max: each window's dy goes to its first maximal cell
// in row-major (h, then w) order, as TensorFlow's CPU MaxPoolGrad; overlapping windows add up.
void max_pool2d_backward_f32_reference(const Conv2DParams& p, const float* x, const float* dy,
                                       float* dx);
// avg: each window's dy / count goes to each of its valid cells.
void avg_pool2d_backward_f32_reference(const Conv2DParams& p, const float* dy, float* dx);

}  // namespace lowbit::kernels
