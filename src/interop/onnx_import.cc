// ONNX float models -> nn::Model (include/lowbit/interop/onnx_import.h).
//
// Every ONNX value becomes a Val: a constant (evaluated at import, interop/onnx_import_const.h),
// a tensor of sequence lengths, or a symbolic lowbit tensor `t` with its layout `perm`: lowbit
// dim i holds ONNX dim perm[i] (perm[0] is the batch dim, always lowbit dim 0); ONNX dims that
// perm does not list have size 1 and lowbit does not hold them. A Transpose, Squeeze or
// Unsqueeze only rewrites perm; layers that need a given layout get it through as_layout,
// which adds a Permute / Reshape only when the record differs from what is needed.
#include "lowbit/interop/onnx_import.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "interop/onnx_import_const.h"
#include "lowbit/error.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/masking.h"
#include "lowbit/ops/shape_ops.h"

namespace lowbit::onnx {

namespace {

using detail::Const;
using detail::kBatch;
using Perm = std::vector<int>;

struct Val {
  enum Kind { kDyn, kConst, kLengths } kind = kDyn;
  nn::KTensor t;  // kDyn, kLengths
  Perm perm;      // kDyn
  int rank = 0;   // kDyn: the ONNX rank
  Const c;        // kConst
  // kDyn of rank 2 only: a flatten kept in lowbit's order: lowbit feature i is ONNX feature
  // rows[i] (empty: the same). Only Gemm / MatMul read such a value (they permute their rows).
  std::vector<int64_t> rows;
};

const AttributeProto* find_attr(const NodeProto& n, const std::string& name) {
  for (const AttributeProto& a : n.attribute)
    if (a.name == name) return &a;
  return nullptr;
}

std::string ints_str(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += v[i] == kBatch ? std::string("batch") : std::to_string(v[i]);
  }
  return s + "]";
}

// x (row-major dims `dims`) with its axes in the order `order` (a permutation of 0..rank-1).
Tensor transpose_host(const Tensor& x, const std::vector<int64_t>& dims, const Perm& order) {
  return ops::transpose(ops::reshape(x.to(DType::kF32), dims),
                        std::vector<int64_t>(order.begin(), order.end()));
}

class Importer {
 public:
  Importer(const ModelProto& m, const ImportOptions& o) : m_(m), o_(o) {}

  nn::ModelPtr run() {
    opset_ = default_opset(m_);
    if (opset_ < 11 || opset_ > 17)
      LOWBIT_THROW(UnsupportedError, "ONNX import: the model imports opset ", opset_,
                   " of the default domain; the importer supports opsets 11 to 17 (re-export "
                   "with opset_version in 11..17)");
    const GraphProto& g = m_.graph;
    for (const TensorProto& t : g.initializer) {
      Val v;
      v.kind = Val::kConst;
      v.c = detail::const_from_tensor(t);
      vals_[t.name] = std::move(v);
    }
    for (const NodeProto& n : g.node)
      for (const std::string& in : n.input)
        if (!in.empty()) users_[in].push_back(&n);
    for (const ValueInfoProto& vi : g.input) {
      if (vals_.count(vi.name)) continue;  // an initializer also listed as an input (IR < 4)
      add_input(vi);
    }
    for (const NodeProto& n : g.node) {
      cur_ = &n;
      if (skip_.count(&n)) continue;
      node(n);
    }
    cur_ = nullptr;
    std::vector<nn::KTensor> outs;
    for (const ValueInfoProto& vi : g.output) {
      const Val& v = get_named(vi.name);
      if (v.kind != Val::kDyn)
        LOWBIT_THROW(UnsupportedError, "ONNX import: graph output '", vi.name,
                     "' is a constant or a graph input: lowbit outputs are layer outputs");
      const bool cl = v.rank >= 3 && v.perm == channels_last(v.rank);
      if (cl && !o_.onnx_layout) {
        outs.push_back(v.t);
      } else {
        outs.push_back(onnx_order(v, vi.name + "_to_onnx").t);
      }
    }
    std::string name = o_.name.empty() ? sanitize(g.name) : o_.name;
    if (name.empty()) name = "onnx_model";
    return nn::Model::create(inputs_, outs, name);
  }

 private:
  // ---- errors ----
  [[noreturn]] void fail(const std::string& what) const {
    if (!cur_) LOWBIT_THROW(UnsupportedError, "ONNX import: ", what);
    LOWBIT_THROW(UnsupportedError, "ONNX import: node '", cur_->name, "' (", cur_->op_type,
                 ", opset ", opset_, "): ", what);
  }
  [[noreturn]] void fail_attr(const std::string& attr, const std::string& why) const {
    fail("attribute '" + attr + "' " + why);
  }
  // Refuses attributes of the current node that are not in `known`.
  void check_attrs(std::initializer_list<const char*> known) const {
    for (const AttributeProto& a : cur_->attribute) {
      bool ok = false;
      for (const char* k : known) ok = ok || a.name == k;
      if (!ok) fail_attr(a.name, "is not supported by the importer for this op");
    }
  }
  int64_t attr_i(const std::string& name, int64_t def) const {
    const AttributeProto* a = find_attr(*cur_, name);
    return a ? a->i : def;
  }
  float attr_f(const std::string& name, float def) const {
    const AttributeProto* a = find_attr(*cur_, name);
    return a ? a->f : def;
  }
  std::string attr_s(const std::string& name, const std::string& def) const {
    const AttributeProto* a = find_attr(*cur_, name);
    return a ? a->s : def;
  }
  std::vector<int64_t> attr_is(const std::string& name, std::vector<int64_t> def) const {
    const AttributeProto* a = find_attr(*cur_, name);
    return a ? a->ints : def;
  }

  // ---- names ----
  static std::string sanitize(const std::string& s) {
    std::string o;
    for (char ch : s) {
      const bool ok = std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.';
      o += ok ? ch : '_';
    }
    const size_t b = o.find_first_not_of('_');
    return b == std::string::npos ? "" : o.substr(b);
  }
  std::string layer_name(const std::string& suffix = "") {
    std::string base = sanitize(cur_ ? (cur_->name.empty() ? cur_->op_type : cur_->name) : "");
    if (base.empty()) base = "onnx";
    base += suffix;
    std::string n = base;
    for (int k = 1; used_names_.count(n); ++k) n = base + "_" + std::to_string(k);
    used_names_.insert(n);
    return n;
  }

  // ---- values ----
  const Val& get_named(const std::string& name) const {
    auto it = vals_.find(name);
    if (it == vals_.end())
      LOWBIT_THROW(ValueError, "ONNX import: value '", name, "' is used",
                   cur_ ? " by node '" + cur_->name + "' (" + cur_->op_type + ")" : "",
                   " but no node, initializer or graph input defines it");
    return it->second;
  }
  bool has_in(size_t i) const { return i < cur_->input.size() && !cur_->input[i].empty(); }
  const Val& in(size_t i) const {
    if (!has_in(i)) fail("input " + std::to_string(i) + " is missing");
    return get_named(cur_->input[i]);
  }
  const Val& dyn(size_t i) const {
    const Val& v = in(i);
    if (v.kind != Val::kDyn)
      fail("input " + std::to_string(i) + " ('" + cur_->input[i] +
           "') must be a tensor computed from the graph inputs here");
    if (!v.rows.empty() && cur_->op_type != "Gemm" && cur_->op_type != "MatMul")
      fail("internal: a flatten in lowbit order reaches a " + cur_->op_type);
    return v;
  }
  const Const& cst(size_t i, const std::string& what) const {
    const Val& v = in(i);
    if (v.kind != Val::kConst)
      fail("input " + std::to_string(i) + " (" + what + ", '" + cur_->input[i] +
           "') must be a constant (an initializer or computed from constants)");
    return v.c;
  }
  void set_out(size_t i, Val v) {
    if (i >= cur_->output.size()) return;
    if (!cur_->output[i].empty()) vals_[cur_->output[i]] = std::move(v);
  }
  bool out_used(size_t i) const {
    if (i >= cur_->output.size() || cur_->output[i].empty()) return false;
    const std::string& n = cur_->output[i];
    if (users_.count(n)) return true;
    for (const ValueInfoProto& o : m_.graph.output)
      if (o.name == n) return true;
    return false;
  }
  Val dyn_val(nn::KTensor t, Perm perm, int rank) const {
    Val v;
    v.t = std::move(t);
    v.perm = std::move(perm);
    v.rank = rank;
    return v;
  }

