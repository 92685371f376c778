// Fast int8 add; kernels/fast/int8_add.h says why each vector step equals the scalar one.
#include "kernels/fast/int8_add.h"

#include <immintrin.h>

#include <algorithm>

namespace lowbit::kernels {

namespace {

[[maybe_unused]] constexpr int64_t kParallelElements = int64_t{1} << 16;
constexpr int64_t kBlock = int64_t{1} << 14;  // a multiple of every vector width

// One MBQM (right shift only) as lane constants: the multiplier, and for double rounding the
// RDPOT mask, half mask and exponent, for single rounding the rounding term and total shift.
struct Mbqm {
  int32_t m = 0;
  int32_t mask = 0, half = 0;
  int right = 0;
  int64_t round = 0;
  int tshift = 31;
};

Mbqm mbqm_of(quant::QuantizedMultiplier qm) {
  Mbqm r;
  r.m = qm.multiplier;
  r.right = -qm.shift;
  r.mask = static_cast<int32_t>((int64_t{1} << r.right) - 1);
  r.half = r.mask >> 1;
  r.tshift = 31 - qm.shift;
  r.round = int64_t{1} << (r.tshift - 1);
  return r;
}

// Splits [0, n) into blocks for the threads; body(begin, end) runs each.
template <class F>
void for_blocks(int64_t n, F&& body) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n > kParallelElements)
  for (int64_t k = 0; k < blocks; ++k) body(k * kBlock, std::min(n, (k + 1) * kBlock));
}

// ---- AVX2: 8 lanes ------------------------------------------------------------------------------

#pragma GCC push_options
#pragma GCC target("avx2")
// clang ignores GCC target pragmas: the same region as a clang attribute (the fuzz build).
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#endif

struct Avx2Mbqm {
  __m256i m, mask, half, round;
  __m128i right, tshift;
};

inline Avx2Mbqm avx2_of(const Mbqm& q) {
  return {_mm256_set1_epi32(q.m),      _mm256_set1_epi32(q.mask),  _mm256_set1_epi32(q.half),
          _mm256_set1_epi64x(q.round), _mm_cvtsi32_si128(q.right), _mm_cvtsi32_si128(q.tshift)};
}

template <bool kSingle>
inline __m256i mbqm8(__m256i v, const Avx2Mbqm& q) {
  const __m256i vo = _mm256_srli_epi64(v, 32);
  if constexpr (kSingle) {
    const __m256i zero = _mm256_setzero_si256();
    auto sra = [&](__m256i p) {  // floor(p / 2^tshift): ~(~p >> t) where p < 0
      const __m256i s = _mm256_cmpgt_epi64(zero, p);
      return _mm256_xor_si256(_mm256_srl_epi64(_mm256_xor_si256(p, s), q.tshift), s);
    };
    const __m256i pe = sra(_mm256_add_epi64(_mm256_mul_epi32(v, q.m), q.round));
    const __m256i po = sra(_mm256_add_epi64(_mm256_mul_epi32(vo, q.m), q.round));
    return _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
  } else {
    const __m256i r30 = _mm256_set1_epi64x(int64_t{1} << 30);
    const __m256i pe = _mm256_add_epi64(_mm256_mul_epi32(v, q.m), r30);
    const __m256i po = _mm256_add_epi64(_mm256_mul_epi32(vo, q.m), r30);
    const __m256i x = _mm256_blend_epi32(_mm256_srli_epi64(pe, 31), _mm256_slli_epi64(po, 1), 0xAA);
    const __m256i rem = _mm256_and_si256(x, q.mask);
    const __m256i thr = _mm256_sub_epi32(q.half, _mm256_srai_epi32(x, 31));
    // cmpgt gives -1 where the remainder passes the threshold: subtracting it adds 1.
    return _mm256_sub_epi32(_mm256_sra_epi32(x, q.right), _mm256_cmpgt_epi32(rem, thr));
  }
}

struct Avx2Stage {
  __m256i off1, off2, zp, lo, hi;
  __m128i left;
  Avx2Mbqm m1, m2, mo;
};

template <bool kSingle>
inline __m256i add8(const int8_t* a, const int8_t* b, const Avx2Stage& s) {
  const __m256i qa = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a)));
  const __m256i qb = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)));
  const __m256i x1 = mbqm8<kSingle>(_mm256_sll_epi32(_mm256_add_epi32(qa, s.off1), s.left), s.m1);
  const __m256i x2 = mbqm8<kSingle>(_mm256_sll_epi32(_mm256_add_epi32(qb, s.off2), s.left), s.m2);
  const __m256i o = _mm256_add_epi32(mbqm8<kSingle>(_mm256_add_epi32(x1, x2), s.mo), s.zp);
  return _mm256_min_epi32(_mm256_max_epi32(o, s.lo), s.hi);
}

template <bool kSingle>
void add_avx2(const quant::AddStage& st, int64_t begin, int64_t end, const int8_t* a,
              const int8_t* b, int8_t* y) {
  const Avx2Stage s{_mm256_set1_epi32(st.input1_offset),     _mm256_set1_epi32(st.input2_offset),
                    _mm256_set1_epi32(st.output_zero_point), _mm256_set1_epi32(st.act_min),
                    _mm256_set1_epi32(st.act_max),           _mm_cvtsi32_si128(st.left_shift),
                    avx2_of(mbqm_of(st.input1_multiplier)),  avx2_of(mbqm_of(st.input2_multiplier)),
                    avx2_of(mbqm_of(st.output_multiplier))};
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t i = begin;
  for (; i + 32 <= end; i += 32) {
    const __m256i o0 = add8<kSingle>(a + i, b + i, s);
    const __m256i o1 = add8<kSingle>(a + i + 8, b + i + 8, s);
    const __m256i o2 = add8<kSingle>(a + i + 16, b + i + 16, s);
    const __m256i o3 = add8<kSingle>(a + i + 24, b + i + 24, s);
    // packs work per 128-bit half (every value is already inside int8): reorder the dwords.
    const __m256i bytes =
        _mm256_packs_epi16(_mm256_packs_epi32(o0, o1), _mm256_packs_epi32(o2, o3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i),
                        _mm256_permutevar8x32_epi32(bytes, order));
  }
  for (; i < end; ++i) y[i] = static_cast<int8_t>(st.apply(a[i], b[i]));
}

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options

}  // namespace

