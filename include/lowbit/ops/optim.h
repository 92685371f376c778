// Fused optimizer updates: one pass over a variable computes its new value and its new slots
// (Keras 3 formulas, the same f32 operations in the same order as composing the elementwise
// ops, so the results are bit-identical to the composed graph). Not differentiable.
//
//   auto [w1, m1, v1] = unpack(ops::adam_update(w, g, m, v, alpha, 0.9, 0.999, 1e-7));
#pragma once

#include <vector>

#include "lowbit/ops/base.h"

namespace lowbit::ops {

// One Adam step (K3:optimizers/adam.py), bias corrections folded into `alpha`
// (= lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)):
//   m' = m + (g - m) * (1 - beta_1)
//   v' = v + (g^2 - v) * (1 - beta_2)
//   w' = w - (m' * alpha) / (sqrt(v') + epsilon)
// The constants are rounded to f32 before use, as the composed scalars are. w, g, m, v: f32 of
// one shape; alpha: f32 scalar (rank 0). Returns {w', m', v'}. Throws DTypeError / ShapeError.
template <Operand T>
std::vector<T> adam_update(const T& w, const T& g, const T& m, const T& v, const T& alpha,
                           double beta_1, double beta_2, double epsilon) {
  return apply("adam_update", {w, g, m, v, alpha},
               {{"beta_1", beta_1}, {"beta_2", beta_2}, {"epsilon", epsilon}});
}
// The AMSGrad variant: as adam_update, plus vhat' = max(vhat, v') (NaN in vhat propagates) and
// sqrt(vhat') in the denominator. vhat: f32 of w's shape. Returns {w', m', v', vhat'}.
template <Operand T>
std::vector<T> adam_update(const T& w, const T& g, const T& m, const T& v, const T& vhat,
                           const T& alpha, double beta_1, double beta_2, double epsilon) {
  return apply("adam_update", {w, g, m, v, alpha, vhat},
               {{"beta_1", beta_1}, {"beta_2", beta_2}, {"epsilon", epsilon}});
}

// One SGD-with-momentum step (K3:optimizers/sgd.py):
//   m' = m * momentum - g * lr
//   w' = w + m'                              (nesterov = false)
//   w' = w + (m' * momentum - g * lr)        (nesterov = true)
// w, g, m: f32 of one shape; lr: f32 scalar (rank 0). Returns {w', m'}.
template <Operand T>
std::vector<T> sgd_momentum_update(const T& w, const T& g, const T& m, const T& lr, double momentum,
                                   bool nesterov) {
  return apply("sgd_momentum_update", {w, g, m, lr},
               {{"momentum", momentum}, {"nesterov", nesterov}});
}

}  // namespace lowbit::ops
