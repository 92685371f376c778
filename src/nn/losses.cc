#include "lowbit/nn/losses.h"

#include "lowbit/ops.h"

namespace lowbit::nn {

namespace {
constexpr double kEps = 1e-7;  // Keras backend.epsilon()

Value clip_probs(const Value& p) { return ops::clip(p, kEps, 1 - kEps); }

// Non-batch dims of `got` must equal those of `want` (both without unknowns except batch).
void check_dims(const std::string& who, const Tensor& y, const Shape& want) {
  bool ok = y.rank() == want.rank();
  for (int d = 1; ok && d < want.rank(); ++d) ok = want[d] == kUnknown || want[d] == y.dim(d);
  if (!ok)
    LOWBIT_THROW(ShapeError, who, ": targets have shape ", y.shape().str(), " but predictions need ",
                 want.str(), " (first dim = batch)");
}

class CrossentropyBase : public Loss {
 public:
  explicit CrossentropyBase(CrossentropyOptions o) : Loss(o.reduction), o_(o) {
    if (!(o_.label_smoothing >= 0 && o_.label_smoothing <= 1))
      LOWBIT_THROW(ValueError, "crossentropy: label_smoothing must be in [0, 1] but found ", o_.label_smoothing);
  }
  Json get_config() const override {
    Json j = Loss::get_config();
    j["from_logits"] = o_.from_logits;
    j["label_smoothing"] = o_.label_smoothing;
    return j;
  }

 protected:
  CrossentropyOptions o_;
};

class SparseCCE : public CrossentropyBase {
 public:
  using CrossentropyBase::CrossentropyBase;
  std::string class_name() const override { return "SparseCategoricalCrossentropy"; }
  Value per_sample(const Value& y, const Value& p) const override {
    if (o_.from_logits) return ops::sparse_softmax_cross_entropy(p, y);
    // Keras: clip the probabilities, take logs, softmax-CE on those: -log p_y + log sum_j p_j.
    return ops::sparse_softmax_cross_entropy(ops::log(clip_probs(p)), y);
  }
  ValueType target_type(const ValueType& p) const override {
    std::vector<int64_t> d(p.shape.dims().begin(), p.shape.dims().end() - 1);
    return {DType::kS64, Shape(d)};
  }
  void check_targets(const Tensor& y, const Shape& ps) const override {
    if (y.dtype() != DType::kS64)
      LOWBIT_THROW(DTypeError, class_name(), ": labels must be s64 class indices but found ", dtype_name(y.dtype()),
                   "; convert them with labels.to(DType::kS64)");
    check_dims(class_name(), y, target_type({DType::kF32, ps}).shape);
    const int64_t classes = ps[-1];
    const int64_t* l = y.data<int64_t>();
    for (int64_t i = 0; i < y.numel(); ++i)
      if (l[i] < 0 || l[i] >= classes)
        LOWBIT_THROW(ValueError, class_name(), ": label ", l[i], " at position ", i, " is out of range [0, ", classes,
                     ") for a model with ", classes, " outputs");
  }
};

class CCE : public CrossentropyBase {
 public:
  using CrossentropyBase::CrossentropyBase;
  std::string class_name() const override { return "CategoricalCrossentropy"; }
  Value per_sample(const Value& y, const Value& p) const override {
    Value t = y;
    if (o_.label_smoothing > 0) {
      Value classes = ops::reduce_count(p, {-1});
      t = t * (1 - o_.label_smoothing) + ops::scalar_like(t, o_.label_smoothing) / classes;
    }
    if (o_.from_logits) return ops::softmax_cross_entropy(p, t);
    Value q = clip_probs(p / ops::sum(p, {-1}, true));
    return ops::neg(ops::sum(t * ops::log(q), {-1}));
  }
  void check_targets(const Tensor& y, const Shape& ps) const override {
    if (y.dtype() != DType::kF32)
      LOWBIT_THROW(DTypeError, class_name(), ": targets must be f32 (one-hot) but found ", dtype_name(y.dtype()));
    check_dims(class_name(), y, ps);
  }
};

class BCE : public CrossentropyBase {
 public:
  using CrossentropyBase::CrossentropyBase;
  std::string class_name() const override { return "BinaryCrossentropy"; }
  Value per_sample(const Value& y, const Value& p) const override {
    Value t = y;
    if (o_.label_smoothing > 0) t = t * (1 - o_.label_smoothing) + 0.5 * o_.label_smoothing;
    Value l;
    if (o_.from_logits) {
      l = ops::sigmoid_cross_entropy(p, t);
    } else {
      Value q = clip_probs(p);
      l = ops::neg(t * ops::log(q) + (1.0 - t) * ops::log(1.0 - q));
    }
    return ops::mean(l, {-1});
  }
  void check_targets(const Tensor& y, const Shape& ps) const override {
    if (y.dtype() != DType::kF32)
      LOWBIT_THROW(DTypeError, class_name(), ": targets must be f32 in [0, 1] but found ", dtype_name(y.dtype()));
    check_dims(class_name(), y, ps);
  }
};

class Regression : public Loss {
 public:
  Regression(std::string cls, std::string reduction, double delta = 1.0)
      : Loss(std::move(reduction)), cls_(std::move(cls)), delta_(delta) {
    if (cls_ == "Huber" && !(delta_ > 0)) LOWBIT_THROW(ValueError, "Huber: delta must be > 0 but found ", delta_);
  }
  std::string class_name() const override { return cls_; }
  Value per_sample(const Value& y, const Value& p) const override {
    Value e = p - y;
    if (cls_ == "MeanSquaredError") return ops::mean(ops::square(e), {-1});
    if (cls_ == "MeanAbsoluteError") return ops::mean(ops::abs(e), {-1});
    Value a = ops::abs(e);
    Value quad = 0.5 * ops::square(e);
    Value lin = (a - 0.5 * delta_) * delta_;
    return ops::mean(ops::where(ops::less_equal(a, ops::scalar_like(a, delta_)), quad, lin), {-1});
  }
  void check_targets(const Tensor& y, const Shape& ps) const override {
    if (y.dtype() != DType::kF32)
      LOWBIT_THROW(DTypeError, cls_, ": targets must be f32 but found ", dtype_name(y.dtype()));
    check_dims(cls_, y, ps);
  }
  Json get_config() const override {
    Json j = Loss::get_config();
    if (cls_ == "Huber") j["delta"] = delta_;
    return j;
  }

