// Reductions: sum, mean, max, min over axes; argmax/argmin along one axis; and the helpers
// reduce_count / equal_indicator that their gradients use.
#include <cmath>
#include <limits>

#include "lowbit/ops.h"
#include "ops/elementwise_common.h"
#include "ops/families.h"
#include "ops/op_util.h"

namespace lowbit::detail {

namespace {

void require_numeric(const InferCtx& c, int i, const char* arg) {
  if (c.in[i].dtype == DType::kBool)
    LOWBIT_THROW(DTypeError, c.op, ": argument '", arg,
                 "': expected f32 or an integer dtype but found ", type_str(c.in[i]));
}

int normalize_axis(const std::string& op, const char* attr, int64_t a, int rank,
                   const Shape& shape) {
  if (a < -rank || a >= rank)
    LOWBIT_THROW(ValueError, op, ": attribute '", attr, "': expected an axis in [", -rank, ", ",
                 rank, ") but found ", a, " (input shape ", shape.str(), ")");
  return static_cast<int>(a < 0 ? a + rank : a);
}

// The reduced axes, sorted and normalised; an empty `axes` attribute means every axis.
std::vector<int> reduce_axes(const std::string& op, const Shape& s, const Attrs& attrs) {
  const std::vector<int64_t> raw = attrs.ints("axes", {});
  std::vector<int> axes;
  if (raw.empty()) {
    for (int d = 0; d < s.rank(); ++d) axes.push_back(d);
    return axes;
  }
  std::vector<bool> seen(s.rank(), false);
  for (int64_t a : raw) {
    int n = normalize_axis(op, "axes", a, s.rank(), s);
    if (seen[n])
      LOWBIT_THROW(ValueError, op, ": attribute 'axes': expected distinct axes but axis ", a,
                   " repeats another (input shape ", s.str(), ")");
    seen[n] = true;
  }
  for (int d = 0; d < s.rank(); ++d)
    if (seen[d]) axes.push_back(d);
  return axes;
}

Shape reduced_shape(const Shape& s, const std::vector<int>& axes, bool keepdims) {
  std::vector<bool> red(s.rank(), false);
  for (int a : axes) red[a] = true;
  std::vector<int64_t> dims;
  for (int d = 0; d < s.rank(); ++d) {
    if (!red[d])
      dims.push_back(s[d]);
    else if (keepdims)
      dims.push_back(1);
  }
  return Shape(dims);
}

// x's dims grouped into runs of kept and of reduced axes (size-1 dims dropped, neighbours of the
// same kind merged), so the loops below see as few dims as possible.
struct ReduceGeometry {
  std::vector<int64_t> kept_dims, kept_strides;  // outer to inner, in x's elements
  std::vector<int64_t> red_dims, red_strides;
  int64_t n_out = 1, n_red = 1;

  ReduceGeometry(const Shape& s, const std::vector<int>& axes) {
    const int r = s.rank();
    std::vector<bool> red(r, false);
    for (int a : axes) red[a] = true;
    std::vector<int64_t> stride(r, 1);
    for (int d = r - 2; d >= 0; --d) stride[d] = stride[d + 1] * s[d + 1];
    int prev = -1;  // kind of the previous kept group: 0 kept, 1 reduced
    for (int d = 0; d < r; ++d) {
      const int64_t n = s[d];
      if (red[d])
        n_red *= n;
      else
        n_out *= n;
      if (n == 1) continue;
      const int kind = red[d] ? 1 : 0;
      auto& dims = kind ? red_dims : kept_dims;
      auto& strides = kind ? red_strides : kept_strides;
      if (kind == prev) {
        dims.back() *= n;
        strides.back() = stride[d];
      } else {
        dims.push_back(n);
        strides.push_back(stride[d]);
      }
      prev = kind;
    }
  }

  // Offset in x of the first element reduced into output element o.
  int64_t base(int64_t o) const {
    int64_t off = 0;
    for (int i = static_cast<int>(kept_dims.size()) - 1; i >= 0; --i) {
      off += (o % kept_dims[i]) * kept_strides[i];
      o /= kept_dims[i];
    }
    return off;
  }

