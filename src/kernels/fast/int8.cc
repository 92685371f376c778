// Fast int8 conv / fully-connected kernels: a GEMM over output pixels (rows) and output channels
// (columns) with the activations gathered per tile of rows (im2col of a few rows into a small
// per-thread buffer) and the weights packed once into the layout of the ISA's dot product; and a
// channel-vectorised depthwise loop. kernels/fast/int8.h says what is exact and why; the vector
// output stage below says it step by step.
#include "kernels/fast/int8.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <limits>

namespace lowbit::kernels {

namespace {

// Work below which one thread does the whole op: a parallel region costs a few microseconds, and
// tens of microseconds when the host runs the two vCPUs apart (docs/performance.md). 2^22 GEMM
// multiply-adds take ~20 us on one core; the depthwise loop does ~10x fewer per second.
constexpr int64_t kParallelMacs = int64_t{1} << 22;
constexpr int64_t kParallelDepthwiseMacs = int64_t{1} << 19;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

inline bool inside(int64_t v, int64_t size) { return v >= 0 && v < size; }

// Packing tags (QWorkspace::packed_for).
enum PackTag { kTagGemmVnni = 1, kTagGemmAvx2 = 2, kTagDwVnni = 3, kTagDwAvx2 = 4 };

// The parameters of a channel's output stage in QRequantLanes::lanes.
enum RqParam { kM0, kLeft, kHi, kLo, kRight, kMask, kHalf, kZp, kLo2, kHi2, kTshift, kRqParams };

// The lanes of parameter `k` of the 16-channel block holding channel c (c % 16 lanes in).
inline int64_t rq_index(int k, int64_t c) {
  return (c >> 4) * (kRqParams * 16) + k * 16 + (c & 15);
}

// The output stages as lane arrays in packed-column order: column g * cogp + j is output
// channel g * cog + j for j < cog; the other columns get a harmless stage (never stored).
// lo2 / hi2 = act_min / act_max - zp: clamping there and then adding zp is the reference's
// clamp of (int64) MBQM + zp, for every int32 MBQM.
void fill_requant(const std::vector<quant::ConvOutputStage>& st, int64_t groups, int64_t cog,
                  int64_t cogp, QRequantLanes& rq) {
  const int64_t n = round_up(groups * cogp, 16);
  rq.lanes.assign(static_cast<size_t>(n * kRqParams), 0);
  int32_t* l = rq.lanes.data();
  for (int64_t c = 0; c < n; ++c) {
    l[rq_index(kHi, c)] = std::numeric_limits<int32_t>::max();
    l[rq_index(kLo, c)] = std::numeric_limits<int32_t>::min();
    l[rq_index(kTshift, c)] = 31;
  }
  rq.single = !st.empty() && st[0].rounding == quant::Rounding::kSingle;
  rq.any_left = false;
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t j = 0; j < cog; ++j) {
      const quant::ConvOutputStage& s = st[g * cog + j];
      const int64_t c = g * cogp + j;
      const int shift = s.multiplier.shift;
      const int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
      const int32_t mask = static_cast<int32_t>((int64_t{1} << right) - 1);
      rq.any_left = rq.any_left || left > 0;
      l[rq_index(kM0, c)] = s.multiplier.multiplier;
      l[rq_index(kLeft, c)] = left;
      l[rq_index(kHi, c)] = std::numeric_limits<int32_t>::max() >> left;
      l[rq_index(kLo, c)] = std::numeric_limits<int32_t>::min() >> left;
      l[rq_index(kRight, c)] = right;
      l[rq_index(kMask, c)] = mask;
      l[rq_index(kHalf, c)] = mask >> 1;
      l[rq_index(kZp, c)] = s.output_zero_point;
      l[rq_index(kLo2, c)] = s.act_min - s.output_zero_point;
      l[rq_index(kHi2, c)] = s.act_max - s.output_zero_point;
      l[rq_index(kTshift, c)] = 31 - shift;
    }
}

// What a kernel's output stage reads, taken once per call (the int8 stores of a kernel may alias
// anything, so members of the workspace would be reloaded per vector).
struct Rq {
  const int32_t* lanes;
  bool any_left;
};
inline Rq rq_of(const QWorkspace& ws) { return {ws.rq.lanes.data(), ws.rq.any_left}; }

bool stages_ok(const std::vector<quant::ConvOutputStage>& st, int64_t channels) {
  if (static_cast<int64_t>(st.size()) != channels) return false;
  for (const auto& s : st)
    if (s.rounding != st[0].rounding || s.multiplier.shift > 30 || s.multiplier.shift < -31 ||
        s.multiplier.multiplier < 0)
      return false;
  return true;
}

// Whether the workspace already holds the packing of exactly these weights and bias for `tag`;
// if not, records them (the caller then packs).
bool same_weights(QWorkspace& ws, int tag, const int8_t* w, int64_t nw, const int32_t* bias,
                  int64_t nb) {
  const bool same =
      ws.packed_for == tag && static_cast<int64_t>(ws.w_copy.size()) == nw &&
      std::memcmp(ws.w_copy.data(), w, static_cast<size_t>(nw)) == 0 &&
      ws.had_bias == (bias != nullptr) &&
      (bias == nullptr || (static_cast<int64_t>(ws.bias_copy.size()) == nb &&
                           std::memcmp(ws.bias_copy.data(), bias, sizeof(int32_t) * nb) == 0));
  if (same) return true;
  ws.packed_for = tag;
  ws.w_copy.assign(w, w + nw);
  ws.had_bias = bias != nullptr;
  if (bias)
    ws.bias_copy.assign(bias, bias + nb);
  else
    ws.bias_copy.clear();
  return false;
}

// ---- the GEMM driver (plain C++; the tiles are ISA functions) ---------------------------------

struct GemmShape {
  const Conv2DParams* geo = nullptr;  // nullptr: fully connected (rows of x are the A rows)
  int64_t M = 0;                      // rows: output pixels
  int64_t K = 0;                      // reduction depth per group
  int64_t groups = 1, cig = 0, cog = 0, out_c = 0;
  int32_t zp = 0;
};

// One tile: m (<= mr) rows of A (stride a_stride bytes), one panel of nr packed columns; writes
// y[r * ldy + j] for j < nvalid.
using TileFn = void (*)(const uint8_t* a, int64_t a_stride, const uint8_t* b, int64_t kq,
                        const QWorkspace& ws, int64_t col, int8_t* y, int64_t ldy, int nvalid);

struct GemmIsa {
  int tag;
  int kg;                      // taps per 32-bit lane: 4 (u8 quads) or 2 (s16 pairs)
  int mr, nr;                  // tile rows, tile columns
  bool u8;                     // A is u8 = x + 128 (and B s8), else A is s16 = x - zp (and B s16)
  const TileFn* tiles;         // tiles[m - 1], double rounding
  const TileFn* tiles_single;  // single rounding
};

// Packs w ([K][out_c], group g using columns g * cog ...) into panels [g][panel][K / kg][nr][kg]
// of E, zero beyond K and beyond cog; fills bias_eff and the lane stages in the same columns.
template <class E>
void pack_gemm(const GemmIsa& isa, const GemmShape& s, const int8_t* w, const int32_t* bias,
               const std::vector<quant::ConvOutputStage>& stages, QWorkspace& ws) {
  const int64_t kq = round_up(s.K, isa.kg) / isa.kg;
  const int64_t cogp = round_up(s.cog, isa.nr), npan = cogp / isa.nr;
  const int64_t panel = kq * isa.nr * isa.kg;  // elements
  ws.b.assign(static_cast<size_t>(s.groups * npan * panel) * sizeof(E), 0);
  E* b = reinterpret_cast<E*>(ws.b.data());
  ws.bias_eff.assign(static_cast<size_t>(s.groups * cogp), 0);
  for (int64_t g = 0; g < s.groups; ++g)
    for (int64_t j = 0; j < s.cog; ++j) {
      const int64_t oc = g * s.cog + j;
      const int64_t p = j / isa.nr, jj = j % isa.nr;
      E* dst = b + (g * npan + p) * panel + jj * isa.kg;
      uint32_t colsum = 0;
      for (int64_t k = 0; k < s.K; ++k) {
        const int8_t v = w[k * s.out_c + oc];
        dst[(k / isa.kg) * isa.nr * isa.kg + k % isa.kg] = static_cast<E>(v);
        colsum += static_cast<uint32_t>(static_cast<int32_t>(v));
      }
      // Modulo 2^32, as the vector accumulators: bias - (zp + 128) * colsum for u8 activations.
      uint32_t be = bias ? static_cast<uint32_t>(bias[oc]) : 0u;
      if (isa.u8) be -= static_cast<uint32_t>(s.zp + 128) * colsum;
      ws.bias_eff[static_cast<size_t>(g * cogp + j)] = static_cast<int32_t>(be);
    }
  fill_requant(stages, s.groups, s.cog, cogp, ws.rq);
}

// The A rows [r0, r0 + m) of group g: u8 x + 128 (padding zp + 128) or s16 x - zp (padding 0),
// K taps in (kh, kw, ic) order, zeros up to the padded depth kp.
template <class E, bool kU8>
void fill_a(const GemmShape& s, const int8_t* x, int64_t r0, int m, int64_t g, int64_t kp, E* a) {
  // Locals: the stores through E* may alias anything, so members would be reloaded per element.
  const E pad = kU8 ? static_cast<E>(s.zp + 128) : E{0};
  const int32_t off = kU8 ? 128 : -s.zp;
  const int64_t K = s.K, cig = s.cig;
  auto put = [off](E* dst, const int8_t* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<E>(int32_t{src[i]} + off);
  };
  if (!s.geo) {
    for (int r = 0; r < m; ++r) {
      E* row = a + r * kp;
      put(row, x + (r0 + r) * K, K);
      std::fill(row + K, row + kp, E{0});
    }
    return;
  }
  const Conv2DParams p = *s.geo;
  const int8_t* xg = x + g * cig;
  int64_t ow = r0 % p.out_w, oh = (r0 / p.out_w) % p.out_h, n = r0 / (p.out_w * p.out_h);
  for (int r = 0; r < m; ++r) {
    E* row = a + r * kp;
    E* dst = row;
    const int64_t ih0 = oh * p.stride_h - p.pad_top, iw0 = ow * p.stride_w - p.pad_left;
    const int8_t* xn = xg + n * p.in_h * p.in_w * p.in_c;
    for (int64_t kh = 0; kh < p.k_h; ++kh) {
      const int64_t ih = ih0 + kh * p.dil_h;
      if (!inside(ih, p.in_h)) {
        std::fill(dst, dst + p.k_w * cig, pad);
        dst += p.k_w * cig;
        continue;
      }
      const int8_t* xr = xn + ih * p.in_w * p.in_c;
      for (int64_t kw = 0; kw < p.k_w; ++kw, dst += cig) {
        const int64_t iw = iw0 + kw * p.dil_w;
        if (!inside(iw, p.in_w)) {
          std::fill(dst, dst + cig, pad);
          continue;
        }
        const int8_t* src = xr + iw * p.in_c;
        if (cig == 1)
          dst[0] = static_cast<E>(int32_t{src[0]} + off);
        else
          put(dst, src, cig);
      }
    }
    std::fill(row + K, row + kp, E{0});
    if (++ow == p.out_w) {
      ow = 0;
      if (++oh == p.out_h) {
        oh = 0;
        ++n;
      }
    }
  }
}

template <class E, bool kU8>
void run_gemm(const GemmIsa& isa, const GemmShape& s, const int8_t* x, const int8_t* w,
              const int32_t* bias, const std::vector<quant::ConvOutputStage>& stages,
              QWorkspace& ws, int8_t* y) {
  if (s.M == 0 || s.cog == 0) return;
  if (!same_weights(ws, isa.tag, w, s.K * s.out_c, bias, s.groups * s.cog))
    pack_gemm<E>(isa, s, w, bias, stages, ws);
  const int64_t kp = round_up(s.K, isa.kg), kq = kp / isa.kg;
  const int64_t cogp = round_up(s.cog, isa.nr), npan = cogp / isa.nr;
  const int64_t a_stride = kp * static_cast<int64_t>(sizeof(E));  // bytes
  // Each thread's tile on its own cache lines (128-byte multiples from a 64-byte aligned base:
  // no false sharing, also not with the adjacent-line prefetcher).
  const int64_t a_tile = round_up(a_stride * isa.mr, 128);
  const int64_t tiles = (s.M + isa.mr - 1) / isa.mr;
  const int64_t macs = s.M * s.K * s.cog * s.groups;
  const int64_t nt = macs >= kParallelMacs ? std::min<int64_t>(omp_get_max_threads(), tiles) : 1;
  if (static_cast<int64_t>(ws.a.size()) < nt * a_tile + 64)
    ws.a.resize(static_cast<size_t>(nt * a_tile + 64));
  uint8_t* const a_base = ws.a.data() + ((64 - reinterpret_cast<uintptr_t>(ws.a.data()) % 64) % 64);
  const TileFn* fns = ws.rq.single ? isa.tiles_single : isa.tiles;
  const int64_t panel_bytes = kq * isa.nr * isa.kg * static_cast<int64_t>(sizeof(E));
#pragma omp parallel num_threads(static_cast <int>(nt)) if (nt > 1)
  {
    const int64_t tid = omp_get_thread_num(), team = omp_get_num_threads();
    E* a = reinterpret_cast<E*>(a_base + tid * a_tile);
    const int64_t per = tiles / team, extra = tiles % team;
    const int64_t begin = tid * per + std::min(tid, extra);
    const int64_t end = begin + per + (tid < extra ? 1 : 0);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r0 = t * isa.mr;
      const int m = static_cast<int>(std::min<int64_t>(isa.mr, s.M - r0));
      for (int64_t g = 0; g < s.groups; ++g) {
        fill_a<E, kU8>(s, x, r0, m, g, kp, a);
        for (int64_t p = 0; p < npan; ++p) {
          const int nvalid = static_cast<int>(std::min<int64_t>(isa.nr, s.cog - p * isa.nr));
          fns[m - 1](reinterpret_cast<const uint8_t*>(a), a_stride,
                     ws.b.data() + (g * npan + p) * panel_bytes, kq, ws, g * cogp + p * isa.nr,
                     y + r0 * s.out_c + g * s.cog + p * isa.nr, s.out_c, nvalid);
        }
      }
    }
  }
}

