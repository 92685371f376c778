// Helpers shared by the matmul op's shape rule, its reference kernel and the oneDNN fast kernel.
#pragma once

#include <string>

#include "kernels/reference/matmul.h"
#include "lowbit/attrs.h"
#include "lowbit/shape.h"

namespace lowbit::detail {

// Output shape of matmul(a, b) with attrs transpose_a / transpose_b / sum_batch (see
// lowbit/ops/linalg.h); validates ranks, inner and batch dims (ShapeError naming `op`). Dims
// may be kUnknown.
Shape matmul_shape(const std::string& op, const Shape& a, const Shape& b, const Attrs& attrs);

// Batched-matmul geometry of matmul(a, b) for concrete shapes that passed the shape rule.
// Batch dims are flattened into `batch`; a rank-2 operand gets batch stride 0 (broadcast).
// Folds that turn the product into one large GEMM (batch = 1):
//   - b rank 2 and a not transposed: a's batch dims fold into M ([B,T,K] x [K,N] is one
//     [B*T,K] x [K,N] product);
//   - sum_batch (transpose_a, not transpose_b, equal batch dims): the batch folds into K
//     ([B,K,M]^T x [B,K,N] summed over B is one [B*K,M]^T x [B*K,N] product).
kernels::MatMulParams matmul_params(const Shape& a, const Shape& b, const Attrs& attrs);

}  // namespace lowbit::detail
