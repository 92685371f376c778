// Fast table-driven int8 kernels; kernels/fast/int8_lut.h says why each equals the reference.
#include "kernels/fast/int8_lut.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>

namespace lowbit::kernels {

namespace {

// These loops run at 1-2 G codes/s on one core: a parallel region pays only for tensors of a
// few MB (and costs milliseconds per call when another process holds a core).
[[maybe_unused]] constexpr int64_t kParallelElements = int64_t{1} << 22;
constexpr int64_t kBlock = int64_t{1} << 14;  // a multiple of every vector width

// Splits [0, n) into blocks for the threads; body(begin, end) runs each.
template <class F>
void for_blocks(int64_t n, F&& body) {
  if (n <= kParallelElements) return body(0, n);  // no parallel region (~0.5 us a call)
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n > kParallelElements)
  for (int64_t k = 0; k < blocks; ++k) body(k * kBlock, std::min(n, (k + 1) * kBlock));
}

// Splits the rows of a softmax into blocks of about kBlock elements for the threads.
template <class F>
void for_row_blocks(int64_t rows, int64_t depth, F&& body) {
  if (rows * depth <= kParallelElements) return body(0, rows);
  const int64_t per = std::max<int64_t>(1, kBlock / std::max<int64_t>(depth, 1));
  const int64_t blocks = (rows + per - 1) / per;
#pragma omp parallel for schedule(static) if (rows * depth > kParallelElements)
  for (int64_t k = 0; k < blocks; ++k) body(k * per, std::min(rows, (k + 1) * per));
}

// The table indexed by the code's unsigned byte u (x + 256 for x < 0): u8[u] = table[x + 128].
struct U8Table {
  alignas(64) uint8_t t[256];
};
U8Table u8_table(const QLutStage& s) {
  U8Table u;
  std::memcpy(u.t, s.table + 128, 128);
  std::memcpy(u.t + 128, s.table, 128);
  return u;
}

}  // namespace

QLutStage requantize_table(const RequantizeStage& s) {
  int8_t codes[256];
  for (int q = -128; q <= 127; ++q) codes[q + 128] = static_cast<int8_t>(q);
  QLutStage t;
  requantize_s8_reference(s, 256, codes, t.table);
  return t;
}

QSoftmaxParams make_qsoftmax_params(const quant::SoftmaxStage& s) {
  QSoftmaxParams p;
  p.stage = s;
  for (int i = 0; i < 256; ++i) {
    const int32_t d = i - 255;
    p.exp[i] = d >= s.diff_min ? quant::softmax_exp(s, d) : 0;
    p.exp12[i] = quant::rounding_divide_by_pot(p.exp[i], 12);
    for (int k = 0; k < 3; ++k) p.planes[k][i] = static_cast<uint8_t>(p.exp12[i] >> (8 * k));
  }
  return p;
}

namespace {

// Whether the vector output step (non-negative SRDHM, RDPOT with an exponent in [1, 31]) is the
// reference's for this row; otherwise the row runs quant::softmax_row_s8 (never on a valid row:
// the reciprocal lies in (2^30, 2^31) and the exponent in [23, 35]).
bool vector_row_ok(const quant::SoftmaxRowScale& rs) {
  return rs.reciprocal > 0 && rs.exponent >= 1;
}

// ---- AVX2 ---------------------------------------------------------------------------------------

#pragma GCC push_options
#pragma GCC target("avx2")
// clang ignores GCC target pragmas: the same region as a clang attribute (the fuzz build).
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#endif

// The 16 vpshufb tables of a 256-entry lookup (int8_lut.h): d[k] = T_k ^ T_(k-1) for k in 0..7
// (T_-1 = 0) and d[8 + k] = T_(8+k) ^ T_(7+k) (T_7 not included: d[8] = T_8), broadcast to both
// 128-bit halves.
struct Avx2Lut {
  __m256i d[16];
};

inline Avx2Lut avx2_lut(const uint8_t* t) {
  Avx2Lut l;
  for (int h = 0; h < 2; ++h) {
    __m128i prev = _mm_setzero_si128();
    for (int k = 0; k < 8; ++k) {
      const __m128i cur = _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 128 * h + 16 * k));
      l.d[8 * h + k] = _mm256_broadcastsi128_si256(_mm_xor_si128(cur, prev));
      prev = cur;
    }
  }
  return l;
}

