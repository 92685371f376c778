// Constant folding for the ONNX importer: the ops that compute shapes, pads and other constants
// (include/lowbit/interop/onnx_import.h). Elements are held as doubles (exact for int64 shape
// values below 2^53, and for every f32).
#include "interop/onnx_import_const.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "lowbit/error.h"

namespace lowbit::onnx::detail {

namespace {

constexpr int64_t kMaxElements = int64_t{1} << 24;

bool is_batch(double x) { return x == static_cast<double>(kBatch); }

const AttributeProto* find_attr(const NodeProto& n, const std::string& name) {
  for (const AttributeProto& a : n.attribute)
    if (a.name == name) return &a;
  return nullptr;
}

int64_t attr_int(const NodeProto& n, const std::string& name, int64_t def) {
  const AttributeProto* a = find_attr(n, name);
  return a ? a->i : def;
}

std::vector<int64_t> strides_of(const std::vector<int64_t>& dims) {
  std::vector<int64_t> s(dims.size(), 1);
  for (int i = static_cast<int>(dims.size()) - 2; i >= 0; --i)
    s[i] = s[i + 1] * std::max<int64_t>(dims[i + 1] == kBatch ? 1 : dims[i + 1], 1);
  return s;
}

int64_t dim_count(int64_t d) { return d == kBatch ? 1 : d; }

int64_t norm_axis(int64_t axis, int64_t rank, const ConstEnv& env, const std::string& what) {
  if (axis < -rank || axis >= rank)
    env.fail(what + ": axis " + std::to_string(axis) + " is out of range for rank " +
             std::to_string(rank));
  return axis < 0 ? axis + rank : axis;
}

// Calls f(out_flat, in_flat) over the elements of `out_dims` with `in` broadcast to it.
void for_broadcast(const std::vector<int64_t>& out_dims, const std::vector<int64_t>& in_dims,
                   const std::function<void(int64_t, int64_t)>& f) {
  const size_t r = out_dims.size(), off = r - in_dims.size();
  const std::vector<int64_t> is = strides_of(in_dims);
  int64_t total = 1;
  for (int64_t d : out_dims) total *= dim_count(d);
  std::vector<int64_t> idx(r, 0);
  for (int64_t o = 0; o < total; ++o) {
    int64_t src = 0;
    for (size_t k = off; k < r; ++k)
      if (dim_count(in_dims[k - off]) != 1) src += idx[k] * is[k - off];
    f(o, src);
    for (int k = static_cast<int>(r) - 1; k >= 0; --k) {
      if (++idx[k] < dim_count(out_dims[k])) break;
      idx[k] = 0;
    }
  }
}

Const ints_const(std::vector<int64_t> v, std::vector<int64_t> dims) {
  Const c;
  c.dtype = kInt64;
  c.dims = std::move(dims);
  c.v.assign(v.begin(), v.end());
  return c;
}

}  // namespace

int64_t Const::numel() const {
  // Saturates (a fuzzed shape must not overflow): callers refuse anything above kMaxElements.
  int64_t n = 1;
  for (int64_t d : dims) {
    const int64_t c = dim_count(d);
    if (c < 0) return -1;
    if (c != 0 && n > (int64_t{1} << 40) / c) return int64_t{1} << 40;
    n *= c;
  }
  return n;
}
bool Const::has_batch_dim() const {
  return std::find(dims.begin(), dims.end(), kBatch) != dims.end();
}
bool Const::holds_batch() const { return std::any_of(v.begin(), v.end(), is_batch); }

std::vector<int64_t> Const::ints() const {
  std::vector<int64_t> out;
  out.reserve(v.size());
  for (double x : v) out.push_back(is_batch(x) ? kBatch : static_cast<int64_t>(x));
  return out;
}

Tensor Const::to_f32() const {
  std::vector<float> f(v.begin(), v.end());
  std::vector<int64_t> d;
  for (int64_t x : dims) d.push_back(dim_count(x));
  return Tensor::from_vector<float>(f, Shape(d));
}

Const const_from_tensor(const TensorProto& t) {
  Const c;
  c.dims = t.dims;
  for (int64_t d : t.dims)
    if (d < 0)
      LOWBIT_THROW(ValueError, "ONNX tensor '", t.name, "': dims must be >= 0 but found ", d);
  const Tensor x = onnx::to_tensor(t);
  c.v.resize(static_cast<size_t>(x.numel()));
  switch (x.dtype()) {
    case DType::kF32:
      c.dtype = kFloat;
      for (size_t i = 0; i < c.v.size(); ++i) c.v[i] = x.data<float>()[i];
      break;
    case DType::kS64:
      c.dtype = kInt64;
      for (size_t i = 0; i < c.v.size(); ++i) c.v[i] = static_cast<double>(x.data<int64_t>()[i]);
      break;
    case DType::kS32:
      c.dtype = kInt32;
      for (size_t i = 0; i < c.v.size(); ++i) c.v[i] = x.data<int32_t>()[i];
      break;
    case DType::kS8:
      c.dtype = kInt8;
      for (size_t i = 0; i < c.v.size(); ++i) c.v[i] = x.data<int8_t>()[i];
      break;
    case DType::kU8:
      c.dtype = kUint8;
      for (size_t i = 0; i < c.v.size(); ++i) c.v[i] = x.data<uint8_t>()[i];
      break;
    default:
      LOWBIT_THROW(UnsupportedError, "ONNX tensor '", t.name, "': data type ", t.data_type,
                   " is not supported by the importer");
  }
  return c;
}

std::vector<int64_t> broadcast_dims(const std::vector<int64_t>& a, const std::vector<int64_t>& b,
                                    const ConstEnv& env) {
  const size_t r = std::max(a.size(), b.size());
  std::vector<int64_t> out(r);
  for (size_t i = 0; i < r; ++i) {
    const int64_t x = i + a.size() >= r ? a[i + a.size() - r] : 1;
    const int64_t y = i + b.size() >= r ? b[i + b.size() - r] : 1;
    if (x == y || y == 1)
      out[i] = x;
    else if (x == 1)
      out[i] = y;
    else
      env.fail("inputs of dims that do not broadcast (dim " + std::to_string(i) + ": " +
               std::to_string(x) + " vs " + std::to_string(y) + ")");
  }
  return out;
}

bool eval_const(const NodeProto& n, const std::vector<const Const*>& in, const ConstEnv& env,
                std::vector<Const>& out) {
  const std::string& op = n.op_type;
  auto input = [&](size_t i) -> const Const& {
    if (i >= in.size() || in[i]->dtype == kUndefined)
      env.fail("input " + std::to_string(i) + " is missing");
    return *in[i];
  };
  auto has_input = [&](size_t i) { return i < in.size() && in[i]->dtype != kUndefined; };
  auto no_batch_math = [&](const Const& c) {
    if (c.holds_batch())
      env.fail("arithmetic on the batch size (lowbit models have a symbolic batch dim)");
  };
  if (op == "Constant") {
    Const c;
    if (const AttributeProto* a = find_attr(n, "value"); a && !a->t.empty()) {
      c = const_from_tensor(a->t[0]);
    } else if (const AttributeProto* f = find_attr(n, "value_float")) {
      c.dtype = kFloat;
      c.v = {f->f};
    } else if (const AttributeProto* fs = find_attr(n, "value_floats")) {
      c.dtype = kFloat;
      c.dims = {static_cast<int64_t>(fs->floats.size())};
      c.v.assign(fs->floats.begin(), fs->floats.end());
    } else if (const AttributeProto* i = find_attr(n, "value_int")) {
      c = ints_const({i->i}, {});
    } else if (const AttributeProto* is = find_attr(n, "value_ints")) {
      c = ints_const(is->ints, {static_cast<int64_t>(is->ints.size())});
    } else {
      env.fail(
          "attribute 'value' (a tensor; or value_float(s)/value_int(s)) is missing; "
          "sparse_value and value_string(s) are not supported");
    }
    out.push_back(std::move(c));
    return true;
  }
  if (op == "Identity") {
    out.push_back(input(0));
    return true;
  }
  if (op == "Cast") {
    Const c = input(0);
    const int64_t to = attr_int(n, "to", 0);
    if (to == kFloat || to == kDouble || to == kFloat16) {
      no_batch_math(c);
      c.dtype = kFloat;
      for (double& x : c.v) x = static_cast<float>(x);
    } else if (to == kInt64 || to == kInt32 || to == kInt8 || to == kUint8 || to == kInt16 ||
               to == kUint16 || to == kUint32 || to == kUint64 || to == kBool) {
      if (!c.is_int())
        for (double& x : c.v) x = std::trunc(x);
      if (to == kBool)
        for (double& x : c.v) x = x != 0;
      c.dtype = static_cast<int32_t>(to);
    } else {
      env.fail("attribute 'to' = " + std::to_string(to) + ": unsupported target type");
    }
    out.push_back(std::move(c));
    return true;
  }
  if (op == "Shape") {
    const Const& x = input(0);
    std::vector<int64_t> d = x.dims;
    const int64_t r = static_cast<int64_t>(d.size());
    int64_t start = attr_int(n, "start", 0), end = attr_int(n, "end", r);
    start = std::clamp<int64_t>(start < 0 ? start + r : start, 0, r);
    end = std::clamp<int64_t>(end < 0 ? end + r : end, 0, r);
    std::vector<int64_t> s(d.begin() + start, d.begin() + std::max(start, end));
    const auto len = static_cast<int64_t>(s.size());
    out.push_back(ints_const(std::move(s), {len}));
    return true;
  }
  if (op == "Gather") {
    const Const& x = input(0);
    const Const& idx = input(1);
    if (!idx.is_int()) env.fail("input 1 (indices) must be integers");
    if (x.dims.empty()) env.fail("input 0 must have rank >= 1");
    const int64_t r = static_cast<int64_t>(x.dims.size());
    const int64_t axis = norm_axis(attr_int(n, "axis", 0), r, env, "attribute 'axis'");
    const int64_t ad = x.dims[axis];
    if (ad == kBatch) env.fail("gathers along the batch dim");
    int64_t outer = 1, inner = 1;
    for (int64_t i = 0; i < axis; ++i) outer *= dim_count(x.dims[i]);
    for (int64_t i = axis + 1; i < r; ++i) inner *= dim_count(x.dims[i]);
    Const c;
    c.dtype = x.dtype;
    c.dims.assign(x.dims.begin(), x.dims.begin() + axis);
    c.dims.insert(c.dims.end(), idx.dims.begin(), idx.dims.end());
    c.dims.insert(c.dims.end(), x.dims.begin() + axis + 1, x.dims.end());
    const std::vector<int64_t> ii = idx.ints();
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t k : ii) {
        if (k < -ad || k >= ad)
          env.fail("index " + std::to_string(k) + " is out of range for a dim of " +
                   std::to_string(ad));
        const int64_t kk = k < 0 ? k + ad : k;
        for (int64_t j = 0; j < inner; ++j) c.v.push_back(x.v[(o * ad + kk) * inner + j]);
      }
    out.push_back(std::move(c));
    return true;
  }
  if (op == "Unsqueeze" || op == "Squeeze") {
    Const c = input(0);
    std::vector<int64_t> axes;
    if (env.opset >= 13) {
      if (has_input(1)) axes = input(1).ints();
    } else if (const AttributeProto* a = find_attr(n, "axes")) {
      axes = a->ints;
    }
    if (op == "Unsqueeze") {
      if (axes.empty()) env.fail("Unsqueeze needs axes");
      const int64_t r = static_cast<int64_t>(c.dims.size() + axes.size());
      for (int64_t& a : axes) a = norm_axis(a, r, env, "axes");
      std::sort(axes.begin(), axes.end());
      for (int64_t a : axes) c.dims.insert(c.dims.begin() + a, 1);
    } else {
      const int64_t r = static_cast<int64_t>(c.dims.size());
      for (int64_t& a : axes) a = norm_axis(a, r, env, "axes");
      std::vector<int64_t> d;
      for (int64_t i = 0; i < r; ++i) {
        const bool listed = std::find(axes.begin(), axes.end(), i) != axes.end();
        if (listed && c.dims[i] != 1) env.fail("squeezes a dim that is not 1");
        if (!(listed || (axes.empty() && c.dims[i] == 1))) d.push_back(c.dims[i]);
      }
      c.dims = d;
    }
    out.push_back(std::move(c));
    return true;
  }
  if (op == "Concat") {
    if (in.empty()) env.fail("no inputs");
    const Const& a0 = input(0);
    const int64_t r = static_cast<int64_t>(a0.dims.size());
    if (r == 0) env.fail("concatenates scalars");
    const int64_t axis = norm_axis(attr_int(n, "axis", 0), r, env, "attribute 'axis'");
    Const c;
    c.dtype = a0.dtype;
    c.dims = a0.dims;
    c.dims[axis] = 0;
    int64_t outer = 1;
    for (int64_t i = 0; i < axis; ++i) outer *= dim_count(a0.dims[i]);
    for (size_t k = 0; k < in.size(); ++k) {
      const Const& x = input(k);
      if (static_cast<int64_t>(x.dims.size()) != r) env.fail("inputs of different ranks");
      for (int64_t i = 0; i < r; ++i)
        if (i != axis && x.dims[i] != a0.dims[i]) env.fail("inputs whose dims do not match");
      if (x.dims[axis] == kBatch) env.fail("concatenates along a batch dim");
      c.dims[axis] += x.dims[axis];
    }
    for (int64_t o = 0; o < outer; ++o)
      for (size_t k = 0; k < in.size(); ++k) {
        const Const& x = *in[k];
        const int64_t chunk = x.numel() / std::max<int64_t>(outer, 1);
        for (int64_t j = 0; j < chunk; ++j) c.v.push_back(x.v[o * chunk + j]);
      }
    out.push_back(std::move(c));
    return true;
  }
  if (op == "Slice") {
    const Const& x = input(0);
    std::vector<int64_t> starts, ends, axes, steps;
    if (env.opset >= 10) {
      starts = input(1).ints();
      ends = input(2).ints();
      if (has_input(3)) axes = input(3).ints();
      if (has_input(4)) steps = input(4).ints();
    } else {
      if (const AttributeProto* a = find_attr(n, "starts")) starts = a->ints;
      if (const AttributeProto* a = find_attr(n, "ends")) ends = a->ints;
      if (const AttributeProto* a = find_attr(n, "axes")) axes = a->ints;
    }
    const int64_t r = static_cast<int64_t>(x.dims.size());
    if (axes.empty())
      for (int64_t i = 0; i < static_cast<int64_t>(starts.size()); ++i) axes.push_back(i);
    if (steps.empty()) steps.assign(starts.size(), 1);
    if (ends.size() != starts.size() || axes.size() != starts.size() ||
        steps.size() != starts.size())
      env.fail("starts, ends, axes and steps of different lengths");
    std::vector<int64_t> b(r, 0), st(r, 1), cnt(r);
    for (int64_t i = 0; i < r; ++i) cnt[i] = dim_count(x.dims[i]);
    for (size_t k = 0; k < starts.size(); ++k) {
      const int64_t a = norm_axis(axes[k], r, env, "axes");
      if (x.dims[a] == kBatch) env.fail("slices a batch dim");
      const int64_t d = x.dims[a], s = steps[k];
      if (s == 0) env.fail("a step of 0");
      int64_t lo = starts[k], hi = ends[k];
      if (lo < 0) lo += d;
      if (hi < 0) hi += d;
      if (s > 0) {
        lo = std::clamp<int64_t>(lo, 0, d);
        hi = std::clamp<int64_t>(hi, 0, d);
        cnt[a] = hi > lo ? (hi - lo + s - 1) / s : 0;
      } else {
        lo = std::clamp<int64_t>(lo, -1, d - 1);
        hi = std::clamp<int64_t>(hi, -1, d - 1);
        cnt[a] = lo > hi ? (lo - hi + (-s) - 1) / (-s) : 0;
      }
      b[a] = lo;
      st[a] = s;
    }
    Const c;
    c.dtype = x.dtype;
    c.dims = x.dims;
    for (int64_t i = 0; i < r; ++i)
      if (x.dims[i] != kBatch) c.dims[i] = cnt[i];
    const std::vector<int64_t> xs = strides_of(x.dims);
    const int64_t total = c.numel();
    std::vector<int64_t> idx(r, 0);
    for (int64_t o = 0; o < total; ++o) {
      int64_t src = 0;
      for (int64_t i = 0; i < r; ++i) src += (b[i] + idx[i] * st[i]) * xs[i];
      c.v.push_back(x.v[src]);
      for (int64_t i = r - 1; i >= 0; --i) {
        if (++idx[i] < cnt[i]) break;
        idx[i] = 0;
      }
    }
    out.push_back(std::move(c));
    return true;
  }
  if (op == "Reshape") {
    Const c = input(0);
    if (c.has_batch_dim()) env.fail("reshapes a constant that has a batch dim");
    std::vector<int64_t> s = input(1).ints();
    int64_t known = 1, free = -1;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == 0 && !attr_int(n, "allowzero", 0)) {
        if (i >= c.dims.size()) env.fail("a 0 in the shape past the input's rank");
        s[i] = c.dims[i];
      }
      if (s[i] == -1) {
        if (free >= 0) env.fail("several -1 in the shape");
        free = static_cast<int64_t>(i);
      } else if (s[i] < 0) {
        env.fail("a negative dim in the shape");
      } else {
        known *= s[i];
      }
    }
    if (free >= 0) s[free] = known ? c.numel() / known : 0;
    int64_t total = 1;
    for (int64_t d : s) total *= d;
    if (total != c.numel()) env.fail("a shape whose size does not match the input's");
    c.dims = s;
    out.push_back(std::move(c));
    return true;
  }
  if (op == "Transpose") {
    const Const& x = input(0);
    const int64_t r = static_cast<int64_t>(x.dims.size());
    std::vector<int64_t> perm;
    if (const AttributeProto* a = find_attr(n, "perm")) perm = a->ints;
    if (perm.empty())
      for (int64_t i = r - 1; i >= 0; --i) perm.push_back(i);
    std::vector<int64_t> sorted = perm;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < r; ++i)
      if (static_cast<int64_t>(sorted.size()) != r || sorted[i] != i)
        env.fail("attribute 'perm' is not a permutation of the input's axes");
    Const c;
    c.dtype = x.dtype;
    for (int64_t p : perm) c.dims.push_back(x.dims[p]);
    const std::vector<int64_t> xs = strides_of(x.dims);
    std::vector<int64_t> idx(r, 0);
    for (int64_t o = 0; o < x.numel(); ++o) {
      int64_t src = 0;
      for (int64_t i = 0; i < r; ++i) src += idx[i] * xs[perm[i]];
      c.v.push_back(x.v[src]);
      for (int64_t i = r - 1; i >= 0; --i) {
        if (++idx[i] < dim_count(c.dims[i])) break;
        idx[i] = 0;
      }
    }
    out.push_back(std::move(c));
    return true;
  }
  if (op == "ConstantOfShape" || op == "Expand") {
    Const fill;
    std::vector<int64_t> dims;
    if (op == "ConstantOfShape") {
      dims = input(0).ints();
      fill.dtype = kFloat;
      fill.v = {0.0};
      if (const AttributeProto* a = find_attr(n, "value"); a && !a->t.empty())
        fill = const_from_tensor(a->t[0]);
      if (fill.numel() != 1) env.fail("attribute 'value' must hold one element");
      fill.dims = {};
    } else {
      fill = input(0);
      dims = input(1).ints();
      // A constant of one value (PyTorch's zero initial states, traced at one batch size) fills
      // any shape, a batch-sized one too.
      const bool uniform = !fill.v.empty() && std::all_of(fill.v.begin(), fill.v.end(),
                                                          [&](double x) { return x == fill.v[0]; });
      if (uniform && fill.dims.size() <= dims.size()) {
        fill.v.resize(1);
        fill.dims = {};
      }
    }
    for (int64_t d : dims)
      if (d < 0 && d != kBatch) env.fail("a negative dim in the shape");
    const std::vector<int64_t> od = broadcast_dims(fill.dims, dims, env);
    Const c;
    c.dtype = fill.dtype;
    c.dims = od;
    if (c.numel() < 0 || c.numel() > kMaxElements)
      env.fail("a constant of dims " + std::to_string(c.dims.size()) + "-D holding more than " +
               std::to_string(kMaxElements) + " elements");
    c.v.resize(static_cast<size_t>(c.numel()));
    for_broadcast(od, fill.dims, [&](int64_t o, int64_t s) { c.v[o] = fill.v[s]; });
    out.push_back(std::move(c));
    return true;
  }
  if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div" || op == "Equal" || op == "Less" ||
      op == "Greater" || op == "Max" || op == "Min") {
    const Const& a = input(0);
    const Const& b = input(1);
    no_batch_math(a);
    no_batch_math(b);
    if (a.has_batch_dim() || b.has_batch_dim()) env.fail("arithmetic on a batch-sized constant");
    const std::vector<int64_t> od = broadcast_dims(a.dims, b.dims, env);
    Const c;
    c.dtype = (op == "Equal" || op == "Less" || op == "Greater") ? kBool : a.dtype;
    c.dims = od;
    if (c.numel() < 0 || c.numel() > kMaxElements)
      env.fail("a broadcast constant of more than " + std::to_string(kMaxElements) + " elements");
    c.v.assign(static_cast<size_t>(c.numel()), 0.0);
    std::vector<double> av(c.v.size()), bv(c.v.size());
    for_broadcast(od, a.dims, [&](int64_t o, int64_t s) { av[o] = a.v[s]; });
    for_broadcast(od, b.dims, [&](int64_t o, int64_t s) { bv[o] = b.v[s]; });
    for (size_t i = 0; i < c.v.size(); ++i) {
      const double x = av[i], y = bv[i];
      double r = 0;
      if (op == "Add") r = x + y;
      if (op == "Sub") r = x - y;
      if (op == "Mul") r = x * y;
      if (op == "Div") {
        if (a.is_int()) {
          if (y == 0) env.fail("an integer division by zero");
          r = std::trunc(x / y);
        } else {
          r = x / y;
        }
      }
      if (op == "Equal") r = x == y;
      if (op == "Less") r = x < y;
      if (op == "Greater") r = x > y;
      if (op == "Max") r = std::max(x, y);
      if (op == "Min") r = std::min(x, y);
      c.v[i] = a.is_int() || c.dtype == kBool ? r : static_cast<float>(r);
    }
    out.push_back(std::move(c));
    return true;
  }
  if (op == "Neg" || op == "Sqrt" || op == "Reciprocal") {
    Const c = input(0);
    no_batch_math(c);
    for (double& x : c.v) {
      if (op == "Neg") x = -x;
      if (op == "Sqrt") x = static_cast<float>(std::sqrt(x));
      if (op == "Reciprocal") x = static_cast<float>(1.0 / x);
    }
    out.push_back(std::move(c));
    return true;
  }
  if (op == "Range") {
    const Const& s = input(0);
    const Const& l = input(1);
    const Const& d = input(2);
    no_batch_math(s);
    no_batch_math(l);
    no_batch_math(d);
    if (s.numel() != 1 || l.numel() != 1 || d.numel() != 1) env.fail("non-scalar inputs");
    if (d.v[0] == 0) env.fail("a delta of 0");
    const double n_el = std::max(std::ceil((l.v[0] - s.v[0]) / d.v[0]), 0.0);
    if (!std::isfinite(n_el) || n_el > 1e7) env.fail("a range of more than 10^7 elements");
    Const c;
    c.dtype = s.dtype;
    c.dims = {static_cast<int64_t>(n_el)};
    for (int64_t i = 0; i < c.dims[0]; ++i) c.v.push_back(s.v[0] + static_cast<double>(i) * d.v[0]);
    out.push_back(std::move(c));
    return true;
  }
  return false;
}

}  // namespace lowbit::onnx::detail
