// Keras 3 losses as graph ops (K3:losses/losses.py, K3:losses/loss.py, K3:backend/tensorflow/nn.py;
// docs/spec/layer-semantics.md sections 4.1 and 7.6).
//
// A loss has two stages, as in Keras:
//   1. per_sample(y_true, y_pred): the loss of each sample after the loss's own reduction of the
//      last axis, e.g. f32 [B] for classification on [B, C] or f32 [B, T] on sequences [B, T, C];
//   2. operator()(y_true, y_pred, sample_weight, mask): Keras' Loss.__call__, which folds the
//      sample weights and the timestep mask into per_sample and reduces (below).
//
//   Graph g;
//   Value logits = ...;                                             // f32 [?, 10]
//   auto loss = nn::SparseCategoricalCrossentropy({.from_logits = true});
//   ValueType t = loss->target_type({DType::kF32, logits.shape()});  // s64 [?]
//   Value y = g.placeholder("y_true", t.dtype, t.shape);
//   Value l = (*loss)(y, logits);                                    // f32 scalar
//   auto grads = gradients(l, weights);
//   ...
//   loss->check_targets(batch_labels, logits.shape());  // host side, before feeding a batch
//   Tensor fed = loss->prepare_targets(batch_labels, logits.shape());  // checked + converted
//
// Per-sample formulas (eps = 1e-7, Keras' backend.epsilon(); C = the size of the last axis):
//   SparseCategoricalCrossentropy  logits: logsumexp(z) - z[y]  (ops::sparse_softmax_cross_entropy)
//       probabilities: q = log(clip(p, eps, 1 - eps)), then logsumexp(q) - q[y]
//       = -log(clip(p_y)) + log(sum_j clip(p_j)).  Labels: integer [...] or [..., 1].
//       ignore_class: those positions get loss 0 and are masked out of the reduction.
//   CategoricalCrossentropy  t = t (1 - ls) + ls / C  when label_smoothing ls > 0;
//       logits: -sum(t * log_softmax(z))  (ops::softmax_cross_entropy);
//       probabilities: p = clip(p / sum(p), eps, 1 - eps), -sum(t * log p).
//   BinaryCrossentropy  t = t (1 - ls) + ls / 2;  mean over the last axis of
//       logits: max(x, 0) - x t + log(1 + exp(-|x|))  (ops::sigmoid_cross_entropy);
//       probabilities: p = clip(p, eps, 1 - eps), -(t log p + (1 - t) log(1 - p)).
//   MeanSquaredError  mean((t - y)^2) over the last axis.   MeanAbsoluteError  mean(|t - y|).
//   Huber(delta)  mean over the last axis of 0.5 e^2 where |e| <= delta, else
//       delta |e| - 0.5 delta^2 (e = y - t).
// Except for the sparse loss, y_true is first brought to y_pred's rank as Keras'
// squeeze_or_expand_to_same_rank does ([B] targets against a [B, 1] output become [B, 1]) and
// cast to f32 (integer one-hot targets are fine).
//
// The Keras TF-backend shortcut (layer-semantics.md 7.6): with the TensorFlow backend, a
// probability loss on the output of a softmax/sigmoid op silently uses that op's input as logits
// (no clipping). We do not: from_logits = false always runs the probability formula above (the
// one every other Keras backend runs, and tf.keras' documented meaning). The values agree except
// where the clipping binds (p < 1e-7 or p > 1 - 1e-7), where ours saturates (loss at most
// -log(1e-7) = 16.1, zero gradient) as on the JAX/PyTorch backends. For the stable path, end the
// model with a linear layer and use from_logits = true.
//
// Reduction (Keras 3 reduce_weighted_values; l = per-sample loss, w = sample_weight broadcast to
// l's shape, m = the mask as 0/1, N = number of elements of l, V = sum(m)):
//   "sum_over_batch_size" (default; "mean" is accepted as Keras' alias)
//        no mask: sum(l w) / N;    mask: sum(l w m) / V   (the masked mean over VALID elements,
//        not divided by sum(w); 0 when nothing is valid). This is Keras 3 and tf.keras >= 2.10;
//        tf.keras <= 2.9 divided by N.
//   "sum"                       sum(l w m)
//   "mean_with_sample_weight"   sum(l w m) / sum(w m)  (w, m as broadcast to l; without weights
//                               and mask: / N; 0 when the divisor is 0)
//   "none"                      l w m, the per-sample values (not reduced)
// A missing sample_weight is 1, a missing mask all-valid. The mask is AND-ed with the loss's own
// mask (ignore_class). sample_weight and mask may have fewer dims than l: they are aligned from
// the left (weights [B] apply to every timestep of l [B, T]), and a trailing size-1 dim beyond l's
// rank is dropped ([B, 1] weights on l [B]). Keras aligns NumPy-style from the right, which fails
// (or silently misaligns when T == B) for [B] weights on a masked [B, T] loss; the golden vectors
// and layer-semantics.md expect the left alignment done here.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "lowbit/graph.h"