// t[u] for the 32 unsigned bytes u of idx.
inline __m256i lut32(const Avx2Lut& l, __m256i idx) {
  const __m256i sixteen = _mm256_set1_epi8(16);
  __m256i a = idx, b = _mm256_xor_si256(idx, _mm256_set1_epi8(static_cast<char>(0x80)));
  __m256i ra = _mm256_shuffle_epi8(l.d[0], a), rb = _mm256_shuffle_epi8(l.d[8], b);
  for (int k = 1; k < 8; ++k) {
    a = _mm256_sub_epi8(a, sixteen);
    b = _mm256_sub_epi8(b, sixteen);
    ra = _mm256_xor_si256(ra, _mm256_shuffle_epi8(l.d[k], a));
    rb = _mm256_xor_si256(rb, _mm256_shuffle_epi8(l.d[8 + k], b));
  }
  return _mm256_blendv_epi8(ra, rb, idx);
}

void qlut_avx2(const U8Table& u, int64_t begin, int64_t end, const int8_t* x, int8_t* y) {
  const Avx2Lut l = avx2_lut(u.t);
  int64_t i = begin;
  for (; i + 32 <= end; i += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), lut32(l, v));
  }
  for (; i < end; ++i) y[i] = static_cast<int8_t>(u.t[static_cast<uint8_t>(x[i])]);
}

inline int8_t hmax_epi8(__m256i v) {
  __m128i b = _mm_max_epi8(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  b = _mm_max_epi8(b, _mm_srli_si128(b, 8));
  b = _mm_max_epi8(b, _mm_srli_si128(b, 4));
  b = _mm_max_epi8(b, _mm_srli_si128(b, 2));
  b = _mm_max_epi8(b, _mm_srli_si128(b, 1));
  return static_cast<int8_t>(_mm_cvtsi128_si32(b));
}
inline int8_t hmin_epi8(__m256i v) {
  __m128i b = _mm_min_epi8(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  b = _mm_min_epi8(b, _mm_srli_si128(b, 8));
  b = _mm_min_epi8(b, _mm_srli_si128(b, 4));
  b = _mm_min_epi8(b, _mm_srli_si128(b, 2));
  b = _mm_min_epi8(b, _mm_srli_si128(b, 1));
  return static_cast<int8_t>(_mm_cvtsi128_si32(b));
}

// softmax_code for 8 lanes of e >= 0 (the row's constants: reciprocal r > 0, 2^(exponent-1),
// exponent).
struct Avx2Code {
  __m256i r, r30, rnd;
  __m128i shift;
};
inline __m256i codes8(__m256i e, const Avx2Code& c) {
  const __m256i pe = _mm256_add_epi64(_mm256_mul_epu32(e, c.r), c.r30);
  const __m256i po = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(e, 32), c.r), c.r30);
  const __m256i p = _mm256_blend_epi32(_mm256_srli_epi64(pe, 31), _mm256_slli_epi64(po, 1), 0xAA);
  const __m256i u = _mm256_srl_epi32(_mm256_add_epi32(p, c.rnd), c.shift);
  return _mm256_min_epi32(_mm256_sub_epi32(u, _mm256_set1_epi32(128)), _mm256_set1_epi32(127));
}
// The 8 int32 lanes (each in [-128, 127]) as 8 bytes.
inline void store8(int8_t* y, __m256i v) {
  const __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(y), _mm_packs_epi16(p16, p16));
}
// The 8 indices x + bias (bytes, wrapping) of x[0..8) as int32 lanes.
inline __m256i index8(const int8_t* x, __m128i bias) {
  return _mm256_cvtepu8_epi32(
      _mm_add_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x)), bias));
}

