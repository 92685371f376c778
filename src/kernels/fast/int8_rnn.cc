// Fast qlstm / qgru kernels: the packed GEMMs (AVX-512 VNNI vpdpbusd, AVX2 vpmaddwd) and the
// vector gate arithmetic (AVX2, both rows). kernels/fast/int8_rnn.h says what is exact and why;
// each vector helper below names the scalar step of fixed_point.h / the reference it equals.
#include "kernels/fast/int8_rnn.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>

namespace lowbit::kernels {

namespace {

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Packed geometry: each gate block padded to Up columns (a multiple of 16).
struct Geo {
  int64_t U, Up, G, Np, D;
};
Geo geo_of(const QRnnConfig& c) {
  const int64_t up = round_up(std::max<int64_t>(c.units, 1), 16);
  return {c.units, up, c.gates, c.gates * up, c.depth};
}

// The dot product's layout: kg taps per 32-bit lane, each of esize bytes (VNNI: u8/s8 quads,
// AVX2: s16 pairs); `u8` activations enter as x + 128.
struct DotLayout {
  int kg, esize;
  bool u8;
};
constexpr DotLayout kVnni{4, 1, true}, kAvx2{2, 2, false};

// Packs w [K][G*U] into [K/kg][Np][kg] (zeros beyond K and in the padding columns) and the
// effective bias eb[pc] = bias[col] - zp * colsum (- 128 colsum for u8 activations).
void pack(const DotLayout& l, const Geo& g, const int8_t* w, int64_t K, const int32_t* bias,
          int32_t zp, uint8_t* packed, int32_t* eb) {
  const int64_t kq = round_up(K, l.kg) / l.kg, GU = g.G * g.U;
  std::memset(packed, 0, static_cast<size_t>(kq * g.Np * l.kg * l.esize));
  for (int64_t pc = 0; pc < g.Np; ++pc) eb[pc] = 0;
  for (int64_t gate = 0; gate < g.G; ++gate)
    for (int64_t j = 0; j < g.U; ++j) {
      const int64_t col = gate * g.U + j, pc = gate * g.Up + j;
      int32_t sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int8_t v = w[k * GU + col];
        sum += v;
        const int64_t idx = ((k / l.kg) * g.Np + pc) * l.kg + k % l.kg;
        if (l.esize == 1)
          reinterpret_cast<int8_t*>(packed)[idx] = v;
        else
          reinterpret_cast<int16_t*>(packed)[idx] = v;
      }
      // Modulo 2^32 (the vector sums wrap alike): exact whenever the reference's sum fits.
      const int64_t e = int64_t{bias ? bias[col] : 0} - int64_t{zp} * sum - (l.u8 ? 128 * sum : 0);
      eb[pc] = static_cast<int32_t>(static_cast<uint32_t>(e));
    }
}

// Whether the workspace holds the packing of exactly these weights and biases for `tag`; if
// not, records them (into buffers sized at prepare) and the caller packs.
bool same_weights(QRnnWorkspace& ws, int tag, const int8_t* wx, const int8_t* wh, const int32_t* bx,
                  const int32_t* bh, int64_t gu, int64_t D, int64_t U) {
  if (ws.constant_weights && ws.packed_for == tag) return true;
  const size_t nx = static_cast<size_t>(D * gu), nh = static_cast<size_t>(U * gu);
  const size_t nb = static_cast<size_t>(gu) * sizeof(int32_t);
  const bool same = ws.packed_for == tag && ws.had_bx == (bx != nullptr) &&
                    ws.had_bh == (bh != nullptr) &&
                    (nx == 0 || std::memcmp(ws.wx_copy.data(), wx, nx) == 0) &&
                    (nh == 0 || std::memcmp(ws.wh_copy.data(), wh, nh) == 0) &&
                    (!bx || std::memcmp(ws.bx_copy.data(), bx, nb) == 0) &&
                    (!bh || std::memcmp(ws.bh_copy.data(), bh, nb) == 0);
  if (same) return true;
  ws.packed_for = tag;
  ws.had_bx = bx != nullptr;
  ws.had_bh = bh != nullptr;
  if (nx) std::memcpy(ws.wx_copy.data(), wx, nx);
  if (nh) std::memcpy(ws.wh_copy.data(), wh, nh);
  if (bx) std::memcpy(ws.bx_copy.data(), bx, nb);
  if (bh) std::memcpy(ws.bh_copy.data(), bh, nb);
  return false;
}

// ---- AVX2: the vector steps (used by both rows) -----------------------------------------------

#pragma GCC push_options
#pragma GCC target("avx2")
// clang ignores GCC target pragmas: the same region as a clang attribute (the fuzz build).
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#endif

using vi = __m256i;

inline vi set1(int32_t v) { return _mm256_set1_epi32(v); }
inline vi set16(int16_t v) { return _mm256_set1_epi16(v); }
inline vi load(const void* p) { return _mm256_loadu_si256(static_cast<const vi*>(p)); }
inline void store(void* p, vi v) { _mm256_storeu_si256(static_cast<vi*>(p), v); }

// ---- int32 lanes ----

// A multiplier (m, shift) prepared for multiply_by_quantized_multiplier (double rounding).
struct VMul {
  vi m, hi, lo, mask, half;
  __m128i left, right;
  bool has_left;
};
VMul vmul(quant::QuantizedMultiplier q) {
  const int left = q.shift > 0 ? q.shift : 0, right = q.shift > 0 ? 0 : -q.shift;
  const int32_t mask = static_cast<int32_t>((int64_t{1} << right) - 1);
  return {set1(q.multiplier),
          set1(std::numeric_limits<int32_t>::max() >> left),
          set1(std::numeric_limits<int32_t>::min() >> left),
          set1(mask),
          set1(mask >> 1),
          _mm_cvtsi32_si128(left),
          _mm_cvtsi32_si128(right),
          left > 0};
}

// saturating_rounding_doubling_high_mul(a, m) for m >= 0 in every lane: floor((a m + 2^30) /
// 2^31), which is the scalar nudge-and-truncate (both round half up); bits 31..62 of the 64-bit
// sum are the result (it fits int32: a == m == INT32_MIN cannot occur with m >= 0).
inline vi srdhm(vi a, vi m) {
  const vi nudge = _mm256_set1_epi64x(int64_t{1} << 30);
  const vi pe = _mm256_add_epi64(_mm256_mul_epi32(a, m), nudge);
  const vi po = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(a, 32), m), nudge);
  return _mm256_blend_epi32(_mm256_srli_epi64(pe, 31), _mm256_slli_epi64(po, 1), 0xAA);
}
// rounding_divide_by_pot: (x >> e) + ((x & mask) > (mask >> 1) + (x < 0)).
inline vi rdpot(vi x, __m128i e, vi mask, vi half) {
  const vi thr = _mm256_sub_epi32(half, _mm256_cmpgt_epi32(_mm256_setzero_si256(), x));
  const vi up = _mm256_cmpgt_epi32(_mm256_and_si256(x, mask), thr);
  return _mm256_sub_epi32(_mm256_sra_epi32(x, e), up);
}
template <int E>
inline vi rdpot_c(vi x) {
  constexpr int32_t mask = static_cast<int32_t>((int64_t{1} << E) - 1);
  return rdpot(x, _mm_cvtsi32_si128(E), set1(mask), set1(mask >> 1));
}
// multiply_by_quantized_multiplier (kDouble): RDPOT(SRDHM(sat32(x 2^left), m), right).
inline vi mbqm(vi x, const VMul& q) {
  if (q.has_left) {
    vi s = _mm256_sll_epi32(x, q.left);
    s = _mm256_blendv_epi8(s, set1(std::numeric_limits<int32_t>::max()),
                           _mm256_cmpgt_epi32(x, q.hi));
    x = _mm256_blendv_epi8(s, set1(std::numeric_limits<int32_t>::min()),
                           _mm256_cmpgt_epi32(q.lo, x));
  }
  return rdpot(srdhm(x, q.m), q.right, q.mask, q.half);
}
inline vi clamp32(vi x, int32_t lo, int32_t hi) {
  return _mm256_min_epi32(_mm256_max_epi32(x, set1(lo)), set1(hi));
}
// The low / high 8 of 16 int16 lanes as int32; two int32 vectors to 16 int16 saturating
// (sat16), in order.
inline vi lo32(vi v) { return _mm256_cvtepi16_epi32(_mm256_castsi256_si128(v)); }
inline vi hi32(vi v) { return _mm256_cvtepi16_epi32(_mm256_extracti128_si256(v, 1)); }
inline vi pack16(vi a, vi b) { return _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8); }
inline vi mul32(vi a, vi b) { return _mm256_mullo_epi32(a, b); }

