// Fast TF fake-quant kernels (AVX-512F and AVX2, chosen at run time; no -march flags needed):
// the forward, the fused gradient (dx, dmin, dmax in one pass) and min_max.
//
// Bit-identical to the reference kernels (src/ops/fake_quant.cc): every lane evaluates the
// operations of kernels/fake_quant_formulas.h in the same order with the same IEEE instructions
// (min/max with the operand order of std::min/std::max, round-toward-minus-infinity for floor,
// no FMA: the build has -ffp-contract=off). The sums of the gradient keep the reference's order:
// per tensor, 16 double lanes per block (two AVX-512 or four AVX2 registers); per channel, the
// rows in order for each channel (the vector runs across channels; only lanes outside the range
// are added, in row order). min_max is exact in any order (min and max of a set, zeros and NaN
// canonicalised).
// Threads split blocks of elements, or channels, exactly as the reference does.
#include "kernels/fast/fake_quant.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "lowbit/threads.h"

namespace lowbit::kernels {

namespace {

// Kernels for one ISA, over a range of elements or channels; the drivers below split the work.
struct IsaKernels {
  // y[0, n) for one range; kDivide selects the vars formula.
  void (*forward)(const float* x, float* y, int64_t n, const FakeQuantParams& p, bool divide);
  // One block of the per-tensor gradient: dx[0, n) and the 16 lane sums of dy below/above the
  // range (element i to lane i % 16; written to lo[16], hi[16]).
  void (*backward_block)(const float* dy, const float* x, float* dx, int64_t n,
                         const FakeQuantParams& p, double* lo, double* hi);
  // dx[0, n) and the sums of dy below/above the range in element order (added to *lo, *hi).
  void (*backward_sequential)(const float* dy, const float* x, float* dx, int64_t n,
                              const FakeQuantParams& p, double* lo, double* hi);
  // Per channel, rows [r0, r1) of [rows, d], all channels.
  void (*forward_channels)(const float* x, float* y, int64_t r0, int64_t r1, int64_t d,
                           const float* const* params);
  // Per channel, channels [c0, c1) of every row: dx and the ordered per-channel sums.
  void (*backward_channels)(const float* dy, const float* x, float* dx, int64_t rows, int64_t d,
                            int64_t c0, int64_t c1, const float* const* params, double* lo,
                            double* hi);
  // Min and max of x[0, n) (non-NaN values) and whether a NaN occurred.
  void (*min_max)(const float* x, int64_t n, float* lo, float* hi, bool* nan);
  // Per channel min/max over rows [r0, r1) of [rows, d], channels [c0, c1).
  void (*min_max_channels)(const float* x, int64_t r0, int64_t r1, int64_t d, int64_t c0,
                           int64_t c1, float* lo, float* hi, unsigned char* nan);
  int64_t width;  // lanes
};

// Parameter arrays of the per-channel kernels (index into `params`).
enum ChannelParam { kMin, kMax, kMul, kQuantZero, kScale, kNumChannelParams };

// ---- AVX-512F ------------------------------------------------------------------------------

// GCC 12 reports the _mm512_undefined_ps() operand of unmasked AVX-512 intrinsics as
// uninitialized once they are inlined (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f")
// clang ignores GCC target pragmas: the same region as a clang attribute (the fuzz build).
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f"))), apply_to = function)
#endif

inline __m512 fq512(__m512 x, __m512 lo, __m512 hi, __m512 mul, __m512 qz, __m512 scale,
                    bool divide) {
  // std::min(x, hi) is (hi < x) ? hi : x, which is _mm512_min_ps(hi, x); likewise for max.
  const __m512 c = _mm512_max_ps(lo, _mm512_min_ps(hi, x));
  const __m512 shifted = _mm512_sub_ps(c, lo);
  const __m512 t = divide ? _mm512_div_ps(shifted, mul) : _mm512_mul_ps(shifted, mul);
  const __m512 r = _mm512_add_ps(_mm512_sub_ps(t, qz), _mm512_set1_ps(0.5f));
  return _mm512_mul_ps(_mm512_roundscale_ps(r, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC), scale);
}

inline __mmask16 tail_mask16(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

void forward_avx512(const float* x, float* y, int64_t n, const FakeQuantParams& p, bool divide) {
  const __m512 lo = _mm512_set1_ps(p.nudged_min), hi = _mm512_set1_ps(p.nudged_max);
  const __m512 mul = _mm512_set1_ps(divide ? p.scale : p.inv_scale);
  const __m512 qz = _mm512_set1_ps(p.quant_zero), scale = _mm512_set1_ps(p.scale);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
    _mm512_storeu_ps(y + i, fq512(a, lo, hi, mul, qz, scale, divide));
    _mm512_storeu_ps(y + i + 16, fq512(b, lo, hi, mul, qz, scale, divide));
  }
  for (; i < n; i += 16) {
    const __mmask16 m = tail_mask16(n - i);
    const __m512 a = _mm512_maskz_loadu_ps(m, x + i);
    _mm512_mask_storeu_ps(y + i, m, fq512(a, lo, hi, mul, qz, scale, divide));
  }
}

// Adds dy of the lanes set in `below`/`above`, in lane order.
inline void add_lanes(const float* dy, unsigned below, unsigned above, double* lo, double* hi) {
  unsigned any = below | above;
  while (any) {
    const int j = __builtin_ctz(any);
    any &= any - 1;
    if (below >> j & 1u) *lo += dy[j];
    if (above >> j & 1u) *hi += dy[j];
  }
}

void backward_block_avx512(const float* dy, const float* x, float* dx, int64_t n,
                           const FakeQuantParams& p, double* lo_lanes, double* hi_lanes) {
  const __m512 lo = _mm512_set1_ps(p.nudged_min), hi = _mm512_set1_ps(p.nudged_max);
  __m512d below0 = _mm512_setzero_pd(), below1 = below0, above0 = below0, above1 = below0;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask16(n - i);
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + i);
    const __m512 dv = _mm512_maskz_loadu_ps(m, dy + i);
    const __mmask16 in =
        _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(xv, lo, _CMP_GE_OQ), xv, hi, _CMP_LE_OQ);
    _mm512_mask_storeu_ps(dx + i, m, _mm512_maskz_mov_ps(in, dv));
    const __mmask16 below = _mm512_mask_cmp_ps_mask(m, xv, lo, _CMP_LT_OQ);
    const __mmask16 above = _mm512_mask_cmp_ps_mask(m, xv, hi, _CMP_GT_OQ);
    if (!(below | above)) continue;
    // Lanes 0-7 and 8-15 in double; a masked add leaves the other lanes untouched.
    const __m512d d0 = _mm512_cvtps_pd(_mm512_castps512_ps256(dv));
    const __m512d d1 =
        _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(dv), 1)));
    below0 = _mm512_mask_add_pd(below0, static_cast<__mmask8>(below), below0, d0);
    below1 = _mm512_mask_add_pd(below1, static_cast<__mmask8>(below >> 8), below1, d1);
    above0 = _mm512_mask_add_pd(above0, static_cast<__mmask8>(above), above0, d0);
    above1 = _mm512_mask_add_pd(above1, static_cast<__mmask8>(above >> 8), above1, d1);
  }
  _mm512_storeu_pd(lo_lanes, below0);
  _mm512_storeu_pd(lo_lanes + 8, below1);
  _mm512_storeu_pd(hi_lanes, above0);
  _mm512_storeu_pd(hi_lanes + 8, above1);
}

