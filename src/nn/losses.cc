// Keras 3 losses: per-sample formulas as graph ops and Keras' weighted/masked reduction
// (docs/spec/layer-semantics.md 4.1, 7.6). The header states the semantics; comments here say why.
#include "lowbit/nn/losses.h"

#include <cmath>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "lowbit/ops.h"

namespace lowbit::nn {

namespace {

const std::set<std::string>& reductions() {
  static const std::set<std::string> r = {"sum_over_batch_size", "mean", "sum",
                                          "mean_with_sample_weight", "none"};
  return r;
}

bool known(int64_t d) { return d != kUnknown; }

Value to_f32(const Value& v) { return v.dtype() == DType::kF32 ? v : ops::cast(v, DType::kF32); }

// a / b, and 0 where b == 0 (Keras' divide_no_nan). The divisor is replaced by 1 where it is 0
// so that neither the value nor the gradient of the unused branch holds inf or NaN.
Value safe_div(const Value& a, const Value& b) {
  Value zero = ops::equal(b, ops::scalar_like(b, 0.0));
  Value q = a / ops::where(zero, ops::ones_like(b), b);
  return ops::where(zero, ops::scalar_like(q, 0.0), q);
}

std::string index_str(int64_t flat, const Shape& s) {
  std::vector<int64_t> idx(s.rank());
  for (int d = s.rank() - 1; d >= 0; --d) {
    idx[d] = s[d] > 0 ? flat % s[d] : 0;
    flat = s[d] > 0 ? flat / s[d] : 0;
  }
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < idx.size(); ++i) os << (i ? "," : "") << idx[i];
  os << ']';
  return os.str();
}

// Known dims equal (unknown ones match anything).
bool shapes_match(const Shape& a, const Shape& b) {
  if (a.rank() != b.rank()) return false;
  for (int d = 0; d < a.rank(); ++d)
    if (known(a[d]) && known(b[d]) && a[d] != b[d]) return false;
  return true;
}

// Keras' squeeze_or_expand_to_same_rank(y_true, y_pred) on static shapes: returns the shape
// y_true takes once brought to y_pred's (the expansion of a rank-1 y_pred [B] to [B, 1] against
// y_true [B, 1] is the same comparison as squeezing y_true to [B]).
Shape dense_aligned_shape(const Shape& t, const Shape& p) {
  std::vector<int64_t> d = t.dims();
  if (t.rank() == p.rank() + 1 && t[-1] == 1) {
    d.pop_back();
  } else if (p.rank() == t.rank() + 1 && p[-1] == 1) {
    d.push_back(1);
  }
  return Shape(d);
}

// Same on values: returns {y_true, y_pred} of one rank where Keras makes them so.
std::pair<Value, Value> squeeze_or_expand(Value t, Value p) {
  if (t.rank() == p.rank() + 1 && t.shape()[-1] == 1) {
    if (p.rank() == 1)
      p = ops::expand_dims(p, -1);
    else
      t = ops::squeeze(t, {-1});
  } else if (p.rank() == t.rank() + 1 && p.shape()[-1] == 1) {
    if (t.rank() == 1)
      t = ops::expand_dims(t, -1);
    else
      p = ops::squeeze(p, {-1});
  }
  return {t, p};
}

// Brings a sample weight or mask to the rank of the per-sample loss: a trailing size-1 dim
// beyond it is dropped, missing trailing dims are added as size 1 (left alignment), then the
// known dims must broadcast.
Value align_to_loss(Value x, const Shape& loss, const std::string& who, const char* what) {
  if (x.rank() == loss.rank() + 1 && x.shape()[-1] == 1) x = ops::squeeze(x, {-1});
  if (x.rank() > loss.rank())
    LOWBIT_THROW(ShapeError, who, ": ", what, " of shape ", x.shape().str(),
                 " has more dims than the per-sample loss ", loss.str());
  while (x.rank() < loss.rank()) x = ops::expand_dims(x, -1);
  for (int d = 0; d < loss.rank(); ++d) {
    const int64_t a = x.shape()[d], b = loss[d];
    if (known(a) && known(b) && a != 1 && a != b)
      LOWBIT_THROW(ShapeError, who, ": ", what, " of shape ", x.shape().str(),
                   " does not broadcast to the per-sample loss ", loss.str(), " (dim ", d, " is ",
                   a, " vs ", b, ")");
  }
  return x;
}

// y_true for the dense losses: f32, at y_pred's rank, with y_pred's known dims.
std::pair<Value, Value> dense_inputs(const std::string& who, const Value& y_true,
                                     const Value& y_pred) {
  if (y_pred.dtype() != DType::kF32)
    LOWBIT_THROW(DTypeError, who, ": y_pred must be f32 but found ", dtype_name(y_pred.dtype()),
                 y_pred.shape().str());
  auto [t, p] = squeeze_or_expand(to_f32(y_true), y_pred);
  if (!shapes_match(t.shape(), p.shape()))
    LOWBIT_THROW(ShapeError, who, ": y_true of shape ", y_true.shape().str(),
                 " does not match y_pred of shape ", y_pred.shape().str());
  return {t, p};
}

void check_dense_targets(const std::string& who, const Tensor& y_true, const Shape& p) {
  if (!y_true.defined()) LOWBIT_THROW(ValueError, who, ": y_true is undefined");
  const Shape t = dense_aligned_shape(y_true.shape(), p);
  if (!shapes_match(t, p))
    LOWBIT_THROW(ShapeError, who, ": y_true of shape ", y_true.shape().str(),
                 " does not match y_pred of shape ", p.str(),
                 " (expected the same shape, or one extra/missing trailing dim of size 1)");
}

void check_probability_option(const std::string& who, double label_smoothing) {
  if (!(label_smoothing >= 0 && label_smoothing <= 1))
    LOWBIT_THROW(ValueError, who, ": label_smoothing must be in [0, 1] but found ",
                 label_smoothing);
}

// ---- SparseCategoricalCrossentropy ----

class SparseCCE : public Loss {
 public:
  explicit SparseCCE(CrossentropyOptions o) : Loss(o.reduction), o_(std::move(o)) {
    if (o_.label_smoothing != 0)
      LOWBIT_THROW(ValueError,
                   "SparseCategoricalCrossentropy: label_smoothing is not an argument of the "
                   "sparse loss (Keras has none) but found ",
                   o_.label_smoothing, "; use CategoricalCrossentropy with one-hot targets");
  }
  std::string class_name() const override { return "SparseCategoricalCrossentropy"; }
  std::string name() const override { return "sparse_categorical_crossentropy"; }

