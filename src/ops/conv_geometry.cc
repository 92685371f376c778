// Attribute parsing and window geometry for the conv/pool ops (see ops/conv_common.h).
#include <variant>

#include "lowbit/error.h"
#include "ops/conv_common.h"

namespace lowbit::detail {

namespace {

std::string list_str(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  s += ']';
  return s;
}

}  // namespace

std::vector<int64_t> window_ints(const std::string& op, const Attrs& a, const char* name, size_t n,
                                 int64_t min, std::vector<int64_t> dflt) {
  if (!a.has(name)) return dflt;
  const Attr::Variant& v = a.items().at(name).get();
  std::vector<int64_t> r;
  if (const auto* i = std::get_if<int64_t>(&v)) {
    r.assign(n, *i);
  } else if (const auto* l = std::get_if<std::vector<int64_t>>(&v);
             l && (l->size() == n || l->size() == 1)) {
    r = l->size() == n ? *l : std::vector<int64_t>(n, (*l)[0]);
  } else {
    LOWBIT_THROW(ValueError, op, ": attribute '", name, "': expected an int or a list of ", n,
                 " ints but found ", a.items().at(name).str());
  }
  for (int64_t x : r)
    if (x < min)
      LOWBIT_THROW(ValueError, op, ": attribute '", name, "': expected values >= ", min,
                   " but found ", list_str(r));
  return r;
}

namespace {

Padding parse_padding(const std::string& op, const Attrs& a, bool allow_explicit) {
  const std::string p = a.s("padding", "valid");
  if (p == "valid") return Padding::kValid;
  if (p == "same") return Padding::kSame;
  if (p == "explicit" && allow_explicit) return Padding::kExplicit;
  LOWBIT_THROW(ValueError, op, ": attribute 'padding': expected ",
               allow_explicit ? "'valid', 'same' or 'explicit'" : "'valid' or 'same'",
               " but found '", p, "'");
}

}  // namespace

WindowAttrs conv2d_attrs(const std::string& op, const Attrs& attrs) {
  WindowAttrs w;
  auto s = window_ints(op, attrs, "strides", 2, 1, {1, 1});
  auto d = window_ints(op, attrs, "dilations", 2, 1, {1, 1});
  w.stride_h = s[0], w.stride_w = s[1], w.dil_h = d[0], w.dil_w = d[1];
  w.padding = parse_padding(op, attrs, true);
  if (w.padding == Padding::kExplicit) {
    if (!attrs.has("pads"))
      LOWBIT_THROW(ValueError, op,
                   ": attribute 'pads': expected [top,bottom,left,right] with "
                   "padding='explicit' but found none");
    auto p = window_ints(op, attrs, "pads", 4, 0, {});
    for (int i = 0; i < 4; ++i) w.pads[i] = p[i];
  } else if (attrs.has("pads")) {
    LOWBIT_THROW(ValueError, op,
                 ": attribute 'pads': only allowed with padding='explicit' but "
                 "found padding='",
                 attrs.s("padding", "valid"), "'");
  }
  w.groups = attrs.i("groups", 1);
  if (w.groups < 1)
    LOWBIT_THROW(ValueError, op, ": attribute 'groups': expected >= 1 but found ", w.groups);
  return w;
}

WindowAttrs pool2d_attrs(const std::string& op, const Attrs& attrs) {
  WindowAttrs w;
  if (!attrs.has("ksize"))
    LOWBIT_THROW(ValueError, op, ": attribute 'ksize': expected [kh,kw] but found none");
  auto k = window_ints(op, attrs, "ksize", 2, 1, {});
  auto s = window_ints(op, attrs, "strides", 2, 1, k);
  w.k_h = k[0], w.k_w = k[1], w.stride_h = s[0], w.stride_w = s[1];
  w.padding = parse_padding(op, attrs, false);
  return w;
}

void window_dim(const std::string& op, const char* dim, int64_t in, int64_t k, int64_t stride,
                int64_t dilation, Padding padding, int64_t explicit_before, int64_t explicit_after,
                int64_t* out, int64_t* pad_before, int64_t* pad_after) {
  *pad_before = padding == Padding::kExplicit ? explicit_before : 0;
  *pad_after = padding == Padding::kExplicit ? explicit_after : 0;
  if (in == kUnknown || k == kUnknown) {
    *out = kUnknown;
    return;
  }
  const int64_t k_eff = (k - 1) * dilation + 1;
  if (padding == Padding::kSame) {
    if (in == 0) {
      *out = 0;
      return;
    }
    kernels::window_geometry(in, k, stride, dilation, true, out, pad_before, pad_after);
    return;
  }
  const int64_t padded = in + *pad_before + *pad_after;
  if (padded < k_eff)
    LOWBIT_THROW(ShapeError, op, ": argument 'x': the window (", k, " with dilation ", dilation,
                 ", effective size ", k_eff, ") does not fit the input ", dim, " ", in,
                 padding == Padding::kValid ? " with 'valid' padding" : " plus its explicit pads",
                 ": expected ", dim, " >= ", k_eff - *pad_before - *pad_after, " but found ", in);
  *out = (padded - k_eff) / stride + 1;
}

kernels::Conv2DParams conv2d_geometry(const std::string& op, const Shape& x, const Shape& w,
                                      const Attrs& attrs) {
  const WindowAttrs a = conv2d_attrs(op, attrs);
  if (x.rank() != 4)
    LOWBIT_THROW(ShapeError, op, ": argument 'x': expected rank 4 [N,H,W,C] but found shape ",
                 x.str());
  if (w.rank() != 4)
    LOWBIT_THROW(ShapeError, op,
                 ": argument 'w': expected rank 4 [KH,KW,Cin/groups,Cout] but found shape ",
                 w.str());
  kernels::Conv2DParams p;
  p.n = x[0], p.in_h = x[1], p.in_w = x[2], p.in_c = x[3];
  p.k_h = w[0], p.k_w = w[1], p.out_c = w[3];
  p.groups = a.groups;
  p.stride_h = a.stride_h, p.stride_w = a.stride_w, p.dil_h = a.dil_h, p.dil_w = a.dil_w;
  if (p.in_c != kUnknown && p.in_c % a.groups != 0)
    LOWBIT_THROW(ShapeError, op,
                 ": argument 'x': expected input channels divisible by groups=", a.groups,
                 " but found ", p.in_c, " (x is ", x.str(), ")");
  if (p.out_c != kUnknown && p.out_c % a.groups != 0)
    LOWBIT_THROW(ShapeError, op,
                 ": argument 'w': expected output channels divisible by groups=", a.groups,
                 " but found ", p.out_c, " (w is ", w.str(), ")");
  if (p.in_c != kUnknown && w[2] != kUnknown && w[2] * a.groups != p.in_c)
    LOWBIT_THROW(ShapeError, op, ": argument 'w': channels differ: expected [KH,KW,",
                 p.in_c / a.groups, ",Cout] (x has ", p.in_c, " channels, groups=", a.groups,
                 ") but found ", w.str());
  if (p.in_c == kUnknown && w[2] != kUnknown) p.in_c = w[2] * a.groups;
  window_dim(op, "height", p.in_h, p.k_h, p.stride_h, p.dil_h, a.padding, a.pads[0], a.pads[1],
             &p.out_h, &p.pad_top, &p.pad_bottom);
  window_dim(op, "width", p.in_w, p.k_w, p.stride_w, p.dil_w, a.padding, a.pads[2], a.pads[3],
             &p.out_w, &p.pad_left, &p.pad_right);
  return p;
}

kernels::Conv2DParams pool2d_geometry(const std::string& op, const Shape& x, const Attrs& attrs) {
  const WindowAttrs a = pool2d_attrs(op, attrs);
  if (x.rank() != 4)
    LOWBIT_THROW(ShapeError, op, ": argument 'x': expected rank 4 [N,H,W,C] but found shape ",
                 x.str());
  kernels::Conv2DParams p;
  p.n = x[0], p.in_h = x[1], p.in_w = x[2], p.in_c = x[3];
  p.k_h = a.k_h, p.k_w = a.k_w, p.out_c = p.in_c, p.groups = p.in_c;
  p.stride_h = a.stride_h, p.stride_w = a.stride_w;
  window_dim(op, "height", p.in_h, p.k_h, p.stride_h, 1, a.padding, 0, 0, &p.out_h, &p.pad_top,
             &p.pad_bottom);
  window_dim(op, "width", p.in_w, p.k_w, p.stride_w, 1, a.padding, 0, 0, &p.out_w, &p.pad_left,
             &p.pad_right);
  return p;
}

kernels::Conv2DParams conv2d_params(const Shape& x, const Shape& w, const Attrs& attrs) {
  return conv2d_geometry("conv2d", x, w, attrs);
}

kernels::Conv2DParams pool2d_params(const Shape& x, const Attrs& attrs) {
  return pool2d_geometry("pool2d", x, attrs);
}

}  // namespace lowbit::detail
