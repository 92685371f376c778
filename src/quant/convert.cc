// convert_to_integer: a trained QAT model to an IntegerModel (include/lowbit/quant/convert.h
// states what each layer becomes). One walk over the QAT model's layer calls in topological
// order; each symbolic tensor becomes a float tensor (the model input), a code tensor (int8
// with its grid), or a pending conv/dense that waits for its fused activation and the FakeQuant
// whose grid its output stage rounds to.
#include "lowbit/quant/convert.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <optional>

#include "lowbit/ops.h"
#include "lowbit/ops/fake_quant.h"
#include "lowbit/quant/quantizer.h"
#include "lowbit/quant/recurrent.h"
#include "quant/code_schemes.h"

namespace lowbit::quant {

namespace {

using nn::Json;

// A conv or dense whose output stage is not known yet.
struct Pending {
  std::string op;        // qconv2d | qfully_connected | qavg_pool2d | qadd | concat | bidirectional
  std::string layers;    // the QAT layers it implements so far, joined with '+'
  std::string cls;       // the conv/dense class
  int input = -1;        // code tensor
  Tensor kernel;         // FQ(W), f32, in the integer op's layout (HWIO with groups / [K, U])
  Quantizer::Grid grid;  // of the kernel
  Tensor bias;           // f32 [out] or undefined
  Attrs window;          // qconv2d: strides, dilations, padding, groups; qavg_pool2d: ksize,
                         // strides, padding
  Shape pool_shape;      // qavg_pool2d of a global pooling: its [?, 1, 1, C] before the reshape
  Shape conv_shape;      // qconv2d of a Conv1D: its [?, 1, T', F] before the reshape
  std::vector<int> inputs;  // qadd (two), concat (each input): code tensors
  int64_t axis = -1;        // concat
  std::string activation = "none";
  std::string activation_from;
  Shape out_shape;
  int materialized = -1;  // qlogistic / qtanh / qsoftmax: its output, once emitted unfused
  // bidirectional: the two directions' code tensors (input, input2) and the merge mode
  int input2 = -1;
  std::string merge;
};

// The integer forms of sigmoid, tanh and softmax and their fixed output parameters (TFLite's,
// spec 3.6).
bool is_nonlinear(const std::string& op) {
  return op == "qlogistic" || op == "qtanh" || op == "qsoftmax";
}
std::optional<std::string> nonlinear_op(const std::string& activation) {
  if (activation == "sigmoid") return "qlogistic";
  if (activation == "tanh") return "qtanh";
  if (activation == "softmax") return "qsoftmax";
  return std::nullopt;
}
std::pair<double, int32_t> nonlinear_output(const std::string& op) {
  return op == "qtanh" ? std::pair<double, int32_t>{1.0 / 128, 0}
                       : std::pair<double, int32_t>{1.0 / 256, -128};
}

struct Val {
  enum Kind { kFloat, kCodes, kPending } kind = kFloat;
  int tensor = -1;
  std::shared_ptr<Pending> pending;
  // The timestep mask travelling with it: a bool [?, T] tensor, -1 none, kReversedMask: the
  // QAT tensor carries a mask the integer model does not have (a go_backwards sequence's, which
  // is the input's reversed).
  int mask = -1;
};
constexpr int kReversedMask = -2;

[[noreturn]] void refuse(const nn::Layer& l, const std::string& why) {
  LOWBIT_THROW(UnsupportedError, "convert_to_integer: layer '", l.name(), "' (", l.class_name(),
               "): ", why);
}

std::string own_activation(const nn::Layer& l) {
  const Json c = l.get_config();
  return c.contains("activation") && c.at("activation").is_string()
             ? c.at("activation").get<std::string>()
             : std::string("linear");
}

// relu / relu6 / none for a fusable activation, nullopt otherwise.
std::optional<std::string> fused_name(const std::string& activation) {
  if (activation == "linear" || activation == "none") return "none";
  if (activation == "relu") return "relu";
  if (activation == "relu6") return "relu6";
  return std::nullopt;
}

// The activation a standalone layer applies (ReLU, Activation), if fusable.
std::optional<std::string> layer_activation(const nn::Layer& l) {
  const Json c = l.get_config();
  if (l.class_name() == "Activation") return fused_name(c.value("activation", ""));
  if (l.class_name() != "ReLU") return std::nullopt;
  if (c.value("negative_slope", 0.0) != 0.0 || c.value("threshold", 0.0) != 0.0)
    return std::nullopt;
  if (!c.contains("max_value") || c.at("max_value").is_null()) return "relu";
  if (c.at("max_value").get<double>() == 6.0) return "relu6";
  return std::nullopt;
}

// Combines two clamps applied one after the other.
std::string combine(const std::string& a, const std::string& b) {
  if (a == "none") return b;
  if (b == "none") return a;
  return a == "relu6" || b == "relu6" ? "relu6" : "relu";
}

std::vector<int64_t> json_ints(const Json& c, const char* key) {
  std::vector<int64_t> v;
  if (!c.contains(key)) return v;
  if (c.at(key).is_array())
    for (const auto& e : c.at(key)) v.push_back(e.get<int64_t>());
  else
    v.push_back(c.at(key).get<int64_t>());
  return v;
}

class Converter {
 public:
  Converter(const nn::Model& m, const ConvertOptions& o) : model_(m), opt_(o) {}

  IntegerModel run() {
    im_.name = model_.name() + "_int8";
    if (model_.inputs().size() != 1 || model_.outputs().size() != 1)
      LOWBIT_THROW(UnsupportedError, "convert_to_integer: model '", model_.name(), "' has ",
                   model_.inputs().size(), " inputs and ", model_.outputs().size(),
                   " outputs; integer conversion supports one of each");
    if (const nn::Layer* l = model_.uncalibrated_layer())
      LOWBIT_THROW(ValueError, "convert_to_integer: model '", model_.name(), "': layer '",
                   l->name(),
                   "' has never tracked a range (train the QAT model with fit, or "
                   "calibrate it, before converting)");
    const nn::KTensor& in = model_.inputs()[0];
    if (in.dtype() != DType::kF32 && in.dtype() != DType::kS32 && in.dtype() != DType::kS64)
      LOWBIT_THROW(UnsupportedError,
                   "convert_to_integer: the model input must be f32 (or s32/s64 token ids) but is ",
                   dtype_name(in.dtype()));
    IntegerTensor t;
    t.name = in.node->layer->name();
    t.dtype = in.dtype();
    t.shape = in.shape();
    im_.input = add(std::move(t));
    vals_[in.node.get()] = {Val{Val::kFloat, im_.input, nullptr}};
    const nn::KTensor& out = model_.outputs()[0];
    const Val v = materialize(visit(out));
    if (v.kind != Val::kCodes)
      LOWBIT_THROW(UnsupportedError, "convert_to_integer: the model output (layer '",
                   out.node->layer->name(),
                   "') is not quantized: a quantize_model result ends in a FakeQuant");
    IntegerTensor o;
    o.name = out.node->layer->name() + "_dequantized";
    o.dtype = DType::kF32;
    o.shape = out.shape();
    const IntegerTensor src = im_.tensors[v.tensor];  // a copy: add() may reallocate
    im_.output = add(std::move(o));
    emit("dequantize", {v.tensor}, im_.output,
         {{"scale", src.scale[0]}, {"zero_point", static_cast<int64_t>(src.zero_point[0])}},
         out.node->layer->name(), "");
    // The uint8 scheme: the same grids, every activation code + 128 (a shift of the records;
    // the runtime runs the s8 view of them).
    if (opt_.activations == ActivationScheme::kUint8) {
      detail::to_uint8_scheme(im_);
      im_.name = model_.name() + "_uint8";
    }
    return std::move(im_);
  }

