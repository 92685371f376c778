// Reductions over axes: sum, mean, max, min, argmax, argmin.
//
//   Tensor x = Tensor::from_vector<float>({1, 5, 3, 4, 2, 6}, {2, 3});
//   ops::sum(x);                  // f32[]    21
//   ops::sum(x, {1});             // f32[2]   [9, 12]
//   ops::mean(x, {0}, true);      // f32[1,3] [[2.5, 3.5, 4.5]]
//   ops::max(x, {-1});            // f32[2]   [5, 6]
//   ops::argmax(x);               // s64[2]   [1, 2]
//
// Attributes of the ops "sum", "mean", "max", "min":
//   axes     (ints, default {}): the axes to reduce, negative ones count from the end; an empty
//            list reduces every axis. Repeated axes are a ValueError.
//   keepdims (bool, default false): keep the reduced axes as size-1 dims.
// Dtypes: f32 and the integer dtypes (s8, u8, s32, s64); bool is a DTypeError (cast first). The
// output has the input's dtype. f32 sums accumulate in double; integer sums accumulate in int64
// and wrap to the output dtype; the integer mean truncates toward zero (as TensorFlow).
// Empty reductions give the identity: sum 0, mean NaN (f32) or 0 (integers), max -inf / the
// lowest integer, min +inf / the highest integer. max and min propagate NaN.
// Gradients (f32): sum broadcasts dy back; mean also divides by the number of reduced elements
// (computed at run time when the shape is not known when building); max and min pass dy to the
// elements equal to the result, shared evenly among ties (TensorFlow's _MinOrMaxGrad).
//
// "argmax" / "argmin": attributes axis (int, default -1) and keepdims (bool, default false);
// output s64 indices along `axis`; ties give the first index (as NumPy and TensorFlow); NaN
// counts as the largest (argmax) or smallest (argmin) value. No gradient. Reducing an empty axis
// is a ShapeError.
#pragma once

#include <vector>

#include "lowbit/ops/base.h"

namespace lowbit::ops {

template <Operand T>
T sum(const T& x, std::vector<int64_t> axes = {}, bool keepdims = false) {
  return apply1("sum", {x}, {{"axes", std::move(axes)}, {"keepdims", keepdims}});
}
template <Operand T>
T mean(const T& x, std::vector<int64_t> axes = {}, bool keepdims = false) {
  return apply1("mean", {x}, {{"axes", std::move(axes)}, {"keepdims", keepdims}});
}
template <Operand T>
T max(const T& x, std::vector<int64_t> axes = {}, bool keepdims = false) {
  return apply1("max", {x}, {{"axes", std::move(axes)}, {"keepdims", keepdims}});
}
template <Operand T>
T min(const T& x, std::vector<int64_t> axes = {}, bool keepdims = false) {
  return apply1("min", {x}, {{"axes", std::move(axes)}, {"keepdims", keepdims}});
}
template <Operand T>
T argmax(const T& x, int64_t axis = -1, bool keepdims = false) {
  return apply1("argmax", {x}, {{"axis", axis}, {"keepdims", keepdims}});
}
template <Operand T>
T argmin(const T& x, int64_t axis = -1, bool keepdims = false) {
  return apply1("argmin", {x}, {{"axis", axis}, {"keepdims", keepdims}});
}

// Helpers used by gradient rules (ops of their own, so they work with unknown dims):
//
// "reduce_count": an f32 scalar holding how many elements of x each output of a reduction over
// `axes` (attribute, empty = all) combines, i.e. the product of those dims of x's run-time
// shape. x's data is not read. No gradient.
template <Operand T>
T reduce_count(const T& x, std::vector<int64_t> axes = {}) {
  return apply1("reduce_count", {x}, {{"axes", std::move(axes)}});
}
// "equal_indicator": f32 1 where a == b and 0 elsewhere, with NumPy broadcasting; a and b have
// the same dtype. Zero gradient (it is piecewise constant). Used by the max/min gradients.
template <Operand T>
T equal_indicator(const T& a, const T& b) {
  return apply1("equal_indicator", {a, b});
}

}  // namespace lowbit::ops
