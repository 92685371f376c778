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
constexpr int64_t kParallelDepthwiseQuadMacs = int64_t{1} << 21;  // the quad loop: ~5x faster

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

inline bool inside(int64_t v, int64_t size) { return v >= 0 && v < size; }

// Packing tags (QWorkspace::packed_for).
enum PackTag {
  kTagGemmVnni = 1,
  kTagGemmAvx2 = 2,
  kTagDwVnni = 3,
  kTagDwAvx2 = 4,
  kTagDwQuadVnni = 5,
  kTagFewCinVnni = 6
};

// The parameters of a channel's output stage in QRequantLanes::lanes.
// kM0odd: lane 2i holds the m0 of lane 2i + 1 (vpmuldq reads the even lanes); kRnd: 2^(right - 1)
// (0 for right == 0), for the lean output stage (rq_lean).
enum RqParam {
  kM0,
  kLeft,
  kHi,
  kLo,
  kRight,
  kMask,
  kHalf,
  kZp,
  kLo2,
  kHi2,
  kTshift,
  kM0odd,
  kRnd,
  kRqParams
};

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
      l[rq_index(kRnd, c)] = right > 0 ? int32_t{1} << (right - 1) : 0;
    }
  for (int64_t c = 0; c < n; c += 2) l[rq_index(kM0odd, c)] = l[rq_index(kM0, c + 1)];
  rq.lean = false;
}