 private:
  int add(IntegerTensor t) {
    im_.tensors.push_back(std::move(t));
    return static_cast<int>(im_.tensors.size()) - 1;
  }
  int constant(const std::string& name, Tensor data) {
    IntegerTensor t;
    t.name = name;
    t.dtype = data.dtype();
    t.shape = data.shape();
    t.data = std::move(data);
    return add(std::move(t));
  }
  void emit(const std::string& op, std::vector<int> inputs, int output, Attrs attrs,
            const std::string& layer, const std::string& activation) {
    im_.ops.push_back({op, std::move(inputs), output, std::move(attrs), layer, activation});
  }
  // A code tensor with the parameters of `like` (pass-through layers).
  int codes_like(const IntegerTensor& like, const std::string& name, const Shape& shape) {
    IntegerTensor t = like;
    t.name = name;
    t.shape = shape;
    t.data = Tensor();
    return add(std::move(t));
  }

  Val visit(const nn::KTensor& k) {
    auto it = vals_.find(k.node.get());
    if (it == vals_.end()) {
      const nn::LayerNode& n = *k.node;
      std::vector<Val> in;
      const bool fq = n.layer->class_name() == "FakeQuant";
      for (const nn::KTensor& i : n.inputs) in.push_back(fq ? visit(i) : materialize(visit(i)));
      std::vector<Val> out = convert(n, in);
      // A layer that passes its input's mask on (Keras' default rule: Dense, Dropout, a
      // FakeQuant, ...): the same bool tensor.
      for (size_t o = 0; o < out.size(); ++o)
        if (out[o].mask == -1 && !in.empty() && o < n.output_masked.size() && n.output_masked[o])
          out[o].mask = in[0].mask;
      it = vals_.emplace(k.node.get(), std::move(out)).first;
    }
    return it->second.at(k.index);
  }

  // A pending sigmoid/tanh/softmax read by anything but a FakeQuant: its op with the fixed
  // output parameters, emitted once (its tensor named after the activation layer).
  Val materialize(const Val& v) {
    if (v.kind != Val::kPending || !is_nonlinear(v.pending->op)) return v;
    Pending& p = *v.pending;
    if (p.materialized < 0) {
      const auto [scale, zp] = nonlinear_output(p.op);
      IntegerTensor t;
      t.name = p.layers;
      t.shape = p.out_shape;
      t.scale = {scale};
      t.zero_point = {zp};
      p.materialized = add(std::move(t));
      emit(p.op, {p.input}, p.materialized, nonlinear_attrs(p), p.layers, "");
    }
    return {Val::kCodes, p.materialized, nullptr};
  }
  Attrs nonlinear_attrs(const Pending& p) const {
    const IntegerTensor& x = im_.tensors[p.input];
    const auto [scale, zp] = nonlinear_output(p.op);
    Attrs a = {{"input_scale", x.scale[0]},
               {"input_zero_point", static_cast<int64_t>(x.zero_point[0])},
               {"output_scale", scale},
               {"output_zero_point", static_cast<int64_t>(zp)}};
    if (p.op == "qsoftmax") a.set("beta", 1.0);
    return a;
  }

  // A copy: later add() calls may reallocate im_.tensors.
  IntegerTensor codes(const nn::Layer& l, const Val& v) {
    if (v.kind == Val::kCodes) return im_.tensors[v.tensor];
    if (v.kind == Val::kPending)
      refuse(l, "its input comes from '" + v.pending->layers +
                    "' without a FakeQuant in between (its output grid is unknown)");
    refuse(l, "its input is float (not quantized): only a FakeQuant may read the float input");
  }

