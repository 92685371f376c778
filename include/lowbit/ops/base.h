// The same op functions run eagerly on Tensors (computed now) and symbolically on graph Values
// (a node is appended): `ops::add(a, b)` works for both. docs/design.md says why.
#pragma once

#include <concepts>
#include <vector>

#include "lowbit/graph.h"
#include "lowbit/op.h"
#include "lowbit/tensor.h"

namespace lowbit {

template <class T>
concept Operand = std::same_as<T, Tensor> || std::same_as<T, Value>;

namespace ops {

// Runs op `name` now on tensors.
std::vector<Tensor> apply(const std::string& name, const std::vector<Tensor>& inputs,
                          const Attrs& attrs = {});
// Appends op `name` to the graph of the inputs (at least one input).
std::vector<Value> apply(const std::string& name, const std::vector<Value>& inputs,
                         const Attrs& attrs = {});

// Single-output shorthands.
inline Tensor apply1(const std::string& name, const std::vector<Tensor>& inputs,
                     const Attrs& attrs = {}) {
  return apply(name, inputs, attrs)[0];
}
inline Value apply1(const std::string& name, const std::vector<Value>& inputs,
                    const Attrs& attrs = {}) {
  return apply(name, inputs, attrs)[0];
}

// A scalar of x's dtype (a constant node in x's graph, or a 0-d tensor).
Tensor scalar_like(const Tensor& x, double v);
Value scalar_like(const Value& x, double v);

// Sums `x` over the broadcast axes so that it gets the shape of `like` (the adjoint of
// broadcasting). `like` is only read for its shape.
template <Operand T>
T sum_like(const T& x, const T& like) {
  return apply1("sum_like", {x, like});
}
// Broadcasts `x` to the shape of `like` (NumPy rules).
template <Operand T>
T broadcast_like(const T& x, const T& like) {
  return apply1("broadcast_like", {x, like});
}
// Tensor of like's shape and dtype filled with `value`.
template <Operand T>
T fill_like(const T& like, double value) {
  return apply1("fill_like", {like}, {{"value", value}});
}
template <Operand T>
T zeros_like(const T& like) {
  return fill_like(like, 0.0);
}
template <Operand T>
T ones_like(const T& like) {
  return fill_like(like, 1.0);
}
// Reshape x to the shape of `like` (same numel); a view.
template <Operand T>
T reshape_like(const T& x, const T& like) {
  return apply1("reshape_like", {x, like});
}

}  // namespace ops
}  // namespace lowbit