// ---- int16 lanes: src/core/fixed_point.cc's fx16 namespace, one for one ----

constexpr int16_t kMax16 = 32767, kMin16 = -32768;
inline int16_t c16(int32_t raw32) {  // fx16::constant
  return static_cast<int16_t>(quant::rounding_divide_by_pot(raw32, 16));
}
// fx16::mul: a b / 2^15 rounded half up (vpmulhrsw), (-1)(-1) -> 32767 (vpmulhrsw gives -32768).
inline vi mul16(vi a, vi b) {
  const vi mn = set16(kMin16);
  const vi both = _mm256_and_si256(_mm256_cmpeq_epi16(a, mn), _mm256_cmpeq_epi16(b, mn));
  return _mm256_xor_si256(_mm256_mulhrs_epi16(a, b), both);
}
// fx16::mul by a constant other than -32768: the overflow cannot occur, vpmulhrsw alone.
inline vi mul16c(vi a, vi constant) { return _mm256_mulhrs_epi16(a, constant); }
template <int E>
inline vi rdpot16(vi x) {  // fx16::rdpot
  constexpr int16_t mask = static_cast<int16_t>((1 << E) - 1);
  const vi thr = _mm256_sub_epi16(set16(mask >> 1), _mm256_cmpgt_epi16(_mm256_setzero_si256(), x));
  const vi up = _mm256_cmpgt_epi16(_mm256_and_si256(x, set16(mask)), thr);
  return _mm256_sub_epi16(_mm256_srai_epi16(x, E), up);
}
// fx16::shift_left_saturating, 0 < e < 15.
inline vi sls16(vi x, int e) {
  const int16_t thr = static_cast<int16_t>((1 << (15 - e)) - 1);
  vi r = _mm256_sll_epi16(x, _mm_cvtsi32_si128(e));
  r = _mm256_blendv_epi8(r, set16(kMax16), _mm256_cmpgt_epi16(x, set16(thr)));
  return _mm256_blendv_epi8(r, set16(kMin16),
                            _mm256_cmpgt_epi16(set16(static_cast<int16_t>(-thr)), x));
}
// fx16::rounding_half_sum(e, 32767): s = e + 32767; (s + sign(s)) / 2 truncated. For e >=
// -32767, s >= 0 and that is (e + 32768) >> 1 (e ^ 0x8000 read unsigned); e = -32768 gives -1.
inline vi half_sum_max(vi e) {
  const vi r = _mm256_srli_epi16(_mm256_xor_si256(e, set16(kMin16)), 1);
  return _mm256_or_si256(r, _mm256_cmpeq_epi16(e, set16(kMin16)));
}
// fx16::exp_quarter.
inline vi exp_quarter16(vi a) {
  const vi e8 = set16(c16(1895147668)), third = set16(c16(715827883));
  const vi x = _mm256_add_epi16(a, set16(1 << 12));
  const vi x2 = mul16(x, x), x3 = mul16(x2, x), x4 = mul16(x2, x2);
  const vi tail =
      rdpot16<1>(_mm256_add_epi16(mul16c(_mm256_add_epi16(rdpot16<2>(x4), x3), third), x2));
  return _mm256_adds_epi16(e8, mul16c(_mm256_add_epi16(x, tail), e8));
}
// fx16::exp_negative, m in [0, 7].
inline vi exp_negative16(vi a, int m) {
  static constexpr int32_t kExpNegPow2[] = {1672461947, 1302514674, 790015084, 290630308,
                                            39332535,   720401,     242};
  const int f = 15 - m;
  const int16_t quarter = static_cast<int16_t>(1 << (f - 2));
  const vi low = _mm256_sub_epi16(_mm256_and_si256(a, set16(static_cast<int16_t>(quarter - 1))),
                                  set16(quarter));
  vi result = exp_quarter16(m > 0 ? sls16(low, m) : low);
  const vi rem = _mm256_sub_epi16(low, a);
  for (int k = -2; k <= 4; ++k)
    if (m > k) {
      const vi bit = set16(static_cast<int16_t>(1 << (f + k)));
      const vi sel = _mm256_cmpeq_epi16(_mm256_and_si256(rem, bit), bit);
      result = _mm256_blendv_epi8(result, mul16c(result, set16(c16(kExpNegPow2[k + 2]))), sel);
    }
  if (m > 5)
    result = _mm256_andnot_si256(
        _mm256_cmpgt_epi16(set16(static_cast<int16_t>(-(1 << (20 - m)))), a), result);
  return _mm256_blendv_epi8(result, set16(kMax16), _mm256_cmpeq_epi16(a, _mm256_setzero_si256()));
}
// fx16::reciprocal_q2.
inline vi reciprocal_q2_16(vi hd) {
  const vi c48 = set16(c16(1515870810)), cm32 = set16(c16(-1010580540)), one = set16(1 << 13);
  vi x = _mm256_add_epi16(c48, mul16c(hd, cm32));
  for (int i = 0; i < 3; ++i) {
    const vi e = _mm256_sub_epi16(one, mul16(hd, x));
    x = _mm256_add_epi16(x, sls16(mul16(x, e), 2));
  }
  return x;
}
// quant::logistic_int16 on 16 lanes.
inline vi logistic16(vi x, int m) {
  const vi zero = _mm256_setzero_si256();
  const vi pos = _mm256_cmpgt_epi16(x, zero);
  const vi mag = _mm256_blendv_epi8(_mm256_sub_epi16(zero, x), x, pos);
  const vi e = exp_negative16(_mm256_sub_epi16(zero, mag), m);
  const vi sigma = sls16(reciprocal_q2_16(half_sum_max(e)), 1);
  const vi r = _mm256_blendv_epi8(_mm256_sub_epi16(set16(kMax16), sigma), sigma, pos);
  return _mm256_blendv_epi8(r, set16(1 << 14), _mm256_cmpeq_epi16(x, zero));
}
// quant::tanh_int16 on 16 lanes.
inline vi tanh16(vi x, int m) {
  const vi zero = _mm256_setzero_si256();
  const vi neg = _mm256_cmpgt_epi16(zero, x);
  const vi n = _mm256_blendv_epi8(_mm256_sub_epi16(zero, x), x, neg);
  const vi e = exp_negative16(n, m + 1);
  const vi r = reciprocal_q2_16(half_sum_max(e));
  const vi t = sls16(_mm256_sub_epi16(r, set16(1 << 13)), 2);
  const vi out = _mm256_blendv_epi8(t, _mm256_sub_epi16(zero, t), neg);
  return _mm256_andnot_si256(_mm256_cmpeq_epi16(x, zero), out);
}