  std::vector<Val> convert(const nn::LayerNode& n, const std::vector<Val>& in) {
    const nn::Layer& l = *n.layer;
    const std::string cls = l.class_name();
    const Shape out_shape = n.outputs.at(0).shape;
    if (cls == "FakeQuant")
      return {fake_quant(static_cast<const FakeQuantLayer&>(l), in.at(0), out_shape)};
    if (cls == "QuantizeWrapper" &&
        static_cast<const QuantizeWrapperLayer&>(l).layer()->class_name() == "Embedding")
      return {embedding(static_cast<const QuantizeWrapperLayer&>(l), in.at(0), out_shape)};
    if (cls == "QuantizeWrapper") {
      const auto& w = static_cast<const QuantizeWrapperLayer&>(l);
      const nn::Layer& inner = *w.layer();
      const std::string weight =
          inner.class_name() == "DepthwiseConv2D" ? "depthwise_kernel" : "kernel";
      if (!w.quantizers().count(weight)) refuse(l, "its kernel is not quantized");
      const Tensor kernel = w.effective_weights().at(weight);
      Tensor bias;
      for (const nn::Weight& wt : inner.weights())
        if (wt.name == "bias") bias = wt.value;
      return {pending(l, inner, codes(l, in.at(0)), in.at(0).tensor, kernel,
                      w.quantizer(weight).grid(w), bias, own_activation(inner), out_shape)};
    }
    if (cls == "FoldedConvBatchNorm") {
      const auto& f = static_cast<const FoldedConvBatchNormLayer&>(l);
      return {pending(l, *f.conv(), codes(l, in.at(0)), in.at(0).tensor, f.effective_kernel(),
                      f.quantizer().grid(f), f.folded_bias(), own_activation(*f.conv()),
                      out_shape)};
    }
    if (cls == "Activation") {
      const std::string act = l.get_config().value("activation", "");
      if (const std::optional<std::string> op = nonlinear_op(act)) {
        // Waits for the FakeQuant after it (quantize_model puts one on the fixed grid), whose
        // name its output takes; read by anything else it is emitted on its own.
        const IntegerTensor x = codes(l, in.at(0));
        if (*op == "qsoftmax" && out_shape.rank() < 1) refuse(l, "softmax of a scalar");
        auto p = std::make_shared<Pending>();
        p->op = *op;
        p->cls = cls;
        p->layers = l.name();
        p->input = in.at(0).tensor;
        p->out_shape = out_shape;
        return {Val{Val::kPending, -1, p}};
      }
      if (!fused_name(act))
        refuse(l, "activation '" + act +
                      "' has no integer form (convertible: relu, relu6, linear fused into the "
                      "conv/dense before; sigmoid, tanh, softmax)");
    }
    if (cls == "ReLU" || cls == "Activation") {
      const std::optional<std::string> a = layer_activation(l);
      if (!a) refuse(l, "only ReLU, ReLU6 and linear activations have an integer form here");
      if (in.at(0).kind != Val::kPending ||
          (in.at(0).pending->op != "qconv2d" && in.at(0).pending->op != "qfully_connected" &&
           in.at(0).pending->op != "qadd"))
        refuse(l,
               "an activation is converted fused into the conv/dense/Add before it; this one "
               "follows no conv/dense/Add");
      auto p = std::make_shared<Pending>(*in.at(0).pending);
      p->activation = combine(p->activation, *a);
      p->activation_from = l.name();
      p->layers += "+" + l.name();
      return {Val{Val::kPending, -1, p}};
    }
    if (cls == "Dropout") return {in.at(0)};  // inference: the identity
    if (cls == "Masking") return {masking(l, in.at(0))};
    if (cls == "QuantizedLSTM" || cls == "QuantizedGRU")
      return {recurrent(static_cast<const QuantizedRecurrentLayer&>(l), n, in.at(0), out_shape)};
    if (cls == "QuantizedBidirectional")
      return bidirectional(static_cast<const QuantizedBidirectionalLayer&>(l), n, in.at(0),
                           out_shape);
    if (cls == "AveragePooling2D" || cls == "GlobalAveragePooling2D") {
      // A mean is off its input's grid: it waits for the FakeQuant after it (quantize_model
      // puts one there) and is rounded once, to that grid.
      codes(l, in.at(0));
      auto p = std::make_shared<Pending>();
      p->op = "qavg_pool2d";
      p->cls = cls;
      p->layers = l.name();
      p->input = in.at(0).tensor;
      p->out_shape = out_shape;
      const Json c = l.get_config();
      if (cls == "AveragePooling2D") {
        p->window = {{"ksize", json_ints(c, "pool_size")},
                     {"strides", json_ints(c, "strides")},
                     {"padding", c.value("padding", "valid")}};
      } else {
        const Shape& xs = im_.tensors[p->input].shape;
        if (xs.rank() != 4 || xs[1] == kUnknown || xs[2] == kUnknown)
          refuse(l, "a global average pooling needs known spatial dims, found " + xs.str());
        p->window = {{"ksize", std::vector<int64_t>{xs[1], xs[2]}},
                     {"strides", std::vector<int64_t>{1, 1}},
                     {"padding", "valid"}};
        p->pool_shape = Shape{kUnknown, 1, 1, xs[3]};
      }
      return {Val{Val::kPending, -1, p}};
    }
    if (cls == "Add") {
      // Its inputs are quantized (quantize_model puts a FakeQuant before each that is not), its
      // sum waits for the optional fused ReLU/ReLU6 and the FakeQuant after it: one qadd.
      if (in.size() != 2)
        refuse(l, "an Add of " + std::to_string(in.size()) +
                      " inputs has no integer form here (qadd takes two: chain two-input Adds)");
      const IntegerTensor a = codes(l, in[0]), b = codes(l, in[1]);
      if (a.shape != b.shape)
        refuse(l, "its inputs have shapes " + a.shape.str() + " and " + b.shape.str() +
                      "; qadd needs equal shapes (no broadcasting)");
      auto p = std::make_shared<Pending>();
      p->op = "qadd";
      p->cls = cls;
      p->layers = l.name();
      p->inputs = {in[0].tensor, in[1].tensor};
      p->input = in[0].tensor;
      p->out_shape = out_shape;
      return {Val{Val::kPending, -1, p}};
    }
    if (cls == "Concatenate") {
      // quantize_model puts no quantizer on its inputs and one FakeQuant after it: each input
      // is requantized to that FakeQuant's grid (when on another grid), then the codes copied.
      auto p = std::make_shared<Pending>();
      p->op = "concat";
      p->cls = cls;
      p->layers = l.name();
      for (const Val& v : in) {
        codes(l, v);
        p->inputs.push_back(v.tensor);
      }
      p->input = p->inputs.at(0);
      const int64_t rank = out_shape.rank();
      int64_t axis = l.get_config().value("axis", int64_t{-1});
      if (axis < 0) axis += rank;
      if (axis <= 0 || axis >= rank)
        refuse(l, "concatenation along axis " + std::to_string(axis) +
                      " (the batch axis, or outside rank " + std::to_string(rank) +
                      ") has no integer form");
      p->axis = axis;
      p->out_shape = out_shape;
      return {Val{Val::kPending, -1, p}};
    }
    if (cls == "MaxPooling2D") {
      const IntegerTensor x = codes(l, in.at(0));
      const Json c = l.get_config();
      const int out = codes_like(x, l.name(), out_shape);
      emit("qmax_pool2d", {in.at(0).tensor}, out,
           {{"ksize", json_ints(c, "pool_size")},
            {"strides", json_ints(c, "strides")},
            {"padding", c.value("padding", "valid")},
            {"act_min", static_cast<int64_t>(x.qmin)},
            {"act_max", static_cast<int64_t>(x.qmax)}},
           l.name(), "");
      return {Val{Val::kCodes, out, nullptr}};
    }
    if (cls == "Flatten" || cls == "Reshape") {
      const IntegerTensor x = codes(l, in.at(0));
      std::vector<int64_t> dims = out_shape.dims();
      dims[0] = -1;
      const int out = codes_like(x, l.name(), out_shape);
      emit("reshape", {in.at(0).tensor}, out, {{"shape", dims}}, l.name(), "");
      return {Val{Val::kCodes, out, nullptr}};
    }
    if (cls == "InputLayer") refuse(l, "a second model input");
    refuse(l,
           "no integer form for this layer class yet (convertible: Conv1D, Conv2D, "
           "DepthwiseConv2D, SeparableConv2D as quantize_model splits it, Dense (inputs of any "
           "rank) with their folded batch norms, ReLU/ReLU6, Activation sigmoid/tanh/softmax, "
           "Embedding, Add, Concatenate, MaxPooling2D, "
           "AveragePooling2D, GlobalAveragePooling2D, Flatten, Reshape, Dropout, FakeQuant, "
           "Masking of the model input, QuantizedLSTM, QuantizedGRU, QuantizedBidirectional)");
  }

  // Masking of the float model input: the timestep mask (timestep_mask op) travels with the
  // unchanged float tensor. Keras' Masking also zeroes masked steps: the recurrent op never
  // reads them, and a FakeQuant of them is refused below unless mask_value is 0 (then they are
  // 0 already).
  Val masking(const nn::Layer& l, const Val& in) {
    if (in.kind != Val::kFloat)
      refuse(l,
             "a Masking layer converts only on the float model input (quantize_model puts "
             "it there, before the input's quantizer)");
    const double mv = l.get_config().value("mask_value", 0.0);
    IntegerTensor t;
    t.name = l.name() + "/mask";
    t.dtype = DType::kBool;
    const Shape& xs = im_.tensors[in.tensor].shape;
    if (xs.rank() != 3)
      refuse(l, "a Masking layer needs x [batch, timesteps, features], found " + xs.str());
    t.shape = Shape{kUnknown, xs[1]};
    const int m = add(std::move(t));
    emit("timestep_mask", {in.tensor}, m, {{"mask_value", mv}}, l.name(), "");
    masking_value_[m] = mv;
    Val v = in;
    v.mask = m;
    return v;
  }

  // An int8 grid of the recurrent layer's own tracker (x or h).
  IntegerTensor tracker_grid(const QuantizedRecurrentLayer& l, const std::string& which,
                             const std::string& name, const Shape& shape) {
    const QuantizerConfig& a = l.activations();
    if (a.bits != 8 || a.narrow_range)
      refuse(l, which + ": the integer LSTM/GRU takes 8-bit wide-range x and h grids, found " +
                    std::to_string(a.bits) + "-bit" + (a.narrow_range ? " narrow" : ""));
    float mn = 0, mx = 0;
    for (const nn::Weight& w : l.weights()) {
      if (w.name == which + "_min") mn = static_cast<float>(w.value.get_as_double(0));
      if (w.name == which + "_max") mx = static_cast<float>(w.value.get_as_double(0));
    }
    const ops::FakeQuantNudge nd = ops::fake_quant_nudge(mn, mx, a.bits, a.narrow_range);
    Quantizer::Grid g;
    g.scale = {nd.scale};
    g.zero_point = {nd.zero_point};
    g.qmin = nd.quant_min;
    g.qmax = nd.quant_max;
    IntegerTensor t = grid_tensor(l, g, shape);
    t.name = name;
    return t;
  }

