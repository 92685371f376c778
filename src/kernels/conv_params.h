// Geometry of a 2-D convolution or pooling window, NHWC, shared by the reference kernels, the
// oneDNN kernels and the shape rules. 1-D ops use H = 1.
//
// Padding follows TensorFlow (kernel_shape_util.cc GetWindowedOutputSizeVerbose), per dim with
// k_eff = (k - 1) * dilation + 1:
//   valid: out = floor((in - k_eff) / s) + 1, pad = (0, 0)
//   same:  out = ceil(in / s), total = max((out - 1) * s + k_eff - in, 0),
//          pad_before = total / 2, pad_after = total - pad_before  (extra cell at the END)
#pragma once

#include <cstdint>

namespace lowbit::kernels {

struct Conv2DParams {
  int64_t n = 1, in_h = 1, in_w = 1, in_c = 1;  // input  [n, in_h, in_w, in_c]
  int64_t k_h = 1, k_w = 1, out_c = 1;          // filter [k_h, k_w, in_c / groups, out_c]
  int64_t groups = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t dil_h = 1, dil_w = 1;
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  int64_t out_h = 1, out_w = 1;  // output [n, out_h, out_w, out_c]
};

// Output size and padding of one spatial dim; returns false if the window does not fit
// (valid padding with in < k_eff). `same` selects 'same' padding, else 'valid'.
inline bool window_geometry(int64_t in, int64_t k, int64_t stride, int64_t dilation, bool same,
                            int64_t* out, int64_t* pad_before, int64_t* pad_after) {
  const int64_t k_eff = (k - 1) * dilation + 1;
  if (same) {
    *out = (in + stride - 1) / stride;
    int64_t total = (*out - 1) * stride + k_eff - in;
    if (total < 0) total = 0;
    *pad_before = total / 2;
    *pad_after = total - *pad_before;
    return true;
  }
  *pad_before = *pad_after = 0;
  if (in < k_eff) return false;
  *out = (in - k_eff) / stride + 1;
  return true;
}

}  // namespace lowbit::kernels
