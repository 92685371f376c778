// Keras 3 metrics on the host (the header states the semantics; comments here say why).
#include "lowbit/nn/metrics.h"

#include <cmath>
#include <functional>
#include <utility>
#include <vector>

namespace lowbit::nn {

namespace {

using Dims = std::vector<int64_t>;

std::string dims_str(const Dims& d) { return Shape(d).str(); }

int64_t numel(const Dims& d) {
  int64_t n = 1;
  for (int64_t x : d) n *= x;
  return n;
}

std::vector<double> read(const Tensor& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = t.get_as_double(i);
  return v;
}

// Values of x (shape xs) broadcast to shape `to`, after the losses' alignment: a trailing size-1
// dim beyond to's rank is dropped, missing trailing dims are size 1, then NumPy broadcasting.
std::vector<double> align_broadcast(const Tensor& x, const Dims& to, const std::string& who,
                                    const char* what) {
  Dims xs = x.shape().dims();
  if (xs.size() == to.size() + 1 && xs.back() == 1) xs.pop_back();
  if (xs.size() > to.size())
    LOWBIT_THROW(ShapeError, who, ": ", what, " of shape ", x.shape().str(),
                 " has more dims than the values ", dims_str(to));
  while (xs.size() < to.size()) xs.push_back(1);
  for (size_t d = 0; d < to.size(); ++d)
    if (xs[d] != 1 && xs[d] != to[d])
      LOWBIT_THROW(ShapeError, who, ": ", what, " of shape ", x.shape().str(),
                   " does not broadcast to the values ", dims_str(to), " (dim ", d, " is ", xs[d],
                   " vs ", to[d], ")");
  const std::vector<double> src = read(x);
  std::vector<double> out(static_cast<size_t>(numel(to)));
  // Row-major strides of the source, 0 along broadcast dims.
  std::vector<int64_t> stride(to.size(), 0);
  int64_t s = 1;
  for (int d = static_cast<int>(to.size()) - 1; d >= 0; --d) {
    stride[d] = xs[d] == 1 ? 0 : s;
    s *= xs[d];
  }
  std::vector<int64_t> idx(to.size(), 0);
  for (size_t i = 0; i < out.size(); ++i) {
    int64_t off = 0;
    for (size_t d = 0; d < to.size(); ++d) off += idx[d] * stride[d];
    out[i] = src[off];
    for (int d = static_cast<int>(to.size()) - 1; d >= 0; --d) {
      if (++idx[d] < to[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

Tensor make_values(const std::vector<double>& v, const Dims& shape) {
  Tensor t(Shape(shape), DType::kF32);
  float* p = t.data<float>();
  for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<float>(v[i]);
  return t;
}

// Index of the largest element of each row of length c (first one on ties; NaN counts as the
// largest, the first NaN winning), as ops::argmax.
std::vector<int64_t> row_argmax(const std::vector<double>& x, int64_t c) {
  const int64_t rows = c > 0 ? static_cast<int64_t>(x.size()) / c : 0;
  std::vector<int64_t> out(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const double* row = x.data() + r * c;
    int64_t best = 0;
    for (int64_t j = 1; j < c; ++j) {
      if (std::isnan(row[best])) break;
      if (std::isnan(row[j]) || row[j] > row[best]) best = j;
    }
    out[r] = best;
  }
  return out;
}

void require_defined(const std::string& who, const Tensor& y_true, const Tensor& y_pred) {
  if (!y_true.defined() || !y_pred.defined())
    LOWBIT_THROW(ValueError, who, ": y_true and y_pred must be defined tensors");
}

// ---- MeanMetricWrapper functions ----

class SparseCategoricalAccuracyMetric : public MeanMetric {
 public:
  using MeanMetric::MeanMetric;

 protected:
  Tensor values(const Tensor& y_true, const Tensor& y_pred, Tensor*) const override {
    require_defined(name(), y_true, y_pred);
    const Dims& p = y_pred.shape().dims();
    if (p.empty() || p.back() == 0)
      LOWBIT_THROW(ShapeError, name(), ": y_pred must have a non-empty class axis but found ",
                   y_pred.shape().str());
    Dims t = y_true.shape().dims();
    if (t.size() == p.size() && t.back() == 1) t.pop_back();
    const Dims lead(p.begin(), p.end() - 1);
    if (t != lead)
      LOWBIT_THROW(ShapeError, name(), ": y_true of shape ", y_true.shape().str(),
                   " does not fit y_pred of shape ", y_pred.shape().str(), ": expected labels of ",
                   dims_str(lead), " (or with a trailing dim of 1)");
    const std::vector<int64_t> am = row_argmax(read(y_pred), p.back());
    const std::vector<double> labels = read(y_true);
    std::vector<double> v(am.size());
    for (size_t i = 0; i < am.size(); ++i) v[i] = labels[i] == static_cast<double>(am[i]);
    return make_values(v, lead);
  }
};

class CategoricalAccuracyMetric : public MeanMetric {
 public:
  using MeanMetric::MeanMetric;

 protected:
  Tensor values(const Tensor& y_true, const Tensor& y_pred, Tensor*) const override {
    require_defined(name(), y_true, y_pred);
    const Dims& p = y_pred.shape().dims();
    if (p.empty() || p.back() == 0)
      LOWBIT_THROW(ShapeError, name(), ": y_pred must have a non-empty class axis but found ",
                   y_pred.shape().str());
    if (y_true.shape().dims() != p)
      LOWBIT_THROW(ShapeError, name(), ": y_true of shape ", y_true.shape().str(),
                   " must have y_pred's shape ", y_pred.shape().str(), " (one-hot targets)");
    const std::vector<int64_t> a = row_argmax(read(y_true), p.back());
    const std::vector<int64_t> b = row_argmax(read(y_pred), p.back());
    std::vector<double> v(a.size());
    for (size_t i = 0; i < a.size(); ++i) v[i] = a[i] == b[i];
    return make_values(v, Dims(p.begin(), p.end() - 1));
  }
};

// mean over the last axis of f(t, p), after Keras' squeeze_or_expand_to_same_rank.
class ElementwiseMeanMetric : public MeanMetric {
 public:
  ElementwiseMeanMetric(std::string name, std::function<double(double, double)> f)
      : MeanMetric(std::move(name)), f_(std::move(f)) {}

 protected:
  Tensor values(const Tensor& y_true, const Tensor& y_pred, Tensor*) const override {
    require_defined(name(), y_true, y_pred);
    Dims t = y_true.shape().dims(), p = y_pred.shape().dims();
    if (t.size() == p.size() + 1 && !t.empty() && t.back() == 1) {
      // (Dims{x, 1} rather than push_back: GCC 12 warns falsely on growing a 1-element vector.)
      if (p.size() == 1)
        p = Dims{p[0], 1};
      else
        t.pop_back();
    } else if (p.size() == t.size() + 1 && !p.empty() && p.back() == 1) {
      if (t.size() == 1)
        t = Dims{t[0], 1};
      else
        p.pop_back();
    }
    if (t != p)
      LOWBIT_THROW(ShapeError, name(), ": y_true of shape ", y_true.shape().str(),
                   " does not match y_pred of shape ", y_pred.shape().str());
    if (p.empty())
      LOWBIT_THROW(ShapeError, name(),
                   ": expected values with at least one axis but found scalars");
    const std::vector<double> a = read(y_true), b = read(y_pred);
    const int64_t c = p.back();
    const Dims out_shape(p.begin(), p.end() - 1);
    std::vector<double> v(static_cast<size_t>(numel(out_shape)), 0.0);
    for (size_t r = 0; r < v.size(); ++r) {
      double s = 0;
      for (int64_t j = 0; j < c; ++j) s += f_(a[r * c + j], b[r * c + j]);
      v[r] = c > 0 ? s / static_cast<double>(c) : std::nan("");
    }
    return make_values(v, out_shape);
  }

 private:
  std::function<double(double, double)> f_;
};

class LossMetricImpl : public MeanMetric {
 public:
  LossMetricImpl(LossPtr loss, std::string name) : MeanMetric(std::move(name)), loss_(loss) {
    if (!loss_) LOWBIT_THROW(ValueError, "LossMetric: the loss is null");
  }

 protected:
  Tensor values(const Tensor& y_true, const Tensor& y_pred, Tensor* own_mask) const override {
    require_defined(name(), y_true, y_pred);
    *own_mask = loss_->evaluate_loss_mask(y_true, y_pred);
    return loss_->evaluate_per_sample(y_true, y_pred);
  }

 private:
  LossPtr loss_;
};

// ---- AUC ----

class AUCMetric : public Metric {
 public:
  AUCMetric(int n, std::string name, bool from_logits)
      : n_(n), name_(std::move(name)), from_logits_(from_logits) {
    if (n_ <= 1) LOWBIT_THROW(ValueError, "AUC: num_thresholds must be > 1 but found ", n_);
    reset();
  }
  std::string name() const override { return name_; }
  void reset() override {
    tp_.assign(n_, 0.0);
    fp_.assign(n_, 0.0);
    tn_.assign(n_, 0.0);
    fn_.assign(n_, 0.0);
  }
  void update(const Tensor& y_true, const Tensor& y_pred, const Tensor& sample_weight,
              const Tensor& mask) override {
    require_defined(name_, y_true, y_pred);
    Dims t = y_true.shape().dims(), p = y_pred.shape().dims();
    if (p.size() == t.size() + 1 && p.back() == 1) p.pop_back();
    if (t.size() == p.size() + 1 && t.back() == 1) t.pop_back();
    if (t != p)
      LOWBIT_THROW(ShapeError, name_, ": y_true of shape ", y_true.shape().str(),
                   " does not match y_pred of shape ", y_pred.shape().str());
    const std::vector<double> labels = read(y_true);
    std::vector<double> pred = read(y_pred);
    std::vector<double> w(pred.size(), 1.0);
    if (sample_weight.defined()) w = align_broadcast(sample_weight, p, name_, "sample_weight");
    if (mask.defined()) {
      const std::vector<double> m = align_broadcast(mask, p, name_, "mask");
      for (size_t i = 0; i < w.size(); ++i) w[i] *= m[i];
    }
    std::vector<double> tp_bucket(n_, 0.0), fp_bucket(n_, 0.0);
    double total_true = 0, total_false = 0;
    for (size_t i = 0; i < pred.size(); ++i) {
      double q = pred[i];
      if (from_logits_) q = 1.0 / (1.0 + std::exp(-q));
      const float x = static_cast<float>(std::min(std::max(q, 0.0), 1.0));
      // Keras' evenly-spaced path, in f32: bucket = max(ceil(p (n-1)) - 1, 0); p counts as
      // positive at every threshold index <= bucket.
      const int bucket =
          std::max(static_cast<int>(std::ceil(x * static_cast<float>(n_ - 1))) - 1, 0);
      const bool positive = labels[i] != 0;
      (positive ? tp_bucket : fp_bucket)[bucket] += w[i];
      (positive ? total_true : total_false) += w[i];
    }
    double tp = 0, fp = 0;
    for (int i = n_ - 1; i >= 0; --i) {
      tp += tp_bucket[i];
      fp += fp_bucket[i];
      tp_[i] += tp;
      fp_[i] += fp;
      fn_[i] += total_true - tp;
      tn_[i] += total_false - fp;
    }
  }
  double result() const override {
    auto rate = [](double a, double b) { return a + b == 0 ? 0.0 : a / (a + b); };
    double auc = 0;
    for (int i = 0; i + 1 < n_; ++i) {
      const double x0 = rate(fp_[i], tn_[i]), x1 = rate(fp_[i + 1], tn_[i + 1]);
      const double y0 = rate(tp_[i], fn_[i]), y1 = rate(tp_[i + 1], fn_[i + 1]);
      auc += (x0 - x1) * (y0 + y1) / 2.0;
    }
    return auc;
  }

 private:
  int n_;
  std::string name_;
  bool from_logits_;
  std::vector<double> tp_, fp_, tn_, fn_;
};

}  // namespace

// ---- Metric / MeanMetric ----

Metric::~Metric() = default;

MeanMetric::MeanMetric(std::string name) : name_(std::move(name)) {}

void MeanMetric::reset() { total_ = count_ = 0; }

void MeanMetric::update_value(double v, double weight) {
  total_ += v * weight;
  count_ += weight;
}

double MeanMetric::result() const { return count_ == 0 ? 0.0 : total_ / count_; }

Tensor MeanMetric::values(const Tensor&, const Tensor& y_pred, Tensor*) const { return y_pred; }

void MeanMetric::update(const Tensor& y_true, const Tensor& y_pred, const Tensor& sample_weight,
                        const Tensor& mask) {
  Tensor own;
  Tensor v = values(y_true, y_pred, &own);
  if (!own.defined()) return update_values(v, sample_weight, mask);
  if (!mask.defined()) return update_values(v, sample_weight, own);
  // Both masks: their product, over the values' shape.
  const Dims& vs = v.shape().dims();
  std::vector<double> a = align_broadcast(mask, vs, name_, "mask");
  const std::vector<double> b = align_broadcast(own, vs, name_, "loss mask");
  for (size_t i = 0; i < a.size(); ++i) a[i] *= b[i];
  update_values(v, sample_weight, make_values(a, vs));
}

void MeanMetric::update_values(const Tensor& values, const Tensor& sample_weight,
                               const Tensor& mask) {
  if (!values.defined()) LOWBIT_THROW(ValueError, name_, ": the values are undefined");
  const Dims& vs = values.shape().dims();
  const std::vector<double> v = read(values);
  if (vs.empty()) {  // one scalar value
    double w = 1;
    if (sample_weight.defined()) w *= align_broadcast(sample_weight, vs, name_, "sample_weight")[0];
    if (mask.defined()) w *= align_broadcast(mask, vs, name_, "mask")[0];
    if (w == 0) return;  // masked: counts for nothing (whatever the value, NaN too)
    update_value(v[0], w);
    return;
  }
  if (sample_weight.defined() && sample_weight.rank() == 0 && !mask.defined()) {
    // Keras reduces the values to one mean and weighs the batch once.
    double s = 0;
    for (double x : v) s += x;
    update_value(v.empty() ? 0.0 : s / static_cast<double>(v.size()),
                 sample_weight.get_as_double(0));
    return;
  }
  std::vector<double> w;
  if (sample_weight.defined()) w = align_broadcast(sample_weight, vs, name_, "sample_weight");
  if (mask.defined()) {
    const std::vector<double> m = align_broadcast(mask, vs, name_, "mask");
    if (w.empty()) {
      w = m;
    } else {
      for (size_t i = 0; i < w.size(); ++i) w[i] *= m[i];
    }
  }
  const int64_t batch = vs[0];
  const int64_t inner = batch > 0 ? static_cast<int64_t>(v.size()) / batch : 0;
  if (inner == 0) return;
  for (int64_t b = 0; b < batch; ++b) {
    double sv = 0, sw = 0;
    for (int64_t j = 0; j < inner; ++j) {
      const size_t i = static_cast<size_t>(b * inner + j);
      if (w.empty()) {
        sv += v[i];
      } else if (w[i] != 0) {  // a select: a masked (0-weight) value counts for nothing, NaN too
        sv += v[i] * w[i];
        sw += w[i];
      }
    }
    total_ += sv / static_cast<double>(inner);
    count_ += w.empty() ? 1.0 : sw / static_cast<double>(inner);
  }
}

// ---- Factories ----

MetricPtr Mean(std::string name) { return std::make_shared<MeanMetric>(std::move(name)); }

MetricPtr SparseCategoricalAccuracy(std::string name) {
  return std::make_shared<SparseCategoricalAccuracyMetric>(std::move(name));
}

MetricPtr CategoricalAccuracy(std::string name) {
  return std::make_shared<CategoricalAccuracyMetric>(std::move(name));
}

MetricPtr BinaryAccuracy(double threshold, std::string name) {
  if (!(threshold > 0 && threshold < 1))
    LOWBIT_THROW(ValueError, "BinaryAccuracy: threshold must be in (0, 1) but found ", threshold);
  // Keras compares in f32: y_pred > threshold with the threshold cast to f32.
  const float thr = static_cast<float>(threshold);
  return std::make_shared<ElementwiseMeanMetric>(std::move(name), [thr](double t, double p) {
    return t == (static_cast<float>(p) > thr ? 1.0 : 0.0) ? 1.0 : 0.0;
  });
}

MetricPtr Accuracy(std::string name) {
  return std::make_shared<ElementwiseMeanMetric>(
      std::move(name), [](double t, double p) { return t == p ? 1.0 : 0.0; });
}

MetricPtr MeanSquaredErrorMetric(std::string name) {
  return std::make_shared<ElementwiseMeanMetric>(
      std::move(name), [](double t, double p) { return (t - p) * (t - p); });
}

MetricPtr MeanAbsoluteErrorMetric(std::string name) {
  return std::make_shared<ElementwiseMeanMetric>(
      std::move(name), [](double t, double p) { return std::abs(t - p); });
}

MetricPtr LossMetric(LossPtr loss, std::string name) {
  return std::make_shared<LossMetricImpl>(std::move(loss), std::move(name));
}

MetricPtr AUC(int num_thresholds, std::string name, bool from_logits) {
  return std::make_shared<AUCMetric>(num_thresholds, std::move(name), from_logits);
}

MetricPtr metric_by_name(const std::string& name, const Loss* loss, const ValueType& y_pred) {
  if (name == "accuracy" || name == "acc") {
    const Shape& p = y_pred.shape;
    if (p.rank() < 1)
      LOWBIT_THROW(ShapeError, "metric_by_name: '", name,
                   "' needs a prediction with at least one axis but found ", p.str());
    const Shape t = loss ? loss->target_type(y_pred).shape : p;
    const bool binary = p[-1] == 1;
    const bool sparse = t.rank() < p.rank() || (t.rank() > 0 && t[-1] == 1 && p[-1] > 1);
    if (binary) return BinaryAccuracy(0.5, name);
    if (sparse) return SparseCategoricalAccuracy(name);
    return CategoricalAccuracy(name);
  }
  if (name == "sparse_categorical_accuracy" || name == "SparseCategoricalAccuracy")
    return SparseCategoricalAccuracy(name);
  if (name == "categorical_accuracy" || name == "CategoricalAccuracy")
    return CategoricalAccuracy(name);
  if (name == "binary_accuracy" || name == "BinaryAccuracy") return BinaryAccuracy(0.5, name);
  if (name == "Accuracy") return Accuracy(name);
  if (name == "mean_squared_error" || name == "mse" || name == "MSE" || name == "MeanSquaredError")
    return MeanSquaredErrorMetric(name);
  if (name == "mean_absolute_error" || name == "mae" || name == "MAE" ||
      name == "MeanAbsoluteError")
    return MeanAbsoluteErrorMetric(name);
  if (name == "auc" || name == "AUC") return AUC(200, name);
  if (name == "sparse_categorical_crossentropy" || name == "categorical_crossentropy" ||
      name == "binary_crossentropy" || name == "huber" || name == "huber_loss")
    return LossMetric(loss_by_name(name), name);
  LOWBIT_THROW(ValueError, "metric_by_name: unknown metric '", name,
               "'; known: accuracy (acc), sparse_categorical_accuracy, categorical_accuracy, "
               "binary_accuracy, mean_squared_error (mse), mean_absolute_error (mae), auc, "
               "sparse_categorical_crossentropy, categorical_crossentropy, binary_crossentropy, "
               "huber, and the class names SparseCategoricalAccuracy, CategoricalAccuracy, "
               "BinaryAccuracy, Accuracy, MeanSquaredError, MeanAbsoluteError, AUC");
}

}  // namespace lowbit::nn