  // FQ(W) [rows, G*U] (the QAT layer's own per-gate-block weights) as int8 codes and the G
  // block scales.
  Tensor recurrent_weights(const QuantizedRecurrentLayer& l, const Tensor& fq, const char* which,
                           int64_t gates, std::vector<double>& scales) {
    const int bits = l.weight_bits();
    if (bits > 8)
      refuse(l, "its weights are " + std::to_string(bits) + "-bit; int8 holds at most 8");
    Tensor mn, mx;
    for (const nn::Weight& w : l.weights()) {
      if (w.name == std::string(which) + "_min") mn = w.value.to(DType::kF32);
      if (w.name == std::string(which) + "_max") mx = w.value.to(DType::kF32);
    }
    const Tensor f = fq.to(DType::kF32);
    const int64_t rows = f.shape()[0], cols = f.shape()[1], u = cols / gates;
    scales.clear();
    for (int64_t g = 0; g < gates; ++g) {
      const ops::FakeQuantNudge nd =
          ops::fake_quant_nudge(mn.data<float>()[g], mx.data<float>()[g], bits, true);
      if (!(nd.scale > 0) || !std::isfinite(nd.scale))
        refuse(l, std::string(which) + ": gate block " + std::to_string(g) +
                      " has scale 0 (an all-zero range)");
      scales.push_back(nd.scale);
    }
    Tensor q(f.shape(), DType::kS8);
    for (int64_t i = 0; i < rows * cols; ++i) {
      const double s = scales[(i % cols) / u];
      const double v = static_cast<double>(f.data<float>()[i]) / s;
      const double code = std::round(v);
      if (std::fabs(v - code) > 1e-3)
        refuse(l, std::string(which) + ": weight " + std::to_string(i) + " is not on its grid");
      if (code < -127 || code > 127)
        refuse(l, std::string(which) + ": weight codes reach " + std::to_string(code) +
                      " (an asymmetric weight grid; the integer LSTM/GRU takes symmetric ones)");
      q.data<int8_t>()[i] = static_cast<int8_t>(code);
    }
    return q;
  }

  // QuantizedLSTM / QuantizedGRU: one qlstm / qgru over the sequence (spec 3.7), x quantized
  // (or requantized) to the layer's own x grid, the output on its h grid.
  Val recurrent(const QuantizedRecurrentLayer& l, const nn::LayerNode& n, const Val& in,
                const Shape& out_shape, bool reverse_output = false) {
    const bool lstm = l.class_name() == "QuantizedLSTM";
    const Json c = l.layer()->get_config();
    if (n.inputs.size() > 1)
      refuse(l, "initial states are not converted (the integer LSTM/GRU starts from h = 0, c = 0)");
    if (c.value("return_state", false))
      refuse(l, "return_state is not converted (the integer op returns the output only)");
    if (in.kind == Val::kPending) codes(l, in);
    if (in.mask == kReversedMask || (in.mask < 0 && n.inputs.at(0).has_mask()))
      refuse(l,
             "its input carries a timestep mask the integer model does not compute (masks "
             "convert from a Masking layer on the model input, through layers that pass "
             "them on; not the reversed mask of a go_backwards sequence)");
    const int64_t gates = lstm ? 4 : 3;
    const int64_t units = c.at("units").get<int64_t>();
    const Shape& xs = im_.tensors[in.tensor].shape;
    if (xs.rank() != 3 || xs[1] == kUnknown || xs[2] == kUnknown)
      refuse(l, "expected x [batch, timesteps, features] with known dims, found " + xs.str());
    // x codes on the layer's x grid.
    IntegerTensor xt = tracker_grid(l, "x", l.name() + "/x_quant", xs);
    int x_id;
    if (in.kind == Val::kFloat) {
      x_id = add(xt);
      emit("quantize", {in.tensor}, x_id,
           {{"scale", xt.scale[0]}, {"zero_point", static_cast<int64_t>(xt.zero_point[0])}},
           l.name() + "/x_quant", "");
    } else {
      const IntegerTensor src = im_.tensors[in.tensor];
      if (static_cast<float>(src.scale[0]) == static_cast<float>(xt.scale[0]) &&
          src.zero_point[0] == xt.zero_point[0]) {
        x_id = in.tensor;
      } else {
        x_id = add(xt);
        emit("requantize", {in.tensor}, x_id,
             {{"input_scale", src.scale[0]},
              {"input_zero_point", static_cast<int64_t>(src.zero_point[0])},
              {"output_scale", xt.scale[0]},
              {"output_zero_point", static_cast<int64_t>(xt.zero_point[0])},
              {"rounding", opt_.rounding == Rounding::kSingle ? "single" : "double"}},
             l.name() + "/x_quant", "");
      }
    }
    const IntegerTensor x = im_.tensors[x_id];
    IntegerTensor ht = tracker_grid(l, "h", l.name(), out_shape);
    if (lstm) {
      double cmax = 0;
      for (const nn::Weight& w : l.weights())
        if (w.name == "cell_max_abs") cmax = w.value.get_as_double(0);
      if (!(cmax <= 64.0))
        refuse(l, "its cell state reaches max|c| = " + std::to_string(cmax) +
                      " > 64: the integer cell holds at most Q6.9 (p <= 6)");
    }
    std::vector<double> swx, swh;
    Tensor wx = recurrent_weights(l, l.quantized_kernel(), "kernel", gates, swx);
    Tensor wh =
        recurrent_weights(l, l.quantized_recurrent_kernel(), "recurrent_kernel", gates, swh);
    const bool reset_after = lstm || c.value("reset_after", true);
    // Biases: int32 at s_side * s_W,g (semantics 3.7), the recurrent one only for a GRU with
    // reset_after.
    Tensor bias_f;
    if (c.value("use_bias", true))
      for (const nn::Weight& w : l.layer()->weights())
        if (w.name == "bias") bias_f = w.value.to(DType::kF32);
    const int64_t gu = gates * units;
    Tensor bx({gu}, DType::kS32), bh({gu}, DType::kS32);
    std::vector<double> bxs, bhs;
    for (int64_t col = 0; col < gu; ++col) {
      const int64_t g = col / units;
      const float sx = bias_scale(static_cast<float>(x.scale[0]), static_cast<float>(swx[g]));
      const float sh = bias_scale(static_cast<float>(ht.scale[0]), static_cast<float>(swh[g]));
      bxs.push_back(sx);
      bhs.push_back(sh);
      const bool two = !lstm && reset_after;
      bx.data<int32_t>()[col] = bias_f.defined() ? quantize_bias(bias_f.data<float>()[col], sx) : 0;
      bh.data<int32_t>()[col] =
          bias_f.defined() && two ? quantize_bias(bias_f.data<float>()[gu + col], sh) : 0;
    }
    const std::string who = l.name();
    const int wx_id = constant(who + "/kernel", std::move(wx));
    im_.tensors[wx_id].scale = swx;
    im_.tensors[wx_id].zero_point.assign(swx.size(), 0);
    const int wh_id = constant(who + "/recurrent_kernel", std::move(wh));
    im_.tensors[wh_id].scale = swh;
    im_.tensors[wh_id].zero_point.assign(swh.size(), 0);
    const int bx_id = constant(who + (lstm ? "/bias" : "/input_bias"), std::move(bx));
    im_.tensors[bx_id].scale = bxs;
    im_.tensors[bx_id].zero_point.assign(bxs.size(), 0);
    std::vector<int> inputs{x_id, wx_id, wh_id, bx_id};
    if (!lstm) {
      const int bh_id = constant(who + "/recurrent_bias", std::move(bh));
      im_.tensors[bh_id].scale = bhs;
      im_.tensors[bh_id].zero_point.assign(bhs.size(), 0);
      inputs.push_back(bh_id);
    }
    if (in.mask >= 0) inputs.push_back(in.mask);
    Attrs a{{"input_scale", x.scale[0]},
            {"input_zero_point", static_cast<int64_t>(x.zero_point[0])},
            {"hidden_scale", ht.scale[0]},
            {"hidden_zero_point", static_cast<int64_t>(ht.zero_point[0])},
            {"input_weight_scales", swx},
            {"recurrent_weight_scales", swh},
            {"return_sequences", c.value("return_sequences", false)},
            {"go_backwards", c.value("go_backwards", false)},
            {"zero_output_for_mask", c.value("zero_output_for_mask", false)}};
    if (lstm)
      a.set("cell_int_bits", static_cast<int64_t>(l.cell_int_bits()));
    else
      a.set("reset_after", reset_after);
    if (reverse_output) a.set("reverse_output", true);
    const int out = add(std::move(ht));
    emit(lstm ? "qlstm" : "qgru", std::move(inputs), out, std::move(a), l.name(), "");
    Val v{Val::kCodes, out, nullptr};
    if (in.mask >= 0 && c.value("return_sequences", false))
      v.mask = c.value("go_backwards", false) && !reverse_output ? kReversedMask : in.mask;
    return v;
  }