void backward_avx512(const float* dy, const float* x, float* dx, int64_t n,
                     const FakeQuantParams& p, double* lo_sum, double* hi_sum) {
  const __m512 lo = _mm512_set1_ps(p.nudged_min), hi = _mm512_set1_ps(p.nudged_max);
  double s_lo = *lo_sum, s_hi = *hi_sum;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask16(n - i);
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + i);
    const __m512 dv = _mm512_maskz_loadu_ps(m, dy + i);
    const __mmask16 in =
        _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(xv, lo, _CMP_GE_OQ), xv, hi, _CMP_LE_OQ);
    _mm512_mask_storeu_ps(dx + i, m, _mm512_maskz_mov_ps(in, dv));
    const __mmask16 below = _mm512_mask_cmp_ps_mask(m, xv, lo, _CMP_LT_OQ);
    const __mmask16 above = _mm512_mask_cmp_ps_mask(m, xv, hi, _CMP_GT_OQ);
    if (below | above) add_lanes(dy + i, below, above, &s_lo, &s_hi);
  }
  *lo_sum = s_lo;
  *hi_sum = s_hi;
}

void forward_channels_avx512(const float* x, float* y, int64_t r0, int64_t r1, int64_t d,
                             const float* const* pp) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = 0; c < d; c += 16) {
      const __mmask16 m = tail_mask16(d - c);
      const __m512 lo = _mm512_maskz_loadu_ps(m, pp[kMin] + c);
      const __m512 hi = _mm512_maskz_loadu_ps(m, pp[kMax] + c);
      const __m512 mul = _mm512_maskz_loadu_ps(m, pp[kMul] + c);
      const __m512 qz = _mm512_maskz_loadu_ps(m, pp[kQuantZero] + c);
      const __m512 scale = _mm512_maskz_loadu_ps(m, pp[kScale] + c);
      const __m512 a = _mm512_maskz_loadu_ps(m, x + r * d + c);
      _mm512_mask_storeu_ps(y + r * d + c, m, fq512(a, lo, hi, mul, qz, scale, false));
    }
}

