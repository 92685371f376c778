// lowbit integer model -> .tflite (include/lowbit/interop/tflite.h): one pass over the integer
// model's ops, each written as the TFLite builtin op whose int8 kernel computes the same codes,
// after checking that it does (the multipliers TFLite derives from the f32 scales in the file,
// the clamps of its fused activations, and for the requantizing ops lowbit rounds once every
// reachable input). The flatbuffer layout comes from our own schema (tflite_schema.fbs), whose
// C++ header flatc generates at build time.
#include <flatbuffers/flatbuffers.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <sstream>

#include "lowbit/error.h"
#include "lowbit/fixed_point.h"
#include "lowbit/interop/tflite.h"
#include "lowbit/io/atomic_file.h"
#include "tflite_schema_generated.h"

namespace lowbit::tflite {
namespace {

namespace fbs = lowbit::tflite::fb;
using quant::FusedActivation;
using quant::IntegerModel;
using quant::IntegerOp;
using quant::IntegerTensor;
using quant::QuantizedMultiplier;
using quant::QuantRange;
using quant::Rounding;

std::string str(double v) {
  std::ostringstream o;
  o.precision(9);
  o << v;
  return o.str();
}

fbs::ActivationFunctionType to_fb(FusedActivation a) {
  switch (a) {
    case FusedActivation::kNone:
      return fbs::ActivationFunctionType::NONE;
    case FusedActivation::kRelu:
      return fbs::ActivationFunctionType::RELU;
    case FusedActivation::kRelu6:
      return fbs::ActivationFunctionType::RELU6;
    case FusedActivation::kReluN1To1:
      return fbs::ActivationFunctionType::RELU_N1_TO_1;
  }
  return fbs::ActivationFunctionType::NONE;
}

class Exporter {
 public:
  Exporter(const IntegerModel& m, const TfliteExportOptions& o) : m_(m), o_(o) {}

  std::string run() {
    if (o_.batch < 1)
      LOWBIT_THROW(ValueError, "to_tflite: options.batch must be >= 1 but is ", o_.batch);
    if (m_.input < 0 || m_.output < 0 || m_.input >= static_cast<int>(m_.tensors.size()) ||
        m_.output >= static_cast<int>(m_.tensors.size()))
      LOWBIT_THROW(ValueError, "to_tflite: the model has no input or output tensor");
    for (const IntegerTensor& t : m_.tensors)
      if (t.dtype == DType::kU8)
        LOWBIT_THROW(UnsupportedError, "to_tflite: tensor '", t.name,
                     "' holds u8 codes (the legacy uint8 scheme, ActivationScheme::kUint8): the "
                     "exporter writes TFLite's int8 scheme; convert with the default "
                     "ActivationScheme::kInt8");
    tfl_.assign(m_.tensors.size(), -1);
    buffers_.push_back(fbs::CreateBuffer(b_));  // buffer 0: the empty buffer, by convention
    const int in = tensor_of(m_.input);
    int out = -1;
    for (size_t i = 0; i < m_.ops.size(); ++i) {
      const IntegerOp& op = m_.ops[i];
      if (op.op == "dequantize" && op.output == m_.output && o_.output_codes) {
        out = tensor_of(op.inputs.at(0));
        continue;
      }
      write(op);
    }
    if (out < 0) out = tensor_of(m_.output);
    std::vector<int32_t> outputs{out};
    for (int t : o_.extra_outputs) {
      if (t < 0 || t >= static_cast<int>(m_.tensors.size()) || tfl_[t] < 0 || t == m_.input ||
          m_.tensors[t].data.defined())
        LOWBIT_THROW(ValueError, "to_tflite: options.extra_outputs: ", t,
                     " is not the index of a tensor an op of the exported model writes");
      outputs.push_back(tfl_[t]);
    }
    std::vector<int32_t> inputs{in};
    auto sg = fbs::CreateSubGraph(b_, b_.CreateVector(tensors_), b_.CreateVector(inputs),
                                  b_.CreateVector(outputs), b_.CreateVector(operators_),
                                  b_.CreateString(m_.name.empty() ? "main" : m_.name));
    std::vector<flatbuffers::Offset<fbs::SubGraph>> sgs{sg};
    auto model = fbs::CreateModel(b_, 3, b_.CreateVector(codes_), b_.CreateVector(sgs),
                                  b_.CreateString(o_.description), b_.CreateVector(buffers_));
    b_.Finish(model, fbs::ModelIdentifier());
    return std::string(reinterpret_cast<const char*>(b_.GetBufferPointer()), b_.GetSize());
  }

 private:
  [[noreturn]] void refuse(const IntegerOp& op, const std::string& why) const {
    const std::string t = op.output >= 0 && op.output < static_cast<int>(m_.tensors.size())
                              ? m_.tensors[op.output].name
                              : "?";
    LOWBIT_THROW(UnsupportedError, "to_tflite: op '", op.op, "' (layer '", op.layer,
                 "', output tensor '", t, "'): ", why);
  }

  // ---- tensors ----------------------------------------------------------------------------