// Whether the lean output stage (vnni::rq_lean) equals the full one for these stages: double
// rounding, no left shift, a right shift of at least 1 in every channel, and every accumulator
// within +-2^29 (|bias| + depth * 255 * 128 bounds it: |x - zp| <= 255, |w| <= 128), so that the
// SRDHM result x (|x| <= |acc|) plus 2^(right - 1) cannot leave int32.
void set_lean(QRequantLanes& rq, const std::vector<quant::ConvOutputStage>& st, const int32_t* bias,
              int64_t depth) {
  rq.lean = false;
  if (rq.single || rq.any_left || depth > (int64_t{1} << 20)) return;
  const int64_t limit = (int64_t{1} << 29) - depth * 255 * 128;
  for (size_t c = 0; c < st.size(); ++c) {
    if (st[c].multiplier.shift >= 0) return;
    const int64_t b = bias ? bias[c] : 0;
    if (b > limit || -b > limit) return;
  }
  rq.lean = true;
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
// if not, records them (the caller then packs). Constant weights are compared only until packed.
bool same_weights(QWorkspace& ws, int tag, const int8_t* w, int64_t nw, const int32_t* bias,
                  int64_t nb) {
  if (ws.constant_weights && ws.packed_for == tag) return true;
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
  // A conv whose A rows are the input's pixels as they lie (1x1, stride 1, no padding, one
  // group): row r is x + r * K, as for a fully connected layer.
  bool rows_are_pixels = false;
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
  const TileFn* tiles_lean;    // double rounding where set_lean holds; nullptr: use tiles
  // Copies n codes as u8 x + 128 (the im2col of the u8 ISAs in the ISA's vectors); nullptr: a
  // plain loop.
  void (*put_u8)(uint8_t* dst, const int8_t* src, int64_t n);
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
  set_lean(ws.rq, stages, bias, s.K);
}

// The A rows [r0, r0 + m) of group g: u8 x + 128 (padding zp + 128) or s16 x - zp (padding 0),
// K taps in (kh, kw, ic) order, zeros up to the padded depth kp.
// A window row whose k_w taps are all inside the input is one run of k_w * cig codes when the
// taps are adjacent (groups == 1, dil_w == 1): copied at once.
template <class E, bool kU8>
void fill_a(const GemmShape& s, const int8_t* x, int64_t r0, int m, int64_t g, int64_t kp, E* a,
            void (*put_u8)(uint8_t*, const int8_t*, int64_t)) {
  // Locals: the stores through E* may alias anything, so members would be reloaded per element.
  const E pad = kU8 ? static_cast<E>(s.zp + 128) : E{0};
  const int32_t off = kU8 ? 128 : -s.zp;
  const int64_t K = s.K, cig = s.cig;
  auto put = [off, put_u8](E* dst, const int8_t* src, int64_t n) {
    if constexpr (kU8) {
      if (put_u8) return put_u8(reinterpret_cast<uint8_t*>(dst), src, n);
    }
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<E>(int32_t{src[i]} + off);
  };
  if (!s.geo || s.rows_are_pixels) {
    if (kp == K) {  // one run: the tile's rows are adjacent in x and in a
      put(a, x + r0 * K, m * K);
      return;
    }
    for (int r = 0; r < m; ++r) {
      E* row = a + r * kp;
      put(row, x + (r0 + r) * K, K);
      std::fill(row + K, row + kp, E{0});
    }
    return;
  }
  const Conv2DParams p = *s.geo;
  const bool adjacent = p.groups == 1 && p.dil_w == 1;
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
      if (adjacent && iw0 >= 0 && iw0 + p.k_w <= p.in_w) {
        // The window row of the pixel a tile ahead (the next tile reads it; the input streams).
        __builtin_prefetch(xr + (iw0 + m * p.stride_w) * p.in_c);
        __builtin_prefetch(xr + (iw0 + m * p.stride_w) * p.in_c + 64);
        put(dst, xr + iw0 * p.in_c, p.k_w * cig);
        dst += p.k_w * cig;
        continue;
      }
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
  const TileFn* fns = ws.rq.single                   ? isa.tiles_single
                      : ws.rq.lean && isa.tiles_lean ? isa.tiles_lean
                                                     : isa.tiles;
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
        fill_a<E, kU8>(s, x, r0, m, g, kp, a, isa.put_u8);
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
  s.rows_are_pixels = p.k_h == 1 && p.k_w == 1 && p.stride_h == 1 && p.stride_w == 1 &&
                      p.pad_top == 0 && p.pad_left == 0 && p.groups == 1 && p.out_h == p.in_h &&
                      p.out_w == p.in_w;
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
#pragma clang attribute push( \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni"))), apply_to = function)
#endif

// The output-stage helpers are forced inline: a call between a tile's loop and its stores makes
// every accumulator a spill (GCC inlined rq_vec in some tiles and not in others; the 1x1 convs
// with 16-32 input channels then spent more time saving registers than multiplying).
#define LOWBIT_VNNI_INLINE inline __attribute__((always_inline))

namespace vnni {

// acc + the four u8 x s8 products of each 32-bit lane of a and b (vpdpbusd), in place. GCC 12
// allocates registers for the intrinsic's result apart from its accumulator: in a tile of 16
// accumulators that became a register copy per vpdpbusd and a spill per iteration (the 8x32
// GEMM tile ran at ~70% of the core's peak). Tying the accumulator (+v) keeps it in place.
LOWBIT_VNNI_INLINE __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

LOWBIT_VNNI_INLINE __m512i ld(const std::vector<int32_t>& v, int64_t c) {
  return _mm512_loadu_si512(v.data() + c);
}
LOWBIT_VNNI_INLINE __m512i ldq(const Rq& rq, int k, int64_t c) {
  return _mm512_loadu_si512(rq.lanes + rq_index(k, c));
}

template <bool kSingle>
LOWBIT_VNNI_INLINE __m512i requant(__m512i acc, const Rq& rq, int64_t c) {
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

LOWBIT_VNNI_INLINE __mmask16 lanes_mask(int n) {
  return n >= 16  ? static_cast<__mmask16>(0xFFFF)
         : n <= 0 ? static_cast<__mmask16>(0)
                  : static_cast<__mmask16>((1u << n) - 1);
}

LOWBIT_VNNI_INLINE void store(int8_t* y, __mmask16 k, __m512i v) {
  const __m128i b = _mm512_cvtepi32_epi8(v);
  if (k == 0xFFFF)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y), b);
  else
    _mm_mask_storeu_epi8(y, k, b);
}

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

// ---- depthwise: four kernel rows per vpdpbusd lane ---------------------------------------------
// For one output row and a chunk of 64 output channels, the input columns the row's windows
// touch are transposed once into quads S[g][col][oc][k] = u8 (x + 128) of kernel row 4g + k
// (padding, and kernel rows past k_h, read the zero point: zp + 128). An output pixel is then
// k_w * ceil(k_h / 4) vpdpbusd per 16 channels against the weights packed [g][kw][oc][k]
// (zero past k_h), and a column built once serves every window over it. The bias absorbs
// -(zp + 128) * sum w over all taps, so a tap in the padding (zp + 128) contributes 0, as the
// reference's skipped tap: the sum is the reference's exactly (mod 2^32).

// The lean output stage's lane parameters of one 16-channel block, loaded once per block.
struct RqVec {
  __m512i m, modd, rnd, right, lo2, hi2, zp;
};
LOWBIT_VNNI_INLINE RqVec rq_vec(const Rq& rq, int64_t c) {
  return {ldq(rq, kM0, c),  ldq(rq, kM0odd, c), ldq(rq, kRnd, c), ldq(rq, kRight, c),
          ldq(rq, kLo2, c), ldq(rq, kHi2, c),   ldq(rq, kZp, c)};
}

// The double-rounding output stage when set_lean holds (no left shift, right >= 1, |acc| <=
// 2^29), in fewer shift and shuffle operations (Zen 4 runs those on two of its four vector pipes):
//  SRDHM(acc, m0) = floor((acc m0 + 2^30) / 2^31) = floor((2 acc m0 + 2^31) / 2^32): 2 acc fits
//   int32, so x is the high dword of the 64-bit 2 acc m0 + 2^31 of the even lanes and of the odd
//   lanes (vpmuldq each), gathered by one vpermt2d; it fits int32 as |x| <= |acc|.
//  RDPOT(x, right) = (x + 2^(right - 1) - s) >> right (arithmetic), s = 1 if x < 0: with x = q *
//   2^right + rem, 0 <= rem < 2^right, the sum reaches (q + 1) * 2^right exactly when rem >
//   (2^(right-1) - 1) + s, gemmlowp's test (remainder > threshold); |x| + 2^30 stays in int32.
//   x < 0 exactly when acc < 0, except x == 0 for acc = -1 and m0 = 2^30, where the result is 0
//   with either s (right >= 1): s comes from a compare of acc.
LOWBIT_VNNI_INLINE __m512i rq_lean(__m512i acc, const RqVec& v) {
  const __m512i r31 = _mm512_set1_epi64(int64_t{1} << 31);
  const __m512i hi = _mm512_set_epi32(31, 15, 29, 13, 27, 11, 25, 9, 23, 7, 21, 5, 19, 3, 17, 1);
  const __m512i a2 = _mm512_add_epi32(acc, acc);
  const __m512i pe = _mm512_add_epi64(_mm512_mul_epi32(a2, v.m), r31);
  const __m512i po = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(a2, 32), v.modd), r31);
  const __m512i x = _mm512_permutex2var_epi32(pe, hi, po);
  const __mmask16 neg = _mm512_cmplt_epi32_mask(acc, _mm512_setzero_si512());
  const __m512i t = _mm512_add_epi32(x, v.rnd);
  __m512i r = _mm512_srav_epi32(_mm512_mask_sub_epi32(t, neg, t, _mm512_set1_epi32(1)), v.right);
  r = _mm512_min_epi32(_mm512_max_epi32(r, v.lo2), v.hi2);
  return _mm512_add_epi32(r, v.zp);
}

