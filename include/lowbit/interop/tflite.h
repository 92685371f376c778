// lowbit integer model -> TFLite (.tflite, schema version 3, int8): so that a model trained and
// converted here (quant::convert_to_integer) deploys with TFLite's interpreter on phones and
// microcontrollers. docs/interop-tflite.md has the op table and the commands.
//
//   quant::IntegerModel im = quant::convert_to_integer(*qat);
//   tflite::use_target_rounding(im);                         // round as TFLite's kernels do
//   tflite::export_tflite(im, "model.tflite");              // atomic
//   std::string bytes = tflite::to_tflite(im, {.batch = 8});
//
// What is written: one subgraph, NHWC as lowbit (no layout change); the f32 input, a QUANTIZE,
// the integer ops, a DEQUANTIZE to the f32 output (or, with output_codes, the int8 output codes
// with their scale and zero point). Weights int8 symmetric per channel (quantized_dimension 0
// for CONV_2D / FULLY_CONNECTED filters [out, ...], 3 for DEPTHWISE_CONV_2D [1, KH, KW, C]),
// biases int32 at s_in * s_w[c]; a 4- or 2-bit weight is written as its int8 codes on the same
// grid (TFLite's int8 kernels read them as such). Each op is written only when TFLite's kernel
// computes exactly what lowbit's does on the same codes (the exporter checks this per op: the
// multipliers TFLite derives from the f32 scales in the file, the fused activation's clamp,
// and, for lowbit's single-rounding requantize and average pool, every reachable accumulator);
// anything else is refused with UnsupportedError naming the op, its tensor and why.
#pragma once

#include <string>
#include <vector>

#include "lowbit/quant/convert.h"

namespace lowbit::tflite {

struct TfliteExportOptions {
  // The batch dimension written into every tensor's shape (TFLite's shapes are static; the
  // file's shape_signature marks the batch as -1, for interpreters that resize inputs).
  int64_t batch = 1;
  // Make the int8 codes of the model output the subgraph output (no final DEQUANTIZE): what a
  // microcontroller deployment reads, and what compares bit for bit.
  bool output_codes = false;
  // Further int8 tensors of the integer model (by index into IntegerModel::tensors) to list as
  // subgraph outputs after the model output, as their int8 codes: per-layer comparisons.
  std::vector<int> extra_outputs;
  // Feed every filter through a RESHAPE to its own shape (the same codes, no longer a constant
  // tensor), so that delegates wanting constant filters (XNNPACK, which TFLite applies by default
  // in many builds and which requantizes int8 in f32, not bit-exact with TFLite's reference
  // kernels) leave conv / dense to TFLite's builtin int8 kernels; and write an int8
  // requantization as a 1x1 DEPTHWISE_CONV_2D (so fed) where one is exact, since XNNPACK also
  // takes QUANTIZE int8 -> int8 (with an 8-bit multiplier). For verification; off for
  // deployment. (The LSTM's weights stay constants: TFLite's integer LSTM needs them at
  // prepare time, and XNNPACK does not take it.)
  bool weights_at_run_time = false;
  // How the target TFLite build rounds its output multipliers, per kernel (both measured in
  // @tensorflow/tfjs-tflite's wasm interpreter: docs/interop-tflite.md):
  //   gemm_rounding: CONV_2D and FULLY_CONNECTED, whose optimized int8 kernels run through
  //     TFLite's GEMM backend, ruy, which rounds once (ruy's MultiplyByQuantizedMultiplier);
  //   rounding: TFLite's own int8 kernels (DEPTHWISE_CONV_2D, ADD, QUANTIZE int8 -> int8):
  //     MultiplyByQuantizedMultiplier, gemmlowp's double rounding unless the build defines
  //     TFLITE_SINGLE_ROUNDING.
  // TFLite's reference kernels (and a build whose GEMM is gemmlowp) round twice everywhere:
  // gemm_rounding = kDouble. Every op's codes are checked against its kernel's rounding; the
  // model's ops must round so (use_target_rounding sets them).
  quant::Rounding rounding = quant::Rounding::kDouble;
  quant::Rounding gemm_rounding = quant::Rounding::kSingle;
  // Write a qlstm although TFLite derives its hidden-state multiplier otherwise than lowbit
  // (the f32 2^-15 / s * 2^-15 against lowbit's f64 2^-30 / s_h: equal to 24 bits, so a hidden
  // code can differ where o * tanh(c) * M lies that close to a rounding tie; the exporter
  // picks the f32 scale s nearest lowbit's multiplier). Off: such an LSTM is refused.
  bool lstm_hidden_multiplier_f32 = false;
  // The model's description field.
  std::string description = "lowbit integer model";
};

// The .tflite flatbuffer bytes of `model`. UnsupportedError (naming the op, the tensor and why)
// for what TFLite cannot compute exactly as lowbit does: the uint8 scheme, qgru (no TFLite
// builtin), timestep_mask and a masked qlstm, a qlstm whose hidden multiplier TFLite derives
// otherwise (unless options.lstm_hidden_multiplier_f32), a grouped conv other than depthwise,
// explicit padding, a clamp narrower than TFLite's fused activations give (a low-bit activation
// grid), a multiplier TFLite derives differently, an op rounding otherwise than its target kernel
// (use_target_rounding), a requantize or requantizing average pool none of TFLite's forms computes
// exactly (QUANTIZE or a 1x1 DEPTHWISE_CONV_2D, after an AVERAGE_POOL_2D; or without padding a
// DEPTHWISE_CONV_2D of equal weights; docs/interop-tflite.md), a softmax or nonlinearity on
// parameters other than TFLite's fixed ones. ValueError for bad options.
std::string to_tflite(const quant::IntegerModel& model, const TfliteExportOptions& options = {});

// Sets the rounding of each conv / dense / add op of `model` to the one its TFLite kernel uses
// in the target build (options.gemm_rounding for a qconv2d with groups 1 and qfully_connected,
// options.rounding for a depthwise qconv2d and qadd), so that lowbit's integer runtime computes
// the codes that build's interpreter does (a per-op "rounding" attribute, as the converter
// writes it). Requantize and average-pool ops keep their single rounding (to_tflite checks
// their codes). Drops the model's prepared runtime (it is rebuilt on the next run).
void use_target_rounding(quant::IntegerModel& model, const TfliteExportOptions& options = {});

// to_tflite written to `path` atomically (a temporary file renamed over it); IoError on failure.
void export_tflite(const quant::IntegerModel& model, const std::string& path,
                   const TfliteExportOptions& options = {});

}  // namespace lowbit::tflite