  std::vector<int32_t> shape_of(const IntegerTensor& t, bool constant) const {
    std::vector<int32_t> s;
    for (int d = 0; d < t.shape.rank(); ++d) {
      int64_t v = t.shape[d];
      if (!constant && d == 0) v = o_.batch;
      if (v < 0)
        LOWBIT_THROW(UnsupportedError, "to_tflite: tensor '", t.name, "' has shape ", t.shape.str(),
                     ": TFLite needs every dimension but the batch known");
      s.push_back(static_cast<int32_t>(v));
    }
    return s;
  }

  static fbs::TensorType type_of(const IntegerTensor& t) {
    switch (t.dtype) {
      case DType::kF32:
        return fbs::TensorType::FLOAT32;
      case DType::kS8:
        return fbs::TensorType::INT8;
      case DType::kS32:
        return fbs::TensorType::INT32;
      case DType::kS64:
        return fbs::TensorType::INT64;
      default:
        LOWBIT_THROW(UnsupportedError, "to_tflite: tensor '", t.name, "' of dtype ",
                     dtype_name(t.dtype), " has no TFLite type here (f32, s8, s32, s64)");
    }
  }

  int buffer(const void* data, size_t bytes) {
    if (bytes == 0) return 0;
    b_.ForceVectorAlignment(bytes, 1, 16);
    auto v = b_.CreateVector(static_cast<const uint8_t*>(data), bytes);
    buffers_.push_back(fbs::CreateBuffer(b_, v));
    return static_cast<int>(buffers_.size()) - 1;
  }

  // A new TFLite tensor; scales empty: not quantized.
  int add_tensor(const std::string& name, fbs::TensorType type, const std::vector<int32_t>& shape,
                 int buf, const std::vector<double>& scales, const std::vector<int32_t>& zps,
                 int qdim, bool activation) {
    flatbuffers::Offset<fbs::QuantizationParameters> q = 0;
    if (!scales.empty()) {
      std::vector<float> s;
      for (double v : scales) s.push_back(static_cast<float>(v));
      std::vector<int64_t> z(zps.begin(), zps.end());
      if (z.size() < s.size()) z.resize(s.size(), z.empty() ? 0 : z[0]);
      q = fbs::CreateQuantizationParameters(b_, 0, 0, b_.CreateVector(s), b_.CreateVector(z), qdim);
    }
    flatbuffers::Offset<flatbuffers::Vector<int32_t>> sig = 0;
    if (activation && !shape.empty()) {
      std::vector<int32_t> sg = shape;
      sg[0] = -1;
      sig = b_.CreateVector(sg);
    }
    tensors_.push_back(fbs::CreateTensor(b_, b_.CreateVector(shape), type,
                                         static_cast<uint32_t>(buf), b_.CreateString(name), q,
                                         false, sig));
    return static_cast<int>(tensors_.size()) - 1;
  }

  // The TFLite tensor of lowbit tensor i (an activation, or a constant written as is).
  int tensor_of(int i) {
    if (tfl_.at(i) >= 0) return tfl_[i];
    const IntegerTensor& t = m_.tensors.at(i);
    const bool constant = t.data.defined();
    int buf = 0;
    if (constant) buf = buffer(t.data.raw(), t.data.nbytes());
    tfl_[i] = add_tensor(t.name, type_of(t), shape_of(t, constant), buf,
                         t.dtype == DType::kF32 ? std::vector<double>{} : t.scale, t.zero_point, 0,
                         !constant);
    return tfl_[i];
  }

  int const_tensor(const std::string& name, fbs::TensorType type, const std::vector<int32_t>& shape,
                   const void* data, size_t bytes, const std::vector<double>& scales = {},
                   const std::vector<int32_t>& zps = {}, int qdim = 0) {
    return add_tensor(name, type, shape, buffer(data, bytes), scales, zps, qdim, false);
  }

  // A filter: a constant, or with options.weights_at_run_time the output of a RESHAPE of it
  // to its own shape (the same codes, but not a constant: delegates that need constant filters,
  // such as XNNPACK, leave the op to TFLite's builtin kernel).
  int weights(const std::string& name, fbs::TensorType type, const std::vector<int32_t>& shape,
              const void* data, size_t bytes, const std::vector<double>& scales,
              const std::vector<int32_t>& zps, int qdim) {
    const int c = const_tensor(name, type, shape, data, bytes, scales, zps, qdim);
    if (!o_.weights_at_run_time) return c;
    const int out = add_tensor(name + "/at_run_time", type, shape, 0, scales, zps, qdim, false);
    const int st =
        const_tensor(name + "/shape", fbs::TensorType::INT32, {static_cast<int32_t>(shape.size())},
                     shape.data(), shape.size() * sizeof(int32_t));
    emit(fbs::BuiltinOperator::RESHAPE, 1, {c, st}, {out}, fbs::BuiltinOptions::ReshapeOptions,
         fbs::CreateReshapeOptions(b_, b_.CreateVector(shape)).Union());
    return out;
  }

  // A new activation tensor like lowbit tensor `like` with another shape (dim 0 the batch).
  int activation_like(const IntegerTensor& like, const std::string& name,
                      std::vector<int32_t> shape) {
    return add_tensor(name, type_of(like), shape, 0, like.scale, like.zero_point, 0, true);
  }

  // ---- operators --------------------------------------------------------------------------

