// ONNX QDQ int8 -> quant::IntegerModel (include/lowbit/interop/onnx_integer.h).
//
// One pass over the nodes (ONNX requires topological order). Every ONNX value is one of: a
// folded constant; the f32 graph input; the codes of an IntegerModel tensor; the dequantized
// codes of a tensor (DequantizeLinear of codes); a dequantized constant (weights, biases); or a
// pending float op on dequantized inputs, which the QuantizeLinear after it turns into one
// integer op on its grid. Rank-4 values carry whether ONNX sees them NCHW (the IntegerModel's
// tensors are NHWC).
#include <algorithm>
#include <cmath>
#include <map>
#include <optional>

#include "interop/onnx_integer_common.h"
#include "lowbit/error.h"
#include "lowbit/fixed_point.h"
#include "lowbit/interop/onnx_integer.h"

namespace lowbit::onnx {

using quant::bias_scale;
using quant::IntegerModel;
using quant::IntegerOp;
using quant::IntegerTensor;

namespace {

struct DqConst {  // DequantizeLinear of a constant
  Tensor codes;
  std::vector<float> scale;
  std::vector<int64_t> zero_point;
  int64_t axis = 1;
};

struct Pending {  // a float op on dequantized codes, waiting for its QuantizeLinear
  std::string kind;
  std::vector<int> in;  // code tensors read
  Attrs attrs;
  Tensor w, b;  // conv/dense: lowbit layout weights, s32 bias codes (undefined: none)
  std::vector<double> w_scales;
  Shape shape;  // the output's lowbit (NHWC) shape
  bool nchw = false;
  bool relu = false;
  bool has_bias = false;
  std::optional<float> clip_min, clip_max;
  std::string layer;
};

struct Val {
  enum Kind { kNone, kConst, kInput, kCodes, kDq, kDqConst, kPending } kind = kNone;
  Tensor constant;  // kConst
  int tensor = -1;  // kInput, kCodes, kDq
  int index = -1;   // kDqConst, kPending
  bool nchw = false;
};

class Importer {
 public:
  Importer(const ModelProto& m, const std::string& name) : m_(m), name_(name) {}

  IntegerModel run() {
    opset_ = default_opset(m_);
    if (opset_ < 10)
      LOWBIT_THROW(UnsupportedError, name_, ": default-domain opset ", opset_,
                   " has no QuantizeLinear/DequantizeLinear (opset 10 or later is needed)");
    for (const auto& kv : m_.metadata_props)
      if (kv.key == "lowbit.rounding" && kv.value == "single") rounding_ = "single";
    const GraphProto& g = m_.graph;
    for (const TensorProto& t : g.initializer) vals_[t.name] = constant(to_tensor(t));
    if (g.output.size() != 1 || g.input.empty())
      LOWBIT_THROW(UnsupportedError, name_, ": expected one graph output and an input, found ",
                   g.input.size(), " inputs and ", g.output.size(), " outputs");
    int inputs = 0;
    for (const ValueInfoProto& v : g.input) {
      if (vals_.count(v.name)) continue;  // an initializer listed as input (IR < 4)
      if (++inputs > 1)
        LOWBIT_THROW(UnsupportedError, name_, ": graph input '", v.name,
                     "': only models with one input are imported");
      add_input(v);
    }
    for (const NodeProto& n : g.node) node(n);
    const std::string& out = g.output[0].name;
    const Val& v = get(out, "graph output");
    if (v.kind != Val::kDq)
      LOWBIT_THROW(UnsupportedError, name_, ": graph output '", out,
                   "' is not the DequantizeLinear of quantized codes (the IntegerModel's output is "
                   "its dequantized last tensor)");
    const IntegerTensor t = im_.tensors.at(v.tensor);
    IntegerTensor o;
    o.name = out;
    o.dtype = DType::kF32;
    o.shape = t.shape;
    o.scale.clear();
    o.zero_point.clear();
    im_.output = add(std::move(o));
    emit("dequantize", {v.tensor}, im_.output,
         {{"scale", t.scale[0]}, {"zero_point", static_cast<int64_t>(t.zero_point[0])}}, out);
    im_.name = m_.graph.name.empty() ? "onnx_qdq" : m_.graph.name;
    return std::move(im_);
  }

 private:
  [[noreturn]] void refuse(const NodeProto& n, const std::string& why) const {
    LOWBIT_THROW(UnsupportedError, name_, ": node '", n.name, "' (", n.op_type,
                 n.domain.empty() ? "" : ", domain " + n.domain, ", opset ", opset_, "): ", why);
  }

  static Val constant(Tensor t) {
    Val v;
    v.kind = Val::kConst;
    v.constant = std::move(t);
    return v;
  }

  const Val& get(const std::string& name, const std::string& who) const {
    auto it = vals_.find(name);
    if (it == vals_.end())
      LOWBIT_THROW(UnsupportedError, name_, ": ", who, " reads '", name,
                   "', which no node before it computes");
    return it->second;
  }
  const Val& in(const NodeProto& n, size_t k) const {
    if (k >= n.input.size() || n.input[k].empty())
      refuse(n, "input " + std::to_string(k) + " is missing");
    return get(n.input[k], "node '" + n.name + "'");
  }
  bool has_in(const NodeProto& n, size_t k) const {
    return k < n.input.size() && !n.input[k].empty();
  }

  const AttributeProto* attr(const NodeProto& n, const std::string& k) const {
    for (const AttributeProto& a : n.attribute)
      if (a.name == k) return &a;
    return nullptr;
  }
  int64_t attr_i(const NodeProto& n, const std::string& k, int64_t dflt) const {
    const AttributeProto* a = attr(n, k);
    return a ? a->i : dflt;
  }
  std::vector<int64_t> attr_ints(const NodeProto& n, const std::string& k,
                                 std::vector<int64_t> dflt) const {
    const AttributeProto* a = attr(n, k);
    return a ? a->ints : dflt;
  }
  // Refuses any attribute of n not in `known`.
  void only_attrs(const NodeProto& n, std::initializer_list<const char*> known) const {
    for (const AttributeProto& a : n.attribute) {
      bool ok = false;
      for (const char* k : known) ok = ok || a.name == k;
      if (!ok) refuse(n, "attribute '" + a.name + "' is not supported");
    }
  }