  // QuantizedBidirectional: one qlstm/qgru per direction (the backward one with go_backwards
  // and, for sequences, reverse_output: Keras' reversal of the backward sequence), each on its
  // own h grid. merge_mode none: the two outputs; concat, sum, ave: pending until the FakeQuant
  // quantize_model puts after the merge, whose grid the merge is computed on (finish_merge).
  std::vector<Val> bidirectional(const QuantizedBidirectionalLayer& l, const nn::LayerNode& n,
                                 const Val& in, const Shape& out_shape) {
    const Json c = l.get_config();
    const std::string mode = c.contains("merge_mode") && c.at("merge_mode").is_string()
                                 ? c.at("merge_mode").get<std::string>()
                                 : std::string("none");
    if (mode == "mul")
      refuse(l,
             "merge_mode 'mul' has no integer form (no int8 multiply op; concat, sum, ave and "
             "none convert)");
    const Json fc = l.forward_layer()->layer()->get_config();
    const bool seq = fc.value("return_sequences", false);
    if (fc.value("return_state", false))
      refuse(l, "return_state is not converted (the integer op returns the output only)");
    if (in.kind == Val::kPending) codes(l, in);
    const Shape& xs = im_.tensors[in.tensor].shape;
    if (xs.rank() != 3) refuse(l, "expected x [batch, timesteps, features], found " + xs.str());
    const int64_t units = fc.at("units").get<int64_t>();
    const Shape ds = seq ? Shape{kUnknown, xs[1], units} : Shape{kUnknown, units};
    const Val vf = recurrent(*l.forward_layer(), n, in, ds);
    const Val vb = recurrent(*l.backward_layer(), n, in, ds, seq);
    if (mode == "none") return {vf, vb};
    auto p = std::make_shared<Pending>();
    p->op = "bidirectional";
    p->cls = "Bidirectional";
    p->layers = l.name();
    p->input = vf.tensor;
    p->input2 = vb.tensor;
    p->merge = mode;
    p->out_shape = out_shape;
    Val v{Val::kPending, -1, p};
    v.mask = seq ? in.mask : -1;
    return {v};
  }

  // The merge of a bidirectional layer with the grid of the FakeQuant after it: concat
  // requantizes each direction to that grid (what the FakeQuant does to each half) and joins
  // them; sum and ave are one qadd (ave: both input scales halved, the same real values / 2).
  Val finish_merge(const nn::Layer& fq, const Pending& p, IntegerTensor out_t) {
    const IntegerTensor a = im_.tensors[p.input], b = im_.tensors[p.input2];
    const std::string layers = p.layers + "+" + fq.name();
    const std::string rounding = opt_.rounding == Rounding::kSingle ? "single" : "double";
    out_t.shape = p.out_shape;
    if (p.merge == "concat") {
      std::vector<int> parts;
      for (int k = 0; k < 2; ++k) {
        const IntegerTensor& src = k == 0 ? a : b;
        IntegerTensor t = out_t;
        t.name = src.name + "_requantized";
        t.shape = src.shape;
        const int id = add(std::move(t));
        emit("requantize", {k == 0 ? p.input : p.input2}, id,
             {{"input_scale", src.scale[0]},
              {"input_zero_point", static_cast<int64_t>(src.zero_point[0])},
              {"output_scale", out_t.scale[0]},
              {"output_zero_point", static_cast<int64_t>(out_t.zero_point[0])},
              {"rounding", rounding}},
             layers, "");
        parts.push_back(id);
      }
      const int out = add(std::move(out_t));
      emit("concat", parts, out, {{"axis", int64_t{-1}}}, layers, "");
      return {Val::kCodes, out, nullptr};
    }
    const double k = p.merge == "ave" ? 0.5 : 1.0;
    const IntegerTensor o = out_t;
    const int out = add(std::move(out_t));
    emit("qadd", {p.input, p.input2}, out,
         {{"input1_scale", a.scale[0] * k},
          {"input1_zero_point", static_cast<int64_t>(a.zero_point[0])},
          {"input2_scale", b.scale[0] * k},
          {"input2_zero_point", static_cast<int64_t>(b.zero_point[0])},
          {"output_scale", o.scale[0]},
          {"output_zero_point", static_cast<int64_t>(o.zero_point[0])},
          {"activation", "none"},
          {"rounding", rounding}},
         layers, "");
    return {Val::kCodes, out, nullptr};
  }

