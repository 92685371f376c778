// Shape ops: reshape, expand_dims, squeeze, flatten, transpose, concat, split, slice, pad,
// broadcast_to, gather, one_hot, and the compositions stack/unstack. They work on every dtype
// unless stated; every op runs symbolically with unknown (kUnknown) dims where the result can
// still be described, and the f32 ones are differentiable.
//
//   Graph g;
//   Value x = g.placeholder("x", DType::kF32, {kUnknown, 7, 7, 64});
//   Value f = ops::flatten(x);                      // f32[?,3136], a view
//   Value t = ops::transpose(x, {0, 3, 1, 2});      // f32[?,64,7,7]
//   Value c = ops::concat({f, f}, 1);               // f32[?,6272]
//   Value s = ops::slice(c, {0, 10}, {kSliceMax, 20});   // f32[?,10]
//
// Errors: attributes that do not fit the input (wrong rank, out-of-range axes, sizes that do not
// add up) throw ShapeError or ValueError naming the op, the attribute, what was expected and what
// was found; dtype mismatches throw DTypeError.
#pragma once

#include <limits>
#include <vector>

#include "lowbit/ops/base.h"

namespace lowbit::ops {

// Slice sentinels: an index >= the dim clamps to the end, one <= -dim-1 to before the start.
// slice(x, {kSliceMax}, {kSliceMin}, {-1}) reverses axis 0 (Python's x[::-1]).
inline constexpr int64_t kSliceMax = std::numeric_limits<int64_t>::max();
inline constexpr int64_t kSliceMin = std::numeric_limits<int64_t>::min();

// "reshape", attr shape (ints): the new shape, with at most one -1 that takes the remaining
// size. A view of x (no copy). When x has unknown dims, the -1 dim is unknown until run time.
// ShapeError when the element counts cannot match. Gradient: reshape back.
template <Operand T>
T reshape(const T& x, std::vector<int64_t> shape) {
  return apply1("reshape", {x}, {{"shape", std::move(shape)}});
}
// "expand_dims", attr axis (int, in [-rank-1, rank]): inserts a size-1 dim at `axis` (negative
// counts from the end of the result: -1 appends). A view.
template <Operand T>
T expand_dims(const T& x, int64_t axis) {
  return apply1("expand_dims", {x}, {{"axis", axis}});
}
// "squeeze", attr axes (ints, default {}): removes the listed size-1 dims (ShapeError if one is
// not 1), or every size-1 dim when empty (then x may not have unknown dims: pass axes). A view.
template <Operand T>
T squeeze(const T& x, std::vector<int64_t> axes = {}) {
  return apply1("squeeze", {x}, {{"axes", std::move(axes)}});
}
// "flatten", attr axis (int, default 1): [d0..d(axis-1), d(axis)..] -> [d0*..*d(axis-1),
// d(axis)*..] (ONNX Flatten; the default keeps the batch dim, as Keras Flatten: [?,7,7,64] ->
// [?,3136]; a rank-1 x becomes [n,1]). Unknown dims make their group unknown. A view.
template <Operand T>
T flatten(const T& x, int64_t axis = 1) {
  return apply1("flatten", {x}, {{"axis", axis}});
}
// "transpose", attr perm (ints, default {} = reversed axes): output dim i is input dim perm[i].
// Gradient: transpose by the inverse permutation.
template <Operand T>
T transpose(const T& x, std::vector<int64_t> perm = {}) {
  return apply1("transpose", {x}, {{"perm", std::move(perm)}});
}
// "concat" (variadic), attr axis (int, default 0): joins inputs of one dtype and rank whose dims
// agree except along `axis`. Gradient: split_like of dy by the inputs' sizes.
template <Operand T>
T concat(const std::vector<T>& xs, int64_t axis = 0) {
  return apply1("concat", xs, {{"axis", axis}});
}
// "split", attrs axis (int, default 0) and sizes (ints; one may be -1 for the rest): one output
// per size along `axis`. Gradient: concat of the dys (zeros where none flows).
template <Operand T>
std::vector<T> split(const T& x, std::vector<int64_t> sizes, int64_t axis = 0) {
  return apply("split", {x}, {{"sizes", std::move(sizes)}, {"axis", axis}});
}
// "split" with attr num instead of sizes: `num` equal parts (ShapeError if the dim does not
// divide; with an unknown dim, the parts are unknown until run time).
template <Operand T>
std::vector<T> split_equal(const T& x, int64_t num, int64_t axis = 0) {
  return apply("split", {x}, {{"num", num}, {"axis", axis}});
}
// "split_like" (variadic: x, like_0, ..., like_{n-1}), attr axis (int, default 0): splits x along
// `axis` into pieces as large as the likes are along that axis (the likes' other dims and data
// are not read; they must add up to x's dim). The adjoint of concat; works with unknown dims.
template <Operand T>
std::vector<T> split_like(const T& x, const std::vector<T>& likes, int64_t axis = 0) {
  std::vector<T> in{x};
  in.insert(in.end(), likes.begin(), likes.end());
  return apply("split_like", in, {{"axis", axis}});
}
// "slice", attrs begin, end (ints, one per leading axis; axes past their length are taken
// whole) and strides (ints, default all 1; nonzero). Python semantics per axis: negative
// indices count from the end, out-of-range ones clamp (use kSliceMax / kSliceMin for "to the
// end" / "from the start"), a negative stride walks backwards. Gradient: slice_grad.
template <Operand T>
T slice(const T& x, std::vector<int64_t> begin, std::vector<int64_t> end,
        std::vector<int64_t> strides = {}) {
  return apply1(
      "slice", {x},
      {{"begin", std::move(begin)}, {"end", std::move(end)}, {"strides", std::move(strides)}});
}
// "slice_grad" (dy, like), same attrs as slice: a zero tensor shaped like `like` with dy written
// at the positions slice(like, ...) reads. The adjoint of slice.
template <Operand T>
T slice_grad(const T& dy, const T& like, std::vector<int64_t> begin, std::vector<int64_t> end,
             std::vector<int64_t> strides = {}) {
  return apply1(
      "slice_grad", {dy, like},
      {{"begin", std::move(begin)}, {"end", std::move(end)}, {"strides", std::move(strides)}});
}
// "pad", attrs paddings (ints [before0, after0, before1, after1, ...], 2 per axis, >= 0) and
// value (float, default 0, converted to x's dtype): constant padding. Gradient: slice.
template <Operand T>
T pad(const T& x, std::vector<int64_t> paddings, double value = 0.0) {
  return apply1("pad", {x}, {{"paddings", std::move(paddings)}, {"value", value}});
}
// "broadcast_to", attr shape (ints, all known): NumPy broadcasting of x to `shape`.
// Gradient: sum_like.
template <Operand T>
T broadcast_to(const T& x, std::vector<int64_t> shape) {
  return apply1("broadcast_to", {x}, {{"shape", std::move(shape)}});
}
// "gather" (params, indices), attr axis (int, default 0): picks entries of params along `axis`:
// out = params[:axis] + indices.shape + params[axis+1:]. An embedding lookup is
// gather(table [V,D], ids [...]) -> [..., D]. indices are s32 or s64.
// An index outside [0, params.dim(axis)) aborts the program with a message naming the index and
// the range (kernels cannot throw): validate untrusted ids first (the Embedding layer does).
// Gradient w.r.t. params: gather_grad; indices get none.
template <Operand T>
T gather(const T& params, const T& indices, int64_t axis = 0) {
  return apply1("gather", {params, indices}, {{"axis", axis}});
}
// "gather_grad" (dy, indices, like), attr axis (int, default 0): zeros shaped like `like` (the
// params) with the slices of dy added at the gathered positions; repeated indices add up, in
// index order (deterministic). The adjoint of gather.
template <Operand T>
T gather_grad(const T& dy, const T& indices, const T& like, int64_t axis = 0) {
  return apply1("gather_grad", {dy, indices, like}, {{"axis", axis}});
}
// "one_hot" (indices: any integer dtype), attrs depth (int >= 0, required), on_value (float,
// default 1), off_value (float, default 0), axis (int, default -1: the new last dim) and dtype
// (default f32): out has indices' shape with a `depth` dim inserted at `axis`; out[..i.., d] =
// on_value if indices[..i..] == d else off_value. Out-of-range and negative indices give rows
// of off_value (as TensorFlow). Not differentiable.
template <Operand T>
T one_hot(const T& indices, int64_t depth, double on_value = 1.0, double off_value = 0.0,
          int64_t axis = -1, DType dtype = DType::kF32) {
  return apply1("one_hot", {indices},
                {{"depth", depth},
                 {"on_value", on_value},
                 {"off_value", off_value},
                 {"axis", axis},
                 {"dtype", dtype}});
}

// stack: joins tensors of one shape along a new axis (in [-rank-1, rank]); composed as concat of
// expand_dims views, so it needs no op (and its gradient comes from theirs).
template <Operand T>
T stack(const std::vector<T>& xs, int64_t axis = 0) {
  if (xs.empty()) LOWBIT_THROW(ValueError, "stack: expected at least one input but found none");
  std::vector<T> expanded;
  expanded.reserve(xs.size());
  for (const T& x : xs) expanded.push_back(expand_dims(x, axis));
  // A negative axis counts in the result's rank, which expand_dims already normalised.
  const int64_t rank = expanded[0].shape().rank();
  return concat(expanded, axis < 0 ? axis + rank : axis);
}
// unstack: the inverse of stack (x.dim(axis) must be known): split into size-1 pieces, squeezed.
template <Operand T>
std::vector<T> unstack(const T& x, int64_t axis = 0) {
  const int64_t rank = x.shape().rank();
  if (axis < -rank || axis >= rank)
    LOWBIT_THROW(ValueError, "unstack: axis ", axis, " is out of range for shape ",
                 x.shape().str());
  if (axis < 0) axis += rank;
  const int64_t n = x.shape()[static_cast<int>(axis)];
  if (n == kUnknown)
    LOWBIT_THROW(ShapeError, "unstack: expected a known dim along axis ", axis, " but found shape ",
                 x.shape().str());
  if (n == 0) return {};
  std::vector<T> parts = split_equal(x, n, axis);
  for (T& p : parts) p = squeeze(p, {axis});
  return parts;
}

}  // namespace lowbit::ops