  static Perm identity(int r) {
    Perm p(r);
    std::iota(p.begin(), p.end(), 0);
    return p;
  }
  static Perm channels_last(int r) {  // [0, 2, ..., r-1, 1]
    Perm p = {0};
    for (int i = 2; i < r; ++i) p.push_back(i);
    p.push_back(1);
    return p;
  }
  // The ONNX dims of v (the batch dim kBatch; dims lowbit does not hold: 1).
  std::vector<int64_t> onnx_dims(const Val& v) const {
    std::vector<int64_t> d(v.rank, 1);
    const Shape& s = v.t.shape();
    for (size_t i = 0; i < v.perm.size(); ++i) d[v.perm[i]] = i == 0 ? kBatch : s[i];
    return d;
  }
  int batch_axis(const Val& v) const { return v.perm[0]; }

  nn::KTensor call(const nn::LayerPtr& l, const std::vector<nn::KTensor>& xs,
                   nn::CallOptions opt = {}) {
    return (*l)(xs, std::move(opt)).at(0);
  }
  nn::KTensor call1(const nn::LayerPtr& l, const nn::KTensor& x) { return (*l)(x); }

  static void set_weight(nn::Layer& l, const std::string& name, const Tensor& v) {
    for (nn::Weight& w : l.weights())
      if (w.name == name) {
        if (w.value.shape() != v.shape())
          LOWBIT_THROW(ValueError, "ONNX import: layer '", l.name(), "' weight '", name,
                       "' expects ", w.value.shape().str(), " but the ONNX model gives ",
                       v.shape().str());
        w.value.copy_from(v);
        return;
      }
    LOWBIT_THROW(ValueError, "ONNX import: layer '", l.name(), "' has no weight '", name, "'");
  }

  // v's lowbit tensor in the layout `tp` (same ONNX rank, same batch axis): a Permute of the
  // dims both hold, then a Reshape when the sets of held dims differ (only size-1 dims).
  nn::KTensor as_layout(const Val& v, const Perm& tp, const std::string& suffix) {
    if (tp.size() > 0 && v.perm[0] != tp[0])
      fail("needs the batch dim (ONNX dim " + std::to_string(v.perm[0]) + ") moved to ONNX dim " +
           std::to_string(tp[0]) + ": lowbit tensors keep the batch dim first");
    if (v.perm == tp) return v.t;
    const std::vector<int64_t> d = onnx_dims(v);
    // The held dims that tp also lists, in tp's order.
    std::vector<int64_t> keep_pos;  // lowbit positions of v
    for (size_t j = 1; j < tp.size(); ++j)
      for (size_t i = 1; i < v.perm.size(); ++i)
        if (v.perm[i] == tp[j]) keep_pos.push_back(static_cast<int64_t>(i));
    for (size_t i = 1; i < v.perm.size(); ++i)
      if (std::find(tp.begin(), tp.end(), v.perm[i]) == tp.end() && d[v.perm[i]] != 1)
        fail("internal: layout change drops a dim of size " + std::to_string(d[v.perm[i]]));
    nn::KTensor t = v.t;
    const bool same_set = keep_pos.size() + 1 == v.perm.size();
    bool sorted = std::is_sorted(keep_pos.begin(), keep_pos.end());
    if (!sorted) {
      if (!same_set) {
        // drop the dims tp does not hold first (they are size 1)
        std::vector<int64_t> tgt;
        Perm np = {v.perm[0]};
        for (size_t i = 1; i < v.perm.size(); ++i)
          if (std::find(tp.begin(), tp.end(), v.perm[i]) != tp.end()) {
            tgt.push_back(t.shape()[static_cast<int>(i)]);
            np.push_back(v.perm[i]);
          }
        t = call1(nn::Reshape(tgt, {.name = layer_name(suffix + "_squeeze")}), t);
        return as_layout(dyn_val(t, np, v.rank), tp, suffix);
      }
      std::vector<int64_t> dims;
      for (int64_t p : keep_pos) dims.push_back(p);
      t = call1(nn::Permute(dims, {.name = layer_name(suffix + "_permute")}), t);
    }
    if (keep_pos.size() + 1 != v.perm.size() || tp.size() != v.perm.size()) {
      std::vector<int64_t> tgt;
      for (size_t j = 1; j < tp.size(); ++j) tgt.push_back(d[tp[j]]);
      t = call1(nn::Reshape(tgt, {.name = layer_name(suffix + "_reshape")}), t);
    }
    return t;
  }
  // v with its held dims in ONNX's order (so that lowbit's row-major order is ONNX's).
  Val onnx_order(const Val& v, const std::string& suffix) {
    const std::vector<int64_t> d = onnx_dims(v);
    Perm tp = {v.perm[0]};
    for (int j = 0; j < v.rank; ++j)
      if (j != v.perm[0] && std::find(v.perm.begin(), v.perm.end(), j) != v.perm.end())
        tp.push_back(j);
    return dyn_val(as_layout(v, tp, suffix), tp, v.rank);
  }
  // Whether lowbit's row-major order of v's non-batch elements is ONNX's.
  bool in_onnx_order(const Val& v) const {
    const std::vector<int64_t> d = onnx_dims(v);
    int last = -1;
    for (size_t i = 1; i < v.perm.size(); ++i) {
      if (d[v.perm[i]] == 1) continue;
      if (v.perm[i] < last) return false;
      last = v.perm[i];
    }
    return true;
  }

  // ---- graph inputs ----
  void add_input(const ValueInfoProto& vi) {
    const std::string nm = sanitize(vi.name).empty() ? "input" : sanitize(vi.name);
    used_names_.insert(nm);
    if (!vi.has_shape || vi.dims.empty())
      LOWBIT_THROW(UnsupportedError, "ONNX import: graph input '", vi.name,
                   "' has no shape or rank 0: lowbit inputs have a batch dim and known dims");
    std::vector<int64_t> rest;
    for (size_t i = 1; i < vi.dims.size(); ++i) {
      if (vi.dims[i].dim_value < 0)
        LOWBIT_THROW(UnsupportedError, "ONNX import: graph input '", vi.name, "' dim ", i,
                     " is symbolic ('", vi.dims[i].dim_param,
                     "'): only the batch dim (dim 0) may be; export with fixed sizes");
      rest.push_back(vi.dims[i].dim_value);
    }
    int64_t row = 1;
    for (int64_t d : rest) {
      if (d < 1 || d > (int64_t{1} << 24) || row > (int64_t{1} << 31) / d)
        LOWBIT_THROW(UnsupportedError, "ONNX import: graph input '", vi.name, "' has dims ",
                     ints_str(rest),
                     " (batch excluded): each dim must be in [1, 2^24] and a "
                     "batch row at most 2^31 elements");
      row *= d;
    }
    const int r = static_cast<int>(vi.dims.size());
    if (vi.elem_type == kInt64 || vi.elem_type == kInt32) {
      if (r != 1)
        LOWBIT_THROW(UnsupportedError, "ONNX import: integer graph input '", vi.name,
                     "' must be [batch] sequence lengths (rank 1)");
      Val v;
      v.kind = Val::kLengths;
      v.t = nn::Input(Shape{}, vi.elem_type == kInt64 ? DType::kS64 : DType::kS32, nm);
      inputs_.push_back(v.t);
      vals_[vi.name] = v;
      return;
    }
    if (vi.elem_type != kFloat)
      LOWBIT_THROW(UnsupportedError, "ONNX import: graph input '", vi.name, "' has elem_type ",
                   vi.elem_type, ": float (1) inputs, or int32/int64 sequence lengths");
    bool channel_first_user = false;
    if (r >= 3 && !o_.onnx_layout)
      for (const NodeProto* u : users_[vi.name]) {
        const std::string& op = u->op_type;
        channel_first_user = channel_first_user || op == "Conv" || op == "MaxPool" ||
                             op == "AveragePool" || op == "GlobalAveragePool" ||
                             op == "GlobalMaxPool" || op == "BatchNormalization" || op == "Pad";
      }
    Perm p = channel_first_user ? channels_last(r) : identity(r);
    std::vector<int64_t> lb;
    for (size_t i = 1; i < p.size(); ++i) lb.push_back(rest[p[i] - 1]);
    nn::KTensor t = nn::Input(Shape(lb), DType::kF32, nm);
    inputs_.push_back(t);
    vals_[vi.name] = dyn_val(t, p, r);
  }