namespace lowbit::nn {

using Json = nlohmann::json;

// backend.epsilon(): the clipping bound of the probability formulas.
inline constexpr double kLossEpsilon = 1e-7;

class Loss {
 public:
  // reduction: "sum_over_batch_size" (default), "mean" (its alias), "sum",
  // "mean_with_sample_weight" or "none". Throws ValueError otherwise.
  explicit Loss(std::string reduction = "sum_over_batch_size");
  virtual ~Loss();
  Loss(const Loss&) = delete;
  Loss& operator=(const Loss&) = delete;

  // Keras class name: "SparseCategoricalCrossentropy", "MeanSquaredError", ...
  virtual std::string class_name() const = 0;
  // Keras default instance name: "sparse_categorical_crossentropy", "huber_loss", ... (the name
  // scope of the loss's ops). Default: class_name().
  virtual std::string name() const;

  // The per-sample loss as graph ops (see the formulas above): f32 of y_pred's shape without its
  // last axis. y_true and y_pred must be values of one graph; throws ShapeError/DTypeError
  // naming the loss when their static types do not fit.
  virtual Value per_sample(const Value& y_true, const Value& y_pred) const = 0;
  // The loss's own mask over per_sample's shape (bool), or an undefined Value when it has none.
  // SparseCategoricalCrossentropy with ignore_class returns y_true != ignore_class.
  virtual Value loss_mask(const Value& y_true, const Value& y_pred) const;

  // Keras' Loss.__call__: per_sample, then sample_weight (f32, or any numeric dtype, cast; may be
  // undefined) and mask (bool or f32 0/1; may be undefined) folded in and the reduction applied,
  // as described at the top. Returns an f32 scalar, or per-sample values for "none".
  Value operator()(const Value& y_true, const Value& y_pred, const Value& sample_weight = Value(),
                   const Value& mask = Value()) const;

  // The same computed now on tensors (builds and runs a small graph): for host-side metrics and
  // tests. Returns what operator() / per_sample return.
  Tensor evaluate(const Tensor& y_true, const Tensor& y_pred,
                  const Tensor& sample_weight = Tensor(), const Tensor& mask = Tensor()) const;
  Tensor evaluate_per_sample(const Tensor& y_true, const Tensor& y_pred) const;
  // loss_mask computed now; an undefined Tensor when the loss has none.
  Tensor evaluate_loss_mask(const Tensor& y_true, const Tensor& y_pred) const;

  // Host-side validation of one batch of targets against the model output's static shape
  // (kUnknown dims match anything), before a step. Throws, naming the loss:
  //   DTypeError  y_true's dtype cannot hold targets of this loss (bool labels for the sparse
  //               loss);
  //   ShapeError  y_true's shape does not fit y_pred's (after the squeeze/expand of the last
  //               axis Keras allows), or the batch sizes differ;
  //   ValueError  a sparse label outside [0, C) (other than ignore_class), or an f32 label with
  //               a fractional part: names the label, where it is and the range.
  // Sparse labels may be any integer dtype or integral f32 values; the range is not checked when
  // y_pred's last dim is unknown.
  virtual void check_targets(const Tensor& y_true, const Shape& y_pred_shape) const;
  // check_targets, then converts y_true to target_type(): the dtype and shape a y_true
  // placeholder built from target_type() accepts (e.g. s32 [B, 1] labels -> s64 [B]).
  Tensor prepare_targets(const Tensor& y_true, const Shape& y_pred_shape) const;
  // The dtype and shape the y_true placeholder needs for a model output of type y_pred:
  // s64 y_pred.shape[:-1] for the sparse loss, f32 y_pred.shape for the others.
  virtual ValueType target_type(const ValueType& y_pred) const;