  uint32_t opcode(fbs::BuiltinOperator code, int version) {
    const auto key = std::make_pair(static_cast<int>(code), version);
    auto it = opcode_.find(key);
    if (it != opcode_.end()) return it->second;
    const int c = static_cast<int>(code);
    codes_.push_back(
        fbs::CreateOperatorCode(b_, static_cast<int8_t>(std::min(c, 127)), 0, version, code));
    const uint32_t idx = static_cast<uint32_t>(codes_.size()) - 1;
    opcode_[key] = idx;
    return idx;
  }

  void emit(fbs::BuiltinOperator code, int version, const std::vector<int32_t>& in,
            const std::vector<int32_t>& out, fbs::BuiltinOptions type = fbs::BuiltinOptions::NONE,
            flatbuffers::Offset<void> options = 0) {
    operators_.push_back(fbs::CreateOperator(b_, opcode(code, version), b_.CreateVector(in),
                                             b_.CreateVector(out), type, options));
  }

  // ---- exactness checks -------------------------------------------------------------------

  static Rounding rounding_of(const IntegerOp& op) {
    return op.attrs.s("rounding", "double") == "single" ? Rounding::kSingle : Rounding::kDouble;
  }

  // The rounding of the target TFLite build (options.rounding) must be the op's.
  void require_double_rounding(const IntegerOp& op) const {
    if (rounding_of(op) != o_.rounding)
      refuse(op, std::string("it rounds its output stage ") +
                     (rounding_of(op) == Rounding::kSingle ? "once" : "twice") +
                     " (ConvertOptions::rounding), the target TFLite build (options.rounding) " +
                     (o_.rounding == Rounding::kSingle ? "once (TFLITE_SINGLE_ROUNDING)"
                                                       : "twice (gemmlowp, the default build)") +
                     ", so its codes would differ: convert with ConvertOptions::rounding = "
                     "options.rounding (Rounding::kDouble for the default build)");
  }

  // The fused activation whose TFLite clamp on the output's (scale, zero point) equals lowbit's
  // clamp (its activation's range within [act_min, act_max]).
  FusedActivation fused(const IntegerOp& op, const IntegerTensor& out) const {
    const FusedActivation own = quant::fused_activation_from_name(op.attrs.s("activation", "none"));
    const float s = static_cast<float>(out.scale.at(0));
    const int32_t zp = out.zero_point.at(0);
    QuantRange want = quant::activation_range(s, zp, own, DType::kS8);
    want.min = std::max<int32_t>(want.min, static_cast<int32_t>(op.attrs.i("act_min", -128)));
    want.max = std::min<int32_t>(want.max, static_cast<int32_t>(op.attrs.i("act_max", 127)));
    if (want.min > want.max) want.min = want.max;
    for (FusedActivation a : {own, FusedActivation::kNone, FusedActivation::kRelu,
                              FusedActivation::kRelu6, FusedActivation::kReluN1To1})
      if (quant::activation_range(s, zp, a, DType::kS8) == want) return a;
    std::ostringstream w;
    w << "its output clamp " << want << " (activation '" << op.attrs.s("activation", "none")
      << "' on a grid of codes [" << out.qmin << ", " << out.qmax
      << "]) is no TFLite fused activation's clamp on scale " << str(s) << ", zero point " << zp
      << " (a low-bit activation grid stored as int8): TFLite would let the codes leave the grid; "
         "use 8-bit activations";
    refuse(op, w.str());
  }

  // Same (f32) scale and zero point.
  static bool same_params(const IntegerTensor& a, const IntegerTensor& b) {
    return a.scale.size() == b.scale.size() && a.zero_point == b.zero_point &&
           std::equal(a.scale.begin(), a.scale.end(), b.scale.begin(), [](double x, double y) {
             return static_cast<float>(x) == static_cast<float>(y);
           });
  }

  // ---- the ops ----------------------------------------------------------------------------

  void write(const IntegerOp& op) {
    const std::string& k = op.op;
    if (k == "quantize" || k == "requantize") return quantize(op);
    if (k == "dequantize")
      return emit(fbs::BuiltinOperator::DEQUANTIZE, 2, {tensor_of(op.inputs.at(0))},
                  {tensor_of(op.output)});
    if (k == "qconv2d") return conv(op);
    if (k == "qfully_connected") return dense(op);
    if (k == "qmax_pool2d" || k == "qavg_pool2d") return pool(op);
    if (k == "qadd") return add(op);
    if (k == "concat") return concat(op);
    if (k == "reshape") return reshape(op);
    if (k == "qlogistic" || k == "qtanh" || k == "qsoftmax") return nonlinear(op);
    if (k == "gather") return gather(op);
    if (k == "cast") {
      if (m_.tensors.at(op.output).dtype != DType::kS32)
        refuse(op, "only a cast to s32 (an Embedding's ids) is written");
      return emit(fbs::BuiltinOperator::CAST, 1, {tensor_of(op.inputs.at(0))},
                  {tensor_of(op.output)});
    }
    if (k == "qlstm" || k == "qgru")
      refuse(op, "the integer " + std::string(k == "qlstm" ? "LSTM" : "GRU") +
                     " is not exported to TFLite yet (UNIDIRECTIONAL_SEQUENCE_LSTM's int8 form "
                     "needs its 20-odd tensors and intermediate scales mapped; TFLite has no "
                     "GRU builtin)");
    if (k == "timestep_mask") refuse(op, "TFLite has no masking of time steps");
    refuse(op, "no TFLite form for this op");
  }

