// Reference (plain-loop) matrix multiplication: the definition the fast kernels are checked
// against. Shared by the "matmul" op's reference kernel and the oneDNN kernel tests.
#pragma once

#include <cstdint>

namespace lowbit::kernels {

// C[b] = op(A[b]) * op(B[b]); op = transpose if the flag is set. A is [batch, M, K] (or
// [batch, K, M] if trans_a), B is [batch, K, N] (or [batch, N, K] if trans_b);
// a_batch_stride/b_batch_stride are element strides between batches (0 = broadcast the same
// matrix). C is [batch, M, N] contiguous.
struct MatMulParams {
  int64_t batch = 1, m = 1, n = 1, k = 1;
  bool trans_a = false, trans_b = false;
  int64_t a_batch_stride = 0, b_batch_stride = 0;
};

// Sums over k in increasing order in double precision; results do not depend on thread count.
void matmul_f32_reference(const MatMulParams& p, const float* a, const float* b, float* c);

}  // namespace lowbit::kernels
