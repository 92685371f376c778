// Keras metrics, accumulated on the host over batches of fetched predictions
// (../shared/docs/layer-semantics.md §4.1): a sample weight and a timestep mask fold into the
// weights (0/1), and Mean-type metrics report sum(v * w) / sum(w).
#pragma once

#include <memory>
#include <string>

#include "lowbit/nn/losses.h"

namespace lowbit::nn {

class Metric {
 public:
  virtual ~Metric() = default;
  virtual std::string name() const = 0;
  virtual void reset() = 0;
  // One batch; sample_weight ([batch]) and mask (the per-sample shape, bool or f32) may be
  // undefined.
  virtual void update(const Tensor& y_true, const Tensor& y_pred, const Tensor& sample_weight = Tensor(),
                      const Tensor& mask = Tensor()) = 0;
  virtual double result() const = 0;
};
using MetricPtr = std::shared_ptr<Metric>;

// Weighted mean of per-sample values; also usable directly through update_value.
class MeanMetric : public Metric {
 public:
  explicit MeanMetric(std::string name) : name_(std::move(name)) {}
  std::string name() const override { return name_; }
  void reset() override { total_ = count_ = 0; }
  void update(const Tensor& y_true, const Tensor& y_pred, const Tensor& sample_weight = Tensor(),
              const Tensor& mask = Tensor()) override;
  void update_value(double v, double weight = 1) {
    total_ += v * weight;
    count_ += weight;
  }
  double result() const override { return count_ > 0 ? total_ / count_ : 0.0; }

 protected:
  // Per-sample values of one batch (shape = y_pred's without the last axis); default: y_pred.
  virtual Tensor values(const Tensor& y_true, const Tensor& y_pred) const { (void)y_true; return y_pred; }

 private:
  std::string name_;
  double total_ = 0, count_ = 0;
};

MetricPtr Mean(std::string name);
// argmax(y_pred) == label.
MetricPtr SparseCategoricalAccuracy(std::string name = "sparse_categorical_accuracy");
// argmax(y_pred) == argmax(y_true).
MetricPtr CategoricalAccuracy(std::string name = "categorical_accuracy");
// (y_pred > threshold) == (y_true > 0.5), averaged over the last axis.
MetricPtr BinaryAccuracy(double threshold = 0.5, std::string name = "binary_accuracy");
// y_pred == y_true elementwise, averaged over the last axis.
MetricPtr Accuracy(std::string name = "accuracy");
MetricPtr MeanSquaredErrorMetric(std::string name = "mean_squared_error");
MetricPtr MeanAbsoluteErrorMetric(std::string name = "mean_absolute_error");
// Keras string resolution: "accuracy"/"acc" becomes sparse categorical, categorical or binary
// accuracy (named "accuracy") from the loss and the output shape, as Keras compile does;
// "mse", "mae" and the class names above are accepted. ValueError otherwise.
MetricPtr metric_by_name(const std::string& name, const Loss* loss, const ValueType& y_pred);

}  // namespace lowbit::nn
