// Elementwise ops with NumPy broadcasting. Both operands of a binary op must have the same
// dtype (cast first); the result has the broadcast shape. Gradients of broadcast operands are
// summed back to their shapes.
#pragma once

#include "lowbit/ops/base.h"

namespace lowbit::ops {

template <Operand T> T add(const T& a, const T& b) { return apply1("add", {a, b}); }
template <Operand T> T sub(const T& a, const T& b) { return apply1("sub", {a, b}); }
template <Operand T> T mul(const T& a, const T& b) { return apply1("mul", {a, b}); }
// Float division; integer division truncates toward zero (division by zero gives 0).
template <Operand T> T div(const T& a, const T& b) { return apply1("div", {a, b}); }
template <Operand T> T neg(const T& a) { return apply1("neg", {a}); }

}  // namespace lowbit::ops

namespace lowbit {
// Arithmetic operators for tensors and values; a float operand becomes a scalar of the
// other operand's dtype.
template <Operand T> T operator+(const T& a, const T& b) { return ops::add(a, b); }
template <Operand T> T operator-(const T& a, const T& b) { return ops::sub(a, b); }
template <Operand T> T operator*(const T& a, const T& b) { return ops::mul(a, b); }
template <Operand T> T operator/(const T& a, const T& b) { return ops::div(a, b); }
template <Operand T> T operator-(const T& a) { return ops::neg(a); }
template <Operand T> T operator+(const T& a, double b) { return ops::add(a, ops::scalar_like(a, b)); }
template <Operand T> T operator-(const T& a, double b) { return ops::sub(a, ops::scalar_like(a, b)); }
template <Operand T> T operator*(const T& a, double b) { return ops::mul(a, ops::scalar_like(a, b)); }
template <Operand T> T operator/(const T& a, double b) { return ops::div(a, ops::scalar_like(a, b)); }
template <Operand T> T operator+(double a, const T& b) { return ops::add(ops::scalar_like(b, a), b); }
template <Operand T> T operator-(double a, const T& b) { return ops::sub(ops::scalar_like(b, a), b); }
template <Operand T> T operator*(double a, const T& b) { return ops::mul(ops::scalar_like(b, a), b); }
template <Operand T> T operator/(double a, const T& b) { return ops::div(ops::scalar_like(b, a), b); }
}  // namespace lowbit
