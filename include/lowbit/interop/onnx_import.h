// ONNX float models -> a trainable lowbit model (issue 15, item 1): a functional nn::Model of
// lowbit layers with the ONNX initializers as weights, so that compile/fit,
// quant::quantize_model and onnx::to_onnx work on it.
//
//   nn::ModelPtr m = onnx::import_onnx("cnn.onnx");     // takes NHWC input (Keras layout)
//   Tensor y = m->predict(x_nhwc);                      // = ONNX Runtime's output on NCHW x
//   auto qat = quant::quantize_model(*m, quant::QuantizeConfig::preset("w8a8"));
//
// What maps to what (docs/interop-onnx-import.md has the table): Conv -> Conv1D / Conv2D (group
// > 1: groups) / DepthwiseConv2D (group = input channels); explicit pads that are not
// TensorFlow's "same" -> ZeroPadding2D first; Gemm / MatMul by a constant (+ Add of a constant
// bias) -> Dense; BatchNormalization -> BatchNormalization (moving statistics); Relu, Clip(0, m)
// -> ReLU; Sigmoid, Tanh, Softmax, HardSigmoid, HardSwish -> Activation (+ Multiply); MaxPool,
// AveragePool, GlobalAveragePool, GlobalMaxPool -> pooling layers; Add / Sub / Mul of two
// tensors -> Add / Multiply (Sub: a Rescaling by -1 first); Add / Sub / Mul / Div by a constant
// -> Rescaling; Flatten / Reshape / Squeeze / Unsqueeze -> Reshape (or nothing); Transpose ->
// nothing (a layout change, see below); Concat -> Concatenate; Pad -> ZeroPadding2D; Identity,
// Dropout; LSTM / GRU (forward, bidirectional) -> LSTM / GRU / Bidirectional with the gates
// reordered (ONNX i, o, f, c -> Keras i, f, c, o) and sequence_lens -> SequenceMask feeding the
// layer's mask. Constant subgraphs (Shape, Gather, Unsqueeze, Concat, Slice, Cast,
// ConstantOfShape, Expand ... computing a reshape target, pads or initial states) are evaluated
// at import; the batch dim stays symbolic.
//
// Layout: lowbit layers are channels-last. Each imported value remembers which ONNX dim each of
// its lowbit dims holds; convolutions produce channels-last values, and a Transpose only
// changes that record. A Permute layer appears only where an op needs ONNX's element order and
// the value is not in it (a Flatten / Reshape of a [N, C, H, W] value with H*W > 1, an
// elementwise op of two values in different layouts). Inputs of rank >= 3 read by a
// channels-first op (Conv, pooling, BatchNormalization, Pad) are taken channels-last (NHWC /
// [N, L, C]); other inputs as in the ONNX graph. Outputs that are channels-last stay so; the
// others come back in ONNX's order, without ONNX's size-1 dims that lowbit does not have (an
// LSTM's Y_h [1, B, H] is [B, H]). ImportOptions::onnx_layout = true takes and returns every
// array exactly as the ONNX model does instead.
//
// Anything not supported is refused with an UnsupportedError naming the node, its op type, the
// opset and the attribute or input at fault (never approximated); an inconsistent model (a
// missing input, shapes that do not match) is a ValueError; malformed bytes an IoError.
#pragma once

#include <cstddef>
#include <string>

#include "lowbit/interop/onnx_proto.h"
#include "lowbit/nn/model.h"

namespace lowbit::onnx {

struct ImportOptions {
  // true: the model takes and returns arrays laid out as in the ONNX graph (NCHW); a Permute
  // layer after such inputs and before such outputs. false: channels-last at the boundary.
  bool onnx_layout = false;
  // The model's name ("": the ONNX graph's name, else "onnx_model").
  std::string name;
};

// Imports a decoded model.
nn::ModelPtr import_onnx(const ModelProto& model, const ImportOptions& options = {});
// Decodes (decode_model: IoError for malformed bytes) and imports a serialized model.
nn::ModelPtr import_onnx(const void* data, size_t size, const ImportOptions& options = {});
// Reads (read_model: IoError for an unreadable or malformed file) and imports `path`.
nn::ModelPtr import_onnx(const std::string& path, const ImportOptions& options = {});

}  // namespace lowbit::onnx