  int add(IntegerTensor t) {
    im_.tensors.push_back(std::move(t));
    return static_cast<int>(im_.tensors.size()) - 1;
  }
  void emit(const std::string& op, std::vector<int> inputs, int output, Attrs attrs,
            const std::string& layer) {
    IntegerOp o;
    o.op = op;
    o.inputs = std::move(inputs);
    o.output = output;
    o.attrs = std::move(attrs);
    o.layer = layer;
    o.activation = o.attrs.s("activation", "none");
    im_.ops.push_back(std::move(o));
  }
  int codes_tensor(const std::string& name, const Shape& shape, double scale, int32_t zp) {
    IntegerTensor t;
    t.name = name;
    t.dtype = DType::kS8;
    t.shape = shape;
    t.scale = {scale};
    t.zero_point = {zp};
    return add(std::move(t));
  }
  int constant_tensor(const std::string& name, Tensor data, std::vector<double> scale) {
    IntegerTensor t;
    t.name = name;
    t.dtype = data.dtype();
    t.shape = data.shape();
    t.zero_point.assign(scale.size(), 0);
    t.scale = std::move(scale);
    t.data = std::move(data);
    if (t.dtype == DType::kS8) {
      t.qmin = 127;
      t.qmax = -128;
      for (int64_t i = 0; i < t.data.numel(); ++i) {
        t.qmin = std::min<int32_t>(t.qmin, t.data.data<int8_t>()[i]);
        t.qmax = std::max<int32_t>(t.qmax, t.data.data<int8_t>()[i]);
      }
      if (t.qmin > t.qmax) t.qmin = -128, t.qmax = 127;
      // The weight grid is symmetric int8 [-127, 127] or [-128, 127]: keep 8 bits.
      t.qmin = std::min(t.qmin, -127);
      t.qmax = 127;
    }
    return add(std::move(t));
  }

  // The ONNX dims of a value (batch kUnknown).
  Shape onnx_shape(const Val& v) const {
    const Shape& s = im_.tensors.at(v.tensor).shape;
    if (!v.nchw) return s;
    return Shape{s[0], s[3], s[1], s[2]};
  }

  void add_input(const ValueInfoProto& v) {
    if (v.elem_type != kFloat && v.elem_type != kInt32 && v.elem_type != kInt64)
      LOWBIT_THROW(UnsupportedError, name_, ": graph input '", v.name, "' has element type ",
                   v.elem_type, " (expected float, or int32/int64 ids)");
    if (!v.has_shape || v.dims.empty())
      LOWBIT_THROW(UnsupportedError, name_, ": graph input '", v.name,
                   "' has no shape (expected [N, ...] with known dims after the batch)");
    std::vector<int64_t> d;
    for (size_t k = 0; k < v.dims.size(); ++k) {
      if (k == 0) {
        d.push_back(kUnknown);
        continue;
      }
      if (v.dims[k].dim_value < 1)
        LOWBIT_THROW(UnsupportedError, name_, ": graph input '", v.name, "' dim ", k,
                     " is not a known size (only the batch dim may be symbolic)");
      d.push_back(v.dims[k].dim_value);
    }
    // NHWC input as export_onnx writes it (every consumer a Transpose 0,3,1,2), else NCHW.
    bool nhwc = d.size() == 4;
    int consumers = 0;
    for (const NodeProto& n : m_.graph.node)
      for (const std::string& i : n.input)
        if (i == v.name) {
          ++consumers;
          const AttributeProto* p = attr(n, "perm");
          nhwc =
              nhwc && n.op_type == "Transpose" && p && p->ints == std::vector<int64_t>{0, 3, 1, 2};
        }
    nhwc = nhwc && consumers > 0;
    IntegerTensor t;
    t.name = v.name;
    t.dtype = v.elem_type == kFloat   ? DType::kF32
              : v.elem_type == kInt32 ? DType::kS32
                                      : DType::kS64;
    Val val;
    val.kind = Val::kInput;
    if (d.size() == 4 && !nhwc) {
      t.shape = Shape{d[0], d[2], d[3], d[1]};
      val.nchw = true;
    } else {
      t.shape = Shape(d);
    }
    im_.input = add(std::move(t));
    val.tensor = im_.input;
    vals_[v.name] = val;
  }

  // A scalar (or 1-element) constant input of a Q/DQ node as f64 / int.
  const Tensor& const_in(const NodeProto& n, size_t k, const char* what) const {
    const Val& v = in(n, k);
    if (v.kind != Val::kConst)
      refuse(n, std::string(what) + " '" + n.input[k] + "' is not a constant");
    return v.constant;
  }

  // Activation grid of a Q/DQ node: per-tensor scale and zero point, as int8 codes.
  struct Grid {
    double scale;
    int32_t zp;  // s8 (uint8 zero points - 128)
    bool u8;
  };
  Grid act_grid(const NodeProto& n) const {
    const Tensor& s = const_in(n, 1, "scale");
    if (s.numel() != 1 || s.dtype() != DType::kF32)
      refuse(n, "the scale of an activation must be one f32 (per-tensor quantization)");
    Grid g{s.data<float>()[0], 0, true};
    if (has_in(n, 2)) {
      const Tensor& z = const_in(n, 2, "zero point");
      if (z.numel() != 1) refuse(n, "the zero point of an activation must be one value");
      if (z.dtype() == DType::kU8) {
        g.zp = static_cast<int32_t>(z.data<uint8_t>()[0]) - 128;
      } else if (z.dtype() == DType::kS8) {
        g.zp = z.data<int8_t>()[0];
        g.u8 = false;
      } else {
        refuse(n, std::string("zero point of type ") + dtype_name(z.dtype()) +
                      " (activations must be int8 or uint8)");
      }
    } else {
      g.zp = -128;  // uint8 zero point 0
    }
    if (!(g.scale > 0) || !std::isfinite(g.scale)) refuse(n, "scale must be finite and > 0");
    return g;
  }

  bool same_grid(int t, const Grid& g) const {
    const IntegerTensor x = im_.tensors.at(t);
    return static_cast<float>(x.scale[0]) == static_cast<float>(g.scale) && x.zero_point[0] == g.zp;
  }