  // ---- nodes ----
  void node(const NodeProto& n) {
    if (!n.domain.empty() && n.domain != "ai.onnx")
      fail("domain '" + n.domain + "' is not supported (only the default ONNX domain)");
    const std::string& op = n.op_type;
    if (std::all_of(n.output.begin(), n.output.end(),
                    [](const std::string& o) { return o.empty(); }))
      fail("the node has no output");
    if (n.output[0].empty() && op != "LSTM" && op != "GRU")
      fail("output 0 is omitted (only LSTM / GRU may omit it)");
    // Constant folding: every given input constant (or Shape of a tensor).
    bool all_const = true;
    for (size_t i = 0; i < n.input.size(); ++i)
      if (!n.input[i].empty() && get_named(n.input[i]).kind != Val::kConst) all_const = false;
    if (op == "Shape" && in(0).kind == Val::kDyn) {
      Const s;
      s.dtype = kFloat;
      s.dims = onnx_dims(in(0));
      fold({&s});
      return;
    }
    if (all_const && op != "LSTM" && op != "GRU") {
      std::vector<const Const*> ins;
      static const Const kNone = [] {
        Const c;
        c.dtype = kUndefined;
        return c;
      }();
      for (size_t i = 0; i < n.input.size(); ++i)
        ins.push_back(n.input[i].empty() ? &kNone : &get_named(n.input[i]).c);
      if (fold(ins)) return;
    }
    if (op == "Identity" || (op == "Cast" && in(0).kind == Val::kLengths)) {
      if (op == "Cast") check_attrs({"to"});
      set_out(0, in(0));
      return;
    }
    if (op == "Dropout") return dropout();
    if (op == "Conv") return conv();
    if (op == "Gemm") return gemm();
    if (op == "MatMul") return matmul();
    if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div") return binary();
    if (op == "BatchNormalization") return batch_norm();
    if (op == "Relu" || op == "Sigmoid" || op == "Tanh" || op == "HardSigmoid" ||
        op == "HardSwish" || op == "Clip" || op == "Softmax")
      return activation();
    if (op == "MaxPool" || op == "AveragePool") return pool();
    if (op == "GlobalAveragePool" || op == "GlobalMaxPool") return global_pool();
    if (op == "Flatten") return flatten();
    if (op == "Reshape") return reshape_node();
    if (op == "Transpose") return transpose();
    if (op == "Squeeze" || op == "Unsqueeze") return squeeze();
    if (op == "Concat") return concat();
    if (op == "Pad") return pad();
    if (op == "LSTM" || op == "GRU") return recurrent();
    fail("op type '" + op + "' is not supported by the ONNX importer" +
         (all_const ? " (not even on constants)" : ""));
  }

  bool fold(const std::vector<const Const*>& ins) {
    detail::ConstEnv env;
    env.fail = [this](const std::string& what) { fail(what); };
    env.opset = opset_;
    std::vector<Const> outs;
    if (!detail::eval_const(*cur_, ins, env, outs)) return false;
    for (size_t i = 0; i < outs.size(); ++i) {
      Val v;
      v.kind = Val::kConst;
      v.c = std::move(outs[i]);
      set_out(i, std::move(v));
    }
    return true;
  }

  void dropout() {
    check_attrs({"seed", "ratio"});
    const Val& x = dyn(0);
    if (out_used(1)) fail("output 1 (mask) is used: lowbit's Dropout has no mask output");
    double ratio = attr_f("ratio", 0.5f);
    if (has_in(1)) ratio = cst(1, "ratio").v.at(0);
    if (has_in(2) && cst(2, "training_mode").v.at(0) != 0)
      fail("input 2 (training_mode) is true: only inference-mode Dropout is imported");
    Val y = x;
    y.t = call1(nn::Dropout(ratio, {.name = layer_name()}), x.t);
    set_out(0, y);
  }

  // Spatial padding: "valid", "same" (TensorFlow's, odd cell at the end) or explicit pads that
  // need a ZeroPadding2D first. pads = [begin..., end...] over the spatial dims.
  struct Padding {
    std::string mode;                // valid | same
    std::vector<int64_t> zero_pads;  // non-empty: ZeroPadding2D {t, b, l, r} first
  };
  Padding padding(const std::vector<int64_t>& in_sp, const std::vector<int64_t>& k,
                  const std::vector<int64_t>& s, const std::vector<int64_t>& dil, bool allow_zero,
                  const std::string& zero_why) {
    const size_t n = in_sp.size();
    const std::string ap = attr_s("auto_pad", "NOTSET");
    std::vector<int64_t> pads = attr_is("pads", std::vector<int64_t>(2 * n, 0));
    if (pads.size() != 2 * n)
      fail_attr("pads", "has " + std::to_string(pads.size()) + " values; expected " +
                            std::to_string(2 * n));
    if (ap == "VALID") return {"valid", {}};
    if (ap == "SAME_UPPER") return {"same", {}};
    if (ap != "NOTSET") {
      if (ap != "SAME_LOWER") fail_attr("auto_pad", "= '" + ap + "' is not a valid value");
      // SAME_LOWER: the odd cell at the beginning: explicit pads
      for (size_t i = 0; i < n; ++i) {
        const int64_t keff = (k[i] - 1) * dil[i] + 1, out = (in_sp[i] + s[i] - 1) / s[i];
        const int64_t total = std::max<int64_t>((out - 1) * s[i] + keff - in_sp[i], 0);
        pads[i] = total - total / 2;
        pads[n + i] = total / 2;
      }
    }
    bool zero = true, same = true;
    for (size_t i = 0; i < n; ++i) {
      if (pads[i] < 0 || pads[n + i] < 0) fail_attr("pads", "= " + ints_str(pads) + " is negative");
      zero = zero && pads[i] == 0 && pads[n + i] == 0;
      const int64_t keff = (k[i] - 1) * dil[i] + 1, out = (in_sp[i] + s[i] - 1) / s[i];
      const int64_t total = std::max<int64_t>((out - 1) * s[i] + keff - in_sp[i], 0);
      same = same && pads[i] == total / 2 && pads[n + i] == total - total / 2;
    }
    if (zero) return {"valid", {}};
    if (same) return {"same", {}};
    if (!allow_zero)
      fail_attr("pads",
                "= " + ints_str(pads) + " is neither 0 nor TensorFlow's 'same' pads, " + zero_why);
    if (n != 2) fail_attr("pads", "= " + ints_str(pads) + ": explicit pads only for 2-D ops");
    return {"valid", {pads[0], pads[2], pads[1], pads[3]}};
  }

  // The [N, C, spatial...] input as a channels-last lowbit tensor, and its ONNX dims.
  nn::KTensor channels_last_in(const Val& x, int min_rank, int max_rank, std::vector<int64_t>& d) {
    if (x.rank < min_rank || x.rank > max_rank)
      fail("input 0 has rank " + std::to_string(x.rank) + "; expected " + std::to_string(min_rank) +
           ".." + std::to_string(max_rank));
    if (x.perm[0] != 0) fail("input 0's dim 0 must be the batch dim");
    d = onnx_dims(x);
    return as_layout(x, channels_last(x.rank), "_nhwc");
  }

  void conv() {
    check_attrs({"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"});
    const Val& x = dyn(0);
    std::vector<int64_t> d;
    nn::KTensor t = channels_last_in(x, 3, 4, d);
    const Const& w = cst(1, "weight W");
    if (w.dims.size() != d.size()) fail("input 1 (W) must have rank " + std::to_string(d.size()));
    const size_t n = d.size() - 2;
    const int64_t O = w.dims[0], Ig = w.dims[1], C = d[1];
    const int64_t group = attr_i("group", 1);
    if (group < 1 || C % group || O % group || Ig * group != C)
      fail_attr("group", "= " + std::to_string(group) + " does not match W " + ints_str(w.dims) +
                             " and " + std::to_string(C) + " input channels");
    std::vector<int64_t> k(w.dims.begin() + 2, w.dims.end());
    if (const AttributeProto* ks = find_attr(*cur_, "kernel_shape"); ks && ks->ints != k)
      fail_attr("kernel_shape", "= " + ints_str(ks->ints) + " differs from W's " + ints_str(k));
    const std::vector<int64_t> s = attr_is("strides", std::vector<int64_t>(n, 1));
    const std::vector<int64_t> dil = attr_is("dilations", std::vector<int64_t>(n, 1));
    if (s.size() != n) fail_attr("strides", "must have " + std::to_string(n) + " values");
    if (dil.size() != n) fail_attr("dilations", "must have " + std::to_string(n) + " values");
    bool s1 = true, d1 = true;
    for (size_t i = 0; i < n; ++i) s1 = s1 && s[i] == 1, d1 = d1 && dil[i] == 1;
    if (!s1 && !d1)
      fail_attr("dilations", "> 1 together with strides > 1 is not supported (Keras refuses it)");
    std::vector<int64_t> sp(d.begin() + 2, d.end());
    const Padding p = padding(sp, k, s, dil, true, "");
    if (!p.zero_pads.empty()) {
      if (n != 2) fail_attr("pads", "explicit pads are only imported for 2-D convolutions");
      t = call1(nn::ZeroPadding2D(p.zero_pads, {.name = layer_name("_pad")}), t);
    }
    const bool bias = has_in(2);
    Tensor wt = w.to_f32();
    // W [O, I/g, k...] -> Keras [k..., I/g, O]
    Perm to_keras;
    for (size_t i = 0; i < n; ++i) to_keras.push_back(static_cast<int>(2 + i));
    to_keras.push_back(1);
    to_keras.push_back(0);
    const bool depthwise = group == C && group > 1 && n == 2;
    nn::LayerPtr l;
    const std::string nm = layer_name();
    if (depthwise) {
      l = nn::DepthwiseConv2D(nn::Ints(k), {.strides = nn::Ints(s),
                                            .padding = p.mode,
                                            .depth_multiplier = O / C,
                                            .dilation_rate = nn::Ints(dil),
                                            .use_bias = bias,
                                            .name = nm});
    } else {
      nn::ConvOptions co{.strides = nn::Ints(s),
                         .padding = p.mode,
                         .dilation_rate = nn::Ints(dil),
                         .groups = group,
                         .use_bias = bias,
                         .name = nm};
      l = n == 2 ? nn::Conv2D(O, nn::Ints(k), co) : nn::Conv1D(O, nn::Ints(k), co);
    }
    nn::KTensor y = call1(l, t);
    if (depthwise) {
      // W [C*M, 1, kh, kw] -> [kh, kw, C, M]: out channel c*M + m.
      const int64_t M = O / C;
      Tensor wr = wt.reshape(Shape{C, M, k[0], k[1]});
      set_weight(*l, "depthwise_kernel", transpose_host(wr, {C, M, k[0], k[1]}, {2, 3, 0, 1}));
    } else {
      set_weight(*l, "kernel", transpose_host(wt, w.dims, to_keras));
    }
    if (bias) set_weight(*l, "bias", vec(cst(2, "bias B"), O, "B"));
    set_out(0, dyn_val(y, channels_last(x.rank), x.rank));
  }