GemmShape conv_shape(const QConvParams& q) {
  const Conv2DParams& p = q.geo;
  GemmShape s;
  s.geo = &q.geo;
  s.M = p.n * p.out_h * p.out_w;
  s.groups = p.groups;
  s.cig = p.in_c / p.groups;
  s.cog = p.out_c / p.groups;
  s.K = p.k_h * p.k_w * s.cig;
  s.out_c = p.out_c;
  s.zp = q.input_zero_point;
  return s;
}

GemmShape fc_shape(const QFullyConnectedParams& q) {
  GemmShape s;
  s.M = q.rows;
  s.K = q.depth;
  s.cig = q.depth;
  s.cog = q.units;
  s.out_c = q.units;
  s.zp = q.input_zero_point;
  return s;
}

// Depthwise with one output per input channel and a small window (else the grouped GEMM).
bool is_depthwise(const Conv2DParams& p) {
  return p.groups > 1 && p.groups == p.in_c && p.out_c == p.in_c && p.k_h * p.k_w <= 64;
}

// The depthwise driver: packs w [taps][C] to int32 [taps][Cp] (Cp = C rounded up to `lanes`),
// then splits the (n, oh) output rows over threads.
using DwRowsFn = void (*)(const Conv2DParams& p, const int8_t* x, const QWorkspace& ws, int32_t zp,
                          int8_t* y, int64_t row_begin, int64_t row_end);