  void quantize(const IntegerOp& op) {
    const int in_i = op.inputs.at(0);
    const IntegerTensor& x = m_.tensors.at(in_i);
    const IntegerTensor& y = m_.tensors.at(op.output);
    if (op.op == "quantize") {
      if (x.dtype != DType::kF32) refuse(op, "a quantize of a tensor that is not f32");
      // TFLite's QUANTIZE: round(x / s) + zp in f32, clamped to int8, as lowbit's quantize.
      if (y.qmin != -128 || y.qmax != 127)
        refuse(op, "its grid's codes [" + std::to_string(y.qmin) + ", " + std::to_string(y.qmax) +
                       "] are narrower than int8 (a low-bit input grid): TFLite's QUANTIZE "
                       "clamps to [-128, 127]; use 8-bit activations");
      return emit(fbs::BuiltinOperator::QUANTIZE, 1, {tensor_of(in_i)}, {tensor_of(op.output)});
    }
    // requantize: TFLite's QUANTIZE int8 -> int8, clamp(MBQM(q - zp_in, s_in / s_out) + zp_out),
    // double rounding; lowbit's with its own rounding and clamp. Both on all 256 codes.
    const float s_in = static_cast<float>(op.attrs.f("input_scale"));
    const float s_out = static_cast<float>(op.attrs.f("output_scale"));
    const int32_t zp_in = static_cast<int32_t>(op.attrs.i("input_zero_point"));
    const int32_t zp_out = static_cast<int32_t>(op.attrs.i("output_zero_point"));
    const int32_t lo = static_cast<int32_t>(op.attrs.i("act_min", -128));
    const int32_t hi = static_cast<int32_t>(op.attrs.i("act_max", 127));
    const double m = static_cast<double>(s_in) / static_cast<double>(s_out);
    const Rounding r = rounding_of(op);
    const QuantizedMultiplier ml = quant::quantize_multiplier(m, r);
    const QuantizedMultiplier mt = quant::quantize_multiplier(m, o_.rounding);
    for (int32_t q = -128; q <= 127; ++q) {
      const int32_t a =
          std::clamp(quant::multiply_by_quantized_multiplier(q - zp_in, ml, r) + zp_out, lo, hi);
      const int32_t b = std::clamp(
          quant::multiply_by_quantized_multiplier(q - zp_in, mt, o_.rounding) + zp_out, -128, 127);
      if (a != b)
        refuse(op, "TFLite's int8 QUANTIZE (requantize, s_in/s_out = " + str(m) + ", " +
                       (o_.rounding == Rounding::kSingle ? "single" : "double") +
                       " rounding, clamp [-128, 127]) maps code " + std::to_string(q) + " to " +
                       std::to_string(b) + " where lowbit's requantize (" +
                       (r == Rounding::kSingle ? "single" : "double") + " rounding, clamp [" +
                       std::to_string(lo) + ", " + std::to_string(hi) + "]) gives " +
                       std::to_string(a));
    }
    emit(fbs::BuiltinOperator::QUANTIZE, 2, {tensor_of(in_i)}, {tensor_of(op.output)});
  }

  struct Window {
    fbs::Padding padding;
    int32_t stride_h, stride_w, dil_h = 1, dil_w = 1;
  };

  Window window(const IntegerOp& op) const {
    const std::string p = op.attrs.s("padding", "valid");
    if (p != "valid" && p != "same")
      refuse(op, "padding '" + p +
                     "' (TFLite's convolutions and pools have SAME and VALID only; a causal "
                     "Conv1D's explicit left padding would need a PAD op)");
    Window w{p == "same" ? fbs::Padding::SAME : fbs::Padding::VALID, 1, 1};
    const std::vector<int64_t> st = op.attrs.ints("strides", {1, 1});
    const std::vector<int64_t> dl = op.attrs.ints("dilations", {1, 1});
    w.stride_h = static_cast<int32_t>(st.at(0));
    w.stride_w = static_cast<int32_t>(st.size() > 1 ? st[1] : st[0]);
    w.dil_h = static_cast<int32_t>(dl.at(0));
    w.dil_w = static_cast<int32_t>(dl.size() > 1 ? dl[1] : dl[0]);
    return w;
  }

  // Checks that TFLite's per-channel multipliers (input_scale * filter_scale[c] / output_scale
  // from the f32 values in the file, in f64; `float_product`: TFLite's per-tensor
  // FULLY_CONNECTED, which multiplies the two scales in f32 first) are lowbit's. Returns the
  // first channel where they differ, or -1.
  int64_t multiplier_mismatch(const IntegerOp& op, bool float_product, std::string* detail) const {
    const float s_in = static_cast<float>(op.attrs.f("input_scale"));
    const float s_out = static_cast<float>(op.attrs.f("output_scale"));
    const std::vector<double>& sw = op.attrs.floats("weight_scales");
    for (size_t c = 0; c < sw.size(); ++c) {
      const float w = static_cast<float>(sw[c]);
      const QuantizedMultiplier ours = quant::quantize_multiplier(
          quant::conv_effective_multiplier(s_in, w, s_out, false), o_.rounding);
      const QuantizedMultiplier theirs = quant::quantize_multiplier(
          quant::conv_effective_multiplier(s_in, w, s_out, float_product), o_.rounding);
      if (!(ours == theirs)) {
        std::ostringstream d;
        d << "channel " << c << ": lowbit's multiplier " << ours << ", TFLite's " << theirs;
        *detail = d.str();
        return static_cast<int64_t>(c);
      }
    }
    return -1;
  }

