// Fast int8 conv / fully-connected kernels (src/kernels/fast/int8.cc), AVX-512 VNNI and AVX2,
// chosen at run time; bit-identical to the reference kernels of kernels/reference/int8.h.
//
// The int32 accumulator is the reference's exact sum in another order (integer addition is
// associative; the vectors wrap modulo 2^32 exactly as the reference's int32 sum would if it
// overflowed, which a valid model never does), and the output stage is
// ConvOutputStage::apply lane by lane: the same SRDHM / RDPOT / single-rounding arithmetic on
// 64-bit products (int8.cc explains why each vector step equals its scalar step).
//   __avx512_vnni  vpdpbusd (u8 x s8 -> s32, four taps per lane): the activations enter as
//                  u8 = x + 128 (x ^ 0x80), padding as zp + 128, and the bias absorbs
//                  -(zp + 128) * sum_k w[k][c], so that every tap contributes (x - zp) * w.
//   __avx2         vpmaddwd on s16 (x - zp) and s16 weights, two taps per lane (exact: each
//                  product is at most 255 * 128 in magnitude).
// Depthwise convolutions (groups == in_c == out_c, windows up to 64 taps) have their own
// channel-vectorised loop in the general rows: AVX-512 pairs taps, s16 (x - zp) x s16 w by
// vpdpwssd, 32 channels per step (taps in the padding read a row of zero points); AVX2
// multiplies int32 lanes (vpmulld). Two AVX-512 VNNI rows come first in the kernel table:
//   qconv2d_depthwise_s8__avx512_vnni  groups == in_c > 1, any depth multiplier: per output row
//     the input columns are transposed once into u8 quads of four kernel rows, so that a 3x3
//     output is three vpdpbusd per 16 channels (the bias absorbs -(zp + 128) * sum w; padding
//     reads the zero point, contributing 0 exactly as the reference's skipped tap);
//   qconv2d_fewc_s8__avx512_vnni  groups == 1, in_c <= 4 (a network's first conv): padded u8
//     input rows, each kernel row's taps read as contiguous quads, 4 pixels x 32 channels tiles.
// Both use a shorter output stage where it is exact (double rounding, every right shift >= 1,
// |accumulator| <= 2^29 from the bias and the depth: decided when the weights are packed).
//
// Weights are packed into the kernel's layout into the params' workspace, which keeps a copy of
// the weights and bias it packed: a later call with equal weights (memcmp) reuses the packing,
// so a plan's constant weights are packed once. A run allocates only on its first call (or when
// the weights' size changes); the workspace's mutex serialises concurrent runs of one plan.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "kernels/reference/int8.h"

namespace lowbit::kernels {

// The per-channel output stages as lane arrays: channels in blocks of 16, per block the 16
// values of each parameter (kernels/fast/int8.cc, enum RqParam) one after the other, so that
// one pointer reaches them all.
struct QRequantLanes {
  std::vector<int32_t> lanes;
  bool single = false;
  bool any_left = false;  // some channel's multiplier is >= 1 (a left shift before SRDHM)
  bool lean = false;      // the shorter output stage applies (kernels/fast/int8.cc, set_lean)
};

struct QWorkspace {
  std::mutex mu;
  int packed_for = -1;  // which kernel packed `b` (an internal tag), -1: none
  std::vector<int8_t> w_copy;
  std::vector<int32_t> bias_copy;
  bool had_bias = false;
  // The weights and bias are graph constants (PrepareCtx::constants): once packed, a call does
  // not compare them with w_copy / bias_copy again (at batch 1 that comparison read every
  // weight byte twice per call: ~7 MB per MobileNetV2 inference).
  bool constant_weights = false;
  std::vector<uint8_t> b;         // packed weights
  std::vector<int32_t> bias_eff;  // bias plus the zero point compensation, per channel
  std::vector<uint8_t> epi;       // per-kernel output-stage extras (the depthwise row's)
  QRequantLanes rq;               // filled once
  bool rq_ready = false;
  std::vector<uint8_t> a;  // per-thread activation tiles
};

inline std::shared_ptr<QWorkspace> make_qworkspace() { return std::make_shared<QWorkspace>(); }

// Whether the fast kernels take these parameters (the activation tile must stay small: the
// reduction depth k_h * k_w * in_c / groups at most kMaxFastDepth).
constexpr int64_t kMaxFastDepth = 1 << 16;
bool qconv2d_s8_fast_supported(const QConvParams& p);
bool qfully_connected_s8_fast_supported(const QFullyConnectedParams& p);
// The depthwise row: groups == in_c > 1, any depth multiplier out_c / in_c, k_h <= 16.
bool qconv2d_s8_depthwise_supported(const QConvParams& p);
// The few-input-channels row (a network's first conv): groups == 1, in_c <= 4, dil_w == 1.
constexpr int64_t kMaxFewInChannels = 4;
bool qconv2d_s8_few_in_channels_supported(const QConvParams& p);

void qconv2d_s8__avx512_vnni(const QConvParams& p, const int8_t* x, const int8_t* w,
                             const int32_t* bias, int8_t* y);
// AVX-512 VNNI rows for depthwise convolutions and for few input channels (the supports above).
void qconv2d_depthwise_s8__avx512_vnni(const QConvParams& p, const int8_t* x, const int8_t* w,
                                       const int32_t* bias, int8_t* y);
void qconv2d_fewc_s8__avx512_vnni(const QConvParams& p, const int8_t* x, const int8_t* w,
                                  const int32_t* bias, int8_t* y);
void qconv2d_s8__avx2(const QConvParams& p, const int8_t* x, const int8_t* w, const int32_t* bias,
                      int8_t* y);
void qfully_connected_s8__avx512_vnni(const QFullyConnectedParams& p, const int8_t* x,
                                      const int8_t* w, const int32_t* bias, int8_t* y);
void qfully_connected_s8__avx2(const QFullyConnectedParams& p, const int8_t* x, const int8_t* w,
                               const int32_t* bias, int8_t* y);

}  // namespace lowbit::kernels
