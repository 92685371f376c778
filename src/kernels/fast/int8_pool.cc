// Fast int8 pooling, NHWC: per output pixel the window's valid taps, then the channels in blocks
// of 64: vpmaxsb for max; for avg loops written for GCC to vectorise with AVX2 (vpmovsxbd,
// vpaddd, vdivpd).
//   max: the largest code of the valid taps (from -128), then the clamp; as the reference.
//   avg: the int32 sum of the valid taps (exact in any order); with output parameters (a
//        requantizing average) the reference's own scalar output stage on that sum,
//        MBQM(sum - count * zp_in, per_count[count]) + zp_out; else average_pool_mean's
//        rounding, s > 0 ? (s + c/2) / c : (s - c/2) / c truncated, computed as the f64 quotient
//        truncated: both operands are exact in f64, and where the true quotient is not an
//        integer it lies at least 1/c from one while the f64 rounding error is below
//        |quotient| * 2^-53 <= 2^-21 < 1/c (|s| < 2^31, c < 2^21), so the truncations agree.
// Threads split the (n, oh) output rows above 2^16 window taps x channels.
#include "kernels/fast/int8_pool.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace lowbit::kernels {

namespace {

constexpr int64_t kParallelTaps = int64_t{1} << 16;
constexpr int64_t kBlock = 64;

void window(int64_t start, int64_t k, int64_t in, int64_t* lo, int64_t* hi) {
  *lo = std::max<int64_t>(start, 0);
  *hi = std::min<int64_t>(start + k, in);
}

#pragma GCC push_options
#pragma GCC target("avx2")
// clang ignores GCC target pragmas: the same region as a clang attribute (the fuzz build).
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#endif

template <bool kMax>
__attribute__((target("avx2"))) void pool_rows(const Conv2DParams& geo, int32_t act_min,
                                               int32_t act_max, const QAvgRequant* rq,
                                               const int8_t* x, int8_t* y, int64_t row_begin,
                                               int64_t row_end) {
  const Conv2DParams p = geo;  // locals: the int8 stores may alias anything
  const int64_t C = p.in_c;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / p.out_h, oh = row % p.out_h;
    int64_t h0, h1;
    window(oh * p.stride_h - p.pad_top, p.k_h, p.in_h, &h0, &h1);
    for (int64_t ow = 0; ow < p.out_w; ++ow) {
      int64_t w0, w1;
      window(ow * p.stride_w - p.pad_left, p.k_w, p.in_w, &w0, &w1);
      int8_t* yo = y + (row * p.out_w + ow) * C;
      const int32_t count = static_cast<int32_t>((h1 - h0) * (w1 - w0));
      for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
        const int64_t nc = std::min<int64_t>(kBlock, C - c0);
        if constexpr (kMax) {
          // 32 channels per register; a tail goes through a zero-padded copy (no read past x).
          __m256i best[kBlock / 32];
          for (auto& b : best) b = _mm256_set1_epi8(-128);
          for (int64_t ih = h0; ih < h1; ++ih)
            for (int64_t iw = w0; iw < w1; ++iw) {
              const int8_t* xi = x + ((n * p.in_h + ih) * p.in_w + iw) * C + c0;
              for (int64_t b = 0; b * 32 < nc; ++b) {
                __m256i v;
                if (nc - b * 32 >= 32) {
                  v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xi + b * 32));
                } else {
                  alignas(32) int8_t tmp[32] = {};
                  std::memcpy(tmp, xi + b * 32, static_cast<size_t>(nc - b * 32));
                  v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp));
                }
                best[b] = _mm256_max_epi8(best[b], v);
              }
            }
          const __m256i lo = _mm256_set1_epi8(static_cast<char>(act_min));
          const __m256i hi = _mm256_set1_epi8(static_cast<char>(act_max));
          alignas(32) int8_t out[kBlock];
          for (int64_t b = 0; b < kBlock / 32; ++b)
            _mm256_store_si256(reinterpret_cast<__m256i*>(out + b * 32),
                               _mm256_min_epi8(_mm256_max_epi8(best[b], lo), hi));
          std::memcpy(yo + c0, out, static_cast<size_t>(nc));
        } else {
          int32_t sum[kBlock];
          for (int64_t c = 0; c < kBlock; ++c) sum[c] = 0;
          for (int64_t ih = h0; ih < h1; ++ih)
            for (int64_t iw = w0; iw < w1; ++iw) {
              const int8_t* xi = x + ((n * p.in_h + ih) * p.in_w + iw) * C + c0;
              for (int64_t c = 0; c < nc; ++c) sum[c] += xi[c];
            }
          if (rq) {
            const quant::QuantizedMultiplier m = rq->per_count[static_cast<size_t>(count)];
            const int32_t zsum = count * rq->input_zero_point;
            for (int64_t c = 0; c < nc; ++c) {
              const int32_t v =
                  quant::multiply_by_quantized_multiplier(sum[c] - zsum, m, rq->rounding) +
                  rq->output_zero_point;
              yo[c0 + c] = static_cast<int8_t>(std::clamp(v, act_min, act_max));
            }
            continue;
          }
          const int32_t half = count / 2;
          const double dc = static_cast<double>(count);
          for (int64_t c = 0; c < nc; ++c) {
            const int32_t s = sum[c] > 0 ? sum[c] + half : sum[c] - half;
            const int32_t v = static_cast<int32_t>(static_cast<double>(s) / dc);
            yo[c0 + c] = static_cast<int8_t>(std::clamp(v, act_min, act_max));
          }
        }
      }
    }
  }
}

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options

template <bool kMax>
void run_pool(const Conv2DParams& p, int32_t act_min, int32_t act_max, const QAvgRequant* rq,
              const int8_t* x, int8_t* y) {
  const int64_t rows = p.n * p.out_h;
  const int64_t work = rows * p.out_w * p.in_c * p.k_h * p.k_w;
#pragma omp parallel for schedule(static) if (work > kParallelTaps && rows > 1)
  for (int64_t r = 0; r < rows; ++r) pool_rows<kMax>(p, act_min, act_max, rq, x, y, r, r + 1);
}

}  // namespace

void qmax_pool2d_nhwc_s8__avx2(const Conv2DParams& p, int32_t act_min, int32_t act_max,
                               const int8_t* x, int8_t* y) {
  run_pool<true>(p, act_min, act_max, nullptr, x, y);
}

void qavg_pool2d_nhwc_s8__avx2(const Conv2DParams& p, int32_t act_min, int32_t act_max,
                               const QAvgRequant* requant, const int8_t* x, int8_t* y) {
  run_pool<false>(p, act_min, act_max, requant, x, y);
}

}  // namespace lowbit::kernels
