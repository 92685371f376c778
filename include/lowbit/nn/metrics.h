// Keras 3 metrics, accumulated on the host over batches of fetched tensors
// (K3:metrics/reduction_metrics.py, accuracy_metrics.py, confusion_metrics.py,
// K3:trainers/compile_utils.py; docs/spec/layer-semantics.md 4.1).
//
//   auto acc = nn::metric_by_name("accuracy", loss.get(), {DType::kF32, {kUnknown, 10}});
//   for (each batch) acc->update(y_true, probs);   // y_true s64 [B], probs f32 [B, 10]
//   double a = acc->result();                       // fraction of correct argmax, over all batches
//   acc->reset();                                   // at the start of the next epoch
//
// Mean-type metrics (everything here but AUC) follow Keras' MeanMetricWrapper: a function gives
// per-sample values v (e.g. 1/0 matches, shape y_pred's without the last axis), the mask m (0/1)
// multiplies the sample weight w, and with W = w * m (1 where absent)
//   total += sum_b mean_rest(v_b * W_b),   count += sum_b mean_rest(W_b)   (weighted), or
//   total += sum_b mean_rest(v_b),         count += B                      (unweighted),
// where mean_rest averages over the non-batch axes of one sample. result() = total / count (0
// before any update or when every weight is 0). With timesteps this is the weighted mean over
// the valid steps. Weights and masks are aligned to v as losses align them (losses.h): a trailing
// size-1 dim beyond v's rank is dropped, missing trailing dims broadcast (left alignment).
// A scalar sample weight without a mask weighs the whole batch once (total += w mean(v),
// count += w), as Keras. Weights and masks that do not broadcast throw ShapeError naming the
// metric; y_true/y_pred shapes that do not fit throw ShapeError too.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "lowbit/nn/losses.h"

namespace lowbit::nn {

class Metric {
 public:
  virtual ~Metric();
  // The name the metric reports under ("accuracy", "loss", "val_..." is the caller's business).
  virtual std::string name() const = 0;
  virtual void reset() = 0;
  // One batch. y_true/y_pred as fed to and fetched from the model; sample_weight (any numeric
  // dtype) and mask (bool or f32 0/1 of the per-sample shape, e.g. [B, T]) may be undefined.
  virtual void update(const Tensor& y_true, const Tensor& y_pred,
                      const Tensor& sample_weight = Tensor(), const Tensor& mask = Tensor()) = 0;
  virtual double result() const = 0;
};
using MetricPtr = std::shared_ptr<Metric>;

// Keras Mean, and the base of the MeanMetricWrapper metrics below (which override values()).
class MeanMetric : public Metric {
 public:
  explicit MeanMetric(std::string name);
  std::string name() const override { return name_; }
  void reset() override;
  // Plain Mean: y_pred holds the values (y_true is ignored and may be undefined). Wrappers:
  // values(y_true, y_pred) gives them.
  void update(const Tensor& y_true, const Tensor& y_pred, const Tensor& sample_weight = Tensor(),
              const Tensor& mask = Tensor()) override;
  // Keras Mean.update_state(values, sample_weight), plus the mask as 0/1 weights.
  void update_values(const Tensor& values, const Tensor& sample_weight = Tensor(),
                     const Tensor& mask = Tensor());
  // One scalar value with a weight: total += v * weight, count += weight (e.g. a batch's mean
  // loss weighted by the batch size).
  void update_value(double v, double weight = 1);
  double result() const override;
  double total() const { return total_; }
  double count() const { return count_; }

 protected:
  // Per-sample values of one batch (any dtype; read as double). `own_mask` may be set to a mask
  // of the values' shape that the metric itself imposes (a loss's ignore_class). Default: y_pred.
  virtual Tensor values(const Tensor& y_true, const Tensor& y_pred, Tensor* own_mask) const;

 private:
  std::string name_;
  double total_ = 0, count_ = 0;
};

// A metric named `name` averaging update_value()s / batch values.
MetricPtr Mean(std::string name);
// argmax(y_pred, -1) == y_true. y_true: labels of y_pred's leading shape, or with a trailing 1
// (any integer dtype or f32). Values: y_pred's shape without the last axis.
MetricPtr SparseCategoricalAccuracy(std::string name = "sparse_categorical_accuracy");
// argmax(y_pred, -1) == argmax(y_true, -1); y_true one-hot of y_pred's shape. First index wins
// ties (and NaN counts as the largest), as ops::argmax.
MetricPtr CategoricalAccuracy(std::string name = "categorical_accuracy");
// mean over the last axis of (y_true == (y_pred > threshold ? 1 : 0)); y_true is compared as a
// number (so soft targets such as 0.9 never match). threshold in (0, 1) (ValueError otherwise).
MetricPtr BinaryAccuracy(double threshold = 0.5, std::string name = "binary_accuracy");
// mean over the last axis of (y_true == y_pred), compared as numbers.
MetricPtr Accuracy(std::string name = "accuracy");
// mean over the last axis of (y_true - y_pred)^2 / |y_true - y_pred|.
MetricPtr MeanSquaredErrorMetric(std::string name = "mean_squared_error");
MetricPtr MeanAbsoluteErrorMetric(std::string name = "mean_absolute_error");
// The weighted mean of a loss's per-sample values (Keras passes a loss function as a metric
// this way, e.g. metrics=["sparse_categorical_crossentropy"]); the loss's own mask applies.
MetricPtr LossMetric(LossPtr loss, std::string name);

// Keras AUC (curve "ROC", summation "interpolation", multi_label false): y_true (nonzero =
// positive) and y_pred probabilities are flattened; y_pred is clipped to [0, 1]; with
// n = num_thresholds (> 1, ValueError otherwise) a prediction p counts as positive at threshold
// i in 0..n-1 when max(ceil(p (n-1)) - 1, 0) >= i (thresholds -eps, 1/(n-1), ..., 1+eps as
// Keras' evenly-spaced path). Weighted TP/FP/TN/FN accumulate over batches; result() =
// sum_i (fpr_i - fpr_{i+1}) (tpr_i + tpr_{i+1}) / 2, with 0/0 rates taken as 0. The mask (which
// Keras' AUC ignores) multiplies the weights here. from_logits: apply a sigmoid first.
MetricPtr AUC(int num_thresholds = 200, std::string name = "auc", bool from_logits = false);

// Keras string resolution of compile(metrics=[...]) for one output whose prediction has type
// y_pred, trained with `loss` (may be null: targets are then taken to be of y_pred's shape):
//   "accuracy" / "acc": with y_true's type = loss->target_type(y_pred), binary accuracy when
//       y_pred's last dim is 1, else sparse categorical accuracy when y_true has a lower rank
//       than y_pred (or a last dim of 1), else categorical accuracy (compile_utils
//       is_binary_or_sparse_categorical);
//   "sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy",
//   "mean_squared_error" / "mse", "mean_absolute_error" / "mae", "auc", the class names
//   ("SparseCategoricalAccuracy", "CategoricalAccuracy", "BinaryAccuracy", "Accuracy", "AUC",
//   "MeanSquaredError", "MeanAbsoluteError"), and the loss names of loss_by_name() (a
//   LossMetric with that loss's DEFAULT arguments, e.g. from_logits = false, as Keras).
// The metric is named by the identifier given ("acc" reports as "acc"), as Keras does.
// Throws ValueError for an unknown identifier.
MetricPtr metric_by_name(const std::string& name, const Loss* loss, const ValueType& y_pred);

}  // namespace lowbit::nn
