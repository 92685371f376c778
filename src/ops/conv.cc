// Convolution and pooling ops (NHWC, f32): conv2d and its two backward ops, max/avg pooling
// and their backward ops, and the size-1 axis views that run the 1-D ops and depthwise
// convolution as 2-D ones. Geometry lives in ops/conv_geometry.cc, loops in
// kernels/reference/conv.cc.
#include "kernels/reference/conv.h"

#include "kernels/dnnl/dnnl_kernels.h"
#include "kernels/fast/pool.h"
#include "lowbit/ops.h"
#include "ops/conv_common.h"
#include "ops/families.h"
#include "ops/op_util.h"

namespace lowbit::detail {

namespace {

// dy must be [n, out_h, out_w, out_c] of the geometry (unknown dims are compatible).
void check_dy(const InferCtx& c, int i, const kernels::Conv2DParams& p) {
  const Shape want{p.n, p.out_h, p.out_w, p.out_c};
  const Shape& dy = c.in[i].shape;
  bool ok = dy.rank() == 4;
  for (int d = 0; ok && d < 4; ++d) ok = dims_compatible(dy[d], want[d]);
  if (!ok)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'dy': expected shape ", want.str(),
                 " (the forward output) but found ", dy.str());
}

Shape merged(const Shape& a, const Shape& b) {
  Shape r = a;
  for (int d = 0; d < r.rank() && d < b.rank(); ++d) r[d] = merge_dim(a[d], b[d]);
  return r;
}

const float* in_f(const KernelCtx& k, int i) { return k.in[i].data<float>(); }
float* out_f(const KernelCtx& k) { return k.out[0].data<float>(); }
const kernels::Conv2DParams& geo(const KernelCtx& k) { return k.params<kernels::Conv2DParams>(); }

// Prepare steps: the window geometry, once per plan. conv2d(x, w); conv2d_backward_input(dy, w,
// x_like); conv2d_backward_filter(x, dy, w_like); the pools on x (or x_like: input `xi`).
std::any prepare_conv2d(const PrepareCtx& c) {
  return conv2d_params(c.in[0].shape, c.in[1].shape, c.attrs);
}
std::any prepare_conv2d_backward_input(const PrepareCtx& c) {
  return conv2d_params(c.in[2].shape, c.in[1].shape, c.attrs);
}
std::any prepare_conv2d_backward_filter(const PrepareCtx& c) {
  return conv2d_params(c.in[0].shape, c.in[2].shape, c.attrs);
}
template <int xi>
std::any prepare_pool2d(const PrepareCtx& c) {
  return pool2d_params(c.in[xi].shape, c.attrs);
}

// oneDNN runs a convolution when its operands are f32 and its *_supported says yes (oneDNN
// accepts the geometry and it is not so small that the reference is faster; see
// kernels/dnnl/dnnl_kernels.cc for the measured thresholds).
bool f32_operands(const KernelCtx& k) {
  return k.in[0].dtype() == DType::kF32 && k.in[1].dtype() == DType::kF32 &&
         k.out[0].dtype() == DType::kF32;
}

// --- conv2d and its backward ops -------------------------------------------------------------

std::vector<ValueType> infer_conv2d(const InferCtx& c) {
  require_float(c, 0, "x");
  require_float(c, 1, "w");
  const auto p = conv2d_geometry(c.op, c.in[0].shape, c.in[1].shape, c.attrs);
  return {{DType::kF32, Shape{p.n, p.out_h, p.out_w, p.out_c}}};
}

// inputs (dy, w, x_like)
std::vector<ValueType> infer_conv2d_backward_input(const InferCtx& c) {
  require_float(c, 0, "dy");
  require_float(c, 1, "w");
  const auto p = conv2d_geometry(c.op, c.in[2].shape, c.in[1].shape, c.attrs);
  check_dy(c, 0, p);
  return {{DType::kF32, Shape{merge_dim(p.n, c.in[0].shape[0]), p.in_h, p.in_w, p.in_c}}};
}

// inputs (x, dy, w_like)
std::vector<ValueType> infer_conv2d_backward_filter(const InferCtx& c) {
  require_float(c, 0, "x");
  require_float(c, 1, "dy");
  const auto p = conv2d_geometry(c.op, c.in[0].shape, c.in[2].shape, c.attrs);
  check_dy(c, 1, p);
  return {
      {DType::kF32,
       merged(c.in[2].shape, Shape{p.k_h, p.k_w, p.in_c == kUnknown ? kUnknown : p.in_c / p.groups,
                                   merge_dim(p.out_c, c.in[1].shape[3])})}};
}

// y = conv(x, w) is bilinear; with L = sum(y * dy):
//   dL/dx = backward_input(dy, w), dL/dw = backward_filter(x, dy).
// The backward ops are the same bilinear form read another way, so their gradients are the
// other two ops again (G is the gradient arriving at their output):
//   dx = backward_input(dy, w):  sum(dx * G) = sum(conv(G, w) * dy)
//   dw = backward_filter(x, dy): sum(dw * G) = sum(conv(x, G) * dy)
std::vector<Value> grad_conv2d(const GradCtx& g) {
  const Value &x = g.in[0], &w = g.in[1];
  return {ops::conv2d_backward_input(g.dy(), w, x, g.attrs),
          ops::conv2d_backward_filter(x, g.dy(), w, g.attrs)};
}
std::vector<Value> grad_conv2d_backward_input(const GradCtx& g) {
  const Value &dy = g.in[0], &w = g.in[1];
  return {ops::conv2d(g.dy(), w, g.attrs), ops::conv2d_backward_filter(g.dy(), dy, w, g.attrs),
          Value()};
}
std::vector<Value> grad_conv2d_backward_filter(const GradCtx& g) {
  const Value &x = g.in[0], &dy = g.in[1];
  return {ops::conv2d_backward_input(dy, g.dy(), x, g.attrs), ops::conv2d(x, g.dy(), g.attrs),
          Value()};
}

// --- pooling ---------------------------------------------------------------------------------

std::vector<ValueType> infer_pool2d(const InferCtx& c) {
  require_float(c, 0, "x");
  const auto p = pool2d_geometry(c.op, c.in[0].shape, c.attrs);
  return {{DType::kF32, Shape{p.n, p.out_h, p.out_w, p.out_c}}};
}
// inputs (x, dy)
std::vector<ValueType> infer_max_pool2d_backward(const InferCtx& c) {
  require_float(c, 0, "x");
  require_float(c, 1, "dy");
  const auto p = pool2d_geometry(c.op, c.in[0].shape, c.attrs);
  check_dy(c, 1, p);
  return {{DType::kF32,
           merged(c.in[0].shape, Shape{c.in[1].shape[0], kUnknown, kUnknown, c.in[1].shape[3]})}};
}
// inputs (dy, x_like)
std::vector<ValueType> infer_avg_pool2d_backward(const InferCtx& c) {
  require_float(c, 0, "dy");
  const auto p = pool2d_geometry(c.op, c.in[1].shape, c.attrs);
  check_dy(c, 0, p);
  return {{DType::kF32,
           merged(c.in[1].shape, Shape{c.in[0].shape[0], kUnknown, kUnknown, c.in[0].shape[3]})}};
}

// --- size-1 axis views -----------------------------------------------------------------------

int64_t view_axis(const InferCtx& c, int64_t hi) {
  const int64_t a = c.attrs.i("axis");
  if (a < 0 || a > hi)
    LOWBIT_THROW(ValueError, c.op, ": attribute 'axis': expected 0 <= axis <= ", hi,
                 " for x of shape ", c.in[0].shape.str(), " but found ", a);
  return a;
}

std::vector<ValueType> infer_insert_axis(const InferCtx& c) {
  const int64_t a = view_axis(c, c.in[0].shape.rank());
  std::vector<int64_t> d = c.in[0].shape.dims();
  d.insert(d.begin() + a, 1);
  return {{c.in[0].dtype, Shape(std::move(d))}};
}
std::vector<ValueType> infer_remove_axis(const InferCtx& c) {
  const int64_t a = view_axis(c, c.in[0].shape.rank() - 1);
  std::vector<int64_t> d = c.in[0].shape.dims();
  if (!dims_compatible(d[a], 1))
    LOWBIT_THROW(ShapeError, c.op, ": argument 'x': expected size 1 on axis ", a,
                 " but found shape ", c.in[0].shape.str());
  d.erase(d.begin() + a);
  return {{c.in[0].dtype, Shape(std::move(d))}};
}
std::vector<ValueType> infer_merge_axes(const InferCtx& c) {
  const int64_t a = view_axis(c, c.in[0].shape.rank() - 2);
  std::vector<int64_t> d = c.in[0].shape.dims();
  d[a] = d[a] == kUnknown || d[a + 1] == kUnknown ? kUnknown : d[a] * d[a + 1];
  d.erase(d.begin() + a + 1);
  return {{c.in[0].dtype, Shape(std::move(d))}};
}

void register_view(const std::string& name, InferFn infer, const std::string& doc) {
  register_op({.name = name,
               .num_inputs = 1,
               .infer = std::move(infer),
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 if (g.in[0].dtype() != DType::kF32) return {Value()};
                 return {ops::reshape_like(g.dy(), g.in[0])};
               },
               .reference =
                   [](const KernelCtx& k) {
                     std::memcpy(k.out[0].raw(), k.in[0].raw(), k.out[0].nbytes());
                   },
               .view_of_input = 0,
               .doc = doc});
}

}  // namespace

