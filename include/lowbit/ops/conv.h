// Convolutions and pooling (f32, channels last), with TensorFlow/Keras semantics.
//
// Layouts: 2-D x [N, H, W, C]; 1-D x [N, L, C]. Filters: conv2d w [KH, KW, Cin/groups, Cout]
// (HWIO), conv1d w [K, Cin/groups, Cout], depthwise_conv2d w [KH, KW, C, M].
// Convolution is cross-correlation (no kernel flip):
//   y[n,oh,ow,oc] = sum_{kh,kw,i} x[n, oh*sh - pad_top + kh*dh, ow*sw - pad_left + kw*dw,
//                                   g*Cin/groups + i] * w[kh, kw, i, oc],   g = oc / (Cout/groups)
// with x = 0 outside the input. Bias is a separate broadcast `add`.
//
// Attributes (Attrs; a list may also be given as one int used for every spatial dim):
//   strides   [sh, sw]   default [1, 1] (pools: default = ksize)
//   dilations [dh, dw]   default [1, 1] (convolutions only)
//   padding   "valid" (default): no padding, out = floor((in - k_eff) / s) + 1,
//                        k_eff = (k - 1) * d + 1; the window must fit (ShapeError otherwise)
//             "same":    out = ceil(in / s); total padding max((out-1)*s + k_eff - in, 0) split
//                        as (total/2, total - total/2): the odd extra cell goes at the END
//                        (bottom/right), as in TensorFlow (PyTorch pads symmetrically)
//             "explicit" (convolutions): pads [top, bottom, left, right] (conv1d: [left, right])
//             "causal"  (conv1d only): left pad (K-1)*d, then valid
//   groups    conv2d/conv1d, default 1: Cin and Cout divisible by groups
//   ksize     [kh, kw] (pools; 1-D pools: k)
// Pools clip windows to the input: max ignores padded cells; avg divides by the number of
// valid cells in the window (TensorFlow; padded cells are not counted).
//
// Throws ShapeError (rank, channel mismatch, groups not dividing the channels, window larger
// than a 'valid' input, dy of the wrong shape), DTypeError (not f32), ValueError (a bad
// attribute value). Unknown (kUnknown) batch and spatial dims are fine in graphs.
//
//   Tensor y = ops::conv2d(x, w, {{"strides", {2, 2}}, {"padding", "same"}});
//   Value  z = ops::max_pool2d(y, {{"ksize", {2, 2}}});
#pragma once

#include "lowbit/ops/base.h"

namespace lowbit::detail {
// Attribute translation of the composite ops below to the 2-D op they are built from; each
// validates shapes and attributes and throws naming the composite op.
Attrs conv1d_as_conv2d(const Shape& x, const Shape& w, const Attrs& attrs);
Attrs depthwise_as_conv2d(const Shape& x, const Shape& w, const Attrs& attrs);
Attrs pool1d_as_pool2d(const std::string& op, const Shape& x, const Attrs& attrs);
}  // namespace lowbit::detail