  Tensor vec(const Const& c, int64_t n, const std::string& what) const {
    if (c.numel() != n || c.has_batch_dim())
      fail("input " + what + " has dims " + ints_str(c.dims) + "; expected " + std::to_string(n) +
           " elements");
    return c.to_f32().reshape(Shape{n});
  }

  // Dense on the last ONNX dim of x with kernel [K, N]; bias optional.
  void dense(const Val& x, const Tensor& kernel, const Tensor& bias, const std::string& what) {
    Val v = x;
    if (v.perm.back() != v.rank - 1) v = onnx_order(x, "_order");
    if (v.perm.back() != v.rank - 1)
      fail(what + ": the contracted dim must be held by lowbit (size > 1)");
    const int64_t K = kernel.dim(0), N = kernel.dim(1);
    Tensor kern = kernel;
    if (!v.rows.empty()) {
      if (static_cast<int64_t>(v.rows.size()) != K)
        fail(what + ": the weight has " + std::to_string(K) + " rows for " +
             std::to_string(v.rows.size()) + " features");
      kern = Tensor({K, N}, DType::kF32);
      for (int64_t i = 0; i < K; ++i)
        std::copy_n(kernel.data<float>() + v.rows[i] * N, N, kern.data<float>() + i * N);
    }
    if (v.t.shape()[-1] != K)
      fail(what + ": input's last dim is " + std::to_string(v.t.shape()[-1]) +
           " but the weight has " + std::to_string(K) + " rows");
    auto l = nn::Dense(N, {.use_bias = bias.defined(), .name = layer_name()});
    nn::KTensor y = call1(l, v.t);
    set_weight(*l, "kernel", kern);
    if (bias.defined()) set_weight(*l, "bias", bias);
    set_out(0, dyn_val(y, v.perm, v.rank));
  }

  void gemm() {
    check_attrs({"alpha", "beta", "transA", "transB"});
    if (attr_i("transA", 0) != 0) fail_attr("transA", "= 1 is not supported (A must be [M, K])");
    const Val& a = dyn(0);
    if (a.rank != 2 || a.perm[0] != 0) fail("input 0 (A) must be [batch, K]");
    const Const& b = cst(1, "weight B");
    if (b.dims.size() != 2) fail("input 1 (B) must have rank 2");
    const float alpha = attr_f("alpha", 1.f), beta = attr_f("beta", 1.f);
    Tensor w = b.to_f32();
    if (attr_i("transB", 0)) w = transpose_host(w, b.dims, {1, 0});
    if (alpha != 1.f)
      for (float& f : w.span<float>()) f *= alpha;
    const int64_t N = w.dim(1);
    Tensor bias;
    if (has_in(2)) {
      const Const& c = cst(2, "bias C");
      if (c.numel() == 1 && N != 1) {
        bias = Tensor::full({N}, c.v.at(0));
      } else {
        bool row = c.dims.size() == 1 || (c.dims.size() == 2 && c.dims[0] == 1);
        if (!row) fail("input 2 (C) has dims " + ints_str(c.dims) + "; expected [N] or [1, N]");
        bias = vec(c, N, "2 (C)");
      }
      bias = bias.clone();
      if (beta != 1.f)
        for (float& f : bias.span<float>()) f *= beta;
    }
    dense(a, w, bias, "Gemm");
  }

  void matmul() {
    check_attrs({});
    const Val& a = dyn(0);
    const Const& b = cst(1, "weight B");
    if (b.dims.size() != 2) fail("input 1 (B) must be a constant matrix [K, N] (rank 2)");
    if (a.rank < 2) fail("input 0 must have rank >= 2");
    const int64_t N = b.dims[1];
    // MatMul + Add of a constant [N]: the Add is the Dense's bias.
    Tensor bias;
    const auto& us = users_[cur_->output[0]];
    bool is_graph_out = false;
    for (const ValueInfoProto& o : m_.graph.output) is_graph_out |= o.name == cur_->output[0];
    if (us.size() == 1 && !is_graph_out && us[0]->op_type == "Add" && us[0]->input.size() == 2) {
      const NodeProto& add = *us[0];
      const std::string& other = add.input[0] == cur_->output[0] ? add.input[1] : add.input[0];
      auto it = vals_.find(other);
      if (it != vals_.end() && it->second.kind == Val::kConst && !it->second.c.has_batch_dim()) {
        const Const& c = it->second.c;
        bool ok = c.numel() == N;
        for (size_t i = 0; ok && i + 1 < c.dims.size(); ++i) ok = c.dims[i] == 1;
        if (ok && c.dims.size() <= static_cast<size_t>(a.rank) && !c.dims.empty()) {
          bias = c.to_f32().reshape(Shape{N}).clone();
          skip_.insert(&add);
          const NodeProto* mm = cur_;
          dense(a, b.to_f32(), bias, "MatMul");
          vals_[add.output[0]] = vals_[mm->output[0]];
          return;
        }
      }
    }
    dense(a, b.to_f32(), Tensor(), "MatMul");
  }

  // x op constant c (numpy broadcasting): Rescaling with per-element scale / offset in x's
  // lowbit layout.
  void binary_const(const Val& x, const Const& c, const std::string& op, bool const_first) {
    if (c.has_batch_dim() || c.holds_batch()) fail("a batch-sized constant operand");
    if (static_cast<int>(c.dims.size()) > x.rank)
      fail("constant operand of rank " + std::to_string(c.dims.size()) +
           " broadcasts the tensor operand to a higher rank");
    std::vector<int64_t> cd(x.rank - c.dims.size(), 1);
    cd.insert(cd.end(), c.dims.begin(), c.dims.end());
    const std::vector<int64_t> xd = onnx_dims(x);
    for (int j = 0; j < x.rank; ++j) {
      const bool held = std::find(x.perm.begin(), x.perm.end(), j) != x.perm.end();
      if (cd[j] != 1 && (j == x.perm[0] || !held || cd[j] != xd[j]))
        fail("constant operand of dims " + ints_str(c.dims) +
             " does not broadcast to the tensor "
             "operand's dims " +
             ints_str(xd) + " without growing it");
    }
    Tensor ct = c.to_f32().reshape(Shape(cd));
    Perm order(x.perm.begin() + 1, x.perm.end());
    for (int j = 0; j < x.rank; ++j)
      if (std::find(x.perm.begin(), x.perm.end(), j) == x.perm.end() || j == x.perm[0])
        order.push_back(j);  // size-1 dims last
    Tensor p = transpose_host(ct, cd, order);
    std::vector<int64_t> ps;
    bool all1 = true;
    for (size_t i = 1; i < x.perm.size(); ++i) {
      ps.push_back(cd[x.perm[i]]);
      all1 = all1 && cd[x.perm[i]] == 1;
    }
    if (all1) ps.clear();
    p = p.reshape(Shape(ps)).clone();
    Tensor scale = Tensor::full(Shape(ps), 1.0), offset = Tensor::full(Shape(ps), 0.0);
    float* pv = p.data<float>();
    float* sv = scale.data<float>();
    float* ov = offset.data<float>();
    for (int64_t i = 0; i < p.numel(); ++i) {
      if (op == "Add") ov[i] = pv[i];
      if (op == "Sub") {
        if (const_first)
          sv[i] = -1.f, ov[i] = pv[i];
        else
          ov[i] = -pv[i];
      }
      if (op == "Mul") sv[i] = pv[i];
      if (op == "Div") {
        if (const_first) fail("constant / tensor is not supported (only tensor / constant)");
        sv[i] = 1.f / pv[i];
      }
    }
    auto l = nn::Rescaling(1.0, 0.0, {.param_shape = ps, .name = layer_name()});
    nn::KTensor y = call1(l, x.t);
    set_weight(*l, "scale", scale);
    set_weight(*l, "offset", offset);
    set_out(0, dyn_val(y, x.perm, x.rank));
  }

