// Neural-network ops (include/lowbit/ops/nn.h): softmax family, cross-entropy losses, batch
// normalization and dropout. Each is fused: one reference kernel per op and a fused backward op
// for its gradient, so they need no reductions or transcendental ops from other families.
//
// Kernels view a tensor around an axis as [outer, n, inner]. Sums run in double in a fixed
// order; loops are split across threads by output row or channel only, so every result is the
// same at any thread count.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/fast/batch_norm.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "ops/families.h"
#include "ops/op_util.h"

namespace lowbit::detail {

namespace {

// Elements above which a loop is split across threads.
constexpr int64_t kParallelGrain = 1 << 15;
// Channels reduced together by one thread in batch-norm statistics: 16 floats are one cache
// line of a channels-last row.
constexpr int64_t kChannelChunk = 16;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- views and loops -----------------------------------------------------------------------

// Element (o, k, i) of a tensor seen as [outer, n, inner] around an axis.
struct AxisView {
  int64_t outer = 1, n = 1, inner = 1;
  int64_t offset(int64_t o, int64_t k, int64_t i) const { return (o * n + k) * inner + i; }
  int64_t numel() const { return outer * n * inner; }
};

AxisView axis_view(const Shape& s, int axis) {
  AxisView v;
  for (int d = 0; d < s.rank(); ++d) {
    if (d < axis)
      v.outer *= s[d];
    else if (d == axis)
      v.n = s[d];
    else
      v.inner *= s[d];
  }
  return v;
}

// The prepared parameters of the softmax and batch-norm ops: the axis (normalised against the
// rank of input 0) and epsilon (batch norm only).
struct AxisEpsParams {
  int axis = 0;
  double epsilon = 1e-3;
};
std::any prepare_axis_eps(const PrepareCtx& c) {
  const int64_t a = c.attrs.i("axis", -1);
  return AxisEpsParams{static_cast<int>(a < 0 ? a + c.in[0].shape.rank() : a),
                       c.attrs.f("epsilon", 1e-3)};
}
int kernel_axis(const KernelCtx& k, const Tensor&) { return k.params<AxisEpsParams>().axis; }
double kernel_eps(const KernelCtx& k) { return k.params<AxisEpsParams>().epsilon; }

// Calls f(base) for each slice along the axis (element k of the slice is at base + k * inner).
template <class F>
void for_each_slice(const AxisView& v, F f) {
  const int64_t slices = v.outer * v.inner;
#pragma omp parallel for if (slices > 1 && v.numel() > kParallelGrain) schedule(static)
  for (int64_t s = 0; s < slices; ++s) f((s / v.inner) * v.n * v.inner + s % v.inner);
}

// acc[c][j] = sum over the elements e of channel c (in the order o, then i) of f(c, e)[j], in
// double. Channels are split across threads in chunks; a channel is never split.
template <size_t K, class F>
void per_channel_sums(const AxisView& v, std::vector<std::array<double, K>>& acc, F f) {
  const int64_t channels = v.n;
  acc.assign(channels, std::array<double, K>{});
  const int64_t chunks = (channels + kChannelChunk - 1) / kChannelChunk;
#pragma omp parallel for if (chunks > 1 && v.numel() > kParallelGrain) schedule(static)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const int64_t c0 = ch * kChannelChunk, c1 = std::min(channels, c0 + kChannelChunk);
    for (int64_t o = 0; o < v.outer; ++o)
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t i = 0; i < v.inner; ++i) {
          const std::array<double, K> t = f(c, v.offset(o, c, i));
          for (size_t j = 0; j < K; ++j) acc[c][j] += t[j];
        }
  }
}

// Calls f(c, e) for every element e (of channel c), split across threads by (o, c) rows.
template <class F>
void for_each_channel_element(const AxisView& v, F f) {
  const int64_t rows = v.outer * v.n;
#pragma omp parallel for if (rows > 1 && v.numel() > kParallelGrain) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t c = r % v.n;
    for (int64_t i = 0; i < v.inner; ++i) f(c, r * v.inner + i);
  }
}

// max and sum(exp(x - max)) of one slice; the max ignores NaN but the sum then is NaN.
struct SliceLse {
  double max = -INFINITY;
  double sum = 0;
  double log_sum() const { return std::log(sum); }
};
SliceLse slice_lse(const float* x, int64_t n, int64_t stride) {
  SliceLse r;
  for (int64_t k = 0; k < n; ++k) r.max = std::max(r.max, static_cast<double>(x[k * stride]));
  for (int64_t k = 0; k < n; ++k) r.sum += std::exp(x[k * stride] - r.max);
  return r;
}

// ---- shape rules ---------------------------------------------------------------------------