void softmax_rows_avx2(const QSoftmaxParams& p, int64_t r0, int64_t r1, int64_t depth,
                       const int8_t* x, int8_t* y) {
  alignas(32) uint8_t out[256] = {};  // the row's codes by index (entries below lo: stale)
  // Rows in groups of kGroup, the reciprocals back to back (as softmax_rows_vbmi).
  constexpr int kGroup = 8;
  for (int64_t g = r0; g < r1; g += kGroup) {
    const int64_t g1 = std::min(r1, g + kGroup);
    int32_t mxs[kGroup], mns[kGroup];
    int64_t sums[kGroup];
    for (int64_t r = g; r < g1; ++r) {
      const int8_t* xr = x + r * depth;
      // 1. max and min.
      __m256i vmax = _mm256_set1_epi8(-128), vmin = _mm256_set1_epi8(127);
      int64_t j = 0;
      for (; j + 32 <= depth; j += 32) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + j));
        vmax = _mm256_max_epi8(vmax, v);
        vmin = _mm256_min_epi8(vmin, v);
      }
      int32_t mx = hmax_epi8(vmax), mn = hmin_epi8(vmin);
      for (; j < depth; ++j) {
        mx = std::max<int32_t>(mx, xr[j]);
        mn = std::min<int32_t>(mn, xr[j]);
      }
      const uint8_t bias = static_cast<uint8_t>(255 - mx);
      const __m128i bias16 = _mm_set1_epi8(static_cast<char>(bias));
      auto index = [&](int8_t v) { return static_cast<uint8_t>(static_cast<uint8_t>(v) + bias); };
      // 2. the sum of RDPOT(e, 12).
      int64_t sum = 0;
      j = 0;
      while (j + 8 <= depth) {
        const int64_t stop = std::min(depth - 8, j + kBlock - 8);
        __m256i acc = _mm256_setzero_si256();  // at most 2^11 values <= 2^19 per lane
        for (; j <= stop; j += 8)
          acc = _mm256_add_epi32(acc, _mm256_i32gather_epi32(p.exp12, index8(xr + j, bias16), 4));
        alignas(32) int32_t lanes[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
        for (const int32_t v : lanes) sum += v;
      }
      for (; j < depth; ++j) sum += p.exp12[index(xr[j])];
      mxs[r - g] = mx;
      mns[r - g] = mn;
      sums[r - g] = sum;
    }
    quant::SoftmaxRowScale rss[kGroup];
    for (int64_t r = g; r < g1; ++r) rss[r - g] = quant::softmax_row_scale(sums[r - g]);
    for (int64_t r = g; r < g1; ++r) {
      const int8_t* xr = x + r * depth;
      int8_t* yr = y + r * depth;
      const int32_t mx = mxs[r - g], mn = mns[r - g];
      const uint8_t bias = static_cast<uint8_t>(255 - mx);
      const __m128i bias16 = _mm_set1_epi8(static_cast<char>(bias));
      auto index = [&](int8_t v) { return static_cast<uint8_t>(static_cast<uint8_t>(v) + bias); };
      int64_t j = 0;
      // 3. the codes.
      const quant::SoftmaxRowScale& rs = rss[r - g];
      if (!vector_row_ok(rs)) {
        quant::softmax_row_s8(p.stage, depth, xr, yr);
        continue;
      }
      if (rs.exponent > 31) {
        std::memset(yr, -128, static_cast<size_t>(depth));
        continue;
      }
      const Avx2Code c{_mm256_set1_epi32(rs.reciprocal), _mm256_set1_epi64x(int64_t{1} << 30),
                       _mm256_set1_epi32(int32_t{1} << (rs.exponent - 1)),
                       _mm_cvtsi32_si128(rs.exponent)};
      const int lo = mn - mx + 255;  // the smallest index of the row
      if (2 * depth <= 256 - lo) {
        // A short row: each element from its gathered e.
        j = 0;
        for (; j + 8 <= depth; j += 8)
          store8(yr + j, codes8(_mm256_i32gather_epi32(p.exp, index8(xr + j, bias16), 4), c));
        for (; j < depth; ++j)
          yr[j] = static_cast<int8_t>(quant::softmax_code(rs, p.exp[index(xr[j])]));
        continue;
      }
      for (int b = lo / 8 * 8; b < 256; b += 8)
        store8(reinterpret_cast<int8_t*>(out + b),
               codes8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.exp + b)), c));
      const Avx2Lut l = avx2_lut(out);
      const __m256i bias32 = _mm256_set1_epi8(static_cast<char>(bias));
      j = 0;
      for (; j + 32 <= depth; j += 32) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + j));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(yr + j),
                            lut32(l, _mm256_add_epi8(v, bias32)));
      }
      for (; j < depth; ++j) yr[j] = static_cast<int8_t>(out[index(xr[j])]);
    }
  }
}