  // Keras get_config(): {"name", "reduction", ...the loss's own arguments}; "none" is written as
  // null, as Keras writes reduction=None.
  virtual Json get_config() const;
  const std::string& reduction() const { return reduction_; }

 private:
  std::string reduction_;
};
using LossPtr = std::shared_ptr<Loss>;

struct CrossentropyOptions {
  bool from_logits = false;
  // In [0, 1] (ValueError otherwise). Not used by SparseCategoricalCrossentropy (ValueError if
  // set there: Keras' sparse loss has no smoothing).
  double label_smoothing = 0;
  std::string reduction = "sum_over_batch_size";
  // SparseCategoricalCrossentropy only: a label value to ignore (e.g. -1 or 255 for "void").
  std::optional<int64_t> ignore_class;
};

LossPtr SparseCategoricalCrossentropy(CrossentropyOptions o = {});
LossPtr CategoricalCrossentropy(CrossentropyOptions o = {});
LossPtr BinaryCrossentropy(CrossentropyOptions o = {});
LossPtr MeanSquaredError(std::string reduction = "sum_over_batch_size");
LossPtr MeanAbsoluteError(std::string reduction = "sum_over_batch_size");
// delta > 0 (ValueError otherwise). Keras 3's Huber.get_config() omits delta (it comes back as
// 1.0); ours writes it so that a round trip keeps it.
LossPtr Huber(double delta = 1.0, std::string reduction = "sum_over_batch_size");

// ---- Feature-masked losses (docs/masking.md; layer-semantics.md 5, beyond Keras) ----
// Element-wise losses for targets with missing values: a target that is NaN is missing and
// contributes nothing. per_sample() is NOT reduced over the last axis here: it is the loss of
// every element (f32 of y_pred's shape, 0 at missing targets), and loss_mask() marks the present
// targets, so the default reduction gives the mean over present targets only,
//   L = sum(l w m) / sum(m)   over (batch, time, feature), 0 when nothing is present,
// with m = present AND the timestep mask of the model output, w the sample weights. Keras'
// MeanSquaredError averages the last axis first and cannot express this. A feature mask can
// also be passed directly as operator()'s mask (bool or f32, y_pred's shape, 1 = present).
//   FeatureMaskedMeanSquaredError    l = (t - y)^2
//   FeatureMaskedMeanAbsoluteError   l = |t - y|
//   FeatureMaskedBinaryCrossentropy  l = Keras' binary cross-entropy of one element (from_logits
//                                    or clipped probabilities; label_smoothing as Keras)
LossPtr FeatureMaskedMeanSquaredError(std::string reduction = "sum_over_batch_size");
LossPtr FeatureMaskedMeanAbsoluteError(std::string reduction = "sum_over_batch_size");
LossPtr FeatureMaskedBinaryCrossentropy(CrossentropyOptions o = {});

// Rebuilds a loss from {"class_name", "config"} (as Keras serializes it; "module" and
// "registered_name" are ignored, and so are the config keys "name" and "dtype"). Throws
// ValueError for an unknown class or config key, or a bad value.
LossPtr loss_from_config(const Json& j);
// A loss from its Keras string identifier, with default arguments:
// "sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy",
// "mean_squared_error" / "mse", "mean_absolute_error" / "mae", "huber" / "huber_loss", or a class
// name
// ("SparseCategoricalCrossentropy", ...). Throws ValueError listing the known names otherwise.
LossPtr loss_by_name(const std::string& name);

}  // namespace lowbit::nn