  // Calls f(offset) for every element reduced into the output whose base offset is `base`.
  template <class F>
  void for_each(int64_t base, F&& f) const {
    if (n_red == 0) return;
    if (red_dims.empty()) {
      f(base);
      return;
    }
    const int k = static_cast<int>(red_dims.size()) - 1;
    const int64_t inner = red_dims[k], inner_stride = red_strides[k];
    const int64_t n_outer = n_red / inner;
    for (int64_t q = 0; q < n_outer; ++q) {
      int64_t off = base, rest = q;
      for (int i = k - 1; i >= 0; --i) {
        off += (rest % red_dims[i]) * red_strides[i];
        rest /= red_dims[i];
      }
      for (int64_t j = 0; j < inner; ++j) f(off + j * inner_stride);
    }
  }
};

enum class ReduceKind { kSum, kMean, kMax, kMin };

// How one output element accumulates: init, step per input element, finish with the count.
template <ReduceKind K, class T>
struct Reducer {
  static constexpr bool kFloat = std::is_floating_point_v<T>;
  static constexpr bool kAdd = K == ReduceKind::kSum || K == ReduceKind::kMean;
  static constexpr bool kMax = K == ReduceKind::kMax;
  using Acc = std::conditional_t<kAdd, std::conditional_t<kFloat, double, int64_t>, T>;

  static Acc init() {
    if constexpr (kAdd)
      return Acc{0};
    else if constexpr (kFloat)
      return kMax ? -INFINITY : INFINITY;
    else
      return kMax ? std::numeric_limits<T>::lowest() : std::numeric_limits<T>::max();
  }
  static void step(Acc& a, T v) {
    if constexpr (kAdd) {
      a += static_cast<Acc>(v);
    } else {
      bool better = kMax ? v > a : v < a;
      if constexpr (kFloat) better = better || std::isnan(v);  // NaN sticks once seen
      if (better) a = v;
    }
  }
  static T finish(Acc a, int64_t n) {
    if constexpr (K == ReduceKind::kMean) {
      if constexpr (kFloat)
        return static_cast<T>(a / static_cast<double>(n));  // 0/0: NaN
      else
        return n == 0 ? T{0} : static_cast<T>(a / n);  // truncates toward zero
    } else {
      return static_cast<T>(a);  // integer sums wrap to T
    }
  }
};

// Outputs reduced together in the column-tiled path (64 accumulators: 512 bytes of stack).
constexpr int64_t kReduceTile = 64;

// Each output element accumulates its inputs in the same order (row-major over the reduced
// dims) in both paths below, so results do not depend on the path or the thread count.
template <ReduceKind K>
void reduce_reference(const KernelCtx& k) {
  const Tensor& x = k.in[0];
  Tensor& out = k.out[0];
  const ReduceGeometry& geo = k.params<ReduceGeometry>();
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, bool>) {
      LOWBIT_CHECK(false, "reduction kernel called on bool (the shape rule rejects it)");
    } else {
      using R = Reducer<K, T>;
      const T* px = static_cast<const T*>(x.raw());
      T* po = static_cast<T*>(out.raw());
      const int64_t n_out = geo.n_out, n_red = geo.n_red;
      const bool parallel = n_out > 1 && n_out * n_red > kParallelGrain;
      if (!geo.kept_dims.empty() && geo.kept_strides.back() == 1 && !geo.red_dims.empty()) {
        // x's last dim is kept (e.g. a mean over [N,H,W] of NHWC): neighbouring outputs read
        // neighbouring inputs, so a tile of them walks the reduced dims once, reading rows.
        const int64_t w = geo.kept_dims.back(), tiles_per_row = (w + kReduceTile - 1) / kReduceTile;
#pragma omp parallel for if (parallel) schedule(static)
        for (int64_t t = 0; t < (n_out / w) * tiles_per_row; ++t) {
          const int64_t o0 = (t / tiles_per_row) * w + (t % tiles_per_row) * kReduceTile;
          const int64_t nb = std::min(kReduceTile, w - (t % tiles_per_row) * kReduceTile);
          typename R::Acc acc[kReduceTile];
          for (int64_t b = 0; b < nb; ++b) acc[b] = R::init();
          geo.for_each(geo.base(o0), [&](int64_t i) {
            for (int64_t b = 0; b < nb; ++b) R::step(acc[b], px[i + b]);
          });
          for (int64_t b = 0; b < nb; ++b) po[o0 + b] = R::finish(acc[b], n_red);
        }
        return;
      }
#pragma omp parallel for if (parallel) schedule(static)
      for (int64_t o = 0; o < n_out; ++o) {
        typename R::Acc acc = R::init();
        geo.for_each(geo.base(o), [&](int64_t i) { R::step(acc, px[i]); });
        po[o] = R::finish(acc, n_red);
      }
    }
  });
}

