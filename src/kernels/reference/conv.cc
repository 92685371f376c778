#include "kernels/reference/conv.h"

#include <limits>

namespace lowbit::kernels {

namespace {
// Multiply-adds above which the loop over outputs is split across threads.
constexpr int64_t kParallelMacs = int64_t{1} << 16;

inline bool inside(int64_t v, int64_t size) { return v >= 0 && v < size; }
}  // namespace

void conv2d_forward_f32_reference(const Conv2DParams& p, const float* x, const float* w, float* y) {
  const int64_t cig = p.in_c / p.groups, cog = p.out_c / p.groups;
  const int64_t total = p.n * p.out_h * p.out_w * p.out_c;
  const int64_t macs = total * p.k_h * p.k_w * cig;
  // One thread per output element range: each y element is a fixed-order sum.
#pragma omp parallel for schedule(static) if (macs > kParallelMacs)
  for (int64_t o = 0; o < total; ++o) {
    const int64_t oc = o % p.out_c;
    const int64_t ow = (o / p.out_c) % p.out_w;
    const int64_t oh = (o / (p.out_c * p.out_w)) % p.out_h;
    const int64_t n = o / (p.out_c * p.out_w * p.out_h);
    const int64_t c0 = (oc / cog) * cig;  // first input channel of this output's group
    double acc = 0;
    for (int64_t kh = 0; kh < p.k_h; ++kh) {
      const int64_t ih = oh * p.stride_h - p.pad_top + kh * p.dil_h;
      if (!inside(ih, p.in_h)) continue;
      for (int64_t kw = 0; kw < p.k_w; ++kw) {
        const int64_t iw = ow * p.stride_w - p.pad_left + kw * p.dil_w;
        if (!inside(iw, p.in_w)) continue;
        const float* px = x + ((n * p.in_h + ih) * p.in_w + iw) * p.in_c + c0;
        const float* pw = w + (kh * p.k_w + kw) * cig * p.out_c + oc;
        for (int64_t ic = 0; ic < cig; ++ic) acc += double{px[ic]} * double{pw[ic * p.out_c]};
      }
    }
    y[o] = static_cast<float>(acc);
  }
}

void conv2d_backward_input_f32_reference(const Conv2DParams& p, const float* dy, const float* w,
                                         float* dx) {
  const int64_t cig = p.in_c / p.groups, cog = p.out_c / p.groups;
  const int64_t total = p.n * p.in_h * p.in_w * p.in_c;
  const int64_t macs = total * p.k_h * p.k_w * cog;
  // Gather form: each dx element sums the outputs whose window covers it, so threads never
  // write the same element.
#pragma omp parallel for schedule(static) if (macs > kParallelMacs)
  for (int64_t i = 0; i < total; ++i) {
    const int64_t ic = i % p.in_c;
    const int64_t iw = (i / p.in_c) % p.in_w;
    const int64_t ih = (i / (p.in_c * p.in_w)) % p.in_h;
    const int64_t n = i / (p.in_c * p.in_w * p.in_h);
    const int64_t g = ic / cig, icg = ic % cig;
    double acc = 0;
    for (int64_t kh = 0; kh < p.k_h; ++kh) {
      const int64_t th = ih + p.pad_top - kh * p.dil_h;  // = oh * stride_h
      if (th < 0 || th % p.stride_h != 0) continue;
      const int64_t oh = th / p.stride_h;
      if (oh >= p.out_h) continue;
      for (int64_t kw = 0; kw < p.k_w; ++kw) {
        const int64_t tw = iw + p.pad_left - kw * p.dil_w;
        if (tw < 0 || tw % p.stride_w != 0) continue;
        const int64_t ow = tw / p.stride_w;
        if (ow >= p.out_w) continue;
        const float* pdy = dy + ((n * p.out_h + oh) * p.out_w + ow) * p.out_c + g * cog;
        const float* pw = w + ((kh * p.k_w + kw) * cig + icg) * p.out_c + g * cog;
        for (int64_t oc = 0; oc < cog; ++oc) acc += double{pdy[oc]} * double{pw[oc]};
      }
    }
    dx[i] = static_cast<float>(acc);
  }
}

void conv2d_backward_filter_f32_reference(const Conv2DParams& p, const float* x, const float* dy,
                                          float* dw) {
  const int64_t cig = p.in_c / p.groups, cog = p.out_c / p.groups;
  const int64_t total = p.k_h * p.k_w * cig * p.out_c;
  const int64_t macs = total * p.n * p.out_h * p.out_w;
#pragma omp parallel for schedule(static) if (macs > kParallelMacs)
  for (int64_t f = 0; f < total; ++f) {
    const int64_t oc = f % p.out_c;
    const int64_t icg = (f / p.out_c) % cig;
    const int64_t kw = (f / (p.out_c * cig)) % p.k_w;
    const int64_t kh = f / (p.out_c * cig * p.k_w);
    const int64_t ic = (oc / cog) * cig + icg;
    double acc = 0;
    for (int64_t n = 0; n < p.n; ++n) {
      for (int64_t oh = 0; oh < p.out_h; ++oh) {
        const int64_t ih = oh * p.stride_h - p.pad_top + kh * p.dil_h;
        if (!inside(ih, p.in_h)) continue;
        for (int64_t ow = 0; ow < p.out_w; ++ow) {
          const int64_t iw = ow * p.stride_w - p.pad_left + kw * p.dil_w;
          if (!inside(iw, p.in_w)) continue;
          acc += double{x[((n * p.in_h + ih) * p.in_w + iw) * p.in_c + ic]} *
                 double{dy[((n * p.out_h + oh) * p.out_w + ow) * p.out_c + oc]};
        }
      }
    }
    dw[f] = static_cast<float>(acc);
  }
}

}  // namespace lowbit::kernels