// kMode: 0 double rounding, 1 single, 2 lean (double rounding where set_lean holds).
template <int kMode>
LOWBIT_VNNI_INLINE __m512i rq_mode(__m512i acc, const Rq& rq, const RqVec& v, int64_t c) {
  if constexpr (kMode == 2)
    return rq_lean(acc, v);
  else
    return requant<kMode == 1>(acc, rq, c);
}
template <int kMode>
LOWBIT_VNNI_INLINE RqVec rq_vec_for(const Rq& rq, int64_t c) {
  if constexpr (kMode == 2) return rq_vec(rq, c);
  return RqVec{};
}

constexpr int kMr = 8, kNr = 32;

void put_u8(uint8_t* dst, const int8_t* src, int64_t n) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)
    _mm512_storeu_si512(dst + i, _mm512_xor_si512(_mm512_loadu_si512(src + i), flip));
  if (i < n) {
    const __mmask64 k = (__mmask64{1} << (n - i)) - 1;
    _mm512_mask_storeu_epi8(dst + i, k,
                            _mm512_xor_si512(_mm512_maskz_loadu_epi8(k, src + i), flip));
  }
}

// kMode as rq_mode: 0 double rounding, 1 single, 2 lean (pack_gemm's set_lean).
template <int MR, int kMode>
void tile(const uint8_t* a, int64_t as, const uint8_t* b, int64_t kq, const QWorkspace& ws,
          int64_t col, int8_t* y, int64_t ldy, int nvalid) {
  const Rq rq = rq_of(ws);
  __m512i acc0[MR], acc1[MR];
  const __m512i bias0 = ld(ws.bias_eff, col), bias1 = ld(ws.bias_eff, col + 16);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    acc0[r] = bias0;
    acc1[r] = bias1;
  }
  for (int64_t q = 0; q < kq; ++q) {
    const __m512i w0 = _mm512_loadu_si512(b + q * 128);
    const __m512i w1 = _mm512_loadu_si512(b + q * 128 + 64);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      int32_t quad;
      std::memcpy(&quad, a + r * as + q * 4, 4);
      const __m512i av = _mm512_set1_epi32(quad);
      acc0[r] = dpbusd(acc0[r], av, w0);
      acc1[r] = dpbusd(acc1[r], av, w1);
    }
  }
  const __mmask16 k0 = lanes_mask(nvalid), k1 = lanes_mask(nvalid - 16);
  const RqVec v0 = rq_vec_for<kMode>(rq, col);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) store(y + r * ldy, k0, rq_mode<kMode>(acc0[r], rq, v0, col));
  if (k1) {
    const RqVec v1 = rq_vec_for<kMode>(rq, col + 16);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
      store(y + r * ldy + 16, k1, rq_mode<kMode>(acc1[r], rq, v1, col + 16));
  }
}

template <int kMode>
constexpr TileFn kTiles[kMr] = {tile<1, kMode>, tile<2, kMode>, tile<3, kMode>, tile<4, kMode>,
                                tile<5, kMode>, tile<6, kMode>, tile<7, kMode>, tile<8, kMode>};

const GemmIsa kIsa{kTagGemmVnni, 4, kMr, kNr, true, kTiles<0>, kTiles<1>, kTiles<2>, put_u8};

constexpr int64_t kMaxQuadRows = 16;  // k_h of the depthwise quad kernel (4 row groups)

// Channel chunks: the output channels below round_down(out_c, 64) in chunks of 64 whose quads
// stay in the lane order of the in-lane unpacks (no transpose): vector j of a column holds, in
// dword 4L + i, channel c0 + 16L + 4j + i. The weights, bias and output stages are packed in that
// "virtual" order, and the int8 results come back to channel order by vpackssdw / vpacksswb
// (lane L of packs(packs(r0, r1), packs(r2, r3)) is r0.L r1.L r2.L r3.L: channels 16L .. 16L +
// 15). The rest in chunks of 16 in channel order.
inline int64_t dw_full(int64_t oc_n) { return oc_n / 64 * 64; }
inline int64_t dw_real(int64_t v, int64_t full) {
  if (v >= full) return v;
  const int64_t c0 = v & ~int64_t{63}, u = v & 63;
  return c0 + 16 * ((u >> 2) & 3) + 4 * (u >> 4) + (u & 3);
}