// Packing `paired` (the AVX-512 loop): taps in pairs (t, t + 1; an odd count pairs the last with
// a zero tap), channels in blocks of 32, per pair and block two vectors of 16 s16 pairs
// (w[t][ch], w[t + 1][ch]) in the lane order vpunpcklwd / vpunpckhwd give the activations: s32
// lane j = 4L + i of the "lo" vector is channel 32b + 8L + i, of the "hi" vector 32b + 8L + 4 + i.
// Otherwise int32 [taps][cp].
void pack_depthwise_pairs(const int8_t* w, int64_t taps, int64_t C, QWorkspace& ws) {
  const int64_t pairs = (taps + 1) / 2, blocks = (C + 31) / 32;
  ws.b.assign(static_cast<size_t>(pairs * blocks * 64) * sizeof(int16_t), 0);
  int16_t* dst = reinterpret_cast<int16_t*>(ws.b.data());
  for (int64_t pr = 0; pr < pairs; ++pr)
    for (int64_t b = 0; b < blocks; ++b)
      for (int half = 0; half < 2; ++half)
        for (int j = 0; j < 16; ++j) {
          const int64_t ch = b * 32 + 8 * (j / 4) + 4 * half + j % 4;
          int16_t* d = dst + ((pr * blocks + b) * 2 + half) * 32 + 2 * j;
          for (int e = 0; e < 2; ++e) {
            const int64_t t = 2 * pr + e;
            d[e] = ch < C && t < taps ? int16_t{w[t * C + ch]} : int16_t{0};
          }
        }
}