  void binary() {
    check_attrs({});
    const std::string& op = cur_->op_type;
    const Val& a = in(0);
    const Val& b = in(1);
    if (a.kind == Val::kDyn && b.kind == Val::kConst) return binary_const(a, b.c, op, false);
    if (a.kind == Val::kConst && b.kind == Val::kDyn) return binary_const(b, a.c, op, true);
    const Val& x = dyn(0);
    const Val& y = dyn(1);
    if (op == "Div") fail("tensor / tensor is not supported (Div by a constant is)");
    if (x.rank != y.rank)
      fail("operands of ranks " + std::to_string(x.rank) + " and " + std::to_string(y.rank) +
           ": only equal ranks are imported");
    if (x.perm[0] != y.perm[0]) fail("operands with their batch dims at different positions");
    nn::KTensor yt = as_layout(y, x.perm, "_layout");
    if (op == "Sub") {
      auto neg = nn::Rescaling(-1.0, 0.0, {.name = layer_name("_neg")});
      yt = call1(neg, yt);
    }
    auto l = op == "Mul" ? nn::Multiply({.name = layer_name()}) : nn::Add({.name = layer_name()});
    set_out(0, dyn_val(call(l, {x.t, yt}), x.perm, x.rank));
  }

  void batch_norm() {
    check_attrs({"epsilon", "momentum", "training_mode", "spatial"});
    if (attr_i("training_mode", 0) != 0)
      fail_attr("training_mode", "= 1: only inference-mode BatchNormalization is imported");
    if (attr_i("spatial", 1) != 1) fail_attr("spatial", "= 0 is not supported");
    for (size_t i = 1; i < cur_->output.size(); ++i)
      if (out_used(i)) fail("output " + std::to_string(i) + " (training statistics) is used");
    const Val& x = dyn(0);
    if (x.rank < 2 || x.perm[0] != 0) fail("input 0 must be [batch, C, ...]");
    const std::vector<int64_t> d = onnx_dims(x);
    const int64_t C = d[1];
    Val v = x;
    auto pos = std::find(v.perm.begin(), v.perm.end(), 1);
    if (pos == v.perm.end()) {
      v = dyn_val(as_layout(x, x.rank >= 3 ? channels_last(x.rank) : identity(x.rank), "_nhwc"),
                  x.rank >= 3 ? channels_last(x.rank) : identity(x.rank), x.rank);
      pos = std::find(v.perm.begin(), v.perm.end(), 1);
    }
    const int axis = static_cast<int>(pos - v.perm.begin());
    auto l = nn::BatchNormalization({.axis = axis,
                                     .momentum = attr_f("momentum", 0.9f),
                                     .epsilon = attr_f("epsilon", 1e-5f),
                                     .name = layer_name()});
    nn::KTensor y = call1(l, v.t);
    set_weight(*l, "gamma", vec(cst(1, "scale"), C, "1 (scale)"));
    set_weight(*l, "beta", vec(cst(2, "B"), C, "2 (B)"));
    set_weight(*l, "moving_mean", vec(cst(3, "input_mean"), C, "3 (input_mean)"));
    set_weight(*l, "moving_variance", vec(cst(4, "input_var"), C, "4 (input_var)"));
    set_out(0, dyn_val(y, v.perm, v.rank));
  }

  void activation() {
    const std::string& op = cur_->op_type;
    const Val& x = dyn(0);
    nn::KTensor y;
    if (op == "Relu" || op == "Sigmoid" || op == "Tanh") {
      check_attrs({});
      y = op == "Relu"
              ? call1(nn::ReLU({.name = layer_name()}), x.t)
              : call1(nn::Activation(op == "Sigmoid" ? "sigmoid" : "tanh", {.name = layer_name()}),
                      x.t);
    } else if (op == "Clip") {
      check_attrs({});
      const double lo = has_in(1) ? cst(1, "min").v.at(0) : -INFINITY;
      const double hi = has_in(2) ? cst(2, "max").v.at(0) : INFINITY;
      if (lo != 0.0)
        fail("input 1 (min) = " + std::to_string(lo) +
             ": only Clip(0, max) is imported (as ReLU with max_value)");
      nn::ReLUOptions ro{.name = layer_name()};
      if (std::isfinite(hi)) ro.max_value = hi;
      y = call1(nn::ReLU(ro), x.t);
    } else if (op == "HardSigmoid" || op == "HardSwish") {
      float alpha = 1.f / 6, beta = 0.5f;
      if (op == "HardSigmoid") {
        check_attrs({"alpha", "beta"});
        alpha = attr_f("alpha", 0.2f);
        beta = attr_f("beta", 0.5f);
      } else {
        check_attrs({});
      }
      nn::KTensor hs;
      if (alpha == static_cast<float>(1.0 / 6) && beta == 0.5f) {
        hs = call1(nn::Activation("hard_sigmoid", {.name = layer_name("_hard_sigmoid")}), x.t);
      } else {  // max(0, min(1, alpha x + beta)), exactly
        nn::KTensor r = call1(nn::Rescaling(alpha, beta, {.name = layer_name("_affine")}), x.t);
        hs = call1(nn::ReLU({.max_value = 1.0, .name = layer_name("_clip")}), r);
      }
      y = op == "HardSwish" ? call(nn::Multiply({.name = layer_name()}), {x.t, hs}) : hs;
    } else {  // Softmax
      check_attrs({"axis"});
      int64_t axis = attr_i("axis", opset_ >= 13 ? -1 : 1);
      if (axis < 0) axis += x.rank;
      if (axis < 0 || axis >= x.rank) fail_attr("axis", "is out of range");
      if (opset_ < 13 && axis != x.rank - 1)
        fail_attr("axis", "= " + std::to_string(axis) +
                              ": before opset 13 Softmax flattens the dims from axis on; only the "
                              "last axis is imported");
      Val v = x;
      if (v.perm.back() != axis) v = onnx_order(x, "_order");
      if (v.perm.back() != axis || axis == v.perm[0])
        fail_attr("axis", "= " + std::to_string(axis) + " is not a dim lowbit holds last");
      set_out(0, dyn_val(call1(nn::Activation("softmax", {.name = layer_name()}), v.t), v.perm,
                         v.rank));
      return;
    }
    set_out(0, dyn_val(y, x.perm, x.rank));
  }