// The quads of four input rows src[0..3] for a chunk: 64 channels from c0 in virtual order, or
// 16 (nvalid of them real, the rest 0: their weights are 0) in channel order;
// dst[4 * v + k] = src[k][channel of v] ^ 0x80.
inline void build_quads64(const int8_t* const* src, int64_t c0, bool four, uint8_t* dst) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i r0 = _mm512_xor_si512(_mm512_loadu_si512(src[0] + c0), flip);
  const __m512i r1 = _mm512_xor_si512(_mm512_loadu_si512(src[1] + c0), flip);
  const __m512i r2 = _mm512_xor_si512(_mm512_loadu_si512(src[2] + c0), flip);
  const __m512i r3 = four ? _mm512_xor_si512(_mm512_loadu_si512(src[3] + c0), flip) : r2;
  // Per 128-bit lane L: a0 / a1 hold the (row 0, row 1) byte pairs of channels 16L + 0..7 /
  // 8..15, b0 / b1 those of rows 2, 3; q_j the quads of channels 16L + 4j .. 4j + 3.
  const __m512i a0 = _mm512_unpacklo_epi8(r0, r1), a1 = _mm512_unpackhi_epi8(r0, r1);
  const __m512i b0 = _mm512_unpacklo_epi8(r2, r3), b1 = _mm512_unpackhi_epi8(r2, r3);
  _mm512_storeu_si512(dst, _mm512_unpacklo_epi16(a0, b0));
  _mm512_storeu_si512(dst + 64, _mm512_unpackhi_epi16(a0, b0));
  _mm512_storeu_si512(dst + 128, _mm512_unpacklo_epi16(a1, b1));
  _mm512_storeu_si512(dst + 192, _mm512_unpackhi_epi16(a1, b1));
}
inline void build_quads16(const int8_t* const* src, int64_t c0, int64_t nvalid, bool four,
                          uint8_t* dst) {
  const __mmask16 k = lanes_mask(static_cast<int>(std::min<int64_t>(16, nvalid)));
  const __m128i flip = _mm_set1_epi8(static_cast<char>(0x80));
  const __m128i r0 = _mm_xor_si128(_mm_maskz_loadu_epi8(k, src[0] + c0), flip);
  const __m128i r1 = _mm_xor_si128(_mm_maskz_loadu_epi8(k, src[1] + c0), flip);
  const __m128i r2 = _mm_xor_si128(_mm_maskz_loadu_epi8(k, src[2] + c0), flip);
  const __m128i r3 = four ? _mm_xor_si128(_mm_maskz_loadu_epi8(k, src[3] + c0), flip) : r2;
  const __m128i a0 = _mm_unpacklo_epi8(r0, r1), a1 = _mm_unpackhi_epi8(r0, r1);
  const __m128i b0 = _mm_unpacklo_epi8(r2, r3), b1 = _mm_unpackhi_epi8(r2, r3);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_unpacklo_epi16(a0, b0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 16), _mm_unpackhi_epi16(a0, b0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 32), _mm_unpacklo_epi16(a1, b1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 48), _mm_unpackhi_epi16(a1, b1));
}

// The lean stage of a 64-channel chunk up to the int8 codes in channel order: the RDPOT results
// of the four virtual vectors packed with signed saturation to int16, plus the zero point
// (saturating), packed to int8, clamped to [act_min, act_max] bytewise. Equal to clamping the
// int32 (x + zp): every act range lies inside [-128, 127], so saturating first changes nothing
// (|x| >= 2^15 saturates to a code beyond the range either way).
inline __m512i dw_lean64(const __m512i* acc, const Rq& rq, int64_t c0, const uint8_t* epi) {
  // The four blocks' lanes follow each other: one base pointer, constant offsets.
  const int32_t* lp = rq.lanes + rq_index(0, c0);
  // The arithmetic of rq_lean, then the epilogue above.
  const __m512i r31 = _mm512_set1_epi64(int64_t{1} << 31);
  const __m512i hi = _mm512_set_epi32(31, 15, 29, 13, 27, 11, 25, 9, 23, 7, 21, 5, 19, 3, 17, 1);
  __m512i x[4];
  for (int j = 0; j < 4; ++j) {
    const int32_t* l = lp + j * (kRqParams * 16);
    const __m512i a2 = _mm512_add_epi32(acc[j], acc[j]);
    const __m512i pe =
        _mm512_add_epi64(_mm512_mul_epi32(a2, _mm512_loadu_si512(l + kM0 * 16)), r31);
    const __m512i po = _mm512_add_epi64(
        _mm512_mul_epi32(_mm512_srli_epi64(a2, 32), _mm512_loadu_si512(l + kM0odd * 16)), r31);
    const __m512i sx = _mm512_permutex2var_epi32(pe, hi, po);
    const __mmask16 neg = _mm512_cmplt_epi32_mask(acc[j], _mm512_setzero_si512());
    const __m512i t = _mm512_add_epi32(sx, _mm512_loadu_si512(l + kRnd * 16));
    x[j] = _mm512_srav_epi32(_mm512_mask_sub_epi32(t, neg, t, _mm512_set1_epi32(1)),
                             _mm512_loadu_si512(l + kRight * 16));
  }
  const __m512i p01 = _mm512_adds_epi16(_mm512_packs_epi32(x[0], x[1]), _mm512_loadu_si512(epi));
  const __m512i p23 =
      _mm512_adds_epi16(_mm512_packs_epi32(x[2], x[3]), _mm512_loadu_si512(epi + 64));
  const __m512i b = _mm512_packs_epi16(p01, p23);
  return _mm512_min_epi8(_mm512_max_epi8(b, _mm512_loadu_si512(epi + 128)),
                         _mm512_loadu_si512(epi + 192));
}