  Val pending(const nn::Layer& l, const nn::Layer& inner, const IntegerTensor& x, int x_tensor,
              const Tensor& kernel, const Quantizer::Grid& grid, const Tensor& bias,
              const std::string& activation, const Shape& out_shape) {
    auto p = std::make_shared<Pending>();
    p->cls = inner.class_name();
    p->layers = l.name();
    p->input = x_tensor;
    p->grid = grid;
    p->bias = bias;
    p->out_shape = out_shape;
    const std::optional<std::string> a = fused_name(activation);
    if (!a)
      refuse(l, "its own activation '" + activation +
                    "' has no integer form fused into the layer (quantize_model splits softmax, "
                    "sigmoid and tanh into their own Activation layer after a FakeQuant)");
    p->activation = *a;
    p->activation_from = *a == "none" ? "" : inner.name();
    const Json c = inner.get_config();
    if (p->cls == "Dense") {
      p->op = "qfully_connected";
      p->kernel = kernel;
    } else if (p->cls == "Conv2D" || p->cls == "DepthwiseConv2D") {
      p->op = "qconv2d";
      const Shape& ks = kernel.shape();
      int64_t groups = c.value("groups", int64_t{1});
      p->kernel = kernel;
      if (p->cls == "DepthwiseConv2D") {
        groups = ks[2];
        p->kernel = kernel.reshape(Shape{ks[0], ks[1], 1, ks[2] * ks[3]});
      }
      p->window = {{"strides", json_ints(c, "strides")},
                   {"dilations", json_ints(c, "dilation_rate")},
                   {"padding", c.value("padding", "valid")},
                   {"groups", groups}};
    } else if (p->cls == "Conv1D") {
      // A qconv2d on [N, 1, T, C]: the kernel [K, Cin/g, F] as [1, K, Cin/g, F], the window on
      // the width axis; "causal" pads (K - 1) * dilation steps on the left only.
      p->op = "qconv2d";
      const Shape& ks = kernel.shape();
      p->kernel = kernel.reshape(Shape{1, ks[0], ks[1], ks[2]});
      const std::vector<int64_t> st = json_ints(c, "strides"), dl = json_ints(c, "dilation_rate");
      const int64_t s = st.empty() ? 1 : st[0], d = dl.empty() ? 1 : dl[0];
      const std::string padding = c.value("padding", "valid");
      p->window = {{"strides", std::vector<int64_t>{1, s}},
                   {"dilations", std::vector<int64_t>{1, d}},
                   {"groups", c.value("groups", int64_t{1})}};
      if (padding == "causal")
        p->window.set("padding", "explicit")
            .set("pads", std::vector<int64_t>{0, 0, (ks[0] - 1) * d, 0});
      else
        p->window.set("padding", padding);
      const Shape& xs = x.shape;
      if (xs.rank() != 3 || xs[1] == kUnknown || out_shape[1] == kUnknown)
        refuse(l, "a Conv1D needs a known number of steps (input " + xs.str() + ", output " +
                      out_shape.str() + ")");
      IntegerTensor x4 = x;
      x4.name = l.name() + "_as_2d";
      x4.shape = Shape{kUnknown, 1, xs[1], xs[2]};
      const int x4_id = add(std::move(x4));
      emit("reshape", {x_tensor}, x4_id, {{"shape", std::vector<int64_t>{-1, 1, xs[1], xs[2]}}},
           l.name(), "");
      p->input = x4_id;
      p->conv_shape = Shape{kUnknown, 1, out_shape[1], out_shape[2]};
    } else if (p->cls == "SeparableConv2D") {
      refuse(l,
             "a SeparableConv2D QAT'd as one layer (no quantizer between its depthwise and "
             "pointwise parts) has no integer form; quantize_model now splits it into "
             "DepthwiseConv2D + FakeQuant + Conv2D: re-run quantize_model on the float model");
    } else {
      refuse(l, "weighted layer class '" + p->cls +
                    "' has no integer form yet (convertible: Conv1D, Conv2D, DepthwiseConv2D, "
                    "Dense)");
    }
    return Val{Val::kPending, -1, p};
  }

  // The int8 storage of a grid: codes shifted by -128 - qmin.
  IntegerTensor grid_tensor(const nn::Layer& l, const Quantizer::Grid& g, const Shape& shape) {
    if (g.scale.size() != 1) refuse(l, "a per-channel activation grid has no integer form");
    if (g.qmax - g.qmin > 255)
      refuse(l, "its grid has " + std::to_string(g.qmax - g.qmin + 1) +
                    " codes; int8 activations hold at most 256 (use <= 8-bit activations)");
    if (!(g.scale[0] > 0) || !std::isfinite(g.scale[0]))
      refuse(l, "its range has collapsed (scale " + std::to_string(g.scale[0]) +
                    "): it never saw data, or saw only one value");
    const int32_t off = -128 - g.qmin;
    IntegerTensor t;
    t.name = l.name();
    t.dtype = DType::kS8;
    t.shape = shape;
    t.scale = {static_cast<double>(g.scale[0])};
    t.zero_point = {g.zero_point[0] + off};
    t.qmin = g.qmin + off;
    t.qmax = g.qmax + off;
    return t;
  }

  Val fake_quant(const FakeQuantLayer& l, const Val& in, const Shape& shape) {
    const Quantizer::Grid g = l.quantizer().grid(l);
    IntegerTensor t = grid_tensor(l, g, shape);
    if (in.kind == Val::kFloat && in.mask >= 0 && masking_value_.count(in.mask) &&
        masking_value_.at(in.mask) != 0.0)
      refuse(l, "it quantizes a Masking output with mask_value " +
                    std::to_string(masking_value_.at(in.mask)) +
                    " != 0 (Masking zeroes masked steps; the integer model does not)");
    if (in.kind == Val::kFloat) {
      const int out = add(t);
      emit("quantize", {in.tensor}, out,
           {{"scale", t.scale[0]}, {"zero_point", static_cast<int64_t>(t.zero_point[0])}}, l.name(),
           "");
      return {Val::kCodes, out, nullptr};
    }
    if (in.kind == Val::kCodes) return {Val::kCodes, requantize(in.tensor, t, l.name()), nullptr};
    return finish(l, *in.pending, std::move(t));
  }

  // Codes of tensor `x` on the grid of `to` (a new tensor, returned): one requantize, clamped to
  // the grid's codes (a low-bit grid keeps its range). Always one rounding, whatever
  // ConvertOptions::rounding says: the QAT model rounds each value once (its FakeQuant), and M
  // = s_in / s_out is near 1 or below (a FakeQuant after a Concatenate spans its inputs'
  // ranges), where gemmlowp's first rounding (to an integer, before a right shift of 1 or more
  // bits) would move a code near a tie by one in up to a quarter of the cases; TFLite has no
  // requantizing op here to be compatible with (its int8 CONCATENATION needs one grid).
  int requantize(int x_tensor, IntegerTensor to, const std::string& layers) {
    const IntegerTensor x = im_.tensors[x_tensor];
    const int out = add(to);
    emit("requantize", {x_tensor}, out,
         {{"input_scale", x.scale[0]},
          {"input_zero_point", static_cast<int64_t>(x.zero_point[0])},
          {"output_scale", to.scale[0]},
          {"output_zero_point", static_cast<int64_t>(to.zero_point[0])},
          {"act_min", static_cast<int64_t>(to.qmin)},
          {"act_max", static_cast<int64_t>(to.qmax)},
          {"rounding", "single"}},
         layers, "");
    return out;
  }

  // The pending average pool with its output grid: one qavg_pool2d rounding the mean to it
  // (then a reshape for a global pooling).
  Val finish_pool(const nn::Layer& fq, const Pending& p, IntegerTensor out_t) {
    const IntegerTensor x = im_.tensors[p.input];
    Attrs a = p.window;
    a.set("input_scale", x.scale[0]);
    a.set("input_zero_point", static_cast<int64_t>(x.zero_point[0]));
    a.set("output_scale", out_t.scale[0]);
    a.set("output_zero_point", static_cast<int64_t>(out_t.zero_point[0]));
    a.set("act_min", static_cast<int64_t>(out_t.qmin));
    a.set("act_max", static_cast<int64_t>(out_t.qmax));
    // Always one rounding: TFLite has no requantizing average pool to be compatible with, and
    // its multipliers s_in / (s_out * count) are near 1, where a double rounding would move
    // the mean by up to a quarter of a step.
    a.set("rounding", "single");
    const std::string layers = p.layers + "+" + fq.name();
    if (p.pool_shape.rank() == 0) {
      out_t.shape = p.out_shape;
      const int out = add(std::move(out_t));
      emit("qavg_pool2d", {p.input}, out, std::move(a), layers, "");
      return {Val::kCodes, out, nullptr};
    }
    IntegerTensor pooled = out_t;
    pooled.name = p.layers + "_pooled";
    pooled.shape = p.pool_shape;
    const int mid = add(std::move(pooled));
    emit("qavg_pool2d", {p.input}, mid, std::move(a), layers, "");
    out_t.shape = p.out_shape;
    std::vector<int64_t> dims = p.out_shape.dims();
    dims[0] = -1;
    const int out = add(std::move(out_t));
    emit("reshape", {mid}, out, {{"shape", dims}}, layers, "");
    return {Val::kCodes, out, nullptr};
  }

