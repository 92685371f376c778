// Fast kernels of the PyTorch-style affine fake-quant ops and PACT (src/ops/fake_quant_torch.cc):
// the same element formulas (src/ops/fake_quant_torch_common.h) in loops the compiler vectorises,
// cloned for AVX-512, AVX2 and the baseline by GCC function multiversioning (target_clones,
// resolved at load time from the CPU's features; no -march=native). IEEE f32 operations give the
// same result in a vector lane as in scalar code (-ffp-contract=off, no fast-math), and the sums of
// dscale / dzero_point use the reference's order (fixed chunks, 8 double lanes, ordered
// combination), so every output is bit-identical to the reference at any thread count.
//
// Large inputs are split across OpenMP threads by fixed pieces; the parallel loops call the
// cloned functions (an OpenMP region outlined from a cloned function would not be cloned).
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "lowbit/op.h"
#include "ops/fake_quant_torch_common.h"

#define LOWBIT_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

namespace lowbit::detail::fqt {

namespace {

constexpr int64_t kParallelGrain = 1 << 15;  // elements above which loops use threads
constexpr int64_t kPiece = 1 << 14;          // elements per parallel piece
constexpr int64_t kBlock = 512;              // learnable terms buffered per block (multiple of 8)
static_assert(kSumChunk % kBlock == 0 && kBlock % kLanes == 0);

// ---- cloned inner loops ---------------------------------------------------------------------

LOWBIT_SIMD_CLONES
void forward_span(const float* x, float* y, int64_t n, Affine p) {
  for (int64_t i = 0; i < n; ++i) y[i] = fq_forward(x[i], p);
}

LOWBIT_SIMD_CLONES
void backward_span(const float* x, const float* dy, float* dx, int64_t n, Affine p) {
  for (int64_t i = 0; i < n; ++i) dx[i] = fq_backward(x[i], dy[i], p);
}

// Channels-last rows: `rows` rows of C elements, channel c with (scale, inv, zp)[c].
struct ChannelParams {
  const float* scale;
  const float* inv;
  const float* zp;
  float qmin, qmax;
  Affine at(int64_t c) const { return {scale[c], inv[c], zp[c], qmin, qmax}; }
};

LOWBIT_SIMD_CLONES
void forward_rows(const float* x, float* y, int64_t rows, int64_t ch, ChannelParams p) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < ch; ++c) y[r * ch + c] = fq_forward(x[r * ch + c], p.at(c));
}

LOWBIT_SIMD_CLONES
void backward_rows(const float* x, const float* dy, float* dx, int64_t rows, int64_t ch,
                   ChannelParams p) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < ch; ++c) {
      const int64_t e = r * ch + c;
      dx[e] = fq_backward(x[e], dy[e], p.at(c));
    }
}

// Eight double lanes as one GCC vector: lowered to the clone's widest registers, each lane
// adding in the same order as the reference's lane array.
typedef float Floats8 __attribute__((vector_size(32)));
typedef double Lanes __attribute__((vector_size(64)));
static_assert(kLanes == 8);

// Learnable backward over n <= kBlock elements starting at a lane-aligned position: writes dx
// and adds the dscale / dzero_point terms to the lanes (element i at lane i % kLanes).
LOWBIT_SIMD_CLONES
void learnable_block(const float* x, const float* dy, float* dx, int64_t n, Affine p, float g,
                     double* ls, double* lz) {
  float ts[kBlock], tz[kBlock];
  for (int64_t i = 0; i < n; ++i) {
    const LearnableTerms t = learnable_backward(x[i], dy[i], p, g);
    dx[i] = t.dx;
    ts[i] = t.dscale;
    tz[i] = t.dzp;
  }
  Lanes as, az;
  std::memcpy(&as, ls, sizeof as);
  std::memcpy(&az, lz, sizeof az);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Floats8 a, b;
    std::memcpy(&a, ts + i, sizeof a);
    std::memcpy(&b, tz + i, sizeof b);
    as += __builtin_convertvector(a, Lanes);
    az += __builtin_convertvector(b, Lanes);
  }
  std::memcpy(ls, &as, sizeof as);
  std::memcpy(lz, &az, sizeof az);
  for (; i < n; ++i) {
    ls[i % kLanes] += ts[i];
    lz[i % kLanes] += tz[i];
  }
}

