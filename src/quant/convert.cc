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
#include "lowbit/quant/quantizer.h"

namespace lowbit::quant {

namespace {

using nn::Json;

// A conv or dense whose output stage is not known yet.
struct Pending {
  std::string op;        // qconv2d | qfully_connected | qavg_pool2d
  std::string layers;    // the QAT layers it implements so far, joined with '+'
  std::string cls;       // the conv/dense class
  int input = -1;        // code tensor
  Tensor kernel;         // FQ(W), f32, in the integer op's layout (HWIO with groups / [K, U])
  Quantizer::Grid grid;  // of the kernel
  Tensor bias;           // f32 [out] or undefined
  Attrs window;          // qconv2d: strides, dilations, padding, groups; qavg_pool2d: ksize,
                         // strides, padding
  Shape pool_shape;      // qavg_pool2d of a global pooling: its [?, 1, 1, C] before the reshape
  std::string activation = "none";
  std::string activation_from;
  Shape out_shape;
  int materialized = -1;  // qlogistic / qtanh / qsoftmax: its output, once emitted unfused
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
};

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
      it = vals_.emplace(k.node.get(), convert(n, in)).first;
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
          (in.at(0).pending->op != "qconv2d" && in.at(0).pending->op != "qfully_connected"))
        refuse(l,
               "an activation is converted fused into the conv/dense before it; this one "
               "follows no conv/dense");
      auto p = std::make_shared<Pending>(*in.at(0).pending);
      p->activation = combine(p->activation, *a);
      p->activation_from = l.name();
      p->layers += "+" + l.name();
      return {Val{Val::kPending, -1, p}};
    }
    if (cls == "Dropout") return {in.at(0)};  // inference: the identity
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
           "no integer form for this layer class yet (convertible: Conv2D, DepthwiseConv2D, "
           "Dense with their folded batch norms, ReLU/ReLU6, Activation sigmoid/tanh/softmax, "
           "Embedding, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, Flatten, "
           "Reshape, Dropout, FakeQuant)");
  }

  Val pending(const nn::Layer& l, const nn::Layer& inner, const IntegerTensor& x, int x_tensor,
              const Tensor& kernel, const Quantizer::Grid& grid, const Tensor& bias,
              const std::string& activation, const Shape& out_shape) {
    (void)x;
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
    } else {
      refuse(l, "weighted layer class '" + p->cls +
                    "' has no integer form yet (convertible: Conv2D, DepthwiseConv2D, Dense)");
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
    if (in.kind == Val::kFloat) {
      const int out = add(t);
      emit("quantize", {in.tensor}, out,
           {{"scale", t.scale[0]}, {"zero_point", static_cast<int64_t>(t.zero_point[0])}}, l.name(),
           "");
      return {Val::kCodes, out, nullptr};
    }
    if (in.kind == Val::kCodes) {
      const IntegerTensor x = im_.tensors[in.tensor];
      const int out = add(t);
      emit("requantize", {in.tensor}, out,
           {{"input_scale", x.scale[0]},
            {"input_zero_point", static_cast<int64_t>(x.zero_point[0])},
            {"output_scale", t.scale[0]},
            {"output_zero_point", static_cast<int64_t>(t.zero_point[0])},
            {"rounding", opt_.rounding == Rounding::kSingle ? "single" : "double"}},
           l.name(), "");
      return {Val::kCodes, out, nullptr};
    }
    return finish(l, *in.pending, std::move(t));
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
    const IntegerTensor t = out_t;
    const int out = add(std::move(out_t));
    emit("requantize", {mid}, out,
         {{"input_scale", scale},
          {"input_zero_point", static_cast<int64_t>(zp)},
          {"output_scale", t.scale[0]},
          {"output_zero_point", static_cast<int64_t>(t.zero_point[0])},
          {"rounding", opt_.rounding == Rounding::kSingle ? "single" : "double"}},
         fq.name(), "");
    return {Val::kCodes, out, nullptr};
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

  // The pending conv/dense with its output grid: int8 weights, int32 bias, one op.
  Val finish(const nn::Layer& fq, const Pending& p, IntegerTensor out_t) {
    if (p.op == "qavg_pool2d") return finish_pool(fq, p, std::move(out_t));
    if (is_nonlinear(p.op)) return finish_nonlinear(fq, p, std::move(out_t));
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

    out_t.shape = p.out_shape;
    const IntegerTensor o = out_t;
    const int out = add(std::move(out_t));
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
    emit(p.op, {p.input, w_id, b_id}, out, std::move(a), p.layers + "+" + fq.name(),
         p.activation + (p.activation_from.empty() ? "" : " (" + p.activation_from + ")"));
    return {Val::kCodes, out, nullptr};
  }

  const nn::Model& model_;
  ConvertOptions opt_;
  IntegerModel im_;
  std::map<const nn::LayerNode*, std::vector<Val>> vals_;
};

}  // namespace

IntegerModel convert_to_integer(const nn::Model& qat, const ConvertOptions& options) {
  return Converter(qat, options).run();
}

}  // namespace lowbit::quant