  // The pending sigmoid/tanh/softmax with the FakeQuant after it: one op when that FakeQuant's
  // grid is the fixed output grid (quantize_model's), else the op and a requantize to it.
  Val finish_nonlinear(const nn::Layer& fq, const Pending& p, IntegerTensor out_t) {
    const auto [scale, zp] = nonlinear_output(p.op);
    out_t.shape = p.out_shape;
    const bool fixed = out_t.scale[0] == scale && out_t.zero_point[0] == zp && out_t.qmin == -128 &&
                       out_t.qmax == 127;
    const std::string layers = p.layers + "+" + fq.name();
    if (fixed) {
      const int out = add(std::move(out_t));
      emit(p.op, {p.input}, out, nonlinear_attrs(p), layers, "");
      return {Val::kCodes, out, nullptr};
    }
    const int mid = materialize(Val{Val::kPending, -1, std::make_shared<Pending>(p)}).tensor;
    return {Val::kCodes, requantize(mid, std::move(out_t), fq.name()), nullptr};
  }

  // Embedding (a QuantizeWrapper with a per-tensor table quantizer): the table's codes as an
  // s8 constant and a gather of its rows by the ids, whose output keeps the table's grid (no
  // FakeQuant follows an Embedding). f32 ids are truncated to s32 first (a cast), as the layer
  // does.
  Val embedding(const QuantizeWrapperLayer& w, const Val& ids, const Shape& out_shape) {
    const nn::Layer& inner = *w.layer();
    if (ids.kind != Val::kFloat)
      refuse(w, "an Embedding reads token ids (the model input), not quantized values");
    if (inner.get_config().value("mask_zero", false))
      refuse(w, "mask_zero: masks have no integer form here");
    if (!w.quantizers().count("embeddings")) refuse(w, "its table is not quantized");
    const Quantizer::Grid g = w.quantizer("embeddings").grid(w);
    if (g.scale.size() != 1)
      refuse(w, "its table is quantized per channel (" + std::to_string(g.scale.size()) +
                    " scales): the gathered rows would need a per-channel activation grid; "
                    "quantize the table per tensor (quantize_model's default for Embedding)");
    if (g.qmax - g.qmin > 255)
      refuse(w, "its table grid has " + std::to_string(g.qmax - g.qmin + 1) +
                    " codes; int8 holds at most 256 (use <= 8-bit weights)");
    const double s = g.scale[0];
    if (!(s > 0) || !std::isfinite(s))
      refuse(w, "its table grid has scale " + std::to_string(s) + " (an all-zero table?)");
    // Stored with zero point 0 when the grid's codes fit int8 around it (symmetric grids, as
    // TFLite stores weights), else shifted as an activation grid (codes from -128).
    const int32_t zp_g = g.zero_point[0];
    const int32_t off = g.qmin - zp_g >= -128 && g.qmax - zp_g <= 127 ? -zp_g : -128 - g.qmin;
    const Tensor table = w.effective_weights().at("embeddings").to(DType::kF32);
    Tensor codes(table.shape(), DType::kS8);
    const float* pt = table.data<float>();
    int8_t* pc = codes.data<int8_t>();
    for (int64_t i = 0; i < table.numel(); ++i) {
      const double v = static_cast<double>(pt[i]) / s;
      const double q = std::round(v);
      if (std::fabs(v - q) > 1e-3)
        refuse(w, "table entry " + std::to_string(i) + " (" + std::to_string(pt[i]) +
                      ") is not on its grid of step " + std::to_string(s));
      const double code = q + zp_g + off;
      if (code < g.qmin + off || code > g.qmax + off)
        refuse(w, "table entry " + std::to_string(i) + " lies outside its grid's codes");
      pc[i] = static_cast<int8_t>(code);
    }
    const int t_id = constant(w.name() + "/embeddings", std::move(codes));
    im_.tensors[t_id].scale = {s};
    im_.tensors[t_id].zero_point = {zp_g + off};
    im_.tensors[t_id].qmin = g.qmin + off;
    im_.tensors[t_id].qmax = g.qmax + off;
    int id_t = ids.tensor;
    const IntegerTensor in = im_.tensors[ids.tensor];
    if (in.dtype == DType::kF32) {
      IntegerTensor c;
      c.name = w.name() + "_ids";
      c.dtype = DType::kS32;
      c.shape = in.shape;
      id_t = add(std::move(c));
      emit("cast", {ids.tensor}, id_t, {{"dtype", DType::kS32}}, w.name(), "");
    } else if (in.dtype != DType::kS32 && in.dtype != DType::kS64) {
      refuse(w, std::string("ids of dtype ") + dtype_name(in.dtype) + " (expected s32, s64, f32)");
    }
    IntegerTensor o = im_.tensors[t_id];
    o.name = w.name();
    o.shape = out_shape;
    o.data = Tensor();
    const int out = add(std::move(o));
    emit("gather", {t_id, id_t}, out, {{"axis", int64_t{0}}}, w.name(), "");
    return {Val::kCodes, out, nullptr};
  }

  // The pending Add (with its fused activation) and its output grid: one qadd.
  Val finish_add(const nn::Layer& fq, const Pending& p, IntegerTensor out_t) {
    const IntegerTensor a = im_.tensors[p.inputs.at(0)], b = im_.tensors[p.inputs.at(1)];
    out_t.shape = p.out_shape;
    Attrs at{{"input1_scale", a.scale[0]},
             {"input1_zero_point", static_cast<int64_t>(a.zero_point[0])},
             {"input2_scale", b.scale[0]},
             {"input2_zero_point", static_cast<int64_t>(b.zero_point[0])},
             {"output_scale", out_t.scale[0]},
             {"output_zero_point", static_cast<int64_t>(out_t.zero_point[0])},
             {"activation", p.activation},
             {"act_min", static_cast<int64_t>(out_t.qmin)},
             {"act_max", static_cast<int64_t>(out_t.qmax)},
             {"rounding", opt_.rounding == Rounding::kSingle ? "single" : "double"}};
    const int out = add(std::move(out_t));
    emit("qadd", p.inputs, out, std::move(at), p.layers + "+" + fq.name(),
         p.activation + (p.activation_from.empty() ? "" : " (" + p.activation_from + ")"));
    return {Val::kCodes, out, nullptr};
  }

