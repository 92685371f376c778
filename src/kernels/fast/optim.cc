// Fast fused optimizer steps (Adam without AMSGrad, SGD with momentum) for CPUs with AVX-512:
// 16 lanes per instruction, including the square root and the division that keep the portable
// reference loop scalar (std::sqrt may set errno, so the compiler does not vectorise it). The
// arithmetic is the reference's, operation for operation (no FMA: the project builds with
// -ffp-contract=off, and sqrt/div are correctly rounded in both), so results are bit-identical
// to the reference kernels in src/ops/optim_ops.cc. Elementwise, so any split across threads
// gives the same result.
#include "kernels/fast/optim.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace lowbit::kernels {

namespace {

constexpr int64_t kChunk = 1 << 14;  // elements per OpenMP task (64 KiB per stream)

// One vector of 16 (or fewer, masked) elements. Separate functions rather than lambdas: GCC
// does not give a lambda its enclosing function's target attribute.
__attribute__((target("avx512f"))) inline void adam16(const float* w, const float* g,
                                                      const float* m, const float* v, float* wo,
                                                      float* mo, float* vo, __mmask16 mask,
                                                      __m512 k1, __m512 k2, __m512 ke, __m512 ka) {
  const __m512 gi = _mm512_maskz_loadu_ps(mask, g);
  const __m512 mi = _mm512_maskz_loadu_ps(mask, m);
  const __m512 vi = _mm512_maskz_loadu_ps(mask, v);
  const __m512 wi = _mm512_maskz_loadu_ps(mask, w);
  // m' = m + (g - m) * c1;  v' = v + (g*g - v) * c2;  w' = w - (m' * alpha) / (sqrt(v') + eps)
  const __m512 mn = _mm512_add_ps(mi, _mm512_mul_ps(_mm512_sub_ps(gi, mi), k1));
  const __m512 vn = _mm512_add_ps(vi, _mm512_mul_ps(_mm512_sub_ps(_mm512_mul_ps(gi, gi), vi), k2));
  // (maskz form: GCC 12 warns that the plain form reads an undefined vector)
  const __m512 den = _mm512_add_ps(_mm512_maskz_sqrt_ps(0xFFFF, vn), ke);
  const __m512 wn = _mm512_sub_ps(wi, _mm512_div_ps(_mm512_mul_ps(mn, ka), den));
  _mm512_mask_storeu_ps(mo, mask, mn);
  _mm512_mask_storeu_ps(vo, mask, vn);
  _mm512_mask_storeu_ps(wo, mask, wn);
}

__attribute__((target("avx512f"))) void adam_range(const float* w, const float* g, const float* m,
                                                   const float* v, float* wo, float* mo, float* vo,
                                                   int64_t begin, int64_t end, float c1, float c2,
                                                   float eps, float alpha) {
  const __m512 k1 = _mm512_set1_ps(c1), k2 = _mm512_set1_ps(c2), ke = _mm512_set1_ps(eps),
               ka = _mm512_set1_ps(alpha);
  int64_t i = begin;
  for (; i + 16 <= end; i += 16)
    adam16(w + i, g + i, m + i, v + i, wo + i, mo + i, vo + i, 0xFFFF, k1, k2, ke, ka);
  if (i < end)
    adam16(w + i, g + i, m + i, v + i, wo + i, mo + i, vo + i,
           static_cast<__mmask16>((1u << (end - i)) - 1), k1, k2, ke, ka);
}

__attribute__((target("avx512f"))) inline void sgd16(const float* w, const float* g, const float* m,
                                                     float* wo, float* mo, __mmask16 mask,
                                                     __m512 kl, __m512 km, bool nesterov) {
  const __m512 gi = _mm512_maskz_loadu_ps(mask, g);
  const __m512 mi = _mm512_maskz_loadu_ps(mask, m);
  const __m512 wi = _mm512_maskz_loadu_ps(mask, w);
  const __m512 gl = _mm512_mul_ps(gi, kl);
  const __m512 mn = _mm512_sub_ps(_mm512_mul_ps(mi, km), gl);
  // nesterov: w' = w + (m' * mom - g * lr); plain: w' = w + m'
  const __m512 wn = nesterov ? _mm512_add_ps(wi, _mm512_sub_ps(_mm512_mul_ps(mn, km), gl))
                             : _mm512_add_ps(wi, mn);
  _mm512_mask_storeu_ps(mo, mask, mn);
  _mm512_mask_storeu_ps(wo, mask, wn);
}

__attribute__((target("avx512f"))) void sgd_range(const float* w, const float* g, const float* m,
                                                  float* wo, float* mo, int64_t begin, int64_t end,
                                                  float lr, float mom, bool nesterov) {
  const __m512 kl = _mm512_set1_ps(lr), km = _mm512_set1_ps(mom);
  int64_t i = begin;
  for (; i + 16 <= end; i += 16)
    sgd16(w + i, g + i, m + i, wo + i, mo + i, 0xFFFF, kl, km, nesterov);
  if (i < end)
    sgd16(w + i, g + i, m + i, wo + i, mo + i, static_cast<__mmask16>((1u << (end - i)) - 1), kl,
          km, nesterov);
}

// Runs body(begin, end) over [0, n) in chunks, in parallel when there is enough work.
template <class F>
void chunked(int64_t n, F body) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) body(c * kChunk, std::min(n, (c + 1) * kChunk));
}

}  // namespace

void adam_update_f32__avx512(const AdamParams& p, int64_t n, const float* w, const float* g,
                             const float* m, const float* v, float alpha, float* wo, float* mo,
                             float* vo) {
  chunked(n, [&](int64_t b, int64_t e) {
    adam_range(w, g, m, v, wo, mo, vo, b, e, p.c1, p.c2, p.epsilon, alpha);
  });
}

void sgd_momentum_update_f32__avx512(const SgdParams& p, int64_t n, const float* w, const float* g,
                                     const float* m, float lr, float* wo, float* mo) {
  chunked(n, [&](int64_t b, int64_t e) {
    sgd_range(w, g, m, wo, mo, b, e, lr, p.momentum, p.nesterov);
  });
}

}  // namespace lowbit::kernels