namespace lowbit::ops {

// conv2d(x [N,H,W,Cin], w [KH,KW,Cin/groups,Cout]) -> [N,OH,OW,Cout]. Differentiable in x and w.
template <Operand T>
T conv2d(const T& x, const T& w, const Attrs& attrs = {}) {
  return apply1("conv2d", {x, w}, attrs);
}
// The gradient of conv2d w.r.t. x for the incoming gradient dy [N,OH,OW,Cout]: dx shaped like
// x_like (read only for its shape). Same attrs as the forward conv2d. Differentiable in dy and w.
template <Operand T>
T conv2d_backward_input(const T& dy, const T& w, const T& x_like, const Attrs& attrs = {}) {
  return apply1("conv2d_backward_input", {dy, w, x_like}, attrs);
}
// The gradient of conv2d w.r.t. w: dw shaped like w_like. Differentiable in x and dy.
template <Operand T>
T conv2d_backward_filter(const T& x, const T& dy, const T& w_like, const Attrs& attrs = {}) {
  return apply1("conv2d_backward_filter", {x, dy, w_like}, attrs);
}

// Size-1 axis views used to run 1-D ops as 2-D ones (no data moves):
//   insert_axis(x, a): a 1 inserted before axis a (0 <= a <= rank);
//   remove_axis(x, a): axis a (of size 1) removed;
//   merge_axes(x, a): axes a and a+1 merged into one.
template <Operand T>
T insert_axis(const T& x, int64_t axis) {
  return apply1("insert_axis", {x}, {{"axis", axis}});
}
template <Operand T>
T remove_axis(const T& x, int64_t axis) {
  return apply1("remove_axis", {x}, {{"axis", axis}});
}
template <Operand T>
T merge_axes(const T& x, int64_t axis) {
  return apply1("merge_axes", {x}, {{"axis", axis}});
}

// conv1d(x [N,L,Cin], w [K,Cin/groups,Cout]) -> [N,OL,Cout]: conv2d with H = 1. Attributes as
// above with one value per list (strides, dilations), padding valid|same|causal|explicit
// (pads [left, right]), groups.
template <Operand T>
T conv1d(const T& x, const T& w, const Attrs& attrs = {}) {
  const Attrs a2 = detail::conv1d_as_conv2d(x.shape(), w.shape(), attrs);
  return remove_axis(conv2d(insert_axis(x, 1), insert_axis(w, 0), a2), 1);
}

// depthwise_conv2d(x [N,H,W,C], w [KH,KW,C,M]) -> [N,OH,OW,C*M], output channel c*M + m is
// input channel c filtered by w[:,:,c,m] (Keras DepthwiseConv2D). Attributes: strides,
// dilations, padding, pads (no groups). Runs as conv2d with groups = C on w viewed as
// [KH,KW,1,C*M] (same memory).
template <Operand T>
T depthwise_conv2d(const T& x, const T& w, const Attrs& attrs = {}) {
  const Attrs a2 = detail::depthwise_as_conv2d(x.shape(), w.shape(), attrs);
  return conv2d(x, merge_axes(insert_axis(w, 2), 3), a2);
}

// Pooling over [kh, kw] windows of x [N,H,W,C] -> [N,OH,OW,C]; attrs ksize, strides (default
// ksize), padding valid|same. Differentiable. NaN propagates (as TF and PyTorch): a window
// holding a NaN has the maximum NaN (and the average NaN); +-Inf count as ordinary values.
template <Operand T>
T max_pool2d(const T& x, const Attrs& attrs) {
  return apply1("max_pool2d", {x}, attrs);
}
template <Operand T>
T avg_pool2d(const T& x, const Attrs& attrs) {
  return apply1("avg_pool2d", {x}, attrs);
}
// Gradient of max_pool2d: each window's dy goes to its first maximal cell of x in row-major
// order (TensorFlow CPU MaxPoolGrad), the first NaN if it holds one; overlapping windows add. Not
// differentiable itself.
template <Operand T>
T max_pool2d_backward(const T& x, const T& dy, const Attrs& attrs) {
  return apply1("max_pool2d_backward", {x, dy}, attrs);
}
// Gradient of avg_pool2d: dy / count to each valid cell of each window, shaped like x_like.
// Differentiable in dy (its adjoint is avg_pool2d).
template <Operand T>
T avg_pool2d_backward(const T& dy, const T& x_like, const Attrs& attrs) {
  return apply1("avg_pool2d_backward", {dy, x_like}, attrs);
}

// 1-D pooling of x [N,L,C] -> [N,OL,C]: attrs ksize k, strides s (default k), padding
// valid|same; the 2-D op with H = 1.
template <Operand T>
T max_pool1d(const T& x, const Attrs& attrs) {
  const Attrs a2 = detail::pool1d_as_pool2d("max_pool1d", x.shape(), attrs);
  return remove_axis(max_pool2d(insert_axis(x, 1), a2), 1);
}
template <Operand T>
T avg_pool1d(const T& x, const Attrs& attrs) {
  const Attrs a2 = detail::pool1d_as_pool2d("avg_pool1d", x.shape(), attrs);
  return remove_axis(avg_pool2d(insert_axis(x, 1), a2), 1);
}

}  // namespace lowbit::ops