// Lanes 8 * half .. 8 * half + 7 of v, widened to double.
inline __m512d widen_half(__m512 v, int half) {
  const __m512i bits = _mm512_castps_si512(v);
  return _mm512_cvtps_pd(_mm256_castsi256_ps(half ? _mm512_extracti64x4_epi64(bits, 1)
                                                  : _mm512_castsi512_si256(bits)));
}

// sum[0..16) += the lanes of v selected by `sel` (others add 0.0), in double; m: valid lanes.
inline void add_selected(double* sum, __mmask16 sel, __m512 v, __mmask16 m) {
  const __m512 w = _mm512_maskz_mov_ps(sel, v);
  const __mmask8 m0 = static_cast<__mmask8>(m & 0xff), m1 = static_cast<__mmask8>(m >> 8);
  _mm512_mask_storeu_pd(sum, m0, _mm512_add_pd(_mm512_maskz_loadu_pd(m0, sum), widen_half(w, 0)));
  _mm512_mask_storeu_pd(sum + 8, m1,
                        _mm512_add_pd(_mm512_maskz_loadu_pd(m1, sum + 8), widen_half(w, 1)));
}

void backward_channels_avx512(const float* dy, const float* x, float* dx, int64_t rows, int64_t d,
                              int64_t c0, int64_t c1, const float* const* pp, double* lo_sum,
                              double* hi_sum) {
  // Rows outer, channels inner (one sequential sweep of memory); the range gradients accumulate
  // per channel in double, lane by lane in row order: the same additions in the same order as the
  // reference's sequential sums (adding 0.0 for elements in range changes no sum), so the
  // results are bit-identical. The sums of [c0, c1) stay in L1.
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = c0; c < c1; c += 16) {
      const __mmask16 m = tail_mask16(c1 - c);
      const __m512 lo = _mm512_maskz_loadu_ps(m, pp[kMin] + c);
      const __m512 hi = _mm512_maskz_loadu_ps(m, pp[kMax] + c);
      const int64_t e = r * d + c;
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + e);
      const __m512 dv = _mm512_maskz_loadu_ps(m, dy + e);
      const __mmask16 in =
          _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(xv, lo, _CMP_GE_OQ), xv, hi, _CMP_LE_OQ);
      _mm512_mask_storeu_ps(dx + e, m, _mm512_maskz_mov_ps(in, dv));
      const __mmask16 below = _mm512_mask_cmp_ps_mask(m, xv, lo, _CMP_LT_OQ);
      const __mmask16 above = _mm512_mask_cmp_ps_mask(m, xv, hi, _CMP_GT_OQ);
      if (below) add_selected(lo_sum + c, below, dv, m);
      if (above) add_selected(hi_sum + c, above, dv, m);
    }
  }
}

void min_max_avx512(const float* x, int64_t n, float* lo_out, float* hi_out, bool* nan_out) {
  __m512 lo = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 hi = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __mmask16 nan = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask16(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    nan |= _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q);
    lo = _mm512_mask_min_ps(lo, m, lo, v);
    hi = _mm512_mask_max_ps(hi, m, hi, v);
  }
  *lo_out = std::min(*lo_out, _mm512_reduce_min_ps(lo));
  *hi_out = std::max(*hi_out, _mm512_reduce_max_ps(hi));
  *nan_out = *nan_out || nan != 0;
}

void min_max_channels_avx512(const float* x, int64_t r0, int64_t r1, int64_t d, int64_t c0,
                             int64_t c1, float* lo_out, float* hi_out, unsigned char* nan_out) {
  for (int64_t c = c0; c < c1; c += 16) {
    const __mmask16 m = tail_mask16(c1 - c);
    __m512 lo = _mm512_maskz_loadu_ps(m, lo_out + c);
    __m512 hi = _mm512_maskz_loadu_ps(m, hi_out + c);
    __mmask16 nan = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const __m512 v = _mm512_maskz_loadu_ps(m, x + r * d + c);
      nan |= _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q);
      lo = _mm512_mask_min_ps(lo, m, lo, v);
      hi = _mm512_mask_max_ps(hi, m, hi, v);
    }
    _mm512_mask_storeu_ps(lo_out + c, m, lo);
    _mm512_mask_storeu_ps(hi_out + c, m, hi);
    for (int j = 0; j < 16; ++j)
      if (nan >> j & 1u) nan_out[c + j] = 1;
  }
}

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options
#pragma GCC diagnostic pop

// ---- AVX2 ----------------------------------------------------------------------------------

#pragma GCC push_options
#pragma GCC target("avx2")
// clang ignores GCC target pragmas: the same region as a clang attribute (the fuzz build).
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#endif