void run_depthwise(int tag, int lanes, bool paired, DwRowsFn rows_double, DwRowsFn rows_single,
                   const QConvParams& q, const int8_t* x, const int8_t* w, const int32_t* bias,
                   int8_t* y) {
  const Conv2DParams& p = q.geo;
  QWorkspace& ws = *q.workspace;
  const int64_t C = p.in_c, taps = p.k_h * p.k_w, cp = round_up(C, lanes);
  if (paired) {
    // A row of zero points for the taps in the padding (x - zp = 0 there).
    ws.a.assign(static_cast<size_t>(cp + 64), static_cast<uint8_t>(q.input_zero_point));
  }
  if (!same_weights(ws, tag, w, taps * C, bias, C)) {
    if (paired) {
      pack_depthwise_pairs(w, taps, C, ws);
    } else {
      ws.b.assign(static_cast<size_t>(taps * cp) * sizeof(int32_t), 0);
      int32_t* w32 = reinterpret_cast<int32_t*>(ws.b.data());
      for (int64_t t = 0; t < taps; ++t)
        for (int64_t c = 0; c < C; ++c) w32[t * cp + c] = w[t * C + c];
    }
    ws.bias_eff.assign(static_cast<size_t>(cp), 0);
    for (int64_t c = 0; c < C; ++c) ws.bias_eff[c] = bias ? bias[c] : 0;
    fill_requant(q.stages, 1, C, cp, ws.rq);
  }
  const int64_t rows = p.n * p.out_h;
  const int64_t macs = rows * p.out_w * C * taps;
  const int64_t nt =
      macs >= kParallelDepthwiseMacs ? std::min<int64_t>(omp_get_max_threads(), rows) : 1;
  const DwRowsFn fn = ws.rq.single ? rows_single : rows_double;
  if (nt <= 1) {
    fn(p, x, ws, q.input_zero_point, y, 0, rows);
    return;
  }
#pragma omp parallel num_threads(static_cast <int>(nt))
  {
    const int64_t tid = omp_get_thread_num(), team = omp_get_num_threads();
    const int64_t per = rows / team, extra = rows % team;
    const int64_t begin = tid * per + std::min(tid, extra);
    fn(p, x, ws, q.input_zero_point, y, begin, begin + per + (tid < extra ? 1 : 0));
  }
}

// The taps of output pixel (n, oh, ow) inside the input: offsets into x (channel 0) and into the
// packed int32 weights [taps][cp]. Returns their count.
constexpr int kMaxDwTaps = 64;
inline int dw_taps(const Conv2DParams& p, int64_t n, int64_t oh, int64_t ow, int64_t cp,
                   int64_t* xoff, int64_t* woff) {
  int nt = 0;
  for (int64_t kh = 0; kh < p.k_h; ++kh) {
    const int64_t ih = oh * p.stride_h - p.pad_top + kh * p.dil_h;
    if (!inside(ih, p.in_h)) continue;
    for (int64_t kw = 0; kw < p.k_w; ++kw) {
      const int64_t iw = ow * p.stride_w - p.pad_left + kw * p.dil_w;
      if (!inside(iw, p.in_w)) continue;
      xoff[nt] = ((n * p.in_h + ih) * p.in_w + iw) * p.in_c;
      woff[nt] = (kh * p.k_w + kw) * cp;
      ++nt;
    }
  }
  return nt;
}

// ---- AVX-512 VNNI ------------------------------------------------------------------------------
//
// The vector output stage, 16 channels (lanes) at a time, equal to ConvOutputStage::apply:
//  double rounding, MBQM = RDPOT(SRDHM(sat(acc * 2^left), m0), right):
//   sat(acc * 2^left): vpsllvd, then INT32_MAX where acc > INT32_MAX >> left and INT32_MIN where
//     acc < INT32_MIN >> left (exactly the lanes whose product leaves int32).
//   SRDHM(a, m) = trunc((a*m + nudge) / 2^31) with nudge = 2^30 (a*m >= 0) or 1 - 2^30 equals
//     floor((a*m + 2^30) / 2^31) for every a*m (for a*m < 0: trunc(v / 2^31) = floor((v + 2^31 -
//     1) / 2^31), v = a*m + 1 - 2^30). The 64-bit products of the even and odd lanes
//     (vpmuldq), + 2^30, shifted right by 31: the low 32 bits of a logical and an arithmetic
//     shift agree, and the result fits int32 (m0 >= 0, so the INT32_MIN * INT32_MIN case of
//     SRDHM cannot occur).
//   RDPOT: (x >> right) + ((x & mask) > (mask >> 1) + (x < 0)), vpsravd and compares.
//  single rounding: (acc * m0 + 2^(tshift - 1)) >> tshift in 64 bits (vpsravq), tshift = 31 -
//   shift in [1, 62].
//  then: clamp to [-2^16, 2^16] (the int32 saturation and the int64 addition of the zero point
//  clamp to the same code: every act range lies inside [-128, 127]), + zp, clamp [act_min,
//  act_max].

