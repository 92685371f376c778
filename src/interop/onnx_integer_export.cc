// quant::IntegerModel -> ONNX, QDQ or QOperator (include/lowbit/interop/onnx_integer.h).
#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "interop/onnx_integer_common.h"
#include "lowbit/error.h"
#include "lowbit/fixed_point.h"
#include "lowbit/interop/onnx_integer.h"

namespace lowbit::onnx {

using detail::pair_attr;
using quant::activation_range;
using quant::bias_scale;
using quant::fused_activation_from_name;
using quant::IntegerModel;
using quant::IntegerOp;
using quant::IntegerTensor;
using quant::quant_range;
using quant::QuantRange;

namespace {

int32_t onnx_type(DType d) {
  switch (d) {
    case DType::kF32:
      return kFloat;
    case DType::kS8:
      return kInt8;
    case DType::kU8:
      return kUint8;
    case DType::kS32:
      return kInt32;
    case DType::kS64:
      return kInt64;
    default:
      return kUndefined;
  }
}

// ONNX pads [top, left, bottom, right] of lowbit's padding on an input of spatial size (h, w).
std::vector<int64_t> onnx_pads(const Attrs& a, int64_t h, int64_t w, std::array<int64_t, 2> k,
                               std::array<int64_t, 2> s, std::array<int64_t, 2> d) {
  const std::string mode = a.s("padding", "valid");
  if (mode == "valid") return {0, 0, 0, 0};
  if (mode == "explicit") {
    const std::vector<int64_t> p = a.ints("pads");  // top, bottom, left, right
    if (p.size() != 4) LOWBIT_THROW(ValueError, "export_onnx: pads must have 4 entries");
    return {p[0], p[2], p[1], p[3]};
  }
  if (mode != "same")
    LOWBIT_THROW(UnsupportedError, "export_onnx: padding '", mode, "' has no ONNX form");
  std::array<int64_t, 2> begin{}, end{};
  const int64_t in[2] = {h, w};
  for (int i = 0; i < 2; ++i) {
    const int64_t out = (in[i] + s[i] - 1) / s[i];
    const int64_t total = std::max<int64_t>((out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - in[i], 0);
    begin[i] = total / 2;
    end[i] = total - begin[i];
  }
  return {begin[0], begin[1], end[0], end[1]};
}

class Exporter {
 public:
  Exporter(const IntegerModel& m, const IntegerExportOptions& o) : m_(m), opt_(o) {}

  ModelProto run() {
    if (opt_.opset < 13 || opt_.opset > 21)
      LOWBIT_THROW(ValueError, "export_onnx: opset must be in [13, 21] but is ", opt_.opset);
    if (m_.input < 0 || m_.output < 0)
      LOWBIT_THROW(ValueError, "export_onnx: the IntegerModel has no input or output tensor");
    for (const IntegerOp& op : m_.ops) check_supported(op);
    out_.producer_name = "lowbit";
    out_.graph.name =
        opt_.graph_name.empty() ? (m_.name.empty() ? "lowbit" : m_.name) : opt_.graph_name;
    names_.resize(m_.tensors.size());
    nchw_.assign(m_.tensors.size(), false);
    std::set<std::string> used;
    for (size_t i = 0; i < m_.tensors.size(); ++i) {
      std::string n = m_.tensors[i].name.empty() ? "t" + std::to_string(i) : m_.tensors[i].name;
      if (!used.insert(n).second) n += "_" + std::to_string(i);
      used.insert(n);
      names_[i] = n;
    }
    names_[m_.output] += "__value";  // the graph output itself is an Identity of it
    // The graph input as lowbit has it (f32 NHWC or ids), transposed once if rank 4.
    const IntegerTensor& in = m_.tensors[m_.input];
    out_.graph.input.push_back(value_info(names_[m_.input], in));
    if (in.shape.rank() == 4 && in.dtype == DType::kF32) {
      const std::string t = names_[m_.input] + "_nchw";
      node("Transpose", {names_[m_.input]}, {t}, {attr_ints("perm", {0, 3, 1, 2})});
      names_[m_.input] = t;
      nchw_[m_.input] = true;
    }
    for (const IntegerTensor& t : m_.tensors)
      if (t.data.defined() && t.dtype != DType::kS8 && t.dtype != DType::kS32 &&
          t.dtype != DType::kU8)
        LOWBIT_THROW(UnsupportedError, "export_onnx: constant '", t.name, "' is ",
                     dtype_name(t.dtype), " (expected s8 weights, s32 biases or a u8 table)");
    for (const IntegerOp& op : m_.ops) emit(op);
    // The output as lowbit gives it (NHWC for rank 4).
    std::string y = plain(m_.output);
    const IntegerTensor& ot = m_.tensors[m_.output];
    const std::string out_name = ot.name.empty() ? "output" : ot.name;
    node("Identity", {y}, {out_name});
    out_.graph.output.push_back(value_info(out_name, ot));
    out_.opset_import.push_back({"", opt_.opset});
    if (microsoft_) out_.opset_import.push_back({"com.microsoft", 1});
    out_.metadata_props.push_back(
        {"lowbit.format", opt_.format == IntegerFormat::kQdq ? "qdq" : "qoperator"});
    // The rounding of the output stages, for import_onnx_qdq (ONNX Runtime rounds once, in
    // float, whatever it says).
    bool single = false, all_single = true;
    for (const IntegerOp& op : m_.ops)
      if (op.op == "qconv2d" || op.op == "qfully_connected" || op.op == "qadd") {
        const bool s = op.attrs.s("rounding", "double") == "single";
        single = single || s;
        all_single = all_single && s;
      }
    if (single && all_single) out_.metadata_props.push_back({"lowbit.rounding", "single"});
    return std::move(out_);
  }

 private:
  static void check_supported(const IntegerOp& op) {
    static const std::set<std::string> kOk = {
        "quantize",  "dequantize",  "requantize",  "qconv2d", "qfully_connected",
        "qadd",      "qavg_pool2d", "qmax_pool2d", "concat",  "reshape",
        "qlogistic", "qtanh",       "qsoftmax",    "gather",  "cast"};
    if (op.op == "qlstm" || op.op == "qgru")
      LOWBIT_THROW(UnsupportedError, "export_onnx: op '", op.op, "' (layer '", op.layer,
                   "') has no ONNX integer form: ONNX's LSTM/GRU are float (com.microsoft "
                   "DynamicQuantizeLSTM quantizes only the weights), so the 8x8_16 gate "
                   "arithmetic of the integer model cannot be written; export the float or QAT "
                   "model instead");
    if (op.op == "timestep_mask")
      LOWBIT_THROW(UnsupportedError, "export_onnx: op 'timestep_mask' (layer '", op.layer,
                   "'): masks only feed qlstm/qgru, which have no ONNX integer form");
    if (!kOk.count(op.op))
      LOWBIT_THROW(UnsupportedError, "export_onnx: op '", op.op, "' (layer '", op.layer,
                   "') has no ONNX mapping");
  }

  ValueInfoProto value_info(const std::string& name, const IntegerTensor& t) {
    ValueInfoProto v;
    v.name = name;
    v.elem_type = onnx_type(t.dtype);
    v.has_shape = true;
    for (int d = 0; d < t.shape.rank(); ++d) {
      Dimension dim;
      if (d == 0 || t.shape[d] == kUnknown)
        dim.dim_param = d == 0 ? "N" : "d" + std::to_string(d);
      else
        dim.dim_value = t.shape[d];
      v.dims.push_back(dim);
    }
    return v;
  }

  std::string fresh(const std::string& stem) { return stem + "__" + std::to_string(counter_++); }

  void node(const std::string& op, std::vector<std::string> in, std::vector<std::string> out,
            std::vector<AttributeProto> attrs = {}, const std::string& domain = "") {
    NodeProto n;
    n.op_type = op;
    n.domain = domain;
    n.name = fresh(op);
    n.input = std::move(in);
    n.output = std::move(out);
    n.attribute = std::move(attrs);
    if (domain == "com.microsoft") microsoft_ = true;
    out_.graph.node.push_back(std::move(n));
  }

  std::string init(const std::string& stem, const Tensor& t) {
    const std::string n = fresh(stem);
    out_.graph.initializer.push_back(from_tensor(n, t));
    return n;
  }
  std::string scalar_f(const std::string& stem, double v) {
    Tensor t(Shape{}, DType::kF32);
    t.data<float>()[0] = static_cast<float>(v);
    return init(stem, t);
  }
  std::string scalar_zp(const std::string& stem, int64_t z, DType d) {
    Tensor t(Shape{}, d);
    if (d == DType::kU8)
      t.data<uint8_t>()[0] = static_cast<uint8_t>(z);
    else
      t.data<int8_t>()[0] = static_cast<int8_t>(z);
    return init(stem, t);
  }

  // Scale and zero point initializers of an activation tensor's grid (cached).
  std::pair<std::string, std::string> grid(int t) {
    if (auto it = grid_.find(t); it != grid_.end()) return it->second;
    const IntegerTensor& x = m_.tensors.at(t);
    if (x.scale.size() != 1 || x.zero_point.size() != 1)
      LOWBIT_THROW(UnsupportedError, "export_onnx: activation tensor '", x.name,
                   "' has per-channel parameters; ONNX activations are per tensor");
    auto g = std::make_pair(scalar_f(names_[t] + "_scale", x.scale[0]),
                            scalar_zp(names_[t] + "_zero_point", x.zero_point[0], x.dtype));
    grid_[t] = g;
    return g;
  }

  // The float DequantizeLinear of tensor t's codes (cached), in t's layout.
  std::string dq(int t) {
    if (auto it = dq_.find(t); it != dq_.end()) return it->second;
    const auto [s, z] = grid(t);
    const std::string y = names_[t] + "_dq";
    node("DequantizeLinear", {names_[t], s, z}, {y});
    dq_[t] = y;
    return y;
  }

  // Codes of t in NHWC order (a Transpose of the NCHW codes if needed, cached).
  std::string plain(int t) {
    if (!nchw_[t]) return names_[t];
    if (auto it = plain_.find(t); it != plain_.end()) return it->second;
    const std::string y = names_[t] + "_nhwc";
    node("Transpose", {names_[t]}, {y}, {attr_ints("perm", {0, 2, 3, 1})});
    plain_[t] = y;
    return y;
  }

  // The clamp [lo, hi] of the output codes of `op` (its activation and act_min/act_max).
  std::pair<int64_t, int64_t> clamp_of(const IntegerOp& op) {
    const IntegerTensor& y = m_.tensors.at(op.output);
    const QuantRange full = quant_range(y.dtype);
    int64_t lo = full.min, hi = full.max;
    const std::string act = op.attrs.s("activation", "none");
    if (act != "none") {
      const QuantRange r =
          activation_range(static_cast<float>(op.attrs.f("output_scale", y.scale[0])),
                           static_cast<int32_t>(op.attrs.i("output_zero_point", y.zero_point[0])),
                           fused_activation_from_name(act), y.dtype);
      lo = std::max<int64_t>(lo, r.min);
      hi = std::min<int64_t>(hi, r.max);
    }
    lo = std::max(lo, op.attrs.i("act_min", lo));
    hi = std::min(hi, op.attrs.i("act_max", hi));
    return {lo, hi};
  }

  // Quantizes the float `v` (already in the output's layout) to op.output's grid, with the
  // op's clamp as a Relu or Clip before the Q where the Q's range does not imply it.
  void quantize_out(const std::string& v, const IntegerOp& op, bool layout_nchw) {
    const int t = op.output;
    const IntegerTensor& y = m_.tensors.at(t);
    const auto [lo, hi] = clamp_of(op);
    const QuantRange full = quant_range(y.dtype);
    std::string x = v;
    const int64_t zp = y.zero_point.at(0);
    if (lo != full.min || hi != full.max) {
      const std::string c = fresh(names_[t] + "_clamped");
      if (hi == full.max && lo == zp) {
        node("Relu", {x}, {c});
      } else {
        const double s = y.scale.at(0);
        const std::string mn = scalar_f(names_[t] + "_min", s * static_cast<double>(lo - zp));
        const std::string mx = scalar_f(names_[t] + "_max", s * static_cast<double>(hi - zp));
        node("Clip", {x, mn, mx}, {c});
      }
      x = c;
    }
    const auto [s, z] = grid(t);
    node("QuantizeLinear", {x, s, z}, {names_[t]});
    nchw_[t] = layout_nchw;
  }

  // QOperator: an op whose QLinear form wrote the codes `raw` (full range) on op.output's
  // grid; a narrower clamp follows as DQ -> Relu/Clip -> Q.
  void finish_codes(const std::string& raw, const IntegerOp& op, bool layout_nchw) {
    const IntegerTensor& y = m_.tensors.at(op.output);
    const auto [lo, hi] = clamp_of(op);
    const QuantRange full = quant_range(y.dtype);
    if (lo == full.min && hi == full.max) {
      node("Identity", {raw}, {names_[op.output]});
      nchw_[op.output] = layout_nchw;
      return;
    }
    const auto [s, z] = grid(op.output);
    const std::string f = fresh(names_[op.output] + "_raw_dq");
    node("DequantizeLinear", {raw, s, z}, {f});
    quantize_out(f, op, layout_nchw);
  }

  // Weight [KH, KW, I, O] (qconv2d) as ONNX [O, I, KH, KW].
  static Tensor conv_weight(const Tensor& w) {
    const int64_t kh = w.shape()[0], kw = w.shape()[1], ci = w.shape()[2], co = w.shape()[3];
    Tensor r(Shape{co, ci, kh, kw}, DType::kS8);
    const int8_t* src = w.data<int8_t>();
    int8_t* dst = r.data<int8_t>();
    for (int64_t a = 0; a < kh; ++a)
      for (int64_t b = 0; b < kw; ++b)
        for (int64_t i = 0; i < ci; ++i)
          for (int64_t o = 0; o < co; ++o)
            dst[((o * ci + i) * kh + a) * kw + b] = src[((a * kw + b) * ci + i) * co + o];
    return r;
  }

  struct WeightParams {
    std::string w, scale, zp, bias, bias_scale, bias_zp;
  };
  // The weight (in ONNX layout `w_onnx`), its per-channel scales and zero points, and the bias
  // with its scale f32(s_in) * f32(s_w[c]).
  WeightParams weights(const IntegerOp& op, const Tensor& w_onnx, int64_t channels) {
    const std::string stem = names_[op.output];
    WeightParams p;
    p.w = init(stem + "_w", w_onnx);
    const std::vector<double>& ws = op.attrs.floats("weight_scales");
    const bool per_channel = ws.size() > 1;
    if (per_channel && static_cast<int64_t>(ws.size()) != channels)
      LOWBIT_THROW(ValueError, "export_onnx: op '", op.op, "' (", op.layer, "): ", ws.size(),
                   " weight scales for ", channels, " channels");
    const int64_t n = per_channel ? channels : 1;
    Tensor s(per_channel ? Shape{n} : Shape{}, DType::kF32), z(s.shape(), DType::kS8);
    Tensor bs(Shape{channels}, DType::kF32), bz(Shape{channels}, DType::kS32);
    const float s_in = static_cast<float>(op.attrs.f("input_scale"));
    for (int64_t c = 0; c < n; ++c) {
      s.data<float>()[c] = static_cast<float>(ws[c]);
      z.data<int8_t>()[c] = 0;
    }
    for (int64_t c = 0; c < channels; ++c) {
      bs.data<float>()[c] = bias_scale(s_in, static_cast<float>(ws[per_channel ? c : 0]));
      bz.data<int32_t>()[c] = 0;
    }
    p.scale = init(stem + "_w_scale", s);
    p.zp = init(stem + "_w_zero_point", z);
    p.bias = init(stem + "_b", m_.tensors.at(op.inputs.at(2)).data);
    p.bias_scale = init(stem + "_b_scale", bs);
    p.bias_zp = init(stem + "_b_zero_point", bz);
    return p;
  }

  std::vector<AttributeProto> conv_attrs(const IntegerOp& op, const Shape& x, const Shape& w) {
    const auto s = pair_attr(op.attrs, "strides", {1, 1});
    const auto d = pair_attr(op.attrs, "dilations", {1, 1});
    const std::array<int64_t, 2> k{w[0], w[1]};
    return {attr_ints("kernel_shape", {k[0], k[1]}), attr_ints("strides", {s[0], s[1]}),
            attr_ints("dilations", {d[0], d[1]}),
            attr_ints("pads", onnx_pads(op.attrs, x[1], x[2], k, s, d)),
            attr_int("group", op.attrs.i("groups", 1))};
  }

  std::vector<AttributeProto> pool_attrs(const IntegerOp& op, const Shape& x, bool avg) {
    const auto k = pair_attr(op.attrs, "ksize", {1, 1});
    const auto s = pair_attr(op.attrs, "strides", k);
    std::vector<AttributeProto> a = {
        attr_ints("kernel_shape", {k[0], k[1]}), attr_ints("strides", {s[0], s[1]}),
        attr_ints("pads", onnx_pads(op.attrs, x[1], x[2], k, s, {1, 1}))};
    if (avg) a.push_back(attr_int("count_include_pad", 0));
    return a;
  }

  // The codes of input k of op in NCHW (rank 4) or as they are.
  std::string nchw(int t) {
    if (nchw_[t] || m_.tensors[t].shape.rank() != 4) return names_[t];
    const std::string y = names_[t] + "_nchw";
    node("Transpose", {names_[t]}, {y}, {attr_ints("perm", {0, 3, 1, 2})});
    names_[t] = y;
    nchw_[t] = true;
    return y;
  }

  void emit(const IntegerOp& op) {
    const bool qop = opt_.format == IntegerFormat::kQOperator;
    const int out = op.output;
    const IntegerTensor& y = m_.tensors.at(out);
    const std::string& o = names_[out];
    if (op.op == "quantize") {
      const int x = op.inputs.at(0);
      const std::string s = scalar_f(o + "_scale", op.attrs.f("scale"));
      const std::string z = scalar_zp(o + "_zero_point", op.attrs.i("zero_point"), y.dtype);
      node("QuantizeLinear", {names_[x], s, z}, {o});
      grid_[out] = {s, z};
      nchw_[out] = nchw_[x];
    } else if (op.op == "dequantize") {
      const int x = op.inputs.at(0);
      const std::string s = scalar_f(o + "_scale", op.attrs.f("scale"));
      const std::string z =
          scalar_zp(o + "_zero_point", op.attrs.i("zero_point"), m_.tensors.at(x).dtype);
      node("DequantizeLinear", {names_[x], s, z}, {o});
      nchw_[out] = nchw_[x];
    } else if (op.op == "requantize") {
      quantize_out(dq(op.inputs.at(0)), op, nchw_[op.inputs.at(0)]);
    } else if (op.op == "qconv2d") {
      const int x = op.inputs.at(0);
      const std::string xn = nchw(x);
      const Tensor& w = m_.tensors.at(op.inputs.at(1)).data;
      const WeightParams p = weights(op, conv_weight(w), w.shape()[3]);
      auto attrs = conv_attrs(op, m_.tensors.at(x).shape, w.shape());
      if (qop) {
        const auto [xs, xz] = grid(x);
        const auto [ys, yz] = grid(out);
        const std::string raw = fresh(o + "_raw");
        node("QLinearConv", {xn, xs, xz, p.w, p.scale, p.zp, ys, yz, p.bias}, {raw},
             std::move(attrs));
        finish_codes(raw, op, true);
      } else {
        const std::string wd = fresh(o + "_w_dq"), bd = fresh(o + "_b_dq"), c = fresh(o + "_conv");
        node("DequantizeLinear", {p.w, p.scale, p.zp}, {wd}, {attr_int("axis", 0)});
        node("DequantizeLinear", {p.bias, p.bias_scale, p.bias_zp}, {bd}, {attr_int("axis", 0)});
        node("Conv", {dq(x), wd, bd}, {c}, std::move(attrs));
        quantize_out(c, op, true);
      }
    } else if (op.op == "qfully_connected") {
      const int x = op.inputs.at(0);
      const Tensor& w = m_.tensors.at(op.inputs.at(1)).data;  // [K, U]
      const int64_t k = w.shape()[0], u = w.shape()[1];
      const std::string xp = plain(x);
      if (qop) {
        // A 1x1 QLinearConv on [-1, K, 1, 1]: per-channel weights and the int32 bias in one op.
        Tensor w4(Shape{u, k, 1, 1}, DType::kS8);
        for (int64_t i = 0; i < k; ++i)
          for (int64_t j = 0; j < u; ++j)
            w4.data<int8_t>()[j * k + i] = w.data<int8_t>()[i * u + j];
        const WeightParams p = weights(op, w4, u);
        const std::string r4 = fresh(o + "_4d"), raw4 = fresh(o + "_raw4"), raw = fresh(o + "_raw");
        node("Reshape", {xp, init(o + "_shape4", Tensor::from_vector<int64_t>({-1, k, 1, 1}, {4}))},
             {r4});
        const auto [xs, xz] = grid(x);
        const auto [ys, yz] = grid(out);
        node("QLinearConv", {r4, xs, xz, p.w, p.scale, p.zp, ys, yz, p.bias}, {raw4},
             {attr_ints("kernel_shape", {1, 1})});
        std::vector<int64_t> back = y.shape.dims();
        back[0] = -1;
        node("Reshape",
             {raw4, init(o + "_shape",
                         Tensor::from_vector<int64_t>(back, {static_cast<int64_t>(back.size())}))},
             {raw});
        finish_codes(raw, op, false);
      } else {
        const WeightParams p = weights(op, w, u);
        const std::string wd = fresh(o + "_w_dq"), bd = fresh(o + "_b_dq"), mm = fresh(o + "_mm"),
                          ad = fresh(o + "_add");
        node("DequantizeLinear", {p.w, p.scale, p.zp}, {wd}, {attr_int("axis", 1)});
        node("DequantizeLinear", {p.bias, p.bias_scale, p.bias_zp}, {bd}, {attr_int("axis", 0)});
        const std::string xd = nchw_[x] ? fresh(o + "_x_dq") : dq(x);
        if (nchw_[x]) {
          const auto [xs, xz] = grid(x);
          node("DequantizeLinear", {xp, xs, xz}, {xd});
        }
        node("MatMul", {xd, wd}, {mm});
        node("Add", {mm, bd}, {ad});
        quantize_out(ad, op, false);
      }
    } else if (op.op == "qadd") {
      int a = op.inputs.at(0), b = op.inputs.at(1);
      if (nchw_[a] != nchw_[b]) {
        nchw(a);
        nchw(b);
      }
      const bool layout = nchw_[a];
      if (qop) {
        const auto [as, az] = grid(a);
        const auto [bs, bz] = grid(b);
        const auto [ys, yz] = grid(out);
        const std::string raw = fresh(o + "_raw");
        node("QLinearAdd", {names_[a], as, az, names_[b], bs, bz, ys, yz}, {raw}, {},
             "com.microsoft");
        finish_codes(raw, op, layout);
      } else {
        const std::string s = fresh(o + "_sum");
        node("Add", {dq(a), dq(b)}, {s});
        quantize_out(s, op, layout);
      }
    } else if (op.op == "qavg_pool2d" || op.op == "qmax_pool2d") {
      const bool avg = op.op == "qavg_pool2d";
      const int x = op.inputs.at(0);
      const std::string xn = nchw(x);
      auto attrs = pool_attrs(op, m_.tensors.at(x).shape, avg);
      if (!avg && !grid_.count(out)) grid_[out] = grid(x);
      if (qop && avg) {
        const auto [xs, xz] = grid(x);
        const auto [ys, yz] = grid(out);
        const std::string raw = fresh(o + "_raw");
        attrs.push_back(attr_int("channels_last", 0));
        node("QLinearAveragePool", {xn, xs, xz, ys, yz}, {raw}, std::move(attrs), "com.microsoft");
        finish_codes(raw, op, true);
      } else if (qop) {
        const std::string raw = fresh(o + "_raw");
        node("MaxPool", {xn}, {raw}, std::move(attrs));
        finish_codes(raw, op, true);
      } else {
        const std::string p = fresh(o + (avg ? "_avg" : "_max"));
        node(avg ? "AveragePool" : "MaxPool", {dq(x)}, {p}, std::move(attrs));
        quantize_out(p, op, true);
      }
    } else if (op.op == "qlogistic" || op.op == "qtanh" || op.op == "qsoftmax") {
      const int x = op.inputs.at(0);
      const bool layout = nchw_[x];
      if (qop && op.op == "qlogistic") {
        const auto [xs, xz] = grid(x);
        const auto [ys, yz] = grid(out);
        node("QLinearSigmoid", {names_[x], xs, xz, ys, yz}, {o}, {}, "com.microsoft");
        nchw_[out] = layout;
        return;
      }
      const std::string f = fresh(o + "_f");
      if (op.op == "qsoftmax") {
        if (op.attrs.f("beta", 1.0) != 1.0)
          LOWBIT_THROW(UnsupportedError, "export_onnx: op 'qsoftmax' (", op.layer, "): beta ",
                       op.attrs.f("beta", 1.0), " != 1 has no ONNX Softmax form");
        const int rank = m_.tensors.at(x).shape.rank();
        node("Softmax", {dq(x)}, {f}, {attr_int("axis", layout && rank == 4 ? 1 : -1)});
      } else {
        node(op.op == "qlogistic" ? "Sigmoid" : "Tanh", {dq(x)}, {f});
      }
      quantize_out(f, op, layout);
    } else if (op.op == "concat") {
      const int rank = y.shape.rank();
      int64_t axis = op.attrs.i("axis", 0);
      if (axis < 0) axis += rank;
      bool any_nchw = false;
      for (int t : op.inputs) any_nchw = any_nchw || nchw_[t];
      std::vector<std::string> ins;
      for (int t : op.inputs) ins.push_back(any_nchw ? nchw(t) : names_[t]);
      if (any_nchw) axis = std::vector<int64_t>{0, 2, 3, 1}.at(axis);
      node("Concat", ins, {o}, {attr_int("axis", axis)});
      nchw_[out] = any_nchw;
      if (!grid_.count(out) && y.scale.size() == 1) grid(out);
    } else if (op.op == "reshape") {
      const int x = op.inputs.at(0);
      std::vector<int64_t> dims = op.attrs.ints("shape");
      const std::string r = y.shape.rank() == 4 ? fresh(o + "_nhwc") : o;
      node("Reshape",
           {plain(x), init(o + "_shape", Tensor::from_vector<int64_t>(
                                             dims, {static_cast<int64_t>(dims.size())}))},
           {r});
      if (y.shape.rank() == 4) {
        node("Transpose", {r}, {o}, {attr_ints("perm", {0, 3, 1, 2})});
        nchw_[out] = true;
      }
    } else if (op.op == "gather") {
      const int table = op.inputs.at(0), ids = op.inputs.at(1);
      const IntegerTensor& tt = m_.tensors.at(table);
      if (!tt.data.defined())
        LOWBIT_THROW(UnsupportedError, "export_onnx: op 'gather' (", op.layer,
                     ") of a computed tensor: only an Embedding's constant table is exported");
      const std::string tn = init(names_[table], tt.data);
      node("Gather", {tn, plain(ids)}, {o}, {attr_int("axis", op.attrs.i("axis", 0))});
    } else if (op.op == "cast") {
      const DType d = op.attrs.dtype("dtype");
      node("Cast", {plain(op.inputs.at(0))}, {o}, {attr_int("to", onnx_type(d))});
    }
  }

  const IntegerModel& m_;
  IntegerExportOptions opt_;
  ModelProto out_;
  std::vector<std::string> names_;  // ONNX name of each tensor's value (codes, or f32/ids)
  std::vector<bool> nchw_;          // that value is NCHW (a rank-4 activation)
  std::map<int, std::pair<std::string, std::string>> grid_;
  std::map<int, std::string> dq_, plain_;
  int counter_ = 0;
  bool microsoft_ = false;
};

}  // namespace

ModelProto integer_to_onnx(const IntegerModel& im, const IntegerExportOptions& options) {
  return Exporter(im, options).run();
}

void export_onnx(const IntegerModel& im, const std::string& path,
                 const IntegerExportOptions& options) {
  write_model(path, integer_to_onnx(im, options));
}

}  // namespace lowbit::onnx
