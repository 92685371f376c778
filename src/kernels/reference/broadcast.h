// Strided iteration for broadcasting kernels. An input of shape `in` read at the positions of
// an output of shape `out` (NumPy alignment from the right) uses stride 0 on broadcast dims.
#pragma once

#include <cstdint>
#include <vector>

#include "lowbit/shape.h"

namespace lowbit::kernels {

// Element strides of `in` viewed with `out`'s rank; 0 where `in` is broadcast.
inline std::vector<int64_t> broadcast_strides(const Shape& in, const Shape& out) {
  const int r = out.rank();
  std::vector<int64_t> st(r, 0);
  int64_t s = 1;
  for (int i = in.rank() - 1; i >= 0; --i) {
    int o = r - in.rank() + i;
    st[o] = in.dims()[i] == 1 ? 0 : s;
    s *= in.dims()[i];
  }
  return st;
}

// Calls f(out_index, offset_0, ..., offset_{N-1}) for every element of `out` in row-major
// order, with the flat offsets of each input (by `strides[k]`).
template <size_t N, class F>
void for_each_broadcast(const Shape& out, const std::vector<int64_t> (&strides)[N], F&& f) {
  const int r = out.rank();
  const int64_t total = out.numel();
  if (total == 0) return;
  if (r == 0) {
    int64_t offs[N] = {};
    [&]<size_t... I>(std::index_sequence<I...>) { f(int64_t{0}, offs[I]...); }
    (std::make_index_sequence<N>{});
    return;
  }
  std::vector<int64_t> idx(r, 0);
  int64_t offs[N] = {};
  const int64_t inner = out.dims()[r - 1];
  int64_t o = 0;
  while (o < total) {
    for (int64_t i = 0; i < inner; ++i, ++o) {
      [&]<size_t... I>(std::index_sequence<I...>) { f(o, (offs[I] + i * strides[I][r - 1])...); }
      (std::make_index_sequence<N>{});
    }
    // advance the outer index
    for (int d = r - 2; d >= 0; --d) {
      ++idx[d];
      for (size_t k = 0; k < N; ++k) offs[k] += strides[k][d];
      if (idx[d] < out.dims()[d]) break;
      for (size_t k = 0; k < N; ++k) offs[k] -= strides[k][d] * idx[d];
      idx[d] = 0;
    }
  }
}

}  // namespace lowbit::kernels