void require_min_rank(const InferCtx& c, int i, int rank, const char* arg) {
  if (c.in[i].shape.rank() < rank)
    LOWBIT_THROW(ShapeError, c.op, ": argument '", arg, "': expected rank >= ", rank,
                 " but found shape ", c.in[i].shape.str());
}

// The normalised `axis` attribute for input 0 (rank >= 1 required).
int infer_axis(const InferCtx& c) {
  require_min_rank(c, 0, 1, "x");
  return c.in[0].shape.axis(static_cast<int>(c.attrs.i("axis", -1)), c.op.c_str());
}

// Inputs i and j must have the same shape (unknown dims match anything); returns the merge.
Shape require_same_shape(const InferCtx& c, int i, int j, const char* a, const char* b) {
  const Shape& sa = c.in[i].shape;
  const Shape& sb = c.in[j].shape;
  bool ok = sa.rank() == sb.rank();
  for (int d = 0; ok && d < sa.rank(); ++d) ok = dims_compatible(sa[d], sb[d]);
  if (!ok)
    LOWBIT_THROW(ShapeError, c.op, ": argument '", b, "': expected the shape of '", a, "' ",
                 sa.str(), " but found ", sb.str());
  Shape m = sa;
  for (int d = 0; d < sa.rank(); ++d) m[d] = merge_dim(sa[d], sb[d]);
  return m;
}

// Input i must be [C] with C compatible with `channels`; returns the merged C.
int64_t require_channels(const InferCtx& c, int i, int64_t channels, const char* arg) {
  const Shape& s = c.in[i].shape;
  if (s.rank() != 1 || !dims_compatible(s[0], channels))
    LOWBIT_THROW(ShapeError, c.op, ": argument '", arg, "': expected shape [",
                 channels == kUnknown ? std::string("?") : std::to_string(channels),
                 "] (one value per channel of x) but found ", s.str());
  return merge_dim(channels, s[0]);
}

// Cross-entropy shape rule: labels f32 [..., C] like logits, or (sparse) s32/s64 [...].
// Returns the per-example shape [...] (logits without the class axis).
Shape infer_cross_entropy(const InferCtx& c, bool sparse) {
  require_float(c, 0, "logits");
  require_min_rank(c, 0, 1, "logits");
  const Shape& z = c.in[0].shape;
  Shape lead(std::vector<int64_t>(z.dims().begin(), z.dims().end() - 1));
  if (!sparse) {
    require_float(c, 1, "labels");
    lead = require_same_shape(c, 0, 1, "logits", "labels");
    lead.dims().pop_back();
    return lead;
  }
  const ValueType& l = c.in[1];
  if (l.dtype != DType::kS32 && l.dtype != DType::kS64)
    LOWBIT_THROW(DTypeError, c.op, ": argument 'labels': expected dtype s32 or s64 but found ",
                 type_str(l));
  bool ok = l.shape.rank() == lead.rank();
  for (int d = 0; ok && d < lead.rank(); ++d) ok = dims_compatible(l.shape[d], lead[d]);
  if (!ok)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'labels': expected shape ", lead.str(),
                 " (the leading dims of logits ", z.str(), ") but found ", l.shape.str());
  for (int d = 0; d < lead.rank(); ++d) lead[d] = merge_dim(lead[d], l.shape[d]);
  return lead;
}

// dy of a per-example loss: f32 with the per-example shape.
void require_loss_dy(const InferCtx& c, int i, const Shape& per_example) {
  require_float(c, i, "dy");
  const Shape& s = c.in[i].shape;
  bool ok = s.rank() == per_example.rank();
  for (int d = 0; ok && d < s.rank(); ++d) ok = dims_compatible(s[d], per_example[d]);
  if (!ok)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'dy': expected shape ", per_example.str(),
                 " (the per-example loss shape) but found ", s.str());
}

double require_epsilon(const InferCtx& c) {
  const double eps = c.attrs.f("epsilon", 1e-3);
  if (!(eps >= 0) || !std::isfinite(eps))
    LOWBIT_THROW(ValueError, c.op, ": attribute 'epsilon': expected a finite value >= 0 but found ",
                 eps);
  return eps;
}

// Batch-norm inputs: x (input 0) and per-channel inputs at `params`; dy at `dy` (or -1).
// Returns {x's type, C}.
std::pair<ValueType, int64_t> infer_batch_norm(const InferCtx& c,
                                               std::vector<std::pair<int, const char*>> params,
                                               int dy) {
  require_float(c, 0, "x");
  const int axis = infer_axis(c);
  require_epsilon(c);
  ValueType x = c.in[0];
  int64_t channels = x.shape[axis];
  for (auto [i, name] : params) {
    require_float(c, i, name);
    channels = require_channels(c, i, channels, name);
  }
  if (dy >= 0) {
    require_float(c, dy, "dy");
    x.shape = require_same_shape(c, 0, dy, "x", "dy");
  }
  x.shape[axis] = channels;
  return {x, channels};
}

