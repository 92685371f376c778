// PyTorch-style fake quantization, LSQ, PACT, binary/ternary/DoReFa quantizers
// (include/lowbit/ops/quantizer_ops.h; formulas in quantization-semantics.md sections 4, 5).
// The reference kernels are serial loops over the element formulas of
// kernels/quantizer_formulas.h;
// the fast kernels (src/kernels/fast/quantizer_ops.cc) vectorise the same formulas and
// reproduce the same summation order, so they are bit-identical.
#include "lowbit/ops/quantizer_ops.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/fast/quantizer_ops.h"
#include "lowbit/ops.h"
#include "ops/families.h"
#include "ops/op_util.h"

namespace lowbit {

namespace detail {

namespace fqt = kernels::fqt;

void check_affine_qparams(const char* op, const Tensor& scale, const Tensor& zero_point,
                          int64_t quant_min, int64_t quant_max, bool check_zero_point) {
  if (scale.defined() && scale.dtype() == DType::kF32)
    for (int64_t i = 0; i < scale.numel(); ++i) {
      const float s = scale.data<float>()[i];
      if (!(s > 0) || !std::isfinite(s))
        LOWBIT_THROW(ValueError, op, ": argument 'scale': expected finite values > 0 but found ", s,
                     " at index ", i);
    }
  if (!check_zero_point || !zero_point.defined() || zero_point.dtype() != DType::kF32) return;
  for (int64_t i = 0; i < zero_point.numel(); ++i) {
    const float z = zero_point.data<float>()[i];
    if (z != std::trunc(z) || z < static_cast<float>(quant_min) ||
        z > static_cast<float>(quant_max))
      LOWBIT_THROW(ValueError, op, ": argument 'zero_point': expected an integer in [quant_min, ",
                   "quant_max] = [", quant_min, ", ", quant_max, "] but found ", z, " at index ",
                   i);
  }
}

void check_positive(const char* op, const char* arg, const Tensor& t) {
  if (!t.defined() || t.dtype() != DType::kF32) return;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = t.data<float>()[i];
    if (!(v > 0) || !std::isfinite(v))
      LOWBIT_THROW(ValueError, op, ": argument '", arg, "': expected finite values > 0 but found ",
                   v, " at index ", i);
  }
}

namespace {

using fqt::Affine;
using fqt::ChannelView;
using fqt::TorchFakeQuantConfig;
using fqt::TorchFakeQuantOp;

// The prepare step of the affine, learnable and PACT ops: their attributes, once per plan.
std::any prepare_torch(const PrepareCtx& c) {
  TorchFakeQuantConfig t;
  t.quant_min = c.attrs.i("quant_min", 0);
  t.quant_max = c.attrs.i("quant_max", 255);
  const int64_t a = c.attrs.i("axis", -1);
  t.axis = static_cast<int>(a < 0 ? a + c.in[0].shape.rank() : a);
  t.use_grad_scaling = c.attrs.b("use_grad_scaling", false);
  t.grad_factor = c.attrs.f("grad_factor", 1.0);
  t.bits = c.attrs.i("bits", 8);
  return t;
}
const TorchFakeQuantConfig& tcfg(const KernelCtx& k) { return k.params<TorchFakeQuantConfig>(); }

// The kernel table's fast rows of an op: the AVX-512, AVX2 and baseline builds of its driver.
std::vector<FastKernel> fast_torch(const std::string& op, TorchFakeQuantOp which) {
  return {
      {.name = op + "_f32__avx512",
       .isa = Isa::kAvx512,
       .run =
           [which](const KernelCtx& k) {
             fqt::fake_quantize_f32__avx512(which, tcfg(k), k.in, k.out);
           }},
      {.name = op + "_f32__avx2",
       .isa = Isa::kAvx2,
       .run =
           [which](const KernelCtx& k) {
             fqt::fake_quantize_f32__avx2(which, tcfg(k), k.in, k.out);
           }},
      {.name = op + "_f32__portable", .isa = Isa::kPortable, .run = [which](const KernelCtx& k) {
         fqt::fake_quantize_f32__portable(which, tcfg(k), k.in, k.out);
       }}};
}
using fqt::kLanes;
using fqt::kSumChunk;

// ---- shape rules ----------------------------------------------------------------------------

void require_quant_range(const InferCtx& c) {
  const int64_t lo = c.attrs.i("quant_min"), hi = c.attrs.i("quant_max");
  if (lo > hi)
    LOWBIT_THROW(ValueError, c.op, ": attributes 'quant_min' <= 'quant_max' expected but found ",
                 lo, " > ", hi);
  if (lo < -fqt::kMaxCode || hi > fqt::kMaxCode)
    LOWBIT_THROW(ValueError, c.op, ": attributes 'quant_min', 'quant_max': expected a range ",
                 "inside [-2^23, 2^23] but found [", lo, ", ", hi, "]");
}

int require_bits(const InferCtx& c, int lo, int hi) {
  const int64_t b = c.attrs.i("bits");
  if (b < lo || b > hi)
    LOWBIT_THROW(ValueError, c.op, ": attribute 'bits': expected a value in [", lo, ", ", hi,
                 "] but found ", b);
  return static_cast<int>(b);
}

void require_scalar(const InferCtx& c, int i, const char* arg) {
  require_float(c, i, arg);
  if (c.in[i].shape.rank() != 0)
    LOWBIT_THROW(ShapeError, c.op, ": argument '", arg,
                 "': expected a scalar (shape []) but found ", c.in[i].shape.str());
}

// dy (input i) must have x's (input j) shape; returns the merged shape.
Shape require_like(const InferCtx& c, int i, int j, const char* a, const char* b) {
  require_float(c, i, a);
  const Shape& sa = c.in[i].shape;
  const Shape& sb = c.in[j].shape;
  bool ok = sa.rank() == sb.rank();
  for (int d = 0; ok && d < sa.rank(); ++d) ok = dims_compatible(sa[d], sb[d]);
  if (!ok)
    LOWBIT_THROW(ShapeError, c.op, ": argument '", a, "': expected the shape of '", b, "' ",
                 sb.str(), " but found ", sa.str());
  Shape m = sb;
  for (int d = 0; d < m.rank(); ++d) m[d] = merge_dim(sb[d], sa[d]);
  return m;
}

// Inputs (x, scale, zero_point) from index `x`; per channel along attribute "axis".
// Returns x's type (with the channel dim merged).
ValueType infer_affine(const InferCtx& c, int x, bool per_channel) {
  require_float(c, x, "x");
  require_quant_range(c);
  ValueType t = c.in[x];
  if (!per_channel) {
    require_scalar(c, x + 1, "scale");
    require_scalar(c, x + 2, "zero_point");
    return t;
  }
  if (t.shape.rank() < 1)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'x': expected rank >= 1 for per-channel ",
                 "quantization but found shape ", t.shape.str());
  const int axis = t.shape.axis(static_cast<int>(c.attrs.i("axis")), c.op.c_str());
  int64_t ch = t.shape[axis];
  const char* names[] = {"scale", "zero_point"};
  for (int k = 0; k < 2; ++k) {
    require_float(c, x + 1 + k, names[k]);
    const Shape& s = c.in[x + 1 + k].shape;
    if (s.rank() != 1 || !dims_compatible(s[0], ch))
      LOWBIT_THROW(ShapeError, c.op, ": argument '", names[k], "': expected shape [",
                   ch == kUnknown ? std::string("?") : std::to_string(ch),
                   "] (x's size along axis ", axis, ") but found ", s.str());
    ch = merge_dim(ch, s[0]);
  }
  t.shape[axis] = ch;
  return t;
}

std::vector<ValueType> infer_affine_forward(const InferCtx& c, bool per_channel) {
  return {infer_affine(c, 0, per_channel)};
}
// Backward ops: (dy, x, scale, zero_point).
ValueType infer_affine_backward(const InferCtx& c, bool per_channel) {
  ValueType t = infer_affine(c, 1, per_channel);
  t.shape = require_like(c, 0, 1, "dy", "x");
  return t;
}

void require_clip(const InferCtx& c) {
  const double clip = c.attrs.f("clip");
  if (!(clip >= 0))
    LOWBIT_THROW(ValueError, c.op, ": attribute 'clip': expected a value >= 0 (inf allowed) but ",
                 "found ", clip);
}

// ---- reference kernels ----------------------------------------------------------------------

float scalar_of(const Tensor& t) { return t.data<float>()[0]; }

Affine affine_of(const KernelCtx& k, float scale, float zp) {
  return fqt::make_affine(scale, zp, tcfg(k).quant_min, tcfg(k).quant_max);
}

// Calls f(e, p) for every element e of x ([outer, C, inner] around the axis) with channel c's
// parameters p = params(c).
template <class P, class F>
void for_each_channel(const ChannelView& v, P params, F f) {
  for (int64_t o = 0; o < v.outer; ++o)
    for (int64_t c = 0; c < v.channels; ++c) {
      const Affine p = params(c);
      const int64_t base = (o * v.channels + c) * v.inner;
      for (int64_t i = 0; i < v.inner; ++i) f(base + i, p);
    }
}

// The zero point each kernel uses, by op kind.
enum class Zp { kGiven, kRounded, kBackward };
float zero_point_of(float z, const KernelCtx& k, Zp kind) {
  const int64_t lo = tcfg(k).quant_min, hi = tcfg(k).quant_max;
  switch (kind) {
    case Zp::kGiven:
      return z;
    case Zp::kRounded:
      return fqt::zero_point_rounded(z, lo, hi);
    case Zp::kBackward:
      return fqt::zero_point_backward(z, lo, hi);
  }
  return z;
}

// Forward of the four affine ops (inputs x, scale, zero_point).
void affine_forward_ref(const KernelCtx& k, bool per_channel, Zp zp_kind) {
  const float* x = k.in[0].data<float>();
  float* y = k.out[0].data<float>();
  if (!per_channel) {
    const Affine p =
        affine_of(k, scalar_of(k.in[1]), zero_point_of(scalar_of(k.in[2]), k, zp_kind));
    for (int64_t i = 0; i < k.in[0].numel(); ++i) y[i] = fqt::fq_forward(x[i], p);
    return;
  }
  const float* s = k.in[1].data<float>();
  const float* z = k.in[2].data<float>();
  for_each_channel(
      fqt::channel_view(k.in[0].shape(), tcfg(k).axis),
      [&](int64_t c) { return affine_of(k, s[c], zero_point_of(z[c], k, zp_kind)); },
      [&](int64_t e, const Affine& p) { y[e] = fqt::fq_forward(x[e], p); });
}

// dx of the non-learnable ops (inputs dy, x, scale, zero_point).
void affine_backward_ref(const KernelCtx& k, bool per_channel) {
  const float* dy = k.in[0].data<float>();
  const float* x = k.in[1].data<float>();
  float* dx = k.out[0].data<float>();
  if (!per_channel) {
    const Affine p = affine_of(k, scalar_of(k.in[2]), scalar_of(k.in[3]));
    for (int64_t i = 0; i < k.in[1].numel(); ++i) dx[i] = fqt::fq_backward(x[i], dy[i], p);
    return;
  }
  const float* s = k.in[2].data<float>();
  const float* z = k.in[3].data<float>();
  for_each_channel(
      fqt::channel_view(k.in[1].shape(), tcfg(k).axis),
      [&](int64_t c) { return affine_of(k, s[c], z[c]); },
      [&](int64_t e, const Affine& p) { dx[e] = fqt::fq_backward(x[e], dy[e], p); });
}

// Sums K per-element terms over [0, n) in the documented per-tensor order; term(i) returns them
// (and may write per-element outputs).
template <size_t K, class F>
std::array<double, K> ordered_sums(int64_t n, F term) {
  std::array<double, K> total{};
  for (int64_t b = 0; b < n; b += kSumChunk) {
    const int64_t e = std::min(n, b + kSumChunk);
    double lanes[K][kLanes] = {};
    for (int64_t i = b; i < e; ++i) {
      const std::array<float, K> t = term(i);
      for (size_t j = 0; j < K; ++j) lanes[j][(i - b) % kLanes] += t[j];
    }
    for (size_t j = 0; j < K; ++j) {
      double chunk = lanes[j][0];
      for (int l = 1; l < kLanes; ++l) chunk += lanes[j][l];
      total[j] += chunk;
    }
  }
  return total;
}

void learnable_backward_per_tensor_ref(const KernelCtx& k) {
  const float* dy = k.in[0].data<float>();
  const float* x = k.in[1].data<float>();
  const int64_t n = k.in[1].numel();
  const Affine p =
      affine_of(k, scalar_of(k.in[2]), zero_point_of(scalar_of(k.in[3]), k, Zp::kBackward));
  const float g = fqt::grad_factor(tcfg(k), n);
  float* dx = k.out[0].data<float>();
  const std::array<double, 2> sums = ordered_sums<2>(n, [&](int64_t i) {
    const fqt::LearnableTerms t = fqt::learnable_backward(x[i], dy[i], p, g);
    dx[i] = t.dx;
    return std::array<float, 2>{t.dscale, t.dzp};
  });
  k.out[1].data<float>()[0] = static_cast<float>(sums[0]);
  k.out[2].data<float>()[0] = static_cast<float>(sums[1]);
}

// Per channel: channel c's sum runs over the rows (o, c) in order of o; a row of `inner`
// elements is summed with kLanes lanes (element i at lane i % kLanes), lanes added in order.
void learnable_backward_per_channel_ref(const KernelCtx& k) {
  const float* dy = k.in[0].data<float>();
  const float* x = k.in[1].data<float>();
  const float* s = k.in[2].data<float>();
  const float* z = k.in[3].data<float>();
  const ChannelView v = fqt::channel_view(k.in[1].shape(), tcfg(k).axis);
  const float g = fqt::grad_factor(tcfg(k), k.in[1].numel());
  float* dx = k.out[0].data<float>();
  float* ds = k.out[1].data<float>();
  float* dz = k.out[2].data<float>();
  for (int64_t c = 0; c < v.channels; ++c) {
    const Affine p = affine_of(k, s[c], zero_point_of(z[c], k, Zp::kRounded));
    double acc_s = 0, acc_z = 0;
    for (int64_t o = 0; o < v.outer; ++o) {
      const int64_t base = (o * v.channels + c) * v.inner;
      double ls[kLanes] = {}, lz[kLanes] = {};
      for (int64_t i = 0; i < v.inner; ++i) {
        const fqt::LearnableTerms t = fqt::learnable_backward(x[base + i], dy[base + i], p, g);
        dx[base + i] = t.dx;
        ls[i % kLanes] += t.dscale;
        lz[i % kLanes] += t.dzp;
      }
      double row_s = ls[0], row_z = lz[0];
      for (int l = 1; l < kLanes; ++l) {
        row_s += ls[l];
        row_z += lz[l];
      }
      acc_s += row_s;
      acc_z += row_z;
    }
    ds[c] = static_cast<float>(acc_s);
    dz[c] = static_cast<float>(acc_z);
  }
}

// ---- PACT -----------------------------------------------------------------------------------

float levels(const KernelCtx& k) { return fqt::levels(tcfg(k).bits); }

void pact_ref(const KernelCtx& k) {
  const float* x = k.in[0].data<float>();
  const float a = scalar_of(k.in[1]);
  const float s = a / levels(k);
  float* y = k.out[0].data<float>();
  for (int64_t i = 0; i < k.in[0].numel(); ++i) y[i] = fqt::pact_forward(x[i], a, s);
}

void pact_backward_ref(const KernelCtx& k) {
  const float* dy = k.in[0].data<float>();
  const float* x = k.in[1].data<float>();
  const float a = scalar_of(k.in[2]);
  float* dx = k.out[0].data<float>();
  const std::array<double, 1> da = ordered_sums<1>(k.in[1].numel(), [&](int64_t i) {
    dx[i] = fqt::pact_dx(x[i], dy[i], a);
    return std::array<float, 1>{fqt::pact_dalpha(x[i], dy[i], a)};
  });
  k.out[1].data<float>()[0] = static_cast<float>(da[0]);
}

// ---- binary / ternary / DoReFa ----------------------------------------------------------------

// +1 for x >= 0, -1 for x < 0, NaN for NaN.
float sign_pm1(float x) { return x >= 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x); }