  // Labels squeezed to y_pred's leading dims, s32/s64, checked against y_pred.
  Value labels(const Value& y_true, const Value& y_pred) const {
    const std::string who = class_name();
    if (y_pred.dtype() != DType::kF32)
      LOWBIT_THROW(DTypeError, who, ": y_pred must be f32 but found ", dtype_name(y_pred.dtype()),
                   y_pred.shape().str());
    if (y_pred.rank() < 1)
      LOWBIT_THROW(ShapeError, who, ": y_pred must have a class axis but found a scalar");
    if (y_true.dtype() == DType::kBool)
      LOWBIT_THROW(DTypeError, who, ": y_true must hold integer labels but found bool",
                   y_true.shape().str());
    Value t = y_true;
    if (t.rank() == y_pred.rank() && t.shape()[-1] == 1) t = ops::squeeze(t, {-1});
    const Shape lead(
        std::vector<int64_t>(y_pred.shape().dims().begin(), y_pred.shape().dims().end() - 1));
    if (!shapes_match(t.shape(), lead))
      LOWBIT_THROW(ShapeError, who, ": y_true of shape ", y_true.shape().str(),
                   " does not fit y_pred of shape ", y_pred.shape().str(), ": expected ",
                   lead.str(), " (or with a trailing dim of 1)");
    if (t.dtype() != DType::kS32 && t.dtype() != DType::kS64) t = ops::cast(t, DType::kS64);
    return t;
  }
  Value valid(const Value& labels) const {
    return ops::not_equal(labels, ops::scalar_like(labels, static_cast<double>(*o_.ignore_class)));
  }

  Value per_sample(const Value& y_true, const Value& y_pred) const override {
    Value t = labels(y_true, y_pred);
    Value p = y_pred;
    Value ok;
    if (o_.ignore_class) {
      // As Keras: ignored positions get label 0 and an all-zero row, and a loss of 0 afterwards.
      ok = valid(t);
      t = ops::where(ok, t, ops::scalar_like(t, 0.0));
      p = p * ops::cast(ops::expand_dims(ok, -1), DType::kF32);
    }
    if (!o_.from_logits) p = ops::log(ops::clip(p, kLossEpsilon, 1.0 - kLossEpsilon));
    Value l = ops::sparse_softmax_cross_entropy(p, t);
    if (ok.defined()) l = ops::where(ok, l, ops::scalar_like(l, 0.0));
    return l;
  }
  Value loss_mask(const Value& y_true, const Value& y_pred) const override {
    if (!o_.ignore_class) return Value();
    return valid(labels(y_true, y_pred));
  }

