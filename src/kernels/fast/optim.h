// Fused optimizer steps, their parameters (shared with the reference kernels of
// src/ops/optim_ops.cc) and the AVX-512 kernels of src/kernels/fast/optim.cc.
#pragma once

#include <cstdint>

namespace lowbit::kernels {

// Adam: c1 = 1 - beta_1, c2 = 1 - beta_2, in f32.
struct AdamParams {
  float c1 = 0, c2 = 0, epsilon = 0;
};
struct SgdParams {
  float momentum = 0;
  bool nesterov = false;
};

// (w, g, m, v) of n elements and the step alpha -> (w', m', v'); Adam without AMSGrad.
void adam_update_f32__avx512(const AdamParams& p, int64_t n, const float* w, const float* g,
                             const float* m, const float* v, float alpha, float* wo, float* mo,
                             float* vo);
// (w, g, m) of n elements and the learning rate -> (w', m').
void sgd_momentum_update_f32__avx512(const SgdParams& p, int64_t n, const float* w, const float* g,
                                     const float* m, float lr, float* wo, float* mo);

}  // namespace lowbit::kernels
