// Fast kernels of the PyTorch-style affine fake-quant ops and PACT (src/ops/quantizer_ops.cc):
// the same element formulas (kernels/quantizer_formulas.h) in loops the compiler
// vectorises (kernels/fast/quantizer_loops.inc), compiled three times: for AVX-512, AVX2
// and the baseline, each listed as its own kernel (__avx512, __avx2, __portable) in the op's
// kernel table; the registry runs the best one the CPU has (no -march=native). IEEE f32 operations
// give the same result in a vector lane as in scalar code (-ffp-contract=off, no fast-math), and
// the sums of dscale / dzero_point use the reference's order (fixed chunks, 8 double lanes, ordered
// combination), so every output is bit-identical to the reference at any thread count.
//
// Large inputs are split across OpenMP threads by fixed pieces; the parallel loops (compiled for
// the baseline) call the ISA's inner loops through a table of function pointers.
#include "kernels/fast/quantizer_ops.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace lowbit::kernels::fqt {

namespace {

constexpr int64_t kParallelGrain = 1 << 15;  // elements above which loops use threads
constexpr int64_t kPiece = 1 << 14;          // elements per parallel piece
constexpr int64_t kBlock = 512;              // learnable terms buffered per block (multiple of 8)
static_assert(kSumChunk % kBlock == 0 && kBlock % kLanes == 0);

// Channels-last rows: `rows` rows of C elements, channel c with (scale, inv, zp)[c].
struct ChannelParams {
  const float* scale;
  const float* inv;
  const float* zp;
  float qmin, qmax;
  Affine at(int64_t c) const { return {scale[c], inv[c], zp[c], qmin, qmax}; }
};

// Eight double lanes as one GCC vector: lowered to the clone's widest registers, each lane
// adding in the same order as the reference's lane array.
typedef float Floats8 __attribute__((vector_size(32)));
typedef double Lanes __attribute__((vector_size(64)));
static_assert(kLanes == 8);

}  // namespace

// The inner loops, once per ISA.
namespace avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f")
// clang ignores GCC target pragmas: the same region as a clang attribute (the fuzz build).
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f"))), apply_to = function)
#endif
#include "kernels/fast/quantizer_loops.inc"
#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options
}  // namespace avx512
namespace avx2 {
#pragma GCC push_options
#pragma GCC target("avx2")
// clang ignores GCC target pragmas: the same region as a clang attribute (the fuzz build).
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#endif
#include "kernels/fast/quantizer_loops.inc"
#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options
}  // namespace avx2
namespace portable {
#include "kernels/fast/quantizer_loops.inc"
}  // namespace portable

