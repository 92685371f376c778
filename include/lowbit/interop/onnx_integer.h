// ONNX interop of integer models (issue 15, items 2 and 4): a quant::IntegerModel (the integer
// runtime, lowbit/quant/convert.h) to ONNX as QDQ or QOperator, and ONNX QDQ int8 files (as
// PyTorch 1.13's torch.onnx.export and ONNX Runtime's quantize_static write them, and as
// export_onnx below writes them) back to an IntegerModel that runs integer-only here
// (docs/interop-onnx-integer.md).
//
//   quant::IntegerModel im = quant::convert_to_integer(*qat);
//   onnx::export_onnx(im, "model_qdq.onnx");                                   // QDQ
//   onnx::export_onnx(im, "model_qop.onnx", {.format = onnx::IntegerFormat::kQOperator});
//   quant::IntegerModel back = onnx::import_onnx_qdq("model_qdq.onnx");       // same codes
//
// Export. The ONNX model takes the IntegerModel's own input (f32 NHWC, or token ids) and gives
// its output (f32); a rank-4 input is transposed to NCHW once after the input, every rank-4
// activation stays NCHW inside, and a reshape (Flatten) or a rank-4 output transposes back to
// NHWC first, so the flattening order is lowbit's. Activation codes keep their dtype (int8, or
// uint8 for ActivationScheme::kUint8), scale and zero point; weights int8 [Cout, Cin/groups,
// KH, KW] with one scale per output channel (DequantizeLinear axis 0, or QLinearConv's w_scale
// [Cout]); biases int32 at f32(s_in) * f32(s_w[c]) (the scale qconv2d's accumulator is at).
//   op                 kQdq                                    kQOperator
//   quantize           QuantizeLinear                          QuantizeLinear
//   dequantize         DequantizeLinear                        DequantizeLinear
//   qconv2d            DQ, DQ(w, axis 0), DQ(b) -> Conv -> Q   QLinearConv
//   qfully_connected   DQ, DQ(w, axis 1) -> MatMul, + DQ(b) -> Q   Reshape [-1,K,1,1],
//                                                              QLinearConv 1x1, Reshape back
//   qadd               DQ, DQ -> Add -> Q                      com.microsoft QLinearAdd
//   qavg_pool2d        DQ -> AveragePool -> Q                  com.microsoft QLinearAveragePool
//   qmax_pool2d        DQ -> MaxPool -> Q                      MaxPool on the codes
//   requantize         DQ -> Q                                 DQ -> Q
//   qlogistic          DQ -> Sigmoid -> Q                      com.microsoft QLinearSigmoid
//   qtanh, qsoftmax    DQ -> Tanh / Softmax(channel axis) -> Q (both forms)
//   concat, reshape    Concat / Reshape of the codes           (both forms)
//   gather, cast       Gather of the int8 table, Cast to int32 (both forms)
// A fused clamp (activation relu/relu6/relu_n1_to_1, act_min/act_max) is the output
// QuantizeLinear's own range when it is the dtype's full range; a ReLU clamp [zp, max] is a
// Relu before the Q (kQdq; ONNX Runtime fuses it); any other clamp a Clip at the real bounds
// s * (lo - zp), s * (hi - zp) (kQOperator: DQ -> Clip/Relu -> Q after the QLinear op).
// ONNX Runtime requantizes in float (round half to even): its codes may differ from lowbit's
// fixed-point ones by one (within 1 LSB on >= 99.9% of elements, tests/interop).
// qlstm, qgru and timestep_mask are refused (UnsupportedError naming the op): ONNX has no
// integer LSTM/GRU with the 8x8_16 gate arithmetic (its LSTM is float, DynamicQuantizeLSTM
// quantizes weights only), so no file could run the model's arithmetic.
//
// Import (import_onnx_qdq). Recognized: QuantizeLinear of the graph input; DequantizeLinear of
// an activation (int8 or uint8 codes; uint8 ones become int8 codes - 128, zero point - 128:
// the same real values) or of a constant (int8 weights with zero point 0, per tensor or per
// channel on the output-channel axis; int32 biases with zero point 0); a float op between
// DequantizeLinear inputs and one QuantizeLinear: Conv (groups: depthwise and grouped),
// Gemm (alpha = beta = 1, transA 0), MatMul (with a following Add of a dequantized bias), Add,
// MaxPool, AveragePool, GlobalAveragePool, Sigmoid, Tanh, Softmax (over the channel axis),
// Relu / Clip (fused into the op before, or alone: a clamp), Flatten / Reshape / Transpose
// (NCHW <-> NHWC only) / Identity, and the same shape ops, Concat and MaxPool on the codes
// directly; DequantizeLinear to the graph output. Constant, ConstantOfShape and Cast of
// constants are folded; a Cast of codes to their own dtype (PyTorch's) is skipped. Layout: the
// IntegerModel is NHWC: an NCHW rank-4 graph input becomes an NHWC one (feed it x transposed
// to [N, H, W, C]); an NHWC input followed by Transpose(perm 0,3,1,2) (what export_onnx
// writes) is kept as it is. A Flatten of an NCHW tensor with H * W > 1 keeps ONNX's order (a
// gather of the NHWC codes in NCHW order). Conv pads are explicit ("explicit" padding).
// ONNX Runtime requantizes in float, the IntegerModel in fixed point (double rounding): their
// outputs agree within 1 LSB. A file written by export_onnx imports to an IntegerModel with
// the same codes (bit-exact round trip: scales are f32 values in both).
// Anything else is refused with UnsupportedError naming the node, its op type, the opset and
// the attribute or input at fault; nothing is approximated silently.
#pragma once

#include <string>

#include "lowbit/interop/onnx_proto.h"
#include "lowbit/quant/convert.h"

namespace lowbit::onnx {

enum class IntegerFormat {
  kQdq,        // QuantizeLinear / DequantizeLinear around float ops (ORT fuses them)
  kQOperator,  // QLinearConv, com.microsoft QLinearAdd / QLinearAveragePool / QLinearSigmoid
};

struct IntegerExportOptions {
  IntegerFormat format = IntegerFormat::kQdq;
  int64_t opset = 13;      // of the default domain: 13 .. 21
  std::string graph_name;  // default: the model's name
};

// The ONNX model of im (described above). UnsupportedError naming the op for what has no ONNX
// form here; ValueError for options out of range.
ModelProto integer_to_onnx(const quant::IntegerModel& im, const IntegerExportOptions& options = {});
// integer_to_onnx written to path (atomic). IoError on failure.
void export_onnx(const quant::IntegerModel& im, const std::string& path,
                 const IntegerExportOptions& options = {});

// The IntegerModel of a QDQ int8 ONNX model (described above); `name` stands for the file in
// messages. UnsupportedError naming the node, op type, opset and attribute for anything outside
// the recognized forms; ValueError for inconsistent quantization parameters.
quant::IntegerModel integer_from_onnx_qdq(const ModelProto& m,
                                          const std::string& name = "<memory>");
// read_model(path), then integer_from_onnx_qdq. IoError if the file cannot be read or decoded.
quant::IntegerModel import_onnx_qdq(const std::string& path);

}  // namespace lowbit::onnx
