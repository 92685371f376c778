// Fast table-driven int8 kernels (src/kernels/fast/int8_lut.cc): qlogistic, qtanh, requantize,
// qsoftmax and dequantize, AVX-512 and AVX2 rows chosen at run time, bit-identical to the
// reference kernels of kernels/reference/int8.h.
//
// An s8 -> s8 op of one input code has 256 possible outputs, so its fast rows look them up:
//   qlogistic, qtanh  the QLutStage table the prepare step builds (the reference looks it up
//                     too: the fast rows are only a faster lookup);
//   requantize        a table of requantize_s8_reference on the 256 codes, built at prepare
//                     (requantize_table): equal to the fixed-point output stage by construction,
//                     and faster than evaluating MBQM per element.
// The lookups (qlut_s8__*), for x read as the unsigned byte u = x + 256 * (x < 0):
//   __avx512_vbmi  the 256-byte table in 4 zmm; vpermi2b (_mm512_permutex2var_epi8) over the
//                  first pair gives entries 0..127 by u's low 7 bits, over the second pair
//                  entries 128..255; u's top bit (vpmovb2m) blends them. 64 codes a step,
//                  masked tails.
//   __avx2         vpshufb reads 16 entries and gives 0 where its index has the top bit set:
//                  for u < 128, the XOR over k = 0..7 of vpshufb(D_k, u - 16k), D_k = T_k ^
//                  T_(k-1) (T_k the k-th 16 entries, T_-1 = 0), telescopes to T_(u/16)[u % 16]
//                  (terms with k > u/16 have a negative index: 0); the same with T_8..15 on
//                  u - 128; vpblendvb by u's top bit. 32 codes a step; scalar tails.
//
// qsoftmax (TFLite's reference_ops::Softmax, quant::softmax_row_s8): e(d), the Q0.31 exp of
// d = x - max(row) in [-255, 0], depends on d only: make_qsoftmax_params tabulates
// quant::softmax_exp for every d >= diff_min (0 below, which gives the reference's -128 and
// adds nothing to the sum) and RDPOT(e, 12), at prepare. Per row, with the index
// i = d + 255 (one byte add of 255 - max: x - max + 255 lies in [0, 255]):
//   1. max (and min) of the codes;
//   2. S = sum of RDPOT(e, 12) in int64 (AVX-512: the 3 byte planes of the 20-bit table looked
//      up as above and summed by vpsadbw; AVX2: vpgatherdd, int32 lanes emptied into int64
//      every 2^14 elements), then quant::softmax_row_scale(S): the reciprocal as the reference
//      computes it, once per row;
//   3. the codes softmax_code(rs, e): SRDHM(r, e) of two non-negative values is
//      (r*e + 2^30) >> 31 (vpmuldq, even and odd lanes), RDPOT of a non-negative p is
//      (p + 2^(exponent-1)) >> exponent (unsigned 32-bit: no overflow), minus 128, clamped;
//      a row with exponent > 31 is all -128. Where the row holds at least as many codes as its
//      range of indices [min - max + 255, 255], the codes of that range are computed into a
//      256-byte table and the row is looked up as above; a shorter row computes each element
//      from e gathered from the table (vpgatherdd).
// dequantize: the reference computes f32(f64(scale) * f64(q - zp)). The f64 product of a 24-bit
// significand and an integer |q - zp| <= 255 (8 bits) is exact (32 bits < 53, and far inside
// f64's exponent range), so the reference rounds the exact product once to f32. An IEEE f32
// multiply scale * f32(q - zp) (q - zp exact in f32) also rounds the exact product once, in the
// same rounding mode, to the same f32 (subnormal and infinite results included; with FTZ set
// both flush the same tiny values, as tests/ops/int8_test.cc checks). So the rows run
// vpmovsxbd, vpsubd, vcvtdq2ps, vmulps: four times the f64 route's speed (two conversions
// per 8 lanes there), bit for bit the same.
// Threads split blocks of 2^14 elements (rows for qsoftmax) above 2^22 elements (below, one
// core is as fast: the loops are bound by memory); every element and every row is computed
// alone, so the result does not depend on them.
#pragma once

#include <cstdint>

#include "kernels/reference/int8.h"
#include "lowbit/fixed_point.h"

namespace lowbit::kernels {

// table[q + 128] = requantize_s8_reference(s) of the code q.
QLutStage requantize_table(const RequantizeStage& s);

void qlut_s8__avx512_vbmi(const QLutStage& s, int64_t n, const int8_t* x, int8_t* y);
void qlut_s8__avx2(const QLutStage& s, int64_t n, const int8_t* x, int8_t* y);

// qsoftmax's prepared parameters: the stage (the reference reads only it) and its tables,
// indexed by d + 255 for d = x - max in [-255, 0].
struct QSoftmaxParams {
  quant::SoftmaxStage stage;
  alignas(64) int32_t exp[256] = {};        // softmax_exp(d) for d >= diff_min, else 0
  alignas(64) int32_t exp12[256] = {};      // RDPOT(exp, 12), at most 2^19
  alignas(64) uint8_t planes[3][256] = {};  // byte k of exp12 (bits 8k..8k+7)
};
QSoftmaxParams make_qsoftmax_params(const quant::SoftmaxStage& s);

void qsoftmax_s8__avx512_vbmi(const QSoftmaxParams& p, int64_t rows, int64_t depth, const int8_t* x,
                              int8_t* y);
void qsoftmax_s8__avx2(const QSoftmaxParams& p, int64_t rows, int64_t depth, const int8_t* x,
                       int8_t* y);

void dequantize_s8_f32__avx512(quant::QuantParams p, int64_t n, const int8_t* x, float* y);
void dequantize_s8_f32__avx2(quant::QuantParams p, int64_t n, const int8_t* x, float* y);

}  // namespace lowbit::kernels
