// TF fake-quant ops (include/lowbit/ops/fake_quant.h): shape rules, gradient rules and the
// reference kernels, written as the formulas of shared quantization-semantics.md 1.2-1.4 (see
// kernels/fake_quant_formulas.h). Fast kernels: src/kernels/fast/fake_quant.cc.
//
// Sums (dmin, dmax) accumulate in double in a fixed order: per tensor by blocks of
// kFakeQuantSumBlock elements, each summed on kFakeQuantSumLanes interleaved lanes; per channel
// over the rows in order. Threads split blocks or channels, never a sum, so every result is the
// same at any thread count.
#include "lowbit/ops/fake_quant.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/fast/fake_quant.h"
#include "lowbit/ops.h"
#include "ops/families.h"
#include "ops/op_util.h"

namespace lowbit {

namespace ops {
FakeQuantNudge fake_quant_nudge(float min, float max, int num_bits, bool narrow_range) {
  if (num_bits < 2 || num_bits > 16)
    LOWBIT_THROW(ValueError,
                 "fake_quant_nudge: argument 'num_bits': expected an integer in [2, 16] but found ",
                 num_bits);
  const kernels::FakeQuantParams p = kernels::fake_quant_params(min, max, num_bits, narrow_range);
  FakeQuantNudge n;
  n.quant_min = narrow_range ? 1 : 0;
  n.quant_max = (1 << num_bits) - 1;
  n.zero_point = p.zero_point;
  n.scale = p.scale;
  n.inv_scale = p.inv_scale;
  n.nudged_min = p.nudged_min;
  n.nudged_max = p.nudged_max;
  return n;
}
}  // namespace ops

namespace detail {

namespace {

using namespace kernels;  // the formulas (kernels/fake_quant_formulas.h)

// Channels summed together by one thread in the per-channel gradient.
constexpr int64_t kChannelChunk = 16;

// ---- shape rules ---------------------------------------------------------------------------

void require_attrs(const InferCtx& c) {
  const int64_t bits = c.attrs.i("num_bits", 8);
  if (bits < 2 || bits > 16)
    LOWBIT_THROW(ValueError, c.op,
                 ": attribute 'num_bits': expected an integer in [2, 16] but found ", bits);
  c.attrs.b("narrow_range", false);  // type check
}

void require_args_range(const InferCtx& c) {
  const float min = static_cast<float>(c.attrs.f("min", -6));
  const float max = static_cast<float>(c.attrs.f("max", 6));
  if (!(min < max))
    LOWBIT_THROW(ValueError, c.op,
                 ": attributes 'min' and 'max': expected min < max (as f32) but found min ", min,
                 ", max ", max);
}

// Inputs i and j (f32) must have the same shape; returns the merge of the two.
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

// min (input i) and max (input i + 1): f32 rank 0.
void require_scalar_range(const InferCtx& c, int i) {
  const char* names[] = {"min", "max"};
  for (int k = 0; k < 2; ++k) {
    require_float(c, i + k, names[k]);
    if (c.in[i + k].shape.rank() != 0)
      LOWBIT_THROW(ShapeError, c.op, ": argument '", names[k],
                   "': expected a scalar (shape []) but found ", c.in[i + k].shape.str());
  }
}

// min (input i) and max (input i + 1): f32 [d], d = the last dim of x (input x_index, rank
// >= 1). Returns d merged with theirs.
int64_t require_channel_range(const InferCtx& c, int x_index, int i) {
  const Shape& x = c.in[x_index].shape;
  if (x.rank() < 1)
    LOWBIT_THROW(ShapeError, c.op,
                 ": argument 'x': expected rank >= 1 (channels on the last axis) ",
                 "but found shape ", x.str());
  int64_t d = x[-1];
  const char* names[] = {"min", "max"};
  for (int k = 0; k < 2; ++k) {
    require_float(c, i + k, names[k]);
    const Shape& s = c.in[i + k].shape;
    if (s.rank() != 1 || !dims_compatible(s[0], d))
      LOWBIT_THROW(ShapeError, c.op, ": argument '", names[k], "': expected shape [",
                   d == kUnknown ? std::string("?") : std::to_string(d),
                   "] (one value per channel, the last dim of x ", x.str(), ") but found ",
                   s.str());
    d = merge_dim(d, s[0]);
  }
  return d;
}

// ---- reference kernels ---------------------------------------------------------------------

template <bool kDivide>
void forward_per_tensor(const float* x, float* y, int64_t n, const FakeQuantParams& p) {
  if (p.zero) {
    std::fill(y, y + n, 0.0f);
    return;
  }
#pragma omp parallel for if (n > kFakeQuantParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = fake_quant_value<kDivide>(x[i], p);
}

// dx, and {dmin, dmax} as the return value.
std::pair<float, float> backward_per_tensor(const float* dy, const float* x, float* dx, int64_t n,
                                            const FakeQuantParams& p) {
  if (p.zero) {
    std::copy(dy, dy + n, dx);
    return {0.0f, 0.0f};
  }
  const int64_t blocks = (n + kFakeQuantSumBlock - 1) / kFakeQuantSumBlock;
  std::vector<double> below(blocks), above(blocks);
#pragma omp parallel for if (n > kFakeQuantParallelGrain) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    double lo[kFakeQuantSumLanes] = {}, hi[kFakeQuantSumLanes] = {};
    const int64_t begin = b * kFakeQuantSumBlock, end = std::min(n, begin + kFakeQuantSumBlock);
    for (int64_t i = begin; i < end; ++i) {
      dx[i] = fake_quant_passes(x[i], p) ? dy[i] : 0.0f;
      const int64_t lane = (i - begin) % kFakeQuantSumLanes;
      if (x[i] < p.nudged_min) lo[lane] += dy[i];
      if (x[i] > p.nudged_max) hi[lane] += dy[i];
    }
    below[b] = sum_lanes(lo);
    above[b] = sum_lanes(hi);
  }
  double lo = 0, hi = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    lo += below[b];
    hi += above[b];
  }
  return {static_cast<float>(lo), static_cast<float>(hi)};
}

// The prepare step of every op here: the attributes, once per plan.
std::any prepare_fake_quant(const PrepareCtx& c) {
  return FakeQuantConfig{.num_bits = static_cast<int>(c.attrs.i("num_bits", 8)),
                         .narrow_range = c.attrs.b("narrow_range", false),
                         .min = static_cast<float>(c.attrs.f("min", -6)),
                         .max = static_cast<float>(c.attrs.f("max", 6)),
                         .per_channel = c.attrs.b("per_channel", false)};
}
const FakeQuantConfig& config(const KernelCtx& k) { return k.params<FakeQuantConfig>(); }

FakeQuantParams args_params(const KernelCtx& k) {
  return fake_quant_params(config(k).min, config(k).max, config(k).num_bits,
                           config(k).narrow_range);
}

// min, max from inputs i, i + 1 (rank 0).
FakeQuantParams vars_params(const KernelCtx& k, int i) {
  return fake_quant_params(k.in[i].data<float>()[0], k.in[i + 1].data<float>()[0],
                           config(k).num_bits, config(k).narrow_range);
}

std::vector<FakeQuantParams> channel_params(const KernelCtx& k, int i, int64_t d) {
  const float* min = k.in[i].data<float>();
  const float* max = k.in[i + 1].data<float>();
  std::vector<FakeQuantParams> p(d);
  for (int64_t c = 0; c < d; ++c)
    p[c] = fake_quant_params(min[c], max[c], config(k).num_bits, config(k).narrow_range);
  return p;
}

// The pointers of a call, by role (kernels/fast/fake_quant.h).
FakeQuantIo io_of(const KernelCtx& k, FakeQuantOp op) {
  FakeQuantIo io;
  const bool gradient = op == FakeQuantOp::kArgsGradient || op == FakeQuantOp::kVarsGradient ||
                        op == FakeQuantOp::kPerChannelGradient;
  const int xi = gradient ? 1 : 0;
  const Tensor& x = k.in[xi];
  io.x = x.data<float>();
  io.n = x.numel();
  io.d = x.rank() > 0 ? x.dim(-1) : 1;
  if (gradient) io.dy = k.in[0].data<float>();
  if (op != FakeQuantOp::kArgs && op != FakeQuantOp::kArgsGradient && op != FakeQuantOp::kMinMax) {
    io.min = k.in[xi + 1].data<float>();
    io.max = k.in[xi + 2].data<float>();
  }
  if (op == FakeQuantOp::kMinMax) {
    io.lo = k.out[0].data<float>();
    io.hi = k.out[1].data<float>();
    return io;
  }
  io.y = k.out[0].data<float>();
  if (op == FakeQuantOp::kVarsGradient || op == FakeQuantOp::kPerChannelGradient) {
    io.lo = k.out[1].data<float>();
    io.hi = k.out[2].data<float>();
  }
  return io;
}

// The kernel table's fast rows of an op: the AVX-512F and the AVX2 build of the same driver.
std::vector<FastKernel> fast_fake_quant(const std::string& op, FakeQuantOp which) {
  return {{.name = op + "_f32__avx512",
           .isa = Isa::kAvx512,
           .run =
               [which](const KernelCtx& k) {
                 fake_quant_f32__avx512(which, config(k), io_of(k, which));
               }},
          {.name = op + "_f32__avx2", .isa = Isa::kAvx2, .run = [which](const KernelCtx& k) {
             fake_quant_f32__avx2(which, config(k), io_of(k, which));
           }}};
}

void args_kernel(const KernelCtx& k) {
  forward_per_tensor<false>(k.in[0].data<float>(), k.out[0].data<float>(), k.in[0].numel(),
                            args_params(k));
}

void vars_kernel(const KernelCtx& k) {
  forward_per_tensor<true>(k.in[0].data<float>(), k.out[0].data<float>(), k.in[0].numel(),
                           vars_params(k, 1));
}

void per_channel_kernel(const KernelCtx& k) {
  const ChannelRows v = channel_rows(io_of(k, FakeQuantOp::kPerChannel));
  const std::vector<FakeQuantParams> p = channel_params(k, 1, v.d);
  const float* x = k.in[0].data<float>();
  float* y = k.out[0].data<float>();
#pragma omp parallel for if (v.rows > 1 && k.in[0].numel() > kFakeQuantParallelGrain) \
    schedule(static)
  for (int64_t r = 0; r < v.rows; ++r)
    for (int64_t c = 0; c < v.d; ++c) {
      const int64_t e = r * v.d + c;
      y[e] = p[c].zero ? 0.0f : fake_quant_value<false>(x[e], p[c]);
    }
}

void args_gradient_kernel(const KernelCtx& k) {
  const FakeQuantParams p = args_params(k);
  const float* dy = k.in[0].data<float>();
  const float* x = k.in[1].data<float>();
  float* dx = k.out[0].data<float>();
  const int64_t n = k.in[1].numel();
#pragma omp parallel for if (n > kFakeQuantParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) dx[i] = fake_quant_passes(x[i], p) ? dy[i] : 0.0f;
}

void vars_gradient_kernel(const KernelCtx& k) {
  const auto [lo, hi] =
      backward_per_tensor(k.in[0].data<float>(), k.in[1].data<float>(), k.out[0].data<float>(),
                          k.in[1].numel(), vars_params(k, 2));
  k.out[1].data<float>()[0] = lo;
  k.out[2].data<float>()[0] = hi;
}

void per_channel_gradient_kernel(const KernelCtx& k) {
  const ChannelRows v = channel_rows(io_of(k, FakeQuantOp::kPerChannelGradient));
  const std::vector<FakeQuantParams> p = channel_params(k, 2, v.d);
  const float* dy = k.in[0].data<float>();
  const float* x = k.in[1].data<float>();
  float* dx = k.out[0].data<float>();
  float* dmin = k.out[1].data<float>();
  float* dmax = k.out[2].data<float>();
  const int64_t chunks = (v.d + kChannelChunk - 1) / kChannelChunk;
#pragma omp parallel for if (chunks > 1 && k.in[1].numel() > kFakeQuantParallelGrain) \
    schedule(static)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const int64_t c0 = ch * kChannelChunk, c1 = std::min(v.d, c0 + kChannelChunk);
    double lo[kChannelChunk] = {}, hi[kChannelChunk] = {};
    for (int64_t r = 0; r < v.rows; ++r)
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t e = r * v.d + c;
        const FakeQuantParams& pc = p[c];
        if (pc.zero) {
          dx[e] = dy[e];
          continue;
        }
        dx[e] = fake_quant_passes(x[e], pc) ? dy[e] : 0.0f;
        if (x[e] < pc.nudged_min) lo[c - c0] += dy[e];
        if (x[e] > pc.nudged_max) hi[c - c0] += dy[e];
      }
    for (int64_t c = c0; c < c1; ++c) {
      dmin[c] = static_cast<float>(lo[c - c0]);
      dmax[c] = static_cast<float>(hi[c - c0]);
    }
  }
}