namespace lowbit::kernels {

namespace {
// Valid cells [lo, hi) of the window starting at `start` (may be negative: padding).
inline void clip(int64_t start, int64_t k, int64_t size, int64_t* lo, int64_t* hi) {
  *lo = start < 0 ? 0 : start;
  *hi = start + k > size ? size : start + k;
}
}  // namespace

void max_pool2d_f32_reference(const Conv2DParams& p, const float* x, float* y) {
  const int64_t c_n = p.in_c;
  const int64_t total = p.n * p.out_h * p.out_w * c_n;
#pragma omp parallel for schedule(static) if (total * p.k_h * p.k_w > kParallelMacs)
  for (int64_t o = 0; o < total; ++o) {
    const int64_t c = o % c_n;
    const int64_t ow = (o / c_n) % p.out_w;
    const int64_t oh = (o / (c_n * p.out_w)) % p.out_h;
    const int64_t n = o / (c_n * p.out_w * p.out_h);
    int64_t h0, h1, w0, w1;
    clip(oh * p.stride_h - p.pad_top, p.k_h, p.in_h, &h0, &h1);
    clip(ow * p.stride_w - p.pad_left, p.k_w, p.in_w, &w0, &w1);
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) {
        const float v = x[((n * p.in_h + ih) * p.in_w + iw) * c_n + c];
        if (v > m || (v != v && m == m)) m = v;  // NaN propagates: the first NaN wins
      }
    y[o] = m;
  }
}

void avg_pool2d_f32_reference(const Conv2DParams& p, const float* x, float* y) {
  const int64_t c_n = p.in_c;
  const int64_t total = p.n * p.out_h * p.out_w * c_n;
#pragma omp parallel for schedule(static) if (total * p.k_h * p.k_w > kParallelMacs)
  for (int64_t o = 0; o < total; ++o) {
    const int64_t c = o % c_n;
    const int64_t ow = (o / c_n) % p.out_w;
    const int64_t oh = (o / (c_n * p.out_w)) % p.out_h;
    const int64_t n = o / (c_n * p.out_w * p.out_h);
    int64_t h0, h1, w0, w1;
    clip(oh * p.stride_h - p.pad_top, p.k_h, p.in_h, &h0, &h1);
    clip(ow * p.stride_w - p.pad_left, p.k_w, p.in_w, &w0, &w1);
    double s = 0;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) s += x[((n * p.in_h + ih) * p.in_w + iw) * c_n + c];
    y[o] = static_cast<float>(s / static_cast<double>((h1 - h0) * (w1 - w0)));
  }
}