void dequantize_avx2(quant::QuantParams qp, int64_t begin, int64_t end, const int8_t* x, float* y) {
  // f32(scale) * f32(q - zp): the exact product rounded once, as the reference's f64 product
  // (exact) converted to f32 (int8_lut.h).
  const __m256 s = _mm256_set1_ps(qp.scale);
  const __m256i zp = _mm256_set1_epi32(qp.zero_point);
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i));
    const __m256i lo = _mm256_sub_epi32(_mm256_cvtepi8_epi32(b), zp);
    const __m256i hi = _mm256_sub_epi32(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)), zp);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(s, _mm256_cvtepi32_ps(lo)));
    _mm256_storeu_ps(y + i + 8, _mm256_mul_ps(s, _mm256_cvtepi32_ps(hi)));
  }
  dequantize_s8_reference(qp, end - i, x + i, y + i);
}

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options

}  // namespace

void qlut_s8__avx2(const QLutStage& s, int64_t n, const int8_t* x, int8_t* y) {
  const U8Table u = u8_table(s);
  for_blocks(n, [&](int64_t begin, int64_t end) { qlut_avx2(u, begin, end, x, y); });
}

void qsoftmax_s8__avx2(const QSoftmaxParams& p, int64_t rows, int64_t depth, const int8_t* x,
                       int8_t* y) {
  if (depth <= 0) return;
  for_row_blocks(rows, depth,
                 [&](int64_t r0, int64_t r1) { softmax_rows_avx2(p, r0, r1, depth, x, y); });
}

void dequantize_s8_f32__avx2(quant::QuantParams p, int64_t n, const int8_t* x, float* y) {
  for_blocks(n, [&](int64_t begin, int64_t end) { dequantize_avx2(p, begin, end, x, y); });
}

// ---- AVX-512 ------------------------------------------------------------------------------------

// GCC 12 reports the undefined operands of unmasked AVX-512 intrinsics as uninitialized once
// inlined (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// dequantize: AVX-512 F, BW, DQ, VL (Isa::kAvx512).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl")
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))), \
                             apply_to = function)
#endif

namespace {

inline __mmask64 mask64(int64_t n) { return n >= 64 ? ~__mmask64{0} : (__mmask64{1} << n) - 1; }

void dequantize_avx512(quant::QuantParams qp, int64_t begin, int64_t end, const int8_t* x,
                       float* y) {
  // f32(scale) * f32(q - zp): the exact product rounded once (int8_lut.h).
  const __m512 s = _mm512_set1_ps(qp.scale);
  const __m512i zp = _mm512_set1_epi32(qp.zero_point);
  auto codes = [&](__m128i b) {
    return _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepi8_epi32(b), zp)));
  };
  int64_t i = begin;
  for (; i + 16 <= end; i += 16)
    _mm512_storeu_ps(y + i, codes(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  if (i < end) {
    const __mmask16 k = static_cast<__mmask16>((1u << (end - i)) - 1);
    _mm512_mask_storeu_ps(y + i, k, codes(_mm_maskz_loadu_epi8(k, x + i)));
  }
}

}  // namespace

void dequantize_s8_f32__avx512(quant::QuantParams p, int64_t n, const int8_t* x, float* y) {
  for_blocks(n, [&](int64_t begin, int64_t end) { dequantize_avx512(p, begin, end, x, y); });
}

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options

// The lookups: AVX-512 F, BW, VL and VBMI (Isa::kAvx512Vbmi).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi")
#ifdef __clang__
#pragma clang attribute push( \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi"))), apply_to = function)
#endif

namespace {

// A 256-byte table in 4 zmm.
struct Vbmi256 {
  __m512i t0, t1, t2, t3;
};
inline Vbmi256 vbmi_table(const uint8_t* t) {
  return {_mm512_loadu_si512(t), _mm512_loadu_si512(t + 64), _mm512_loadu_si512(t + 128),
          _mm512_loadu_si512(t + 192)};
}
// t[u] for the 64 unsigned bytes u of idx.
inline __m512i lut64(const Vbmi256& t, __m512i idx) {
  const __m512i lo = _mm512_permutex2var_epi8(t.t0, idx, t.t1);
  const __m512i hi = _mm512_permutex2var_epi8(t.t2, idx, t.t3);
  return _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi);
}

void qlut_vbmi(const U8Table& u, int64_t begin, int64_t end, const int8_t* x, int8_t* y) {
  const Vbmi256 t = vbmi_table(u.t);
  int64_t i = begin;
  for (; i + 64 <= end; i += 64) _mm512_storeu_si512(y + i, lut64(t, _mm512_loadu_si512(x + i)));
  if (i < end) {
    const __mmask64 k = mask64(end - i);
    _mm512_mask_storeu_epi8(y + i, k, lut64(t, _mm512_maskz_loadu_epi8(k, x + i)));
  }
}