  void set(const NodeProto& n, Val v) {
    if (n.output.empty()) refuse(n, "no output");
    vals_[n.output[0]] = std::move(v);
  }

  void node(const NodeProto& n) {
    if (!n.domain.empty() && n.domain != "ai.onnx")
      refuse(n, "domain '" + n.domain + "' is not imported");
    const std::string& op = n.op_type;
    if (op == "Constant") {
      const AttributeProto* a = attr(n, "value");
      if (!a || a->t.empty()) refuse(n, "only attribute 'value' (a tensor) is supported");
      set(n, constant(to_tensor(a->t[0])));
    } else if (op == "ConstantOfShape") {
      const Tensor& s = const_in(n, 0, "shape");
      std::vector<int64_t> d;
      for (int64_t i = 0; i < s.numel(); ++i) d.push_back(static_cast<int64_t>(s.get_as_double(i)));
      const AttributeProto* a = attr(n, "value");
      Tensor fill = a && !a->t.empty() ? to_tensor(a->t[0]) : Tensor::zeros(Shape{1});
      Tensor r(Shape(d), fill.dtype());
      const size_t es = dtype_size(fill.dtype());
      for (int64_t i = 0; i < r.numel(); ++i)
        std::copy_n(static_cast<const char*>(fill.raw()), es, static_cast<char*>(r.raw()) + i * es);
      set(n, constant(r));
    } else if (op == "Cast") {
      cast(n);
    } else if (op == "Identity") {
      set(n, in(n, 0));
    } else if (op == "QuantizeLinear") {
      quantize(n);
    } else if (op == "DequantizeLinear") {
      dequantize(n);
    } else if (op == "Conv") {
      conv(n);
    } else if (op == "Gemm" || op == "MatMul") {
      dense(n);
    } else if (op == "Add") {
      add_node(n);
    } else if (op == "Relu" || op == "Clip") {
      clamp(n);
    } else if (op == "MaxPool" || op == "AveragePool" || op == "GlobalAveragePool") {
      pool(n);
    } else if (op == "Sigmoid" || op == "Tanh" || op == "Softmax") {
      nonlinear(n);
    } else if (op == "Flatten" || op == "Reshape") {
      reshape(n);
    } else if (op == "Transpose") {
      transpose(n);
    } else if (op == "Concat") {
      concat(n);
    } else {
      refuse(n,
             "op type not imported (QDQ import covers QuantizeLinear/DequantizeLinear around "
             "Conv, Gemm, MatMul, Add, MaxPool, AveragePool, GlobalAveragePool, Sigmoid, "
             "Tanh, Softmax, Relu, Clip, Flatten, Reshape, Transpose, Concat)");
    }
  }

  void cast(const NodeProto& n) {
    const Val& x = in(n, 0);
    const int64_t to = attr_i(n, "to", 0);
    if (x.kind == Val::kConst) {
      const DType d = to == kFloat   ? DType::kF32
                      : to == kInt32 ? DType::kS32
                      : to == kInt64 ? DType::kS64
                      : to == kInt8  ? DType::kS8
                      : to == kUint8 ? DType::kU8
                                     : DType::kBool;
      if (d == DType::kBool)
        refuse(n, "attribute 'to' = " + std::to_string(to) + " is not supported");
      set(n, constant(x.constant.to(d)));
      return;
    }
    if (x.kind == Val::kCodes) {
      // PyTorch casts codes to their own type (uint8 -> uint8): a no-op.
      if (to != (u8_.count(x.tensor) ? kUint8 : kInt8))
        refuse(n, "attribute 'to' = " + std::to_string(to) +
                      ": a Cast of quantized codes to another type");
      set(n, x);
      return;
    }
    refuse(n, "a Cast of a float tensor (only constants and codes to their own type)");
  }

  void quantize(const NodeProto& n) {
    only_attrs(n, {"axis", "saturate"});
    const Grid g = act_grid(n);
    const Val& x = in(n, 0);
    const std::string& out = n.output.at(0);
    Val v;
    v.kind = Val::kCodes;
    if (x.kind == Val::kInput) {
      const IntegerTensor xt = im_.tensors.at(x.tensor);
      if (xt.dtype != DType::kF32) refuse(n, "quantizes an integer input");
      v.tensor = codes_tensor(out, xt.shape, g.scale, g.zp);
      emit("quantize", {x.tensor}, v.tensor, {{"scale", g.scale}, {"zero_point", int64_t{g.zp}}},
           n.name);
      v.nchw = x.nchw;
    } else if (x.kind == Val::kDq) {
      if (same_grid(x.tensor, g)) {
        v.tensor = x.tensor;
      } else {
        v.tensor = requantize(x.tensor, g, out, im_.tensors.at(x.tensor).qmin,
                              im_.tensors.at(x.tensor).qmax, n.name);
      }
      v.nchw = x.nchw;
    } else if (x.kind == Val::kPending) {
      v.tensor = finish(pending_.at(x.index), g, out, n.name);
      v.nchw = pending_.at(x.index).nchw;
    } else {
      refuse(n, "input '" + n.input[0] +
                    "' is not the graph input, a dequantized tensor or a "
                    "float op on dequantized tensors (constants must be given as int8 codes)");
    }
    if (g.u8) u8_[v.tensor] = true;
    vals_[out] = v;
  }

  int requantize(int x, const Grid& g, const std::string& name, int64_t lo, int64_t hi,
                 const std::string& layer) {
    const IntegerTensor xt = im_.tensors.at(x);
    const int y = codes_tensor(name, xt.shape, g.scale, g.zp);
    emit("requantize", {x}, y,
         {{"input_scale", xt.scale[0]},
          {"input_zero_point", int64_t{xt.zero_point[0]}},
          {"output_scale", g.scale},
          {"output_zero_point", int64_t{g.zp}},
          {"rounding", "single"},
          {"act_min", std::max<int64_t>(-128, lo)},
          {"act_max", std::min<int64_t>(127, hi)}},
         layer);
    return y;
  }