  // The pending Concatenate and its output grid: each input on another grid requantized to it
  // (TFLite's int8 concatenation wants every input on the output's parameters, spec 3.6; see
  // requantize for its rounding), then concat.
  Val finish_concat(const nn::Layer& fq, const Pending& p, IntegerTensor out_t) {
    const std::string layers = p.layers + "+" + fq.name();
    std::vector<int> parts;
    std::map<int, int> requantized;  // an input read twice is requantized once
    for (size_t i = 0; i < p.inputs.size(); ++i) {
      const IntegerTensor x = im_.tensors[p.inputs[i]];  // a copy: add() may reallocate
      if (x.scale == out_t.scale && x.zero_point == out_t.zero_point && x.qmin == out_t.qmin &&
          x.qmax == out_t.qmax) {
        parts.push_back(p.inputs[i]);  // already on the output's grid: FakeQuant is the identity
        continue;
      }
      auto it = requantized.find(p.inputs[i]);
      if (it == requantized.end()) {
        IntegerTensor r = out_t;
        r.name = p.layers + "/input" + std::to_string(i) + "_requantized";
        r.shape = x.shape;
        it = requantized.emplace(p.inputs[i], requantize(p.inputs[i], std::move(r), layers)).first;
      }
      parts.push_back(it->second);
    }
    out_t.shape = p.out_shape;
    const int out = add(std::move(out_t));
    emit("concat", parts, out, {{"axis", p.axis}}, layers, "");
    return {Val::kCodes, out, nullptr};
  }

  // The pending conv/dense with its output grid: int8 weights, int32 bias, one op.
  Val finish(const nn::Layer& fq, const Pending& p, IntegerTensor out_t) {
    if (p.op == "qavg_pool2d") return finish_pool(fq, p, std::move(out_t));
    if (is_nonlinear(p.op)) return finish_nonlinear(fq, p, std::move(out_t));
    if (p.op == "bidirectional") return finish_merge(fq, p, std::move(out_t));
    if (p.op == "qadd") return finish_add(fq, p, std::move(out_t));
    if (p.op == "concat") return finish_concat(fq, p, std::move(out_t));
    const IntegerTensor x = im_.tensors[p.input];  // a copy: constant() may reallocate
    const Shape& ks = p.kernel.shape();
    const int64_t out_c = ks[ks.rank() - 1];
    const Quantizer::Grid& g = p.grid;
    const std::string who = p.layers;
    const nn::Layer& owner = fq;  // for messages
    if (g.scale.size() != 1 && static_cast<int64_t>(g.scale.size()) != out_c)
      refuse(owner, "the weight grid of '" + who + "' has " + std::to_string(g.scale.size()) +
                        " channels for " + std::to_string(out_c) + " outputs");
    auto sw = [&](int64_t c) { return g.scale[g.scale.size() == 1 ? 0 : c]; };
    // Weight codes: FQ(W) / s_w[c] is an integer (the grid's q - zero_point).
    const Tensor kf = p.kernel.to(DType::kF32);
    Tensor wq(ks, DType::kS8);
    const float* pk = kf.data<float>();
    int8_t* pw = wq.data<int8_t>();
    for (int64_t i = 0; i < kf.numel(); ++i) {
      const int64_t c = i % out_c;
      const double s = sw(c);
      if (!(s > 0))
        refuse(owner, "'" + who + "': weight channel " + std::to_string(c) +
                          " has scale 0 (an all-zero range)");
      const double v = static_cast<double>(pk[i]) / s;
      const double code = std::round(v);
      if (std::fabs(v - code) > 1e-3)
        refuse(owner, "'" + who + "': weight " + std::to_string(i) + " (" + std::to_string(pk[i]) +
                          ") is not on its grid of step " + std::to_string(s));
      if (code < -128 || code > 127)
        refuse(owner, "'" + who + "': weight codes reach " + std::to_string(code) +
                          ", outside int8 (an asymmetric weight grid; use symmetric weights)");
      pw[i] = static_cast<int8_t>(code);
    }
    Tensor bq({out_c}, DType::kS32);
    int32_t* pb = bq.data<int32_t>();
    const Tensor bf = p.bias.defined() ? p.bias.to(DType::kF32) : Tensor();
    for (int64_t c = 0; c < out_c; ++c) {
      const float bs = bias_scale(static_cast<float>(x.scale[0]), static_cast<float>(sw(c)));
      pb[c] = bf.defined() ? quantize_bias(bf.data<float>()[c], bs) : 0;
    }
    std::vector<double> scales;
    for (float s : g.scale) scales.push_back(s);
    // The weight grid's code range, q - zero_point over its channels (within int8, which the
    // codes were checked against): it tells a 4-bit or 2-bit weight from an int8 one.
    int32_t wmin = 127, wmax = -128;
    for (size_t c = 0; c < g.scale.size(); ++c) {
      const int32_t zp =
          g.zero_point.empty() ? 0 : g.zero_point[std::min(c, g.zero_point.size() - 1)];
      wmin = std::min(wmin, std::max<int32_t>(-128, g.qmin - zp));
      wmax = std::max(wmax, std::min<int32_t>(127, g.qmax - zp));
    }
    for (int64_t i = 0; i < wq.numel(); ++i)
      if (pw[i] < wmin || pw[i] > wmax)
        refuse(owner, "'" + who + "': weight code " + std::to_string(pw[i]) +
                          " lies outside its grid's codes [" + std::to_string(wmin) + ", " +
                          std::to_string(wmax) + "]");
    const int w_id = constant(who + "/kernel", std::move(wq));
    im_.tensors[w_id].scale = scales;
    im_.tensors[w_id].zero_point.assign(scales.size(), 0);
    im_.tensors[w_id].qmin = wmin;
    im_.tensors[w_id].qmax = wmax;
    const int b_id = constant(who + "/bias", std::move(bq));
    std::vector<double> bscales;
    for (int64_t c = 0; c < out_c; ++c)
      bscales.push_back(bias_scale(static_cast<float>(x.scale[0]), static_cast<float>(sw(c))));
    im_.tensors[b_id].scale = bscales;
    im_.tensors[b_id].zero_point.assign(bscales.size(), 0);

    out_t.shape = p.conv_shape.rank() ? p.conv_shape : p.out_shape;
    const IntegerTensor o = out_t;
    const int conv_out = add(std::move(out_t));
    Attrs a = p.window;
    a.set("input_scale", x.scale[0]);
    a.set("input_zero_point", static_cast<int64_t>(x.zero_point[0]));
    a.set("weight_scales", scales);
    a.set("output_scale", o.scale[0]);
    a.set("output_zero_point", static_cast<int64_t>(o.zero_point[0]));
    a.set("activation", p.activation);
    a.set("act_min", static_cast<int64_t>(o.qmin));
    a.set("act_max", static_cast<int64_t>(o.qmax));
    a.set("rounding", opt_.rounding == Rounding::kSingle ? "single" : "double");
    emit(p.op, {p.input, w_id, b_id}, conv_out, std::move(a), p.layers + "+" + fq.name(),
         p.activation + (p.activation_from.empty() ? "" : " (" + p.activation_from + ")"));
    if (p.conv_shape.rank() == 0) return {Val::kCodes, conv_out, nullptr};
    // A Conv1D: back from [?, 1, T', F] to [?, T', F].
    IntegerTensor back = o;
    back.name = fq.name();
    back.shape = p.out_shape;
    im_.tensors[conv_out].name = p.layers + "_2d";
    std::vector<int64_t> dims = p.out_shape.dims();
    dims[0] = -1;
    const int out = add(std::move(back));
    emit("reshape", {conv_out}, out, {{"shape", dims}}, p.layers + "+" + fq.name(), "");
    return {Val::kCodes, out, nullptr};
  }

  const nn::Model& model_;
  ConvertOptions opt_;
  IntegerModel im_;
  std::map<const nn::LayerNode*, std::vector<Val>> vals_;
  std::map<int, double> masking_value_;  // mask tensor -> the Masking layer's mask_value
};

}  // namespace

IntegerModel convert_to_integer(const nn::Model& qat, const ConvertOptions& options) {
  return Converter(qat, options).run();
}

}  // namespace lowbit::quant