// dy (or y) of a reduction given back x's rank, the reduced axes as size-1 dims (views).
Value with_reduced_dims(Value v, const std::vector<int>& axes, bool keepdims) {
  if (keepdims) return v;
  for (int a : axes) v = ops::expand_dims(v, a);  // ascending, so each lands at its final place
  return v;
}

std::vector<int64_t> to_ints(const std::vector<int>& v) { return {v.begin(), v.end()}; }

std::vector<Value> sum_grad(const GradCtx& g) {
  const Value& x = g.in[0];
  if (!is_float(x.dtype())) return {Value()};
  const auto axes = reduce_axes("sum", x.shape(), g.attrs);
  return {ops::broadcast_like(with_reduced_dims(g.dy(), axes, g.attrs.b("keepdims", false)), x)};
}

std::vector<Value> mean_grad(const GradCtx& g) {
  const Value& x = g.in[0];
  if (!is_float(x.dtype())) return {Value()};
  const auto axes = reduce_axes("mean", x.shape(), g.attrs);
  Value dx = ops::broadcast_like(with_reduced_dims(g.dy(), axes, g.attrs.b("keepdims", false)), x);
  int64_t count = 1;
  for (int a : axes)
    count = (count == kUnknown || x.shape()[a] == kUnknown) ? kUnknown : count * x.shape()[a];
  if (count == kUnknown) return {dx / ops::reduce_count(x, to_ints(axes))};
  if (count == 0) return {dx};  // x is empty: nothing to scale
  return {dx * (1.0 / static_cast<double>(count))};
}

// TensorFlow's _MinOrMaxGrad: dy goes to the elements equal to the result, split evenly among
// ties: dx = [x == y] / (number of ties) * dy.
std::vector<Value> min_max_grad(const GradCtx& g) {
  const Value& x = g.in[0];
  if (!is_float(x.dtype())) return {Value()};
  const auto axes = reduce_axes("max/min", x.shape(), g.attrs);
  const bool keepdims = g.attrs.b("keepdims", false);
  Value y = with_reduced_dims(g.out[0], axes, keepdims);
  Value dy = with_reduced_dims(g.dy(), axes, keepdims);
  Value ind = ops::equal_indicator(x, y);
  Value ties = ops::sum(ind, to_ints(axes), true);
  return {ind / ties * dy};
}

std::vector<ValueType> infer_reduce(const InferCtx& c) {
  require_numeric(c, 0, "x");
  const auto axes = reduce_axes(c.op, c.in[0].shape, c.attrs);
  return {{c.in[0].dtype, reduced_shape(c.in[0].shape, axes, c.attrs.b("keepdims", false))}};
}

void register_reduction(const std::string& name, KernelFn kernel, GradFn grad,
                        const std::string& doc) {
  register_op({.name = name,
               .num_inputs = 1,
               .infer = infer_reduce,
               .grad = std::move(grad),
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return ReduceGeometry(c.in[0].shape, reduce_axes(c.op, c.in[0].shape, c.attrs));
               },
               .reference = std::move(kernel),
               .doc = doc});
}

std::any prepare_arg_axis(const PrepareCtx& c) {
  const int64_t a0 = c.attrs.i("axis", -1);
  return AxisParam{static_cast<int>(a0 < 0 ? a0 + c.in[0].shape.rank() : a0)};
}