// ---- kernels -------------------------------------------------------------------------------

void softmax_kernel(const KernelCtx& k, bool is_log) {
  const Tensor& xt = k.in[0];
  const AxisView v = axis_view(xt.shape(), kernel_axis(k, xt));
  const float* x = xt.data<float>();
  float* y = k.out[0].data<float>();
  for_each_slice(v, [&](int64_t base) {
    const SliceLse s = slice_lse(x + base, v.n, v.inner);
    const double log_sum = s.log_sum();
    for (int64_t j = 0; j < v.n; ++j) {
      const int64_t e = base + j * v.inner;
      const double shifted = x[e] - s.max;
      y[e] = static_cast<float>(is_log ? shifted - log_sum : std::exp(shifted) / s.sum);
    }
  });
}

void softmax_backward_kernel(const KernelCtx& k, bool is_log) {
  const Tensor& yt = k.in[0];
  const AxisView v = axis_view(yt.shape(), kernel_axis(k, yt));
  const float* y = yt.data<float>();
  const float* dy = k.in[1].data<float>();
  float* dx = k.out[0].data<float>();
  for_each_slice(v, [&](int64_t base) {
    double s = 0;  // softmax: sum(dy * y); log_softmax: sum(dy)
    for (int64_t j = 0; j < v.n; ++j) {
      const int64_t e = base + j * v.inner;
      s += is_log ? static_cast<double>(dy[e]) : static_cast<double>(dy[e]) * y[e];
    }
    for (int64_t j = 0; j < v.n; ++j) {
      const int64_t e = base + j * v.inner;
      dx[e] = static_cast<float>(is_log ? dy[e] - std::exp(static_cast<double>(y[e])) * s
                                        : y[e] * (dy[e] - s));
    }
  });
}

// Classes are the last axis: rows of C contiguous logits.
struct Rows {
  int64_t rows, classes;
};
Rows class_rows(const Tensor& logits) {
  Rows r{1, logits.dim(-1)};
  for (int d = 0; d + 1 < logits.rank(); ++d) r.rows *= logits.dim(d);
  return r;
}

template <class F>
void for_each_row(const Rows& r, F f) {
#pragma omp parallel for if (r.rows > 1 && r.rows * r.classes > kParallelGrain) schedule(static)
  for (int64_t row = 0; row < r.rows; ++row) f(row);
}

// The label of a row as an int64 (s32 or s64 labels).
int64_t label_at(const Tensor& labels, int64_t row) {
  return labels.dtype() == DType::kS32 ? labels.data<int32_t>()[row] : labels.data<int64_t>()[row];
}

void softmax_cross_entropy_kernel(const KernelCtx& k) {
  const Rows r = class_rows(k.in[0]);
  const float* z = k.in[0].data<float>();
  const float* t = k.in[1].data<float>();
  float* loss = k.out[0].data<float>();
  for_each_row(r, [&](int64_t row) {
    const float* zr = z + row * r.classes;
    const float* tr = t + row * r.classes;
    const SliceLse s = slice_lse(zr, r.classes, 1);
    const double log_sum = s.log_sum();
    double l = 0;  // sum_c t_c * -log_softmax(z)_c
    for (int64_t c = 0; c < r.classes; ++c) l += tr[c] * (log_sum - (zr[c] - s.max));
    loss[row] = static_cast<float>(l);
  });
}

void softmax_cross_entropy_backward_kernel(const KernelCtx& k) {
  const Rows r = class_rows(k.in[0]);
  const float* z = k.in[0].data<float>();
  const float* t = k.in[1].data<float>();
  const float* dy = k.in[2].data<float>();
  float* dz = k.out[0].data<float>();
  float* dt = k.out[1].data<float>();
  for_each_row(r, [&](int64_t row) {
    const int64_t b = row * r.classes;
    const SliceLse s = slice_lse(z + b, r.classes, 1);
    const double log_sum = s.log_sum();
    double t_sum = 0;
    for (int64_t c = 0; c < r.classes; ++c) t_sum += t[b + c];
    for (int64_t c = 0; c < r.classes; ++c) {
      const double log_p = (z[b + c] - s.max) - log_sum;
      dz[b + c] = static_cast<float>(dy[row] * (std::exp(log_p) * t_sum - t[b + c]));
      dt[b + c] = static_cast<float>(-dy[row] * log_p);
    }
  });
}

void sparse_softmax_cross_entropy_kernel(const KernelCtx& k) {
  const Rows r = class_rows(k.in[0]);
  const float* z = k.in[0].data<float>();
  float* loss = k.out[0].data<float>();
  for_each_row(r, [&](int64_t row) {
    const int64_t label = label_at(k.in[1], row);
    if (label < 0 || label >= r.classes) {
      loss[row] = static_cast<float>(kNaN);
      return;
    }
    const float* zr = z + row * r.classes;
    const SliceLse s = slice_lse(zr, r.classes, 1);
    loss[row] = static_cast<float>(s.log_sum() - (zr[label] - s.max));
  });
}