inline __m256 fq256(__m256 x, __m256 lo, __m256 hi, __m256 mul, __m256 qz, __m256 scale,
                    bool divide) {
  const __m256 c = _mm256_max_ps(lo, _mm256_min_ps(hi, x));
  const __m256 shifted = _mm256_sub_ps(c, lo);
  const __m256 t = divide ? _mm256_div_ps(shifted, mul) : _mm256_mul_ps(shifted, mul);
  const __m256 r = _mm256_add_ps(_mm256_sub_ps(t, qz), _mm256_set1_ps(0.5f));
  return _mm256_mul_ps(_mm256_round_ps(r, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC), scale);
}

void forward_avx2(const float* x, float* y, int64_t n, const FakeQuantParams& p, bool divide) {
  const __m256 lo = _mm256_set1_ps(p.nudged_min), hi = _mm256_set1_ps(p.nudged_max);
  const __m256 mul = _mm256_set1_ps(divide ? p.scale : p.inv_scale);
  const __m256 qz = _mm256_set1_ps(p.quant_zero), scale = _mm256_set1_ps(p.scale);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
    _mm256_storeu_ps(y + i, fq256(a, lo, hi, mul, qz, scale, divide));
    _mm256_storeu_ps(y + i + 8, fq256(b, lo, hi, mul, qz, scale, divide));
  }
  for (; i < n; ++i)
    y[i] = divide ? fake_quant_value<true>(x[i], p) : fake_quant_value<false>(x[i], p);
}

// The sign-extended lower/upper half of a float mask as a double mask.
inline __m256d mask_lo_pd(__m256 m) {
  return _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_castps_si128(_mm256_castps256_ps128(m))));
}
inline __m256d mask_hi_pd(__m256 m) {
  return _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_castps_si128(_mm256_extractf128_ps(m, 1))));
}

void backward_block_avx2(const float* dy, const float* x, float* dx, int64_t n,
                         const FakeQuantParams& p, double* lo_lanes, double* hi_lanes) {
  const __m256 lo = _mm256_set1_ps(p.nudged_min), hi = _mm256_set1_ps(p.nudged_max);
  // Lanes 4k..4k+3 in below[k] / above[k]. Lanes outside the condition add +0.0, which changes
  // nothing: a sum that starts at +0.0 never becomes -0.0 under round-to-nearest.
  __m256d below[4], above[4];
  for (int k = 0; k < 4; ++k) below[k] = above[k] = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int h = 0; h < 2; ++h) {
      const __m256 xv = _mm256_loadu_ps(x + i + 8 * h);
      const __m256 dv = _mm256_loadu_ps(dy + i + 8 * h);
      const __m256 in =
          _mm256_and_ps(_mm256_cmp_ps(xv, lo, _CMP_GE_OQ), _mm256_cmp_ps(xv, hi, _CMP_LE_OQ));
      _mm256_storeu_ps(dx + i + 8 * h, _mm256_and_ps(in, dv));
      const __m256 bm = _mm256_cmp_ps(xv, lo, _CMP_LT_OQ);
      const __m256 am = _mm256_cmp_ps(xv, hi, _CMP_GT_OQ);
      if (!_mm256_movemask_ps(_mm256_or_ps(bm, am))) continue;
      const __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(dv));
      const __m256d d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(dv, 1));
      below[2 * h] = _mm256_add_pd(below[2 * h], _mm256_and_pd(mask_lo_pd(bm), d0));
      below[2 * h + 1] = _mm256_add_pd(below[2 * h + 1], _mm256_and_pd(mask_hi_pd(bm), d1));
      above[2 * h] = _mm256_add_pd(above[2 * h], _mm256_and_pd(mask_lo_pd(am), d0));
      above[2 * h + 1] = _mm256_add_pd(above[2 * h + 1], _mm256_and_pd(mask_hi_pd(am), d1));
    }
  for (int k = 0; k < 4; ++k) {
    _mm256_storeu_pd(lo_lanes + 4 * k, below[k]);
    _mm256_storeu_pd(hi_lanes + 4 * k, above[k]);
  }
  for (; i < n; ++i) {  // i is a multiple of 16 here plus the lane
    dx[i] = fake_quant_passes(x[i], p) ? dy[i] : 0.0f;
    if (x[i] < p.nudged_min) lo_lanes[i % kFakeQuantSumLanes] += dy[i];
    if (x[i] > p.nudged_max) hi_lanes[i % kFakeQuantSumLanes] += dy[i];
  }
}