// ---- the AVX2 dot product: C[r][c] = init[c] + sum_k A[r][k] W[k][c] over s16 pairs ----------

// A: rows of s16 (stride a_stride bytes), kq pairs; B: [kq][Np][2] s16; columns [c0, c0 + nc),
// nc a multiple of 16.
template <int MR>
void mm_avx2_tile(const uint8_t* A, int64_t a_stride, const int16_t* B, int64_t kq, int64_t Np,
                  int64_t c, const int32_t* init, int32_t* C, int64_t ldc) {
  vi acc[MR][2];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 2; ++v) acc[r][v] = load(init + c + 8 * v);
  for (int64_t k = 0; k < kq; ++k) {
    const vi b0 = load(B + (k * Np + c) * 2), b1 = load(B + (k * Np + c + 8) * 2);
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, A + r * a_stride + 4 * k, 4);
      const vi a = set1(pair);
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(a, b0));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(a, b1));
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 2; ++v) store(C + r * ldc + c + 8 * v, acc[r][v]);
}
void matmul_avx2(const uint8_t* A, int64_t a_stride, int64_t rows, const uint8_t* Bp, int64_t kq,
                 int64_t Np, int64_t c0, int64_t nc, const int32_t* init, int32_t* C, int64_t ldc) {
  const int16_t* B = reinterpret_cast<const int16_t*>(Bp);
  for (int64_t r0 = 0; r0 < rows; r0 += 4) {
    const uint8_t* a = A + r0 * a_stride;
    int32_t* cr = C + r0 * ldc;
    for (int64_t c = c0; c < c0 + nc; c += 16) switch (std::min<int64_t>(4, rows - r0)) {
        case 4:
          mm_avx2_tile<4>(a, a_stride, B, kq, Np, c, init, cr, ldc);
          break;
        case 3:
          mm_avx2_tile<3>(a, a_stride, B, kq, Np, c, init, cr, ldc);
          break;
        case 2:
          mm_avx2_tile<2>(a, a_stride, B, kq, Np, c, init, cr, ldc);
          break;
        default:
          mm_avx2_tile<1>(a, a_stride, B, kq, Np, c, init, cr, ldc);
          break;
      }
  }
}