namespace {

// One ISA's inner loops.
struct Loops {
  decltype(&portable::forward_span) forward_span;
  decltype(&portable::backward_span) backward_span;
  decltype(&portable::forward_rows) forward_rows;
  decltype(&portable::backward_rows) backward_rows;
  decltype(&portable::learnable_block) learnable_block;
  decltype(&portable::pact_span) pact_span;
  decltype(&portable::pact_block) pact_block;
  decltype(&portable::learnable_rows) learnable_rows;
};
#define LOWBIT_FQT_LOOPS(ns)                                                                       \
  Loops {                                                                                          \
    ns::forward_span, ns::backward_span, ns::forward_rows, ns::backward_rows, ns::learnable_block, \
        ns::pact_span, ns::pact_block, ns::learnable_rows                                          \
  }
const Loops kLoops[] = {LOWBIT_FQT_LOOPS(avx512), LOWBIT_FQT_LOOPS(avx2),
                        LOWBIT_FQT_LOOPS(portable)};
#undef LOWBIT_FQT_LOOPS

// One kernel call: the ISA's loops, the prepared attributes and the tensors.
struct Call {
  const Loops& sp;
  const TorchFakeQuantConfig& cfg;
  std::span<const Tensor> in;
  std::span<Tensor> out;
};

// ---- drivers --------------------------------------------------------------------------------

// Calls f(begin, end) over [0, n) in pieces, on threads when n is large.
template <class F>
void for_pieces(int64_t n, F f) {
  const int64_t pieces = (n + kPiece - 1) / kPiece;
#pragma omp parallel for schedule(static) if (n > kParallelGrain && pieces > 1)
  for (int64_t k = 0; k < pieces; ++k) f(k * kPiece, std::min(n, (k + 1) * kPiece));
}

// Calls f(row) for `rows` rows of `len` elements, on threads when the total is large.
template <class F>
void for_rows(int64_t rows, int64_t len, F f) {
#pragma omp parallel for schedule(static) if (rows * len > kParallelGrain && rows > 1)
  for (int64_t r = 0; r < rows; ++r) f(r);
}

enum class Zp { kGiven, kRounded, kBackward };
float zero_point_of(float z, const Call& k, Zp kind) {
  const int64_t lo = k.cfg.quant_min, hi = k.cfg.quant_max;
  if (kind == Zp::kRounded) return zero_point_rounded(z, lo, hi);
  if (kind == Zp::kBackward) return zero_point_backward(z, lo, hi);
  return z;
}

Affine tensor_params(const Call& k, int scale_in, Zp kind) {
  return make_affine(k.in[scale_in].data<float>()[0],
                     zero_point_of(k.in[scale_in + 1].data<float>()[0], k, kind), k.cfg.quant_min,
                     k.cfg.quant_max);
}

// Per-channel parameter arrays (scale, 1/scale, zero point), owned.
struct ChannelArrays {
  std::vector<float> scale, inv, zp;
  float qmin, qmax;
  ChannelParams view() const { return {scale.data(), inv.data(), zp.data(), qmin, qmax}; }
  Affine at(int64_t c) const { return {scale[c], inv[c], zp[c], qmin, qmax}; }
};
ChannelArrays channel_params(const Call& k, int scale_in, Zp kind) {
  const Tensor& s = k.in[scale_in];
  const float* z = k.in[scale_in + 1].data<float>();
  ChannelArrays a;
  a.scale.assign(s.data<float>(), s.data<float>() + s.numel());
  a.inv.resize(a.scale.size());
  a.zp.resize(a.scale.size());
  for (size_t c = 0; c < a.scale.size(); ++c) {
    a.inv[c] = 1.0f / a.scale[c];
    a.zp[c] = zero_point_of(z[c], k, kind);
  }
  a.qmin = static_cast<float>(k.cfg.quant_min);
  a.qmax = static_cast<float>(k.cfg.quant_max);
  return a;
}

void affine_forward_fast(const Call& k, bool per_channel, Zp kind) {
  const float* x = k.in[0].data<float>();
  float* y = k.out[0].data<float>();
  if (!per_channel) {
    const Affine p = tensor_params(k, 1, kind);
    for_pieces(k.in[0].numel(),
               [&](int64_t b, int64_t e) { k.sp.forward_span(x + b, y + b, e - b, p); });
    return;
  }
  const ChannelView v = channel_view(k.in[0].shape(), k.cfg.axis);
  const ChannelArrays a = channel_params(k, 1, kind);
  if (v.inner == 1) {
    const int64_t rows_per_piece = std::max<int64_t>(1, kPiece / std::max<int64_t>(1, v.channels));
    const int64_t pieces = (v.outer + rows_per_piece - 1) / rows_per_piece;
    for_rows(pieces, rows_per_piece * v.channels, [&](int64_t k2) {
      const int64_t r0 = k2 * rows_per_piece, r1 = std::min(v.outer, r0 + rows_per_piece);
      k.sp.forward_rows(x + r0 * v.channels, y + r0 * v.channels, r1 - r0, v.channels, a.view());
    });
    return;
  }
  for_rows(v.outer * v.channels, v.inner, [&](int64_t r) {
    const int64_t base = r * v.inner;
    k.sp.forward_span(x + base, y + base, v.inner, a.at(r % v.channels));
  });
}

void affine_backward_fast(const Call& k, bool per_channel) {
  const float* dy = k.in[0].data<float>();
  const float* x = k.in[1].data<float>();
  float* dx = k.out[0].data<float>();
  if (!per_channel) {
    const Affine p = tensor_params(k, 2, Zp::kGiven);
    for_pieces(k.in[1].numel(),
               [&](int64_t b, int64_t e) { k.sp.backward_span(x + b, dy + b, dx + b, e - b, p); });
    return;
  }
  const ChannelView v = channel_view(k.in[1].shape(), k.cfg.axis);
  const ChannelArrays a = channel_params(k, 2, Zp::kGiven);
  if (v.inner == 1) {
    const int64_t rows_per_piece = std::max<int64_t>(1, kPiece / std::max<int64_t>(1, v.channels));
    const int64_t pieces = (v.outer + rows_per_piece - 1) / rows_per_piece;
    for_rows(pieces, rows_per_piece * v.channels, [&](int64_t k2) {
      const int64_t r0 = k2 * rows_per_piece, r1 = std::min(v.outer, r0 + rows_per_piece);
      const int64_t off = r0 * v.channels;
      k.sp.backward_rows(x + off, dy + off, dx + off, r1 - r0, v.channels, a.view());
    });
    return;
  }
  for_rows(v.outer * v.channels, v.inner, [&](int64_t r) {
    const int64_t base = r * v.inner;
    k.sp.backward_span(x + base, dy + base, dx + base, v.inner, a.at(r % v.channels));
  });
}

// Sum of the kLanes lanes in order (a chunk's or a row's total).
double lanes_total(const double* l) {
  double t = l[0];
  for (int i = 1; i < kLanes; ++i) t += l[i];
  return t;
}

// Learnable backward of [0, n) with lanes restarting at 0: adds to ls, lz.
void learnable_range(const Loops& sp, const float* x, const float* dy, float* dx, int64_t n,
                     const Affine& p, float g, double* ls, double* lz) {
  for (int64_t b = 0; b < n; b += kBlock)
    sp.learnable_block(x + b, dy + b, dx + b, std::min(kBlock, n - b), p, g, ls, lz);
}

void learnable_backward_per_tensor_fast(const Call& k) {
  const float* dy = k.in[0].data<float>();
  const float* x = k.in[1].data<float>();
  const int64_t n = k.in[1].numel();
  const Affine p = tensor_params(k, 2, Zp::kBackward);
  const float g = grad_factor(k.cfg, n);
  float* dx = k.out[0].data<float>();
  const int64_t chunks = (n + kSumChunk - 1) / kSumChunk;
  std::vector<double> sums(2 * chunks);
#pragma omp parallel for schedule(static) if (n > kParallelGrain && chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b = c * kSumChunk, len = std::min(kSumChunk, n - b);
    double ls[kLanes] = {}, lz[kLanes] = {};
    learnable_range(k.sp, x + b, dy + b, dx + b, len, p, g, ls, lz);
    sums[2 * c] = lanes_total(ls);
    sums[2 * c + 1] = lanes_total(lz);
  }
  double ds = 0, dz = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    ds += sums[2 * c];
    dz += sums[2 * c + 1];
  }
  k.out[1].data<float>()[0] = static_cast<float>(ds);
  k.out[2].data<float>()[0] = static_cast<float>(dz);
}