void backward_avx2(const float* dy, const float* x, float* dx, int64_t n, const FakeQuantParams& p,
                   double* lo_sum, double* hi_sum) {
  const __m256 lo = _mm256_set1_ps(p.nudged_min), hi = _mm256_set1_ps(p.nudged_max);
  double s_lo = *lo_sum, s_hi = *hi_sum;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    const __m256 dv = _mm256_loadu_ps(dy + i);
    const __m256 in =
        _mm256_and_ps(_mm256_cmp_ps(xv, lo, _CMP_GE_OQ), _mm256_cmp_ps(xv, hi, _CMP_LE_OQ));
    _mm256_storeu_ps(dx + i, _mm256_and_ps(in, dv));
    const unsigned below = _mm256_movemask_ps(_mm256_cmp_ps(xv, lo, _CMP_LT_OQ));
    const unsigned above = _mm256_movemask_ps(_mm256_cmp_ps(xv, hi, _CMP_GT_OQ));
    if (below | above) add_lanes(dy + i, below, above, &s_lo, &s_hi);
  }
  for (; i < n; ++i) {
    dx[i] = fake_quant_passes(x[i], p) ? dy[i] : 0.0f;
    if (x[i] < p.nudged_min) s_lo += dy[i];
    if (x[i] > p.nudged_max) s_hi += dy[i];
  }
  *lo_sum = s_lo;
  *hi_sum = s_hi;
}

// One channel of one row, as the reference computes it.
inline float channel_value(float x, int64_t c, const float* const* pp) {
  FakeQuantParams p;
  p.nudged_min = pp[kMin][c];
  p.nudged_max = pp[kMax][c];
  p.inv_scale = pp[kMul][c];
  p.quant_zero = pp[kQuantZero][c];
  p.scale = pp[kScale][c];
  return fake_quant_value<false>(x, p);
}

void forward_channels_avx2(const float* x, float* y, int64_t r0, int64_t r1, int64_t d,
                           const float* const* pp) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t c = 0;
    for (; c + 8 <= d; c += 8) {
      const __m256 a = _mm256_loadu_ps(x + r * d + c);
      _mm256_storeu_ps(y + r * d + c,
                       fq256(a, _mm256_loadu_ps(pp[kMin] + c), _mm256_loadu_ps(pp[kMax] + c),
                             _mm256_loadu_ps(pp[kMul] + c), _mm256_loadu_ps(pp[kQuantZero] + c),
                             _mm256_loadu_ps(pp[kScale] + c), false));
    }
    for (; c < d; ++c) y[r * d + c] = channel_value(x[r * d + c], c, pp);
  }
}

// sum[0..8) += the lanes of v selected by the all-ones lanes of `sel` (others add 0.0), in double.
inline void add_selected(double* sum, __m256 sel, __m256 v) {
  const __m256 w = _mm256_and_ps(sel, v);
  _mm256_storeu_pd(sum,
                   _mm256_add_pd(_mm256_loadu_pd(sum), _mm256_cvtps_pd(_mm256_castps256_ps128(w))));
  _mm256_storeu_pd(sum + 4, _mm256_add_pd(_mm256_loadu_pd(sum + 4),
                                          _mm256_cvtps_pd(_mm256_extractf128_ps(w, 1))));
}

void backward_channels_avx2(const float* dy, const float* x, float* dx, int64_t rows, int64_t d,
                            int64_t c0, int64_t c1, const float* const* pp, double* lo_sum,
                            double* hi_sum) {
  // As the AVX-512 kernel: rows outer, per-channel double sums in row order (bit-identical).
  for (int64_t r = 0; r < rows; ++r) {
    int64_t c = c0;
    for (; c + 8 <= c1; c += 8) {
      const __m256 lo = _mm256_loadu_ps(pp[kMin] + c), hi = _mm256_loadu_ps(pp[kMax] + c);
      const int64_t e = r * d + c;
      const __m256 xv = _mm256_loadu_ps(x + e);
      const __m256 in =
          _mm256_and_ps(_mm256_cmp_ps(xv, lo, _CMP_GE_OQ), _mm256_cmp_ps(xv, hi, _CMP_LE_OQ));
      const __m256 dv = _mm256_loadu_ps(dy + e);
      _mm256_storeu_ps(dx + e, _mm256_and_ps(in, dv));
      const __m256 below = _mm256_cmp_ps(xv, lo, _CMP_LT_OQ);
      const __m256 above = _mm256_cmp_ps(xv, hi, _CMP_GT_OQ);
      if (_mm256_movemask_ps(below)) add_selected(lo_sum + c, below, dv);
      if (_mm256_movemask_ps(above)) add_selected(hi_sum + c, above, dv);
    }
    for (; c < c1; ++c) {
      const int64_t e = r * d + c;
      const float lo = pp[kMin][c], hi = pp[kMax][c];
      dx[e] = lo <= x[e] && x[e] <= hi ? dy[e] : 0.0f;
      if (x[e] < lo) lo_sum[c] += dy[e];
      if (x[e] > hi) hi_sum[c] += dy[e];
    }
  }
}