  // The bias as written: int32 codes with scale f32(s_in * s_w[c]), zero point 0.
  int bias_tensor(const IntegerOp& op, int qdim) {
    const IntegerTensor& bt = m_.tensors.at(op.inputs.at(2));
    return const_tensor(bt.name, fbs::TensorType::INT32, {static_cast<int32_t>(bt.data.numel())},
                        bt.data.raw(), bt.data.nbytes(), bt.scale,
                        std::vector<int32_t>(bt.scale.size(), 0), qdim);
  }

  void conv(const IntegerOp& op) {
    require_double_rounding(op);
    const IntegerTensor& x = m_.tensors.at(op.inputs.at(0));
    const IntegerTensor& wt = m_.tensors.at(op.inputs.at(1));
    const IntegerTensor& y = m_.tensors.at(op.output);
    std::string detail;
    if (multiplier_mismatch(op, false, &detail) >= 0)
      refuse(op, "TFLite would derive another output multiplier (" + detail + ")");
    const FusedActivation act = fused(op, y);
    const Window w = window(op);
    const Shape& ks = wt.data.shape();  // [KH, KW, Cin/groups, Cout]
    const int64_t kh = ks[0], kw = ks[1], cig = ks[2], co = ks[3];
    const int64_t groups = op.attrs.i("groups", 1);
    const int64_t cin = x.shape[x.shape.rank() - 1];
    const int8_t* src = wt.data.data<int8_t>();
    const std::vector<int32_t> wzp(wt.scale.size(), 0);
    const int in = tensor_of(op.inputs[0]);
    if (groups == 1) {
      // [KH, KW, Cin, Cout] -> [Cout, KH, KW, Cin]
      std::vector<int8_t> f(static_cast<size_t>(wt.data.numel()));
      for (int64_t a = 0; a < kh; ++a)
        for (int64_t b = 0; b < kw; ++b)
          for (int64_t c = 0; c < cig; ++c)
            for (int64_t o = 0; o < co; ++o)
              f[((o * kh + a) * kw + b) * cig + c] = src[((a * kw + b) * cig + c) * co + o];
      const int wi = weights(wt.name, fbs::TensorType::INT8,
                             {static_cast<int32_t>(co), static_cast<int32_t>(kh),
                              static_cast<int32_t>(kw), static_cast<int32_t>(cig)},
                             f.data(), f.size(), wt.scale, wzp, 0);
      const int bi = bias_tensor(op, 0);
      auto opt = fbs::CreateConv2DOptions(b_, w.padding, w.stride_w, w.stride_h, to_fb(act),
                                          w.dil_w, w.dil_h);
      return emit(fbs::BuiltinOperator::CONV_2D, 3, {in, wi, bi}, {tensor_of(op.output)},
                  fbs::BuiltinOptions::Conv2DOptions, opt.Union());
    }
    if (groups != cin || cig != 1 || co % cin != 0)
      refuse(op, "a grouped convolution (groups " + std::to_string(groups) + " of " +
                     std::to_string(cin) +
                     " input channels) has no TFLite builtin; only groups = 1 and depthwise");
    // [KH, KW, 1, C * mult] is already TFLite's [1, KH, KW, C * mult].
    const int wi =
        weights(wt.name, fbs::TensorType::INT8,
                {1, static_cast<int32_t>(kh), static_cast<int32_t>(kw), static_cast<int32_t>(co)},
                src, static_cast<size_t>(wt.data.numel()), wt.scale, wzp, 3);
    const int bi = bias_tensor(op, 0);
    auto opt = fbs::CreateDepthwiseConv2DOptions(b_, w.padding, w.stride_w, w.stride_h,
                                                 static_cast<int32_t>(co / cin), to_fb(act),
                                                 w.dil_w, w.dil_h);
    emit(fbs::BuiltinOperator::DEPTHWISE_CONV_2D, 3, {in, wi, bi}, {tensor_of(op.output)},
         fbs::BuiltinOptions::DepthwiseConv2DOptions, opt.Union());
  }

  std::vector<int32_t> activation_shape(const Shape& s) const {
    std::vector<int32_t> v;
    for (int d = 0; d < s.rank(); ++d) v.push_back(static_cast<int32_t>(d == 0 ? o_.batch : s[d]));
    return v;
  }

  int reshape_to(int in, const IntegerTensor& like, const std::string& name,
                 const std::vector<int32_t>& shape) {
    const int out = activation_like(like, name, shape);
    std::vector<int32_t> target = shape;
    target[0] = -1;
    const int st =
        const_tensor(name + "/shape", fbs::TensorType::INT32, {static_cast<int32_t>(target.size())},
                     target.data(), target.size() * sizeof(int32_t));
    auto opt = fbs::CreateReshapeOptions(b_, b_.CreateVector(target));
    emit(fbs::BuiltinOperator::RESHAPE, 1, {in, st}, {out}, fbs::BuiltinOptions::ReshapeOptions,
         opt.Union());
    return out;
  }

