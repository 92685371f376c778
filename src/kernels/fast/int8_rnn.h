// Fast kernels of the integer LSTM and GRU (qlstm, qgru; src/ops/int8_recurrent_ops.cc, spec
// 3.7 "8x8_16"), AVX-512 VNNI and AVX2, chosen at run time; bit-identical to the reference
// kernel of int8_recurrent_ops.cc (tests/ops/int8_rnn_test.cc compares them on edge shapes).
//
// How a run goes (src/kernels/fast/int8_rnn.cc):
//   1. The weights are packed into the dot product's layout, each gate block padded to a
//      multiple of 16 columns (so that a vector of 16 or 8 lanes never straddles two gates), and
//      the effective biases eb = bias - zp * colsum(W) computed (int32, exact).
//   2. The input projection of every timestep at once: one int8 GEMM [batch*T, D] x [D, G*U]
//      with int32 accumulators, then sat16(MBQM(., M_x,g)) lane by lane.
//        __avx512_vnni  vpdpbusd (u8 x s8 -> s32): x enters as u8 = x + 128, eb absorbs
//                       -128 * colsum(W);
//        __avx2         vpmaddwd on s16 x and s16 weights, two taps per lane.
//      The int32 sums are the reference's in another order: integer addition is associative
//      and the lanes wrap modulo 2^32, so every sum the reference computes without overflow is
//      reproduced exactly. Masked steps are projected too (the result is never read).
//   3. Per step, the recurrent matmul of all batch rows (h codes x W_h, same dot products), then
//      the gate arithmetic of every unmasked row, 16 units at a time with AVX2 vectors (both
//      rows): int32 lanes for MBQM (SRDHM on 64-bit products, RDPOT by masks), the products
//      f c, i g, o tanh(c'), z (h - zp), (32767 - z) hh; int16 lanes for gemmlowp's logistic
//      and tanh (SRDHM16 = vpmulhrsw with the one overflow (-1)(-1) fixed, wrapping adds,
//      saturating shifts: the operations of src/core/fixed_point.cc one for one). Where the
//      reference saturates an int64 sum (sat16(px + MBQM), clamp8(MBQM + zp)) the vector code
//      first clamps the MBQM term to a range that cannot change the saturated result, then adds
//      in int32.
// The workspace is sized when the plan is prepared (make_qrnn_workspace): a run allocates
// nothing; it keeps a copy of the weights and biases it packed and packs again only when they
// differ. Its mutex serialises concurrent runs of one plan. One thread.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "lowbit/fixed_point.h"

namespace lowbit::kernels {

// What the kernels read (filled by the op's prepare step from its attributes and shapes).
struct QRnnConfig {
  bool lstm = true;
  int64_t batch = 0, steps = 0, depth = 0, units = 0, gates = 4;
  int32_t zp_x = 0, zp_h = 0;
  int cell_bits = 0;  // LSTM: p
  bool reset_after = true, sequences = false, backwards = false, zero_output = false;
  bool reverse_output = false;
  std::array<quant::QuantizedMultiplier, 4> mx{}, mh{};  // per gate (double rounding)
  quant::QuantizedMultiplier m_out;                      // LSTM 2^-30 / s_h, GRU 2^-15 / s_h
};

struct QRnnWorkspace {
  std::mutex mu;
  std::vector<uint8_t> wx, wh;         // packed weights
  std::vector<int32_t> ebx, ebh;       // effective biases per packed column
  std::vector<uint8_t> xa;             // the input rows in the dot product's layout
  std::vector<int32_t> px;             // [batch*T][G*Up] input projections, sat16(MBQM(.))
  std::vector<int32_t> hacc;           // [batch][G*Up] recurrent accumulators
  std::vector<uint8_t> ha, rha;        // h (and GRU r h) rows in the dot product's layout
  std::vector<int16_t> h, c, last, z;  // [batch][Up] codes
  // What `wx`, `wh`, `ebx`, `ebh` were packed from (the packing is reused while they are equal,
  // memcmp). packed_for: 0 none, 1 VNNI, 2 AVX2.
  int packed_for = 0;
  // Set at prepare when the weights and biases are constants of the plan (PrepareCtx::constants):
  // packed once, never compared again.
  bool constant_weights = false;
  std::vector<int8_t> wx_copy, wh_copy;
  std::vector<int32_t> bx_copy, bh_copy;
  bool had_bx = false, had_bh = false;
};

// A workspace large enough for both rows and these shapes.
std::shared_ptr<QRnnWorkspace> make_qrnn_workspace(const QRnnConfig& cfg);

// bx: the input-side bias (nullptr: zeros); bh: the recurrent-side bias (GRU reset_after only,
// nullptr: zeros); mask [batch, T] or nullptr; y [batch, T, U] or [batch, U].
void qrnn_s8__avx512_vnni(const QRnnConfig& cfg, QRnnWorkspace& ws, const int8_t* x,
                          const int8_t* wx, const int8_t* wh, const int32_t* bx, const int32_t* bh,
                          const bool* mask, int8_t* y);
void qrnn_s8__avx2(const QRnnConfig& cfg, QRnnWorkspace& ws, const int8_t* x, const int8_t* wx,
                   const int8_t* wh, const int32_t* bx, const int32_t* bh, const bool* mask,
                   int8_t* y);

// The vector logistic_int16 / tanh_int16 (fixed_point.h) the kernels use, exposed for the
// exhaustive test: n a multiple of 16; needs AVX2 (cpu_has(Isa::kAvx2)).
void logistic_int16_avx2(const int16_t* x, int16_t* y, int64_t n, int input_int_bits);
void tanh_int16_avx2(const int16_t* x, int16_t* y, int64_t n, int input_int_bits);

}  // namespace lowbit::kernels
