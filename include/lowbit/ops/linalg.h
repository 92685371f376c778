// Linear algebra ops (f32).
//
// matmul(a, b): the matrix product op(a) @ op(b) over the last two axes, where op transposes
// the last two axes when the `transpose_a` / `transpose_b` flag is set.
//   a [..., M, K] (or [..., K, M] transposed), b [..., K, N] (or [..., N, K] transposed)
//   -> [..., M, N]
// Batch dims (all but the last two): equal in a and b, or one operand is rank 2 and is shared
// by every batch entry (Dense on [B, T, D] is matmul([B,T,D], [D,U]) -> [B,T,U]).
// Unknown (kUnknown) batch dims are fine in graphs. Gradients flow to both operands (a shared
// rank-2 operand gets the sum over the batch).
//
// Attribute `sum_batch` (bool, default false; needs transpose_a and equal batch dims): the
// product is summed over the batch, giving [M, N] = sum_b a[b]^T @ b[b]. Gradient rules use it
// for the weight gradient of a shared matrix (one GEMM instead of a batch of them).
//
// Throws ShapeError (rank < 2, inner dims differ, batch dims differ), DTypeError (not f32),
// ValueError (sum_batch without transpose_a).
//
//   Tensor y = ops::matmul(x, w);                  // [B,T,D] x [D,U] -> [B,T,U]
//   Tensor s = ops::matmul(q, k, false, true);     // [B,M,D] x [B,N,D] -> [B,M,N]
#pragma once

#include "lowbit/ops/base.h"

namespace lowbit::ops {

template <Operand T>
T matmul(const T& a, const T& b, bool transpose_a = false, bool transpose_b = false) {
  Attrs attrs;
  if (transpose_a) attrs.set("transpose_a", true);
  if (transpose_b) attrs.set("transpose_b", true);
  return apply1("matmul", {a, b}, attrs);
}

}  // namespace lowbit::ops