void min_max_kernel(const KernelCtx& k) {
  const Tensor& xt = k.in[0];
  const float* x = xt.data<float>();
  float* lo = k.out[0].data<float>();
  float* hi = k.out[1].data<float>();
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (!config(k).per_channel) {
    const int64_t n = xt.numel();
    const int64_t blocks = (n + kFakeQuantSumBlock - 1) / kFakeQuantSumBlock;
    std::vector<float> block_lo(blocks, kInf), block_hi(blocks, -kInf);
    std::vector<char> block_nan(blocks, 0);
#pragma omp parallel for if (n > kFakeQuantParallelGrain) schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t end = std::min(n, (b + 1) * kFakeQuantSumBlock);
      for (int64_t i = b * kFakeQuantSumBlock; i < end; ++i) {
        if (std::isnan(x[i])) {
          block_nan[b] = 1;
          continue;
        }
        if (x[i] < block_lo[b]) block_lo[b] = x[i];
        if (x[i] > block_hi[b]) block_hi[b] = x[i];
      }
    }
    float l = kInf, h = -kInf;
    bool nan = false;
    for (int64_t b = 0; b < blocks; ++b) {
      l = std::min(l, block_lo[b]);
      h = std::max(h, block_hi[b]);
      nan = nan || block_nan[b];
    }
    min_max_finish(&l, &h, nan);
    lo[0] = l;
    hi[0] = h;
    return;
  }
  const ChannelRows v = channel_rows(io_of(k, FakeQuantOp::kMinMax));
  std::vector<char> nan(v.d, 0);
  std::fill(lo, lo + v.d, kInf);
  std::fill(hi, hi + v.d, -kInf);
  for (int64_t r = 0; r < v.rows; ++r)
    for (int64_t c = 0; c < v.d; ++c) {
      const float e = x[r * v.d + c];
      if (std::isnan(e)) {
        nan[c] = 1;
        continue;
      }
      if (e < lo[c]) lo[c] = e;
      if (e > hi[c]) hi[c] = e;
    }
  for (int64_t c = 0; c < v.d; ++c) min_max_finish(&lo[c], &hi[c], nan[c] != 0);
}

}  // namespace