  void check_targets(const Tensor& y_true, const Shape& p) const override {
    const std::string who = class_name();
    if (!y_true.defined()) LOWBIT_THROW(ValueError, who, ": y_true is undefined");
    if (p.rank() < 1)
      LOWBIT_THROW(ShapeError, who, ": y_pred must have a class axis but found shape ", p.str());
    if (y_true.dtype() == DType::kBool)
      LOWBIT_THROW(DTypeError, who, ": y_true must hold integer class labels but found bool",
                   y_true.shape().str());
    const Shape lead = target_type({DType::kF32, p}).shape;
    Shape t = y_true.shape();
    if (t.rank() == p.rank() && t[-1] == 1) t.dims().pop_back();
    if (!shapes_match(t, lead))
      LOWBIT_THROW(ShapeError, who, ": y_true of shape ", y_true.shape().str(),
                   " does not fit y_pred of shape ", p.str(), ": expected labels of shape ",
                   lead.str(), " (or with a trailing dim of 1)");
    const int64_t c = p[-1];
    const bool is_f32 = y_true.dtype() == DType::kF32;
    for (int64_t i = 0; i < y_true.numel(); ++i) {
      const double v = y_true.get_as_double(i);
      if (o_.ignore_class && v == static_cast<double>(*o_.ignore_class)) continue;
      if (is_f32 && !(std::isfinite(v) && v == std::floor(v)))
        LOWBIT_THROW(ValueError, who, ": y_true holds ", v, " at index ",
                     index_str(i, y_true.shape()), " of ", y_true.shape().str(),
                     ", which is not an integer class label");
      if (known(c) && (v < 0 || v >= static_cast<double>(c))) {
        std::ostringstream extra;
        if (o_.ignore_class) extra << " and is not the ignore_class " << *o_.ignore_class;
        LOWBIT_THROW(ValueError, who, ": y_true holds label ", static_cast<int64_t>(v),
                     " at index ", index_str(i, y_true.shape()), " of ", y_true.shape().str(),
                     ", which is out of range [0, ", c, ") for y_pred's ", c, " classes",
                     extra.str());
      }
    }
  }
  ValueType target_type(const ValueType& p) const override {
    if (p.shape.rank() < 1)
      LOWBIT_THROW(ShapeError, class_name(), ": y_pred must have a class axis but found shape ",
                   p.shape.str());
    return {DType::kS64,
            Shape(std::vector<int64_t>(p.shape.dims().begin(), p.shape.dims().end() - 1))};
  }
  Json get_config() const override {
    Json j = Loss::get_config();
    j["from_logits"] = o_.from_logits;
    j["ignore_class"] = o_.ignore_class ? Json(*o_.ignore_class) : Json(nullptr);
    return j;
  }

 private:
  CrossentropyOptions o_;
};

// ---- CategoricalCrossentropy ----

class CategoricalCE : public Loss {
 public:
  explicit CategoricalCE(CrossentropyOptions o) : Loss(o.reduction), o_(std::move(o)) {
    check_probability_option(class_name(), o_.label_smoothing);
    if (o_.ignore_class)
      LOWBIT_THROW(ValueError, class_name(),
                   ": ignore_class is an argument of SparseCategoricalCrossentropy only");
  }
  std::string class_name() const override { return "CategoricalCrossentropy"; }
  std::string name() const override { return "categorical_crossentropy"; }

  Value per_sample(const Value& y_true, const Value& y_pred) const override {
    auto [t, p] = dense_inputs(class_name(), y_true, y_pred);
    if (p.rank() < 1)
      LOWBIT_THROW(ShapeError, class_name(), ": y_pred must have a class axis but found a scalar");
    if (o_.label_smoothing > 0) {
      const int64_t c = t.shape()[-1];
      Value classes =
          known(c) ? ops::scalar_like(t, static_cast<double>(c)) : ops::reduce_count(t, {-1});
      t = t * (1.0 - o_.label_smoothing) + ops::scalar_like(t, o_.label_smoothing) / classes;
    }
    if (o_.from_logits) return ops::softmax_cross_entropy(p, t);
    // Keras renormalises the rows before clipping, so unnormalised scores are probabilities too.
    Value q = p / ops::sum(p, {-1}, true);
    q = ops::clip(q, kLossEpsilon, 1.0 - kLossEpsilon);
    return -ops::sum(t * ops::log(q), {-1});
  }
  void check_targets(const Tensor& y_true, const Shape& p) const override {
    check_dense_targets(class_name(), y_true, p);
  }
  Json get_config() const override {
    Json j = Loss::get_config();
    j["from_logits"] = o_.from_logits;
    j["label_smoothing"] = o_.label_smoothing;
    j["axis"] = -1;
    return j;
  }

