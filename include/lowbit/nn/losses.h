// Keras losses as graph ops (../shared/docs/layer-semantics.md §4.1, §7.6).
//
// A loss computes a per-sample value (its own last-axis reduction done: [batch] for
// classification, [batch, time] for sequence outputs), then folds in sample weights and an
// optional timestep mask and reduces, exactly as Keras 3 `Loss.__call__`:
//   sum_over_batch_size (default): sum(l * w * m') / count(l), with m' = m * count(m) / sum(m)
//                                  (so a masked mean divides by the number of valid entries)
//   sum: sum(l * w * m');  mean_with_sample_weight: sum(l * w * m') / sum(w * m');  none: l*w*m'
// Probabilities are clipped to [1e-7, 1 - 1e-7] (Keras epsilon) before any log; with
// from_logits the fused, numerically stable ops are used. A model ending in softmax with
// from_logits = false takes the probability path (TF's graph-level shortcut to the logits is not
// reproduced): prefer a linear output with from_logits = true.
#pragma once

#include <memory>
#include <string>

#include "lowbit/graph.h"
#include "lowbit/nn/layer.h"

namespace lowbit::nn {

class Loss {
 public:
  explicit Loss(std::string reduction = "sum_over_batch_size");
  virtual ~Loss();
  virtual std::string class_name() const = 0;
  virtual Value per_sample(const Value& y_true, const Value& y_pred) const = 0;
  // The Keras reduction; sample_weight ([batch] or the per-sample shape) and mask (bool or f32,
  // the per-sample shape) may be undefined.
  Value operator()(const Value& y_true, const Value& y_pred, const Value& sample_weight = Value(),
                   const Value& mask = Value()) const;
  // Validates a batch of targets on the host before a step: dtype, shape (non-batch dims), and
  // sparse labels in [0, classes). Throws DTypeError / ShapeError / ValueError naming the loss.
  virtual void check_targets(const Tensor& y_true, const Shape& y_pred_shape) const;
  // Type of the y_true placeholder for a prediction of type `y_pred`.
  virtual ValueType target_type(const ValueType& y_pred) const;
  virtual Json get_config() const;
  const std::string& reduction() const { return reduction_; }

 protected:
  std::string reduction_;
};
using LossPtr = std::shared_ptr<Loss>;

struct CrossentropyOptions {
  bool from_logits = false;
  double label_smoothing = 0;
  std::string reduction = "sum_over_batch_size";
};
// Integer class labels [...] (s64) against scores [..., C].
LossPtr SparseCategoricalCrossentropy(CrossentropyOptions o = {});
// One-hot (or soft) targets [..., C] against scores [..., C].
LossPtr CategoricalCrossentropy(CrossentropyOptions o = {});
// Targets in [0, 1] against probabilities or logits; mean over the last axis.
LossPtr BinaryCrossentropy(CrossentropyOptions o = {});
LossPtr MeanSquaredError(std::string reduction = "sum_over_batch_size");
LossPtr MeanAbsoluteError(std::string reduction = "sum_over_batch_size");
// 0.5 x^2 for |x| <= delta, delta (|x| - delta / 2) beyond; mean over the last axis.
LossPtr Huber(double delta = 1.0, std::string reduction = "sum_over_batch_size");
// {"class_name", "config"}; ValueError for unknown classes.
LossPtr loss_from_config(const Json& j);
// "sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy", "mse"/
// "mean_squared_error", "mae"/"mean_absolute_error", "huber".
LossPtr loss_by_name(const std::string& name);

}  // namespace lowbit::nn