 private:
  std::string cls_;
  double delta_;
};

// Adds trailing size-1 dims to `w` until it has rank r (Keras squeeze_or_expand_to_same_rank).
Value expand_to_rank(Value w, int r) {
  while (w.rank() < r) w = ops::expand_dims(w, -1);
  return w;
}
}  // namespace

Loss::Loss(std::string reduction) : reduction_(std::move(reduction)) {
  if (reduction_ != "sum_over_batch_size" && reduction_ != "sum" && reduction_ != "none" &&
      reduction_ != "mean_with_sample_weight")
    LOWBIT_THROW(ValueError, "Loss: reduction must be one of sum_over_batch_size, sum, mean_with_sample_weight, none "
                 "but found '", reduction_, "'");
}
Loss::~Loss() = default;

ValueType Loss::target_type(const ValueType& p) const { return {DType::kF32, p.shape}; }
void Loss::check_targets(const Tensor&, const Shape&) const {}
Json Loss::get_config() const { return {{"reduction", reduction_}}; }

Value Loss::operator()(const Value& y_true, const Value& y_pred, const Value& sample_weight, const Value& mask) const {
  Value l = per_sample(y_true, y_pred);
  Value w;
  if (sample_weight.defined()) w = expand_to_rank(sample_weight, l.rank());
  if (mask.defined()) {
    Value m = mask.dtype() == DType::kF32 ? mask : ops::cast(mask, DType::kF32);
    if (reduction_ == "sum_over_batch_size" || reduction_ == "mean_with_sample_weight") {
      // valid entries weigh total/valid: the mean is over valid entries only
      Value total = ops::reduce_count(m);
      Value valid = ops::sum(m);
      m = m * (total / ops::maximum(valid, ops::scalar_like(valid, 1e-30)));
    }
    m = expand_to_rank(m, l.rank());
    w = w.defined() ? w * m : m;
  }
  Value v = w.defined() ? l * w : l;
  if (reduction_ == "none") return v;
  Value s = ops::sum(v);
  if (reduction_ == "sum") return s;
  if (reduction_ == "mean_with_sample_weight" && w.defined()) {
    Value ws = ops::sum(ops::broadcast_like(w, l));
    return s / ops::maximum(ws, ops::scalar_like(ws, 1e-30));
  }
  // divide_no_nan by the number of elements of the per-sample loss
  Value n = ops::reduce_count(l);
  return s / ops::maximum(n, ops::scalar_like(n, 1.0));
}

LossPtr SparseCategoricalCrossentropy(CrossentropyOptions o) { return std::make_shared<SparseCCE>(o); }
LossPtr CategoricalCrossentropy(CrossentropyOptions o) { return std::make_shared<CCE>(o); }
LossPtr BinaryCrossentropy(CrossentropyOptions o) { return std::make_shared<BCE>(o); }
LossPtr MeanSquaredError(std::string r) { return std::make_shared<Regression>("MeanSquaredError", std::move(r)); }
LossPtr MeanAbsoluteError(std::string r) { return std::make_shared<Regression>("MeanAbsoluteError", std::move(r)); }
LossPtr Huber(double delta, std::string r) { return std::make_shared<Regression>("Huber", std::move(r), delta); }

LossPtr loss_from_config(const Json& j) {
  try {
    const std::string cls = j.at("class_name").get<std::string>();
    const Json c = j.value("config", Json::object());
    const std::string red = c.value("reduction", "sum_over_batch_size");
    CrossentropyOptions o{c.value("from_logits", false), c.value("label_smoothing", 0.0), red};
    if (cls == "SparseCategoricalCrossentropy") return SparseCategoricalCrossentropy(o);
    if (cls == "CategoricalCrossentropy") return CategoricalCrossentropy(o);
    if (cls == "BinaryCrossentropy") return BinaryCrossentropy(o);
    if (cls == "MeanSquaredError") return MeanSquaredError(red);
    if (cls == "MeanAbsoluteError") return MeanAbsoluteError(red);
    if (cls == "Huber") return Huber(c.value("delta", 1.0), red);
    LOWBIT_THROW(ValueError, "loss_from_config: unknown loss class '", cls, "'");
  } catch (const nlohmann::json::exception& e) {
    LOWBIT_THROW(ValueError, "loss_from_config: malformed config: ", e.what());
  }
}

LossPtr loss_by_name(const std::string& n) {
  if (n == "sparse_categorical_crossentropy") return SparseCategoricalCrossentropy();
  if (n == "categorical_crossentropy") return CategoricalCrossentropy();
  if (n == "binary_crossentropy") return BinaryCrossentropy();
  if (n == "mse" || n == "mean_squared_error") return MeanSquaredError();
  if (n == "mae" || n == "mean_absolute_error") return MeanAbsoluteError();
  if (n == "huber") return Huber();
  LOWBIT_THROW(ValueError, "loss_by_name: unknown loss '", n, "'");
}

}  // namespace lowbit::nn