  void dense(const IntegerOp& op) {
    require_double_rounding(op);
    const IntegerTensor& x = m_.tensors.at(op.inputs.at(0));
    const IntegerTensor& wt = m_.tensors.at(op.inputs.at(1));
    const IntegerTensor& y = m_.tensors.at(op.output);
    const FusedActivation act = fused(op, y);
    const Shape& ks = wt.data.shape();  // [K, U]
    const int64_t kk = ks[0], u = ks[1];
    const int8_t* src = wt.data.data<int8_t>();
    std::vector<int8_t> f(static_cast<size_t>(wt.data.numel()));  // [U, K]
    for (int64_t a = 0; a < kk; ++a)
      for (int64_t o = 0; o < u; ++o) f[o * kk + a] = src[a * u + o];
    const std::vector<int32_t> wzp(wt.scale.size(), 0);
    std::string detail;
    const bool per_tensor = wt.scale.size() == 1;
    if (per_tensor && multiplier_mismatch(op, true, &detail) < 0) {
      // TFLite's FULLY_CONNECTED (per tensor: its multiplier is f32(s_in * s_w) / s_out).
      const int wi = weights(wt.name, fbs::TensorType::INT8,
                             {static_cast<int32_t>(u), static_cast<int32_t>(kk)}, f.data(),
                             f.size(), wt.scale, wzp, 0);
      const int bi = bias_tensor(op, 0);
      auto opt = fbs::CreateFullyConnectedOptions(b_, to_fb(act), x.shape.rank() > 2);
      return emit(fbs::BuiltinOperator::FULLY_CONNECTED, x.shape.rank() > 2 ? 5 : 4,
                  {tensor_of(op.inputs[0]), wi, bi}, {tensor_of(op.output)},
                  fbs::BuiltinOptions::FullyConnectedOptions, opt.Union());
    }
    // Per channel, or a per-tensor multiplier TFLite's FULLY_CONNECTED would round differently:
    // a 1x1 CONV_2D (per-channel, f64 product) on the input reshaped to [N, 1, rows, K].
    if (multiplier_mismatch(op, false, &detail) >= 0)
      refuse(op, "TFLite would derive another output multiplier (" + detail + ")");
    int64_t rows = 1;
    for (int d = 1; d + 1 < x.shape.rank(); ++d) rows *= x.shape[d];
    const int32_t b = static_cast<int32_t>(o_.batch), r = static_cast<int32_t>(rows);
    const int x4 = reshape_to(tensor_of(op.inputs[0]), x, x.name + "/as_nhwc",
                              {b, 1, r, static_cast<int32_t>(kk)});
    const int wi = weights(wt.name, fbs::TensorType::INT8,
                           {static_cast<int32_t>(u), 1, 1, static_cast<int32_t>(kk)}, f.data(),
                           f.size(), wt.scale, wzp, 0);
    const int bi = bias_tensor(op, 0);
    const int y4 = activation_like(y, y.name + "/as_nhwc", {b, 1, r, static_cast<int32_t>(u)});
    auto opt = fbs::CreateConv2DOptions(b_, fbs::Padding::VALID, 1, 1, to_fb(act), 1, 1);
    emit(fbs::BuiltinOperator::CONV_2D, 3, {x4, wi, bi}, {y4}, fbs::BuiltinOptions::Conv2DOptions,
         opt.Union());
    const int out = tensor_of(op.output);
    std::vector<int32_t> target = activation_shape(y.shape);
    target[0] = -1;
    const int st = const_tensor(y.name + "/shape", fbs::TensorType::INT32,
                                {static_cast<int32_t>(target.size())}, target.data(),
                                target.size() * sizeof(int32_t));
    auto ro = fbs::CreateReshapeOptions(b_, b_.CreateVector(target));
    emit(fbs::BuiltinOperator::RESHAPE, 1, {y4, st}, {out}, fbs::BuiltinOptions::ReshapeOptions,
         ro.Union());
  }