inline int8_t hmax_epi8(__m512i v) {
  const __m256i a = _mm256_max_epi8(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  __m128i b = _mm_max_epi8(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  b = _mm_max_epi8(b, _mm_srli_si128(b, 8));
  b = _mm_max_epi8(b, _mm_srli_si128(b, 4));
  b = _mm_max_epi8(b, _mm_srli_si128(b, 2));
  b = _mm_max_epi8(b, _mm_srli_si128(b, 1));
  return static_cast<int8_t>(_mm_cvtsi128_si32(b));
}
inline int8_t hmin_epi8(__m512i v) {
  const __m256i a = _mm256_min_epi8(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  __m128i b = _mm_min_epi8(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  b = _mm_min_epi8(b, _mm_srli_si128(b, 8));
  b = _mm_min_epi8(b, _mm_srli_si128(b, 4));
  b = _mm_min_epi8(b, _mm_srli_si128(b, 2));
  b = _mm_min_epi8(b, _mm_srli_si128(b, 1));
  return static_cast<int8_t>(_mm_cvtsi128_si32(b));
}

struct Avx512Code {
  __m512i r, r30, rnd;
  __m128i shift;
};
inline __m512i codes16(__m512i e, const Avx512Code& c) {
  const __m512i pe = _mm512_add_epi64(_mm512_mul_epu32(e, c.r), c.r30);
  const __m512i po = _mm512_add_epi64(_mm512_mul_epu32(_mm512_srli_epi64(e, 32), c.r), c.r30);
  const __m512i p =
      _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 31), _mm512_slli_epi64(po, 1));
  const __m512i u = _mm512_srl_epi32(_mm512_add_epi32(p, c.rnd), c.shift);
  return _mm512_min_epi32(_mm512_sub_epi32(u, _mm512_set1_epi32(128)), _mm512_set1_epi32(127));
}

void softmax_rows_vbmi(const QSoftmaxParams& p, int64_t r0, int64_t r1, int64_t depth,
                       const int8_t* x, int8_t* y) {
  alignas(64) uint8_t out[256] = {};  // the row's codes by index (entries below lo: stale)
  const Vbmi256 pl[3] = {vbmi_table(p.planes[0]), vbmi_table(p.planes[1]), vbmi_table(p.planes[2])};
  const int64_t full = depth / 64 * 64;
  const __mmask64 tail = mask64(depth - full);
  // Rows in groups of kGroup: the reciprocals of a group's sums (a chain of ~10 dependent
  // scalar products each) are computed back to back, so that the CPU overlaps them.
  constexpr int kGroup = 8;
  for (int64_t g = r0; g < r1; g += kGroup) {
    const int64_t g1 = std::min(r1, g + kGroup);
    int32_t mxs[kGroup], mns[kGroup];
    int64_t sums[kGroup];
    for (int64_t r = g; r < g1; ++r) {
      const int8_t* xr = x + r * depth;
      // 1. max and min.
      __m512i vmax = _mm512_set1_epi8(-128), vmin = _mm512_set1_epi8(127);
      for (int64_t j = 0; j < full; j += 64) {
        const __m512i v = _mm512_loadu_si512(xr + j);
        vmax = _mm512_max_epi8(vmax, v);
        vmin = _mm512_min_epi8(vmin, v);
      }
      if (tail) {
        const __m512i v = _mm512_maskz_loadu_epi8(tail, xr + full);
        vmax = _mm512_mask_max_epi8(vmax, tail, vmax, v);
        vmin = _mm512_mask_min_epi8(vmin, tail, vmin, v);
      }
      const int32_t mx = hmax_epi8(vmax), mn = hmin_epi8(vmin);
      const __m512i bias = _mm512_set1_epi8(static_cast<char>(static_cast<uint8_t>(255 - mx)));
      // 2. the sum of RDPOT(e, 12): its three bytes looked up and summed by vpsadbw.
      __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0;
      const __m512i zero = _mm512_setzero_si512();
      auto add64 = [&](__m512i idx, __mmask64 k) {
        const __mmask64 top = _mm512_movepi8_mask(idx);
        auto plane = [&](const Vbmi256& t) {
          return _mm512_maskz_mov_epi8(
              k, _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(t.t0, idx, t.t1),
                                        _mm512_permutex2var_epi8(t.t2, idx, t.t3)));
        };
        s0 = _mm512_add_epi64(s0, _mm512_sad_epu8(plane(pl[0]), zero));
        s1 = _mm512_add_epi64(s1, _mm512_sad_epu8(plane(pl[1]), zero));
        s2 = _mm512_add_epi64(s2, _mm512_sad_epu8(plane(pl[2]), zero));
      };
      for (int64_t j = 0; j < full; j += 64)
        add64(_mm512_add_epi8(_mm512_loadu_si512(xr + j), bias), ~__mmask64{0});
      if (tail) add64(_mm512_add_epi8(_mm512_maskz_loadu_epi8(tail, xr + full), bias), tail);
      mxs[r - g] = mx;
      mns[r - g] = mn;
      sums[r - g] = _mm512_reduce_add_epi64(s0) + (_mm512_reduce_add_epi64(s1) << 8) +
                    (_mm512_reduce_add_epi64(s2) << 16);
    }
    quant::SoftmaxRowScale rss[kGroup];
    for (int64_t r = g; r < g1; ++r) rss[r - g] = quant::softmax_row_scale(sums[r - g]);
    for (int64_t r = g; r < g1; ++r) {
      const int8_t* xr = x + r * depth;
      int8_t* yr = y + r * depth;
      const int32_t mx = mxs[r - g], mn = mns[r - g];
      const __m512i bias = _mm512_set1_epi8(static_cast<char>(static_cast<uint8_t>(255 - mx)));
      // 3. the codes.
      const quant::SoftmaxRowScale& rs = rss[r - g];
      if (!vector_row_ok(rs)) {
        quant::softmax_row_s8(p.stage, depth, xr, yr);
        continue;
      }
      if (rs.exponent > 31) {
        std::memset(yr, -128, static_cast<size_t>(depth));
        continue;
      }
      const Avx512Code c{_mm512_set1_epi32(rs.reciprocal), _mm512_set1_epi64(int64_t{1} << 30),
                         _mm512_set1_epi32(int32_t{1} << (rs.exponent - 1)),
                         _mm_cvtsi32_si128(rs.exponent)};
      const int lo = mn - mx + 255;  // the smallest index of the row
      if (2 * depth <= 256 - lo) {
        // A short row: each element from its gathered e, 16 at a time.
        const __m128i bias16 = _mm512_castsi512_si128(bias);
        for (int64_t j = 0; j < depth; j += 16) {
          const int64_t left = depth - j;
          const __mmask16 k = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                         : static_cast<__mmask16>((1u << left) - 1);
          // Lanes past the row index bias itself: inside the table, never stored.
          const __m512i idx =
              _mm512_cvtepu8_epi32(_mm_add_epi8(_mm_maskz_loadu_epi8(k, xr + j), bias16));
          const __m512i e = _mm512_i32gather_epi32(idx, p.exp, 4);
          _mm_mask_storeu_epi8(yr + j, k, _mm512_cvtepi32_epi8(codes16(e, c)));
        }
        continue;
      }
      for (int b = lo / 16 * 16; b < 256; b += 16)
        _mm_store_si128(reinterpret_cast<__m128i*>(out + b),
                        _mm512_cvtepi32_epi8(codes16(_mm512_loadu_si512(p.exp + b), c)));
      const Vbmi256 t = vbmi_table(out);
      for (int64_t j = 0; j < full; j += 64)
        _mm512_storeu_si512(yr + j, lut64(t, _mm512_add_epi8(_mm512_loadu_si512(xr + j), bias)));
      if (tail)
        _mm512_mask_storeu_epi8(
            yr + full, tail,
            lut64(t, _mm512_add_epi8(_mm512_maskz_loadu_epi8(tail, xr + full), bias)));
    }
  }
}

}  // namespace

void qlut_s8__avx512_vbmi(const QLutStage& s, int64_t n, const int8_t* x, int8_t* y) {
  const U8Table u = u8_table(s);
  for_blocks(n, [&](int64_t begin, int64_t end) { qlut_vbmi(u, begin, end, x, y); });
}

void qsoftmax_s8__avx512_vbmi(const QSoftmaxParams& p, int64_t rows, int64_t depth, const int8_t* x,
                              int8_t* y) {
  if (depth <= 0) return;
  for_row_blocks(rows, depth,
                 [&](int64_t r0, int64_t r1) { softmax_rows_vbmi(p, r0, r1, depth, x, y); });
}

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options
#pragma GCC diagnostic pop

}  // namespace lowbit::kernels