inline float hmin256(__m256 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  float m = t[0];
  for (int j = 1; j < 8; ++j) m = std::min(m, t[j]);
  return m;
}
inline float hmax256(__m256 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  float m = t[0];
  for (int j = 1; j < 8; ++j) m = std::max(m, t[j]);
  return m;
}

void min_max_avx2(const float* x, int64_t n, float* lo_out, float* hi_out, bool* nan_out) {
  __m256 lo = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 hi = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    lo = _mm256_min_ps(lo, v);
    hi = _mm256_max_ps(hi, v);
  }
  float l = std::min(*lo_out, hmin256(lo)), h = std::max(*hi_out, hmax256(hi));
  bool any_nan = *nan_out || _mm256_movemask_ps(nan) != 0;
  for (; i < n; ++i) {
    if (std::isnan(x[i])) any_nan = true;
    l = std::min(l, x[i]);
    h = std::max(h, x[i]);
  }
  *lo_out = l;
  *hi_out = h;
  *nan_out = any_nan;
}

void min_max_channels_avx2(const float* x, int64_t r0, int64_t r1, int64_t d, int64_t c0,
                           int64_t c1, float* lo_out, float* hi_out, unsigned char* nan_out) {
  int64_t c = c0;
  for (; c + 8 <= c1; c += 8) {
    __m256 lo = _mm256_loadu_ps(lo_out + c), hi = _mm256_loadu_ps(hi_out + c);
    __m256 nan = _mm256_setzero_ps();
    for (int64_t r = r0; r < r1; ++r) {
      const __m256 v = _mm256_loadu_ps(x + r * d + c);
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      lo = _mm256_min_ps(lo, v);
      hi = _mm256_max_ps(hi, v);
    }
    _mm256_storeu_ps(lo_out + c, lo);
    _mm256_storeu_ps(hi_out + c, hi);
    const unsigned bits = _mm256_movemask_ps(nan);
    for (int j = 0; j < 8; ++j)
      if (bits >> j & 1u) nan_out[c + j] = 1;
  }
  for (; c < c1; ++c)
    for (int64_t r = r0; r < r1; ++r) {
      const float v = x[r * d + c];
      if (std::isnan(v)) nan_out[c] = 1;
      lo_out[c] = std::min(lo_out[c], v);
      hi_out[c] = std::max(hi_out[c], v);
    }
}

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options

const IsaKernels kAvx512 = {forward_avx512,           backward_block_avx512,
                            backward_avx512,          forward_channels_avx512,
                            backward_channels_avx512, min_max_avx512,
                            min_max_channels_avx512,  16};
const IsaKernels kAvx2 = {
    forward_avx2,           backward_block_avx2, backward_avx2,         forward_channels_avx2,
    backward_channels_avx2, min_max_avx2,        min_max_channels_avx2, 8};

// ---- drivers (threads, parameters, degenerate ranges) ---------------------------------------

// Splits [0, n) into blocks of kFakeQuantSumBlock and runs f(block, begin, end).
template <class F>
void for_each_block(int64_t n, F f) {
  const int64_t blocks = (n + kFakeQuantSumBlock - 1) / kFakeQuantSumBlock;
#pragma omp parallel for if (n > kFakeQuantParallelGrain) schedule(static)
  for (int64_t b = 0; b < blocks; ++b)
    f(b, b * kFakeQuantSumBlock, std::min(n, (b + 1) * kFakeQuantSumBlock));
}

void forward_per_tensor(const IsaKernels& isa, const float* x, float* y, int64_t n,
                        const FakeQuantParams& p, bool divide) {
  if (p.zero) {
    std::fill(y, y + n, 0.0f);
    return;
  }
  for_each_block(
      n, [&](int64_t, int64_t i0, int64_t i1) { isa.forward(x + i0, y + i0, i1 - i0, p, divide); });
}

// dx and {dmin, dmax} with the reference's block order.
std::pair<float, float> backward_per_tensor(const IsaKernels& isa, const float* dy, const float* x,
                                            float* dx, int64_t n, const FakeQuantParams& p) {
  if (p.zero) {
    std::copy(dy, dy + n, dx);
    return {0.0f, 0.0f};
  }
  const int64_t blocks = (n + kFakeQuantSumBlock - 1) / kFakeQuantSumBlock;
  std::vector<double> below(blocks, 0.0), above(blocks, 0.0);
  for_each_block(n, [&](int64_t b, int64_t i0, int64_t i1) {
    double lo[kFakeQuantSumLanes], hi[kFakeQuantSumLanes];
    isa.backward_block(dy + i0, x + i0, dx + i0, i1 - i0, p, lo, hi);
    below[b] = sum_lanes(lo);
    above[b] = sum_lanes(hi);
  });
  double lo = 0, hi = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    lo += below[b];
    hi += above[b];
  }
  return {static_cast<float>(lo), static_cast<float>(hi)};
}

