// Fast recurrence kernels: rnn_kernels.inc compiled for AVX-512 (chosen at run time when the
// CPU has it) and for any x86-64/other CPU (portable scalar build of the same loops).
//
// Numerics: f32 with fused multiply-adds in the AVX-512 build; exp by range reduction and a
// degree-6 polynomial (Cephes expf, ~1 ulp), 1/x by rcp14 and one Newton step (~1e-8
// relative); tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) (absolute error ~1e-7).
// The reference kernels (src/ops/rnn.cc) sum in double; tests compare with a tolerance.
#include "kernels/fast/rnn.h"

// GCC 12's avx512fintrin.h builds unmasked max/min/roundscale/scalef from
// _mm512_undefined_ps(), which -Wmaybe-uninitialized reports once inlined (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

namespace lowbit::kernels {

namespace rnn_avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f")
// clang ignores GCC target pragmas: the same region as a clang attribute (the fuzz build).
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f"))), apply_to = function)
#endif

using vf = __m512;
using vmask_t = __mmask16;
constexpr int kW = 16;

inline vmask_t vmask_n(int n) { return static_cast<vmask_t>((1u << n) - 1); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline vf vload_n(const float* p, vmask_t m) { return _mm512_maskz_loadu_ps(m, p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline void vstore_n(float* p, vf v, vmask_t m) { _mm512_mask_storeu_ps(p, m, v); }
inline vf vset1(float x) { return _mm512_set1_ps(x); }
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
// max/min return the second operand when either is NaN: pass the data second.
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
// A true division: 1/inf = 0 exactly, as the reference (rcp14 with a Newton step gave NaN).
// Its cost is small beside the recurrent GEMM (one per gate element per step).
inline vf vrecip(vf x) { return _mm512_div_ps(vset1(1.0f), x); }
// exp(-inf) = 0 and exp(+inf) = inf, as std::exp (issue 14: sigmoid(-inf) must be exactly 0, or
// 0 * inf in the cell gives inf where the reference gives NaN): the clamp lets 2^n underflow
// to 0 below -104 and overflow to inf above 88.73; NaN passes (vmax/vmin keep the data).
inline vf vexp(vf x) {
  x = vmin(vset1(89.0f), vmax(vset1(-104.0f), x));
  const vf n = _mm512_roundscale_ps(vmul(x, vset1(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf r = _mm512_fnmadd_ps(n, vset1(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, vset1(-2.12194440e-4f), r);
  vf p = vset1(1.9875691500e-4f);
  p = vfma(p, r, vset1(1.3981999507e-3f));
  p = vfma(p, r, vset1(8.3334519073e-3f));
  p = vfma(p, r, vset1(4.1665795894e-2f));
  p = vfma(p, r, vset1(1.6666665459e-1f));
  p = vfma(p, r, vset1(5.0000001201e-1f));
  p = vfma(p, vmul(r, r), vadd(r, vset1(1.0f)));
  return _mm512_scalef_ps(p, n);
}
inline vf vcopysign(vf magnitude, vf sign) {
  const __m512i s = _mm512_and_si512(_mm512_castps_si512(sign), _mm512_set1_epi32(INT32_MIN));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(magnitude), s));
}
inline vf vselect_open01(vf y, vf v) {
  const vmask_t m =
      _mm512_cmp_ps_mask(y, vzero(), _CMP_GT_OQ) & _mm512_cmp_ps_mask(y, vset1(1.0f), _CMP_LT_OQ);
  return _mm512_maskz_mov_ps(m, v);
}
inline vf vselect_pos(vf y, vf v) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, vzero(), _CMP_GT_OQ), v);
}

#include "kernels/fast/rnn_kernels.inc"

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options
}  // namespace rnn_avx512

namespace rnn_portable {

using vf = float;
using vmask_t = int;
constexpr int kW = 1;

inline vmask_t vmask_n(int n) { return n; }
inline vf vload(const float* p) { return *p; }
inline vf vload_n(const float* p, vmask_t) { return *p; }
inline void vstore(float* p, vf v) { *p = v; }
inline void vstore_n(float* p, vf v, vmask_t) { *p = v; }
inline vf vset1(float x) { return x; }
inline vf vzero() { return 0.0f; }
inline vf vadd(vf a, vf b) { return a + b; }
inline vf vsub(vf a, vf b) { return a - b; }
inline vf vmul(vf a, vf b) { return a * b; }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }  // NaN in b propagates
inline vf vmin(vf a, vf b) { return a < b ? a : b; }
inline vf vrecip(vf x) { return 1.0f / x; }
inline vf vexp(vf x) { return std::exp(x); }
inline vf vcopysign(vf magnitude, vf sign) { return std::copysign(magnitude, sign); }
inline vf vselect_open01(vf y, vf v) { return y > 0.0f && y < 1.0f ? v : 0.0f; }
inline vf vselect_pos(vf y, vf v) { return y > 0.0f ? v : 0.0f; }

#include "kernels/fast/rnn_kernels.inc"

}  // namespace rnn_portable

bool rnn_fast_supported(const RnnSeq& s) { return s.recurrent_dropout == nullptr; }

void rnn_forward_f32__avx512(RnnCell cell, const RnnSeq& s, const RnnForwardArgs& a) {
  if (cell == RnnCell::kLstm) rnn_avx512::lstm_forward(s, a);
  if (cell == RnnCell::kGru) rnn_avx512::gru_forward(s, a);
  if (cell == RnnCell::kSimple) rnn_avx512::simple_forward(s, a);
}
void rnn_forward_f32__portable(RnnCell cell, const RnnSeq& s, const RnnForwardArgs& a) {
  if (cell == RnnCell::kLstm) rnn_portable::lstm_forward(s, a);
  if (cell == RnnCell::kGru) rnn_portable::gru_forward(s, a);
  if (cell == RnnCell::kSimple) rnn_portable::simple_forward(s, a);
}

void rnn_backward_f32__avx512(RnnCell cell, const RnnSeq& s, const RnnBackwardArgs& a) {
  if (cell == RnnCell::kLstm) rnn_avx512::lstm_backward(s, a);
  if (cell == RnnCell::kGru) rnn_avx512::gru_backward(s, a);
  if (cell == RnnCell::kSimple) rnn_avx512::simple_backward(s, a);
}
void rnn_backward_f32__portable(RnnCell cell, const RnnSeq& s, const RnnBackwardArgs& a) {
  if (cell == RnnCell::kLstm) rnn_portable::lstm_backward(s, a);
  if (cell == RnnCell::kGru) rnn_portable::gru_backward(s, a);
  if (cell == RnnCell::kSimple) rnn_portable::simple_backward(s, a);
}

}  // namespace lowbit::kernels