LOWBIT_SIMD_CLONES
void pact_span(const float* x, float* y, int64_t n, float alpha, float s) {
  for (int64_t i = 0; i < n; ++i) y[i] = pact_forward(x[i], alpha, s);
}

// PACT backward over n <= kBlock elements at a lane-aligned position (as learnable_block).
LOWBIT_SIMD_CLONES
void pact_block(const float* x, const float* dy, float* dx, int64_t n, float alpha, double* la) {
  float ta[kBlock];
  for (int64_t i = 0; i < n; ++i) {
    dx[i] = pact_dx(x[i], dy[i], alpha);
    ta[i] = pact_dalpha(x[i], dy[i], alpha);
  }
  Lanes acc;
  std::memcpy(&acc, la, sizeof acc);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Floats8 a;
    std::memcpy(&a, ta + i, sizeof a);
    acc += __builtin_convertvector(a, Lanes);
  }
  std::memcpy(la, &acc, sizeof acc);
  for (; i < n; ++i) la[i % kLanes] += ta[i];
}

// Learnable backward, channels last: channels [c0, c1) of `rows` rows of C elements; channel
// c's terms are added to acc_s[c], acc_z[c] row by row.
LOWBIT_SIMD_CLONES
void learnable_rows(const float* x, const float* dy, float* dx, int64_t rows, int64_t ch,
                    int64_t c0, int64_t c1, ChannelParams p, float g, double* acc_s,
                    double* acc_z) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t e = r * ch + c;
      const LearnableTerms t = learnable_backward(x[e], dy[e], p.at(c), g);
      dx[e] = t.dx;
      acc_s[c] += t.dscale;
      acc_z[c] += t.dzp;
    }
}

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
float zero_point_of(float z, const KernelCtx& k, Zp kind) {
  const int64_t lo = k.attrs.i("quant_min"), hi = k.attrs.i("quant_max");
  if (kind == Zp::kRounded) return zero_point_rounded(z, lo, hi);
  if (kind == Zp::kBackward) return zero_point_backward(z, lo, hi);
  return z;
}

Affine tensor_params(const KernelCtx& k, int scale_in, Zp kind) {
  return make_affine(k.in[scale_in].data<float>()[0],
                     zero_point_of(k.in[scale_in + 1].data<float>()[0], k, kind),
                     k.attrs.i("quant_min"), k.attrs.i("quant_max"));
}

// Per-channel parameter arrays (scale, 1/scale, zero point), owned.
struct ChannelArrays {
  std::vector<float> scale, inv, zp;
  float qmin, qmax;
  ChannelParams view() const { return {scale.data(), inv.data(), zp.data(), qmin, qmax}; }
  Affine at(int64_t c) const { return {scale[c], inv[c], zp[c], qmin, qmax}; }
};
ChannelArrays channel_params(const KernelCtx& k, int scale_in, Zp kind) {
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
  a.qmin = static_cast<float>(k.attrs.i("quant_min"));
  a.qmax = static_cast<float>(k.attrs.i("quant_max"));
  return a;
}

void affine_forward_fast(const KernelCtx& k, bool per_channel, Zp kind) {
  const float* x = k.in[0].data<float>();
  float* y = k.out[0].data<float>();
  if (!per_channel) {
    const Affine p = tensor_params(k, 1, kind);
    for_pieces(k.in[0].numel(),
               [&](int64_t b, int64_t e) { forward_span(x + b, y + b, e - b, p); });
    return;
  }
  const ChannelView v = channel_view(k.in[0].shape(), kernel_axis(k));
  const ChannelArrays a = channel_params(k, 1, kind);
  if (v.inner == 1) {
    const int64_t rows_per_piece = std::max<int64_t>(1, kPiece / std::max<int64_t>(1, v.channels));
    const int64_t pieces = (v.outer + rows_per_piece - 1) / rows_per_piece;
    for_rows(pieces, rows_per_piece * v.channels, [&](int64_t k2) {
      const int64_t r0 = k2 * rows_per_piece, r1 = std::min(v.outer, r0 + rows_per_piece);
      forward_rows(x + r0 * v.channels, y + r0 * v.channels, r1 - r0, v.channels, a.view());
    });
    return;
  }
  for_rows(v.outer * v.channels, v.inner, [&](int64_t r) {
    const int64_t base = r * v.inner;
    forward_span(x + base, y + base, v.inner, a.at(r % v.channels));
  });
}