void learnable_backward_per_channel_fast(const Call& k) {
  const float* dy = k.in[0].data<float>();
  const float* x = k.in[1].data<float>();
  const ChannelView v = channel_view(k.in[1].shape(), k.cfg.axis);
  const ChannelArrays a = channel_params(k, 2, Zp::kRounded);
  const float g = grad_factor(k.cfg, k.in[1].numel());
  float* dx = k.out[0].data<float>();
  std::vector<double> acc_s(v.channels, 0.0), acc_z(v.channels, 0.0);
  const int64_t total = v.outer * v.channels * v.inner;
  if (v.inner == 1) {
    // Each thread takes one contiguous range of channels (whole cache lines of a row) across all
    // rows; a channel's sum runs over the rows in order whatever the split, so the result does
    // not depend on the thread count, and one thread streams the tensor once. Only wide rows are
    // split: two threads sharing rows of 64 channels ran at a quarter of one thread's speed
    // here (bench/quantizer_ops_bench, learnable_per_channel_backward).
    constexpr int64_t kLine = 16;
    const int threads = total > kParallelGrain && v.channels >= 512 ? omp_get_max_threads() : 1;
    const int64_t lines = (v.channels + kLine - 1) / kLine;
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, lines));
    const int64_t per_part = (lines + parts - 1) / parts * kLine;
