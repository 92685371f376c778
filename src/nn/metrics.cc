#include "lowbit/nn/metrics.h"

#include <cmath>

namespace lowbit::nn {

namespace {

// Per-sample weights of a batch of per-sample values `v`: sample weight (broadcast over the
// non-batch dims) times the 0/1 mask.
double weight_at(const Tensor& v, int64_t i, const Tensor& sw, const Tensor& mask) {
  double w = 1;
  if (sw.defined()) {
    const int64_t per_row = v.rank() ? v.numel() / std::max<int64_t>(v.dim(0), 1) : 1;
    const int64_t row = per_row ? i / per_row : 0;
    w *= sw.numel() == v.numel() ? sw.get_as_double(i) : sw.get_as_double(row);
  }
  if (mask.defined()) w *= mask.get_as_double(i) != 0 ? 1 : 0;
  return w;
}

int64_t argmax_row(const float* p, int64_t n) {
  int64_t best = 0;
  for (int64_t c = 1; c < n; ++c)
    if (p[c] > p[best]) best = c;
  return best;
}

Shape drop_last(const Shape& s) {
  std::vector<int64_t> d(s.dims().begin(), s.dims().end() - (s.rank() ? 1 : 0));
  return Shape(d);
}

class FnMetric : public MeanMetric {
 public:
  using Fn = std::function<Tensor(const Tensor&, const Tensor&)>;
  FnMetric(std::string name, Fn fn) : MeanMetric(std::move(name)), fn_(std::move(fn)) {}

 protected:
  Tensor values(const Tensor& y, const Tensor& p) const override { return fn_(y, p); }

 private:
  Fn fn_;
};

void check_pred(const std::string& who, const Tensor& p) {
  if (p.dtype() != DType::kF32 || p.rank() < 1)
    LOWBIT_THROW(DTypeError, who, ": predictions must be f32 with a class axis but found ", dtype_name(p.dtype()),
                 p.shape().str());
}

// Mean over the last axis of f(y[i], p[i]).
Tensor last_axis_mean(const Tensor& y, const Tensor& p, const std::string& who, double (*f)(double, double, double),
                      double arg) {
  check_pred(who, p);
  if (y.numel() != p.numel())
    LOWBIT_THROW(ShapeError, who, ": targets ", y.shape().str(), " and predictions ", p.shape().str(), " differ");
  const int64_t n = p.dim(-1), rows = n ? p.numel() / n : 0;
  Tensor out(drop_last(p.shape()), DType::kF32);
  const float* pp = p.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (int64_t c = 0; c < n; ++c) s += f(y.get_as_double(r * n + c), pp[r * n + c], arg);
    out.data<float>()[r] = static_cast<float>(n ? s / static_cast<double>(n) : 0);
  }
  return out;
}

}  // namespace

void MeanMetric::update(const Tensor& y_true, const Tensor& y_pred, const Tensor& sw, const Tensor& mask) {
  Tensor v = values(y_true, y_pred);
  for (int64_t i = 0; i < v.numel(); ++i) update_value(v.get_as_double(i), weight_at(v, i, sw, mask));
}

MetricPtr Mean(std::string name) { return std::make_shared<MeanMetric>(std::move(name)); }

MetricPtr SparseCategoricalAccuracy(std::string name) {
  return std::make_shared<FnMetric>(name, [name](const Tensor& y, const Tensor& p) {
    check_pred(name, p);
    const int64_t n = p.dim(-1), rows = n ? p.numel() / n : 0;
    if (y.numel() != rows)
      LOWBIT_THROW(ShapeError, name, ": expected ", rows, " labels for predictions ", p.shape().str(), " but found ",
                   y.shape().str());
    Tensor out(drop_last(p.shape()), DType::kF32);
    for (int64_t r = 0; r < rows; ++r)
      out.data<float>()[r] = static_cast<double>(argmax_row(p.data<float>() + r * n, n)) == y.get_as_double(r);
    return out;
  });
}

MetricPtr CategoricalAccuracy(std::string name) {
  return std::make_shared<FnMetric>(name, [name](const Tensor& y, const Tensor& p) {
    check_pred(name, p);
    if (y.shape() != p.shape())
      LOWBIT_THROW(ShapeError, name, ": targets ", y.shape().str(), " and predictions ", p.shape().str(), " differ");
    Tensor yf = y.dtype() == DType::kF32 ? y : y.to(DType::kF32);
    const int64_t n = p.dim(-1), rows = n ? p.numel() / n : 0;
    Tensor out(drop_last(p.shape()), DType::kF32);
    for (int64_t r = 0; r < rows; ++r)
      out.data<float>()[r] = argmax_row(p.data<float>() + r * n, n) == argmax_row(yf.data<float>() + r * n, n);
    return out;
  });
}

MetricPtr BinaryAccuracy(double threshold, std::string name) {
  return std::make_shared<FnMetric>(name, [name, threshold](const Tensor& y, const Tensor& p) {
    return last_axis_mean(y, p, name, [](double t, double q, double th) { return (q > th) == (t > 0.5) ? 1.0 : 0.0; },
                          threshold);
  });
}

MetricPtr Accuracy(std::string name) {
  return std::make_shared<FnMetric>(name, [name](const Tensor& y, const Tensor& p) {
    return last_axis_mean(y, p, name, [](double t, double q, double) { return t == q ? 1.0 : 0.0; }, 0);
  });
}

MetricPtr MeanSquaredErrorMetric(std::string name) {
  return std::make_shared<FnMetric>(name, [name](const Tensor& y, const Tensor& p) {
    return last_axis_mean(y, p, name, [](double t, double q, double) { return (q - t) * (q - t); }, 0);
  });
}

MetricPtr MeanAbsoluteErrorMetric(std::string name) {
  return std::make_shared<FnMetric>(name, [name](const Tensor& y, const Tensor& p) {
    return last_axis_mean(y, p, name, [](double t, double q, double) { return std::abs(q - t); }, 0);
  });
}

MetricPtr metric_by_name(const std::string& n, const Loss* loss, const ValueType& y_pred) {
  if (n == "accuracy" || n == "acc") {
    const std::string cls = loss ? loss->class_name() : "";
    if (cls == "SparseCategoricalCrossentropy") return SparseCategoricalAccuracy(n);
    if (cls == "CategoricalCrossentropy") return CategoricalAccuracy(n);
    if (cls == "BinaryCrossentropy" || (y_pred.shape.rank() && y_pred.shape[-1] == 1)) return BinaryAccuracy(0.5, n);
    return Accuracy(n);
  }
  if (n == "sparse_categorical_accuracy") return SparseCategoricalAccuracy();
  if (n == "categorical_accuracy") return CategoricalAccuracy();
  if (n == "binary_accuracy") return BinaryAccuracy();
  if (n == "mse" || n == "mean_squared_error") return MeanSquaredErrorMetric(n);
  if (n == "mae" || n == "mean_absolute_error") return MeanAbsoluteErrorMetric(n);
  LOWBIT_THROW(ValueError, "metric_by_name: unknown metric '", n,
               "'; expected accuracy, sparse_categorical_accuracy, categorical_accuracy, binary_accuracy, mse, mae");
}

}  // namespace lowbit::nn