  void dequantize(const NodeProto& n) {
    only_attrs(n, {"axis"});
    const Val& x = in(n, 0);
    if (x.kind == Val::kConst) {
      DqConst c;
      c.codes = x.constant;
      const Tensor& s = const_in(n, 1, "scale");
      for (int64_t i = 0; i < s.numel(); ++i)
        c.scale.push_back(static_cast<float>(s.get_as_double(i)));
      if (has_in(n, 2)) {
        const Tensor& z = const_in(n, 2, "zero point");
        for (int64_t i = 0; i < z.numel(); ++i)
          c.zero_point.push_back(static_cast<int64_t>(z.get_as_double(i)));
      } else {
        c.zero_point.assign(c.scale.size(), 0);
      }
      c.axis = attr_i(n, "axis", 1);
      if (c.axis < 0) c.axis += c.codes.rank();
      Val v;
      v.kind = Val::kDqConst;
      v.index = static_cast<int>(dq_consts_.size());
      dq_consts_.push_back(std::move(c));
      set(n, v);
      return;
    }
    if (x.kind != Val::kCodes)
      refuse(n, "input '" + n.input[0] + "' is not quantized codes or a constant");
    const Grid g = act_grid(n);
    if (!same_grid(x.tensor, g))
      refuse(n, "dequantizes '" + n.input[0] +
                    "' with another scale or zero point than it was "
                    "quantized with");
    Val v = x;
    v.kind = Val::kDq;
    set(n, v);
  }

  const DqConst& dq_const(const NodeProto& n, size_t k, const char* what) const {
    const Val& v = in(n, k);
    if (v.kind != Val::kDqConst)
      refuse(n,
             std::string(what) + " '" + n.input[k] + "' is not a DequantizeLinear of a constant");
    return dq_consts_.at(v.index);
  }
  int dq_input(const NodeProto& n, size_t k) const {
    const Val& v = in(n, k);
    if (v.kind != Val::kDq)
      refuse(n, "input '" + n.input[k] + "' is not a DequantizeLinear of quantized codes");
    return v.tensor;
  }

  // Weight scales (one per output channel, or one) of a dequantized int8 weight.
  std::vector<double> weight_scales(const NodeProto& n, const DqConst& w, int64_t out_axis) const {
    if (w.codes.dtype() != DType::kS8)
      refuse(n, "weights must be int8 codes (symmetric, zero point 0)");
    for (int64_t z : w.zero_point)
      if (z != 0)
        refuse(n, "weight zero point " + std::to_string(z) + " (weights must be symmetric)");
    if (w.scale.size() > 1 && w.axis != out_axis)
      refuse(n, "attribute 'axis' = " + std::to_string(w.axis) +
                    " of the weight's DequantizeLinear: "
                    "per-channel weights must be quantized along the output channels (axis " +
                    std::to_string(out_axis) + ")");
    std::vector<double> s;
    for (float v : w.scale) {
      if (!(v > 0)) refuse(n, "weight scale must be > 0");
      s.push_back(v);
    }
    return s;
  }

  // The s32 bias codes at f32(s_in) * f32(s_w[c]) (rescaled if the file used another scale).
  Tensor bias_codes(const NodeProto& n, const DqConst* b, double s_in,
                    const std::vector<double>& ws, int64_t channels) const {
    Tensor r(Shape{channels}, DType::kS32);
    for (int64_t c = 0; c < channels; ++c) {
      const float want =
          bias_scale(static_cast<float>(s_in), static_cast<float>(ws[ws.size() > 1 ? c : 0]));
      int32_t q = 0;
      if (b) {
        if (b->codes.dtype() != DType::kS32 || b->codes.numel() != channels)
          refuse(n, "bias must be int32 codes, one per output channel");
        for (int64_t z : b->zero_point)
          if (z != 0) refuse(n, "bias zero point must be 0");
        const double bs = b->scale.at(b->scale.size() > 1 ? c : 0);
        q = b->codes.data<int32_t>()[c];
        if (std::abs(bs - want) > 1e-6 * want)
          q = static_cast<int32_t>(
              std::clamp<double>(std::round(q * bs / want), -2147483647.0, 2147483647.0));
      }
      r.data<int32_t>()[c] = q;
    }
    return r;
  }

  void conv(const NodeProto& n) {
    only_attrs(n, {"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"});
    const AttributeProto* ap = attr(n, "auto_pad");
    if (ap && ap->s != "NOTSET" && ap->s != "VALID") refuse(n, "attribute 'auto_pad' = " + ap->s);
    const int x = dq_input(n, 0);
    const Val& xv = in(n, 0);
    if (!xv.nchw) refuse(n, "input '" + n.input[0] + "' is not a rank-4 NCHW tensor");
    const DqConst& w = dq_const(n, 1, "weight");
    if (w.codes.rank() != 4) refuse(n, "only 2-D convolutions (rank-4 weights) are imported");
    Pending p;
    p.kind = "conv";
    p.layer = n.name;
    p.in = {x};
    p.w_scales = weight_scales(n, w, 0);
    const int64_t co = w.codes.shape()[0], ci = w.codes.shape()[1], kh = w.codes.shape()[2],
                  kw = w.codes.shape()[3];
    Tensor wl(Shape{kh, kw, ci, co}, DType::kS8);
    for (int64_t o = 0; o < co; ++o)
      for (int64_t i = 0; i < ci; ++i)
        for (int64_t a = 0; a < kh; ++a)
          for (int64_t b = 0; b < kw; ++b)
            wl.data<int8_t>()[((a * kw + b) * ci + i) * co + o] =
                w.codes.data<int8_t>()[((o * ci + i) * kh + a) * kw + b];
    p.w = wl;
    const IntegerTensor xt = im_.tensors.at(x);
    p.b = bias_codes(n, has_in(n, 2) ? &dq_const(n, 2, "bias") : nullptr, xt.scale[0], p.w_scales,
                     co);
    const int64_t group = attr_i(n, "group", 1);
    if (xt.shape[3] != ci * group) refuse(n, "input channels do not match the weight and 'group'");
    const auto s = attr_ints(n, "strides", {1, 1}), d = attr_ints(n, "dilations", {1, 1});
    const auto pads = attr_ints(n, "pads", {0, 0, 0, 0});
    const auto ks = attr_ints(n, "kernel_shape", {kh, kw});
    if (s.size() != 2 || d.size() != 2 || pads.size() != 4 || ks != std::vector<int64_t>{kh, kw})
      refuse(
          n,
          "attributes 'strides', 'dilations', 'pads', 'kernel_shape' must describe a 2-D window");
    p.attrs = {{"strides", std::vector<int64_t>{s[0], s[1]}},
               {"dilations", std::vector<int64_t>{d[0], d[1]}},
               {"groups", group}};
    if (pads == std::vector<int64_t>{0, 0, 0, 0}) {
      p.attrs.set("padding", "valid");
    } else {
      p.attrs.set("padding", "explicit");
      p.attrs.set("pads", std::vector<int64_t>{pads[0], pads[2], pads[1], pads[3]});
    }
    const int64_t oh = (xt.shape[1] + pads[0] + pads[2] - ((kh - 1) * d[0] + 1)) / s[0] + 1;
    const int64_t ow = (xt.shape[2] + pads[1] + pads[3] - ((kw - 1) * d[1] + 1)) / s[1] + 1;
    p.shape = Shape{kUnknown, oh, ow, co};
    p.nchw = true;
    push(n, std::move(p));
  }

