// Shared machinery for elementwise ops: broadcasting shape rules and kernels.
#pragma once

#include <omp.h>

#include <optional>

#include "kernels/reference/broadcast.h"
#include "lowbit/ops/base.h"
#include "ops/op_util.h"

namespace lowbit::detail {

// Shape rule for a binary op: same dtype, broadcast shapes; output dtype `out` (or the inputs').
inline std::vector<ValueType> infer_binary(const InferCtx& c, bool float_only,
                                           std::optional<DType> out = std::nullopt) {
  require_same_dtype(c, 0, 1, "a", "b");
  if (float_only) require_float(c, 0, "a");
  return {{out.value_or(c.in[0].dtype), broadcast_shapes(c.in[0].shape, c.in[1].shape, c.op.c_str())}};
}

inline std::vector<ValueType> infer_unary(const InferCtx& c, bool float_only) {
  if (float_only) require_float(c, 0, "x");
  return {c.in[0]};
}

// Elements above which a loop is split across threads (below, a thread costs more than it saves).
inline constexpr int64_t kParallelGrain = 1 << 15;

// out[i] = f(a[i], b[i]) with broadcasting; T = input type, U = output type.
template <class T, class U, class F>
void binary_loop(const Tensor& a, const Tensor& b, Tensor& out, F f) {
  const T* pa = static_cast<const T*>(a.raw());
  const T* pb = static_cast<const T*>(b.raw());
  U* po = static_cast<U*>(out.raw());
  const int64_t n = out.numel();
  if (a.shape() == out.shape() && b.shape() == out.shape()) {
#pragma omp parallel for simd if (n > kParallelGrain) schedule(static)
    for (int64_t i = 0; i < n; ++i) po[i] = f(pa[i], pb[i]);
    return;
  }
  if (b.numel() == 1 && a.shape() == out.shape()) {
    const T vb = pb[0];
#pragma omp parallel for simd if (n > kParallelGrain) schedule(static)
    for (int64_t i = 0; i < n; ++i) po[i] = f(pa[i], vb);
    return;
  }
  if (a.numel() == 1 && b.shape() == out.shape()) {
    const T va = pa[0];
#pragma omp parallel for simd if (n > kParallelGrain) schedule(static)
    for (int64_t i = 0; i < n; ++i) po[i] = f(va, pb[i]);
    return;
  }
  const std::vector<int64_t> st[2] = {kernels::broadcast_strides(a.shape(), out.shape()),
                                      kernels::broadcast_strides(b.shape(), out.shape())};
  kernels::for_each_broadcast<2>(out.shape(), st,
                                 [&](int64_t o, int64_t ia, int64_t ib) { po[o] = f(pa[ia], pb[ib]); });
}

template <class T, class U, class F>
void unary_loop(const Tensor& x, Tensor& out, F f) {
  const T* px = static_cast<const T*>(x.raw());
  U* po = static_cast<U*>(out.raw());
  const int64_t n = out.numel();
#pragma omp parallel for simd if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) po[i] = f(px[i]);
}

// Registers a binary op whose output has the input dtype. Op: struct with
// `template <class T> T operator()(T a, T b) const`.
template <class Op>
void register_binary(const std::string& name, GradFn grad, bool float_only, const std::string& doc) {
  register_op({.name = name,
               .num_inputs = 2,
               .infer = [float_only](const InferCtx& c) { return infer_binary(c, float_only); },
               .grad = std::move(grad),
               .reference =
                   [](const KernelCtx& k) {
                     dispatch_dtype(k.in[0].dtype(), [&](auto tag) {
                       using T = decltype(tag);
                       if constexpr (!std::is_same_v<T, bool>) {
                         binary_loop<T, T>(k.in[0], k.in[1], k.out[0], Op{});
                       } else {
                         binary_loop<bool, bool>(k.in[0], k.in[1], k.out[0],
                                                 [](bool a, bool b) { return static_cast<bool>(Op{}(int(a), int(b))); });
                       }
                     });
                   },
               .doc = doc});
}

// Registers a float-only unary op. Op: struct with `float operator()(float) const`.
template <class Op>
void register_unary_float(const std::string& name, GradFn grad, const std::string& doc) {
  register_op({.name = name,
               .num_inputs = 1,
               .infer = [](const InferCtx& c) { return infer_unary(c, true); },
               .grad = std::move(grad),
               .reference = [](const KernelCtx& k) { unary_loop<float, float>(k.in[0], k.out[0], Op{}); },
               .doc = doc});
}

}  // namespace lowbit::detail