 private:
  CrossentropyOptions o_;
};

// ---- BinaryCrossentropy ----

class BinaryCE : public Loss {
 public:
  explicit BinaryCE(CrossentropyOptions o) : Loss(o.reduction), o_(std::move(o)) {
    check_probability_option(class_name(), o_.label_smoothing);
    if (o_.ignore_class)
      LOWBIT_THROW(ValueError, class_name(),
                   ": ignore_class is an argument of SparseCategoricalCrossentropy only");
  }
  std::string class_name() const override { return "BinaryCrossentropy"; }
  std::string name() const override { return "binary_crossentropy"; }

  Value per_sample(const Value& y_true, const Value& y_pred) const override {
    auto [t, p] = dense_inputs(class_name(), y_true, y_pred);
    if (o_.label_smoothing > 0) t = t * (1.0 - o_.label_smoothing) + 0.5 * o_.label_smoothing;
    Value e;
    if (o_.from_logits) {
      e = ops::sigmoid_cross_entropy(p, t);
    } else {
      Value q = ops::clip(p, kLossEpsilon, 1.0 - kLossEpsilon);
      e = -(t * ops::log(q) + (1.0 - t) * ops::log(1.0 - q));
    }
    return ops::mean(e, {-1});
  }
  void check_targets(const Tensor& y_true, const Shape& p) const override {
    check_dense_targets(class_name(), y_true, p);
  }
  Json get_config() const override {
    Json j = Loss::get_config();
    j["from_logits"] = o_.from_logits;
    j["label_smoothing"] = o_.label_smoothing;
    j["axis"] = -1;
    return j;
  }

 private:
  CrossentropyOptions o_;
};

// ---- Regression losses ----

enum class Regression { kMse, kMae, kHuber };

class RegressionLoss : public Loss {
 public:
  RegressionLoss(Regression kind, std::string reduction, double delta = 1.0)
      : Loss(std::move(reduction)), kind_(kind), delta_(delta) {
    if (kind_ == Regression::kHuber && !(delta_ > 0))
      LOWBIT_THROW(ValueError, "Huber: delta must be > 0 but found ", delta_);
  }
  std::string class_name() const override {
    switch (kind_) {
      case Regression::kMse:
        return "MeanSquaredError";
      case Regression::kMae:
        return "MeanAbsoluteError";
      case Regression::kHuber:
        return "Huber";
    }
    return "";
  }
  std::string name() const override {
    switch (kind_) {
      case Regression::kMse:
        return "mean_squared_error";
      case Regression::kMae:
        return "mean_absolute_error";
      case Regression::kHuber:
        return "huber_loss";
    }
    return "";
  }
  Value per_sample(const Value& y_true, const Value& y_pred) const override {
    auto [t, p] = dense_inputs(class_name(), y_true, y_pred);
    switch (kind_) {
      case Regression::kMse:
        return ops::mean(ops::square(t - p), {-1});
      case Regression::kMae:
        return ops::mean(ops::abs(t - p), {-1});
      case Regression::kHuber: {
        Value e = p - t;
        Value a = ops::abs(e);
        Value quad = 0.5 * ops::square(e);
        Value lin = delta_ * a - 0.5 * delta_ * delta_;
        return ops::mean(ops::where(ops::less_equal(a, ops::scalar_like(a, delta_)), quad, lin),
                         {-1});
      }
    }
    return Value();
  }
  void check_targets(const Tensor& y_true, const Shape& p) const override {
    check_dense_targets(class_name(), y_true, p);
  }
  Json get_config() const override {
    Json j = Loss::get_config();
    if (kind_ == Regression::kHuber) j["delta"] = delta_;
    return j;
  }