  void dense(const NodeProto& n) {
    const bool gemm = n.op_type == "Gemm";
    if (gemm) only_attrs(n, {"alpha", "beta", "transA", "transB"});
    const AttributeProto* al = attr(n, "alpha");
    const AttributeProto* be = attr(n, "beta");
    if ((al && al->f != 1.0f) || (be && be->f != 1.0f))
      refuse(n, "attributes 'alpha'/'beta' must be 1");
    if (attr_i(n, "transA", 0) != 0) refuse(n, "attribute 'transA' must be 0");
    const bool tb = attr_i(n, "transB", 0) != 0;
    const int x = dq_input(n, 0);
    if (in(n, 0).nchw) refuse(n, "input '" + n.input[0] + "' is a rank-4 NCHW tensor");
    const DqConst& w = dq_const(n, 1, "weight");
    if (w.codes.rank() != 2) refuse(n, "the weight must be a matrix");
    Pending p;
    p.kind = "dense";
    p.layer = n.name;
    p.in = {x};
    const int64_t k = tb ? w.codes.shape()[1] : w.codes.shape()[0];
    const int64_t u = tb ? w.codes.shape()[0] : w.codes.shape()[1];
    p.w_scales = weight_scales(n, w, tb ? 0 : 1);
    Tensor wl(Shape{k, u}, DType::kS8);
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < u; ++j)
        wl.data<int8_t>()[i * u + j] = w.codes.data<int8_t>()[tb ? j * k + i : i * u + j];
    p.w = wl;
    const IntegerTensor xt = im_.tensors.at(x);
    if (xt.shape[-1] != k) refuse(n, "the input's last dim does not match the weight");
    if (gemm && xt.shape.rank() != 2)
      refuse(n, "Gemm of a tensor of rank " + std::to_string(xt.shape.rank()));
    const bool bias = gemm && has_in(n, 2);
    p.b = bias_codes(n, bias ? &dq_const(n, 2, "bias") : nullptr, xt.scale[0], p.w_scales, u);
    p.has_bias = bias;
    std::vector<int64_t> d = xt.shape.dims();
    d.back() = u;
    p.shape = Shape(d);
    push(n, std::move(p));
  }

  void push(const NodeProto& n, Pending p) {
    Val v;
    v.kind = Val::kPending;
    v.index = static_cast<int>(pending_.size());
    v.nchw = p.nchw;
    pending_.push_back(std::move(p));
    set(n, v);
  }

  void add_node(const NodeProto& n) {
    only_attrs(n, {});
    const Val& a = in(n, 0);
    const Val& b = in(n, 1);
    // MatMul + Add(dequantized bias): the bias of the dense op.
    for (int k = 0; k < 2; ++k) {
      const Val& mm = k ? b : a;
      const Val& c = k ? a : b;
      if (mm.kind == Val::kPending && pending_.at(mm.index).kind == "dense" &&
          !pending_.at(mm.index).has_bias && c.kind == Val::kDqConst) {
        Pending p = pending_.at(mm.index);
        const IntegerTensor xt = im_.tensors.at(p.in[0]);
        p.b = bias_codes(n, &dq_consts_.at(c.index), xt.scale[0], p.w_scales, p.shape[-1]);
        p.has_bias = true;
        p.layer += "+" + n.name;
        push(n, std::move(p));
        return;
      }
    }
    const int x = dq_input(n, 0), y = dq_input(n, 1);
    if (im_.tensors.at(x).shape != im_.tensors.at(y).shape || a.nchw != b.nchw)
      refuse(n, "inputs of different shapes (broadcasting is not imported)");
    Pending p;
    p.kind = "add";
    p.layer = n.name;
    p.in = {x, y};
    p.shape = im_.tensors.at(x).shape;
    p.nchw = a.nchw;
    push(n, std::move(p));
  }

  void clamp(const NodeProto& n) {
    const Val& x = in(n, 0);
    Pending p;
    if (x.kind == Val::kPending) {
      p = pending_.at(x.index);
      if (p.kind != "conv" && p.kind != "dense" && p.kind != "add" && p.kind != "clamp" &&
          p.kind != "maxpool" && p.kind != "avgpool")
        refuse(n, "a clamp after " + p.kind + " is not imported");
    } else {
      p.kind = "clamp";
      p.in = {dq_input(n, 0)};
      p.shape = im_.tensors.at(p.in[0]).shape;
      p.nchw = x.nchw;
    }
    p.layer += (p.layer.empty() ? "" : "+") + n.name;
    if (n.op_type == "Relu") {
      only_attrs(n, {});
      p.relu = true;
    } else {
      only_attrs(n, {});
      if (has_in(n, 1)) {
        const Tensor& t = const_in(n, 1, "min");
        if (t.numel() != 1) refuse(n, "'min' must be a scalar");
        const float v = static_cast<float>(t.get_as_double(0));
        p.clip_min = p.clip_min ? std::max(*p.clip_min, v) : v;
      }
      if (has_in(n, 2)) {
        const Tensor& t = const_in(n, 2, "max");
        if (t.numel() != 1) refuse(n, "'max' must be a scalar");
        const float v = static_cast<float>(t.get_as_double(0));
        p.clip_max = p.clip_max ? std::min(*p.clip_max, v) : v;
      }
    }
    push(n, std::move(p));
  }