void affine_backward_fast(const KernelCtx& k, bool per_channel) {
  const float* dy = k.in[0].data<float>();
  const float* x = k.in[1].data<float>();
  float* dx = k.out[0].data<float>();
  if (!per_channel) {
    const Affine p = tensor_params(k, 2, Zp::kGiven);
    for_pieces(k.in[1].numel(),
               [&](int64_t b, int64_t e) { backward_span(x + b, dy + b, dx + b, e - b, p); });
    return;
  }
  const ChannelView v = channel_view(k.in[1].shape(), kernel_axis(k));
  const ChannelArrays a = channel_params(k, 2, Zp::kGiven);
  if (v.inner == 1) {
    const int64_t rows_per_piece = std::max<int64_t>(1, kPiece / std::max<int64_t>(1, v.channels));
    const int64_t pieces = (v.outer + rows_per_piece - 1) / rows_per_piece;
    for_rows(pieces, rows_per_piece * v.channels, [&](int64_t k2) {
      const int64_t r0 = k2 * rows_per_piece, r1 = std::min(v.outer, r0 + rows_per_piece);
      const int64_t off = r0 * v.channels;
      backward_rows(x + off, dy + off, dx + off, r1 - r0, v.channels, a.view());
    });
    return;
  }
  for_rows(v.outer * v.channels, v.inner, [&](int64_t r) {
    const int64_t base = r * v.inner;
    backward_span(x + base, dy + base, dx + base, v.inner, a.at(r % v.channels));
  });
}

// Sum of the kLanes lanes in order (a chunk's or a row's total).
double lanes_total(const double* l) {
  double t = l[0];
  for (int i = 1; i < kLanes; ++i) t += l[i];
  return t;
}

// Learnable backward of [0, n) with lanes restarting at 0: adds to ls, lz.
void learnable_range(const float* x, const float* dy, float* dx, int64_t n, const Affine& p,
                     float g, double* ls, double* lz) {
  for (int64_t b = 0; b < n; b += kBlock)
    learnable_block(x + b, dy + b, dx + b, std::min(kBlock, n - b), p, g, ls, lz);
}