  void pool(const IntegerOp& op) {
    const IntegerTensor& x = m_.tensors.at(op.inputs.at(0));
    const IntegerTensor& y = m_.tensors.at(op.output);
    const Window w = window(op);
    const std::vector<int64_t> ks = op.attrs.ints("ksize");
    const int32_t kh = static_cast<int32_t>(ks.at(0)),
                  kw = static_cast<int32_t>(ks.size() > 1 ? ks[1] : ks[0]);
    const int32_t lo = static_cast<int32_t>(op.attrs.i("act_min", -128));
    const int32_t hi = static_cast<int32_t>(op.attrs.i("act_max", 127));
    // The input codes lie on the input's grid [qmin, qmax]; a max or a mean of them too, so a
    // clamp to a range that holds that grid is the identity.
    const bool clamp_is_identity = lo <= x.qmin && hi >= x.qmax;
    const bool requant = op.attrs.has("output_scale");
    const int in = tensor_of(op.inputs[0]);
    auto pool_opt = [&]() {
      return fbs::CreatePool2DOptions(b_, w.padding, w.stride_w, w.stride_h, kw, kh,
                                      fbs::ActivationFunctionType::NONE)
          .Union();
    };
    if (op.op == "qmax_pool2d" || !requant) {
      if (!same_params(x, y))
        refuse(op, "its output's scale or zero point differs from its input's");
      if (!clamp_is_identity)
        refuse(op, "its clamp [" + std::to_string(lo) + ", " + std::to_string(hi) +
                       "] cuts its input's grid; TFLite's pools do not clamp");
      return emit(op.op == "qmax_pool2d" ? fbs::BuiltinOperator::MAX_POOL_2D
                                         : fbs::BuiltinOperator::AVERAGE_POOL_2D,
                  2, {in}, {tensor_of(op.output)}, fbs::BuiltinOptions::Pool2DOptions, pool_opt());
    }
    // A requantizing average: lowbit computes MBQM(sum - n * zp_in, s_in / (s_out * n)) + zp_out,
    // clamped. TFLite writes it exactly in one of two ways, checked on every reachable sum:
    //   AVERAGE_POOL_2D when input and output share parameters (mean rounded half away);
    //   else, for a window without padding (every mean over n = kh * kw taps), a
    //   DEPTHWISE_CONV_2D with all-one weights at scale f32(1 / n).
    const float s_in = static_cast<float>(op.attrs.f("input_scale"));
    const float s_out = static_cast<float>(op.attrs.f("output_scale"));
    const int32_t zp_in = static_cast<int32_t>(op.attrs.i("input_zero_point"));
    const int32_t zp_out = static_cast<int32_t>(op.attrs.i("output_zero_point"));
    const Rounding r = rounding_of(op);
    const double m = static_cast<double>(s_in) / static_cast<double>(s_out);
    auto ours = [&](int32_t sum, int32_t n) {
      const QuantizedMultiplier qm = quant::quantize_multiplier(m / n, r);
      return std::clamp(quant::multiply_by_quantized_multiplier(sum - n * zp_in, qm, r) + zp_out,
                        lo, hi);
    };
    const int64_t h = x.shape[1], wd = x.shape[2];
    const bool no_padding =
        w.padding == fbs::Padding::VALID || (kh == 1 && kw == 1) || (kh == h && kw == wd);
    std::string why;
    if (same_params(x, y)) {
      bool exact = true;
      for (int32_t n = 1; n <= kh * kw && exact; ++n) {
        if (no_padding && n != kh * kw) continue;
        for (int32_t sum = -128 * n; sum <= 127 * n && exact; ++sum)
          exact = ours(sum, n) == std::clamp(quant::average_pool_mean(sum, n), -128, 127);
      }
      if (exact)
        return emit(fbs::BuiltinOperator::AVERAGE_POOL_2D, 2, {in}, {tensor_of(op.output)},
                    fbs::BuiltinOptions::Pool2DOptions, pool_opt());
      why = "AVERAGE_POOL_2D rounds the mean of the codes differently";
    }
    // A DEPTHWISE_CONV_2D of ones at scale 1/n would express the requantizing mean on paper,
    // but TFLite's depthwise kernels round on their own (measured in the wasm interpreter:
    // about a quarter of the codes differ), so it is not written.
    refuse(op, "it requantizes the mean (s_in " + str(s_in) + " -> s_out " + str(s_out) +
                   ") in one step; TFLite's AVERAGE_POOL_2D keeps its input's parameters" +
                   (why.empty() ? "" : " (and " + why + ")") +
                   ": put no quantizer of its own after the pooling, or pool with a max");
  }

  void add(const IntegerOp& op) {
    require_double_rounding(op);
    const IntegerTensor& y = m_.tensors.at(op.output);
    const FusedActivation act = fused(op, y);
    auto stage = [&](FusedActivation a) {
      return quant::make_add_stage(
          {.input1_scale = static_cast<float>(op.attrs.f("input1_scale")),
           .input1_zero_point = static_cast<int32_t>(op.attrs.i("input1_zero_point")),
           .input2_scale = static_cast<float>(op.attrs.f("input2_scale")),
           .input2_zero_point = static_cast<int32_t>(op.attrs.i("input2_zero_point")),
           .output_scale = static_cast<float>(op.attrs.f("output_scale")),
           .output_zero_point = static_cast<int32_t>(op.attrs.i("output_zero_point")),
           .activation = a,
           .dtype = DType::kS8,
           .rounding = o_.rounding});
    };
    // The inputs' parameters in the file are their tensors'; lowbit's qadd takes its own
    // attributes (a Bidirectional "ave" halves them): they must be the same.
    const IntegerTensor& a = m_.tensors.at(op.inputs.at(0));
    const IntegerTensor& bt = m_.tensors.at(op.inputs.at(1));
    if (static_cast<float>(a.scale[0]) != static_cast<float>(op.attrs.f("input1_scale")) ||
        static_cast<float>(bt.scale[0]) != static_cast<float>(op.attrs.f("input2_scale")) ||
        a.zero_point[0] != op.attrs.i("input1_zero_point") ||
        bt.zero_point[0] != op.attrs.i("input2_zero_point") ||
        static_cast<float>(y.scale[0]) != static_cast<float>(op.attrs.f("output_scale")))
      refuse(op,
             "it adds its inputs at other scales than their tensors' (a Bidirectional "
             "'ave' merge); TFLite's ADD reads the tensors' own");
    (void)stage(act);  // validates (ValueError for a multiplier out of range)
    emit(fbs::BuiltinOperator::ADD, 2, {tensor_of(op.inputs[0]), tensor_of(op.inputs[1])},
         {tensor_of(op.output)}, fbs::BuiltinOptions::AddOptions,
         fbs::CreateAddOptions(b_, to_fb(act)).Union());
  }