// GCC 12 reports the undefined operands of unmasked AVX-512 intrinsics as uninitialized once
// inlined (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")
// clang ignores GCC target pragmas: the same region as a clang attribute (the fuzz build).
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni"))), apply_to = function)
#endif

namespace vnni {

inline __m512i ld(const std::vector<int32_t>& v, int64_t c) {
  return _mm512_loadu_si512(v.data() + c);
}
inline __m512i ldq(const Rq& rq, int k, int64_t c) {
  return _mm512_loadu_si512(rq.lanes + rq_index(k, c));
}

template <bool kSingle>
inline __m512i requant(__m512i acc, const Rq& rq, int64_t c) {
  const __m512i m = ldq(rq, kM0, c);
  __m512i r;
  if constexpr (kSingle) {
    const __m512i ts = ldq(rq, kTshift, c);
    const __m512i one = _mm512_set1_epi64(1);
    const __m512i tse = _mm512_and_si512(ts, _mm512_set1_epi64(0xFFFFFFFFLL));
    const __m512i tso = _mm512_srli_epi64(ts, 32);
    __m512i pe = _mm512_mul_epi32(acc, m);
    __m512i po = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), _mm512_srli_epi64(m, 32));
    pe = _mm512_srav_epi64(_mm512_add_epi64(pe, _mm512_sllv_epi64(one, _mm512_sub_epi64(tse, one))),
                           tse);
    po = _mm512_srav_epi64(_mm512_add_epi64(po, _mm512_sllv_epi64(one, _mm512_sub_epi64(tso, one))),
                           tso);
    // The int32 saturation, narrowed to +-2^16 (the same codes after the clamp below).
    const __m512i lim = _mm512_set1_epi64(1 << 16), nlim = _mm512_set1_epi64(-(1 << 16));
    pe = _mm512_min_epi64(_mm512_max_epi64(pe, nlim), lim);
    po = _mm512_min_epi64(_mm512_max_epi64(po, nlim), lim);
    r = _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
  } else {
    __m512i s = acc;
    if (rq.any_left) {
      s = _mm512_sllv_epi32(acc, ldq(rq, kLeft, c));
      s = _mm512_mask_mov_epi32(s, _mm512_cmpgt_epi32_mask(acc, ldq(rq, kHi, c)),
                                _mm512_set1_epi32(std::numeric_limits<int32_t>::max()));
      s = _mm512_mask_mov_epi32(s, _mm512_cmplt_epi32_mask(acc, ldq(rq, kLo, c)),
                                _mm512_set1_epi32(std::numeric_limits<int32_t>::min()));
    }
    const __m512i r30 = _mm512_set1_epi64(int64_t{1} << 30);
    const __m512i pe = _mm512_add_epi64(_mm512_mul_epi32(s, m), r30);
    const __m512i po =
        _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(s, 32), _mm512_srli_epi64(m, 32)), r30);
    // Odd lanes: the high half of po << 1 is bits 31..62 of po, i.e. (po >> 31) moved up.
    const __m512i x =
        _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 31), _mm512_slli_epi64(po, 1));
    const __m512i rem = _mm512_and_si512(x, ldq(rq, kMask, c));
    const __m512i thr = _mm512_sub_epi32(ldq(rq, kHalf, c), _mm512_srai_epi32(x, 31));
    r = _mm512_srav_epi32(x, ldq(rq, kRight, c));
    r = _mm512_mask_add_epi32(r, _mm512_cmpgt_epi32_mask(rem, thr), r, _mm512_set1_epi32(1));
  }
  r = _mm512_min_epi32(_mm512_max_epi32(r, ldq(rq, kLo2, c)), ldq(rq, kHi2, c));
  return _mm512_add_epi32(r, ldq(rq, kZp, c));
}

inline __mmask16 lanes_mask(int n) {
  return n >= 16  ? static_cast<__mmask16>(0xFFFF)
         : n <= 0 ? static_cast<__mmask16>(0)
                  : static_cast<__mmask16>((1u << n) - 1);
}

inline void store(int8_t* y, __mmask16 k, __m512i v) {
  const __m128i b = _mm512_cvtepi32_epi8(v);
  if (k == 0xFFFF)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y), b);
  else
    _mm_mask_storeu_epi8(y, k, b);
}

constexpr int kMr = 8, kNr = 32;