 private:
  Regression kind_;
  double delta_;
};

// ---- Feature-masked losses: element-wise, NaN targets missing ----

enum class FeatureLoss { kMse, kMae, kBce };

class FeatureMaskedLoss : public Loss {
 public:
  FeatureMaskedLoss(FeatureLoss kind, CrossentropyOptions o)
      : Loss(o.reduction), kind_(kind), o_(o) {
    check_probability_option(class_name(), o_.label_smoothing);
    if (o_.ignore_class)
      LOWBIT_THROW(ValueError, class_name(),
                   ": ignore_class is an argument of SparseCategoricalCrossentropy only");
  }
  std::string class_name() const override {
    switch (kind_) {
      case FeatureLoss::kMse:
        return "FeatureMaskedMeanSquaredError";
      case FeatureLoss::kMae:
        return "FeatureMaskedMeanAbsoluteError";
      case FeatureLoss::kBce:
        return "FeatureMaskedBinaryCrossentropy";
    }
    return "";
  }
  std::string name() const override {
    switch (kind_) {
      case FeatureLoss::kMse:
        return "feature_masked_mean_squared_error";
      case FeatureLoss::kMae:
        return "feature_masked_mean_absolute_error";
      case FeatureLoss::kBce:
        return "feature_masked_binary_crossentropy";
    }
    return "";
  }
  Value per_sample(const Value& y_true, const Value& y_pred) const override {
    auto [t, p] = dense_inputs(class_name(), y_true, y_pred);
    const Value present = ops::equal(t, t);
    // Missing targets are replaced before the loss so that the loss (and its gradient) stays
    // finite there: the reduction multiplies by the mask, and NaN * 0 would be NaN.
    const Value fill = kind_ == FeatureLoss::kBce ? ops::scalar_like(t, 0.0) : p;
    t = ops::where(present, t, fill);
    Value e;
    switch (kind_) {
      case FeatureLoss::kMse:
        e = ops::square(t - p);
        break;
      case FeatureLoss::kMae:
        e = ops::abs(t - p);
        break;
      case FeatureLoss::kBce: {
        if (o_.label_smoothing > 0) t = t * (1.0 - o_.label_smoothing) + 0.5 * o_.label_smoothing;
        if (o_.from_logits) {
          e = ops::sigmoid_cross_entropy(p, t);
        } else {
          Value q = ops::clip(p, kLossEpsilon, 1.0 - kLossEpsilon);
          e = -(t * ops::log(q) + (1.0 - t) * ops::log(1.0 - q));
        }
        break;
      }
    }
    return ops::where(present, e, ops::scalar_like(e, 0.0));
  }
  Value loss_mask(const Value& y_true, const Value& y_pred) const override {
    auto [t, p] = dense_inputs(class_name(), y_true, y_pred);
    return ops::equal(t, t);
  }
  void check_targets(const Tensor& y_true, const Shape& p) const override {
    check_dense_targets(class_name(), y_true, p);
  }
  Json get_config() const override {
    Json j = Loss::get_config();
    if (kind_ == FeatureLoss::kBce) {
      j["from_logits"] = o_.from_logits;
      j["label_smoothing"] = o_.label_smoothing;
    }
    return j;
  }

 private:
  FeatureLoss kind_;
  CrossentropyOptions o_;
};

}  // namespace

// ---- Loss ----

Loss::Loss(std::string reduction) : reduction_(std::move(reduction)) {
  if (!reductions().count(reduction_))
    LOWBIT_THROW(ValueError,
                 "Loss: reduction must be one of \"sum_over_batch_size\", \"mean\", \"sum\", "
                 "\"mean_with_sample_weight\", \"none\" but found \"",
                 reduction_, "\"");
}

Loss::~Loss() = default;

std::string Loss::name() const { return class_name(); }

Value Loss::loss_mask(const Value&, const Value&) const { return Value(); }