void max_pool2d_backward_f32_reference(const Conv2DParams& p, const float* x, const float* dy,
                                       float* dx) {
  const int64_t c_n = p.in_c;
  const int64_t planes = p.n * c_n;
  const int64_t in_plane = p.in_h * p.in_w;
  // Windows may overlap, so dx is scattered into; each (n, c) plane belongs to one thread and
  // is visited in a fixed order, so the sums do not depend on the thread count.
#pragma omp parallel for schedule(static) if (planes * p.out_h * p.out_w * p.k_h * p.k_w > \
                                              kParallelMacs)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const int64_t n = pl / c_n, c = pl % c_n;
    const float* xp = x + n * in_plane * c_n + c;
    float* dxp = dx + n * in_plane * c_n + c;
    for (int64_t i = 0; i < in_plane; ++i) dxp[i * c_n] = 0;
    for (int64_t oh = 0; oh < p.out_h; ++oh)
      for (int64_t ow = 0; ow < p.out_w; ++ow) {
        int64_t h0, h1, w0, w1;
        clip(oh * p.stride_h - p.pad_top, p.k_h, p.in_h, &h0, &h1);
        clip(ow * p.stride_w - p.pad_left, p.k_w, p.in_w, &w0, &w1);
        int64_t best = h0 * p.in_w + w0;
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw) {
            const int64_t i = ih * p.in_w + iw;
            const float v = xp[i * c_n], b = xp[best * c_n];
            if (v > b || (v != v && b == b)) best = i;  // strict: the first maximum (NaN) wins
          }
        dxp[best * c_n] += dy[((n * p.out_h + oh) * p.out_w + ow) * c_n + c];
      }
  }
}

void avg_pool2d_backward_f32_reference(const Conv2DParams& p, const float* dy, float* dx) {
  const int64_t c_n = p.in_c;
  const int64_t total = p.n * p.in_h * p.in_w * c_n;
  // Gather form: each dx element sums dy / count over the windows that contain it.
#pragma omp parallel for schedule(static) if (total * p.k_h * p.k_w > kParallelMacs)
  for (int64_t i = 0; i < total; ++i) {
    const int64_t c = i % c_n;
    const int64_t iw = (i / c_n) % p.in_w;
    const int64_t ih = (i / (c_n * p.in_w)) % p.in_h;
    const int64_t n = i / (c_n * p.in_w * p.in_h);
    double acc = 0;
    for (int64_t kh = 0; kh < p.k_h; ++kh) {
      const int64_t th = ih + p.pad_top - kh;
      if (th < 0 || th % p.stride_h != 0 || th / p.stride_h >= p.out_h) continue;
      const int64_t oh = th / p.stride_h;
      int64_t h0, h1;
      clip(oh * p.stride_h - p.pad_top, p.k_h, p.in_h, &h0, &h1);
      for (int64_t kw = 0; kw < p.k_w; ++kw) {
        const int64_t tw = iw + p.pad_left - kw;
        if (tw < 0 || tw % p.stride_w != 0 || tw / p.stride_w >= p.out_w) continue;
        const int64_t ow = tw / p.stride_w;
        int64_t w0, w1;
        clip(ow * p.stride_w - p.pad_left, p.k_w, p.in_w, &w0, &w1);
        acc += double{dy[((n * p.out_h + oh) * p.out_w + ow) * c_n + c]} /
               static_cast<double>((h1 - h0) * (w1 - w0));
      }
    }
    dx[i] = static_cast<float>(acc);
  }
}

}  // namespace lowbit::kernels