using MatmulFn = void (*)(const uint8_t* A, int64_t a_stride, int64_t rows, const uint8_t* Bp,
                          int64_t kq, int64_t Np, int64_t c0, int64_t nc, const int32_t* init,
                          int32_t* C, int64_t ldc);

// 16 int16 codes (int8 range in the first n lanes) into the dot product's layout at dst:
// u8 = code + 128, or s16.
inline void put_codes(const DotLayout& l, vi codes, uint8_t* dst) {
  if (l.esize == 2) {
    store(dst, codes);
  } else {
    const vi b = _mm256_packs_epi16(codes, codes);  // lanes 0-7 | 8-15 in each half
    const __m128i q = _mm_unpacklo_epi64(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_xor_si128(q, _mm_set1_epi8(-128)));
  }
}
// 16 int16 codes to int8 output (n <= 16 of them).
inline void store_s8(int8_t* dst, vi codes, int64_t n) {
  const vi b = _mm256_packs_epi16(codes, codes);
  const __m128i q = _mm_unpacklo_epi64(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
  if (n >= 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), q);
  } else {
    alignas(16) int8_t tmp[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), q);
    std::memcpy(dst, tmp, static_cast<size_t>(n));
  }
}

// The whole sequence. `l` and `mm` are the row's dot product.
void run_qrnn(const DotLayout& l, MatmulFn mm, const QRnnConfig& q, QRnnWorkspace& ws,
              const int8_t* x, const int8_t* wx, const int8_t* wh, const int32_t* bx,
              const int32_t* bh, const bool* mask, int8_t* y) {
  const Geo g = geo_of(q);
  const int64_t B = q.batch, T = q.steps, D = q.depth, U = q.units, Up = g.Up, Np = g.Np;
  if (B == 0 || T == 0 || U == 0) {
    if (!q.sequences && B > 0 && U > 0)
      for (int64_t i = 0; i < B * U; ++i) y[i] = static_cast<int8_t>(q.zp_h);
    return;
  }
  const int64_t kqx = round_up(D, l.kg) / l.kg, kqh = round_up(U, l.kg) / l.kg;
  const int64_t xs = kqx * l.kg * l.esize;  // bytes per input row
  const int64_t hs = Up * l.esize;          // bytes per h row (>= kqh * kg * esize)
  if (!same_weights(ws, l.u8 ? 1 : 2, wx, wh, bx, bh, q.gates * U, D, U)) {
    pack(l, g, wx, D, bx, q.zp_x, ws.wx.data(), ws.ebx.data());
    pack(l, g, wh, U, bh, q.zp_h, ws.wh.data(), ws.ebh.data());
  }

  // 1. The input rows in the dot product's layout, then one GEMM over every (b, t).
  const int64_t rows = B * T;
  uint8_t* xa = ws.xa.data();
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* dst = xa + r * xs;
    if (xs > 0) std::memset(dst, 0, static_cast<size_t>(xs));
    for (int64_t d = 0; d < D; ++d) {
      const int8_t v = x[r * D + d];
      if (l.esize == 1)
        dst[d] = static_cast<uint8_t>(v ^ 0x80);
      else
        reinterpret_cast<int16_t*>(dst)[d] = v;
    }
  }
  int32_t* px = ws.px.data();
  mm(xa, xs, rows, ws.wx.data(), kqx, Np, 0, Np, ws.ebx.data(), px, Np);
  for (int64_t gate = 0; gate < g.G; ++gate) {
    const VMul m = vmul(q.mx[gate]);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < Up; j += 8) {
        int32_t* p = px + r * Np + gate * Up + j;
        store(p, clamp32(mbqm(load(p), m), -32768, 32767));
      }
  }

  // 2. The recurrence: state h, c, last as int16 codes [B][Up]; h also in ha's layout.
  int16_t *h = ws.h.data(), *c = ws.c.data(), *last = ws.last.data(), *zs = ws.z.data();
  uint8_t *ha = ws.ha.data(), *rha = ws.rha.data();
  int32_t* hacc = ws.hacc.data();
  const vi zp_h = set16(static_cast<int16_t>(q.zp_h));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < Up; j += 16) {
      store(h + b * Up + j, zp_h);
      store(c + b * Up + j, _mm256_setzero_si256());
      store(last + b * Up + j, zp_h);
      put_codes(l, zp_h, ha + b * hs + j * l.esize);
      put_codes(l, zp_h, rha + b * hs + j * l.esize);
    }
  VMul mh[4], mout = vmul(q.m_out);
  for (int gate = 0; gate < 4; ++gate) mh[gate] = vmul(q.mh[gate]);
  const vi zp32 = set1(q.zp_h);
  const int p = q.cell_bits;
  const __m128i sh_ig = _mm_cvtsi32_si128(15 + p);
  const vi mask_ig = set1(static_cast<int32_t>((int64_t{1} << (15 + p)) - 1));
  const vi half_ig = set1(static_cast<int32_t>(((int64_t{1} << (15 + p)) - 1) >> 1));
  // The gate sum sat16(px + MBQM(acc, M_h)) of 16 units: |px| <= 32768, so clamping the MBQM
  // term to +-2^17 first leaves the saturated sum unchanged and keeps the int32 sum exact.
  auto gate_sum = [&](const int32_t* pxr, const int32_t* ar, const VMul& m) {
    const vi a = _mm256_add_epi32(load(pxr), clamp32(mbqm(load(ar), m), -(1 << 17), 1 << 17));
    const vi b =
        _mm256_add_epi32(load(pxr + 8), clamp32(mbqm(load(ar + 8), m), -(1 << 17), 1 << 17));
    return pack16(a, b);
  };
  // clamp8(v + zp_h) of int32 lanes whose v is first clamped to +-2^16 (exact: the result
  // saturates either way), as 16 int16 codes.
  auto codes = [&](vi a, vi b) {
    a = clamp32(_mm256_add_epi32(clamp32(a, -(1 << 16), 1 << 16), zp32), -128, 127);
    b = clamp32(_mm256_add_epi32(clamp32(b, -(1 << 16), 1 << 16), zp32), -128, 127);
    return pack16(a, b);
  };
  // GRU: h' = clamp8(RDPOT(z (q_h - zp_h) + MBQM((32767 - z) hh, 2^-15 / s_h), 15) + zp_h)
  // (the int32 sum wraps where the reference's would overflow, which a valid model never does).
  auto gru_update = [&](vi z, vi hh, vi hv) {
    const vi hd = _mm256_sub_epi16(hv, zp_h), zc = _mm256_sub_epi16(set16(kMax16), z);
    const vi a = _mm256_add_epi32(mul32(lo32(z), lo32(hd)), mbqm(mul32(lo32(zc), lo32(hh)), mout));
    const vi b = _mm256_add_epi32(mul32(hi32(z), hi32(hd)), mbqm(mul32(hi32(zc), hi32(hh)), mout));
    return codes(rdpot_c<15>(a), rdpot_c<15>(b));
  };
  const bool gru_split = !q.lstm && !q.reset_after;
  for (int64_t st = 0; st < T; ++st) {
    const int64_t t = q.backwards ? T - 1 - st : st;
    const int64_t ot = q.reverse_output ? t : st;
    // The recurrent matmul of every row (GRU reset_after = false: z and r only here).
    mm(ha, hs, B, ws.wh.data(), kqh, Np, 0, gru_split ? 2 * Up : Np, ws.ebh.data(), hacc, Np);
    for (int64_t b = 0; b < B; ++b) {
      if (mask && !mask[b * T + t]) continue;
      const int32_t* pr = px + (b * T + t) * Np;
      const int32_t* ar = hacc + b * Np;
      int16_t *hb = h + b * Up, *cb = c + b * Up, *lb = last + b * Up, *zb = zs + b * Up;
      for (int64_t j = 0; j < Up; j += 16) {
        if (q.lstm) {
          const vi i = logistic16(gate_sum(pr + j, ar + j, mh[0]), 3);
          const vi f = logistic16(gate_sum(pr + Up + j, ar + Up + j, mh[1]), 3);
          const vi gg = tanh16(gate_sum(pr + 2 * Up + j, ar + 2 * Up + j, mh[2]), 3);
          const vi o = logistic16(gate_sum(pr + 3 * Up + j, ar + 3 * Up + j, mh[3]), 3);
          const vi cv = load(cb + j);
          // c' = sat16(RDPOT(f c, 15) + RDPOT(i g, 15 + p))
          const vi ca = _mm256_add_epi32(rdpot_c<15>(mul32(lo32(f), lo32(cv))),
                                         rdpot(mul32(lo32(i), lo32(gg)), sh_ig, mask_ig, half_ig));
          const vi cbv = _mm256_add_epi32(rdpot_c<15>(mul32(hi32(f), hi32(cv))),
                                          rdpot(mul32(hi32(i), hi32(gg)), sh_ig, mask_ig, half_ig));
          const vi cn = pack16(ca, cbv);
          store(cb + j, cn);
          // h' = clamp8(MBQM(o tanh_p(c'), 2^-30 / s_h) + zp_h)
          const vi tc = tanh16(cn, p);
          const vi hn =
              codes(mbqm(mul32(lo32(o), lo32(tc)), mout), mbqm(mul32(hi32(o), hi32(tc)), mout));
          store(hb + j, hn);
          store(lb + j, hn);
        } else {
          const vi z = logistic16(gate_sum(pr + j, ar + j, mh[0]), 3);
          const vi r = logistic16(gate_sum(pr + Up + j, ar + Up + j, mh[1]), 3);
          if (gru_split) {
            // r h requantized to h's parameters: clamp8(RDPOT(r (q_h - zp_h), 15) + zp_h).
            const vi hd = _mm256_sub_epi16(load(hb + j), zp_h);
            const vi rh =
                codes(rdpot_c<15>(mul32(lo32(r), lo32(hd))), rdpot_c<15>(mul32(hi32(r), hi32(hd))));
            put_codes(l, rh, rha + b * hs + j * l.esize);
            store(zb + j, z);
            continue;
          }
          // pre = sat16(p_x + RDPOT(r sat16(MBQM(acc_h, M_h)), 15))
          const int32_t* ah = ar + 2 * Up + j;
          const vi ph = pack16(mbqm(load(ah), mh[2]), mbqm(load(ah + 8), mh[2]));
          const int32_t* ph_x = pr + 2 * Up + j;
          const vi pre =
              pack16(_mm256_add_epi32(load(ph_x), rdpot_c<15>(mul32(lo32(r), lo32(ph)))),
                     _mm256_add_epi32(load(ph_x + 8), rdpot_c<15>(mul32(hi32(r), hi32(ph)))));
          const vi hh = tanh16(pre, 3);
          const vi hn = gru_update(z, hh, load(hb + j));
          store(hb + j, hn);
          store(lb + j, hn);
        }
      }
    }
    if (gru_split) {
      // The candidate's recurrent matmul on r h, then its gate and the update.
      mm(rha, hs, B, ws.wh.data(), kqh, Np, 2 * Up, Up, ws.ebh.data(), hacc, Np);
      for (int64_t b = 0; b < B; ++b) {
        if (mask && !mask[b * T + t]) continue;
        const int32_t* pr = px + (b * T + t) * Np + 2 * Up;
        const int32_t* ar = hacc + b * Np + 2 * Up;
        int16_t *hb = h + b * Up, *lb = last + b * Up, *zb = zs + b * Up;
        for (int64_t j = 0; j < Up; j += 16) {
          // pre = sat16(p_x + sat16(MBQM(acc, M_h)))
          const vi ma = clamp32(mbqm(load(ar + j), mh[2]), -32768, 32767);
          const vi mb = clamp32(mbqm(load(ar + j + 8), mh[2]), -32768, 32767);
          const vi pre =
              pack16(_mm256_add_epi32(load(pr + j), ma), _mm256_add_epi32(load(pr + j + 8), mb));
          const vi hn = gru_update(load(zb + j), tanh16(pre, 3), load(hb + j));
          store(hb + j, hn);
          store(lb + j, hn);
        }
      }
    }
    // The rows' outputs and h in the dot product's layout (masked rows: h unchanged, the output
    // repeats the last valid one, or zp_h with zero_output_for_mask).
    for (int64_t b = 0; b < B; ++b) {
      const bool valid = !mask || mask[b * T + t];
      int16_t* lb = last + b * Up;
      if (!valid && q.zero_output)
        for (int64_t j = 0; j < Up; j += 16) store(lb + j, zp_h);
      if (valid)
        for (int64_t j = 0; j < Up; j += 16)
          put_codes(l, load(h + b * Up + j), ha + b * hs + j * l.esize);
      if (q.sequences) {
        int8_t* out = y + (b * T + ot) * U;
        for (int64_t j = 0; j < U; j += 16) store_s8(out + j, load(lb + j), U - j);
      }
    }
  }
  if (!q.sequences)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < U; j += 16) store_s8(y + b * U + j, load(last + b * Up + j), U - j);
}

