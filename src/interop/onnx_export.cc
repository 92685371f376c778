// nn::Model -> ONNX (include/lowbit/interop/onnx_export.h states what each layer becomes). One
// walk over the model's layer calls in topological order; each symbolic tensor becomes an ONNX
// value held channels-last, channels-first, or both (a Transpose made once, when an op needs the
// other layout).
#include "lowbit/interop/onnx_export.h"

#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <set>

#include "lowbit/error.h"
#include "lowbit/fixed_point.h"
#include "lowbit/ops/shape_ops.h"
#include "lowbit/quant/quantizer.h"

namespace lowbit::onnx {

namespace {

using nn::Json;

[[noreturn]] void refuse(const nn::Layer& l, const std::string& why) {
  LOWBIT_THROW(UnsupportedError, "onnx export: layer '", l.name(), "' (", l.class_name(),
               "): ", why);
}

// Permutations between channels-last [N, d1.., C] and channels-first [N, C, d1..] of rank r.
std::vector<int64_t> perm_to_cf(int r) {
  std::vector<int64_t> p = {0, r - 1};
  for (int i = 1; i < r - 1; ++i) p.push_back(i);
  return p;
}
std::vector<int64_t> perm_to_cl(int r) {
  std::vector<int64_t> p = {0};
  for (int i = 2; i < r; ++i) p.push_back(i);
  p.push_back(1);
  return p;
}

// out[i_perm...] = t[...]: out dim k is t's dim perm[k] (numpy.transpose), f32.
Tensor permute(const Tensor& t, const std::vector<int64_t>& perm) {
  return ops::transpose(t.to(DType::kF32), perm);
}

// A layer's weights as the export reads them: float values in lowbit's layout (for a QAT layer
// the fake-quantized ones) and, for quantized weights, their grid.
struct Weights {
  std::map<std::string, Tensor> value;
  std::map<std::string, quant::Quantizer::Grid> grid;
  Tensor get(const std::string& name) const {
    auto it = value.find(name);
    return it == value.end() ? Tensor() : it->second;
  }
};

Weights float_weights(const nn::Layer& l) {
  Weights w;
  for (const nn::Weight& x : l.weights()) w.value[x.name] = x.value;
  return w;
}

// One ONNX value for a symbolic tensor: its channels-last name, channels-first name, or both.
struct Val {
  std::string cl, cf;
  int rank = 0;
  Shape shape;  // lowbit's (channels-last) shape, batch unknown
  // The grid step of a value on an activation grid (a FakeQuant's output, possibly moved by
  // ops that keep the grid: max pooling, reshapes, padding); 0 otherwise.
  float act_scale = 0;
};

class Exporter {
 public:
  Exporter(const nn::Model& m, const ExportOptions& o) : m_(m), o_(o) {
    if (o.opset < 13)
      LOWBIT_THROW(ValueError, "onnx export: opset ", o.opset,
                   " is not supported: expected 13 or later (per-axis DequantizeLinear)");
    p_.ir_version = 8;
    p_.producer_name = o.producer_name;
    p_.opset_import.push_back({"", o.opset});
    p_.graph.name = m.name();
  }

  ModelProto run() {
    for (const nn::KTensor& k : m_.inputs()) {
      const nn::Layer& l = *k.node->layer;
      if (k.dtype() != DType::kF32)
        refuse(l, "only f32 model inputs are exported (this one is " +
                      std::string(dtype_name(k.dtype())) + ")");
      Val v;
      v.cl = unique(l.name());
      v.rank = k.shape().rank();
      v.shape = k.shape();
      p_.graph.input.push_back(value_info(v.cl, k.shape()));
      vals_[k.node.get()] = {v};
    }
    for (const nn::KTensor& k : m_.outputs()) {
      Val& v = visit(k);
      std::string name = cl(v);
      // A graph output must be produced by a node (not be a graph input).
      bool is_input = false;
      for (const ValueInfoProto& i : p_.graph.input) is_input |= i.name == name;
      if (is_input) name = emit("Identity", {name}, {}, k.node->layer->name() + "_output");
      p_.graph.output.push_back(value_info(name, k.shape()));
    }
    drop_redundant_clamps();
    return std::move(p_);
  }