  void concat(const IntegerOp& op) {
    const IntegerTensor& y = m_.tensors.at(op.output);
    std::vector<int32_t> ins;
    for (int i : op.inputs) {
      if (y.dtype == DType::kS8 && !same_params(m_.tensors.at(i), y))
        refuse(op, "input '" + m_.tensors.at(i).name +
                       "' is on another grid than the output; TFLite's int8 CONCATENATION needs "
                       "one");
      ins.push_back(tensor_of(i));
    }
    int64_t axis = op.attrs.i("axis", -1);
    if (axis < 0) axis += y.shape.rank();
    emit(fbs::BuiltinOperator::CONCATENATION, 2, ins, {tensor_of(op.output)},
         fbs::BuiltinOptions::ConcatenationOptions,
         fbs::CreateConcatenationOptions(b_, static_cast<int32_t>(axis),
                                         fbs::ActivationFunctionType::NONE)
             .Union());
  }

  void reshape(const IntegerOp& op) {
    const IntegerTensor& x = m_.tensors.at(op.inputs.at(0));
    const IntegerTensor& y = m_.tensors.at(op.output);
    if (x.dtype == DType::kS8 && !same_params(x, y))
      refuse(op, "its output's scale or zero point differs from its input's");
    const int in = tensor_of(op.inputs[0]);
    const int out = tensor_of(op.output);
    std::vector<int32_t> target = activation_shape(y.shape);
    target[0] = -1;
    const int st = const_tensor(y.name + "/shape", fbs::TensorType::INT32,
                                {static_cast<int32_t>(target.size())}, target.data(),
                                target.size() * sizeof(int32_t));
    emit(fbs::BuiltinOperator::RESHAPE, 1, {in, st}, {out}, fbs::BuiltinOptions::ReshapeOptions,
         fbs::CreateReshapeOptions(b_, b_.CreateVector(target)).Union());
  }

  void nonlinear(const IntegerOp& op) {
    const IntegerTensor& y = m_.tensors.at(op.output);
    const bool tanh = op.op == "qtanh";
    const float want_s = tanh ? 1.0f / 128 : 1.0f / 256;
    const int32_t want_zp = tanh ? 0 : -128;
    if (static_cast<float>(y.scale[0]) != want_s || y.zero_point[0] != want_zp)
      refuse(op, "its output is not on TFLite's fixed grid (scale " + str(want_s) +
                     ", zero point " + std::to_string(want_zp) + ")");
    const int in = tensor_of(op.inputs.at(0));
    const int out = tensor_of(op.output);
    if (op.op == "qsoftmax")
      return emit(
          fbs::BuiltinOperator::SOFTMAX, 2, {in}, {out}, fbs::BuiltinOptions::SoftmaxOptions,
          fbs::CreateSoftmaxOptions(b_, static_cast<float>(op.attrs.f("beta", 1.0))).Union());
    emit(tanh ? fbs::BuiltinOperator::TANH : fbs::BuiltinOperator::LOGISTIC, 2, {in}, {out});
  }

  void gather(const IntegerOp& op) {
    const int64_t axis = op.attrs.i("axis", 0);
    emit(fbs::BuiltinOperator::GATHER, 2, {tensor_of(op.inputs.at(0)), tensor_of(op.inputs.at(1))},
         {tensor_of(op.output)}, fbs::BuiltinOptions::GatherOptions,
         fbs::CreateGatherOptions(b_, static_cast<int32_t>(axis), 0).Union());
  }

  const IntegerModel& m_;
  const TfliteExportOptions& o_;
  flatbuffers::FlatBufferBuilder b_{1 << 16};
  std::vector<flatbuffers::Offset<fbs::Buffer>> buffers_;
  std::vector<flatbuffers::Offset<fbs::Tensor>> tensors_;
  std::vector<flatbuffers::Offset<fbs::Operator>> operators_;
  std::vector<flatbuffers::Offset<fbs::OperatorCode>> codes_;
  std::map<std::pair<int, int>, uint32_t> opcode_;
  std::vector<int> tfl_;  // lowbit tensor -> TFLite tensor (-1: not written yet)
};

}  // namespace

std::string to_tflite(const quant::IntegerModel& model, const TfliteExportOptions& options) {
  return Exporter(model, options).run();
}

void export_tflite(const quant::IntegerModel& model, const std::string& path,
                   const TfliteExportOptions& options) {
  const std::string bytes = to_tflite(model, options);
  io::write_atomically(path, "export_tflite", [&](std::ostream& out) {
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  });
}

}  // namespace lowbit::tflite