template <int kMode>
void dwq_rows(const Conv2DParams& geo, const int8_t* x, const QWorkspace& ws, const int8_t* zrow,
              uint8_t* s, int8_t* y, int64_t row_begin, int64_t row_end) {
  const Conv2DParams p = geo;  // locals: int8 stores may alias anything
  const Rq rq = rq_of(ws);
  const int64_t C = p.in_c, oc_n = p.out_c, mult = oc_n / C, ocp = round_up(oc_n, 64);
  const int64_t full = dw_full(oc_n);
  const int64_t groups4 = (p.k_h + 3) / 4, kw_n = p.k_w, sw = p.stride_w, dw = p.dil_w;
  const int64_t wp = (p.out_w - 1) * sw + (kw_n - 1) * dw + 1;
  const int8_t* wq = reinterpret_cast<const int8_t*>(ws.b.data());
  const int32_t* bias = ws.bias_eff.data();
  const uint8_t* epi = ws.epi.data();
  const int8_t* rowp[kMaxQuadRows];
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / p.out_h, oh = row % p.out_h;
    for (int64_t kh = 0; kh < groups4 * 4; ++kh) {
      const int64_t ih = oh * p.stride_h - p.pad_top + kh * p.dil_h;
      rowp[kh] = kh < p.k_h && inside(ih, p.in_h) ? x + (n * p.in_h + ih) * p.in_w * C : nullptr;
    }
    int8_t* yrow = y + row * p.out_w * oc_n;
    for (int64_t c0 = 0; c0 < oc_n;) {
      const bool wide = c0 < full;
      const int64_t cw = wide ? 64 : 16, cs = 4 * cw;  // channels, bytes per column
      // The quads of every column the row's windows touch (the padding: zero points).
      for (int64_t g = 0; g < groups4; ++g) {
        const bool four = 4 * g + 3 < p.k_h;
        for (int64_t col = 0; col < wp; ++col) {
          const int64_t iw = col - p.pad_left;
          const bool in = inside(iw, p.in_w);
          const int8_t* src[4];
          for (int k = 0; k < 4; ++k)
            src[k] = in && rowp[4 * g + k] ? rowp[4 * g + k] + iw * C : zrow;
          uint8_t* dst = s + (g * wp + col) * cs;
          if (mult == 1 && wide) {
            build_quads64(src, c0, four, dst);
          } else if (mult == 1) {
            build_quads16(src, c0, C - c0, four, dst);
          } else {
            for (int64_t v = 0; v < cw; ++v) {
              const int64_t oc = dw_real(c0 + v, full);
              for (int k = 0; k < 4; ++k)
                dst[4 * v + k] = oc < oc_n ? static_cast<uint8_t>(src[k][oc / mult] ^ 0x80) : 0x80;
            }
          }
        }
      }
      auto acc_at = [&](int64_t ow, int64_t j) {
        const int64_t c = c0 + 16 * j;
        const uint8_t* s0 = s + ow * sw * cs + 64 * j;
        __m512i acc = _mm512_loadu_si512(bias + c);
        for (int64_t g = 0; g < groups4; ++g)
          for (int64_t kw = 0; kw < kw_n; ++kw)
            acc = dpbusd(acc, _mm512_loadu_si512(s0 + (g * wp + kw * dw) * cs),
                         _mm512_loadu_si512(wq + ((g * kw_n + kw) * ocp + c) * 4));
        return acc;
      };
      if (wide && groups4 == 1 && kw_n == 3) {
        // The common 3x3: the 12 weight vectors of the chunk in registers, one base pointer each
        // for the columns, the output stages and the output.
        const uint8_t* e = epi + (c0 / 64) * 256;
        __m512i wv[4][3];
        for (int j = 0; j < 4; ++j)
          for (int kw = 0; kw < 3; ++kw)
            wv[j][kw] = _mm512_loadu_si512(wq + (kw * ocp + c0 + 16 * j) * 4);
        const int32_t* bc = bias + c0;
        const int64_t step = sw * cs, d1 = dw * cs;
        const uint8_t* s0 = s;
        int8_t* yo = yrow + c0;
        for (int64_t ow = 0; ow < p.out_w; ++ow, s0 += step, yo += oc_n) {
          __m512i acc[4];
          for (int j = 0; j < 4; ++j) {
            __m512i a = _mm512_loadu_si512(bc + 16 * j);
            a = dpbusd(a, _mm512_load_si512(s0 + 64 * j), wv[j][0]);
            a = dpbusd(a, _mm512_load_si512(s0 + d1 + 64 * j), wv[j][1]);
            acc[j] = dpbusd(a, _mm512_load_si512(s0 + 2 * d1 + 64 * j), wv[j][2]);
          }
          __m512i out;
          if constexpr (kMode == 2) {
            out = dw_lean64(acc, rq, c0, e);
          } else {
            __m512i r[4];
            for (int j = 0; j < 4; ++j) r[j] = requant<kMode == 1>(acc[j], rq, c0 + 16 * j);
            out =
                _mm512_packs_epi16(_mm512_packs_epi32(r[0], r[1]), _mm512_packs_epi32(r[2], r[3]));
          }
          _mm512_storeu_si512(yo, out);
        }
      } else if (wide) {
        const uint8_t* e = epi + (c0 / 64) * 256;
        for (int64_t ow = 0; ow < p.out_w; ++ow) {
          __m512i acc[4];
          for (int j = 0; j < 4; ++j) acc[j] = acc_at(ow, j);
          __m512i out;
          if constexpr (kMode == 2) {
            out = dw_lean64(acc, rq, c0, e);
          } else {
            __m512i r[4];
            for (int j = 0; j < 4; ++j) r[j] = requant<kMode == 1>(acc[j], rq, c0 + 16 * j);
            out =
                _mm512_packs_epi16(_mm512_packs_epi32(r[0], r[1]), _mm512_packs_epi32(r[2], r[3]));
          }
          _mm512_storeu_si512(yrow + ow * oc_n + c0, out);
        }
      } else {
        const __mmask16 km = lanes_mask(static_cast<int>(std::min<int64_t>(16, oc_n - c0)));
        const RqVec v = rq_vec_for<kMode>(rq, c0);
        if (groups4 == 1 && kw_n == 3) {
          const __m512i w0 = _mm512_loadu_si512(wq + c0 * 4);
          const __m512i w1 = _mm512_loadu_si512(wq + (ocp + c0) * 4);
          const __m512i w2 = _mm512_loadu_si512(wq + (2 * ocp + c0) * 4);
          const __m512i bv = _mm512_loadu_si512(bias + c0);
          const int64_t step = sw * cs, d1 = dw * cs;
          const uint8_t* s0 = s;
          int8_t* yo = yrow + c0;
          for (int64_t ow = 0; ow < p.out_w; ++ow, s0 += step, yo += oc_n) {
            __m512i a = dpbusd(bv, _mm512_load_si512(s0), w0);
            a = dpbusd(a, _mm512_load_si512(s0 + d1), w1);
            a = dpbusd(a, _mm512_load_si512(s0 + 2 * d1), w2);
            store(yo, km, rq_mode<kMode>(a, rq, v, c0));
          }
        } else {
          for (int64_t ow = 0; ow < p.out_w; ++ow)
            store(yrow + ow * oc_n + c0, km, rq_mode<kMode>(acc_at(ow, 0), rq, v, c0));
        }
      }
      c0 += cw;
    }
  }
}

