// Shared machinery for elementwise ops: broadcasting shape rules and kernels.
#pragma once

#include <omp.h>

#include <bit>
#include <cstdint>
#include <optional>
#include <type_traits>

#include "kernels/reference/broadcast.h"
#include "lowbit/ops/base.h"
#include "ops/op_util.h"

namespace lowbit::detail {

// Which input dtypes an elementwise op accepts.
enum class DTypes {
  kAll,      // every dtype, bool included
  kNumeric,  // every dtype but bool
  kFloat,    // f32 only
  kBool,     // bool only (logical ops)
};

// Throws DTypeError unless input i (argument `arg`) is in `set`.
inline void require_dtypes(const InferCtx& c, int i, DTypes set, const char* arg) {
  switch (set) {
    case DTypes::kAll:
      return;
    case DTypes::kFloat:
      return require_float(c, i, arg);
    case DTypes::kBool:
      return require_dtype(c, i, DType::kBool, arg);
    case DTypes::kNumeric:
      if (c.in[i].dtype == DType::kBool)
        LOWBIT_THROW(DTypeError, c.op, ": argument '", arg,
                     "': expected a numeric dtype (f32, s8, u8, s32, s64) but found ",
                     type_str(c.in[i]));
      return;
  }
}

// Shape rule for a binary op: same dtype (in `set`), broadcast shapes; output dtype `out` (or
// the inputs').
inline std::vector<ValueType> infer_binary(const InferCtx& c, DTypes set,
                                           std::optional<DType> out = std::nullopt) {
  require_same_dtype(c, 0, 1, "a", "b");
  require_dtypes(c, 0, set, "a");
  return {
      {out.value_or(c.in[0].dtype), broadcast_shapes(c.in[0].shape, c.in[1].shape, c.op.c_str())}};
}
inline std::vector<ValueType> infer_binary(const InferCtx& c, bool float_only,
                                           std::optional<DType> out = std::nullopt) {
  return infer_binary(c, float_only ? DTypes::kFloat : DTypes::kAll, out);
}

inline std::vector<ValueType> infer_unary(const InferCtx& c, DTypes set) {
  require_dtypes(c, 0, set, "x");
  return {c.in[0]};
}
inline std::vector<ValueType> infer_unary(const InferCtx& c, bool float_only) {
  return infer_unary(c, float_only ? DTypes::kFloat : DTypes::kAll);
}

// c ? a : b without a branch. GCC (under the default -ftrapping-math) will not if-convert a
// float select whose arms are computed values, which leaves such loops scalar; a bitwise blend
// of the two (both already computed) vectorizes. Other types select directly.
template <class T>
inline T select_value(bool c, T a, T b) {
  if constexpr (std::is_same_v<T, float>) {
    const uint32_t m = c ? ~0u : 0u;
    return std::bit_cast<float>((std::bit_cast<uint32_t>(a) & m) |
                                (std::bit_cast<uint32_t>(b) & ~m));
  } else {
    return c ? a : b;
  }
}

// Elements above which a loop is split across threads (below, a thread costs more than it saves).
inline constexpr int64_t kParallelGrain = 1 << 15;

// Runs body(i) for i in [0, n): split across threads above kParallelGrain, otherwise a plain
// vectorizable loop (an `omp parallel ... if (false)` still enters the OpenMP runtime, which
// costs more than a small elementwise op). Each element is computed the same way either way.
template <class F>
inline void for_each_index(int64_t n, F body) {
  if (n > kParallelGrain) {
#pragma omp parallel for simd schedule(static) firstprivate(body)
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

// out[i] = f(a[i], b[i]) with broadcasting; T = input type, U = output type.
template <class T, class U, class F>
void binary_loop(const Tensor& a, const Tensor& b, Tensor& out, F f) {
  const T* pa = static_cast<const T*>(a.raw());
  const T* pb = static_cast<const T*>(b.raw());
  U* po = static_cast<U*>(out.raw());
  const int64_t n = out.numel();
  if (a.shape() == out.shape() && b.shape() == out.shape()) {
    for_each_index(n, [=](int64_t i) { po[i] = f(pa[i], pb[i]); });
    return;
  }
  if (b.numel() == 1 && a.shape() == out.shape()) {
    const T vb = pb[0];
    for_each_index(n, [=](int64_t i) { po[i] = f(pa[i], vb); });
    return;
  }
  if (a.numel() == 1 && b.shape() == out.shape()) {
    const T va = pa[0];
    for_each_index(n, [=](int64_t i) { po[i] = f(va, pb[i]); });
    return;
  }
  const std::vector<int64_t> st[2] = {kernels::broadcast_strides(a.shape(), out.shape()),
                                      kernels::broadcast_strides(b.shape(), out.shape())};
  kernels::for_each_broadcast<2>(
      out.shape(), st, [&](int64_t o, int64_t ia, int64_t ib) { po[o] = f(pa[ia], pb[ib]); });
}

// Flat loop for ternary_loop: an input whose kFull flag is false is one element, read at 0.
template <bool kFullC, bool kFullA, bool kFullB, class C, class T, class U, class F>
void ternary_flat(const C* pc, const T* pa, const T* pb, U* po, int64_t n, F f) {
  for_each_index(
      n, [=](int64_t i) { po[i] = f(pc[kFullC ? i : 0], pa[kFullA ? i : 0], pb[kFullB ? i : 0]); });
}

// out[i] = f(c[i], a[i], b[i]) with three-way broadcasting; C, T = input types (c, then a and
// b), U = output type. When every input is either the output's shape or a single element
// (where(mask, dy, 0) in gradient rules) a flat, vectorizable loop runs; otherwise the strided
// walk.
template <class C, class T, class U, class F>
void ternary_loop(const Tensor& c, const Tensor& a, const Tensor& b, Tensor& out, F f) {
  const C* pc = static_cast<const C*>(c.raw());
  const T* pa = static_cast<const T*>(a.raw());
  const T* pb = static_cast<const T*>(b.raw());
  U* po = static_cast<U*>(out.raw());
  const int64_t n = out.numel();
  const Shape& s = out.shape();
  auto flat = [&](const Tensor& t) { return t.shape() == s || t.numel() == 1; };
  if (flat(c) && flat(a) && flat(b)) {
    auto run = [&]<bool kC, bool kA, bool kB>() { ternary_flat<kC, kA, kB>(pc, pa, pb, po, n, f); };
    switch ((c.shape() == s) * 4 + (a.shape() == s) * 2 + (b.shape() == s)) {
      case 0:
        return run.template operator()<false, false, false>();
      case 1:
        return run.template operator()<false, false, true>();
      case 2:
        return run.template operator()<false, true, false>();
      case 3:
        return run.template operator()<false, true, true>();
      case 4:
        return run.template operator()<true, false, false>();
      case 5:
        return run.template operator()<true, false, true>();
      case 6:
        return run.template operator()<true, true, false>();
      default:
        return run.template operator()<true, true, true>();
    }
  }
  const std::vector<int64_t> st[3] = {kernels::broadcast_strides(c.shape(), s),
                                      kernels::broadcast_strides(a.shape(), s),
                                      kernels::broadcast_strides(b.shape(), s)};
  kernels::for_each_broadcast<3>(s, st, [&](int64_t o, int64_t ic, int64_t ia, int64_t ib) {
    po[o] = f(pc[ic], pa[ia], pb[ib]);
  });
}

template <class T, class U, class F>
void unary_loop(const Tensor& x, Tensor& out, F f) {
  const T* px = static_cast<const T*>(x.raw());
  U* po = static_cast<U*>(out.raw());
  const int64_t n = out.numel();
  for_each_index(n, [=](int64_t i) { po[i] = f(px[i]); });
}

// Registers a binary op whose output has the input dtype. Op: struct with
// `template <class T> T operator()(T a, T b) const`, instantiated only for the dtypes in kSet
// (bool operands go through int, as bool arithmetic would).
template <class Op, DTypes kSet>
void register_binary(const std::string& name, GradFn grad, const std::string& doc) {
  register_op({.name = name,
               .num_inputs = 2,
               .infer = [](const InferCtx& c) { return infer_binary(c, kSet); },
               .grad = std::move(grad),
               .reference =
                   [](const KernelCtx& k) {
                     if constexpr (kSet == DTypes::kFloat) {
                       binary_loop<float, float>(k.in[0], k.in[1], k.out[0], Op{});
                     } else {
                       dispatch_dtype(k.in[0].dtype(), [&](auto tag) {
                         using T = decltype(tag);
                         if constexpr (!std::is_same_v<T, bool>) {
                           binary_loop<T, T>(k.in[0], k.in[1], k.out[0], Op{});
                         } else if constexpr (kSet == DTypes::kAll) {
                           binary_loop<bool, bool>(k.in[0], k.in[1], k.out[0], [](bool a, bool b) {
                             return static_cast<bool>(Op{}(int(a), int(b)));
                           });
                         } else {
                           LOWBIT_CHECK(false, "bool input to a numeric op");
                         }
                       });
                     }
                   },
               .doc = doc});
}

// Registers a binary op returning bool (comparisons, logical ops). Op: struct with
// `template <class T> bool operator()(T a, T b) const`. No gradient.
template <class Op>
void register_predicate(const std::string& name, DTypes set, const std::string& doc) {
  register_op({.name = name,
               .num_inputs = 2,
               .infer = [set](const InferCtx& c) { return infer_binary(c, set, DType::kBool); },
               .reference =
                   [](const KernelCtx& k) {
                     dispatch_dtype(k.in[0].dtype(), [&](auto tag) {
                       using T = decltype(tag);
                       binary_loop<T, bool>(k.in[0], k.in[1], k.out[0], Op{});
                     });
                   },
               .doc = doc});
}

// Registers a float-only unary op. Op: struct with `float operator()(float) const`.
template <class Op>
void register_unary_float(const std::string& name, GradFn grad, const std::string& doc) {
  register_op(
      {.name = name,
       .num_inputs = 1,
       .infer = [](const InferCtx& c) { return infer_unary(c, true); },
       .grad = std::move(grad),
       .reference = [](const KernelCtx& k) { unary_loop<float, float>(k.in[0], k.out[0], Op{}); },
       .doc = doc});
}

}  // namespace lowbit::detail