Value Loss::operator()(const Value& y_true, const Value& y_pred, const Value& sample_weight,
                       const Value& mask) const {
  const std::string who = class_name();
  if (!y_true.defined() || !y_pred.defined())
    LOWBIT_THROW(ValueError, who, ": y_true and y_pred must be defined values");
  Graph& g = y_pred.graph();
  g.check_owns(y_true, (who + "(y_true)").c_str());
  if (sample_weight.defined()) g.check_owns(sample_weight, (who + "(sample_weight)").c_str());
  if (mask.defined()) g.check_owns(mask, (who + "(mask)").c_str());

  Graph::Scope scope(g, name());
  // Masked entries contribute nothing whatever they hold (issue 14): they never reach the
  // arithmetic. y_pred (and a float y_true) read as 0 there, and the per-sample loss is
  // selected to 0 there, so that neither the value nor the gradient can see a NaN or Inf at a
  // masked step (multiplying by a 0 mask would not do: NaN * 0 = NaN).
  Value yt = y_true, yp = y_pred;
  if (mask.defined()) {
    const Value valid = mask.dtype() == DType::kBool
                            ? mask
                            : ops::not_equal(to_f32(mask), ops::scalar_like(to_f32(mask), 0.0));
    auto select_valid = [&](const Value& v) {
      if (v.dtype() != DType::kF32 || v.rank() < valid.rank()) return v;
      Value c = valid;
      while (c.rank() < v.rank()) c = ops::expand_dims(c, -1);
      for (int d = 0; d < c.rank(); ++d) {
        const int64_t a = c.shape()[d], b = v.shape()[d];
        if (known(a) && known(b) && a != 1 && a != b)
          return v;  // not aligned: the check below says so
      }
      return ops::where(c, v, ops::scalar_like(v, 0.0));
    };
    yp = select_valid(y_pred);
    yt = select_valid(y_true);
  }
  Value l = per_sample(yt, yp);
  const Shape ls = l.shape();

  // The 0/1 mask over l's elements: the caller's mask AND the loss's own one.
  Value m;
  if (mask.defined()) {
    m = to_f32(align_to_loss(mask, ls, who, "mask"));
    l = ops::where(ops::not_equal(m, ops::scalar_like(m, 0.0)), l, ops::scalar_like(l, 0.0));
  }
  if (Value own = loss_mask(y_true, y_pred); own.defined()) {
    Value o = to_f32(align_to_loss(own, ls, who, "loss mask"));
    m = m.defined() ? m * o : o;
  }
  const bool mean_reduction = reduction_ == "sum_over_batch_size" || reduction_ == "mean";
  if (m.defined()) {
    m = ops::broadcast_like(m, l);
    if (mean_reduction) {
      // Keras' apply_mask: valid entries weigh total/valid, so that dividing by the element
      // count below yields the mean over valid entries (0 when none is valid).
      m = m * safe_div(ops::reduce_count(m), ops::sum(m));
    }
  }
  Value w;
  if (sample_weight.defined()) w = to_f32(align_to_loss(sample_weight, ls, who, "sample_weight"));
  if (m.defined()) w = w.defined() ? w * m : m;
  if (w.defined()) l = l * w;

  if (reduction_ == "none" || l.rank() == 0) return l;
  Value s = ops::sum(l);
  if (reduction_ == "sum") return s;
  if (reduction_ == "mean_with_sample_weight" && w.defined())
    return safe_div(s, ops::sum(ops::broadcast_like(w, l)));
  return safe_div(s, ops::reduce_count(l));
}

namespace {
// Runs fn on placeholders holding the given tensors (undefined ones stay undefined values).
Tensor run_on(const std::vector<Tensor>& in,
              const std::function<Value(const std::vector<Value>&)>& fn) {
  Graph g;
  std::vector<Value> vals;
  std::vector<std::pair<Value, Tensor>> feeds;
  for (size_t i = 0; i < in.size(); ++i) {
    if (!in[i].defined()) {
      vals.emplace_back();
      continue;
    }
    Value v =
        g.placeholder(std::string("in").append(std::to_string(i)), in[i].dtype(), in[i].shape());
    vals.push_back(v);
    feeds.emplace_back(v, in[i]);
  }
  Value out = fn(vals);
  if (!out.defined()) return Tensor();
  Executor ex(g, {out});
  // Feed only what the output needs (an unused placeholder is not a required feed).
  std::vector<std::pair<Value, Tensor>> needed;
  for (const Value& r : ex.required_feeds())
    for (auto& f : feeds)
      if (f.first == r) needed.push_back(f);
  return ex.run(needed)[0];
}
}  // namespace

Tensor Loss::evaluate(const Tensor& y_true, const Tensor& y_pred, const Tensor& sample_weight,
                      const Tensor& mask) const {
  return run_on({y_true, y_pred, sample_weight, mask},
                [&](const std::vector<Value>& v) { return (*this)(v[0], v[1], v[2], v[3]); });
}

Tensor Loss::evaluate_per_sample(const Tensor& y_true, const Tensor& y_pred) const {
  return run_on({y_true, y_pred},
                [&](const std::vector<Value>& v) { return per_sample(v[0], v[1]); });
}