// --- composite ops: attribute translation ----------------------------------------------------

Attrs conv1d_as_conv2d(const Shape& x, const Shape& w, const Attrs& attrs) {
  const std::string op = "conv1d";
  if (x.rank() != 3)
    LOWBIT_THROW(ShapeError, op, ": argument 'x': expected rank 3 [N,L,C] but found shape ",
                 x.str());
  if (w.rank() != 3)
    LOWBIT_THROW(ShapeError, op,
                 ": argument 'w': expected rank 3 [K,Cin/groups,Cout] but found shape ", w.str());
  const int64_t s = window_ints(op, attrs, "strides", 1, 1, {1})[0];
  const int64_t d = window_ints(op, attrs, "dilations", 1, 1, {1})[0];
  const int64_t groups = attrs.i("groups", 1);
  if (groups < 1)
    LOWBIT_THROW(ValueError, op, ": attribute 'groups': expected >= 1 but found ", groups);
  if (x[2] != kUnknown && x[2] % groups != 0)
    LOWBIT_THROW(ShapeError, op,
                 ": argument 'x': expected input channels divisible by groups=", groups,
                 " but found ", x[2], " (x is ", x.str(), ")");
  if (w[2] != kUnknown && w[2] % groups != 0)
    LOWBIT_THROW(ShapeError, op,
                 ": argument 'w': expected output channels divisible by groups=", groups,
                 " but found ", w[2], " (w is ", w.str(), ")");
  if (x[2] != kUnknown && w[1] != kUnknown && w[1] * groups != x[2])
    LOWBIT_THROW(ShapeError, op, ": argument 'w': channels differ: expected [K,", x[2] / groups,
                 ",Cout] (x has ", x[2], " channels, groups=", groups, ") but found ", w.str());
  const std::string padding = attrs.s("padding", "valid");
  Attrs a2{{"strides", {1, s}}, {"dilations", {1, d}}, {"groups", groups}};
  Padding mode = Padding::kExplicit;
  int64_t before = 0, after = 0;
  if (padding == "valid" || padding == "same") {
    if (attrs.has("pads"))
      LOWBIT_THROW(ValueError, op,
                   ": attribute 'pads': only allowed with padding='explicit' "
                   "but found padding='",
                   padding, "'");
    a2.set("padding", padding);
    mode = padding == "same" ? Padding::kSame : Padding::kValid;
  } else if (padding == "causal") {
    if (w[0] == kUnknown)
      LOWBIT_THROW(ShapeError, op,
                   ": argument 'w': causal padding needs a known kernel size but "
                   "found ",
                   w.str());
    before = (w[0] - 1) * d;
    a2.set("padding", "explicit").set("pads", {0, 0, before, 0});
  } else if (padding == "explicit") {
    if (!attrs.has("pads"))
      LOWBIT_THROW(ValueError, op,
                   ": attribute 'pads': expected [left,right] with "
                   "padding='explicit' but found none");
    auto p = window_ints(op, attrs, "pads", 2, 0, {});
    before = p[0], after = p[1];
    a2.set("padding", "explicit").set("pads", {0, 0, before, after});
  } else {
    LOWBIT_THROW(ValueError, op,
                 ": attribute 'padding': expected 'valid', 'same', 'causal' or "
                 "'explicit' but found '",
                 padding, "'");
  }
  int64_t out, pb, pa;  // checks the window fits, in 1-D words
  window_dim(op, "length", x[1], w[0], s, d, mode, before, after, &out, &pb, &pa);
  return a2;
}