template <int MR, bool kSingle>
void tile(const uint8_t* a, int64_t as, const uint8_t* b, int64_t kq, const QWorkspace& ws,
          int64_t col, int8_t* y, int64_t ldy, int nvalid) {
  const Rq rq = rq_of(ws);
  __m512i acc0[MR], acc1[MR];
  const __m512i bias0 = ld(ws.bias_eff, col), bias1 = ld(ws.bias_eff, col + 16);
  for (int r = 0; r < MR; ++r) {
    acc0[r] = bias0;
    acc1[r] = bias1;
  }
  for (int64_t q = 0; q < kq; ++q) {
    const __m512i w0 = _mm512_loadu_si512(b + q * 128);
    const __m512i w1 = _mm512_loadu_si512(b + q * 128 + 64);
    for (int r = 0; r < MR; ++r) {
      int32_t quad;
      std::memcpy(&quad, a + r * as + q * 4, 4);
      const __m512i av = _mm512_set1_epi32(quad);
      acc0[r] = _mm512_dpbusd_epi32(acc0[r], av, w0);
      acc1[r] = _mm512_dpbusd_epi32(acc1[r], av, w1);
    }
  }
  const __mmask16 k0 = lanes_mask(nvalid), k1 = lanes_mask(nvalid - 16);
  for (int r = 0; r < MR; ++r) {
    store(y + r * ldy, k0, requant<kSingle>(acc0[r], rq, col));
    if (k1) store(y + r * ldy + 16, k1, requant<kSingle>(acc1[r], rq, col + 16));
  }
}

template <bool kSingle>
constexpr TileFn kTiles[kMr] = {tile<1, kSingle>, tile<2, kSingle>, tile<3, kSingle>,
                                tile<4, kSingle>, tile<5, kSingle>, tile<6, kSingle>,
                                tile<7, kSingle>, tile<8, kSingle>};

const GemmIsa kIsa{kTagGemmVnni, 4, kMr, kNr, true, kTiles<false>, kTiles<true>};

template <bool kSingle>
void dw_rows(const Conv2DParams& geo, const int8_t* x, const QWorkspace& ws, int32_t zp, int8_t* y,
             int64_t row_begin, int64_t row_end) {
  const Conv2DParams p = geo;  // locals: int8 stores may alias anything
  const Rq rq = rq_of(ws);
  const int64_t C = p.in_c, taps = p.k_h * p.k_w, pairs = (taps + 1) / 2, blocks = (C + 31) / 32;
  const int16_t* wp = reinterpret_cast<const int16_t*>(ws.b.data());
  const int32_t* bias = ws.bias_eff.data();
  const int8_t* zrow = reinterpret_cast<const int8_t*>(ws.a.data());
  const __m512i zpv = _mm512_set1_epi16(static_cast<int16_t>(zp));
  const int8_t* src[kMaxDwTaps + 1];
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / p.out_h, oh = row % p.out_h;
    for (int64_t ow = 0; ow < p.out_w; ++ow) {
      // Every tap, the ones in the padding reading the zero-point row.
      for (int64_t kh = 0, t = 0; kh < p.k_h; ++kh) {
        const int64_t ih = oh * p.stride_h - p.pad_top + kh * p.dil_h;
        for (int64_t kw = 0; kw < p.k_w; ++kw, ++t) {
          const int64_t iw = ow * p.stride_w - p.pad_left + kw * p.dil_w;
          src[t] = inside(ih, p.in_h) && inside(iw, p.in_w)
                       ? x + ((n * p.in_h + ih) * p.in_w + iw) * C
                       : zrow;
        }
      }
      src[taps] = zrow;  // the partner of an odd last tap (its weights are 0)
      int8_t* yo = y + (row * p.out_w + ow) * C;
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t c = b * 32;
        const int nc = static_cast<int>(std::min<int64_t>(32, C - c));
        const __mmask32 k = nc >= 32 ? ~__mmask32{0} : (__mmask32{1} << nc) - 1;
        // Two accumulators per half (even and odd pairs): shorter vpdpwssd dependency chains.
        __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
        __m512i lo1 = _mm512_setzero_si512(), hi1 = _mm512_setzero_si512();
        auto pair = [&](int64_t pr, __m512i& l, __m512i& h) {
          const __m512i x0 = _mm512_sub_epi16(
              _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(k, src[2 * pr] + c)), zpv);
          const __m512i x1 = _mm512_sub_epi16(
              _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(k, src[2 * pr + 1] + c)), zpv);
          const int16_t* wb = wp + (pr * blocks + b) * 64;
          // vpdpwssd: the two s16 products of each lane added to it, exact (|sum| <= 2 * 32640).
          l = _mm512_dpwssd_epi32(l, _mm512_unpacklo_epi16(x0, x1), _mm512_loadu_si512(wb));
          h = _mm512_dpwssd_epi32(h, _mm512_unpackhi_epi16(x0, x1), _mm512_loadu_si512(wb + 32));
        };
        int64_t pr = 0;
        for (; pr + 1 < pairs; pr += 2) {
          pair(pr, lo, hi);
          pair(pr + 1, lo1, hi1);
        }
        if (pr < pairs) pair(pr, lo, hi);
        lo = _mm512_add_epi32(lo, lo1);
        hi = _mm512_add_epi32(hi, hi1);
        // Back to channel order: lo holds channels 8L + 0..3 of each 128-bit lane L, hi 8L + 4..7.
        const __m512i t0 = _mm512_shuffle_i64x2(lo, hi, 0x44);  // lo.L0 lo.L1 hi.L0 hi.L1
        const __m512i t1 = _mm512_shuffle_i64x2(lo, hi, 0xEE);  // lo.L2 lo.L3 hi.L2 hi.L3
        const __m512i out0 =
            _mm512_add_epi32(_mm512_shuffle_i64x2(t0, t0, 0xD8), _mm512_loadu_si512(bias + c));
        const __m512i out1 =
            _mm512_add_epi32(_mm512_shuffle_i64x2(t1, t1, 0xD8), _mm512_loadu_si512(bias + c + 16));
        store(yo + c, lanes_mask(nc), requant<kSingle>(out0, rq, c));
        if (nc > 16) store(yo + c + 16, lanes_mask(nc - 16), requant<kSingle>(out1, rq, c + 16));
      }
    }
  }
}

}  // namespace vnni

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options
#pragma GCC diagnostic pop