  // Pool window attributes in lowbit form (padding "valid" or "same": lowbit pools have no
  // explicit pads).
  Attrs pool_window(const NodeProto& n, const Shape& x, bool global) {
    if (global)
      return {{"ksize", std::vector<int64_t>{x[1], x[2]}},
              {"strides", std::vector<int64_t>{1, 1}},
              {"padding", "valid"}};
    only_attrs(n, {"kernel_shape", "strides", "pads", "auto_pad", "ceil_mode", "count_include_pad",
                   "dilations", "storage_order"});
    if (attr_i(n, "ceil_mode", 0) != 0) refuse(n, "attribute 'ceil_mode' = 1");
    if (attr_i(n, "storage_order", 0) != 0) refuse(n, "attribute 'storage_order' = 1");
    if (attr_ints(n, "dilations", {1, 1}) != std::vector<int64_t>{1, 1})
      refuse(n, "attribute 'dilations' != 1");
    const AttributeProto* ap = attr(n, "auto_pad");
    if (ap && ap->s != "NOTSET" && ap->s != "VALID") refuse(n, "attribute 'auto_pad' = " + ap->s);
    const auto k = attr_ints(n, "kernel_shape", {});
    const auto s = attr_ints(n, "strides", {1, 1});
    const auto pads = attr_ints(n, "pads", {0, 0, 0, 0});
    if (k.size() != 2 || s.size() != 2 || pads.size() != 4)
      refuse(n, "only 2-D pools are imported");
    Attrs a = {{"ksize", k}, {"strides", s}};
    if (pads == std::vector<int64_t>{0, 0, 0, 0}) {
      a.set("padding", "valid");
      return a;
    }
    if (n.op_type == "AveragePool" && attr_i(n, "count_include_pad", 0) != 0)
      refuse(n, "attribute 'count_include_pad' = 1 with padding (lowbit averages valid cells)");
    // TensorFlow "same": the odd extra cell at the end.
    std::vector<int64_t> same(4);
    for (int i = 0; i < 2; ++i) {
      const int64_t in = x[1 + i], out = (in + s[i] - 1) / s[i];
      const int64_t total = std::max<int64_t>((out - 1) * s[i] + k[i] - in, 0);
      same[i] = total / 2;
      same[i + 2] = total - total / 2;
    }
    if (pads != same)
      refuse(n,
             "attribute 'pads': pools are imported with no padding or TensorFlow 'same' padding");
    a.set("padding", "same");
    return a;
  }

  static Shape pool_shape(const Shape& x, const Attrs& a) {
    const auto k = a.ints("ksize");
    const auto s = a.ints("strides");
    int64_t o[2];
    for (int i = 0; i < 2; ++i)
      o[i] = a.s("padding") == "same" ? (x[1 + i] + s[i] - 1) / s[i] : (x[1 + i] - k[i]) / s[i] + 1;
    return Shape{kUnknown, o[0], o[1], x[3]};
  }

  void pool(const NodeProto& n) {
    const Val& xv = in(n, 0);
    if (!xv.nchw) refuse(n, "input '" + n.input[0] + "' is not a rank-4 NCHW tensor");
    const bool codes = xv.kind == Val::kCodes;
    const int x = codes ? xv.tensor : dq_input(n, 0);
    const IntegerTensor xt = im_.tensors.at(x);
    Attrs a = pool_window(n, xt.shape, n.op_type == "GlobalAveragePool");
    const Shape shape = pool_shape(xt.shape, a);
    if (codes) {
      if (n.op_type != "MaxPool")
        refuse(n, "an average pool of quantized codes (needs DequantizeLinear before)");
      const int y = codes_tensor(n.output.at(0), shape, xt.scale[0], xt.zero_point[0]);
      a.set("act_min", int64_t{-128}).set("act_max", int64_t{127});
      emit("qmax_pool2d", {x}, y, a, n.name);
      if (u8_.count(x)) u8_[y] = true;
      Val v;
      v.kind = Val::kCodes;
      v.tensor = y;
      v.nchw = true;
      set(n, v);
      return;
    }
    Pending p;
    p.kind = n.op_type == "MaxPool" ? "maxpool" : "avgpool";
    p.layer = n.name;
    p.in = {x};
    p.attrs = a;
    p.shape = shape;
    p.nchw = true;
    push(n, std::move(p));
  }

  void nonlinear(const NodeProto& n) {
    const Val& xv = in(n, 0);
    const int x = dq_input(n, 0);
    Pending p;
    p.kind = n.op_type;
    p.layer = n.name;
    p.in = {x};
    p.shape = im_.tensors.at(x).shape;
    p.nchw = xv.nchw;
    if (n.op_type == "Softmax") {
      only_attrs(n, {"axis"});
      const int rank = p.shape.rank();
      int64_t axis = attr_i(n, "axis", opset_ >= 13 ? -1 : 1);
      if (axis < 0) axis += rank;
      const bool channel = xv.nchw ? axis == 1 : axis == rank - 1;
      if (!channel || (opset_ < 13 && axis != rank - 1 && !xv.nchw))
        refuse(n, "attribute 'axis' = " + std::to_string(axis) +
                      ": only a softmax over the channel (last NHWC) axis is imported");
      if (opset_ < 13 && xv.nchw) refuse(n, "a Softmax of an NCHW tensor at opset < 13 (flattens)");
    } else {
      only_attrs(n, {});
    }
    push(n, std::move(p));
  }

  void transpose(const NodeProto& n) {
    only_attrs(n, {"perm"});
    Val v = in(n, 0);
    const auto perm = attr_ints(n, "perm", {});
    const bool rank4 = (v.kind == Val::kInput || v.kind == Val::kCodes || v.kind == Val::kDq) &&
                       im_.tensors.at(v.tensor).shape.rank() == 4;
    if (rank4 && !v.nchw && perm == std::vector<int64_t>{0, 3, 1, 2}) {
      v.nchw = true;
    } else if (rank4 && v.nchw && perm == std::vector<int64_t>{0, 2, 3, 1}) {
      v.nchw = false;
    } else {
      refuse(n, "attribute 'perm': only NHWC <-> NCHW transposes of rank-4 tensors are imported");
    }
    set(n, v);
  }