void sign_ste_ref(const KernelCtx& k) {
  const float* x = k.in[0].data<float>();
  float* y = k.out[0].data<float>();
  for (int64_t i = 0; i < k.in[0].numel(); ++i) y[i] = sign_pm1(x[i]);
}

// Channels of the binary/ternary weight quantizers: the last axis, or one channel.
struct LastAxis {
  int64_t rows = 1, channels = 1;
};
LastAxis last_axis(const KernelCtx& k) {
  const Tensor& w = k.in[0];
  if (!k.params<FlagParam>().value || w.rank() == 0) return {w.numel(), 1};
  const int64_t ch = w.dim(-1);
  return {ch ? w.numel() / ch : 0, ch};
}

void binary_quantize_ref(const KernelCtx& k) {
  const float* w = k.in[0].data<float>();
  float* y = k.out[0].data<float>();
  const LastAxis v = last_axis(k);
  for (int64_t c = 0; c < v.channels; ++c) {
    double sum = 0;
    for (int64_t r = 0; r < v.rows; ++r) sum += std::abs(w[r * v.channels + c]);
    const float alpha = static_cast<float>(sum / static_cast<double>(v.rows));
    for (int64_t r = 0; r < v.rows; ++r) {
      const int64_t e = r * v.channels + c;
      y[e] = alpha * sign_pm1(w[e]);
    }
  }
}