#pragma omp parallel for schedule(static) if (parts > 1)
    for (int64_t b = 0; b < parts; ++b) {
      const int64_t c0 = std::min(v.channels, b * per_part);
      const int64_t c1 = std::min(v.channels, c0 + per_part);
      k.sp.learnable_rows(x, dy, dx, v.outer, v.channels, c0, c1, a.view(), g, acc_s.data(),
                          acc_z.data());
    }
  } else {
#pragma omp parallel for schedule(static) if (total > kParallelGrain && v.channels > 1)
    for (int64_t c = 0; c < v.channels; ++c) {
      const Affine p = a.at(c);
      for (int64_t o = 0; o < v.outer; ++o) {
        const int64_t base = (o * v.channels + c) * v.inner;
        double ls[kLanes] = {}, lz[kLanes] = {};
        learnable_range(k.sp, x + base, dy + base, dx + base, v.inner, p, g, ls, lz);
        acc_s[c] += lanes_total(ls);
        acc_z[c] += lanes_total(lz);
      }
    }
  }
  float* ds = k.out[1].data<float>();
  float* dz = k.out[2].data<float>();
  for (int64_t c = 0; c < v.channels; ++c) {
    ds[c] = static_cast<float>(acc_s[c]);
    dz[c] = static_cast<float>(acc_z[c]);
  }
}

void pact_fast(const Call& k) {
  const float* x = k.in[0].data<float>();
  const float a = k.in[1].data<float>()[0];
  const float s = a / levels(k.cfg.bits);
  float* y = k.out[0].data<float>();
  for_pieces(k.in[0].numel(),
             [&](int64_t b, int64_t e) { k.sp.pact_span(x + b, y + b, e - b, a, s); });
}

void pact_backward_fast(const Call& k) {
  const float* dy = k.in[0].data<float>();
  const float* x = k.in[1].data<float>();
  const float a = k.in[2].data<float>()[0];
  const int64_t n = k.in[1].numel();
  float* dx = k.out[0].data<float>();
  const int64_t chunks = (n + kSumChunk - 1) / kSumChunk;
  std::vector<double> sums(chunks);
#pragma omp parallel for schedule(static) if (n > kParallelGrain && chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b = c * kSumChunk, len = std::min(kSumChunk, n - b);
    double la[kLanes] = {};
    for (int64_t j = 0; j < len; j += kBlock)
      k.sp.pact_block(x + b + j, dy + b + j, dx + b + j, std::min(kBlock, len - j), a, la);
    sums[c] = lanes_total(la);
  }
  double da = 0;
  for (int64_t c = 0; c < chunks; ++c) da += sums[c];
  k.out[1].data<float>()[0] = static_cast<float>(da);
}

void run(TorchFakeQuantOp op, const Call& k) {
  switch (op) {
    case TorchFakeQuantOp::kPerTensor:
      return affine_forward_fast(k, false, Zp::kGiven);
    case TorchFakeQuantOp::kPerChannel:
      return affine_forward_fast(k, true, Zp::kGiven);
    case TorchFakeQuantOp::kPerTensorBackward:
      return affine_backward_fast(k, false);
    case TorchFakeQuantOp::kPerChannelBackward:
      return affine_backward_fast(k, true);
    case TorchFakeQuantOp::kLearnablePerTensor:
      return affine_forward_fast(k, false, Zp::kRounded);
    case TorchFakeQuantOp::kLearnablePerChannel:
      return affine_forward_fast(k, true, Zp::kRounded);
    case TorchFakeQuantOp::kLearnablePerTensorBackward:
      return learnable_backward_per_tensor_fast(k);
    case TorchFakeQuantOp::kLearnablePerChannelBackward:
      return learnable_backward_per_channel_fast(k);
    case TorchFakeQuantOp::kPact:
      return pact_fast(k);
    case TorchFakeQuantOp::kPactBackward:
      return pact_backward_fast(k);
  }
}

}  // namespace

void fake_quantize_f32__avx512(TorchFakeQuantOp op, const TorchFakeQuantConfig& config,
                               std::span<const Tensor> in, std::span<Tensor> out) {
  run(op, {kLoops[0], config, in, out});
}
void fake_quantize_f32__avx2(TorchFakeQuantOp op, const TorchFakeQuantConfig& config,
                             std::span<const Tensor> in, std::span<Tensor> out) {
  run(op, {kLoops[1], config, in, out});
}
void fake_quantize_f32__portable(TorchFakeQuantOp op, const TorchFakeQuantConfig& config,
                                 std::span<const Tensor> in, std::span<Tensor> out) {
  run(op, {kLoops[2], config, in, out});
}

}  // namespace lowbit::kernels::fqt
