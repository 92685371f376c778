// lowbit integer model -> TFLite (.tflite, schema version 3, int8): so that a model trained and
// converted here (quant::convert_to_integer) deploys with TFLite's interpreter on phones and
// microcontrollers. docs/interop-tflite.md has the op table and the commands.
//
//   quant::IntegerModel im = quant::convert_to_integer(*qat);
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
  // kernels) leave conv / dense to TFLite's builtin int8 kernels. For verification; off for
  // deployment.
  bool weights_at_run_time = false;
  // How the target TFLite build rounds its multipliers (MultiplyByQuantizedMultiplier):
  // kDouble, gemmlowp's (TFLite's default build); kSingle, a build with TFLITE_SINGLE_ROUNDING
  // (as @tensorflow/tfjs-tflite's wasm interpreter is, measured: docs/interop-tflite.md). Every
  // op's codes are checked against this rounding; the model must have been converted with the
  // same ConvertOptions::rounding.
  quant::Rounding rounding = quant::Rounding::kDouble;
  // The model's description field.
  std::string description = "lowbit integer model";
};

// The .tflite flatbuffer bytes of `model`. UnsupportedError (naming the op, the tensor and why)
// for what TFLite cannot compute exactly as lowbit does: the uint8 scheme, qlstm / qgru /
// timestep_mask, a grouped conv other than depthwise, explicit padding, a clamp narrower than
// TFLite's fused activations give (a low-bit activation grid), a multiplier TFLite derives
// differently, single rounding where TFLite's double rounding gives other codes, a softmax or
// nonlinearity on parameters other than TFLite's fixed ones. ValueError for bad options.
std::string to_tflite(const quant::IntegerModel& model, const TfliteExportOptions& options = {});

// to_tflite written to `path` atomically (a temporary file renamed over it); IoError on failure.
void export_tflite(const quant::IntegerModel& model, const std::string& path,
                   const TfliteExportOptions& options = {});

}  // namespace lowbit::tflite