// ---- AVX2 --------------------------------------------------------------------------------------
// The same output stage on 8 lanes (AVX2 has no 64-bit arithmetic shift: sra(v, s) =
// srl(v ^ sgn, s) ^ sgn with sgn = v < 0 ? ~0 : 0; no masks: compares and blends).

#pragma GCC push_options
#pragma GCC target("avx2")
// clang ignores GCC target pragmas: the same region as a clang attribute (the fuzz build).
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#endif

namespace avx2 {

inline __m256i ld(const std::vector<int32_t>& v, int64_t c) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v.data() + c));
}
inline __m256i ldq(const Rq& rq, int k, int64_t c) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rq.lanes + rq_index(k, c)));
}

inline __m256i sra64(__m256i v, __m256i s) {
  const __m256i sgn = _mm256_cmpgt_epi64(_mm256_setzero_si256(), v);
  return _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(v, sgn), s), sgn);
}
inline __m256i clamp64(__m256i v, __m256i lo, __m256i hi) {
  v = _mm256_blendv_epi8(v, hi, _mm256_cmpgt_epi64(v, hi));
  return _mm256_blendv_epi8(v, lo, _mm256_cmpgt_epi64(lo, v));
}

template <bool kSingle>
inline __m256i requant(__m256i acc, const Rq& rq, int64_t c) {
  const __m256i m = ldq(rq, kM0, c);
  __m256i r;
  if constexpr (kSingle) {
    const __m256i ts = ldq(rq, kTshift, c);
    const __m256i one = _mm256_set1_epi64x(1);
    const __m256i tse = _mm256_and_si256(ts, _mm256_set1_epi64x(0xFFFFFFFFLL));
    const __m256i tso = _mm256_srli_epi64(ts, 32);
    __m256i pe = _mm256_mul_epi32(acc, m);
    __m256i po = _mm256_mul_epi32(_mm256_srli_epi64(acc, 32), _mm256_srli_epi64(m, 32));
    pe = sra64(_mm256_add_epi64(pe, _mm256_sllv_epi64(one, _mm256_sub_epi64(tse, one))), tse);
    po = sra64(_mm256_add_epi64(po, _mm256_sllv_epi64(one, _mm256_sub_epi64(tso, one))), tso);
    const __m256i lim = _mm256_set1_epi64x(1 << 16), nlim = _mm256_set1_epi64x(-(1 << 16));
    pe = clamp64(pe, nlim, lim);
    po = clamp64(po, nlim, lim);
    r = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
  } else {
    __m256i s = acc;
    if (rq.any_left) {
      s = _mm256_sllv_epi32(acc, ldq(rq, kLeft, c));
      s = _mm256_blendv_epi8(s, _mm256_set1_epi32(std::numeric_limits<int32_t>::max()),
                             _mm256_cmpgt_epi32(acc, ldq(rq, kHi, c)));
      s = _mm256_blendv_epi8(s, _mm256_set1_epi32(std::numeric_limits<int32_t>::min()),
                             _mm256_cmpgt_epi32(ldq(rq, kLo, c), acc));
    }
    const __m256i r30 = _mm256_set1_epi64x(int64_t{1} << 30);
    const __m256i pe = _mm256_add_epi64(_mm256_mul_epi32(s, m), r30);
    const __m256i po =
        _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(s, 32), _mm256_srli_epi64(m, 32)), r30);
    const __m256i x = _mm256_blend_epi32(_mm256_srli_epi64(pe, 31), _mm256_slli_epi64(po, 1), 0xAA);
    const __m256i rem = _mm256_and_si256(x, ldq(rq, kMask, c));
    const __m256i thr = _mm256_sub_epi32(ldq(rq, kHalf, c), _mm256_srai_epi32(x, 31));
    r = _mm256_srav_epi32(x, ldq(rq, kRight, c));
    r = _mm256_sub_epi32(r, _mm256_cmpgt_epi32(rem, thr));
  }
  r = _mm256_min_epi32(_mm256_max_epi32(r, ldq(rq, kLo2, c)), ldq(rq, kHi2, c));
  return _mm256_add_epi32(r, ldq(rq, kZp, c));
}

// Stores the first n (1..8) lanes as int8 (every lane already lies in [-128, 127]).
inline void store(int8_t* y, int n, __m256i v) {
  const __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i p8 = _mm_packs_epi16(p16, p16);
  if (n >= 8) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(y), p8);
  } else {
    alignas(16) int8_t tmp[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), p8);
    std::memcpy(y, tmp, static_cast<size_t>(n));
  }
}

constexpr int kMr = 4, kNr = 16;