void register_fake_quant_ops() {
  const std::string args = "fake_quant_with_min_max_args";
  const std::string vars = "fake_quant_with_min_max_vars";
  const std::string per_channel = "fake_quant_with_min_max_vars_per_channel";

  register_op({.name = args,
               .num_inputs = 1,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_float(c, 0, "x");
                 require_attrs(c);
                 require_args_range(c);
                 return {c.in[0]};
               },
               .grad = [args](const GradCtx& g) -> std::vector<Value> {
                 return {ops::apply1(args + "_gradient", {g.dy(), g.in[0]}, g.attrs)};
               },
               .prepare = prepare_fake_quant,
               .reference = args_kernel,
               .fast = fast_fake_quant(args, FakeQuantOp::kArgs),
               .doc = "TF fake quant with a fixed range (attrs min, max, num_bits, narrow_range)"});
  register_op({.name = args + "_gradient",
               .num_inputs = 2,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_float(c, 0, "dy");
                 require_float(c, 1, "x");
                 require_attrs(c);
                 require_args_range(c);
                 return {{DType::kF32, require_same_shape(c, 1, 0, "x", "dy")}};
               },
               .prepare = prepare_fake_quant,
               .reference = args_gradient_kernel,
               .fast = fast_fake_quant(args + "_gradient", FakeQuantOp::kArgsGradient),
               .doc = "dx of fake_quant_with_min_max_args: dy inside the nudged range, else 0"});

  register_op(
      {.name = vars,
       .num_inputs = 3,
       .infer = [](const InferCtx& c) -> std::vector<ValueType> {
         require_float(c, 0, "x");
         require_scalar_range(c, 1);
         require_attrs(c);
         return {c.in[0]};
       },
       .grad = [vars](const GradCtx& g) -> std::vector<Value> {
         return ops::apply(vars + "_gradient", {g.dy(), g.in[0], g.in[1], g.in[2]}, g.attrs);
       },
       .prepare = prepare_fake_quant,
       .reference = vars_kernel,
       .fast = fast_fake_quant(vars, FakeQuantOp::kVars),
       .doc = "TF fake quant with a scalar range given as tensors min, max"});
  register_op({.name = vars + "_gradient",
               .num_inputs = 4,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_float(c, 0, "dy");
                 require_float(c, 1, "x");
                 require_scalar_range(c, 2);
                 require_attrs(c);
                 const ValueType scalar{DType::kF32, Shape{}};
                 return {{DType::kF32, require_same_shape(c, 1, 0, "x", "dy")}, scalar, scalar};
               },
               .prepare = prepare_fake_quant,
               .reference = vars_gradient_kernel,
               .fast = fast_fake_quant(vars + "_gradient", FakeQuantOp::kVarsGradient),
               .doc = "dx, dmin, dmax of fake_quant_with_min_max_vars (straight-through)"});

  register_op(
      {.name = per_channel,
       .num_inputs = 3,
       .infer = [](const InferCtx& c) -> std::vector<ValueType> {
         require_float(c, 0, "x");
         const int64_t d = require_channel_range(c, 0, 1);
         require_attrs(c);
         ValueType y = c.in[0];
         y.shape[-1] = d;
         return {y};
       },
       .grad = [per_channel](const GradCtx& g) -> std::vector<Value> {
         return ops::apply(per_channel + "_gradient", {g.dy(), g.in[0], g.in[1], g.in[2]}, g.attrs);
       },
       .prepare = prepare_fake_quant,
       .reference = per_channel_kernel,
       .fast = fast_fake_quant(per_channel, FakeQuantOp::kPerChannel),
       .doc = "TF fake quant with one range per channel of the last axis"});
  register_op({.name = per_channel + "_gradient",
               .num_inputs = 4,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_float(c, 0, "dy");
                 require_float(c, 1, "x");
                 const int64_t d = require_channel_range(c, 1, 2);
                 require_attrs(c);
                 ValueType dx{DType::kF32, require_same_shape(c, 1, 0, "x", "dy")};
                 dx.shape[-1] = merge_dim(dx.shape[-1], d);
                 const ValueType channel{DType::kF32, Shape{d}};
                 return {dx, channel, channel};
               },
               .prepare = prepare_fake_quant,
               .reference = per_channel_gradient_kernel,
               .fast = fast_fake_quant(per_channel + "_gradient", FakeQuantOp::kPerChannelGradient),
               .doc = "dx, dmin[d], dmax[d] of fake_quant_with_min_max_vars_per_channel"});

  register_op({.name = "min_max",
               .num_inputs = 1,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 require_float(c, 0, "x");
                 if (!c.attrs.b("per_channel", false)) {
                   const ValueType scalar{DType::kF32, Shape{}};
                   return {scalar, scalar};
                 }
                 const Shape& x = c.in[0].shape;
                 if (x.rank() < 1)
                   LOWBIT_THROW(ShapeError, c.op,
                                ": argument 'x': expected rank >= 1 for per_channel (channels on "
                                "the last axis) but found shape ",
                                x.str());
                 const ValueType channel{DType::kF32, Shape{x[-1]}};
                 return {channel, channel};
               },
               // Range statistics stop the gradient (see include/lowbit/ops/fake_quant.h).
               .grad = [](const GradCtx&) -> std::vector<Value> { return {Value()}; },
               .prepare = prepare_fake_quant,
               .reference = min_max_kernel,
               .fast = fast_fake_quant("min_max", FakeQuantOp::kMinMax),
               .doc = "min and max of x in one pass, per tensor or per last-axis channel"});
}

}  // namespace detail
}  // namespace lowbit