void pack_dw_quads(const QConvParams& q, const int8_t* w, const int32_t* bias, QWorkspace& ws) {
  const Conv2DParams& p = q.geo;
  const int64_t oc_n = p.out_c, ocp = round_up(oc_n, 64), kw_n = p.k_w, full = dw_full(oc_n);
  ws.b.assign(static_cast<size_t>(((p.k_h + 3) / 4) * kw_n * ocp * 4), 0);
  int8_t* b = reinterpret_cast<int8_t*>(ws.b.data());
  ws.bias_eff.assign(static_cast<size_t>(ocp), 0);
  std::vector<quant::ConvOutputStage> st(static_cast<size_t>(oc_n));  // in virtual order
  for (int64_t v = 0; v < oc_n; ++v) {
    const int64_t oc = dw_real(v, full);
    st[static_cast<size_t>(v)] = q.stages[static_cast<size_t>(oc)];
    uint32_t sum = 0;
    for (int64_t kh = 0; kh < p.k_h; ++kh)
      for (int64_t kw = 0; kw < kw_n; ++kw) {
        const int8_t wv = w[(kh * kw_n + kw) * oc_n + oc];
        b[(((kh / 4) * kw_n + kw) * ocp + v) * 4 + kh % 4] = wv;
        sum += static_cast<uint32_t>(int32_t{wv});
      }
    // Modulo 2^32, as the vector accumulators.
    uint32_t be = bias ? static_cast<uint32_t>(bias[oc]) : 0u;
    be -= static_cast<uint32_t>(q.input_zero_point + 128) * sum;
    ws.bias_eff[static_cast<size_t>(v)] = static_cast<int32_t>(be);
  }
  fill_requant(st, 1, oc_n, ocp, ws.rq);
  set_lean(ws.rq, q.stages, bias, p.k_h * kw_n);
  // Per 64-channel chunk, the lean stage's epilogue in the packs' order (dw_lean64): the zero
  // points as int16 for words (lane L, w) of packs(r0, r1) (channel 16L + w) and of packs(r2, r3)
  // (16L + 8 + w), then act_min and act_max as bytes in channel order.
  ws.epi.assign(static_cast<size_t>(full / 64 * 256), 0);
  for (int64_t c0 = 0; c0 < full; c0 += 64) {
    uint8_t* e = ws.epi.data() + c0 / 64 * 256;
    int16_t zp[64];
    for (int64_t L = 0; L < 4; ++L)
      for (int64_t wd = 0; wd < 8; ++wd) {
        zp[8 * L + wd] = static_cast<int16_t>(q.stages[c0 + 16 * L + wd].output_zero_point);
        zp[32 + 8 * L + wd] =
            static_cast<int16_t>(q.stages[c0 + 16 * L + 8 + wd].output_zero_point);
      }
    std::memcpy(e, zp, sizeof(zp));
    for (int64_t c = 0; c < 64; ++c) {
      e[128 + c] = static_cast<uint8_t>(static_cast<int8_t>(q.stages[c0 + c].act_min));
      e[192 + c] = static_cast<uint8_t>(static_cast<int8_t>(q.stages[c0 + c].act_max));
    }
  }
}

// Splits rows [0, rows) over nt threads, fn(begin, end, tid).
template <class F>
void split_rows(int64_t rows, int64_t nt, F&& fn) {
  if (nt <= 1) {
    fn(int64_t{0}, rows, int64_t{0});
    return;
  }
#pragma omp parallel num_threads(static_cast <int>(nt))
  {
    const int64_t tid = omp_get_thread_num(), team = omp_get_num_threads();
    const int64_t per = rows / team, extra = rows % team;
    const int64_t begin = tid * per + std::min(tid, extra);
    fn(begin, begin + per + (tid < extra ? 1 : 0), tid);
  }
}

// Per-thread scratch of `per` bytes (128-byte multiples from a 64-byte aligned base) after
// `head` bytes; grows ws.a only when too small (the first call of a plan).
uint8_t* scratch(QWorkspace& ws, int64_t head, int64_t per, int64_t nt) {
  const int64_t need = round_up(head, 128) + nt * round_up(per, 128) + 64;
  if (static_cast<int64_t>(ws.a.size()) < need) ws.a.resize(static_cast<size_t>(need));
  return ws.a.data() + ((64 - reinterpret_cast<uintptr_t>(ws.a.data()) % 64) % 64);
}

void run_dw_quads(const QConvParams& q, const int8_t* x, const int8_t* w, const int32_t* bias,
                  int8_t* y) {
  const Conv2DParams& p = q.geo;
  QWorkspace& ws = *q.workspace;
  if (p.n * p.out_h * p.out_w * p.out_c == 0) return;
  if (!same_weights(ws, kTagDwQuadVnni, w, p.k_h * p.k_w * p.out_c, bias, p.out_c))
    pack_dw_quads(q, w, bias, ws);
  const int64_t wp = (p.out_w - 1) * p.stride_w + (p.k_w - 1) * p.dil_w + 1;
  const int64_t per = ((p.k_h + 3) / 4) * wp * 256;
  const int64_t rows = p.n * p.out_h;
  const int64_t macs = rows * p.out_w * p.out_c * p.k_h * p.k_w;
  const int64_t nt =
      macs >= kParallelDepthwiseQuadMacs ? std::min<int64_t>(omp_get_max_threads(), rows) : 1;
  const int64_t head = round_up(p.in_c, 64);
  uint8_t* base = scratch(ws, head, per, nt);
  // A row of zero points for the taps in the padding.
  std::memset(base, static_cast<uint8_t>(q.input_zero_point), static_cast<size_t>(head));
  const int8_t* zrow = reinterpret_cast<const int8_t*>(base);
  uint8_t* s0 = base + round_up(head, 128);
  using Fn = void (*)(const Conv2DParams&, const int8_t*, const QWorkspace&, const int8_t*,
                      uint8_t*, int8_t*, int64_t, int64_t);
  const Fn fn = ws.rq.lean ? dwq_rows<2> : ws.rq.single ? dwq_rows<1> : dwq_rows<0>;
  split_rows(rows, nt, [&](int64_t begin, int64_t end, int64_t tid) {
    fn(p, x, ws, zrow, s0 + tid * round_up(per, 128), y, begin, end);
  });
}