FakeQuantParams params_of(const FakeQuantConfig& k, float min, float max) {
  return fake_quant_params(min, max, k.num_bits, k.narrow_range);
}

// Per-channel parameter arrays, and the channels whose range is [0, 0].
struct ChannelParams {
  std::vector<float> arrays[kNumChannelParams];
  const float* ptrs[kNumChannelParams];
  std::vector<int64_t> zero_channels;
  std::vector<FakeQuantParams> all;
};
void fill_channel_params(const FakeQuantConfig& k, const FakeQuantIo& io, int64_t d,
                         ChannelParams& cp) {
  const float* min = io.min;
  const float* max = io.max;
  cp.all.resize(d);
  for (auto& a : cp.arrays) a.resize(d);
  for (int64_t c = 0; c < d; ++c) {
    const FakeQuantParams p = params_of(k, min[c], max[c]);
    cp.all[c] = p;
    cp.arrays[kMin][c] = p.nudged_min;
    cp.arrays[kMax][c] = p.nudged_max;
    cp.arrays[kMul][c] = p.inv_scale;
    cp.arrays[kQuantZero][c] = p.quant_zero;
    cp.arrays[kScale][c] = p.scale;
    if (p.zero) cp.zero_channels.push_back(c);
  }
  for (int j = 0; j < kNumChannelParams; ++j) cp.ptrs[j] = cp.arrays[j].data();
}

void run_args(const IsaKernels& isa, const FakeQuantConfig& k, const FakeQuantIo& io) {
  forward_per_tensor(isa, io.x, io.y, io.n, params_of(k, k.min, k.max), false);
}

void run_vars(const IsaKernels& isa, const FakeQuantConfig& k, const FakeQuantIo& io) {
  forward_per_tensor(isa, io.x, io.y, io.n, params_of(k, io.min[0], io.max[0]), true);
}

void run_args_gradient(const IsaKernels& isa, const FakeQuantConfig& k, const FakeQuantIo& io) {
  // The sums are discarded: args has no range inputs.
  backward_per_tensor(isa, io.dy, io.x, io.y, io.n, params_of(k, k.min, k.max));
}

void run_vars_gradient(const IsaKernels& isa, const FakeQuantConfig& k, const FakeQuantIo& io) {
  const auto [lo, hi] =
      backward_per_tensor(isa, io.dy, io.x, io.y, io.n, params_of(k, io.min[0], io.max[0]));
  io.lo[0] = lo;
  io.hi[0] = hi;
}

void run_per_channel(const IsaKernels& isa, const FakeQuantConfig& k, const FakeQuantIo& io) {
  const ChannelRows v = channel_rows(io);
  const float* x = io.x;
  float* y = io.y;
  if (v.d == 1) {
    forward_per_tensor(isa, x, y, v.rows, params_of(k, io.min[0], io.max[0]), false);
    return;
  }
  ChannelParams cp;
  fill_channel_params(k, io, v.d, cp);
  const int64_t block_rows = std::max<int64_t>(1, kFakeQuantSumBlock / std::max<int64_t>(v.d, 1));
  const int64_t blocks = (v.rows + block_rows - 1) / block_rows;
#pragma omp parallel for if (blocks > 1 && io.n > kFakeQuantParallelGrain) schedule(static)
  for (int64_t b = 0; b < blocks; ++b)
    isa.forward_channels(x, y, b * block_rows, std::min(v.rows, (b + 1) * block_rows), v.d,
                         cp.ptrs);
  for (int64_t c : cp.zero_channels)
    for (int64_t r = 0; r < v.rows; ++r) y[r * v.d + c] = 0.0f;
}