  void reshape(const NodeProto& n) {
    const Val& xv = in(n, 0);
    const bool codes = xv.kind == Val::kCodes;
    const int x = codes ? xv.tensor : dq_input(n, 0);
    const Shape src = onnx_shape(xv);
    int64_t numel_row = 1;
    for (int d = 1; d < src.rank(); ++d) numel_row *= src[d];
    std::vector<int64_t> dims;
    if (n.op_type == "Flatten") {
      only_attrs(n, {"axis"});
      if (attr_i(n, "axis", 1) != 1) refuse(n, "attribute 'axis' must be 1");
      dims = {kUnknown, numel_row};
    } else {
      only_attrs(n, {"allowzero"});
      const Tensor& t = const_in(n, 1, "shape");
      int64_t known = 1, minus = -1;
      for (int64_t i = 0; i < t.numel(); ++i) {
        int64_t v = static_cast<int64_t>(t.get_as_double(i));
        if (v == 0) {
          if (i >= src.rank()) refuse(n, "shape entry 0 past the input's rank");
          v = src[static_cast<int>(i)];
        }
        dims.push_back(v);
        if (i == 0) continue;
        if (v == -1)
          minus = i;
        else
          known *= v;
      }
      if (dims.empty()) refuse(n, "an empty target shape");
      if (dims[0] != kUnknown) {
        if (dims[0] != -1 || minus >= 0)
          refuse(n, "the reshape must keep the batch dim first (0 or -1)");
        dims[0] = kUnknown;
      } else if (minus >= 0) {
        dims[minus] = numel_row / known;
      }
      dims[0] = kUnknown;
      int64_t row = 1;
      for (size_t i = 1; i < dims.size(); ++i) row *= dims[i];
      if (row != numel_row)
        refuse(n, "the target shape does not keep the element count per example");
    }
    if (dims.size() == 4) refuse(n, "a reshape to rank 4 is not imported");
    int src_t = x;
    const IntegerTensor xt = im_.tensors.at(x);
    if (xv.nchw && xt.shape[1] * xt.shape[2] > 1) {
      // ONNX flattens NCHW: gather the NHWC codes in that order.
      const int64_t h = xt.shape[1], w = xt.shape[2], c = xt.shape[3];
      const int flat = codes_tensor(n.output[0] + "_nhwc_flat", Shape{kUnknown, h * w * c},
                                    xt.scale[0], xt.zero_point[0]);
      emit("reshape", {x}, flat, {{"shape", std::vector<int64_t>{-1, h * w * c}}}, n.name);
      Tensor idx(Shape{h * w * c}, DType::kS32);
      for (int64_t ci = 0; ci < c; ++ci)
        for (int64_t hi = 0; hi < h; ++hi)
          for (int64_t wi = 0; wi < w; ++wi)
            idx.data<int32_t>()[(ci * h + hi) * w + wi] =
                static_cast<int32_t>((hi * w + wi) * c + ci);
      const int it = constant_tensor(n.output[0] + "_nchw_order", idx, {});
      const int g = codes_tensor(n.output[0] + "_nchw_flat", Shape{kUnknown, h * w * c},
                                 xt.scale[0], xt.zero_point[0]);
      emit("gather", {flat, it}, g, {{"axis", int64_t{1}}}, n.name);
      src_t = g;
    }
    const IntegerTensor st = im_.tensors.at(src_t);
    const int y = codes_tensor(n.output[0], Shape(dims), st.scale[0], st.zero_point[0]);
    std::vector<int64_t> attr = dims;
    attr[0] = -1;
    emit("reshape", {src_t}, y, {{"shape", attr}}, n.name);
    if (u8_.count(x)) u8_[y] = true;
    Val v;
    v.kind = codes ? Val::kCodes : Val::kDq;
    v.tensor = y;
    set(n, v);
  }

  void concat(const NodeProto& n) {
    only_attrs(n, {"axis"});
    std::vector<int> ts;
    bool nchw = false, codes = true;
    for (size_t k = 0; k < n.input.size(); ++k) {
      const Val& v = in(n, k);
      if (v.kind != Val::kCodes && v.kind != Val::kDq)
        refuse(n, "input '" + n.input[k] + "' is not quantized codes or their DequantizeLinear");
      if (k && v.nchw != nchw) refuse(n, "inputs of different layouts");
      nchw = v.nchw;
      codes = codes && v.kind == Val::kCodes;
      ts.push_back(v.tensor);
    }
    const Shape s0 = im_.tensors.at(ts[0]).shape;
    int64_t axis = attr_i(n, "axis", 0);
    if (axis < 0) axis += s0.rank();
    if (nchw) axis = std::vector<int64_t>{0, 3, 1, 2}.at(axis);
    if (axis == 0) refuse(n, "attribute 'axis': a concatenation along the batch axis");
    std::vector<int64_t> d = s0.dims();
    d[axis] = 0;
    for (int t : ts) d[axis] += im_.tensors.at(t).shape[static_cast<int>(axis)];
    Pending p;
    p.kind = "concat";
    p.layer = n.name;
    p.in = ts;
    p.shape = Shape(d);
    p.nchw = nchw;
    p.attrs.set("axis", axis);
    if (codes) {
      // Concat of codes: one grid for all.
      const IntegerTensor t0 = im_.tensors.at(ts[0]);
      for (int t : ts)
        if (!same_grid(t, Grid{t0.scale[0], t0.zero_point[0], false}))
          refuse(n, "a Concat of codes on different grids (dequantize them first)");
      const int y = finish(p, Grid{t0.scale[0], t0.zero_point[0], false}, n.output.at(0), n.name);
      Val v;
      v.kind = Val::kCodes;
      v.tensor = y;
      v.nchw = nchw;
      set(n, v);
      return;
    }
    push(n, std::move(p));
  }

