// lowbit -> ONNX export of nn::Model (issue 15, item 4): float models as plain ONNX operators, QAT
// models (quant::quantize_model, after training: ranges frozen) as QDQ models, the fake quantizers
// becoming QuantizeLinear/DequantizeLinear pairs with the trained scales and zero points.
//
//   onnx::export_onnx(*model, "model.onnx");            // float or QAT
//   onnx::ModelProto p = onnx::to_onnx(*qat, {.opset = 13});
//
// Layout: the exported graph takes the SAME input as the lowbit model (channels-last, NHWC /
// [B, T, C]) and returns outputs in lowbit's layout, so users feed the same arrays. Inside, a
// tensor is moved to channels-first (one Transpose) only where an ONNX op needs it (Conv,
// pooling, Pad) and stays there until an op needs channels-last again (Flatten, Dense, Reshape,
// Softmax, a graph output): a conv stack costs one Transpose after the input and one before the
// Flatten (so that Flatten keeps lowbit's NHWC order; weights are never permuted).
// The batch dim is symbolic ("N"); the other dims are the model's.
//
// Layers (float): Dense (rank 2: Gemm; higher rank: MatMul + Add), Conv1D / Conv2D (valid, same
// as explicit TF pads with the odd cell at the end, causal, strides, dilation, groups),
// DepthwiseConv2D (Conv with group = C), SeparableConv2D (depthwise Conv + 1x1 Conv),
// BatchNormalization (inference form), Activation / fused activations (linear, relu, relu6 as
// Clip, sigmoid, tanh, softmax, log_softmax, hard_sigmoid as HardSigmoid(1/6, 1/2), swish/silu
// as x * Sigmoid(x), elu, selu, softplus, softsign, exponential, leaky_relu), ReLU (max_value,
// negative_slope; threshold 0), Dropout (dropped), Max/AveragePooling 1D/2D (same: TF pads,
// AveragePool count_include_pad = 0), GlobalAverage/MaxPooling 1D/2D, Flatten, Reshape,
// ZeroPadding2D (Pad), Add, Multiply, Concatenate; LSTM, GRU, SimpleRNN -> ONNX LSTM, GRU, RNN
// (Keras LSTM gates i, f, c, o reordered to ONNX's i, o, f, c; GRU reset_after =
// linear_before_reset; return_sequences / return_state; activations sigmoid, tanh, relu).
// QAT layers: FakeQuant -> QuantizeLinear + DequantizeLinear (int8 per tensor; a uint8 grid is
// shifted by -128, the same reals; a grid narrower than int8 gets a Clip to its range first);
// QuantizeWrapper and FoldedConvBatchNorm -> the layer above with each quantized weight as int8
// codes on its grid + DequantizeLinear (per channel: axis 0 of OIHW conv weights, axis 1 of
// Gemm/MatMul [K, N] weights; 4- and 2-bit grids are int8 codes in their range); the bias, when
// the input is on an activation grid, as int32 codes at s_in * s_w[c] (quant::quantize_bias, as
// the integer runtime stores it) + DequantizeLinear, else float.
//
// A Relu / Clip(0, 6) read only by QuantizeLinear nodes whose grid starts at 0 is dropped (it
// changes no code), so that ONNX Runtime fuses DQ -> Conv -> Q into QLinearConv.
//
// Throws UnsupportedError naming the layer, its class and why for anything else (Embedding,
// masks, go_backwards with return_sequences, initial states, Bidirectional, QAT recurrent layers,
// gelu, ...), ValueError for opset < 13 (per-axis DequantizeLinear).
#pragma once

#include <cstdint>
#include <string>

#include "lowbit/interop/onnx_proto.h"
#include "lowbit/nn/model.h"

namespace lowbit::onnx {

struct ExportOptions {
  int64_t opset = 13;  // 13..21 (QDQ per-axis needs 13)
  std::string producer_name = "lowbit";
  std::string batch_dim = "N";  // dim_param of the batch dim of inputs and outputs
};

// The ONNX model of m (see above). The inputs are named after m's InputLayers, the outputs after
// the layers that produce them.
ModelProto to_onnx(const nn::Model& m, const ExportOptions& options = {});
// to_onnx then write_model(path) (atomic). IoError when the file cannot be written.
void export_onnx(const nn::Model& m, const std::string& path, const ExportOptions& options = {});

}  // namespace lowbit::onnx
