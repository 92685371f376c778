// Reference (plain-loop) int8 kernels of integer-only inference: TFLite's reference semantics
// written as the specification (docs/spec/quantization-semantics.md 3.2, 3.5, 3.6), on codes
// and the prepared output stages of include/lowbit/fixed_point.h. The fast kernels
// (kernels/fast/int8.h, int8_pool.h, int8_add.h, int8_quantize.h, int8_lut.h) are checked bit
// for bit against these.
//
// Codes: activations int8 with a zero point; weights int8 symmetric (zero point 0); biases int32
// at scale s_in * s_w[c] with zero point 0. A convolution output channel c is
//   acc = bias[c] + sum_{taps inside the input} (x - zp_x) * w        (int32, exact)
//   y   = stage[c].apply(acc)  = clamp(MBQM(acc, M0[c], shift[c]) + zp_y, act_min, act_max)
// Taps outside the input (padding) are skipped, which is TFLite's padding with the input zero
// point. Threads split the outputs; every output is one fixed-order int32 sum, so the result
// does not depend on the thread count.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/conv_params.h"
#include "lowbit/fixed_point.h"

namespace lowbit::kernels {

// Scratch of the fast kernels (packed weights, activation tiles; kernels/fast/int8.h), made by
// the prepare step and shared by the copies of one plan's params. The reference ignores it.
struct QWorkspace;

// conv2d / depthwise (groups) and fully connected, int8 x int8 -> int8.
struct QConvParams {
  Conv2DParams geo;                            // NHWC x HWIO geometry, groups included
  int32_t input_zero_point = 0;                // zp_x
  std::vector<quant::ConvOutputStage> stages;  // one per output channel
  std::shared_ptr<QWorkspace> workspace;       // fast kernels only
};

// x [n,in_h,in_w,in_c] s8, w [k_h,k_w,in_c/groups,out_c] s8, bias [out_c] s32 (nullptr: none),
// y [n,out_h,out_w,out_c] s8.
void qconv2d_s8_reference(const QConvParams& p, const int8_t* x, const int8_t* w,
                          const int32_t* bias, int8_t* y);

struct QFullyConnectedParams {
  int64_t rows = 1;   // product of x's leading dims
  int64_t depth = 1;  // x's last dim = w's first
  int64_t units = 1;  // w's last dim = y's last
  int32_t input_zero_point = 0;
  std::vector<quant::ConvOutputStage> stages;  // one per unit
  std::shared_ptr<QWorkspace> workspace;       // fast kernels only
};

// x [rows, depth] s8, w [depth, units] s8, bias [units] s32 (nullptr: none), y [rows, units].
void qfully_connected_s8_reference(const QFullyConnectedParams& p, const int8_t* x, const int8_t* w,
                                   const int32_t* bias, int8_t* y);

// Pools keep the input's (scale, zero point); out_c == in_c. max: the largest valid code, then
// the clamp [act_min, act_max]. avg: average_pool_mean of the valid taps' sum (half away from
// zero, TFLite), then the clamp.
void qmax_pool2d_s8_reference(const Conv2DParams& p, int32_t act_min, int32_t act_max,
                              const int8_t* x, int8_t* y);
// With `requant` (an average whose output has other parameters than its input, as a FakeQuant
// after the pool gives it): y = clamp(MBQM(sum - count * zp_in, M[count]) + zp_out), with
// M[count] = s_in / (s_out * count): the mean rounded once, to the output grid.
struct QAvgRequant {
  int32_t input_zero_point = 0, output_zero_point = 0;
  std::vector<quant::QuantizedMultiplier> per_count;  // index: the window's valid taps
  quant::Rounding rounding = quant::Rounding::kDouble;
};
void qavg_pool2d_s8_reference(const Conv2DParams& p, int32_t act_min, int32_t act_max,
                              const QAvgRequant* requant, const int8_t* x, int8_t* y);

// Bias rounding of quantization-aware training: y[c] = q * bs, bs = f32(s_in * s_w[c]) and q =
// quant::quantize_bias(b[c], bs), the int32 code the integer model stores; b[c] unchanged where
// b[c] is not finite or bs is not finite and > 0 (a range not seen yet). s_w: n entries, or
// one (per_channel false).
void fake_quant_bias_f32_reference(int64_t n, const float* b, float s_in, const float* s_w,
                                   bool per_channel, float* y);

// Elementwise add of two s8 tensors of n elements each (same shape): AddStage::apply.
void qadd_s8_reference(const quant::AddStage& stage, int64_t n, const int8_t* a, const int8_t* b,
                       int8_t* y);

// Requantize one code tensor to other parameters (Concatenate inputs, TFLite's Requantize):
//   y = clamp(MBQM(q - zp_in, M) + zp_out, qmin, qmax),  M = s_in / s_out.
struct RequantizeStage {
  int32_t input_zero_point = 0;
  quant::QuantizedMultiplier multiplier;
  int32_t output_zero_point = 0;
  int32_t qmin = -128, qmax = 127;
  quant::Rounding rounding = quant::Rounding::kDouble;
};
void requantize_s8_reference(const RequantizeStage& s, int64_t n, const int8_t* x, int8_t* y);

// The int8 nonlinearities (TFLite LOGISTIC / TANH / SOFTMAX with their fixed output
// parameters, spec 3.6).
//   logistic, tanh: a 256-entry table built at prepare time (TFLite's PopulateLookupTable, in
//     f32): table[q + 128] = clamp(round_away(f(s_in * (q - zp_in)) * (1 / s_out)) + zp_out)
//     with f = 1 / (1 + exp(-x)) (s_out 1/256, zp_out -128) or tanh (1/128, 0). The kernel only
//     looks codes up.
struct QLutStage {
  int8_t table[256] = {};
};
void qlut_s8_reference(const QLutStage& s, int64_t n, const int8_t* x, int8_t* y);

//   softmax over the last axis (rows of `depth` codes): quant::softmax_row_s8 per row, TFLite's
//   reference_ops::Softmax in gemmlowp fixed point (lowbit/fixed_point.h has the steps).
void qsoftmax_s8_reference(const quant::SoftmaxStage& s, int64_t rows, int64_t depth,
                           const int8_t* x, int8_t* y);

// f32 -> s8 (TFLite Quantize: affine_quantize) and s8 -> f32 (Dequantize).
void quantize_s8_reference(quant::QuantParams p, int64_t n, const float* x, int8_t* y);
void dequantize_s8_reference(quant::QuantParams p, int64_t n, const int8_t* x, float* y);

}  // namespace lowbit::kernels