  // The clamp of a pending op's output codes on grid g: [lo, hi] from its Relu/Clip.
  std::pair<int64_t, int64_t> clamp_codes(const Pending& p, const Grid& g) const {
    int64_t lo = -128, hi = 127;
    const auto code = [&](float v) {
      return static_cast<int64_t>(
          std::clamp<double>(std::nearbyint(v / g.scale) + g.zp, -128, 127));
    };
    if (p.relu) lo = std::max<int64_t>(lo, g.zp);
    if (p.clip_min) lo = std::max(lo, code(*p.clip_min));
    if (p.clip_max) hi = std::min(hi, code(*p.clip_max));
    return {lo, hi};
  }

  int finish(const Pending& p, const Grid& g, const std::string& name, const std::string& qnode) {
    const std::string layer = p.layer + "+" + qnode;
    const auto [lo, hi] = clamp_codes(p, g);
    Attrs a = p.attrs;
    if (p.kind == "conv" || p.kind == "dense") {
      const IntegerTensor xt = im_.tensors.at(p.in[0]);
      const int w = constant_tensor(name + "/kernel", p.w, p.w_scales);
      std::vector<double> bs;
      for (int64_t c = 0; c < p.b.numel(); ++c)
        bs.push_back(bias_scale(static_cast<float>(xt.scale[0]),
                                static_cast<float>(p.w_scales[p.w_scales.size() > 1 ? c : 0])));
      const int b = constant_tensor(name + "/bias", p.b, bs);
      const int y = codes_tensor(name, p.shape, g.scale, g.zp);
      a.set("input_scale", xt.scale[0]).set("input_zero_point", int64_t{xt.zero_point[0]});
      a.set("weight_scales", p.w_scales);
      a.set("output_scale", g.scale).set("output_zero_point", int64_t{g.zp});
      a.set("activation", "none").set("act_min", lo).set("act_max", hi).set("rounding", rounding_);
      emit(p.kind == "conv" ? "qconv2d" : "qfully_connected", {p.in[0], w, b}, y, a, layer);
      return y;
    }
    if (p.kind == "add") {
      const IntegerTensor x1 = im_.tensors.at(p.in[0]), x2 = im_.tensors.at(p.in[1]);
      const int y = codes_tensor(name, p.shape, g.scale, g.zp);
      emit("qadd", {p.in[0], p.in[1]}, y,
           {{"input1_scale", x1.scale[0]},
            {"input1_zero_point", int64_t{x1.zero_point[0]}},
            {"input2_scale", x2.scale[0]},
            {"input2_zero_point", int64_t{x2.zero_point[0]}},
            {"output_scale", g.scale},
            {"output_zero_point", int64_t{g.zp}},
            {"activation", "none"},
            {"act_min", lo},
            {"act_max", hi},
            {"rounding", rounding_}},
           layer);
      return y;
    }
    if (p.kind == "clamp") return requantize(p.in[0], g, name, lo, hi, layer);
    if (p.kind == "maxpool") {
      const IntegerTensor xt = im_.tensors.at(p.in[0]);
      const bool same = same_grid(p.in[0], g);
      const Grid xg{xt.scale[0], xt.zero_point[0], false};
      const auto [xlo, xhi] = clamp_codes(p, xg);
      const int y =
          codes_tensor(same ? name : name + "_pooled", p.shape, xt.scale[0], xt.zero_point[0]);
      a.set("act_min", xlo).set("act_max", xhi);
      emit("qmax_pool2d", {p.in[0]}, y, a, layer);
      return same ? y : requantize(y, g, name, lo, hi, layer);
    }
    if (p.kind == "avgpool") {
      const IntegerTensor xt = im_.tensors.at(p.in[0]);
      const int y = codes_tensor(name, p.shape, g.scale, g.zp);
      a.set("input_scale", xt.scale[0]).set("input_zero_point", int64_t{xt.zero_point[0]});
      a.set("output_scale", g.scale).set("output_zero_point", int64_t{g.zp});
      a.set("act_min", lo).set("act_max", hi).set("rounding", "single");
      emit("qavg_pool2d", {p.in[0]}, y, a, layer);
      return y;
    }
    if (p.kind == "Sigmoid" || p.kind == "Tanh" || p.kind == "Softmax") {
      const IntegerTensor xt = im_.tensors.at(p.in[0]);
      const bool tanh = p.kind == "Tanh";
      const Grid fixed{tanh ? 1.0 / 128 : 1.0 / 256, tanh ? 0 : -128, false};
      const bool same =
          static_cast<float>(fixed.scale) == static_cast<float>(g.scale) && fixed.zp == g.zp;
      const int y = codes_tensor(same ? name : name + "_fixed", p.shape, fixed.scale, fixed.zp);
      Attrs na = {{"input_scale", xt.scale[0]}, {"input_zero_point", int64_t{xt.zero_point[0]}}};
      emit(p.kind == "Sigmoid" ? "qlogistic"
           : tanh              ? "qtanh"
                               : "qsoftmax",
           {p.in[0]}, y, na, layer);
      return same ? y : requantize(y, g, name, -128, 127, layer);
    }
    if (p.kind == "concat") {
      std::vector<int> parts;
      for (int t : p.in)
        parts.push_back(same_grid(t, g) ? t
                                        : requantize(t, g, im_.tensors.at(t).name + "_requantized",
                                                     -128, 127, layer));
      const int y = codes_tensor(name, p.shape, g.scale, g.zp);
      emit("concat", parts, y, {{"axis", p.attrs.i("axis")}}, layer);
      return y;
    }
    LOWBIT_THROW(UnsupportedError, name_, ": node '", qnode, "': a QuantizeLinear after ", p.kind,
                 " is not imported");
  }

  const ModelProto& m_;
  std::string name_;
  int64_t opset_ = 0;
  std::string rounding_ = "double";
  IntegerModel im_;
  std::map<std::string, Val> vals_;
  std::vector<DqConst> dq_consts_;
  std::vector<Pending> pending_;
  std::map<int, bool> u8_;  // tensors whose ONNX codes are uint8
};

}  // namespace

IntegerModel integer_from_onnx_qdq(const ModelProto& m, const std::string& name) {
  return Importer(m, name).run();
}

IntegerModel import_onnx_qdq(const std::string& path) {
  return integer_from_onnx_qdq(read_model(path), path);
}

}  // namespace lowbit::onnx