void run_per_channel_gradient(const IsaKernels& isa, const FakeQuantConfig& k,
                              const FakeQuantIo& io) {
  const ChannelRows v = channel_rows(io);
  const float* dy = io.dy;
  const float* x = io.x;
  float* dx = io.y;
  float* dmin = io.lo;
  float* dmax = io.hi;
  if (v.d == 1) {
    // One channel: its sums run over all rows in order, i.e. one block.
    const FakeQuantParams p = params_of(k, io.min[0], io.max[0]);
    double lo = 0, hi = 0;
    if (p.zero)
      std::copy(dy, dy + v.rows, dx);
    else
      isa.backward_sequential(dy, x, dx, v.rows, p, &lo, &hi);
    dmin[0] = static_cast<float>(lo);
    dmax[0] = static_cast<float>(hi);
    return;
  }
  ChannelParams cp;
  fill_channel_params(k, io, v.d, cp);
  std::vector<double> lo(v.d, 0.0), hi(v.d, 0.0);
  // Each thread sweeps all rows for a contiguous range of whole vector chunks of channels (the
  // per-channel sums keep the reference's row order whatever the thread count). Only with wide
  // rows: splitting a row of 64 channels between two threads halved the throughput here (one
  // thread already runs at 85% of memcpy's speed).
  const int64_t chunk = isa.width;
  const int64_t chunks = (v.d + chunk - 1) / chunk;
  const int64_t parts =
      io.n > kFakeQuantParallelGrain && v.d >= 512 ? std::min<int64_t>(chunks, num_threads()) : 1;
#pragma omp parallel for if (parts > 1) schedule(static)
  for (int64_t part = 0; part < parts; ++part)
    isa.backward_channels(dy, x, dx, v.rows, v.d, chunks * part / parts * chunk,
                          std::min(v.d, chunks * (part + 1) / parts * chunk), cp.ptrs, lo.data(),
                          hi.data());
  for (int64_t c : cp.zero_channels) {
    for (int64_t r = 0; r < v.rows; ++r) dx[r * v.d + c] = dy[r * v.d + c];
    lo[c] = hi[c] = 0;
  }
  for (int64_t c = 0; c < v.d; ++c) {
    dmin[c] = static_cast<float>(lo[c]);
    dmax[c] = static_cast<float>(hi[c]);
  }
}

void run_min_max(const IsaKernels& isa, const FakeQuantConfig& k, const FakeQuantIo& io) {
  const float* x = io.x;
  float* lo = io.lo;
  float* hi = io.hi;
  if (!k.per_channel) {
    const int64_t n = io.n;
    const int64_t blocks = (n + kFakeQuantSumBlock - 1) / kFakeQuantSumBlock;
    float l = std::numeric_limits<float>::infinity(), h = -l;
    bool nan = false;
#pragma omp parallel if (n > kFakeQuantParallelGrain)
    {
      float tl = std::numeric_limits<float>::infinity(), th = -tl;
      bool tnan = false;
#pragma omp for schedule(static)
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t i0 = b * kFakeQuantSumBlock;
        isa.min_max(x + i0, std::min(n, i0 + kFakeQuantSumBlock) - i0, &tl, &th, &tnan);
      }
#pragma omp critical
      {
        l = std::min(l, tl);
        h = std::max(h, th);
        nan = nan || tnan;
      }
    }
    min_max_finish(&l, &h, nan);
    lo[0] = l;
    hi[0] = h;
    return;
  }
  const ChannelRows v = channel_rows(io);
  std::fill(lo, lo + v.d, std::numeric_limits<float>::infinity());
  std::fill(hi, hi + v.d, -std::numeric_limits<float>::infinity());
  std::vector<unsigned char> nan(v.d, 0);
  const int64_t chunk = isa.width;
  const int64_t chunks = (v.d + chunk - 1) / chunk;
#pragma omp parallel for if (chunks > 1 && io.n > kFakeQuantParallelGrain) schedule(static)
  for (int64_t ch = 0; ch < chunks; ++ch)
    isa.min_max_channels(x, 0, v.rows, v.d, ch * chunk, std::min(v.d, (ch + 1) * chunk), lo, hi,
                         nan.data());
  for (int64_t c = 0; c < v.d; ++c) min_max_finish(&lo[c], &hi[c], nan[c] != 0);
}

void run(const IsaKernels& isa, FakeQuantOp op, const FakeQuantConfig& k, const FakeQuantIo& io) {
  switch (op) {
    case FakeQuantOp::kArgs:
      return run_args(isa, k, io);
    case FakeQuantOp::kVars:
      return run_vars(isa, k, io);
    case FakeQuantOp::kPerChannel:
      return run_per_channel(isa, k, io);
    case FakeQuantOp::kArgsGradient:
      return run_args_gradient(isa, k, io);
    case FakeQuantOp::kVarsGradient:
      return run_vars_gradient(isa, k, io);
    case FakeQuantOp::kPerChannelGradient:
      return run_per_channel_gradient(isa, k, io);
    case FakeQuantOp::kMinMax:
      return run_min_max(isa, k, io);
  }
}

}  // namespace

void fake_quant_f32__avx512(FakeQuantOp op, const FakeQuantConfig& config, const FakeQuantIo& io) {
  run(kAvx512, op, config, io);
}
void fake_quant_f32__avx2(FakeQuantOp op, const FakeQuantConfig& config, const FakeQuantIo& io) {
  run(kAvx2, op, config, io);
}

}  // namespace lowbit::kernels
