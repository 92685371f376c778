// Fast f32 -> int8 quantization; kernels/fast/int8_quantize.h says why it equals the reference.
#include "kernels/fast/int8_quantize.h"

#include <immintrin.h>

#include "kernels/reference/int8.h"

namespace lowbit::kernels {

namespace {

// Eight codes of x[0..8) as int32 lanes.
__attribute__((target("avx2"))) inline __m256i quantize8(const float* x, __m256 scale, __m256 lo,
                                                         __m256 hi, __m256i zp) {
  const __m256 v = _mm256_div_ps(_mm256_loadu_ps(x), scale);
  const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256 frac = _mm256_andnot_ps(sign_bit, _mm256_sub_ps(v, t));  // |v - trunc(v)|
  const __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
  // sign(v) * 1 where the fraction reaches a half.
  const __m256 step =
      _mm256_and_ps(up, _mm256_or_ps(_mm256_and_ps(v, sign_bit), _mm256_set1_ps(1.0f)));
  __m256 r = _mm256_add_ps(t, step);
  r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
  // NaN (unordered v) -> 0, i.e. the zero point.
  r = _mm256_and_ps(r, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
  return _mm256_add_epi32(_mm256_cvttps_epi32(r), zp);
}

}  // namespace

__attribute__((target("avx2"))) void quantize_f32_s8__avx2(quant::QuantParams p, int64_t n,
                                                           const float* x, int8_t* y) {
  const __m256 scale = _mm256_set1_ps(p.scale);
  // The rounded value's bounds, so that rounded + zero_point lands in [-128, 127].
  const __m256 lo = _mm256_set1_ps(static_cast<float>(-128 - p.zero_point));
  const __m256 hi = _mm256_set1_ps(static_cast<float>(127 - p.zero_point));
  const __m256i zp = _mm256_set1_epi32(p.zero_point);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i a = quantize8(x + i, scale, lo, hi, zp);
    const __m256i b = quantize8(x + i + 8, scale, lo, hi, zp);
    const __m256i c = quantize8(x + i + 16, scale, lo, hi, zp);
    const __m256i d = quantize8(x + i + 24, scale, lo, hi, zp);
    // packs work per 128-bit half: a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7, then reorder.
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i),
                        _mm256_permutevar8x32_epi32(bytes, order));
  }
  quantize_s8_reference(p, n - i, x + i, y + i);
}

}  // namespace lowbit::kernels