Attrs depthwise_as_conv2d(const Shape& x, const Shape& w, const Attrs& attrs) {
  const std::string op = "depthwise_conv2d";
  if (x.rank() != 4)
    LOWBIT_THROW(ShapeError, op, ": argument 'x': expected rank 4 [N,H,W,C] but found shape ",
                 x.str());
  if (w.rank() != 4)
    LOWBIT_THROW(ShapeError, op, ": argument 'w': expected rank 4 [KH,KW,C,M] but found shape ",
                 w.str());
  if (attrs.has("groups"))
    LOWBIT_THROW(ValueError, op,
                 ": attribute 'groups': not allowed (groups = channels) but "
                 "found groups=",
                 attrs.items().at("groups").str());
  if (!dims_compatible(x[3], w[2]))
    LOWBIT_THROW(ShapeError, op, ": argument 'w': channels differ: expected [KH,KW,", x[3],
                 ",M] but found ", w.str(), " (x is ", x.str(), ")");
  const int64_t c = merge_dim(x[3], w[2]);
  if (c == kUnknown)
    LOWBIT_THROW(ShapeError, op, ": expected a known channel count in x or w but found x ", x.str(),
                 " and w ", w.str());
  Attrs a2 = attrs;
  a2.set("groups", c);
  conv2d_attrs(op, a2);  // validates the rest, naming this op
  return a2;
}