  void pool() {
    const bool max = cur_->op_type == "MaxPool";
    if (max)
      check_attrs({"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order",
                   "strides"});
    else
      check_attrs(
          {"auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides"});
    if (max && out_used(1)) fail("output 1 (Indices) is used: not supported");
    const Val& x = dyn(0);
    std::vector<int64_t> d;
    nn::KTensor t = channels_last_in(x, 3, 4, d);
    const size_t n = d.size() - 2;
    const std::vector<int64_t> k = attr_is("kernel_shape", {});
    if (k.size() != n) fail_attr("kernel_shape", "must have " + std::to_string(n) + " values");
    const std::vector<int64_t> s = attr_is("strides", std::vector<int64_t>(n, 1));
    const std::vector<int64_t> dil = attr_is("dilations", std::vector<int64_t>(n, 1));
    for (int64_t v : dil)
      if (v != 1)
        fail_attr("dilations", "= " + ints_str(dil) + ": dilated pooling is not supported");
    if (s.size() != n) fail_attr("strides", "must have " + std::to_string(n) + " values");
    const bool include_pad = !max && attr_i("count_include_pad", 0) != 0;
    std::vector<int64_t> sp(d.begin() + 2, d.end());
    Padding p = padding(
        sp, k, s, dil, include_pad,
        max ? "which MaxPool cannot take (it ignores padded cells)" : "with count_include_pad = 0");
    if (include_pad && p.mode == "same") {  // "same" pads, counted: explicit zeros
      std::vector<int64_t> pads = attr_is("pads", {});
      if (pads.size() == 4)
        p = {"valid", {pads[0], pads[2], pads[1], pads[3]}};
      else
        fail_attr("auto_pad", "with count_include_pad = 1 is not supported");
    }
    if (attr_i("ceil_mode", 0) != 0 && p.mode == "valid") {
      // ceil_mode changes nothing when the windows fit exactly.
      std::vector<int64_t> pads = attr_is("pads", std::vector<int64_t>(2 * n, 0));
      for (size_t i = 0; i < n; ++i) {
        const int64_t len = sp[i] + pads[i] + pads[n + i] - k[i];
        if (len % s[i] != 0)
          fail_attr("ceil_mode", "= 1 gives a partial last window here: not supported");
      }
    } else if (attr_i("ceil_mode", 0) != 0) {
      fail_attr("ceil_mode", "= 1 with 'same' padding is not supported");
    }
    if (!p.zero_pads.empty())
      t = call1(nn::ZeroPadding2D(p.zero_pads, {.name = layer_name("_pad")}), t);
    nn::PoolingOptions po{.strides = nn::Ints(s), .padding = p.mode, .name = layer_name()};
    nn::LayerPtr l =
        n == 2 ? (max ? nn::MaxPooling2D(nn::Ints(k), po) : nn::AveragePooling2D(nn::Ints(k), po))
               : (max ? nn::MaxPooling1D(nn::Ints(k), po) : nn::AveragePooling1D(nn::Ints(k), po));
    set_out(0, dyn_val(call1(l, t), channels_last(x.rank), x.rank));
  }

  void global_pool() {
    check_attrs({});
    const bool max = cur_->op_type == "GlobalMaxPool";
    const Val& x = dyn(0);
    std::vector<int64_t> d;
    nn::KTensor t = channels_last_in(x, 3, 4, d);
    nn::GlobalPoolingOptions go{.keepdims = true, .name = layer_name()};
    nn::LayerPtr l = x.rank == 4
                         ? (max ? nn::GlobalMaxPooling2D(go) : nn::GlobalAveragePooling2D(go))
                         : (max ? nn::GlobalMaxPooling1D(go) : nn::GlobalAveragePooling1D(go));
    set_out(0, dyn_val(call1(l, t), channels_last(x.rank), x.rank));
  }

  // Reshape of x to ONNX dims `target` (entries: > 0, 0 = copy the input dim, -1 = inferred,
  // kBatch = the batch dim).
  Val reshape(const Val& x, std::vector<int64_t> target, bool allowzero) {
    const std::vector<int64_t> d = onnx_dims(x);
    const int bi = x.perm[0];
    int64_t P = 1;  // non-batch elements
    for (int j = 0; j < x.rank; ++j)
      if (j != bi) P *= d[j];
    int bo = -1, infer = -1;
    for (size_t i = 0; i < target.size(); ++i) {
      int64_t& t = target[i];
      if (t == 0 && !allowzero) {
        if (i >= d.size()) fail("the shape's 0 at " + std::to_string(i) + " copies no input dim");
        t = d[i];
      }
      if (t == kBatch) {
        if (bo >= 0) fail("the shape " + ints_str(target) + " holds the batch dim twice");
        bo = static_cast<int>(i);
      } else if (t == -1) {
        if (infer >= 0) fail("the shape holds -1 twice");
        infer = static_cast<int>(i);
      } else if (t <= 0) {
        fail("the shape " + ints_str(target) + " holds " + std::to_string(t));
      }
    }
    int64_t known = 1;
    for (size_t i = 0; i < target.size(); ++i)
      if (static_cast<int>(i) != bo && static_cast<int>(i) != infer) known *= target[i];
    if (bo < 0) {
      if (infer < 0 || known != P)
        fail("the shape " + ints_str(target) +
             " fixes the batch size; lowbit models have a symbolic batch dim (use -1 or the "
             "Shape of the input for it)");
      bo = infer;
      infer = -1;
    }
    target[bo] = kBatch;
    if (infer >= 0) {
      if (known == 0 || P % known)
        fail("the shape " + ints_str(target) + " does not divide the input");
      target[infer] = P / known;
    } else if (known != P) {
      fail("the shape " + ints_str(target) + " does not hold the input's " + std::to_string(P) +
           " elements per batch row");
    }
    int64_t pre_in = 1, pre_out = 1;
    for (int j = 0; j < bi; ++j) pre_in *= d[j];
    for (int j = 0; j < bo; ++j) pre_out *= target[j];
    if (pre_in != pre_out)
      fail("the shape " + ints_str(target) + " mixes the batch dim with others");
    if (!in_onnx_order(x) && target.size() == 2 && bo == 0 && bi == 0 && only_dense_users()) {
      // Flatten in lowbit's order; the Gemm / MatMul after it permutes its weight rows instead
      // of a Permute here.
      const Shape& ls = x.t.shape();
      std::vector<int64_t> ost(x.rank, 1);
      for (int j = x.rank - 2; j >= 0; --j) ost[j] = ost[j + 1] * (j + 1 == bi ? 1 : d[j + 1]);
      Val y = dyn_val(call1(nn::Reshape({P}, {.name = layer_name()}), x.t), {0, 1}, 2);
      y.rows.resize(static_cast<size_t>(P));
      std::vector<int64_t> idx(x.perm.size(), 0);
      for (int64_t f = 0; f < P; ++f) {
        int64_t o = 0;
        for (size_t i = 1; i < x.perm.size(); ++i) o += idx[i] * ost[x.perm[i]];
        y.rows[f] = o;
        for (size_t i = x.perm.size() - 1; i >= 1; --i) {
          if (++idx[i] < ls[static_cast<int>(i)]) break;
          idx[i] = 0;
        }
      }
      return y;
    }
    Val v = in_onnx_order(x) ? x : onnx_order(x, "_order");
    std::vector<int64_t> lb;
    Perm np = {bo};
    for (size_t i = 0; i < target.size(); ++i)
      if (static_cast<int>(i) != bo) {
        lb.push_back(target[i]);
        np.push_back(static_cast<int>(i));
      }
    const std::vector<int64_t> cur(v.t.shape().dims().begin() + 1, v.t.shape().dims().end());
    nn::KTensor t = v.t;
    if (cur != lb) t = call1(nn::Reshape(lb, {.name = layer_name()}), v.t);
    return dyn_val(t, np, static_cast<int>(target.size()));
  }

  // Whether every reader of the current node's output is a Gemm (A = it, not transposed) or a
  // MatMul (A = it) by a constant matrix, and it is not a graph output.
  bool only_dense_users() const {
    const std::string& o = cur_->output[0];
    for (const ValueInfoProto& g : m_.graph.output)
      if (g.name == o) return false;
    auto it = users_.find(o);
    if (it == users_.end()) return false;
    for (const NodeProto* u : it->second) {
      if (u->op_type != "Gemm" && u->op_type != "MatMul") return false;
      if (u->input.size() < 2 || u->input[0] != o || u->input[1] == o) return false;
      const AttributeProto* ta = find_attr(*u, "transA");
      if (ta && ta->i != 0) return false;
      auto w = vals_.find(u->input[1]);
      if (w == vals_.end() || w->second.kind != Val::kConst || w->second.c.dims.size() != 2)
        return false;
    }
    return true;
  }

  void flatten() {
    check_attrs({"axis"});
    const Val& x = dyn(0);
    int64_t axis = attr_i("axis", 1);
    if (axis < 0) axis += x.rank;
    const std::vector<int64_t> d = onnx_dims(x);
    int64_t pre = 1;
    bool batch_pre = false;
    for (int64_t j = 0; j < axis; ++j) {
      if (d[j] == kBatch)
        batch_pre = true;
      else
        pre *= d[j];
    }
    if (!batch_pre || pre != 1)
      fail_attr("axis",
                "= " + std::to_string(axis) + ": the first output dim must be the batch dim");
    set_out(0, reshape(x, {kBatch, -1}, false));
  }

  void reshape_node() {
    check_attrs({"allowzero"});
    const Val& x = dyn(0);
    const Const& s = cst(1, "shape");
    if (s.dims.size() != 1) fail("input 1 (shape) must be rank 1");
    set_out(0, reshape(x, s.ints(), attr_i("allowzero", 0) != 0));
  }

