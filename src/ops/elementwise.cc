// Elementwise ops: arithmetic, math functions, activations, comparisons, select, cast; plus the
// broadcasting helpers sum_like / broadcast_like / fill_like / reshape_like used by gradients.
#include <cmath>

#include "lowbit/ops.h"
#include "ops/elementwise_common.h"
#include "ops/families.h"

namespace lowbit::detail {

namespace {
struct AddOp {
  template <class T> T operator()(T a, T b) const { return static_cast<T>(a + b); }
};
struct SubOp {
  template <class T> T operator()(T a, T b) const { return static_cast<T>(a - b); }
};
struct MulOp {
  template <class T> T operator()(T a, T b) const { return static_cast<T>(a * b); }
};
struct DivOp {
  template <class T> T operator()(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>) return a / b;
    else return b == 0 ? T{0} : static_cast<T>(a / b);
  }
};
}  // namespace

void register_broadcast_helpers() {
  register_op({.name = "sum_like",
               .num_inputs = 2,
               .infer =
                   [](const InferCtx& c) -> std::vector<ValueType> {
                     // x must broadcast from `like`'s shape: check via broadcast_shapes.
                     Shape b = broadcast_shapes(c.in[0].shape, c.in[1].shape, c.op.c_str());
                     if (b.rank() != c.in[0].shape.rank())
                       LOWBIT_THROW(ShapeError, c.op, ": cannot sum ", c.in[0].shape.str(),
                                    " down to ", c.in[1].shape.str());
                     return {{c.in[0].dtype, c.in[1].shape}};
                   },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::broadcast_like(g.dy(), g.in[0]), Value()};
               },
               .reference =
                   [](const KernelCtx& k) {
                     const Tensor& x = k.in[0];
                     Tensor& out = k.out[0];
                     dispatch_dtype(x.dtype(), [&](auto tag) {
                       using T = decltype(tag);
                       if constexpr (std::is_same_v<T, bool>) {
                         LOWBIT_CHECK(false, "sum_like on bool");
                       } else {
                         using Acc = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;
                         std::vector<Acc> acc(out.numel(), Acc{0});
                         const T* px = static_cast<const T*>(x.raw());
                         if (out.numel() == x.numel()) {
                           for (int64_t i = 0; i < x.numel(); ++i) acc[i] = px[i];
                         } else {
                           const std::vector<int64_t> st[1] = {
                               kernels::broadcast_strides(out.shape(), x.shape())};
                           kernels::for_each_broadcast<1>(x.shape(), st, [&](int64_t i, int64_t o) {
                             acc[o] += px[i];
                           });
                         }
                         T* po = static_cast<T*>(out.raw());
                         for (int64_t i = 0; i < out.numel(); ++i) po[i] = static_cast<T>(acc[i]);
                       }
                     });
                   },
               .doc = "sum x over the broadcast axes down to like's shape"});
  register_op({.name = "broadcast_like",
               .num_inputs = 2,
               .infer =
                   [](const InferCtx& c) -> std::vector<ValueType> {
                     Shape b = broadcast_shapes(c.in[0].shape, c.in[1].shape, c.op.c_str());
                     if (b.rank() != c.in[1].shape.rank())
                       LOWBIT_THROW(ShapeError, c.op, ": cannot broadcast ", c.in[0].shape.str(),
                                    " to ", c.in[1].shape.str());
                     for (int d = 0; d < b.rank(); ++d)
                       if (b[d] != c.in[1].shape[d] && c.in[1].shape[d] != kUnknown)
                         LOWBIT_THROW(ShapeError, c.op, ": cannot broadcast ", c.in[0].shape.str(),
                                      " to ", c.in[1].shape.str());
                     return {{c.in[0].dtype, c.in[1].shape}};
                   },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::sum_like(g.dy(), g.in[0]), Value()};
               },
               .reference =
                   [](const KernelCtx& k) {
                     const Tensor& x = k.in[0];
                     Tensor& out = k.out[0];
                     const size_t es = dtype_size(x.dtype());
                     const char* px = static_cast<const char*>(x.raw());
                     char* po = static_cast<char*>(out.raw());
                     const std::vector<int64_t> st[1] = {kernels::broadcast_strides(x.shape(), out.shape())};
                     kernels::for_each_broadcast<1>(out.shape(), st, [&](int64_t o, int64_t i) {
                       std::memcpy(po + o * es, px + i * es, es);
                     });
                   },
               .doc = "broadcast x to like's shape"});
  register_op({.name = "fill_like",
               .num_inputs = 1,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> { return {c.in[0]}; },
               .grad = [](const GradCtx&) -> std::vector<Value> { return {Value()}; },
               .reference = [](const KernelCtx& k) { k.out[0].fill(k.attrs.f("value")); },
               .doc = "a tensor of like's shape and dtype filled with a value"});
  register_op({.name = "reshape_like",
               .num_inputs = 2,
               .infer =
                   [](const InferCtx& c) -> std::vector<ValueType> {
                     int64_t a = c.in[0].shape.numel(), b = c.in[1].shape.numel();
                     if (a != kUnknown && b != kUnknown && a != b)
                       LOWBIT_THROW(ShapeError, c.op, ": cannot reshape ", c.in[0].shape.str(),
                                    " to ", c.in[1].shape.str());
                     return {{c.in[0].dtype, c.in[1].shape}};
                   },
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {ops::reshape_like(g.dy(), g.in[0]), Value()};
               },
               .reference = [](const KernelCtx& k) { std::memcpy(k.out[0].raw(), k.in[0].raw(), k.out[0].nbytes()); },
               .view_of_input = 0,
               .doc = "reshape x to like's shape (a view)"});
}