Attrs pool1d_as_pool2d(const std::string& op, const Shape& x, const Attrs& attrs) {
  if (x.rank() != 3)
    LOWBIT_THROW(ShapeError, op, ": argument 'x': expected rank 3 [N,L,C] but found shape ",
                 x.str());
  if (!attrs.has("ksize"))
    LOWBIT_THROW(ValueError, op, ": attribute 'ksize': expected an int but found none");
  const int64_t k = window_ints(op, attrs, "ksize", 1, 1, {})[0];
  const int64_t s = window_ints(op, attrs, "strides", 1, 1, {k})[0];
  const std::string padding = attrs.s("padding", "valid");
  if (padding != "valid" && padding != "same")
    LOWBIT_THROW(ValueError, op, ": attribute 'padding': expected 'valid' or 'same' but found '",
                 padding, "'");
  int64_t out, pb, pa;
  window_dim(op, "length", x[1], k, s, 1, padding == "same" ? Padding::kSame : Padding::kValid, 0,
             0, &out, &pb, &pa);
  return {{"ksize", {1, k}}, {"strides", {1, s}}, {"padding", padding}};
}

void register_conv_ops() {
  register_op(
      {.name = "conv2d",
       .num_inputs = 2,
       .infer = infer_conv2d,
       .grad = grad_conv2d,
       .prepare = prepare_conv2d,
       .reference =
           [](const KernelCtx& k) {
             kernels::conv2d_forward_f32_reference(geo(k), in_f(k, 0), in_f(k, 1), out_f(k));
           },
       .fast = {{.name = "conv2d_f32__dnnl",
                 .isa = Isa::kDnnl,
                 .supports =
                     [](const KernelCtx& k) {
                       return f32_operands(k) &&
                              kernels::conv2d_forward_f32__dnnl_supported(geo(k));
                     },
                 .run =
                     [](const KernelCtx& k) {
                       kernels::conv2d_forward_f32__dnnl(geo(k), in_f(k, 0), in_f(k, 1), out_f(k));
                     }}},
       .doc = "2-D convolution (cross-correlation), NHWC x HWIO"});
  register_op({.name = "conv2d_backward_input",
               .num_inputs = 3,
               .infer = infer_conv2d_backward_input,
               .grad = grad_conv2d_backward_input,
               .prepare = prepare_conv2d_backward_input,
               .reference =
                   [](const KernelCtx& k) {
                     kernels::conv2d_backward_input_f32_reference(geo(k), in_f(k, 0), in_f(k, 1),
                                                                  out_f(k));
                   },
               .fast = {{.name = "conv2d_backward_input_f32__dnnl",
                         .isa = Isa::kDnnl,
                         .supports =
                             [](const KernelCtx& k) {
                               return f32_operands(k) &&
                                      kernels::conv2d_backward_input_f32__dnnl_supported(geo(k));
                             },
                         .run =
                             [](const KernelCtx& k) {
                               kernels::conv2d_backward_input_f32__dnnl(geo(k), in_f(k, 0),
                                                                        in_f(k, 1), out_f(k));
                             }}},
               .doc = "gradient of conv2d w.r.t. its input: (dy, w, x_like) -> dx"});
  register_op({.name = "conv2d_backward_filter",
               .num_inputs = 3,
               .infer = infer_conv2d_backward_filter,
               .grad = grad_conv2d_backward_filter,
               .prepare = prepare_conv2d_backward_filter,
               .reference =
                   [](const KernelCtx& k) {
                     kernels::conv2d_backward_filter_f32_reference(geo(k), in_f(k, 0), in_f(k, 1),
                                                                   out_f(k));
                   },
               .fast = {{.name = "conv2d_backward_filter_f32__dnnl",
                         .isa = Isa::kDnnl,
                         .supports =
                             [](const KernelCtx& k) {
                               return f32_operands(k) &&
                                      kernels::conv2d_backward_filter_f32__dnnl_supported(geo(k));
                             },
                         .run =
                             [](const KernelCtx& k) {
                               kernels::conv2d_backward_filter_f32__dnnl(geo(k), in_f(k, 0),
                                                                         in_f(k, 1), out_f(k));
                             }}},
               .doc = "gradient of conv2d w.r.t. its filter: (x, dy, w_like) -> dw"});

  register_op({.name = "max_pool2d",
               .num_inputs = 1,
               .infer = infer_pool2d,
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::max_pool2d_backward(g.in[0], g.dy(), g.attrs)};
               },
               .prepare = prepare_pool2d<0>,
               .reference =
                   [](const KernelCtx& k) {
                     kernels::max_pool2d_f32_reference(geo(k), in_f(k, 0), out_f(k));
                   },
               .fast = {{.name = "max_pool2d_nhwc_f32__portable",
                         .run =
                             [](const KernelCtx& k) {
                               kernels::max_pool2d_nhwc_f32__portable(geo(k), in_f(k, 0), out_f(k));
                             }}},
               .doc = "max over kh x kw windows (padded cells ignored), NHWC"});
  register_op({.name = "avg_pool2d",
               .num_inputs = 1,
               .infer = infer_pool2d,
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::avg_pool2d_backward(g.dy(), g.in[0], g.attrs)};
               },
               .prepare = prepare_pool2d<0>,
               .reference =
                   [](const KernelCtx& k) {
                     kernels::avg_pool2d_f32_reference(geo(k), in_f(k, 0), out_f(k));
                   },
               .doc = "mean over the valid cells of kh x kw windows, NHWC"});
  // Not differentiable: its gradient w.r.t. dy would be a gather at each window's argmax (an
  // op of its own); nothing needs second derivatives of max pooling yet.
  register_op({.name = "max_pool2d_backward",
               .num_inputs = 2,
               .infer = infer_max_pool2d_backward,
               .prepare = prepare_pool2d<0>,
               .reference =
                   [](const KernelCtx& k) {
                     kernels::max_pool2d_backward_f32_reference(geo(k), in_f(k, 0), in_f(k, 1),
                                                                out_f(k));
                   },
               .fast = {{.name = "max_pool2d_backward_nhwc_f32__portable",
                         .run =
                             [](const KernelCtx& k) {
                               kernels::max_pool2d_backward_nhwc_f32__portable(
                                   geo(k), in_f(k, 0), in_f(k, 1), out_f(k));
                             }}},
               .doc = "gradient of max_pool2d: (x, dy) -> dx, dy to each window's first max"});
  register_op({.name = "avg_pool2d_backward",
               .num_inputs = 2,
               .infer = infer_avg_pool2d_backward,
               // Linear in dy; its adjoint is the forward average pooling.
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::avg_pool2d(g.dy(), g.attrs), Value()};
               },
               .prepare = prepare_pool2d<1>,
               .reference =
                   [](const KernelCtx& k) {
                     kernels::avg_pool2d_backward_f32_reference(geo(k), in_f(k, 0), out_f(k));
                   },
               .doc = "gradient of avg_pool2d: (dy, x_like) -> dx, dy/count to valid cells"});

  register_view("insert_axis", infer_insert_axis, "view with a size-1 axis inserted at 'axis'");
  register_view("remove_axis", infer_remove_axis, "view without the size-1 axis 'axis'");
  register_view("merge_axes", infer_merge_axes, "view with axes 'axis' and 'axis'+1 merged");
}

}  // namespace lowbit::detail
