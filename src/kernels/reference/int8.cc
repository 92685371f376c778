#include "kernels/reference/int8.h"

#include <algorithm>
#include <cmath>

namespace lowbit::kernels {

namespace {
// Multiply-adds above which the loop over outputs is split across threads.
constexpr int64_t kParallelMacs = int64_t{1} << 16;

inline bool inside(int64_t v, int64_t size) { return v >= 0 && v < size; }
}  // namespace

void qconv2d_s8_reference(const QConvParams& q, const int8_t* x, const int8_t* w,
                          const int32_t* bias, int8_t* y) {
  const Conv2DParams& p = q.geo;
  LOWBIT_DCHECK(static_cast<int64_t>(q.stages.size()) == p.out_c,
                "qconv2d: one output stage per channel");
  const int64_t cig = p.in_c / p.groups, cog = p.out_c / p.groups;
  const int64_t total = p.n * p.out_h * p.out_w * p.out_c;
  const int64_t macs = total * p.k_h * p.k_w * cig;
  const int32_t zp = q.input_zero_point;
#pragma omp parallel for schedule(static) if (macs > kParallelMacs)
  for (int64_t o = 0; o < total; ++o) {
    const int64_t oc = o % p.out_c;
    const int64_t ow = (o / p.out_c) % p.out_w;
    const int64_t oh = (o / (p.out_c * p.out_w)) % p.out_h;
    const int64_t n = o / (p.out_c * p.out_w * p.out_h);
    const int64_t c0 = (oc / cog) * cig;  // first input channel of this output's group
    int32_t acc = bias ? bias[oc] : 0;
    for (int64_t kh = 0; kh < p.k_h; ++kh) {
      const int64_t ih = oh * p.stride_h - p.pad_top + kh * p.dil_h;
      if (!inside(ih, p.in_h)) continue;
      for (int64_t kw = 0; kw < p.k_w; ++kw) {
        const int64_t iw = ow * p.stride_w - p.pad_left + kw * p.dil_w;
        if (!inside(iw, p.in_w)) continue;
        const int8_t* px = x + ((n * p.in_h + ih) * p.in_w + iw) * p.in_c + c0;
        const int8_t* pw = w + (kh * p.k_w + kw) * cig * p.out_c + oc;
        for (int64_t ic = 0; ic < cig; ++ic)
          acc += (int32_t{px[ic]} - zp) * int32_t{pw[ic * p.out_c]};
      }
    }
    y[o] = static_cast<int8_t>(q.stages[oc].apply(acc));
  }
}

void qfully_connected_s8_reference(const QFullyConnectedParams& p, const int8_t* x, const int8_t* w,
                                   const int32_t* bias, int8_t* y) {
  LOWBIT_DCHECK(static_cast<int64_t>(p.stages.size()) == p.units,
                "qfully_connected: one output stage per unit");
  const int64_t total = p.rows * p.units;
  const int32_t zp = p.input_zero_point;
#pragma omp parallel for schedule(static) if (total * p.depth > kParallelMacs)
  for (int64_t o = 0; o < total; ++o) {
    const int64_t r = o / p.units, u = o % p.units;
    const int8_t* px = x + r * p.depth;
    int32_t acc = bias ? bias[u] : 0;
    for (int64_t k = 0; k < p.depth; ++k)
      acc += (int32_t{px[k]} - zp) * int32_t{w[k * p.units + u]};
    y[o] = static_cast<int8_t>(p.stages[u].apply(acc));
  }
}

namespace {
template <bool kMax>
void qpool(const Conv2DParams& p, int32_t act_min, int32_t act_max, const QAvgRequant* r,
           const int8_t* x, int8_t* y) {
  const int64_t total = p.n * p.out_h * p.out_w * p.in_c;
#pragma omp parallel for schedule(static) if (total * p.k_h * p.k_w > kParallelMacs)
  for (int64_t o = 0; o < total; ++o) {
    const int64_t c = o % p.in_c;
    const int64_t ow = (o / p.in_c) % p.out_w;
    const int64_t oh = (o / (p.in_c * p.out_w)) % p.out_h;
    const int64_t n = o / (p.in_c * p.out_w * p.out_h);
    int32_t best = -128, sum = 0, count = 0;
    for (int64_t kh = 0; kh < p.k_h; ++kh) {
      const int64_t ih = oh * p.stride_h - p.pad_top + kh;
      if (!inside(ih, p.in_h)) continue;
      for (int64_t kw = 0; kw < p.k_w; ++kw) {
        const int64_t iw = ow * p.stride_w - p.pad_left + kw;
        if (!inside(iw, p.in_w)) continue;
        const int32_t v = x[((n * p.in_h + ih) * p.in_w + iw) * p.in_c + c];
        best = std::max(best, v);
        sum += v;
        ++count;
      }
    }
    // A window always holds a valid tap (the geometry guarantees it); count > 0.
    int32_t v;
    if (kMax) {
      v = best;
    } else if (r) {
      LOWBIT_DCHECK(count < static_cast<int32_t>(r->per_count.size()), "qavg_pool2d: count");
      v = quant::multiply_by_quantized_multiplier(sum - count * r->input_zero_point,
                                                  r->per_count[count], r->rounding) +
          r->output_zero_point;
    } else {
      v = quant::average_pool_mean(sum, count);
    }
    y[o] = static_cast<int8_t>(std::clamp(v, act_min, act_max));
  }
}
}  // namespace

void qmax_pool2d_s8_reference(const Conv2DParams& p, int32_t act_min, int32_t act_max,
                              const int8_t* x, int8_t* y) {
  qpool<true>(p, act_min, act_max, nullptr, x, y);
}
void qavg_pool2d_s8_reference(const Conv2DParams& p, int32_t act_min, int32_t act_max,
                              const QAvgRequant* requant, const int8_t* x, int8_t* y) {
  qpool<false>(p, act_min, act_max, requant, x, y);
}

void fake_quant_bias_f32_reference(int64_t n, const float* b, float s_in, const float* s_w,
                                   bool per_channel, float* y) {
  for (int64_t c = 0; c < n; ++c) {
    const float bs = quant::bias_scale(s_in, s_w[per_channel ? c : 0]);
    const bool usable = std::isfinite(b[c]) && std::isfinite(bs) && bs > 0.0f &&
                        std::isfinite(1.0 / static_cast<double>(bs));
    y[c] = usable ? static_cast<float>(quant::quantize_bias(b[c], bs)) * bs : b[c];
  }
}

void qadd_s8_reference(const quant::AddStage& stage, int64_t n, const int8_t* a, const int8_t* b,
                       int8_t* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<int8_t>(stage.apply(a[i], b[i]));
}

void requantize_s8_reference(const RequantizeStage& s, int64_t n, const int8_t* x, int8_t* y) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = int64_t{quant::multiply_by_quantized_multiplier(
                          int32_t{x[i]} - s.input_zero_point, s.multiplier, s.rounding)} +
                      s.output_zero_point;
    y[i] = static_cast<int8_t>(std::clamp<int64_t>(v, s.qmin, s.qmax));
  }
}

void quantize_s8_reference(quant::QuantParams p, int64_t n, const float* x, int8_t* y) {
  const quant::QuantRange r = quant::quant_range(DType::kS8);
  for (int64_t i = 0; i < n; ++i)
    y[i] = static_cast<int8_t>(quant::affine_quantize(x[i], p.scale, p.zero_point, r));
}

void dequantize_s8_reference(quant::QuantParams p, int64_t n, const int8_t* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = quant::dequantize(x[i], p);
}

void qlut_s8_reference(const QLutStage& s, int64_t n, const int8_t* x, int8_t* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = s.table[int32_t{x[i]} + 128];
}

void qsoftmax_s8_reference(const quant::SoftmaxStage& s, int64_t rows, int64_t depth,
                           const int8_t* x, int8_t* y) {
  for (int64_t r = 0; r < rows; ++r) quant::softmax_row_s8(s, depth, x + r * depth, y + r * depth);
}

}  // namespace lowbit::kernels