void register_elementwise_ops() {
  register_broadcast_helpers();
  register_binary<AddOp>(
      "add",
      [](const GradCtx& g) -> std::vector<Value> {
        return {ops::sum_like(g.dy(), g.in[0]), ops::sum_like(g.dy(), g.in[1])};
      },
      false, "a + b");
  register_binary<SubOp>(
      "sub",
      [](const GradCtx& g) -> std::vector<Value> {
        return {ops::sum_like(g.dy(), g.in[0]), ops::sum_like(ops::neg(g.dy()), g.in[1])};
      },
      false, "a - b");
  register_binary<MulOp>(
      "mul",
      [](const GradCtx& g) -> std::vector<Value> {
        return {ops::sum_like(g.dy() * g.in[1], g.in[0]), ops::sum_like(g.dy() * g.in[0], g.in[1])};
      },
      false, "a * b");
  register_binary<DivOp>(
      "div",
      [](const GradCtx& g) -> std::vector<Value> {
        // d(a/b) = dy/b, -dy*a/b^2 = -dy*out/b
        return {ops::sum_like(g.dy() / g.in[1], g.in[0]),
                ops::sum_like(ops::neg(g.dy() * g.out[0] / g.in[1]), g.in[1])};
      },
      false, "a / b");
  register_op({.name = "neg",
               .num_inputs = 1,
               .infer = [](const InferCtx& c) {
                 if (c.in[0].dtype == DType::kBool || c.in[0].dtype == DType::kU8)
                   LOWBIT_THROW(DTypeError, c.op, ": argument 'x': expected a signed dtype but found ",
                                type_str(c.in[0]));
                 return infer_unary(c, false);
               },
               .grad = [](const GradCtx& g) -> std::vector<Value> { return {ops::neg(g.dy())}; },
               .reference =
                   [](const KernelCtx& k) {
                     dispatch_dtype(k.in[0].dtype(), [&](auto tag) {
                       using T = decltype(tag);
                       if constexpr (!std::is_same_v<T, bool>)
                         unary_loop<T, T>(k.in[0], k.out[0], [](T v) { return static_cast<T>(-v); });
                     });
                   },
               .doc = "-x"});
}

}  // namespace lowbit::detail
