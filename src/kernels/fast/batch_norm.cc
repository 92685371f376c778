// Fast batch-norm kernels for the common channels-last case (axis = last dim, f32): the
// statistics are reduced by fixed blocks of rows (partial sums in double, combined in block
// order, so results do not depend on the thread count) with the inner loop over channels
// vectorised; the per-element work runs in f32 with per-channel coefficients.
// Checked against the reference kernels (src/ops/nn.cc) in tests/ops/nn_fast_test.cc.
#include "kernels/fast/batch_norm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace lowbit::kernels {

namespace {

constexpr int64_t kBlockRows = 256;
constexpr int64_t kParallelElements = 1 << 15;

// Per-block partial sums, reused across calls (grows only).
std::vector<double>& scratch(size_t n) {
  thread_local std::vector<double> buf;
  if (buf.size() < n) buf.resize(n);
  return buf;
}

// sums[j][c] = sum over rows of f_j(row, c), for J statistics, reduced by blocks.
template <int J, class F>
void channel_sums(int64_t rows, int64_t ch, double* out, F f) {
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  std::vector<double>& part = scratch(static_cast<size_t>(blocks * J * ch));
  double* p = part.data();
  const bool par = rows * ch > kParallelElements && blocks > 1;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t b = 0; b < blocks; ++b) {
    double* acc = p + b * J * ch;
    for (int64_t i = 0; i < J * ch; ++i) acc[i] = 0;
    const int64_t r1 = std::min(rows, (b + 1) * kBlockRows);
    for (int64_t r = b * kBlockRows; r < r1; ++r) f(r, acc);
  }
  for (int64_t i = 0; i < J * ch; ++i) out[i] = 0;
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t i = 0; i < J * ch; ++i) out[i] += p[b * J * ch + i];
}

}  // namespace

void batch_norm_training_nhwc_f32__portable(const BatchNormParams& p, const float* x,
                                            const float* gamma, const float* beta, float* y,
                                            float* mean_out, float* var_out) {
  const int64_t ch = p.channels;
  const int64_t rows = p.rows;
  const double eps = p.epsilon;
  std::vector<double> sum(ch), sq(ch);
  channel_sums<1>(rows, ch, sum.data(), [&](int64_t r, double* acc) {
    const float* xr = x + r * ch;
#pragma omp simd
    for (int64_t c = 0; c < ch; ++c) acc[c] += xr[c];
  });
  const double n = static_cast<double>(rows);
  std::vector<double> mean(ch);
  for (int64_t c = 0; c < ch; ++c) mean[c] = rows ? sum[c] / n : NAN;
  const double* m = mean.data();
  channel_sums<1>(rows, ch, sq.data(), [&](int64_t r, double* acc) {
    const float* xr = x + r * ch;
#pragma omp simd
    for (int64_t c = 0; c < ch; ++c) {
      const double d = xr[c] - m[c];
      acc[c] += d * d;
    }
  });
  // y = (x - mean) * a + beta: no cancellation between x*a and mean*a (a batch of one gives beta
  // exactly, as the reference does).
  std::vector<float> a(ch), mf(ch);
  for (int64_t c = 0; c < ch; ++c) {
    const double var = rows ? sq[c] / n : NAN;
    const double ac = gamma[c] / std::sqrt(var + eps);
    a[c] = static_cast<float>(ac);
    mf[c] = static_cast<float>(mean[c]);
    mean_out[c] = static_cast<float>(mean[c]);
    var_out[c] = static_cast<float>(var);
  }
  const float* pa = a.data();
  const float* pm = mf.data();
#pragma omp parallel for schedule(static) if (rows * ch > kParallelElements)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ch;
    float* yr = y + r * ch;
#pragma omp simd
    for (int64_t c = 0; c < ch; ++c) yr[c] = (xr[c] - pm[c]) * pa[c] + beta[c];
  }
}

void batch_norm_training_backward_nhwc_f32__portable(const BatchNormParams& p, const float* x,
                                                     const float* gamma, const float* mean,
                                                     const float* var, const float* dy, float* dx,
                                                     float* dgamma, float* dbeta) {
  const int64_t ch = p.channels;
  const int64_t rows = p.rows;
  const double eps = p.epsilon;
  std::vector<double> sums(2 * ch);
  channel_sums<2>(rows, ch, sums.data(), [&](int64_t r, double* acc) {
    const float* xr = x + r * ch;
    const float* dr = dy + r * ch;
#pragma omp simd
    for (int64_t c = 0; c < ch; ++c) {
      acc[c] += dr[c];
      acc[ch + c] += static_cast<double>(dr[c]) * (xr[c] - mean[c]);
    }
  });
  const double n = static_cast<double>(rows);
  std::vector<float> scale(ch), shift(ch), slope(ch);
  for (int64_t c = 0; c < ch; ++c) {
    const double r = 1 / std::sqrt(var[c] + eps);
    scale[c] = static_cast<float>(gamma[c] * r);
    shift[c] = static_cast<float>(rows ? sums[c] / n : 0);
    slope[c] = static_cast<float>(rows ? r * r * sums[ch + c] / n : 0);
    dgamma[c] = static_cast<float>(rows ? sums[ch + c] * r : 0);
    dbeta[c] = static_cast<float>(sums[c]);
  }
  const float *ps = scale.data(), *psh = shift.data(), *psl = slope.data();
#pragma omp parallel for schedule(static) if (rows * ch > kParallelElements)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ch;
    const float* dr = dy + r * ch;
    float* out = dx + r * ch;
#pragma omp simd
    for (int64_t c = 0; c < ch; ++c) out[c] = ps[c] * (dr[c] - psh[c] - (xr[c] - mean[c]) * psl[c]);
  }
}

}  // namespace lowbit::kernels