template <bool kMax>
void arg_reference(const KernelCtx& k) {
  const Tensor& x = k.in[0];
  const int r = x.rank();
  const int axis = k.params<AxisParam>().axis;
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= x.dim(d);
  for (int d = axis + 1; d < r; ++d) inner *= x.dim(d);
  const int64_t n = x.dim(axis);
  int64_t* po = k.out[0].data<int64_t>();
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, bool>) {
      LOWBIT_CHECK(false, "argmax/argmin kernel called on bool (the shape rule rejects it)");
    } else {
      const T* px = static_cast<const T*>(x.raw());
      const int64_t n_out = outer * inner;
#pragma omp parallel for if (n_out > 1 && n_out * n > kParallelGrain) schedule(static)
      for (int64_t o = 0; o < n_out; ++o) {
        const T* p = px + (o / inner) * n * inner + (o % inner);
        T best = p[0];
        int64_t bi = 0;
        for (int64_t j = 1; j < n; ++j) {
          const T v = p[j * inner];
          bool better = kMax ? v > best : v < best;  // strict: ties keep the first index
          if constexpr (std::is_floating_point_v<T>)
            better = better || (std::isnan(v) && !std::isnan(best));
          if (better) {
            best = v;
            bi = j;
          }
        }
        po[o] = bi;
      }
    }
  });
}

std::vector<ValueType> infer_arg(const InferCtx& c) {
  require_numeric(c, 0, "x");
  const Shape& s = c.in[0].shape;
  if (s.rank() == 0)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'x': expected rank >= 1 but found a scalar");
  const int axis = normalize_axis(c.op, "axis", c.attrs.i("axis", -1), s.rank(), s);
  if (s[axis] == 0)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'x': expected a non-empty axis ", axis,
                 " but found shape ", s.str());
  return {{DType::kS64, reduced_shape(s, {axis}, c.attrs.b("keepdims", false))}};
}

}  // namespace

void register_reduce_ops() {
  register_reduction("sum", reduce_reference<ReduceKind::kSum>, sum_grad,
                     "sum over axes (attrs axes, keepdims)");
  register_reduction("mean", reduce_reference<ReduceKind::kMean>, mean_grad,
                     "mean over axes (attrs axes, keepdims)");
  register_reduction("max", reduce_reference<ReduceKind::kMax>, min_max_grad,
                     "maximum over axes (attrs axes, keepdims)");
  register_reduction("min", reduce_reference<ReduceKind::kMin>, min_max_grad,
                     "minimum over axes (attrs axes, keepdims)");
  register_op({.name = "argmax",
               .num_inputs = 1,
               .infer = infer_arg,
               .prepare = prepare_arg_axis,
               .reference = arg_reference<true>,
               .doc = "index of the maximum along axis, s64 (attrs axis, keepdims)"});
  register_op({.name = "argmin",
               .num_inputs = 1,
               .infer = infer_arg,
               .prepare = prepare_arg_axis,
               .reference = arg_reference<false>,
               .doc = "index of the minimum along axis, s64 (attrs axis, keepdims)"});
  register_op({.name = "reduce_count",
               .num_inputs = 1,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 reduce_axes(c.op, c.in[0].shape, c.attrs);  // validates
                 return {{DType::kF32, Shape{}}};
               },
               .grad = [](const GradCtx&) -> std::vector<Value> { return {Value()}; },
               .prepare = [](const PrepareCtx& c) -> std::any {
                 int64_t n = 1;
                 for (int a : reduce_axes(c.op, c.in[0].shape, c.attrs)) n *= c.in[0].shape[a];
                 return ScalarParam{static_cast<double>(n)};
               },
               .reference =
                   [](const KernelCtx& k) {
                     k.out[0].data<float>()[0] = static_cast<float>(k.params<ScalarParam>().value);
                   },
               .doc = "number of elements a reduction over axes combines, f32 scalar"});
  register_op({.name = "equal_indicator",
               .num_inputs = 2,
               .infer = [](const InferCtx& c) { return infer_binary(c, false, DType::kF32); },
               .grad = [](const GradCtx&) -> std::vector<Value> {
                 return {Value(), Value()};
               },
               .reference =
                   [](const KernelCtx& k) {
                     dispatch_dtype(k.in[0].dtype(), [&](auto tag) {
                       using T = decltype(tag);
                       binary_loop<T, float>(k.in[0], k.in[1], k.out[0],
                                             [](T a, T b) { return a == b ? 1.0f : 0.0f; });
                     });
                   },
               .doc = "f32 1 where a == b else 0 (broadcasting)"});
}

}  // namespace lowbit::detail