void logistic_loop(const int16_t* x, int16_t* y, int64_t n, int m) {
  for (int64_t i = 0; i + 16 <= n; i += 16) store(y + i, logistic16(load(x + i), m));
}
void tanh_loop(const int16_t* x, int16_t* y, int64_t n, int m) {
  for (int64_t i = 0; i + 16 <= n; i += 16) store(y + i, tanh16(load(x + i), m));
}

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options

// ---- AVX-512 VNNI: the dot product -------------------------------------------------------------

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))), \
                             apply_to = function)
#endif

// A: rows of u8 quads (stride a_stride bytes); B: [kq][Np][4] s8; 16 columns a vector, NV of
// them from column c.
template <int MR, int NV>
void mm_vnni_tile(const uint8_t* A, int64_t a_stride, const int8_t* B, int64_t kq, int64_t Np,
                  int64_t c, const int32_t* init, int32_t* C, int64_t ldc) {
  __m512i acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_loadu_si512(init + c + 16 * v);
  for (int64_t k = 0; k < kq; ++k) {
    __m512i b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_si512(B + (k * Np + c + 16 * v) * 4);
    for (int r = 0; r < MR; ++r) {
      int32_t quad;
      std::memcpy(&quad, A + r * a_stride + 4 * k, 4);
      const __m512i a = _mm512_set1_epi32(quad);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], a, b[v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_si512(C + r * ldc + c + 16 * v, acc[r][v]);
}
template <int MR>
void mm_vnni_rows(const uint8_t* A, int64_t a_stride, const int8_t* B, int64_t kq, int64_t Np,
                  int64_t c0, int64_t nc, const int32_t* init, int32_t* C, int64_t ldc) {
  int64_t c = c0;
  for (; c + 64 <= c0 + nc; c += 64) mm_vnni_tile<MR, 4>(A, a_stride, B, kq, Np, c, init, C, ldc);
  switch ((c0 + nc - c) / 16) {
    case 3:
      mm_vnni_tile<MR, 3>(A, a_stride, B, kq, Np, c, init, C, ldc);
      break;
    case 2:
      mm_vnni_tile<MR, 2>(A, a_stride, B, kq, Np, c, init, C, ldc);
      break;
    case 1:
      mm_vnni_tile<MR, 1>(A, a_stride, B, kq, Np, c, init, C, ldc);
      break;
    default:
      break;
  }
}
void matmul_vnni(const uint8_t* A, int64_t a_stride, int64_t rows, const uint8_t* Bp, int64_t kq,
                 int64_t Np, int64_t c0, int64_t nc, const int32_t* init, int32_t* C, int64_t ldc) {
  const int8_t* B = reinterpret_cast<const int8_t*>(Bp);
  for (int64_t r0 = 0; r0 < rows; r0 += 4) {
    const uint8_t* a = A + r0 * a_stride;
    int32_t* cr = C + r0 * ldc;
    switch (std::min<int64_t>(4, rows - r0)) {
      case 4:
        mm_vnni_rows<4>(a, a_stride, B, kq, Np, c0, nc, init, cr, ldc);
        break;
      case 3:
        mm_vnni_rows<3>(a, a_stride, B, kq, Np, c0, nc, init, cr, ldc);
        break;
      case 2:
        mm_vnni_rows<2>(a, a_stride, B, kq, Np, c0, nc, init, cr, ldc);
        break;
      default:
        mm_vnni_rows<1>(a, a_stride, B, kq, Np, c0, nc, init, cr, ldc);
        break;
    }
  }
}

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options

}  // namespace

std::shared_ptr<QRnnWorkspace> make_qrnn_workspace(const QRnnConfig& cfg) {
  auto ws = std::make_shared<QRnnWorkspace>();
  const Geo g = geo_of(cfg);
  const int64_t B = cfg.batch, rows = cfg.batch * cfg.steps;
  // The larger of the two layouts: VNNI K rounded to 4 one byte each, AVX2 to 2 two bytes each.
  auto kbytes = [](int64_t k) { return std::max(round_up(k, 4), round_up(k, 2) * 2); };
  ws->wx.resize(static_cast<size_t>(kbytes(cfg.depth) * g.Np));
  ws->wh.resize(static_cast<size_t>(kbytes(cfg.units) * g.Np));
  ws->ebx.resize(static_cast<size_t>(g.Np));
  ws->ebh.resize(static_cast<size_t>(g.Np));
  ws->xa.resize(static_cast<size_t>(rows * kbytes(cfg.depth)));
  ws->px.resize(static_cast<size_t>(rows * g.Np));
  ws->hacc.resize(static_cast<size_t>(B * g.Np));
  ws->ha.resize(static_cast<size_t>(B * g.Up * 2));
  ws->rha.resize(static_cast<size_t>(B * g.Up * 2));
  for (auto* v : {&ws->h, &ws->c, &ws->last, &ws->z}) v->resize(static_cast<size_t>(B * g.Up));
  const int64_t gu = cfg.gates * cfg.units;
  ws->wx_copy.resize(static_cast<size_t>(cfg.depth * gu));
  ws->wh_copy.resize(static_cast<size_t>(cfg.units * gu));
  ws->bx_copy.resize(static_cast<size_t>(gu));
  ws->bh_copy.resize(static_cast<size_t>(gu));
  return ws;
}

void qrnn_s8__avx512_vnni(const QRnnConfig& cfg, QRnnWorkspace& ws, const int8_t* x,
                          const int8_t* wx, const int8_t* wh, const int32_t* bx, const int32_t* bh,
                          const bool* mask, int8_t* y) {
  run_qrnn(kVnni, matmul_vnni, cfg, ws, x, wx, wh, bx, bh, mask, y);
}

void qrnn_s8__avx2(const QRnnConfig& cfg, QRnnWorkspace& ws, const int8_t* x, const int8_t* wx,
                   const int8_t* wh, const int32_t* bx, const int32_t* bh, const bool* mask,
                   int8_t* y) {
  run_qrnn(kAvx2, matmul_avx2, cfg, ws, x, wx, wh, bx, bh, mask, y);
}

void logistic_int16_avx2(const int16_t* x, int16_t* y, int64_t n, int input_int_bits) {
  logistic_loop(x, y, n, input_int_bits);
}
void tanh_int16_avx2(const int16_t* x, int16_t* y, int64_t n, int input_int_bits) {
  tanh_loop(x, y, n, input_int_bits);
}

}  // namespace lowbit::kernels