Tensor Loss::evaluate_loss_mask(const Tensor& y_true, const Tensor& y_pred) const {
  return run_on({y_true, y_pred},
                [&](const std::vector<Value>& v) { return loss_mask(v[0], v[1]); });
}

void Loss::check_targets(const Tensor& y_true, const Shape& y_pred_shape) const {
  check_dense_targets(class_name(), y_true, y_pred_shape);
}

Tensor Loss::prepare_targets(const Tensor& y_true, const Shape& y_pred_shape) const {
  check_targets(y_true, y_pred_shape);
  const ValueType want = target_type({DType::kF32, y_pred_shape});
  Tensor t = y_true.dtype() == want.dtype ? y_true : y_true.to(want.dtype);
  // Bring the shape to the placeholder's rank, taking the unknown dims from y_true.
  if (t.rank() == want.shape.rank() + 1 && t.shape()[-1] == 1) {
    std::vector<int64_t> d = t.shape().dims();
    d.pop_back();
    t = t.reshape(Shape(d));
  } else if (t.rank() + 1 == want.shape.rank() && want.shape[-1] == 1) {
    std::vector<int64_t> d = t.shape().dims();
    d.push_back(1);
    t = t.reshape(Shape(d));
  }
  if (!shapes_match(t.shape(), want.shape))
    LOWBIT_THROW(ShapeError, class_name(), ": y_true of shape ", y_true.shape().str(),
                 " cannot be fed as ", want.shape.str());
  return t;
}

ValueType Loss::target_type(const ValueType& y_pred) const { return {DType::kF32, y_pred.shape}; }

Json Loss::get_config() const {
  return {{"name", name()}, {"reduction", reduction_ == "none" ? Json(nullptr) : Json(reduction_)}};
}

// ---- Factories ----

LossPtr SparseCategoricalCrossentropy(CrossentropyOptions o) {
  return std::make_shared<SparseCCE>(std::move(o));
}
LossPtr CategoricalCrossentropy(CrossentropyOptions o) {
  return std::make_shared<CategoricalCE>(std::move(o));
}
LossPtr BinaryCrossentropy(CrossentropyOptions o) {
  return std::make_shared<BinaryCE>(std::move(o));
}
LossPtr MeanSquaredError(std::string reduction) {
  return std::make_shared<RegressionLoss>(Regression::kMse, std::move(reduction));
}
LossPtr MeanAbsoluteError(std::string reduction) {
  return std::make_shared<RegressionLoss>(Regression::kMae, std::move(reduction));
}
LossPtr Huber(double delta, std::string reduction) {
  return std::make_shared<RegressionLoss>(Regression::kHuber, std::move(reduction), delta);
}

LossPtr FeatureMaskedMeanSquaredError(std::string reduction) {
  return std::make_shared<FeatureMaskedLoss>(
      FeatureLoss::kMse, CrossentropyOptions{.reduction = std::move(reduction)});
}
LossPtr FeatureMaskedMeanAbsoluteError(std::string reduction) {
  return std::make_shared<FeatureMaskedLoss>(
      FeatureLoss::kMae, CrossentropyOptions{.reduction = std::move(reduction)});
}
LossPtr FeatureMaskedBinaryCrossentropy(CrossentropyOptions o) {
  return std::make_shared<FeatureMaskedLoss>(FeatureLoss::kBce, std::move(o));
}

namespace {
const std::vector<std::string>& class_names() {
  static const std::vector<std::string> n = {"SparseCategoricalCrossentropy",
                                             "CategoricalCrossentropy",
                                             "BinaryCrossentropy",
                                             "MeanSquaredError",
                                             "MeanAbsoluteError",
                                             "Huber",
                                             "FeatureMaskedMeanSquaredError",
                                             "FeatureMaskedMeanAbsoluteError",
                                             "FeatureMaskedBinaryCrossentropy"};
  return n;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s.append(s.empty() ? "" : ", ").append(x);
  return s;
}

template <class T>
T get_field(const Json& c, const std::string& cls, const char* key, T dflt) {
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) return dflt;
  try {
    return it->get<T>();
  } catch (const Json::exception&) {
    LOWBIT_THROW(ValueError, "loss_from_config: ", cls, ".", key,
                 " has the wrong type: ", it->dump());
  }
}
}  // namespace