 private:
  // A Relu (or Clip(0, 6)) read only by QuantizeLinear nodes whose grid starts at real 0
  // (zero point -128) and, for the Clip, ends at or below 6, changes no code: QuantizeLinear
  // saturates there anyway. Removing it is exact and lets ONNX Runtime fuse DQ -> Conv -> Q into
  // QLinearConv (it does not look through the Relu).
  void drop_redundant_clamps() {
    auto init = [&](const std::string& name) -> const TensorProto* {
      for (const TensorProto& t : p_.graph.initializer)
        if (t.name == name) return &t;
      return nullptr;
    };
    auto scalar_f32 = [&](const std::string& name, float& v) {
      const TensorProto* t = init(name);
      if (!t || t->data_type != kFloat || t->raw_data.size() != 4) return false;
      std::memcpy(&v, t->raw_data.data(), 4);
      return true;
    };
    std::vector<NodeProto>& nodes = p_.graph.node;
    for (size_t i = 0; i < nodes.size();) {
      const NodeProto& n = nodes[i];
      float lo = 0, hi = 0;
      const bool relu = n.op_type == "Relu";
      const bool clip = n.op_type == "Clip" && n.input.size() == 3 && !n.input[1].empty() &&
                        scalar_f32(n.input[1], lo) && scalar_f32(n.input[2], hi) && lo == 0;
      bool ok = relu || clip;
      std::vector<size_t> readers;
      for (size_t j = 0; ok && j < nodes.size(); ++j)
        for (size_t k = 0; ok && k < nodes[j].input.size(); ++k) {
          if (nodes[j].input[k] != n.output[0]) continue;
          const NodeProto& q = nodes[j];
          const TensorProto* zp = q.input.size() == 3 ? init(q.input[2]) : nullptr;
          float sc = 0;
          ok = q.op_type == "QuantizeLinear" && k == 0 && zp && zp->data_type == kInt8 &&
               zp->raw_data.size() == 1 && static_cast<int8_t>(zp->raw_data[0]) == -128 &&
               scalar_f32(q.input[1], sc) && (!clip || 255.0 * sc <= hi);
          readers.push_back(j);
        }
      for (const ValueInfoProto& o : p_.graph.output) ok &= o.name != n.output[0];
      if (!ok || readers.empty()) {
        ++i;
        continue;
      }
      const std::string from = n.input[0];
      for (size_t j : readers) nodes[j].input[0] = from;
      nodes.erase(nodes.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }

  ValueInfoProto value_info(const std::string& name, const Shape& s) const {
    ValueInfoProto v;
    v.name = name;
    v.elem_type = kFloat;
    v.has_shape = true;
    for (int i = 0; i < s.rank(); ++i) {
      Dimension d;
      if (i == 0 || s[i] < 0)
        d.dim_param = i == 0 ? o_.batch_dim : "d" + std::to_string(i);
      else
        d.dim_value = s[i];
      v.dims.push_back(d);
    }
    return v;
  }

  std::string unique(const std::string& base) {
    std::string n = base;
    for (int i = 1; !names_.insert(n).second; ++i) n = base + "_" + std::to_string(i);
    return n;
  }

  // Adds a node; returns its (first) output's name, made unique from `out`.
  std::string emit(const std::string& op, std::vector<std::string> in,
                   std::vector<AttributeProto> attrs, const std::string& out) {
    NodeProto n;
    n.op_type = op;
    n.input = std::move(in);
    n.output = {unique(out)};
    n.name = n.output[0];
    n.attribute = std::move(attrs);
    p_.graph.node.push_back(std::move(n));
    return p_.graph.node.back().output[0];
  }

  std::string constant(const std::string& name, const Tensor& t) {
    p_.graph.initializer.push_back(from_tensor(unique(name), t));
    return p_.graph.initializer.back().name;
  }
  std::string ints(const std::string& name, const std::vector<int64_t>& v) {
    return constant(name, Tensor::from_vector<int64_t>(v, {static_cast<int64_t>(v.size())}));
  }
  std::string scalar(const std::string& name, float v) {
    return constant(name, Tensor::from_vector<float>({v}, {}));
  }

  // A weight in the ONNX layout `t` (f32): a float initializer, or, when quantized, its int8
  // codes and a DequantizeLinear on `axis` (per channel) or per tensor.
  std::string weight(const Weights& w, const std::string& key, const Tensor& t, int axis,
                     const std::string& base) {
    auto g = w.grid.find(key);
    if (g == w.grid.end()) return constant(base, t);
    const quant::Quantizer::Grid& grid = g->second;
    const int64_t nch = static_cast<int64_t>(grid.scale.size());
    if (nch != 1 && nch != t.dim(axis))
      LOWBIT_THROW(UnsupportedError, "onnx export: weight '", base, "': ", nch,
                   " per-channel scales for ", t.dim(axis), " output channels");
    // Codes moved into int8 (the same reals): a symmetric grid (TF's narrow weight grids are
    // [1, 2^b - 1] around 2^(b-1)) by its zero point, so that it is centred on 0 as ONNX
    // Runtime's int8 weight kernels expect; any other uint8 grid by 128.
    bool same_zp = true;
    for (int32_t z : grid.zero_point) same_zp &= z == grid.zero_point[0];
    const int32_t zp0 = grid.zero_point[0];
    const int32_t shift = same_zp && zp0 - grid.qmin == grid.qmax - zp0 ? zp0
                          : grid.qmin >= 0 && grid.qmax > 127           ? 128
                                                                        : 0;
    if (grid.qmin - shift < -128 || grid.qmax - shift > 127)
      LOWBIT_THROW(UnsupportedError, "onnx export: weight '", base, "': code range [", grid.qmin,
                   ", ", grid.qmax, "] does not fit int8");
    int64_t inner = 1;
    for (int i = axis + 1; i < t.rank(); ++i) inner *= t.dim(i);
    Tensor codes(t.shape(), DType::kS8);
    const float* x = t.data<float>();
    int8_t* c = codes.data<int8_t>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      const int64_t ch = nch == 1 ? 0 : (i / inner) % nch;
      const double q = std::nearbyint(x[i] / grid.scale[ch]) + grid.zero_point[ch];
      c[i] = static_cast<int8_t>(std::clamp<double>(q, grid.qmin, grid.qmax) - shift);
    }
    std::vector<int8_t> zp;
    for (int32_t z : grid.zero_point) zp.push_back(static_cast<int8_t>(z - shift));
    const Shape qs = nch == 1 ? Shape{} : Shape{nch};
    const std::string q = constant(base + "_quantized", codes);
    const std::string s = constant(base + "_scale", Tensor::from_vector<float>(grid.scale, qs));
    const std::string z = constant(base + "_zero_point", Tensor::from_vector<int8_t>(zp, qs));
    std::vector<AttributeProto> a;
    if (nch != 1) a.push_back(attr_int("axis", axis));
    return emit("DequantizeLinear", {q, s, z}, std::move(a), base + "_dequantized");
  }

  // A bias [C]: when the layer's weight `kernel` is quantized and its input x on an activation
  // grid, int32 codes at scale s_x * s_w[c] (quant::quantize_bias, as lowbit's integer runtime
  // stores it and ONNX Runtime's static quantizer writes it: what lets ORT fuse the QDQ group
  // into QLinearConv / QGemm), else a float initializer. "" without a bias.
  std::string bias(const Weights& w, const std::string& kernel, const Val& x,
                   const std::string& base) {
    const Tensor b = w.get("bias");
    if (!b.defined()) return "";
    const Tensor bf = b.to(DType::kF32).clone();
    auto g = w.grid.find(kernel);
    if (g == w.grid.end() || x.act_scale <= 0) return constant(base, bf);
    const std::vector<float>& sw = g->second.scale;
    const int64_t n = bf.numel();
    if (sw.size() != 1 && static_cast<int64_t>(sw.size()) != n) return constant(base, bf);
    std::vector<float> scales;
    Tensor codes({n}, DType::kS32);
    for (int64_t c = 0; c < n; ++c) {
      const float bs = quant::bias_scale(x.act_scale, sw[sw.size() == 1 ? 0 : c]);
      if (c < static_cast<int64_t>(sw.size())) scales.push_back(bs);
      codes.data<int32_t>()[c] = quant::quantize_bias(bf.data<float>()[c], bs);
    }
    const Shape qs = scales.size() == 1 ? Shape{} : Shape{static_cast<int64_t>(scales.size())};
    const std::string q = constant(base + "_quantized", codes);
    const std::string sc = constant(base + "_scale", Tensor::from_vector<float>(scales, qs));
    const std::string z =
        constant(base + "_zero_point",
                 Tensor::from_vector<int32_t>(std::vector<int32_t>(scales.size(), 0), qs));
    std::vector<AttributeProto> a;
    if (scales.size() != 1) a.push_back(attr_int("axis", 0));
    return emit("DequantizeLinear", {q, sc, z}, std::move(a), base + "_dequantized");
  }

  // The value in a layout, with the Transpose made once.
  std::string cl(Val& v) {
    if (v.cl.empty())
      v.cl = emit("Transpose", {v.cf}, {attr_ints("perm", perm_to_cl(v.rank))}, v.cf + "_nhwc");
    return v.cl;
  }
  std::string cf(Val& v) {
    if (v.rank <= 2) return cl(v);
    if (v.cf.empty())
      v.cf = emit("Transpose", {v.cl}, {attr_ints("perm", perm_to_cf(v.rank))}, v.cl + "_nchw");
    return v.cf;
  }
  // For elementwise ops: the layout the value already has (channels-first preferred).
  static bool prefers_cf(const Val& v) { return v.rank > 2 && !v.cf.empty(); }
  Val like(const Val& v, const std::string& name, bool in_cf) const {
    Val o;
    o.rank = v.rank;
    o.shape = v.shape;
    (in_cf ? o.cf : o.cl) = name;
    return o;
  }
  // An elementwise unary op on v in its layout.
  Val unary(Val& v, const std::string& op, std::vector<AttributeProto> attrs,
            const std::string& out, std::vector<std::string> extra = {}) {
    const bool c = prefers_cf(v);
    std::vector<std::string> in = {c ? cf(v) : cl(v)};
    in.insert(in.end(), extra.begin(), extra.end());
    return like(v, emit(op, in, std::move(attrs), out), c);
  }

  Val& visit(const nn::KTensor& k) {
    auto it = vals_.find(k.node.get());
    if (it == vals_.end()) {
      const nn::LayerNode& n = *k.node;
      std::vector<Val*> in;
      for (const nn::KTensor& i : n.inputs) in.push_back(&visit(i));
      for (const nn::KTensor& mk : n.masks)
        if (mk.defined()) refuse(*n.layer, "timestep masks are not exported");
      for (const nn::KTensor& i : n.inputs)
        if (i.has_mask()) refuse(*n.layer, "timestep masks are not exported");
      std::vector<Val> out = layer(n, *n.layer, float_weights(*n.layer), in);
      it = vals_.emplace(k.node.get(), std::move(out)).first;
    }
    return it->second.at(k.index);
  }

  Val activation(const nn::Layer& l, const std::string& act, Val v, const std::string& out) {
    if (act == "linear") return v;
    if (act == "relu") return unary(v, "Relu", {}, out);
    if (act == "relu6")
      return unary(v, "Clip", {}, out, {scalar(out + "_min", 0), scalar(out + "_max", 6)});
    if (act == "sigmoid") return unary(v, "Sigmoid", {}, out);
    if (act == "tanh") return unary(v, "Tanh", {}, out);
    if (act == "elu") return unary(v, "Elu", {attr_float("alpha", 1.0f)}, out);
    if (act == "selu") return unary(v, "Selu", {}, out);
    if (act == "softplus") return unary(v, "Softplus", {}, out);
    if (act == "softsign") return unary(v, "Softsign", {}, out);
    if (act == "exponential") return unary(v, "Exp", {}, out);
    if (act == "leaky_relu") return unary(v, "LeakyRelu", {attr_float("alpha", 0.2f)}, out);
    // Keras 3: relu6(x + 3) / 6.
    if (act == "hard_sigmoid")
      return unary(v, "HardSigmoid", {attr_float("alpha", 1.0f / 6), attr_float("beta", 0.5f)},
                   out);
    if (act == "swish" || act == "silu") {
      const bool c = prefers_cf(v);
      const std::string x = c ? cf(v) : cl(v);
      const std::string s = emit("Sigmoid", {x}, {}, out + "_sigmoid");
      return like(v, emit("Mul", {x, s}, {}, out), c);
    }
    if (act == "softmax" || act == "log_softmax")
      return like(
          v,
          emit(act == "softmax" ? "Softmax" : "LogSoftmax", {cl(v)}, {attr_int("axis", -1)}, out),
          false);
    refuse(l, "activation '" + act + "' has no ONNX export here");
  }

  // Explicit pads [begins..., ends...] of a window op (TensorFlow arithmetic).
  static std::vector<int64_t> pads(const nn::Layer& l, const Shape& in, const std::string& padding,
                                   const std::vector<int64_t>& k, const std::vector<int64_t>& s,
                                   const std::vector<int64_t>& d) {
    const size_t sp = k.size();
    std::vector<int64_t> b(sp, 0), e(sp, 0);
    for (size_t i = 0; i < sp; ++i) {
      const int64_t keff = (k[i] - 1) * d[i] + 1;
      if (padding == "same") {
        const int64_t size = in[static_cast<int>(i) + 1];
        if (size < 0) refuse(l, "'same' padding needs known spatial sizes");
        const int64_t out = (size + s[i] - 1) / s[i];
        const int64_t total = std::max<int64_t>((out - 1) * s[i] + keff - size, 0);
        b[i] = total / 2;
        e[i] = total - b[i];
      } else if (padding == "causal") {
        b[i] = keff - 1;
      } else if (padding != "valid") {
        refuse(l, "padding '" + padding + "'");
      }
    }
    b.insert(b.end(), e.begin(), e.end());
    return b;
  }
  static std::vector<int64_t> spatial(const Json& c, const char* key, size_t n) {
    std::vector<int64_t> v = c.at(key).get<std::vector<int64_t>>();
    if (v.size() == 1 && n > 1) v.assign(n, v[0]);
    return v;
  }

  std::string conv(const nn::Layer& l, Val& x, const std::string& w, const std::string& b,
                   const Json& c, const std::vector<int64_t>& k, int64_t group,
                   const std::string& out, bool window = true) {
    const size_t sp = k.size();
    const std::vector<int64_t> s = window ? spatial(c, "strides", sp) : std::vector<int64_t>(sp, 1);
    const std::vector<int64_t> d =
        window ? spatial(c, "dilation_rate", sp) : std::vector<int64_t>(sp, 1);
    const std::vector<int64_t> p = window ? pads(l, x.shape, c.value("padding", "valid"), k, s, d)
                                          : std::vector<int64_t>(2 * sp, 0);
    std::vector<std::string> in = {cf(x), w};
    if (!b.empty()) in.push_back(b);
    return emit("Conv", in,
                {attr_ints("kernel_shape", k), attr_ints("strides", s), attr_ints("dilations", d),
                 attr_ints("pads", p), attr_int("group", group)},
                out);
  }

  Val cf_val(const Shape& shape, const std::string& name) const {
    Val v;
    v.rank = shape.rank();
    v.shape = shape;
    (v.rank > 2 ? v.cf : v.cl) = name;
    return v;
  }

  std::vector<Val> layer(const nn::LayerNode& n, const nn::Layer& l, const Weights& w,
                         const std::vector<Val*>& in) {
    const std::string cls = l.class_name();
    const Json c = l.get_config();
    const Shape out_shape = n.outputs.at(0).shape;
    const std::string name = l.name();
    const std::string act = c.contains("activation") && c.at("activation").is_string()
                                ? c.at("activation").get<std::string>()
                                : "linear";
    const std::string pre = act == "linear" ? name : name + "_preact";
    auto one = [&](const Val& v) { return std::vector<Val>{v}; };

    if (cls == "FakeQuant")
      return one(fake_quant(static_cast<const quant::FakeQuantLayer&>(l), *in.at(0)));
    if (cls == "QuantizeWrapper") {
      const auto& q = static_cast<const quant::QuantizeWrapperLayer&>(l);
      const nn::Layer& inner = *q.layer();
      Weights qw = float_weights(inner);
      for (const auto& [k, t] : q.effective_weights()) qw.value[k] = t;
      for (const auto& [k, qz] : q.quantizers()) qw.grid[k] = qz.grid(q);
      return layer(n, inner, qw, in);
    }
    if (cls == "FoldedConvBatchNorm") {
      const auto& f = static_cast<const quant::FoldedConvBatchNormLayer&>(l);
      Weights fw = float_weights(*f.conv());
      fw.value[f.kernel_name()] = f.effective_kernel();
      fw.value["bias"] = f.folded_bias();
      fw.grid[f.kernel_name()] = f.quantizer().grid(f);
      return layer(n, *f.conv(), fw, in);
    }
    if (cls == "Dense") {
      Val& x = *in.at(0);
      const Tensor kernel = w.get("kernel").to(DType::kF32);
      const std::string kn = weight(w, "kernel", kernel, 1, name + "_kernel");
      const std::string bn = bias(w, "kernel", x, name + "_bias");
      Val y;
      if (x.rank == 2) {
        std::vector<std::string> args = {cl(x), kn};
        if (!bn.empty()) args.push_back(bn);
        y = like(x, emit("Gemm", args, {}, pre), false);
      } else {
        std::string mm = emit("MatMul", {cl(x), kn}, {}, !bn.empty() ? name + "_matmul" : pre);
        if (!bn.empty()) mm = emit("Add", {mm, bn}, {}, pre);
        y = like(x, mm, false);
      }
      y.shape = out_shape;
      return one(activation(l, act, y, name));
    }
    if (cls == "Conv1D" || cls == "Conv2D") {
      const Tensor k = w.get("kernel").to(DType::kF32);  // [k..., Cin/g, F]
      const int r = k.rank();
      std::vector<int64_t> perm = {r - 1, r - 2};
      std::vector<int64_t> ks;
      for (int i = 0; i < r - 2; ++i) perm.push_back(i), ks.push_back(k.dim(i));
      const std::string kn = weight(w, "kernel", permute(k, perm), 0, name + "_kernel");
      const std::string bn = bias(w, "kernel", *in.at(0), name + "_bias");
      const Val y =
          cf_val(out_shape, conv(l, *in.at(0), kn, bn, c, ks, c.value("groups", int64_t{1}), pre));
      return one(activation(l, act, y, name));
    }
    if (cls == "DepthwiseConv2D" || cls == "SeparableConv2D") {
      const Tensor k = w.get("depthwise_kernel").to(DType::kF32);  // [kh, kw, C, M]
      const int64_t ch = k.dim(2), mult = k.dim(3);
      const Tensor kw = permute(k.reshape({k.dim(0), k.dim(1), 1, ch * mult}), {3, 2, 0, 1});
      const std::string kn = weight(w, "depthwise_kernel", kw, 0, name + "_depthwise_kernel");
      const std::string bn = cls == "DepthwiseConv2D"
                                 ? bias(w, "depthwise_kernel", *in.at(0), name + "_bias")
                                 : bias(w, "", Val{}, name + "_bias");
      const std::vector<int64_t> ks = {k.dim(0), k.dim(1)};
      std::string y;
      if (cls == "DepthwiseConv2D") {
        y = conv(l, *in.at(0), kn, bn, c, ks, ch, pre);
      } else {
        Val dw = cf_val(out_shape, conv(l, *in.at(0), kn, "", c, ks, ch, name + "_depthwise"));
        const Tensor pk = w.get("pointwise_kernel").to(DType::kF32);  // [1, 1, C*M, F]
        const std::string pn =
            weight(w, "pointwise_kernel", permute(pk, {3, 2, 0, 1}), 0, name + "_pointwise_kernel");
        y = conv(l, dw, pn, bn, c, {1, 1}, 1, pre, false);
      }
      return one(activation(l, act, cf_val(out_shape, y), name));
    }
    if (cls == "BatchNormalization") {
      Val& x = *in.at(0);
      const int axis = c.value("axis", -1);
      if (axis != -1 && axis != x.rank - 1) refuse(l, "only the channel (last) axis is exported");
      auto f = [&](const char* k) { return constant(name + "_" + k, w.get(k).to(DType::kF32)); };
      const std::string y =
          emit("BatchNormalization",
               {cf(x), f("gamma"), f("beta"), f("moving_mean"), f("moving_variance")},
               {attr_float("epsilon", static_cast<float>(c.value("epsilon", 1e-3)))}, name);
      return one(cf_val(out_shape, y));
    }
    if (cls == "Activation") return one(activation(l, act, *in.at(0), name));
    if (cls == "ReLU") {
      if (c.value("threshold", 0.0) != 0.0) refuse(l, "a nonzero threshold has no ONNX export");
      const double slope = c.value("negative_slope", 0.0);
      const bool cap = c.contains("max_value") && !c.at("max_value").is_null();
      Val y = slope != 0.0
                  ? unary(*in.at(0), "LeakyRelu", {attr_float("alpha", static_cast<float>(slope))},
                          cap ? name + "_leaky" : name)
                  : (cap ? *in.at(0) : unary(*in.at(0), "Relu", {}, name));
      if (cap) {
        const float mx = static_cast<float>(c.at("max_value").get<double>());
        y = slope != 0.0
                ? unary(y, "Clip", {}, name, {"", scalar(name + "_max", mx)})
                : unary(y, "Clip", {}, name, {scalar(name + "_min", 0), scalar(name + "_max", mx)});
      }
      return one(y);
    }
    if (cls == "Dropout") return one(*in.at(0));
    if (cls == "MaxPooling1D" || cls == "MaxPooling2D" || cls == "AveragePooling1D" ||
        cls == "AveragePooling2D") {
      Val& x = *in.at(0);
      const size_t sp = static_cast<size_t>(x.rank - 2);
      const std::vector<int64_t> k = spatial(c, "pool_size", sp);
      std::vector<int64_t> s = c.at("strides").get<std::vector<int64_t>>();
      if (s.empty()) s = k;
      if (s.size() == 1 && sp > 1) s.assign(sp, s[0]);
      const std::vector<int64_t> p =
          pads(l, x.shape, c.value("padding", "valid"), k, s, std::vector<int64_t>(sp, 1));
      const bool mx = cls.rfind("Max", 0) == 0;
      Val y =
          cf_val(out_shape,
                 emit(mx ? "MaxPool" : "AveragePool", {cf(x)},
                      {attr_ints("kernel_shape", k), attr_ints("strides", s), attr_ints("pads", p)},
                      name));
      if (mx) y.act_scale = x.act_scale;
      return one(y);
    }
    if (cls == "GlobalAveragePooling1D" || cls == "GlobalAveragePooling2D" ||
        cls == "GlobalMaxPooling1D" || cls == "GlobalMaxPooling2D") {
      Val& x = *in.at(0);
      const bool mx = cls.find("Max") != std::string::npos;
      const bool keep = c.value("keepdims", false);
      const std::string g = emit(mx ? "GlobalMaxPool" : "GlobalAveragePool", {cf(x)}, {},
                                 keep ? name : name + "_keepdims");
      if (keep) return one(cf_val(out_shape, g));
      return one(cf_val(out_shape, emit("Flatten", {g}, {attr_int("axis", 1)}, name)));
    }
    if (cls == "Flatten") {
      Val y = like(*in.at(0), emit("Flatten", {cl(*in.at(0))}, {attr_int("axis", 1)}, name), false);
      y.rank = out_shape.rank();
      y.shape = out_shape;
      y.act_scale = in.at(0)->act_scale;
      return one(y);
    }
    if (cls == "Reshape") {
      std::vector<int64_t> target = {0};
      for (int i = 1; i < out_shape.rank(); ++i) {
        if (out_shape[i] < 0) refuse(l, "the target shape is not known");
        target.push_back(out_shape[i]);
      }
      Val y;
      y.rank = out_shape.rank();
      y.shape = out_shape;
      y.cl = emit("Reshape", {cl(*in.at(0)), ints(name + "_shape", target)}, {}, name);
      y.act_scale = in.at(0)->act_scale;
      return one(y);
    }
    if (cls == "ZeroPadding2D") {
      const auto pd = c.at("padding").get<std::vector<std::vector<int64_t>>>();  // [[t,b],[l,r]]
      const std::string pn =
          ints(name + "_pads", {0, 0, pd[0][0], pd[1][0], 0, 0, pd[0][1], pd[1][1]});
      Val y = cf_val(out_shape, emit("Pad", {cf(*in.at(0)), pn}, {}, name));
      y.act_scale = in.at(0)->act_scale;  // zeros lie on every grid (integer zero points)
      return one(y);
    }
    if (cls == "Add" || cls == "Multiply") {
      for (const Val* v : in)
        if (v->rank != in[0]->rank) refuse(l, "inputs of different ranks are not exported");
      const bool cfl = prefers_cf(*in[0]);
      std::string acc = cfl ? cf(*in[0]) : cl(*in[0]);
      for (size_t i = 1; i < in.size(); ++i)
        acc = emit(cls == "Add" ? "Add" : "Mul", {acc, cfl ? cf(*in[i]) : cl(*in[i])}, {},
                   i + 1 == in.size() ? name : name + "_partial");
      Val y = like(*in[0], acc, cfl);
      y.shape = out_shape;
      return one(y);
    }
    if (cls == "Concatenate") {
      const int r = in[0]->rank;
      int axis = c.value("axis", -1);
      if (axis < 0) axis += r;
      bool cfl = r > 2;
      for (const Val* v : in) cfl &= prefers_cf(*v);
      std::vector<std::string> args;
      for (Val* v : in) args.push_back(cfl ? cf(*v) : cl(*v));
      const int64_t a = !cfl ? axis : axis == 0 ? 0 : axis == r - 1 ? 1 : axis + 1;
      Val y = like(*in[0], emit("Concat", args, {attr_int("axis", a)}, name), cfl);
      y.shape = out_shape;
      return one(y);
    }
    if (cls == "LSTM" || cls == "GRU" || cls == "SimpleRNN") return recurrent(n, l, w, in);
    if (cls == "Bidirectional" || cls.rfind("Quantized", 0) == 0)
      refuse(l, "this recurrent layer is not exported yet (float LSTM, GRU and SimpleRNN are)");
    if (cls == "Functional") refuse(l, "nested models are not exported: flatten the model first");
    refuse(l, "no ONNX export for this layer class");
  }

  // LSTM, GRU, SimpleRNN -> ONNX LSTM, GRU, RNN (one direction, sequence-major: the input is
  // transposed to [T, B, D] and back). Keras' kernel [D, G*U] becomes W [1, G*U, D] with the gate
  // blocks reordered: LSTM Keras i, f, c, o -> ONNX i, o, f, c; GRU z, r, h is ONNX's order
  // (reset_after = linear_before_reset). B = [input bias, recurrent bias] ([2, 3U] for a
  // reset_after GRU, else [bias, 0]).
  std::vector<Val> recurrent(const nn::LayerNode& n, const nn::Layer& l, const Weights& w,
                             const std::vector<Val*>& in) {
    const std::string cls = l.class_name();
    const Json c = l.get_config();
    const std::string name = l.name();
    if (in.size() != 1) refuse(l, "initial states (extra inputs) are not exported");
    // go_backwards = ONNX's "reverse" direction, whose Y is in input order while Keras returns
    // the steps in processing order: only the last output and the states are exported.
    const bool backwards = c.value("go_backwards", false);
    if (backwards && c.value("return_sequences", false))
      refuse(l, "go_backwards with return_sequences is not exported (only the last output)");
    const bool lstm = cls == "LSTM", gru = cls == "GRU";
    const int64_t G = lstm ? 4 : gru ? 3 : 1;
    const std::vector<int64_t> block = lstm  ? std::vector<int64_t>{0, 3, 1, 2}
                                       : gru ? std::vector<int64_t>{0, 1, 2}
                                             : std::vector<int64_t>{0};
    auto onnx_act = [&](const std::string& a) -> std::string {
      if (a == "sigmoid") return "Sigmoid";
      if (a == "tanh") return "Tanh";
      if (a == "relu") return "Relu";
      refuse(l,
             "activation '" + a + "' is not exported for recurrent layers (sigmoid, tanh, relu)");
    };
    const std::string act = onnx_act(c.value("activation", "tanh"));
    const std::string ract =
        lstm || gru ? onnx_act(c.value("recurrent_activation", "sigmoid")) : "";
    const Tensor k = w.get("kernel").to(DType::kF32),
                 rk = w.get("recurrent_kernel").to(DType::kF32);
    const int64_t D = k.dim(0), U = rk.dim(0);
    // [rows, G*U] (Keras) -> [1, G*U, rows] with ONNX's gate order.
    auto gates = [&](const Tensor& t, int64_t rows) {
      Tensor o({1, G * U, rows}, DType::kF32);
      const float* src = t.data<float>();
      float* dst = o.data<float>();
      for (int64_t g = 0; g < G; ++g)
        for (int64_t u = 0; u < U; ++u)
          for (int64_t r = 0; r < rows; ++r)
            dst[(g * U + u) * rows + r] = src[r * G * U + block[g] * U + u];
      return o;
    };
    const std::string wn = constant(name + "_W", gates(k, D));
    const std::string rn = constant(name + "_R", gates(rk, U));
    std::vector<std::string> args = {"", wn, rn};
    const Tensor b = w.get("bias");
    if (b.defined()) {
      const Tensor bf = b.to(DType::kF32).clone();
      Tensor bo = Tensor::zeros({1, 2 * G * U}, DType::kF32);
      const bool two = bf.numel() == 2 * G * U;  // GRU reset_after: [input; recurrent]
      for (int half = 0; half < (two ? 2 : 1); ++half)
        for (int64_t g = 0; g < G; ++g)
          for (int64_t u = 0; u < U; ++u)
            bo.data<float>()[half * G * U + g * U + u] =
                bf.data<float>()[half * G * U + block[g] * U + u];
      args.push_back(constant(name + "_B", bo));
    }
    args[0] =
        emit("Transpose", {cl(*in.at(0))}, {attr_ints("perm", {1, 0, 2})}, name + "_time_major");
    std::vector<AttributeProto> attrs = {attr_int("hidden_size", U)};
    const bool default_acts = act == "Tanh" && (ract.empty() || ract == "Sigmoid");
    if (!default_acts) {
      AttributeProto a;
      a.name = "activations";
      a.type = kAttrStrings;
      a.strings = lstm  ? std::vector<std::string>{ract, act, act}
                  : gru ? std::vector<std::string>{ract, act}
                        : std::vector<std::string>{act};
      attrs.push_back(a);
    }
    if (gru) attrs.push_back(attr_int("linear_before_reset", c.value("reset_after", true) ? 1 : 0));
    if (backwards) {
      AttributeProto d;
      d.name = "direction";
      d.type = kAttrString;
      d.s = "reverse";
      attrs.push_back(d);
    }
    NodeProto node;
    node.op_type = lstm ? "LSTM" : gru ? "GRU" : "RNN";
    node.input = args;
    node.output = {unique(name + "_Y"), unique(name + "_Y_h")};
    if (lstm) node.output.push_back(unique(name + "_Y_c"));
    node.name = unique(name);
    node.attribute = attrs;
    p_.graph.node.push_back(node);
    const std::string axes0 = ints(name + "_axes0", {0}), axes1 = ints(name + "_axes1", {1});
    auto out_val = [&](const std::string& v, int index) {
      Val o;
      o.shape = n.outputs.at(index).shape;
      o.rank = o.shape.rank();
      o.cl = v;
      return o;
    };
    std::vector<Val> outs;
    if (c.value("return_sequences", false)) {
      const std::string y = emit("Squeeze", {node.output[0], axes1}, {}, name + "_Y_squeezed");
      outs.push_back(out_val(emit("Transpose", {y}, {attr_ints("perm", {1, 0, 2})}, name), 0));
    } else {
      outs.push_back(out_val(emit("Squeeze", {node.output[1], axes0}, {}, name), 0));
    }
    if (c.value("return_state", false)) {
      outs.push_back(out_val(emit("Squeeze", {node.output[1], axes0}, {}, name + "_h"), 1));
      if (lstm)
        outs.push_back(out_val(emit("Squeeze", {node.output[2], axes0}, {}, name + "_c"), 2));
    }
    return outs;
  }

  Val fake_quant(const quant::FakeQuantLayer& l, Val& x) {
    if (l.awaiting_calibration())
      refuse(l, "its range is not calibrated yet (train or calibrate the QAT model first)");
    const quant::Quantizer::Grid g = l.quantizer().grid(l);
    if (g.scale.size() != 1) refuse(l, "per-channel activation quantizers are not exported");
    const int32_t shift = g.qmin >= 0 && g.qmax > 127 ? 128 : 0;
    const int32_t lo = g.qmin - shift, hi = g.qmax - shift, zp = g.zero_point[0] - shift;
    if (lo < -128 || hi > 127) refuse(l, "its code range does not fit int8");
    const std::string name = l.name();
    const bool c = prefers_cf(x);
    std::string v = c ? cf(x) : cl(x);
    const float s = g.scale[0];
    if (lo != -128 || hi != 127)  // a narrower grid: QuantizeLinear saturates only to int8
      v = emit("Clip",
               {v, scalar(name + "_clip_min", static_cast<float>((lo - zp) * double{s})),
                scalar(name + "_clip_max", static_cast<float>((hi - zp) * double{s}))},
               {}, name + "_clip");
    const std::string sn = scalar(name + "_scale", s);
    const std::string zn =
        constant(name + "_zero_point", Tensor::from_vector<int8_t>({static_cast<int8_t>(zp)}, {}));
    const std::string q = emit("QuantizeLinear", {v, sn, zn}, {}, name + "_quantized");
    Val y = like(x, emit("DequantizeLinear", {q, sn, zn}, {}, name), c);
    y.act_scale = s;
    return y;
  }

  const nn::Model& m_;
  ExportOptions o_;
  ModelProto p_;
  std::set<std::string> names_;
  std::map<const nn::LayerNode*, std::vector<Val>> vals_;
};

}  // namespace

ModelProto to_onnx(const nn::Model& m, const ExportOptions& options) {
  return Exporter(m, options).run();
}

void export_onnx(const nn::Model& m, const std::string& path, const ExportOptions& options) {
  write_model(path, to_onnx(m, options));
}

}  // namespace lowbit::onnx
