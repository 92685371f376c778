// Neural-network ops: softmax, cross-entropy losses, batch normalization and dropout. Each is a
// fused op with its own reference kernel (numerically stable, accumulating in double) and a
// gradient rule that calls a fused backward op, also listed here. All of them work on f32.
//
//   Tensor p = ops::softmax(logits);                            // [B, C], rows sum to 1
//   Tensor l = ops::sparse_softmax_cross_entropy(logits, ids);  // [B], ids s32/s64 in [0, C)
//   auto bn = ops::batch_norm_training(x, gamma, beta);         // bn.y, bn.mean, bn.variance
//   Value d = ops::dropout(x, step, 0.3, /*seed=*/7);           // step: s64 scalar counter
//
// Axes: `axis` may be negative (counts from the end); an axis outside [-rank, rank) throws
// ValueError. Shapes may contain kUnknown dims while a graph is built; the same checks run
// again with the concrete shapes. Wrong dtypes throw DTypeError, wrong shapes ShapeError.
//
// The *_backward ops compute the gradients of the forward ops; they have no gradient rule of
// their own (second derivatives through them throw UnsupportedError), except where noted.
#pragma once

#include <cstdint>
#include <vector>

#include "lowbit/ops/base.h"

namespace lowbit::ops {

// ---- softmax -------------------------------------------------------------------------------

// softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m) along `axis` (m = the max along the axis, so
// large logits do not overflow). x: f32, rank >= 1. Output: x's shape. A slice holding NaN or
// +inf, or only -inf, gives NaN throughout. Gradient: softmax_backward.
template <Operand T>
T softmax(const T& x, int axis = -1) {
  return apply1("softmax", {x}, {{"axis", axis}});
}
// log_softmax(x)_i = (x_i - m) - log(sum_j exp(x_j - m)) along `axis`; finite for finite x even
// when softmax underflows to 0. Gradient: log_softmax_backward.
template <Operand T>
T log_softmax(const T& x, int axis = -1) {
  return apply1("log_softmax", {x}, {{"axis", axis}});
}
// Gradient of softmax given its output y and the incoming gradient dy (same shapes):
// dx = y * (dy - sum(dy * y, axis)). Not differentiable.
template <Operand T>
T softmax_backward(const T& y, const T& dy, int axis = -1) {
  return apply1("softmax_backward", {y, dy}, {{"axis", axis}});
}
// Gradient of log_softmax given its output y and dy: dx = dy - exp(y) * sum(dy, axis).
// Not differentiable.
template <Operand T>
T log_softmax_backward(const T& y, const T& dy, int axis = -1) {
  return apply1("log_softmax_backward", {y, dy}, {{"axis", axis}});
}

// ---- losses (per example, not reduced) -----------------------------------------------------

// Categorical cross-entropy on logits (Keras CategoricalCrossentropy(from_logits=True) before
// its reduction): loss[...] = -sum_c labels[..., c] * log_softmax(logits)[..., c], classes on
// the last axis. logits and labels: f32 [..., C] of the same shape; labels need not be one-hot
// nor sum to 1. Output: f32 [...] (the leading dims). Finite for any finite logits (stable
// log-sum-exp). Gradients: logits: dy[..., None] * (softmax(z) * sum(labels) - labels);
// labels: -dy[..., None] * log_softmax(z) (both from softmax_cross_entropy_backward).
template <Operand T>
T softmax_cross_entropy(const T& logits, const T& labels) {
  return apply1("softmax_cross_entropy", {logits, labels});
}
// Sparse categorical cross-entropy on logits: loss[...] = logsumexp(logits[...]) -
// logits[..., labels[...]]. logits: f32 [..., C]; labels: s32 or s64 [...] (logits' leading
// dims). A label outside [0, C) does not crash or read out of bounds: that example's loss (and
// its gradient row) is NaN. TensorFlow's CPU kernel raises instead; the loss layer validates
// labels on the host when it wants an error. Gradient w.r.t. logits: dy * (softmax - onehot);
// none w.r.t. labels.
template <Operand T>
T sparse_softmax_cross_entropy(const T& logits, const T& labels) {
  return apply1("sparse_softmax_cross_entropy", {logits, labels});
}
// Elementwise binary cross-entropy on logits (Keras BinaryCrossentropy(from_logits=True) before
// its mean over the last axis): max(x, 0) - x * t + log1p(exp(-|x|)), stable for any x.
// logits, labels: f32 of the same shape (no broadcasting). Gradients: logits: dy * (sigmoid(x)
// - t) (sigmoid_cross_entropy_backward); labels: -dy * x.
template <Operand T>
T sigmoid_cross_entropy(const T& logits, const T& labels) {
  return apply1("sigmoid_cross_entropy", {logits, labels});
}

// Gradients of softmax_cross_entropy: {d logits, d labels}, each [..., C], for the incoming
// per-example gradient dy [...]. Not differentiable.
template <Operand T>
std::vector<T> softmax_cross_entropy_backward(const T& logits, const T& labels, const T& dy) {
  return apply("softmax_cross_entropy_backward", {logits, labels, dy});
}
// d logits of sparse_softmax_cross_entropy: dy[..., None] * (softmax(logits) - onehot(labels)),
// NaN rows for out-of-range labels. Not differentiable.
template <Operand T>
T sparse_softmax_cross_entropy_backward(const T& logits, const T& labels, const T& dy) {
  return apply1("sparse_softmax_cross_entropy_backward", {logits, labels, dy});
}
// d logits of sigmoid_cross_entropy: dy * (sigmoid(logits) - labels). Not differentiable.
template <Operand T>
T sigmoid_cross_entropy_backward(const T& logits, const T& labels, const T& dy) {
  return apply1("sigmoid_cross_entropy_backward", {logits, labels, dy});
}

// ---- batch normalization -------------------------------------------------------------------
//
// x: f32 of any rank >= 1 with its channel axis `axis` (default -1, channels last); per-channel
// parameters gamma, beta, mean, variance: f32 [C] with C = x.shape[axis]. Statistics reduce
// every other axis (n = numel(x) / C elements per channel), each channel in a fixed order in
// double, so results do not depend on the thread count. Both modes compute
//   a = gamma / sqrt(variance + epsilon),  y = x * a + (beta - mean * a)
// (TensorFlow's form of gamma * (x - mean) / sqrt(variance + epsilon) + beta; BN folding relies
// on it). epsilon defaults to Keras' 1e-3 and must be >= 0 (ValueError otherwise).

template <Operand T>
struct BatchNormOutputs {
  T y;         // x's shape
  T mean;      // [C] batch mean
  T variance;  // [C] biased batch variance (divisor n)
};

// Training mode: normalizes with the batch statistics and returns them (a layer folds them into
// its moving averages with a state update). Empty reductions (n == 0) give NaN statistics.
// Gradients w.r.t. x, gamma, beta include the paths through mean and variance
// (batch_norm_training_backward); gradients arriving at the mean and variance outputs are
// supported too (d mean/dx = 1/n, d variance/dx = 2 (x - mean) / n, batch_norm_moments_backward).
template <Operand T>
BatchNormOutputs<T> batch_norm_training(const T& x, const T& gamma, const T& beta, int axis = -1,
                                        double epsilon = 1e-3) {
  auto r = apply("batch_norm_training", {x, gamma, beta}, {{"axis", axis}, {"epsilon", epsilon}});
  return {r[0], r[1], r[2]};
}

// Inference mode with given (moving) statistics. Differentiable w.r.t. all five inputs (mean and
// variance for completeness: moving statistics are normally not trainable).
template <Operand T>
T batch_norm_inference(const T& x, const T& gamma, const T& beta, const T& mean, const T& variance,
                       int axis = -1, double epsilon = 1e-3) {
  return apply1("batch_norm_inference", {x, gamma, beta, mean, variance},
                {{"axis", axis}, {"epsilon", epsilon}});
}

// Gradient of batch_norm_training's y w.r.t. {x, gamma, beta}, given the forward input, gamma,
// the batch mean and variance it returned, and dy (x's shape). With xhat = (x-mean)/sqrt(var+eps):
//   dbeta = sum(dy), dgamma = sum(dy * xhat),
//   dx = gamma / (n sqrt(var+eps)) * (n dy - sum(dy) - xhat * sum(dy * xhat)).
// Not differentiable.
template <Operand T>
std::vector<T> batch_norm_training_backward(const T& x, const T& gamma, const T& mean,
                                            const T& variance, const T& dy, int axis = -1,
                                            double epsilon = 1e-3) {
  return apply("batch_norm_training_backward", {x, gamma, mean, variance, dy},
               {{"axis", axis}, {"epsilon", epsilon}});
}
// Gradient w.r.t. x that arrives through the batch statistics outputs of batch_norm_training:
// dx = dmean / n + dvariance * 2 (x - mean) / n (dmean, dvariance: [C]; output: x's shape).
// Not differentiable.
template <Operand T>
T batch_norm_moments_backward(const T& x, const T& mean, const T& dmean, const T& dvariance,
                              int axis = -1) {
  return apply1("batch_norm_moments_backward", {x, mean, dmean, dvariance}, {{"axis", axis}});
}
// Gradients of batch_norm_inference: {dx, dgamma, dbeta, dmean, dvariance}. With
// r = 1/sqrt(var+eps): dx = dy * gamma * r, dgamma = sum(dy * (x-mean) * r), dbeta = sum(dy),
// dmean = -gamma * r * sum(dy), dvariance = -gamma * r^3 / 2 * sum(dy * (x-mean)).
// Not differentiable.
template <Operand T>
std::vector<T> batch_norm_inference_backward(const T& x, const T& gamma, const T& mean,
                                             const T& variance, const T& dy, int axis = -1,
                                             double epsilon = 1e-3) {
  return apply("batch_norm_inference_backward", {x, gamma, mean, variance, dy},
               {{"axis", axis}, {"epsilon", epsilon}});
}

// ---- dropout -------------------------------------------------------------------------------

// Inverted dropout (training mode; at inference simply do not call it). x: f32 any shape;
// step: s64 scalar, a counter the caller advances every training step (e.g. a non-trainable
// variable with a state update). Element i is kept when philox_uniform(seed, step, j) >= rate,
// where j = i for the default mask and, with `noise_shape`, j is the index of i's element in
// the broadcast mask. Kept elements are scaled by 1/(1-rate), dropped ones are 0. So the mask
// depends only on (seed, step, index), never on the thread count.
// rate: in [0, 1] (ValueError otherwise); 0 is the identity, 1 gives zeros (Keras 3).
// noise_shape: empty for one draw per element; otherwise x's rank, each entry 1 (shared along
// that axis), x's dim, or kUnknown (-1: take x's dim) — ShapeError otherwise. E.g. {-1, 1, -1}
// on [B, T, F] drops the same features at every timestep (SpatialDropout1D).
// Gradient: dropout(dy, step) with the same attributes (the same mask); none for step.
template <Operand T>
T dropout(const T& x, const T& step, double rate, int64_t seed,
          const std::vector<int64_t>& noise_shape = {}) {
  Attrs attrs{{"rate", rate}, {"seed", seed}};
  if (!noise_shape.empty()) attrs.set("noise_shape", noise_shape);
  return apply1("dropout", {x, step}, attrs);
}

}  // namespace lowbit::ops