void sparse_softmax_cross_entropy_backward_kernel(const KernelCtx& k) {
  const Rows r = class_rows(k.in[0]);
  const float* z = k.in[0].data<float>();
  const float* dy = k.in[2].data<float>();
  float* dz = k.out[0].data<float>();
  for_each_row(r, [&](int64_t row) {
    const int64_t b = row * r.classes;
    const int64_t label = label_at(k.in[1], row);
    if (label < 0 || label >= r.classes) {
      std::fill(dz + b, dz + b + r.classes, static_cast<float>(kNaN));
      return;
    }
    const SliceLse s = slice_lse(z + b, r.classes, 1);
    for (int64_t c = 0; c < r.classes; ++c) {
      const double p = std::exp(z[b + c] - s.max) / s.sum;
      dz[b + c] = static_cast<float>(dy[row] * (p - (c == label ? 1.0 : 0.0)));
    }
  });
}

double sigmoid(double x) {
  if (x >= 0) return 1 / (1 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1 + e);
}

void elementwise(int64_t n, auto f) {
#pragma omp parallel for if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) f(i);
}

void sigmoid_cross_entropy_kernel(const KernelCtx& k) {
  const float* x = k.in[0].data<float>();
  const float* t = k.in[1].data<float>();
  float* loss = k.out[0].data<float>();
  elementwise(k.out[0].numel(), [&](int64_t i) {
    const double xi = x[i];
    loss[i] =
        static_cast<float>(std::max(xi, 0.0) - xi * t[i] + std::log1p(std::exp(-std::abs(xi))));
  });
}

void sigmoid_cross_entropy_backward_kernel(const KernelCtx& k) {
  const float* x = k.in[0].data<float>();
  const float* t = k.in[1].data<float>();
  const float* dy = k.in[2].data<float>();
  float* dx = k.out[0].data<float>();
  elementwise(k.out[0].numel(),
              [&](int64_t i) { dx[i] = static_cast<float>(dy[i] * (sigmoid(x[i]) - t[i])); });
}

// y = x * a + (beta - mean * a), a = gamma / sqrt(var + eps), in double per element.
void batch_norm_apply(const AxisView& v, const float* x, const float* gamma, const float* beta,
                      const double* mean, const double* var, double eps, float* y) {
  std::vector<double> a(v.n), b(v.n);
  for (int64_t c = 0; c < v.n; ++c) {
    a[c] = gamma[c] / std::sqrt(var[c] + eps);
    b[c] = beta[c] - mean[c] * a[c];
  }
  for_each_channel_element(
      v, [&](int64_t c, int64_t e) { y[e] = static_cast<float>(x[e] * a[c] + b[c]); });
}

void batch_norm_training_kernel(const KernelCtx& k) {
  const Tensor& xt = k.in[0];
  const AxisView v = axis_view(xt.shape(), kernel_axis(k, xt));
  const double eps = kernel_eps(k);
  const float* x = xt.data<float>();
  const double count = static_cast<double>(v.outer * v.inner);
  std::vector<std::array<double, 1>> acc;
  per_channel_sums<1>(v, acc, [&](int64_t, int64_t e) { return std::array<double, 1>{x[e]}; });
  std::vector<double> mean(v.n), var(v.n);
  for (int64_t c = 0; c < v.n; ++c) mean[c] = count > 0 ? acc[c][0] / count : kNaN;
  // Two passes: sum((x - mean)^2) does not cancel like sum(x^2) - n mean^2.
  per_channel_sums<1>(v, acc, [&](int64_t c, int64_t e) {
    const double d = x[e] - mean[c];
    return std::array<double, 1>{d * d};
  });
  for (int64_t c = 0; c < v.n; ++c) var[c] = count > 0 ? acc[c][0] / count : kNaN;
  batch_norm_apply(v, x, k.in[1].data<float>(), k.in[2].data<float>(), mean.data(), var.data(), eps,
                   k.out[0].data<float>());
  float* mean_out = k.out[1].data<float>();
  float* var_out = k.out[2].data<float>();
  for (int64_t c = 0; c < v.n; ++c) {
    mean_out[c] = static_cast<float>(mean[c]);
    var_out[c] = static_cast<float>(var[c]);
  }
}