void ternary_quantize_ref(const KernelCtx& k) {
  const float* w = k.in[0].data<float>();
  float* y = k.out[0].data<float>();
  const LastAxis v = last_axis(k);
  for (int64_t c = 0; c < v.channels; ++c) {
    double sum = 0;
    for (int64_t r = 0; r < v.rows; ++r) sum += std::abs(w[r * v.channels + c]);
    const double delta = 0.7 * (sum / static_cast<double>(v.rows));
    double big = 0;
    int64_t count = 0;
    for (int64_t r = 0; r < v.rows; ++r) {
      const double a = std::abs(w[r * v.channels + c]);
      if (a > delta) {
        big += a;
        ++count;
      }
    }
    const float alpha = count ? static_cast<float>(big / static_cast<double>(count)) : 0.0f;
    for (int64_t r = 0; r < v.rows; ++r) {
      const int64_t e = r * v.channels + c;
      const double we = w[e];
      y[e] = we > delta ? alpha : (we < -delta ? -alpha : 0.0f);
    }
  }
}

void dorefa_quantize_ref(const KernelCtx& k, bool clip01) {
  const float* x = k.in[0].data<float>();
  const float n = levels(k);
  float* y = k.out[0].data<float>();
  for (int64_t i = 0; i < k.in[0].numel(); ++i) {
    const float r = clip01 ? (x[i] < 0.0f ? 0.0f : (x[i] > 1.0f ? 1.0f : x[i])) : x[i];
    y[i] = std::nearbyint(r * n) / n;
  }
}

