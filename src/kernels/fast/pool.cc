// Fast max pooling, NHWC f32: the channel loop is innermost and vectorised. NaN propagates: the
// first NaN of a window is its maximum (forward and backward). The backward kernel picks, per
// channel, the first maximum of each window in row-major order (strict >), exactly as the
// reference, and accumulates into dx in the same (window-by-window) order, so results are
// bit-identical to the reference. Work is split by image only.
#include "kernels/fast/pool.h"

#include <omp.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace lowbit::kernels {

namespace {

constexpr int64_t kParallelElements = 1 << 15;

// NaN propagates (as the reference, TF and PyTorch): the first NaN of a window is its maximum.
inline bool nan_max_wins(float v, float best) { return v > best || (v != v && best == best); }

void window(int64_t start, int64_t k, int64_t in, int64_t* lo, int64_t* hi) {
  *lo = std::max<int64_t>(start, 0);
  *hi = std::min<int64_t>(start + k, in);
}

}  // namespace

void max_pool2d_nhwc_f32__portable(const Conv2DParams& p, const float* x, float* y) {
  const int64_t C = p.in_c;
  const int64_t out_numel = p.n * p.out_h * p.out_w * p.out_c;
#pragma omp parallel for schedule(static) if (out_numel * p.k_h * p.k_w > kParallelElements && \
                                              p.n > 1)
  for (int64_t n = 0; n < p.n; ++n) {
    for (int64_t oh = 0; oh < p.out_h; ++oh) {
      int64_t h0, h1;
      window(oh * p.stride_h - p.pad_top, p.k_h, p.in_h, &h0, &h1);
      for (int64_t ow = 0; ow < p.out_w; ++ow) {
        int64_t w0, w1;
        window(ow * p.stride_w - p.pad_left, p.k_w, p.in_w, &w0, &w1);
        float* yo = y + ((n * p.out_h + oh) * p.out_w + ow) * C;
        for (int64_t c = 0; c < C; ++c) yo[c] = -std::numeric_limits<float>::infinity();
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw) {
            const float* xi = x + ((n * p.in_h + ih) * p.in_w + iw) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c)
              yo[c] = xi[c] > yo[c] || (xi[c] != xi[c] && yo[c] == yo[c]) ? xi[c] : yo[c];
          }
      }
    }
  }
}

void max_pool2d_backward_nhwc_f32__portable(const Conv2DParams& p, const float* x, const float* dy,
                                            float* dx) {
  const int64_t C = p.in_c;
  const int64_t image = p.in_h * p.in_w * C;
#pragma omp parallel if (p.n * image > kParallelElements && p.n > 1)
  {
    std::vector<float> best(C);
    std::vector<int64_t> where(C);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < p.n; ++n) {
      float* dxn = dx + n * image;
      const float* xn = x + n * image;
      std::fill(dxn, dxn + image, 0.0f);
      for (int64_t oh = 0; oh < p.out_h; ++oh) {
        int64_t h0, h1;
        window(oh * p.stride_h - p.pad_top, p.k_h, p.in_h, &h0, &h1);
        for (int64_t ow = 0; ow < p.out_w; ++ow) {
          int64_t w0, w1;
          window(ow * p.stride_w - p.pad_left, p.k_w, p.in_w, &w0, &w1);
          if (h0 >= h1 || w0 >= w1) continue;
          const int64_t first = (h0 * p.in_w + w0) * C;
          for (int64_t c = 0; c < C; ++c) {
            best[c] = xn[first + c];
            where[c] = first + c;
          }
          for (int64_t ih = h0; ih < h1; ++ih)
            for (int64_t iw = w0; iw < w1; ++iw) {
              const int64_t base = (ih * p.in_w + iw) * C;
              for (int64_t c = 0; c < C; ++c)
                if (nan_max_wins(xn[base + c], best[c])) {
                  best[c] = xn[base + c];
                  where[c] = base + c;
                }
            }
          const float* dyo = dy + ((n * p.out_h + oh) * p.out_w + ow) * C;
          for (int64_t c = 0; c < C; ++c) dxn[where[c]] += dyo[c];
        }
      }
    }
  }
}

}  // namespace lowbit::kernels