// ---- few input channels (in_c <= 4): a direct kernel -------------------------------------------
// Per output row, the k_h input rows are copied once into padded u8 rows P[kh] (x + 128, the
// padding zp + 128); the taps of kernel row kh of pixel ow are then the k_w * in_c contiguous
// bytes at P[kh] + ow * stride * in_c, read as ceil(k_w * in_c / 4) quads (the bytes past the
// window meet zero weights), and the weights are packed [kh][quad][oc][4]. Tiles of 4 pixels x
// 32 channels, vpdpbusd on broadcast quads; the bias absorbs -(zp + 128) * sum w.

inline int64_t fewc_quads_per_row(const Conv2DParams& p) { return (p.k_w * p.in_c + 3) / 4; }
inline int64_t fewc_row_bytes(const Conv2DParams& p) {
  const int64_t wp = (p.out_w - 1) * p.stride_w + p.k_w;
  return round_up(wp * p.in_c + 4, 64);
}

void pack_fewc(const QConvParams& q, const int8_t* w, const int32_t* bias, QWorkspace& ws) {
  const Conv2DParams& p = q.geo;
  const int64_t oc_n = p.out_c, ocp = round_up(oc_n, 32), qr = fewc_quads_per_row(p);
  const int64_t taps_row = p.k_w * p.in_c;
  ws.b.assign(static_cast<size_t>(p.k_h * qr * ocp * 4), 0);
  int8_t* b = reinterpret_cast<int8_t*>(ws.b.data());
  ws.bias_eff.assign(static_cast<size_t>(ocp), 0);
  for (int64_t oc = 0; oc < oc_n; ++oc) {
    uint32_t sum = 0;
    for (int64_t kh = 0; kh < p.k_h; ++kh)
      for (int64_t t = 0; t < taps_row; ++t) {  // t = kw * in_c + ic: HWIO order
        const int8_t v = w[(kh * taps_row + t) * oc_n + oc];
        b[((kh * qr + t / 4) * ocp + oc) * 4 + t % 4] = v;
        sum += static_cast<uint32_t>(int32_t{v});
      }
    uint32_t be = bias ? static_cast<uint32_t>(bias[oc]) : 0u;
    be -= static_cast<uint32_t>(q.input_zero_point + 128) * sum;
    ws.bias_eff[static_cast<size_t>(oc)] = static_cast<int32_t>(be);
  }
  fill_requant(q.stages, 1, oc_n, ocp, ws.rq);
  set_lean(ws.rq, q.stages, bias, p.k_h * taps_row);
}

// MR pixels from ow0 of the row whose padded input rows are `prow` (stride rb), columns
// [c, c + 32) (nvalid valid).
template <int MR, int kMode>
inline void fewc_tile(const Conv2DParams& p, const uint8_t* prow, int64_t rb, const int8_t* wq,
                      int64_t ocp, const QWorkspace& ws, const Rq& rq, int64_t ow0, int64_t c,
                      int nvalid, int8_t* yrow) {
  const int64_t qr = fewc_quads_per_row(p), step = p.stride_w * p.in_c;
  const __m512i b0 = _mm512_loadu_si512(ws.bias_eff.data() + c);
  const __m512i b1 = _mm512_loadu_si512(ws.bias_eff.data() + c + 16);
  __m512i acc0[MR], acc1[MR];
  for (int r = 0; r < MR; ++r) {
    acc0[r] = b0;
    acc1[r] = b1;
  }
  for (int64_t kh = 0; kh < p.k_h; ++kh) {
    const uint8_t* pr = prow + kh * rb + ow0 * step;
    for (int64_t j = 0; j < qr; ++j) {
      const int8_t* wj = wq + ((kh * qr + j) * ocp + c) * 4;
      const __m512i w0 = _mm512_loadu_si512(wj), w1 = _mm512_loadu_si512(wj + 64);
      for (int r = 0; r < MR; ++r) {
        int32_t quad;
        std::memcpy(&quad, pr + r * step + 4 * j, 4);
        const __m512i av = _mm512_set1_epi32(quad);
        acc0[r] = dpbusd(acc0[r], av, w0);
        acc1[r] = dpbusd(acc1[r], av, w1);
      }
    }
  }
  const RqVec v0 = rq_vec_for<kMode>(rq, c), v1 = rq_vec_for<kMode>(rq, c + 16);
  const __mmask16 k0 = lanes_mask(nvalid), k1 = lanes_mask(nvalid - 16);
  for (int r = 0; r < MR; ++r) {
    int8_t* yo = yrow + (ow0 + r) * p.out_c + c;
    store(yo, k0, rq_mode<kMode>(acc0[r], rq, v0, c));
    if (k1) store(yo + 16, k1, rq_mode<kMode>(acc1[r], rq, v1, c + 16));
  }
}