// ---- AVX-512: 16 lanes --------------------------------------------------------------------------

// GCC 12 reports the undefined operands of unmasked AVX-512 intrinsics as uninitialized once
// inlined (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl")
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl"))), \
                             apply_to = function)
#endif

namespace {

struct Avx512Mbqm {
  __m512i m, mask, half, round;
  __m128i right, tshift;
};

inline Avx512Mbqm avx512_of(const Mbqm& q) {
  return {_mm512_set1_epi32(q.m),     _mm512_set1_epi32(q.mask),  _mm512_set1_epi32(q.half),
          _mm512_set1_epi64(q.round), _mm_cvtsi32_si128(q.right), _mm_cvtsi32_si128(q.tshift)};
}

template <bool kSingle>
inline __m512i mbqm16(__m512i v, const Avx512Mbqm& q) {
  const __m512i vo = _mm512_srli_epi64(v, 32);
  if constexpr (kSingle) {
    const __m512i pe =
        _mm512_sra_epi64(_mm512_add_epi64(_mm512_mul_epi32(v, q.m), q.round), q.tshift);
    const __m512i po =
        _mm512_sra_epi64(_mm512_add_epi64(_mm512_mul_epi32(vo, q.m), q.round), q.tshift);
    return _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
  } else {
    const __m512i r30 = _mm512_set1_epi64(int64_t{1} << 30);
    const __m512i pe = _mm512_add_epi64(_mm512_mul_epi32(v, q.m), r30);
    const __m512i po = _mm512_add_epi64(_mm512_mul_epi32(vo, q.m), r30);
    const __m512i x =
        _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 31), _mm512_slli_epi64(po, 1));
    const __m512i rem = _mm512_and_si512(x, q.mask);
    const __m512i thr = _mm512_sub_epi32(q.half, _mm512_srai_epi32(x, 31));
    const __m512i r = _mm512_sra_epi32(x, q.right);
    return _mm512_mask_add_epi32(r, _mm512_cmpgt_epi32_mask(rem, thr), r, _mm512_set1_epi32(1));
  }
}

template <bool kSingle>
void add_avx512(const quant::AddStage& st, int64_t begin, int64_t end, const int8_t* a,
                const int8_t* b, int8_t* y) {
  const __m512i off1 = _mm512_set1_epi32(st.input1_offset);
  const __m512i off2 = _mm512_set1_epi32(st.input2_offset);
  const __m512i zp = _mm512_set1_epi32(st.output_zero_point);
  const __m512i lo = _mm512_set1_epi32(st.act_min), hi = _mm512_set1_epi32(st.act_max);
  const __m128i left = _mm_cvtsi32_si128(st.left_shift);
  const Avx512Mbqm m1 = avx512_of(mbqm_of(st.input1_multiplier));
  const Avx512Mbqm m2 = avx512_of(mbqm_of(st.input2_multiplier));
  const Avx512Mbqm mo = avx512_of(mbqm_of(st.output_multiplier));
  for (int64_t i = begin; i < end; i += 16) {
    const int64_t left_n = end - i;
    const __mmask16 k =
        left_n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left_n) - 1);
    const __m512i qa = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, a + i));
    const __m512i qb = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, b + i));
    const __m512i x1 = mbqm16<kSingle>(_mm512_sll_epi32(_mm512_add_epi32(qa, off1), left), m1);
    const __m512i x2 = mbqm16<kSingle>(_mm512_sll_epi32(_mm512_add_epi32(qb, off2), left), m2);
    __m512i o = _mm512_add_epi32(mbqm16<kSingle>(_mm512_add_epi32(x1, x2), mo), zp);
    o = _mm512_min_epi32(_mm512_max_epi32(o, lo), hi);
    _mm_mask_storeu_epi8(y + i, k, _mm512_cvtepi32_epi8(o));
  }
}

}  // namespace

void qadd_s8__avx512(const quant::AddStage& stage, int64_t n, const int8_t* a, const int8_t* b,
                     int8_t* y) {
  const bool single = stage.rounding == quant::Rounding::kSingle;
  for_blocks(n, [&](int64_t begin, int64_t end) {
    if (single)
      add_avx512<true>(stage, begin, end, a, b, y);
    else
      add_avx512<false>(stage, begin, end, a, b, y);
  });
}

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options
#pragma GCC diagnostic pop

bool qadd_s8_fast_supported(const quant::AddStage& s) {
  for (const quant::QuantizedMultiplier& m :
       {s.input1_multiplier, s.input2_multiplier, s.output_multiplier})
    if (m.shift > 0 || m.shift < -31 || m.multiplier < 0) return false;
  return s.left_shift >= 0 && s.left_shift <= 30;
}

void qadd_s8__avx2(const quant::AddStage& stage, int64_t n, const int8_t* a, const int8_t* b,
                   int8_t* y) {
  const bool single = stage.rounding == quant::Rounding::kSingle;
  for_blocks(n, [&](int64_t begin, int64_t end) {
    if (single)
      add_avx2<true>(stage, begin, end, a, b, y);
    else
      add_avx2<false>(stage, begin, end, a, b, y);
  });
}

}  // namespace lowbit::kernels