void batch_norm_inference_kernel(const KernelCtx& k) {
  const Tensor& xt = k.in[0];
  const AxisView v = axis_view(xt.shape(), kernel_axis(k, xt));
  const float* mean = k.in[3].data<float>();
  const float* var = k.in[4].data<float>();
  std::vector<double> mean_d(mean, mean + v.n), var_d(var, var + v.n);
  batch_norm_apply(v, xt.data<float>(), k.in[1].data<float>(), k.in[2].data<float>(), mean_d.data(),
                   var_d.data(), kernel_eps(k), k.out[0].data<float>());
}

// Per channel: {sum(dy), sum(dy * (x - mean))} for the backward kernels (inputs x, gamma, mean,
// var, dy).
std::vector<std::array<double, 2>> batch_norm_dy_sums(const KernelCtx& k, const AxisView& v) {
  const float* x = k.in[0].data<float>();
  const float* mean = k.in[2].data<float>();
  const float* dy = k.in[4].data<float>();
  std::vector<std::array<double, 2>> acc;
  per_channel_sums<2>(v, acc, [&](int64_t c, int64_t e) {
    return std::array<double, 2>{dy[e], static_cast<double>(dy[e]) * (x[e] - mean[c])};
  });
  return acc;
}

void batch_norm_training_backward_kernel(const KernelCtx& k) {
  const Tensor& xt = k.in[0];
  const AxisView v = axis_view(xt.shape(), kernel_axis(k, xt));
  const double eps = kernel_eps(k);
  const float* x = xt.data<float>();
  const float* gamma = k.in[1].data<float>();
  const float* mean = k.in[2].data<float>();
  const float* var = k.in[3].data<float>();
  const float* dy = k.in[4].data<float>();
  const auto sums = batch_norm_dy_sums(k, v);
  const double count = static_cast<double>(v.outer * v.inner);
  // dx = gamma r (dy - sum(dy)/n - (x - mean) r^2 sum(dy (x - mean))/n), r = 1/sqrt(var+eps).
  std::vector<double> scale(v.n), shift(v.n), slope(v.n);
  float* dgamma = k.out[1].data<float>();
  float* dbeta = k.out[2].data<float>();
  for (int64_t c = 0; c < v.n; ++c) {
    const double r = 1 / std::sqrt(var[c] + eps);
    scale[c] = gamma[c] * r;
    shift[c] = count > 0 ? sums[c][0] / count : 0;
    slope[c] = count > 0 ? r * r * sums[c][1] / count : 0;
    dgamma[c] = static_cast<float>(count > 0 ? sums[c][1] * r : 0);
    dbeta[c] = static_cast<float>(sums[c][0]);
  }
  float* dx = k.out[0].data<float>();
  for_each_channel_element(v, [&](int64_t c, int64_t e) {
    dx[e] = static_cast<float>(scale[c] * (dy[e] - shift[c] - (x[e] - mean[c]) * slope[c]));
  });
}

void batch_norm_moments_backward_kernel(const KernelCtx& k) {
  const Tensor& xt = k.in[0];
  const AxisView v = axis_view(xt.shape(), kernel_axis(k, xt));
  const float* x = xt.data<float>();
  const float* mean = k.in[1].data<float>();
  const float* dmean = k.in[2].data<float>();
  const float* dvar = k.in[3].data<float>();
  const double count = static_cast<double>(v.outer * v.inner);
  float* dx = k.out[0].data<float>();
  for_each_channel_element(v, [&](int64_t c, int64_t e) {
    dx[e] = static_cast<float>((dmean[c] + 2.0 * dvar[c] * (x[e] - mean[c])) / count);
  });
}

void batch_norm_inference_backward_kernel(const KernelCtx& k) {
  const Tensor& xt = k.in[0];
  const AxisView v = axis_view(xt.shape(), kernel_axis(k, xt));
  const double eps = kernel_eps(k);
  const float* gamma = k.in[1].data<float>();
  const float* var = k.in[3].data<float>();
  const float* dy = k.in[4].data<float>();
  const auto sums = batch_norm_dy_sums(k, v);
  std::vector<double> scale(v.n);
  float* dgamma = k.out[1].data<float>();
  float* dbeta = k.out[2].data<float>();
  float* dmean = k.out[3].data<float>();
  float* dvar = k.out[4].data<float>();
  for (int64_t c = 0; c < v.n; ++c) {
    const double r = 1 / std::sqrt(var[c] + eps);
    scale[c] = gamma[c] * r;
    dgamma[c] = static_cast<float>(sums[c][1] * r);
    dbeta[c] = static_cast<float>(sums[c][0]);
    dmean[c] = static_cast<float>(-scale[c] * sums[c][0]);
    dvar[c] = static_cast<float>(-0.5 * scale[c] * r * r * sums[c][1]);
  }
  float* dx = k.out[0].data<float>();
  for_each_channel_element(
      v, [&](int64_t c, int64_t e) { dx[e] = static_cast<float>(dy[e] * scale[c]); });
}