template <int kMode>
void fewc_rows(const Conv2DParams& geo, const int8_t* x, const QWorkspace& ws, int32_t zp,
               uint8_t* prow, int64_t row_begin, int64_t row_end, int8_t* y) {
  const Conv2DParams p = geo;
  const Rq rq = rq_of(ws);
  const int64_t C = p.in_c, oc_n = p.out_c, ocp = round_up(oc_n, 32), rb = fewc_row_bytes(p);
  const int64_t wp = (p.out_w - 1) * p.stride_w + p.k_w;
  const int8_t* wq = reinterpret_cast<const int8_t*>(ws.b.data());
  const uint8_t padv = static_cast<uint8_t>(zp + 128);
  const int64_t left = std::min<int64_t>(p.pad_left, wp);
  const int64_t mid_end = std::min<int64_t>(wp, p.pad_left + p.in_w);  // columns [left, mid_end)
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / p.out_h, oh = row % p.out_h;
    for (int64_t kh = 0; kh < p.k_h; ++kh) {
      const int64_t ih = oh * p.stride_h - p.pad_top + kh * p.dil_h;
      uint8_t* d = prow + kh * rb;
      if (!inside(ih, p.in_h)) {
        std::memset(d, padv, static_cast<size_t>(wp * C));
        continue;
      }
      std::memset(d, padv, static_cast<size_t>(left * C));
      const int8_t* src = x + ((n * p.in_h + ih) * p.in_w + (left - p.pad_left)) * C;
      const int64_t nmid = (mid_end - left) * C;
      const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
      for (int64_t i = 0; i < nmid; i += 64) {
        const __mmask64 k = nmid - i >= 64 ? ~__mmask64{0} : (__mmask64{1} << (nmid - i)) - 1;
        _mm512_mask_storeu_epi8(d + left * C + i, k,
                                _mm512_xor_si512(_mm512_maskz_loadu_epi8(k, src + i), flip));
      }
      if (mid_end < wp) std::memset(d + mid_end * C, padv, static_cast<size_t>((wp - mid_end) * C));
    }
    int8_t* yrow = y + row * p.out_w * oc_n;
    for (int64_t c = 0; c < oc_n; c += 32) {
      const int nvalid = static_cast<int>(std::min<int64_t>(32, oc_n - c));
      int64_t ow = 0;
      for (; ow + 4 <= p.out_w; ow += 4)
        fewc_tile<4, kMode>(p, prow, rb, wq, ocp, ws, rq, ow, c, nvalid, yrow);
      for (; ow < p.out_w; ++ow)
        fewc_tile<1, kMode>(p, prow, rb, wq, ocp, ws, rq, ow, c, nvalid, yrow);
    }
  }
}

void run_fewc(const QConvParams& q, const int8_t* x, const int8_t* w, const int32_t* bias,
              int8_t* y) {
  const Conv2DParams& p = q.geo;
  QWorkspace& ws = *q.workspace;
  if (p.n * p.out_h * p.out_w * p.out_c == 0) return;
  if (!same_weights(ws, kTagFewCinVnni, w, p.k_h * p.k_w * p.in_c * p.out_c, bias, p.out_c))
    pack_fewc(q, w, bias, ws);
  const int64_t rb = fewc_row_bytes(p), per = p.k_h * rb;
  const int64_t rows = p.n * p.out_h;
  const int64_t macs = rows * p.out_w * p.out_c * p.k_h * p.k_w * p.in_c;
  const int64_t nt = macs >= kParallelMacs ? std::min<int64_t>(omp_get_max_threads(), rows) : 1;
  uint8_t* base = scratch(ws, 0, per, nt);
  // The slack past each padded row meets zero weights; give it a value once.
  using Fn = void (*)(const Conv2DParams&, const int8_t*, const QWorkspace&, int32_t, uint8_t*,
                      int64_t, int64_t, int8_t*);
  const Fn fn = ws.rq.lean ? fewc_rows<2> : ws.rq.single ? fewc_rows<1> : fewc_rows<0>;
  split_rows(rows, nt, [&](int64_t begin, int64_t end, int64_t tid) {
    uint8_t* prow = base + tid * round_up(per, 128);
    std::memset(prow, 0x80, static_cast<size_t>(per));
    fn(p, x, ws, q.input_zero_point, prow, begin, end, y);
  });
}

}  // namespace vnni

#ifdef __clang__
#pragma clang attribute pop
#endif
#undef LOWBIT_VNNI_INLINE
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

const GemmIsa kIsa{kTagGemmAvx2, 2, kMr, kNr, false, kTiles<false>, kTiles<true>, nullptr, nullptr};

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

bool qconv2d_s8_depthwise_supported(const QConvParams& p) {
  const Conv2DParams& g = p.geo;
  return qconv2d_s8_fast_supported(p) && g.groups > 1 && g.groups == g.in_c &&
         g.out_c % g.in_c == 0 && g.k_h <= vnni::kMaxQuadRows;
}

bool qconv2d_s8_few_in_channels_supported(const QConvParams& p) {
  const Conv2DParams& g = p.geo;
  return qconv2d_s8_fast_supported(p) && g.groups == 1 && g.in_c <= kMaxFewInChannels &&
         g.dil_w == 1;
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

void qconv2d_depthwise_s8__avx512_vnni(const QConvParams& p, const int8_t* x, const int8_t* w,
                                       const int32_t* bias, int8_t* y) {
  std::lock_guard<std::mutex> lock(p.workspace->mu);
  vnni::run_dw_quads(p, x, w, bias, y);
}

void qconv2d_fewc_s8__avx512_vnni(const QConvParams& p, const int8_t* x, const int8_t* w,
                                  const int32_t* bias, int8_t* y) {
  std::lock_guard<std::mutex> lock(p.workspace->mu);
  vnni::run_fewc(p, x, w, bias, y);
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
