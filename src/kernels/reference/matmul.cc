#include "kernels/reference/matmul.h"

namespace lowbit::kernels {

namespace {
// Multiply-adds above which the loop over output rows is split across threads.
constexpr int64_t kParallelMacs = int64_t{1} << 16;
}  // namespace

void matmul_f32_reference(const MatMulParams& p, const float* a, const float* b, float* c) {
  // Element (i, kk) of op(A) and (kk, j) of op(B), as strides of the stored matrices.
  const int64_t a_si = p.trans_a ? 1 : p.k, a_sk = p.trans_a ? p.m : 1;
  const int64_t b_sk = p.trans_b ? 1 : p.n, b_sj = p.trans_b ? p.k : 1;
  const int64_t rows = p.batch * p.m;
  // Each thread owns whole output elements, so the result does not depend on the thread count.
#pragma omp parallel for schedule(static) if (rows * p.n * p.k > kParallelMacs)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t bi = r / p.m, i = r % p.m;
    const float* pa = a + bi * p.a_batch_stride + i * a_si;
    const float* pb = b + bi * p.b_batch_stride;
    float* pc = c + r * p.n;
    for (int64_t j = 0; j < p.n; ++j) {
      double acc = 0;
      for (int64_t kk = 0; kk < p.k; ++kk)
        acc += double{pa[kk * a_sk]} * double{pb[kk * b_sk + j * b_sj]};
      pc[j] = static_cast<float>(acc);
    }
  }
}

}  // namespace lowbit::kernels