// The channels-last fast batch-norm kernels: f32 with the axis last.
bool channels_last_f32(const KernelCtx& k) {
  const Tensor& x = k.in[0];
  return x.dtype() == DType::kF32 && x.rank() >= 1 && kernel_axis(k, x) == x.rank() - 1;
}
kernels::BatchNormParams bn_params(const KernelCtx& k) {
  const Tensor& x = k.in[0];
  const int64_t ch = x.dim(-1);
  return {.rows = ch ? x.numel() / ch : 0, .channels = ch, .epsilon = kernel_eps(k)};
}

// The concrete noise shape of dropout (x's shape when the attribute is absent).
Shape dropout_noise_shape(const Attrs& attrs, const Shape& x) {
  if (!attrs.has("noise_shape")) return x;
  Shape s(attrs.ints("noise_shape"));
  for (int d = 0; d < s.rank(); ++d)
    if (s[d] == kUnknown) s[d] = x[d];
  return s;
}

struct DropoutParams {
  double rate = 0;
  uint64_t seed = 0;
  Shape noise;  // concrete
};
std::any prepare_dropout(const PrepareCtx& c) {
  return DropoutParams{c.attrs.f("rate"), static_cast<uint64_t>(c.attrs.i("seed", 0)),
                       dropout_noise_shape(c.attrs, c.in[0].shape)};
}

void dropout_kernel(const KernelCtx& k) {
  const Tensor& xt = k.in[0];
  const DropoutParams& dp = k.params<DropoutParams>();
  const double rate = dp.rate;
  const int64_t n = xt.numel();
  const float* x = xt.data<float>();
  float* y = k.out[0].data<float>();
  if (rate == 0) {
    std::copy(x, x + n, y);
    return;
  }
  if (rate >= 1) {
    std::fill(y, y + n, 0.0f);
    return;
  }
  const uint64_t seed = dp.seed;
  const uint64_t step = static_cast<uint64_t>(k.in[1].data<int64_t>()[0]);
  const float scale = static_cast<float>(1 / (1 - rate));
  const Shape& noise = dp.noise;
  if (noise == xt.shape()) {
    elementwise(n, [&](int64_t i) {
      y[i] = philox_uniform(seed, step, static_cast<uint64_t>(i)) >= rate ? x[i] * scale : 0.0f;
    });
    return;
  }
  // Element i of x reads mask element j: the same multi-index with 0 on the broadcast axes.
  const int r = xt.rank();
  std::vector<int64_t> noise_stride(r, 0);
  for (int64_t d = r - 1, s = 1; d >= 0; --d) {
    noise_stride[d] = noise[d] == 1 ? 0 : s;
    s *= noise[d];
  }
  const std::vector<int64_t>& dims = xt.shape().dims();
  elementwise(n, [&](int64_t i) {
    int64_t j = 0;
    for (int64_t d = r - 1, rest = i; d >= 0; --d) {
      j += (rest % dims[d]) * noise_stride[d];
      rest /= dims[d];
    }
    y[i] = philox_uniform(seed, step, static_cast<uint64_t>(j)) >= rate ? x[i] * scale : 0.0f;
  });
}

std::vector<ValueType> infer_dropout(const InferCtx& c) {
  require_float(c, 0, "x");
  require_dtype(c, 1, DType::kS64, "step");
  if (c.in[1].shape.rank() != 0)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'step': expected a scalar (shape []) but found ",
                 c.in[1].shape.str());
  const double rate = c.attrs.f("rate");
  if (!(rate >= 0 && rate <= 1))
    LOWBIT_THROW(ValueError, c.op, ": attribute 'rate': expected a value in [0, 1] but found ",
                 rate);
  c.attrs.i("seed", 0);  // type check
  const Shape& x = c.in[0].shape;
  if (c.attrs.has("noise_shape")) {
    const Shape noise(c.attrs.ints("noise_shape"));
    bool ok = noise.rank() == x.rank();
    for (int d = 0; ok && d < x.rank(); ++d)
      ok = noise[d] == kUnknown || noise[d] == 1 || dims_compatible(noise[d], x[d]);
    if (!ok)
      LOWBIT_THROW(ShapeError, c.op, ": attribute 'noise_shape': expected ", x.rank(),
                   " dims each 1, -1 or equal to x's dim (x is ", x.str(), ") but found ",
                   noise.str());
  }
  return {c.in[0]};
}

}  // namespace

