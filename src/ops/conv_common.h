// Geometry helpers shared by the conv/pool ops' shape rules, their reference kernels and the
// oneDNN fast kernels (which call them on a KernelCtx's concrete shapes).
//
// Attributes of the 2-D window ops (conv2d, conv2d_backward_*, max/avg_pool2d*):
//   strides   [sh, sw] or one int for both (default [1,1]; pools: default = ksize)
//   dilations [dh, dw] or one int (default [1,1]; convolutions only)
//   padding   "valid" (default) | "same" (TensorFlow: out = ceil(in/s), the odd extra padding
//             cell at the bottom/right) | "explicit" with pads [top, bottom, left, right]
//             (convolutions only)
//   groups    convolutions only (default 1)
//   ksize     [kh, kw] or one int (pools only)
#pragma once

#include <string>

#include "kernels/conv_params.h"
#include "lowbit/attrs.h"
#include "lowbit/shape.h"

namespace lowbit::detail {

enum class Padding { kValid, kSame, kExplicit };

struct WindowAttrs {
  int64_t k_h = 1, k_w = 1;  // pools only (convolutions take it from the filter)
  int64_t stride_h = 1, stride_w = 1;
  int64_t dil_h = 1, dil_w = 1;
  Padding padding = Padding::kValid;
  int64_t pads[4] = {0, 0, 0, 0};  // top, bottom, left, right; explicit padding only
  int64_t groups = 1;
};

// An int attribute given as one int (used for every dim) or a list of 1 or `n` ints, each >=
// `min`; `dflt` when absent. ValueError naming `op` and `name` otherwise.
std::vector<int64_t> window_ints(const std::string& op, const Attrs& attrs, const char* name,
                                 size_t n, int64_t min, std::vector<int64_t> dflt);

// Parses and validates the attributes of a convolution (ValueError naming `op` and the
// attribute on a bad value).
WindowAttrs conv2d_attrs(const std::string& op, const Attrs& attrs);
// Same for a pooling op (ksize, strides defaulting to ksize, padding valid|same).
WindowAttrs pool2d_attrs(const std::string& op, const Attrs& attrs);

// Output size and padding of one spatial dim. `in` may be kUnknown (then *out = kUnknown and
// the pads of 'same' are left 0). Throws ShapeError naming `op` and `dim` ("height"/"width")
// when the window does not fit (valid/explicit padding with in + pads < k_eff).
void window_dim(const std::string& op, const char* dim, int64_t in, int64_t k, int64_t stride,
                int64_t dilation, Padding padding, int64_t explicit_before, int64_t explicit_after,
                int64_t* out, int64_t* pad_before, int64_t* pad_after);

// Geometry of `op` (conv2d-like) on x [N,H,W,Cin] and w [KH,KW,Cin/groups,Cout] with the
// given attrs; checks ranks, channels and groups (ShapeError/ValueError naming `op`). Dims may
// be kUnknown; then the dependent outputs are kUnknown too.
kernels::Conv2DParams conv2d_geometry(const std::string& op, const Shape& x, const Shape& w,
                                      const Attrs& attrs);
// Geometry of a pooling op on x [N,H,W,C]: k_h/k_w = ksize, in_c = out_c = groups = C.
kernels::Conv2DParams pool2d_geometry(const std::string& op, const Shape& x, const Attrs& attrs);

// conv2d_geometry("conv2d", x, w, attrs) for concrete, already validated shapes: what the
// kernels of conv2d, conv2d_backward_input (x = x_like) and conv2d_backward_filter
// (w = w_like) use.
kernels::Conv2DParams conv2d_params(const Shape& x, const Shape& w, const Attrs& attrs);
// pool2d_geometry for the kernels of the pooling ops.
kernels::Conv2DParams pool2d_params(const Shape& x, const Attrs& attrs);

}  // namespace lowbit::detail
