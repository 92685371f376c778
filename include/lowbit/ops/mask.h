// Timestep masks for users who think in lengths, and the masked reductions a masked model is made
// of (docs/masking.md; layer-semantics.md 4.2, the low-level TensorFlow equivalent).
//
// A timestep mask is bool [B, T], true = a valid step, false = padding (Keras' convention).
//
//   Tensor lengths = Tensor::from_vector<int32_t>({3, 1}, {2});
//   Tensor m = ops::sequence_mask(lengths, 4);    // bool [2, 4] [[1,1,1,0], [1,0,0,0]]
//   Tensor l = ops::lengths_from_mask(m);         // s64 [2]    [3, 1]
//   Tensor x = ...;                               // f32 [2, 4, F]
//   Tensor avg = ops::masked_mean(x, ops::expand_dims(m, -1), {1});   // f32 [2, F]
//
// Ops:
//   "sequence_mask" (lengths) or (lengths, like), attr maxlen (int >= 0; with `like`, unused):
//       out[..., t] = t < lengths[...], bool of shape lengths.shape + [maxlen] (tf.sequence_mask).
//       lengths: any integer dtype, any rank. With a second input `like` (any dtype, rank >
//       lengths' rank), maxlen is like's dim lengths.rank() at run time: sequence_mask_like
//       builds the mask of a [B, T, ...] tensor whose T is unknown when the graph is built.
//       Negative lengths give all-false rows, lengths > maxlen all-true rows. No gradient.
//       Throws DTypeError for non-integer lengths, ValueError for maxlen < 0, ShapeError for a
//       `like` of too low rank.
//   "lengths_from_mask" (mask), bool or numeric of rank >= 1: the number of valid (nonzero)
//       entries along the last axis, s64 of shape mask.shape[:-1]. For a right-padded mask this
//       is the sequence length (the inverse of sequence_mask); with holes it counts the valid
//       steps. No gradient. ShapeError for a scalar.
//
// Composed helpers (no op of their own; gradients come from the ops they use):
//   reduce_any / reduce_all: logical or / and over axes of a bool (or numeric: nonzero) tensor;
//   masked_sum / masked_mean: sums and means over `axes` of the entries where `mask` (bool or
//       0/1 numbers, broadcast to x) is valid. Masked entries are never read (a NaN there does
//       not leak, and gets a zero gradient). The mean of an all-masked slice is 0 (Keras'
//       divide_no_nan), not NaN.
#pragma once

#include <vector>

#include "lowbit/ops/base.h"
#include "lowbit/ops/elementwise.h"
#include "lowbit/ops/reduce.h"
#include "lowbit/ops/shape_ops.h"

namespace lowbit::ops {

template <Operand T>
T sequence_mask(const T& lengths, int64_t maxlen) {
  return apply1("sequence_mask", {lengths}, {{"maxlen", maxlen}});
}
// maxlen = like.dim(lengths.rank()) when the op runs.
template <Operand T>
T sequence_mask_like(const T& lengths, const T& like) {
  return apply1("sequence_mask", {lengths, like}, {{"maxlen", int64_t{0}}});
}
template <Operand T>
T lengths_from_mask(const T& mask) {
  return apply1("lengths_from_mask", {mask});
}

template <Operand T>
T reduce_any(const T& x, std::vector<int64_t> axes = {}, bool keepdims = false) {
  return cast(max(cast(x, DType::kF32), std::move(axes), keepdims), DType::kBool);
}
template <Operand T>
T reduce_all(const T& x, std::vector<int64_t> axes = {}, bool keepdims = false) {
  return cast(min(cast(x, DType::kF32), std::move(axes), keepdims), DType::kBool);
}

// sum over `axes` of where(mask, x, 0); mask broadcasts to x (bool, or numbers: nonzero = valid).
template <Operand T>
T masked_sum(const T& x, const T& mask, std::vector<int64_t> axes = {}, bool keepdims = false) {
  const T m = mask.dtype() == DType::kBool ? mask : cast(mask, DType::kBool);
  return sum(where(m, x, scalar_like(x, 0.0)), std::move(axes), keepdims);
}
// masked_sum / the number of valid entries of each reduced slice (0 where there are none).
template <Operand T>
T masked_mean(const T& x, const T& mask, std::vector<int64_t> axes = {}, bool keepdims = false) {
  const T m = mask.dtype() == DType::kBool ? mask : cast(mask, DType::kBool);
  const T total = sum(where(m, x, scalar_like(x, 0.0)), axes, keepdims);
  const T count = sum(broadcast_like(cast(m, DType::kF32), x), std::move(axes), keepdims);
  const T empty = equal(count, scalar_like(count, 0.0));
  return where(empty, scalar_like(total, 0.0), total / maximum(count, scalar_like(count, 1.0)));
}

}  // namespace lowbit::ops