  void transpose() {
    check_attrs({"perm"});
    const Val& x = in(0);
    if (x.kind != Val::kDyn) fail("input 0 must be a tensor");
    std::vector<int64_t> q = attr_is("perm", {});
    if (q.empty())
      for (int i = x.rank - 1; i >= 0; --i) q.push_back(i);
    if (static_cast<int>(q.size()) != x.rank) fail_attr("perm", "has the wrong length");
    std::vector<int> qinv(x.rank, -1);
    for (int j = 0; j < x.rank; ++j) {
      if (q[j] < 0 || q[j] >= x.rank || qinv[q[j]] >= 0)
        fail_attr("perm", "= " + ints_str(q) + " is not a permutation");
      qinv[q[j]] = j;
    }
    Val y = x;
    for (int& p : y.perm) p = qinv[p];
    set_out(0, y);
  }

  void squeeze() {
    const bool sq = cur_->op_type == "Squeeze";
    const Val& x = dyn(0);
    std::vector<int64_t> axes;
    if (opset_ >= 13) {
      check_attrs({});
      if (has_in(1)) axes = cst(1, "axes").ints();
    } else {
      check_attrs({"axes"});
      axes = attr_is("axes", {});
    }
    const std::vector<int64_t> d = onnx_dims(x);
    const int out_rank =
        sq ? x.rank - static_cast<int>(axes.size()) : x.rank + static_cast<int>(axes.size());
    if (sq && axes.empty())
      for (int j = 0; j < x.rank; ++j)
        if (d[j] == 1) axes.push_back(j);
    for (int64_t& a : axes) {
      if (a < 0) a += sq ? x.rank : out_rank;
      if (a < 0 || a >= (sq ? x.rank : out_rank)) fail("axes " + ints_str(axes) + " out of range");
    }
    for (size_t i = 0; i < axes.size(); ++i)
      for (size_t j = 0; j < i; ++j)
        if (axes[i] == axes[j]) fail("axes " + ints_str(axes) + " repeat an axis");
    Val v = x;
    if (sq) {
      for (int64_t a : axes)
        if (d[a] != 1)
          fail("squeezes dim " + std::to_string(a) + " of size " +
               (d[a] == kBatch ? std::string("batch") : std::to_string(d[a])));
      // drop held size-1 dims first
      Perm tp;
      for (int p : x.perm)
        if (std::find(axes.begin(), axes.end(), p) == axes.end()) tp.push_back(p);
      if (tp.size() != x.perm.size()) v = dyn_val(as_layout(x, tp, "_squeeze"), tp, x.rank);
      std::vector<int> remap(x.rank, -1);
      int k = 0;
      for (int j = 0; j < x.rank; ++j)
        if (std::find(axes.begin(), axes.end(), j) == axes.end()) remap[j] = k++;
      for (int& p : v.perm) p = remap[p];
      v.rank = k;
    } else {
      std::vector<int> remap;
      for (int j = 0; j < out_rank; ++j)
        if (std::find(axes.begin(), axes.end(), j) == axes.end()) remap.push_back(j);
      for (int& p : v.perm) p = remap[p];
      v.rank = out_rank;
    }
    set_out(0, v);
  }

  void concat() {
    check_attrs({"axis"});
    const Val& x0 = dyn(0);
    int64_t axis = attr_i("axis", 0);
    if (axis < 0) axis += x0.rank;
    if (axis == x0.perm[0]) fail_attr("axis", "is the batch dim");
    std::vector<nn::KTensor> ts;
    Val v0 = x0;
    if (std::find(v0.perm.begin(), v0.perm.end(), axis) == v0.perm.end())
      v0 = onnx_order(
          dyn_val(as_layout(x0, identity(x0.rank), "_layout"), identity(x0.rank), x0.rank), "_o");
    for (size_t i = 0; i < cur_->input.size(); ++i) {
      const Val& xi = dyn(i);
      if (xi.rank != x0.rank) fail("inputs of different ranks");
      ts.push_back(as_layout(xi, v0.perm, "_layout" + std::to_string(i)));
    }
    const int la =
        static_cast<int>(std::find(v0.perm.begin(), v0.perm.end(), axis) - v0.perm.begin());
    set_out(0, dyn_val(call(nn::Concatenate({.axis = la, .name = layer_name()}), ts), v0.perm,
                       v0.rank));
  }

  void pad() {
    check_attrs({"mode"});
    if (attr_s("mode", "constant") != "constant")
      fail_attr("mode", "= '" + attr_s("mode", "") + "': only constant (zero) padding is imported");
    const Val& x = dyn(0);
    if (has_in(2)) {
      const Const& cv = cst(2, "constant_value");
      if (!cv.v.empty() && cv.v[0] != 0.0)
        fail("input 2 (constant_value) = " + std::to_string(cv.v[0]) + ": only zero padding");
    }
    if (has_in(3)) fail("input 3 (axes) is not supported");
    const std::vector<int64_t> pads = cst(1, "pads").ints();
    if (static_cast<int>(pads.size()) != 2 * x.rank) fail("input 1 (pads) has the wrong length");
    const int r = x.rank;
    for (int j = 0; j < r; ++j) {
      if (pads[j] < 0 || pads[r + j] < 0)
        fail("input 1 (pads) = " + ints_str(pads) + " is negative");
      if ((j < 2 || r != 4) && (pads[j] || pads[r + j]))
        fail("input 1 (pads) = " + ints_str(pads) +
             ": only the spatial dims of an [N, C, H, W] tensor are padded");
    }
    std::vector<int64_t> d;
    nn::KTensor t = channels_last_in(x, 4, 4, d);
    auto l = nn::ZeroPadding2D(std::vector<int64_t>{pads[2], pads[r + 2], pads[3], pads[r + 3]},
                               {.name = layer_name()});
    set_out(0, dyn_val(call1(l, t), channels_last(4), 4));
  }