LossPtr loss_from_config(const Json& j) {
  if (!j.is_object() || !j.contains("class_name") || !j["class_name"].is_string())
    LOWBIT_THROW(ValueError,
                 "loss_from_config: expected {\"class_name\": ..., \"config\": {...}} "
                 "but found ",
                 j.dump());
  const std::string cls = j["class_name"].get<std::string>();
  const Json c = j.contains("config") && !j["config"].is_null() ? j["config"] : Json::object();
  if (!c.is_object())
    LOWBIT_THROW(ValueError, "loss_from_config: ", cls, ": config must be an object but found ",
                 c.dump());
  std::set<std::string> allowed = {"name", "dtype", "reduction"};
  if (cls == "SparseCategoricalCrossentropy") {
    allowed.insert({"from_logits", "ignore_class"});
  } else if (cls == "CategoricalCrossentropy" || cls == "BinaryCrossentropy" ||
             cls == "FeatureMaskedBinaryCrossentropy") {
    allowed.insert({"from_logits", "label_smoothing", "axis"});
  } else if (cls == "Huber") {
    allowed.insert("delta");
  } else if (cls != "MeanSquaredError" && cls != "MeanAbsoluteError" &&
             cls != "FeatureMaskedMeanSquaredError" && cls != "FeatureMaskedMeanAbsoluteError") {
    LOWBIT_THROW(ValueError, "loss_from_config: unknown loss class '", cls,
                 "'; known: ", join(class_names()));
  }
  for (const auto& [k, v] : c.items())
    if (!allowed.count(k))
      LOWBIT_THROW(ValueError, "loss_from_config: ", cls, " has no config key '", k, "'");
  if (c.contains("axis") && get_field<int64_t>(c, cls, "axis", -1) != -1)
    LOWBIT_THROW(ValueError, "loss_from_config: ", cls, ": only axis = -1 is supported but found ",
                 c["axis"].dump());
  const std::string red = get_field<std::string>(c, cls, "reduction", "none");
  const std::string reduction = c.contains("reduction") ? red : "sum_over_batch_size";
  CrossentropyOptions o;
  o.reduction = reduction;
  o.from_logits = get_field<bool>(c, cls, "from_logits", false);
  o.label_smoothing = get_field<double>(c, cls, "label_smoothing", 0.0);
  if (c.contains("ignore_class") && !c["ignore_class"].is_null())
    o.ignore_class = get_field<int64_t>(c, cls, "ignore_class", 0);
  if (cls == "SparseCategoricalCrossentropy") return SparseCategoricalCrossentropy(o);
  if (cls == "CategoricalCrossentropy") return CategoricalCrossentropy(o);
  if (cls == "BinaryCrossentropy") return BinaryCrossentropy(o);
  if (cls == "MeanSquaredError") return MeanSquaredError(reduction);
  if (cls == "MeanAbsoluteError") return MeanAbsoluteError(reduction);
  if (cls == "FeatureMaskedMeanSquaredError") return FeatureMaskedMeanSquaredError(reduction);
  if (cls == "FeatureMaskedMeanAbsoluteError") return FeatureMaskedMeanAbsoluteError(reduction);
  if (cls == "FeatureMaskedBinaryCrossentropy") return FeatureMaskedBinaryCrossentropy(o);
  return Huber(get_field<double>(c, cls, "delta", 1.0), reduction);
}

LossPtr loss_by_name(const std::string& name) {
  if (name == "sparse_categorical_crossentropy" || name == "SparseCategoricalCrossentropy")
    return SparseCategoricalCrossentropy();
  if (name == "categorical_crossentropy" || name == "CategoricalCrossentropy")
    return CategoricalCrossentropy();
  if (name == "binary_crossentropy" || name == "BinaryCrossentropy") return BinaryCrossentropy();
  if (name == "mean_squared_error" || name == "mse" || name == "MSE" || name == "MeanSquaredError")
    return MeanSquaredError();
  if (name == "mean_absolute_error" || name == "mae" || name == "MAE" ||
      name == "MeanAbsoluteError")
    return MeanAbsoluteError();
  if (name == "huber" || name == "huber_loss" || name == "Huber") return Huber();
  LOWBIT_THROW(ValueError, "loss_by_name: unknown loss '", name,
               "'; known: sparse_categorical_crossentropy, categorical_crossentropy, "
               "binary_crossentropy, mean_squared_error (mse), mean_absolute_error (mae), huber, "
               "or a class name (",
               join(class_names()), ")");
}

}  // namespace lowbit::nn