template <int MR, bool kSingle>
void tile(const uint8_t* a, int64_t as, const uint8_t* b, int64_t kq, const QWorkspace& ws,
          int64_t col, int8_t* y, int64_t ldy, int nvalid) {
  const Rq rq = rq_of(ws);
  __m256i acc0[MR], acc1[MR];
  const __m256i bias0 = ld(ws.bias_eff, col), bias1 = ld(ws.bias_eff, col + 8);
  for (int r = 0; r < MR; ++r) {
    acc0[r] = bias0;
    acc1[r] = bias1;
  }
  for (int64_t q = 0; q < kq; ++q) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + q * 64));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + q * 64 + 32));
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * as + q * 4, 4);
      const __m256i av = _mm256_set1_epi32(pair);
      acc0[r] = _mm256_add_epi32(acc0[r], _mm256_madd_epi16(av, w0));
      acc1[r] = _mm256_add_epi32(acc1[r], _mm256_madd_epi16(av, w1));
    }
  }
  for (int r = 0; r < MR; ++r) {
    store(y + r * ldy, std::min(nvalid, 8), requant<kSingle>(acc0[r], rq, col));
    if (nvalid > 8) store(y + r * ldy + 8, nvalid - 8, requant<kSingle>(acc1[r], rq, col + 8));
  }
}

template <bool kSingle>
constexpr TileFn kTiles[kMr] = {tile<1, kSingle>, tile<2, kSingle>, tile<3, kSingle>,
                                tile<4, kSingle>};

const GemmIsa kIsa{kTagGemmAvx2, 2, kMr, kNr, false, kTiles<false>, kTiles<true>};

template <bool kSingle>
void dw_rows(const Conv2DParams& geo, const int8_t* x, const QWorkspace& ws, int32_t zp, int8_t* y,
             int64_t row_begin, int64_t row_end) {
  const Conv2DParams p = geo;  // locals: int8 stores may alias anything
  const Rq rq = rq_of(ws);
  const int64_t C = p.in_c, cp = round_up(C, 8);
  const int32_t* w32 = reinterpret_cast<const int32_t*>(ws.b.data());
  const int32_t* bias = ws.bias_eff.data();
  const __m256i zpv = _mm256_set1_epi32(zp);
  int64_t xoff[kMaxDwTaps], woff[kMaxDwTaps];
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / p.out_h, oh = row % p.out_h;
    for (int64_t ow = 0; ow < p.out_w; ++ow) {
      const int nt = dw_taps(p, n, oh, ow, cp, xoff, woff);
      int8_t* yo = y + (row * p.out_w + ow) * C;
      for (int64_t c = 0; c < C; c += 8) {
        const int nc = static_cast<int>(std::min<int64_t>(8, C - c));
        __m256i acc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + c));
        for (int t = 0; t < nt; ++t) {
          int64_t bytes = 0;
          std::memcpy(&bytes, x + xoff[t] + c, static_cast<size_t>(nc));
          const __m256i xv = _mm256_sub_epi32(
              _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(static_cast<long long>(bytes))), zpv);
          const __m256i wv =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w32 + woff[t] + c));
          acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(xv, wv));
        }
        store(yo + c, nc, requant<kSingle>(acc, rq, c));
      }
    }
  }
}

}  // namespace avx2

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options

}  // namespace

bool qconv2d_s8_fast_supported(const QConvParams& p) {
  const Conv2DParams& g = p.geo;
  return p.workspace != nullptr && stages_ok(p.stages, g.out_c) && g.groups >= 1 &&
         g.in_c % g.groups == 0 && g.out_c % g.groups == 0 &&
         g.k_h * g.k_w * (g.in_c / g.groups) <= kMaxFastDepth;
}

bool qfully_connected_s8_fast_supported(const QFullyConnectedParams& p) {
  return p.workspace != nullptr && stages_ok(p.stages, p.units) && p.depth <= kMaxFastDepth;
}

void qconv2d_s8__avx512_vnni(const QConvParams& p, const int8_t* x, const int8_t* w,
                             const int32_t* bias, int8_t* y) {
  std::lock_guard<std::mutex> lock(p.workspace->mu);
  if (is_depthwise(p.geo))
    return run_depthwise(kTagDwVnni, 32, true, vnni::dw_rows<false>, vnni::dw_rows<true>, p, x, w,
                         bias, y);
  run_gemm<uint8_t, true>(vnni::kIsa, conv_shape(p), x, w, bias, p.stages, *p.workspace, y);
}

void qconv2d_s8__avx2(const QConvParams& p, const int8_t* x, const int8_t* w, const int32_t* bias,
                      int8_t* y) {
  std::lock_guard<std::mutex> lock(p.workspace->mu);
  if (is_depthwise(p.geo))
    return run_depthwise(kTagDwAvx2, 8, false, avx2::dw_rows<false>, avx2::dw_rows<true>, p, x, w,
                         bias, y);
  run_gemm<int16_t, false>(avx2::kIsa, conv_shape(p), x, w, bias, p.stages, *p.workspace, y);
}

void qfully_connected_s8__avx512_vnni(const QFullyConnectedParams& p, const int8_t* x,
                                      const int8_t* w, const int32_t* bias, int8_t* y) {
  std::lock_guard<std::mutex> lock(p.workspace->mu);
  run_gemm<uint8_t, true>(vnni::kIsa, fc_shape(p), x, w, bias, p.stages, *p.workspace, y);
}

void qfully_connected_s8__avx2(const QFullyConnectedParams& p, const int8_t* x, const int8_t* w,
                               const int32_t* bias, int8_t* y) {
  std::lock_guard<std::mutex> lock(p.workspace->mu);
  run_gemm<int16_t, false>(avx2::kIsa, fc_shape(p), x, w, bias, p.stages, *p.workspace, y);
}

}  // namespace lowbit::kernels