  // ---- LSTM / GRU ----
  void recurrent() {
    const bool lstm = cur_->op_type == "LSTM";
    if (lstm)
      check_attrs({"activation_alpha", "activation_beta", "activations", "clip", "direction",
                   "hidden_size", "input_forget", "layout"});
    else
      check_attrs({"activation_alpha", "activation_beta", "activations", "clip", "direction",
                   "hidden_size", "linear_before_reset", "layout"});
    if (find_attr(*cur_, "activation_alpha") || find_attr(*cur_, "activation_beta"))
      fail_attr("activation_alpha", "/ activation_beta are not supported");
    if (find_attr(*cur_, "clip")) fail_attr("clip", "(cell clipping) is not supported");
    if (attr_i("input_forget", 0)) fail_attr("input_forget", "= 1 is not supported");
    const int64_t layout = attr_i("layout", 0);
    // ONNX Runtime's CPU kernels refuse layout = 1, so nothing could check ours against it.
    if (layout != 0)
      fail_attr("layout",
                "= " + std::to_string(layout) + ": only the sequence-major layout 0 is imported");
    const std::string dir = attr_s("direction", "forward");
    if (dir != "forward" && dir != "bidirectional" && dir != "reverse")
      fail_attr("direction", "= '" + dir + "' is not valid");
    const int64_t D = dir == "bidirectional" ? 2 : 1;
    const int64_t G = lstm ? 4 : 3;
    const Val& x = dyn(0);
    if (x.rank != 3) fail("input 0 (X) must have rank 3");
    const int time_axis = layout ? 1 : 0, batch = layout ? 0 : 1;
    if (x.perm[0] != batch)
      fail(std::string("input 0 (X): its batch dim is ONNX dim ") + std::to_string(x.perm[0]) +
           "; expected " + std::to_string(batch) + " (layout = " + std::to_string(layout) + ")");
    Perm want = {batch, time_axis, 2};
    nn::KTensor xt = as_layout(x, want, "_btd");
    const std::vector<int64_t> xd = onnx_dims(x);
    const int64_t T = xd[time_axis], I = xd[2];
    const Const& W = cst(1, "W");
    const Const& R = cst(2, "R");
    const int64_t H = attr_i("hidden_size", W.dims.size() == 3 ? W.dims[1] / G : 0);
    if (W.dims != std::vector<int64_t>{D, G * H, I})
      fail("input 1 (W) has dims " + ints_str(W.dims) + "; expected " + ints_str({D, G * H, I}));
    if (R.dims != std::vector<int64_t>{D, G * H, H})
      fail("input 2 (R) has dims " + ints_str(R.dims) + "; expected " + ints_str({D, G * H, H}));
    std::vector<double> Bv(static_cast<size_t>(D * 2 * G * H), 0.0);
    const bool has_b = has_in(3);
    if (has_b) {
      const Const& B = cst(3, "B");
      if (B.dims != std::vector<int64_t>{D, 2 * G * H})
        fail("input 3 (B) has dims " + ints_str(B.dims) + "; expected " + ints_str({D, 2 * G * H}));
      Bv = B.v;
    }
    // activations: LSTM f, g, h per direction; GRU f, g.
    std::string ract = "sigmoid", act = "tanh";
    if (const AttributeProto* a = find_attr(*cur_, "activations")) {
      auto keras = [&](const std::string& s) -> std::string {
        if (s == "Sigmoid") return "sigmoid";
        if (s == "Tanh") return "tanh";
        if (s == "Relu") return "relu";
        if (s == "HardSigmoid")
          fail_attr("activations", "HardSigmoid (ONNX alpha 0.2) is not supported");
        fail_attr("activations", "holds '" + s + "': sigmoid, tanh or relu only");
      };
      const size_t per = lstm ? 3 : 2;
      if (a->strings.size() != per * static_cast<size_t>(D))
        fail_attr("activations", "has the wrong count");
      for (int64_t k = 0; k < D; ++k) {
        const std::string f = keras(a->strings[k * per]), g = keras(a->strings[k * per + 1]);
        if (lstm && keras(a->strings[k * per + 2]) != g)
          fail_attr("activations", "with h != g is not supported (Keras uses one activation)");
        if (k == 0)
          ract = f, act = g;
        else if (f != ract || g != act)
          fail_attr("activations", "that differ per direction");
      }
    }
    const bool lbr = !lstm && attr_i("linear_before_reset", 0) != 0;
    if (lstm && has_in(7)) fail("input 7 (P, peepholes) is not supported");
    for (size_t k = 5; k <= (lstm ? 6u : 5u); ++k)
      if (has_in(k)) {
        const Val& s = in(k);
        bool zero = s.kind == Val::kConst;
        if (zero)
          for (double v : s.c.v) zero = zero && v == 0.0;
        if (!zero)
          fail("input " + std::to_string(k) +
               " (initial state) is not a constant zero: initial states are not imported");
      }
    // sequence_lens -> mask
    nn::KTensor mask;
    if (has_in(4)) {
      const Val& sl = in(4);
      if (sl.kind == Val::kLengths) {
        mask = call1(nn::SequenceMask(T, {.name = layer_name("_mask")}), sl.t);
      } else if (sl.kind == Val::kConst) {
        for (double v : sl.c.v)
          if (v != T) fail("input 4 (sequence_lens) is a constant other than T everywhere");
      } else {
        fail("input 4 (sequence_lens) must come from an integer graph input");
      }
    }
    const bool seqs = out_used(0), state = out_used(1) || (lstm && out_used(2));
    if (dir == "reverse" && seqs)
      fail_attr("direction",
                "= 'reverse' with output Y used: only Y_h / Y_c of a reverse "
                "recurrence are imported");
    const bool backwards = dir == "reverse";
    const std::string nm = layer_name();
    nn::LayerPtr l;
    if (lstm) {
      l = nn::LSTM(H, {.activation = act,
                       .recurrent_activation = ract,
                       .return_sequences = seqs,
                       .return_state = state,
                       .go_backwards = backwards,
                       .zero_output_for_mask = mask.defined(),
                       .name = D == 2 ? nm + "_cell" : nm});
    } else {
      l = nn::GRU(H, {.activation = act,
                      .recurrent_activation = ract,
                      .reset_after = lbr,
                      .return_sequences = seqs,
                      .return_state = state,
                      .go_backwards = backwards,
                      .zero_output_for_mask = mask.defined(),
                      .name = D == 2 ? nm + "_cell" : nm});
    }
    if (D == 2) l = nn::Bidirectional(l, {.merge_mode = "concat", .name = nm});
    nn::CallOptions co;
    if (mask.defined()) co.masks = {mask};
    std::vector<nn::KTensor> outs = (*l)(std::vector<nn::KTensor>{xt}, co);
    // weights, per direction
    const std::vector<int64_t> block =
        lstm ? std::vector<int64_t>{0, 3, 1, 2} : std::vector<int64_t>{0, 1, 2};
    auto gates = [&](const std::vector<double>& src, int64_t dd, int64_t rows) {
      Tensor o({rows, G * H}, DType::kF32);
      float* dst = o.data<float>();
      for (int64_t g = 0; g < G; ++g)
        for (int64_t u = 0; u < H; ++u)
          for (int64_t r = 0; r < rows; ++r)
            dst[r * G * H + block[g] * H + u] =
                static_cast<float>(src[((dd * G + g) * H + u) * rows + r]);
      return o;
    };
    auto bias = [&](int64_t dd) {
      const double* b = Bv.data() + dd * 2 * G * H;
      if (lbr) {
        Tensor o({2, G * H}, DType::kF32);
        for (int half = 0; half < 2; ++half)
          for (int64_t g = 0; g < G; ++g)
            for (int64_t u = 0; u < H; ++u)
              o.data<float>()[half * G * H + block[g] * H + u] =
                  static_cast<float>(b[half * G * H + g * H + u]);
        return o;
      }
      Tensor o({G * H}, DType::kF32);
      for (int64_t g = 0; g < G; ++g)
        for (int64_t u = 0; u < H; ++u)
          o.data<float>()[block[g] * H + u] = static_cast<float>(
              static_cast<float>(b[g * H + u]) + static_cast<float>(b[G * H + g * H + u]));
      return o;
    };
    std::vector<nn::Weight*> ks, rks, bs;
    for (nn::Weight& w : l->weights()) {
      const std::string& n = w.name;
      auto ends = [&](const std::string& s) {
        return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0;
      };
      if (ends("recurrent_kernel"))
        rks.push_back(&w);
      else if (ends("kernel"))
        ks.push_back(&w);
      else if (ends("bias"))
        bs.push_back(&w);
    }
    if (ks.size() != static_cast<size_t>(D) || rks.size() != ks.size() || bs.size() != ks.size())
      fail("internal: unexpected recurrent layer weights");
    for (int64_t dd = 0; dd < D; ++dd) {
      auto put = [&](nn::Weight* w, const Tensor& v) {
        if (w->value.shape() != v.shape())
          fail("internal: weight " + w->name + " is " + w->value.shape().str() + ", not " +
               v.shape().str());
        w->value.copy_from(v);
      };
      put(ks[dd], gates(W.v, dd, I));
      put(rks[dd], gates(R.v, dd, H));
      put(bs[dd], bias(dd));
    }
    // outputs: Y [T, D, B, H] (layout 0) / [B, T, D, H] (layout 1); Y_h, Y_c [D, B, H] / [B, D, H]
    size_t k = 0;
    if (seqs) {
      nn::KTensor y = outs[k++];
      if (D == 1) {
        set_out(0, dyn_val(y, layout ? Perm{0, 1, 3} : Perm{2, 0, 3}, 4));
      } else {
        y = call1(nn::Reshape({T, 2, H}, {.name = layer_name("_split")}), y);
        set_out(0, dyn_val(y, layout ? Perm{0, 1, 2, 3} : Perm{2, 0, 1, 3}, 4));
      }
    } else {
      ++k;  // the last output (= Y_h's forward half)
    }
    if (!state) return;
    const size_t per = lstm ? 2 : 1;
    for (size_t s = 0; s < per; ++s) {
      if (!out_used(1 + s)) continue;
      const Perm p = layout ? Perm{0, 1, 2} : Perm{1, 0, 2};
      if (D == 1) {
        set_out(1 + s, dyn_val(outs[k + s], layout ? Perm{0, 2} : Perm{1, 2}, 3));
      } else {
        nn::KTensor f = call1(nn::Reshape({1, H}, {.name = layer_name("_fwd_state")}), outs[k + s]);
        nn::KTensor b =
            call1(nn::Reshape({1, H}, {.name = layer_name("_bwd_state")}), outs[k + per + s]);
        nn::KTensor both = call(nn::Concatenate({.axis = 1, .name = layer_name("_state")}), {f, b});
        set_out(1 + s, dyn_val(both, p, 3));
      }
    }
  }

  const ModelProto& m_;
  ImportOptions o_;
  int64_t opset_ = 0;
  std::map<std::string, Val> vals_;
  std::map<std::string, std::vector<const NodeProto*>> users_;
  std::set<const NodeProto*> skip_;
  std::set<std::string> used_names_;
  std::vector<nn::KTensor> inputs_;
  const NodeProto* cur_ = nullptr;
};

}  // namespace

nn::ModelPtr import_onnx(const ModelProto& model, const ImportOptions& options) {
  return Importer(model, options).run();
}

nn::ModelPtr import_onnx(const void* data, size_t size, const ImportOptions& options) {
  return import_onnx(decode_model(data, size), options);
}

nn::ModelPtr import_onnx(const std::string& path, const ImportOptions& options) {
  return import_onnx(read_model(path), options);
}

}  // namespace lowbit::onnx