void ste_range_backward_ref(const KernelCtx& k) {
  const float* dy = k.in[0].data<float>();
  const float* x = k.in[1].data<float>();
  const double lo = k.params<RangeParam>().lo, hi = k.params<RangeParam>().hi;
  float* dx = k.out[0].data<float>();
  for (int64_t i = 0; i < k.in[1].numel(); ++i) {
    const double v = x[i];
    dx[i] = dy[i] * ((v >= lo && v <= hi) ? 1.0f : 0.0f);
  }
}

// ---- observer qparams ----------------------------------------------------------------------

struct QParamsConfig {
  int64_t quant_min = 0, quant_max = 0;
  bool symmetric = false;
  float eps = 0, zero_point = 0;
};

void calculate_qparams_ref(const KernelCtx& k) {
  const float* mn = k.in[0].data<float>();
  const float* mx = k.in[1].data<float>();
  const QParamsConfig& q = k.params<QParamsConfig>();
  const int64_t qmin = q.quant_min, qmax = q.quant_max;
  const bool symmetric = q.symmetric;
  const float eps = q.eps;
  const float sym_zp = q.zero_point;
  const float levels_affine = static_cast<float>(qmax - qmin);
  const float levels_half = static_cast<float>(static_cast<double>(qmax - qmin) / 2);
  float* scale = k.out[0].data<float>();
  float* zp = k.out[1].data<float>();
  // torch.min / torch.max propagate NaN.
  auto fmin_nan = [](float a, float b) { return std::isnan(a) ? a : (a < b ? a : b); };
  auto fmax_nan = [](float a, float b) { return std::isnan(a) ? a : (a > b ? a : b); };
  for (int64_t i = 0; i < k.in[0].numel(); ++i) {
    if (mn[i] == INFINITY && mx[i] == -INFINITY) {  // never observed
      scale[i] = 1.0f;
      zp[i] = 0.0f;
      continue;
    }
    const float lo = fmin_nan(mn[i], 0.0f), hi = fmax_nan(mx[i], 0.0f);
    if (symmetric) {
      scale[i] = fmax_nan(fmax_nan(-lo, hi) / levels_half, eps);
      zp[i] = sym_zp;
      continue;
    }
    const float s = fmax_nan((hi - lo) / levels_affine, eps);
    scale[i] = s;
    const double z = static_cast<double>(qmin) - std::nearbyint(lo / s);
    zp[i] = static_cast<float>(
        !(z >= static_cast<double>(qmin)) ? qmin : (z > static_cast<double>(qmax) ? qmax : z));
  }
}