void learnable_backward_per_tensor_fast(const KernelCtx& k) {
  const float* dy = k.in[0].data<float>();
  const float* x = k.in[1].data<float>();
  const int64_t n = k.in[1].numel();
  const Affine p = tensor_params(k, 2, Zp::kBackward);
  const float g = grad_factor(k.attrs, n);
  float* dx = k.out[0].data<float>();
  const int64_t chunks = (n + kSumChunk - 1) / kSumChunk;
  std::vector<double> sums(2 * chunks);
#pragma omp parallel for schedule(static) if (n > kParallelGrain && chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b = c * kSumChunk, len = std::min(kSumChunk, n - b);
    double ls[kLanes] = {}, lz[kLanes] = {};
    learnable_range(x + b, dy + b, dx + b, len, p, g, ls, lz);
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

void learnable_backward_per_channel_fast(const KernelCtx& k) {
  const float* dy = k.in[0].data<float>();
  const float* x = k.in[1].data<float>();
  const ChannelView v = channel_view(k.in[1].shape(), kernel_axis(k));
  const ChannelArrays a = channel_params(k, 2, Zp::kRounded);
  const float g = grad_factor(k.attrs, k.in[1].numel());
  float* dx = k.out[0].data<float>();
  std::vector<double> acc_s(v.channels, 0.0), acc_z(v.channels, 0.0);
  const int64_t total = v.outer * v.channels * v.inner;
  if (v.inner == 1) {
    // Each thread takes one contiguous range of channels (whole cache lines of a row) across all
    // rows; a channel's sum runs over the rows in order whatever the split, so the result does
    // not depend on the thread count, and one thread streams the tensor once. Only wide rows are
    // split: two threads sharing rows of 64 channels ran at a quarter of one thread's speed
    // here (bench/fake_quant_torch_bench, learnable_per_channel_backward).
    constexpr int64_t kLine = 16;
    const int threads = total > kParallelGrain && v.channels >= 512 ? omp_get_max_threads() : 1;
    const int64_t lines = (v.channels + kLine - 1) / kLine;
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, lines));
    const int64_t per_part = (lines + parts - 1) / parts * kLine;
#pragma omp parallel for schedule(static) if (parts > 1)
    for (int64_t b = 0; b < parts; ++b) {
      const int64_t c0 = std::min(v.channels, b * per_part);
      const int64_t c1 = std::min(v.channels, c0 + per_part);
      learnable_rows(x, dy, dx, v.outer, v.channels, c0, c1, a.view(), g, acc_s.data(),
                     acc_z.data());
    }
  } else {
#pragma omp parallel for schedule(static) if (total > kParallelGrain && v.channels > 1)
    for (int64_t c = 0; c < v.channels; ++c) {
      const Affine p = a.at(c);
      for (int64_t o = 0; o < v.outer; ++o) {
        const int64_t base = (o * v.channels + c) * v.inner;
        double ls[kLanes] = {}, lz[kLanes] = {};
        learnable_range(x + base, dy + base, dx + base, v.inner, p, g, ls, lz);
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

void pact_fast(const KernelCtx& k) {
  const float* x = k.in[0].data<float>();
  const float a = k.in[1].data<float>()[0];
  const float s = a / levels(k.attrs.i("bits"));
  float* y = k.out[0].data<float>();
  for_pieces(k.in[0].numel(), [&](int64_t b, int64_t e) { pact_span(x + b, y + b, e - b, a, s); });
}

void pact_backward_fast(const KernelCtx& k) {
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
      pact_block(x + b + j, dy + b + j, dx + b + j, std::min(kBlock, len - j), a, la);
    sums[c] = lanes_total(la);
  }
  double da = 0;
  for (int64_t c = 0; c < chunks; ++c) da += sums[c];
  k.out[1].data<float>()[0] = static_cast<float>(da);
}

}  // namespace

void register_fast_fake_quant_torch_kernels() {
  add_fast_kernel("fake_quantize_per_tensor_affine",
                  {.name = "fake_quantize_per_tensor_affine_f32__simd",
                   .run = [](const KernelCtx& k) { affine_forward_fast(k, false, Zp::kGiven); }});
  add_fast_kernel("fake_quantize_per_channel_affine",
                  {.name = "fake_quantize_per_channel_affine_f32__simd",
                   .run = [](const KernelCtx& k) { affine_forward_fast(k, true, Zp::kGiven); }});
  add_fast_kernel("fake_quantize_per_tensor_affine_backward",
                  {.name = "fake_quantize_per_tensor_affine_backward_f32__simd",
                   .run = [](const KernelCtx& k) { affine_backward_fast(k, false); }});
  add_fast_kernel("fake_quantize_per_channel_affine_backward",
                  {.name = "fake_quantize_per_channel_affine_backward_f32__simd",
                   .run = [](const KernelCtx& k) { affine_backward_fast(k, true); }});
  add_fast_kernel("fake_quantize_learnable_per_tensor_affine",
                  {.name = "fake_quantize_learnable_per_tensor_affine_f32__simd",
                   .run = [](const KernelCtx& k) { affine_forward_fast(k, false, Zp::kRounded); }});
  add_fast_kernel("fake_quantize_learnable_per_channel_affine",
                  {.name = "fake_quantize_learnable_per_channel_affine_f32__simd",
                   .run = [](const KernelCtx& k) { affine_forward_fast(k, true, Zp::kRounded); }});
  add_fast_kernel("fake_quantize_learnable_per_tensor_affine_backward",
                  {.name = "fake_quantize_learnable_per_tensor_affine_backward_f32__simd",
                   .run = learnable_backward_per_tensor_fast});
  add_fast_kernel("pact_quantize", {.name = "pact_quantize_f32__simd", .run = pact_fast});
  add_fast_kernel("pact_quantize_backward",
                  {.name = "pact_quantize_backward_f32__simd", .run = pact_backward_fast});
  add_fast_kernel("fake_quantize_learnable_per_channel_affine_backward",
                  {.name = "fake_quantize_learnable_per_channel_affine_backward_f32__simd",
                   .run = learnable_backward_per_channel_fast});
}

}  // namespace lowbit::detail::fqt