void register_nn_ops() {
  // ---- softmax ----
  for (bool is_log : {false, true}) {
    const std::string name = is_log ? "log_softmax" : "softmax";
    register_op({.name = name,
                 .num_inputs = 1,
                 .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                   require_float(c, 0, "x");
                   infer_axis(c);
                   return {c.in[0]};
                 },
                 .grad = [name](const GradCtx& g) -> std::vector<Value> {
                   return {ops::apply1(name + "_backward", {g.out[0], g.dy()}, g.attrs)};
                 },
                 .prepare = prepare_axis_eps,
                 .reference = [is_log](const KernelCtx& k) { softmax_kernel(k, is_log); },
                 .doc = is_log ? "x - logsumexp(x) along axis (stable)"
                               : "exp(x - max) / sum(exp(x - max)) along axis"});
    register_op({.name = name + "_backward",
                 .num_inputs = 2,
                 .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                   require_float(c, 0, "y");
                   require_float(c, 1, "dy");
                   infer_axis(c);
                   return {{DType::kF32, require_same_shape(c, 0, 1, "y", "dy")}};
                 },
                 .prepare = prepare_axis_eps,
                 .reference = [is_log](const KernelCtx& k) { softmax_backward_kernel(k, is_log); },
                 .doc = is_log ? "gradient of log_softmax from its output: dy - exp(y) sum(dy)"
                               : "gradient of softmax from its output: y (dy - sum(dy y))"});
  }

  // ---- losses ----
  register_op({.name = "softmax_cross_entropy",
               .num_inputs = 2,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 return {{DType::kF32, infer_cross_entropy(c, false)}};
               },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return ops::softmax_cross_entropy_backward(g.in[0], g.in[1], g.dy());
               },
               .reference = softmax_cross_entropy_kernel,
               .doc = "per-example -sum(labels * log_softmax(logits)) over the last axis"});
  register_op({.name = "softmax_cross_entropy_backward",
               .num_inputs = 3,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 const Shape lead = infer_cross_entropy(c, false);
                 require_loss_dy(c, 2, lead);
                 Shape full = lead;
                 full.dims().push_back(c.in[0].shape[-1] == kUnknown ? c.in[1].shape[-1]
                                                                     : c.in[0].shape[-1]);
                 return {{DType::kF32, full}, {DType::kF32, full}};
               },
               .reference = softmax_cross_entropy_backward_kernel,
               .doc = "d logits, d labels of softmax_cross_entropy"});
  register_op(
      {.name = "sparse_softmax_cross_entropy",
       .num_inputs = 2,
       .infer = [](const InferCtx& c) -> std::vector<ValueType> {
         return {{DType::kF32, infer_cross_entropy(c, true)}};
       },
       .grad = [](const GradCtx& g) -> std::vector<Value> {
         return {ops::sparse_softmax_cross_entropy_backward(g.in[0], g.in[1], g.dy()), Value()};
       },
       .reference = sparse_softmax_cross_entropy_kernel,
       .doc = "per-example logsumexp(logits) - logits[label] (NaN if out of range)"});
  register_op({.name = "sparse_softmax_cross_entropy_backward",
               .num_inputs = 3,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 const Shape lead = infer_cross_entropy(c, true);
                 require_loss_dy(c, 2, lead);
                 ValueType out = c.in[0];
                 for (int d = 0; d < lead.rank(); ++d) out.shape[d] = lead[d];
                 return {out};
               },
               .reference = sparse_softmax_cross_entropy_backward_kernel,
               .doc = "d logits of sparse_softmax_cross_entropy: dy (softmax - onehot)"});
  register_op({.name = "sigmoid_cross_entropy",
               .num_inputs = 2,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_float(c, 0, "logits");
                 require_float(c, 1, "labels");
                 return {{DType::kF32, require_same_shape(c, 0, 1, "logits", "labels")}};
               },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::sigmoid_cross_entropy_backward(g.in[0], g.in[1], g.dy()),
                         ops::neg(ops::mul(g.dy(), g.in[0]))};
               },
               .reference = sigmoid_cross_entropy_kernel,
               .doc = "elementwise max(x,0) - x t + log1p(exp(-|x|))"});
  register_op({.name = "sigmoid_cross_entropy_backward",
               .num_inputs = 3,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_float(c, 0, "logits");
                 require_float(c, 1, "labels");
                 require_float(c, 2, "dy");
                 require_same_shape(c, 0, 1, "logits", "labels");
                 return {{DType::kF32, require_same_shape(c, 0, 2, "logits", "dy")}};
               },
               .reference = sigmoid_cross_entropy_backward_kernel,
               .doc = "d logits of sigmoid_cross_entropy: dy (sigmoid(x) - t)"});

  // ---- batch normalization ----
  register_op({.name = "batch_norm_training",
               .num_inputs = 3,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 auto [x, channels] = infer_batch_norm(c, {{1, "gamma"}, {2, "beta"}}, -1);
                 const ValueType stat{DType::kF32, Shape{channels}};
                 return {x, stat, stat};
               },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 std::vector<Value> d =
                     ops::apply("batch_norm_training_backward",
                                {g.in[0], g.in[1], g.out[1], g.out[2], g.dy(0)}, g.attrs);
                 if (g.has_dy(1) || g.has_dy(2)) {
                   Attrs axis_only{{"axis", g.attrs.i("axis", -1)}};
                   d[0] = ops::add(d[0],
                                   ops::apply1("batch_norm_moments_backward",
                                               {g.in[0], g.out[1], g.dy(1), g.dy(2)}, axis_only));
                 }
                 return d;
               },
               .prepare = prepare_axis_eps,
               .reference = batch_norm_training_kernel,
               .fast = {{.name = "batch_norm_training_nhwc_f32__portable",
                         .supports = channels_last_f32,
                         .run =
                             [](const KernelCtx& k) {
                               kernels::batch_norm_training_nhwc_f32__portable(
                                   bn_params(k), k.in[0].data<float>(), k.in[1].data<float>(),
                                   k.in[2].data<float>(), k.out[0].data<float>(),
                                   k.out[1].data<float>(), k.out[2].data<float>());
                             }}},
               .doc = "batch norm with batch statistics -> y, mean, biased variance"});
  register_op(
      {.name = "batch_norm_training_backward",
       .num_inputs = 5,
       .infer = [](const InferCtx& c) -> std::vector<ValueType> {
         auto [x, channels] = infer_batch_norm(c, {{1, "gamma"}, {2, "mean"}, {3, "variance"}}, 4);
         const ValueType stat{DType::kF32, Shape{channels}};
         return {x, stat, stat};
       },
       .prepare = prepare_axis_eps,
       .reference = batch_norm_training_backward_kernel,
       .fast = {{.name = "batch_norm_training_backward_nhwc_f32__portable",
                 .supports = channels_last_f32,
                 .run =
                     [](const KernelCtx& k) {
                       kernels::batch_norm_training_backward_nhwc_f32__portable(
                           bn_params(k), k.in[0].data<float>(), k.in[1].data<float>(),
                           k.in[2].data<float>(), k.in[3].data<float>(), k.in[4].data<float>(),
                           k.out[0].data<float>(), k.out[1].data<float>(), k.out[2].data<float>());
                     }}},
       .doc = "dx, dgamma, dbeta of batch_norm_training (paths through the statistics)"});
  register_op(
      {.name = "batch_norm_moments_backward",
       .num_inputs = 4,
       .infer = [](const InferCtx& c) -> std::vector<ValueType> {
         require_float(c, 0, "x");
         const int axis = infer_axis(c);
         int64_t channels = c.in[0].shape[axis];
         const char* names[] = {"x", "mean", "dmean", "dvariance"};
         for (int i = 1; i < 4; ++i) {
           require_float(c, i, names[i]);
           channels = require_channels(c, i, channels, names[i]);
         }
         ValueType x = c.in[0];
         x.shape[axis] = channels;
         return {x};
       },
       .prepare = prepare_axis_eps,
       .reference = batch_norm_moments_backward_kernel,
       .doc = "dx from gradients of the batch mean and variance: (dmean + 2 dvar (x-mean)) / n"});
  register_op(
      {.name = "batch_norm_inference",
       .num_inputs = 5,
       .infer = [](const InferCtx& c) -> std::vector<ValueType> {
         return {infer_batch_norm(c, {{1, "gamma"}, {2, "beta"}, {3, "mean"}, {4, "variance"}}, -1)
                     .first};
       },
       .grad = [](const GradCtx& g) -> std::vector<Value> {
         return ops::apply("batch_norm_inference_backward",
                           {g.in[0], g.in[1], g.in[3], g.in[4], g.dy()}, g.attrs);
       },
       .prepare = prepare_axis_eps,
       .reference = batch_norm_inference_kernel,
       .doc = "batch norm with given statistics: x a + (beta - mean a)"});
  register_op(
      {.name = "batch_norm_inference_backward",
       .num_inputs = 5,
       .infer = [](const InferCtx& c) -> std::vector<ValueType> {
         auto [x, channels] = infer_batch_norm(c, {{1, "gamma"}, {2, "mean"}, {3, "variance"}}, 4);
         const ValueType stat{DType::kF32, Shape{channels}};
         return {x, stat, stat, stat, stat};
       },
       .prepare = prepare_axis_eps,
       .reference = batch_norm_inference_backward_kernel,
       .doc = "dx, dgamma, dbeta, dmean, dvariance of batch_norm_inference"});

  // ---- dropout ----
  register_op({.name = "dropout",
               .num_inputs = 2,
               .infer = infer_dropout,
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::apply1("dropout", {g.dy(), g.in[1]}, g.attrs), Value()};
               },
               .prepare = prepare_dropout,
               .reference = dropout_kernel,
               .doc = "inverted dropout with a Philox mask keyed by (seed, step, index)"});
}

}  // namespace lowbit::detail