// Gradient of an op whose STE passes dy where |x| <= clip.
std::vector<Value> clip_ste_grad(const GradCtx& g) {
  const double clip = g.attrs.f("clip");
  if (std::isinf(clip)) return {g.dy()};
  return {ops::ste_range_backward(g.dy(), g.in[0], -clip, clip)};
}

std::vector<ValueType> infer_unary(const InferCtx& c) {
  require_float(c, 0, "x");
  return {c.in[0]};
}

std::vector<ValueType> infer_weight_quantizer(const InferCtx& c) {
  require_float(c, 0, "w");
  if (c.attrs.b("per_channel", true) && c.in[0].shape.rank() < 1)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'w': per_channel needs rank >= 1 (channels on the ",
                 "last axis) but found shape ", c.in[0].shape.str());
  return {c.in[0]};
}

}  // namespace

void register_quantizer_ops() {
  // ---- affine (non-learnable) ----
  for (bool per_channel : {false, true}) {
    const std::string name =
        per_channel ? "fake_quantize_per_channel_affine" : "fake_quantize_per_tensor_affine";
    register_op(
        {.name = name,
         .num_inputs = 3,
         .infer = [per_channel](const InferCtx& c) { return infer_affine_forward(c, per_channel); },
         .grad = [name](const GradCtx& g) -> std::vector<Value> {
           return {ops::apply1(name + "_backward", {g.dy(), g.in[0], g.in[1], g.in[2]}, g.attrs),
                   Value(), Value()};
         },
         .prepare = prepare_torch,
         .reference =
             [per_channel](const KernelCtx& k) { affine_forward_ref(k, per_channel, Zp::kGiven); },
         .fast = fast_torch(
             name, per_channel ? TorchFakeQuantOp::kPerChannel : TorchFakeQuantOp::kPerTensor),
         .doc = per_channel ? "PyTorch fake quant per channel: (clamp(zp + rne(x/s)) - zp) * s"
                            : "PyTorch fake quant: (clamp(zp + round_even(x * (1/s))) - zp) * s"});
    register_op(
        {.name = name + "_backward",
         .num_inputs = 4,
         .infer = [per_channel](const InferCtx& c) -> std::vector<ValueType> {
           return {infer_affine_backward(c, per_channel)};
         },
         .prepare = prepare_torch,
         .reference = [per_channel](const KernelCtx& k) { affine_backward_ref(k, per_channel); },
         .fast = fast_torch(name + "_backward", per_channel ? TorchFakeQuantOp::kPerChannelBackward
                                                            : TorchFakeQuantOp::kPerTensorBackward),
         .doc = "dx of " + name + ": dy where quant_min <= zp + rne(x/s) <= quant_max"});
  }

  // ---- learnable (LSQ / LSQ+) ----
  for (bool per_channel : {false, true}) {
    const std::string name = per_channel ? "fake_quantize_learnable_per_channel_affine"
                                         : "fake_quantize_learnable_per_tensor_affine";
    register_op(
        {.name = name,
         .num_inputs = 3,
         .infer = [per_channel](const InferCtx& c) { return infer_affine_forward(c, per_channel); },
         .grad = [name](const GradCtx& g) -> std::vector<Value> {
           return ops::apply(name + "_backward", {g.dy(), g.in[0], g.in[1], g.in[2]}, g.attrs);
         },
         .prepare = prepare_torch,
         .reference = [per_channel](
                          const KernelCtx& k) { affine_forward_ref(k, per_channel, Zp::kRounded); },
         .fast = fast_torch(name, per_channel ? TorchFakeQuantOp::kLearnablePerChannel
                                              : TorchFakeQuantOp::kLearnablePerTensor),
         .doc = "learnable fake quant (LSQ+): zp = clamp(rne(z)); grads dx, dscale, dzero_point"});
    register_op({.name = name + "_backward",
                 .num_inputs = 4,
                 .infer = [per_channel](const InferCtx& c) -> std::vector<ValueType> {
                   const ValueType x = infer_affine_backward(c, per_channel);
                   ValueType s = c.in[2], z = c.in[3];
                   if (per_channel) {
                     const int axis = x.shape.axis(static_cast<int>(c.attrs.i("axis")), "");
                     s.shape = z.shape = Shape{x.shape[axis]};
                   }
                   return {x, s, z};
                 },
                 .prepare = prepare_torch,
                 .reference = per_channel ? learnable_backward_per_channel_ref
                                          : learnable_backward_per_tensor_ref,
                 .fast = fast_torch(name + "_backward",
                                    per_channel ? TorchFakeQuantOp::kLearnablePerChannelBackward
                                                : TorchFakeQuantOp::kLearnablePerTensorBackward),
                 .doc = "dx, dscale, dzero_point of " + name + " (PyTorch's recomputation)"});
  }

  // ---- PACT ----
  register_op({.name = "pact_quantize",
               .num_inputs = 2,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_float(c, 0, "x");
                 require_scalar(c, 1, "alpha");
                 require_bits(c, 1, 16);
                 return {c.in[0]};
               },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return ops::apply("pact_quantize_backward", {g.dy(), g.in[0], g.in[1]}, g.attrs);
               },
               .prepare = prepare_torch,
               .reference = pact_ref,
               .fast = fast_torch("pact_quantize", TorchFakeQuantOp::kPact),
               .doc = "PACT: s = alpha/(2^bits-1); round_even(clamp(x, 0, alpha) / s) * s"});
  register_op({.name = "pact_quantize_backward",
               .num_inputs = 3,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_scalar(c, 2, "alpha");
                 require_bits(c, 1, 16);
                 require_float(c, 1, "x");
                 return {{DType::kF32, require_like(c, 0, 1, "dy", "x")}, c.in[2]};
               },
               .prepare = prepare_torch,
               .reference = pact_backward_ref,
               .fast = fast_torch("pact_quantize_backward", TorchFakeQuantOp::kPactBackward),
               .doc = "dx (0 <= x < alpha), dalpha (sum of dy over x >= alpha) of pact_quantize"});

  // ---- binary / ternary / DoReFa ----
  register_op({.name = "sign_ste",
               .num_inputs = 1,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_clip(c);
                 return infer_unary(c);
               },
               .grad = clip_ste_grad,
               .reference = sign_ste_ref,
               .doc = "BNN sign (+1 for x >= 0, -1 below); STE dy where |x| <= clip"});
  register_op({.name = "binary_quantize",
               .num_inputs = 1,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_clip(c);
                 return infer_weight_quantizer(c);
               },
               .grad = clip_ste_grad,
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return FlagParam{c.attrs.b("per_channel", true)};
               },
               .reference = binary_quantize_ref,
               .doc = "BWN/XNOR: mean|w| * sign(w) per last-axis channel or tensor; STE"});
  register_op({.name = "ternary_quantize",
               .num_inputs = 1,
               .infer = infer_weight_quantizer,
               .grad = [](const GradCtx& g) -> std::vector<Value> { return {g.dy()}; },
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return FlagParam{c.attrs.b("per_channel", true)};
               },
               .reference = ternary_quantize_ref,
               .doc = "TWN: +-alpha beyond delta = 0.7 mean|w|, else 0; identity STE"});
  register_op({.name = "dorefa_quantize",
               .num_inputs = 1,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_bits(c, 1, 16);
                 return infer_unary(c);
               },
               .grad = [](const GradCtx& g) -> std::vector<Value> { return {g.dy()}; },
               .prepare = prepare_torch,
               .reference = [](const KernelCtx& k) { dorefa_quantize_ref(k, false); },
               .doc = "DoReFa quantize_k: round_even(r * (2^k-1)) / (2^k-1); identity STE"});
  register_op({.name = "dorefa_activation",
               .num_inputs = 1,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_bits(c, 1, 16);
                 return infer_unary(c);
               },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::ste_range_backward(g.dy(), g.in[0], 0.0, 1.0)};
               },
               .prepare = prepare_torch,
               .reference = [](const KernelCtx& k) { dorefa_quantize_ref(k, true); },
               .doc = "DoReFa activation: quantize_k(clamp(x, 0, 1)); dy where 0 <= x <= 1"});
  register_op({.name = "ste_range_backward",
               .num_inputs = 2,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_float(c, 1, "x");
                 const double lo = c.attrs.f("lo"), hi = c.attrs.f("hi");
                 if (!(lo <= hi))
                   LOWBIT_THROW(ValueError, c.op, ": attributes 'lo' <= 'hi' expected but found ",
                                lo, " and ", hi);
                 return {{DType::kF32, require_like(c, 0, 1, "dy", "x")}};
               },
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return RangeParam{c.attrs.f("lo"), c.attrs.f("hi")};
               },
               .reference = ste_range_backward_ref,
               .doc = "straight-through mask: dy where lo <= x <= hi, else 0"});

  // ---- observers ----
  register_op(
      {.name = "calculate_qparams",
       .num_inputs = 2,
       .infer = [](const InferCtx& c) -> std::vector<ValueType> {
         require_float(c, 0, "min_val");
         const Shape s = require_like(c, 1, 0, "max_val", "min_val");
         const int64_t lo = c.attrs.i("quant_min"), hi = c.attrs.i("quant_max");
         if (lo > hi)
           LOWBIT_THROW(ValueError, c.op, ": attributes 'quant_min' <= 'quant_max' expected but ",
                        "found ", lo, " > ", hi);
         const double eps = c.attrs.f("eps");
         if (!(eps >= 0))
           LOWBIT_THROW(ValueError, c.op, ": attribute 'eps': expected a value >= 0 but found ",
                        eps);
         if (c.attrs.b("symmetric")) c.attrs.i("zero_point");
         const ValueType t{DType::kF32, s};
         return {t, t};
       },
       .prepare = [](const PrepareCtx& c) -> std::any {
         return QParamsConfig{c.attrs.i("quant_min"), c.attrs.i("quant_max"),
                              c.attrs.b("symmetric", false), static_cast<float>(c.attrs.f("eps")),
                              static_cast<float>(c.attrs.i("zero_point", 0))};
       },
       .reference = calculate_qparams_ref,
       .doc = "observer (min, max) -> PyTorch (scale, zero_point), affine or symmetric"});
}

}  // namespace detail

namespace ops {

QuantRange lsq_range(int bits, bool is_signed) {
  if (is_signed ? (bits < 2 || bits > 16) : (bits < 1 || bits > 16))
    LOWBIT_THROW(ValueError, "lsq_range: argument 'bits': expected a value in [", is_signed ? 2 : 1,
                 ", 16] for ", is_signed ? "signed" : "unsigned", " quantization but found ", bits);
  if (is_signed)
    return {static_cast<int32_t>(-(int64_t{1} << (bits - 1))),
            static_cast<int32_t>((int64_t{1} << (bits - 1)) - 1)};
  return {0, static_cast<int32_t>((int64_t{1} << bits) - 1)};
}

double lsq_grad_factor(int64_t n, int bits, bool is_signed) {
  const QuantRange r = lsq_range(bits, is_signed);
  if (n < 1)
    LOWBIT_THROW(ValueError, "lsq_grad_factor: argument 'n': expected a count >= 1 but found ", n);
  return 1.0 / std::sqrt(static_cast<double>(n) * static_cast<double>(r.max));
}

}  // namespace ops

}  // namespace lowbit
