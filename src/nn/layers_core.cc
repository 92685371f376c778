// Core layers: Dense, Activation, ReLU, Dropout, BatchNormalization.
#include <cmath>
#include <functional>

#include "lowbit/nn/layers.h"
#include "lowbit/ops.h"
#include "nn/layer_registry.h"
#include "nn/layers_common.h"

namespace lowbit::nn {

void check_activation_name(const std::string& name) {
  static const char* kNames[] = {
      "linear",   "relu",        "relu6", "sigmoid",    "hard_sigmoid", "tanh",
      "softmax",  "log_softmax", "gelu",  "elu",        "selu",         "softplus",
      "softsign", "swish",       "silu",  "leaky_relu", "exponential"};
  for (const char* n : kNames)
    if (name == n) return;
  LOWBIT_THROW(
      ValueError, "activation: unknown name '", name,
      "'; expected one of linear, relu, relu6, sigmoid, hard_sigmoid, tanh, softmax, "
      "log_softmax, gelu, elu, selu, softplus, softsign, swish, silu, leaky_relu, exponential");
}

Value activation(const std::string& name, const Value& x) {
  if (name == "linear" || name.empty()) return x;
  if (name == "relu") return ops::relu(x);
  if (name == "relu6") return ops::relu6(x);
  if (name == "sigmoid") return ops::sigmoid(x);
  if (name == "hard_sigmoid") return ops::hard_sigmoid(x);
  if (name == "tanh") return ops::tanh(x);
  if (name == "softmax") return ops::softmax(x, -1);
  if (name == "log_softmax") return ops::log_softmax(x, -1);
  if (name == "gelu") return ops::gelu(x);
  if (name == "elu") return ops::elu(x);
  if (name == "selu") {
    const double alpha = 1.6732632423543772848170429916717,
                 scale = 1.0507009873554804934193349852946;
    return ops::elu(x, alpha) * scale;
  }
  if (name == "softplus") return ops::softplus(x);
  if (name == "softsign") return x / (ops::abs(x) + 1.0);
  if (name == "swish" || name == "silu") return x * ops::sigmoid(x);
  if (name == "leaky_relu") return ops::leaky_relu(x, 0.2);
  if (name == "exponential") return ops::exp(x);
  check_activation_name(name);
  return x;
}

namespace {

class DenseLayer : public Layer {
 public:
  DenseLayer(int64_t units, DenseOptions o)
      : Layer("dense", o.name), units_(units), o_(std::move(o)) {
    if (units < 1) LOWBIT_THROW(ValueError, "Dense: units must be >= 1 but found ", units);
    check_activation_name(o_.activation);
  }
  std::string class_name() const override { return "Dense"; }
  void build(const std::vector<Shape>& s) override {
    check_input(s[0].rank() >= 2 && s[0][-1] != kUnknown, "rank >= 2 with a known last dim", s[0]);
    add_weight("kernel", {s[0][-1], units_}, o_.kernel_initializer);
    if (o_.use_bias) add_weight("bias", {units_}, o_.bias_initializer);
  }
  std::vector<Value> call(const std::vector<Value>& in, CallContext& ctx) override {
    Value y = ops::matmul(in[0], ctx.var(*this, weights_[0]));
    if (o_.use_bias) y = y + ctx.var(*this, weights_[1]);
    return {activation(o_.activation, y)};
  }
  // Applied per timestep: the mask passes.
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    return detail::pass_mask(out, ctx);
  }
  Json get_config() const override {
    Json j = Layer::get_config();
    j["units"] = units_;
    j["activation"] = o_.activation;
    j["use_bias"] = o_.use_bias;
    j["kernel_initializer"] = o_.kernel_initializer;
    j["bias_initializer"] = o_.bias_initializer;
    return j;
  }

 private:
  int64_t units_;
  DenseOptions o_;
};

// y = x * scale + offset (Keras' Rescaling), with scale and offset non-trainable weights of
// shape param_shape that broadcast against the input's non-batch dims (numpy rules, aligned to
// the right): {} for scalars (Keras), {C} per channel, {H, W, C}, ... (ONNX import's Mul/Add by a
// constant that no neighbouring layer absorbs).
class RescalingLayer : public Layer {
 public:
  RescalingLayer(double scale, double offset, RescalingOptions o)
      : Layer("rescaling", o.name), scale_(scale), offset_(offset), o_(std::move(o)) {
    for (int64_t d : o_.param_shape)
      if (d < 1)
        LOWBIT_THROW(ValueError, "Rescaling: argument 'param_shape': expected dims >= 1 but found ",
                     detail::ints_json(o_.param_shape).dump());
  }
  std::string class_name() const override { return "Rescaling"; }
  void build(const std::vector<Shape>& s) override {
    const Shape& x = s[0];
    const int n = static_cast<int>(o_.param_shape.size());
    bool ok = x.rank() >= 1 && n <= x.rank() - 1;
    for (int i = 0; ok && i < n; ++i) {
      const int64_t d = o_.param_shape[n - 1 - i], xd = x[x.rank() - 1 - i];
      ok = d == 1 || xd == kUnknown || d == xd;
    }
    check_input(ok,
                "non-batch dims that param_shape " + detail::ints_json(o_.param_shape).dump() +
                    " broadcasts against",
                x);
    add_weight("scale", Shape(o_.param_shape), "ones", false).value =
        Tensor::full(Shape(o_.param_shape), scale_);
    add_weight("offset", Shape(o_.param_shape), "zeros", false).value =
        Tensor::full(Shape(o_.param_shape), offset_);
  }
  std::vector<Value> call(const std::vector<Value>& in, CallContext& ctx) override {
    return {in[0] * ctx.var(*this, weights_[0]) + ctx.var(*this, weights_[1])};
  }
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    return detail::pass_mask(out, ctx);
  }
  Json get_config() const override {
    Json j = Layer::get_config();
    j["scale"] = scale_;
    j["offset"] = offset_;
    j["param_shape"] = detail::ints_json(o_.param_shape);
    return j;
  }

 private:
  double scale_, offset_;
  RescalingOptions o_;
};

class ActivationLayer : public Layer {
 public:
  ActivationLayer(std::string act, ActivationOptions o)
      : Layer("activation", o.name), act_(std::move(act)) {
    check_activation_name(act_);
  }
  std::string class_name() const override { return "Activation"; }
  std::vector<Value> call(const std::vector<Value>& in, CallContext&) override {
    return {activation(act_, in[0])};
  }
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    return detail::pass_mask(out, ctx);
  }
  Json get_config() const override {
    Json j = Layer::get_config();
    j["activation"] = act_;
    return j;
  }

 private:
  std::string act_;
};

class ReLULayer : public Layer {
 public:
  explicit ReLULayer(ReLUOptions o) : Layer("re_lu", o.name), o_(std::move(o)) {
    if (o_.max_value && *o_.max_value < 0) LOWBIT_THROW(ValueError, "ReLU: max_value must be >= 0");
    if (o_.negative_slope < 0) LOWBIT_THROW(ValueError, "ReLU: negative_slope must be >= 0");
  }
  std::string class_name() const override { return "ReLU"; }
  std::vector<Value> call(const std::vector<Value>& in, CallContext&) override {
    const Value& x = in[0];
    Value y;
    if (o_.negative_slope == 0 && o_.threshold == 0) {
      if (o_.max_value && *o_.max_value == 6.0) return {ops::relu6(x)};
      y = ops::relu(x);
    } else {
      // x >= threshold: x; else negative_slope * (x - threshold)
      Value t = ops::scalar_like(x, o_.threshold);
      Value above = ops::greater_equal(x, t);
      y = ops::where(above, x, (x - o_.threshold) * o_.negative_slope);
    }
    if (o_.max_value) y = ops::minimum(y, ops::scalar_like(x, *o_.max_value));
    return {y};
  }
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    return detail::pass_mask(out, ctx);
  }
  Json get_config() const override {
    Json j = Layer::get_config();
    j["max_value"] = o_.max_value ? Json(*o_.max_value) : Json(nullptr);
    j["negative_slope"] = o_.negative_slope;
    j["threshold"] = o_.threshold;
    return j;
  }

 private:
  ReLUOptions o_;
};

class DropoutLayer : public Layer {
 public:
  DropoutLayer(double rate, DropoutOptions o)
      : Layer("dropout", o.name), rate_(rate), o_(std::move(o)) {
    if (!(rate >= 0 && rate <= 1))
      LOWBIT_THROW(ValueError, "Dropout: rate must be in [0, 1] but found ", rate);
    if (o_.seed < 0) o_.seed = static_cast<int64_t>(std::hash<std::string>{}(name_)&0x7fffffff);
  }
  std::string class_name() const override { return "Dropout"; }
  bool keeps_grid(const CallContext& ctx) const override { return !ctx.training() || rate_ == 0; }
  std::vector<Value> call(const std::vector<Value>& in, CallContext& ctx) override {
    if (!ctx.training() || rate_ == 0) return {in[0]};
    return {ops::dropout(in[0], ctx.rng_step(), rate_, o_.seed, o_.noise_shape)};
  }
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    return detail::pass_mask(out, ctx);
  }
  Json get_config() const override {
    Json j = Layer::get_config();
    j["rate"] = rate_;
    j["noise_shape"] = o_.noise_shape.empty() ? Json(nullptr) : Json(o_.noise_shape);
    j["seed"] = o_.seed;
    return j;
  }

 private:
  double rate_;
  DropoutOptions o_;
};

class BatchNormLayer : public Layer {
 public:
  explicit BatchNormLayer(BatchNormalizationOptions o)
      : Layer("batch_normalization", o.name), o_(std::move(o)) {
    if (o_.epsilon < 0) LOWBIT_THROW(ValueError, "BatchNormalization: epsilon must be >= 0");
  }
  std::string class_name() const override { return "BatchNormalization"; }
  void build(const std::vector<Shape>& s) override {
    int axis = s[0].axis(o_.axis, "BatchNormalization");
    int64_t c = s[0][axis];
    check_input(c != kUnknown, "a known size on axis " + std::to_string(o_.axis), s[0]);
    add_weight("gamma", {c}, "ones", o_.scale);
    add_weight("beta", {c}, "zeros", o_.center);
    add_weight("moving_mean", {c}, "zeros", false);
    add_weight("moving_variance", {c}, "ones", false);
  }
  std::vector<Value> call(const std::vector<Value>& in, CallContext& ctx) override {
    Value gamma = ctx.var(*this, weights_[0]), beta = ctx.var(*this, weights_[1]);
    Value mm = ctx.var(*this, weights_[2]), mv = ctx.var(*this, weights_[3]);
    // A frozen BatchNormalization runs in inference mode (TF2 Keras).
    if (ctx.training() && trainable_) {
      const double m = o_.momentum;
      if (const Value mask = ctx.input_mask(0); mask.defined()) {
        auto [mean, variance] = masked_moments(in[0], mask);
        ctx.add_update(mm, mm * m + mean * (1.0 - m));
        ctx.add_update(mv, mv * m + variance * (1.0 - m));
        return {ops::batch_norm_inference(in[0], gamma, beta, mean, variance, o_.axis, o_.epsilon)};
      }
      auto r = ops::batch_norm_training(in[0], gamma, beta, o_.axis, o_.epsilon);
      ctx.add_update(mm, mm * m + r.mean * (1.0 - m));
      ctx.add_update(mv, mv * m + r.variance * (1.0 - m));
      return {r.y};
    }
    return {ops::batch_norm_inference(in[0], gamma, beta, mm, mv, o_.axis, o_.epsilon)};
  }
  // Uses the mask for its statistics (training mode) and passes it.
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    return detail::pass_mask(out, ctx);
  }
  Json get_config() const override {
    Json j = Layer::get_config();
    j["axis"] = o_.axis;
    j["momentum"] = o_.momentum;
    j["epsilon"] = o_.epsilon;
    j["center"] = o_.center;
    j["scale"] = o_.scale;
    return j;
  }

 private:
  // Keras 3 _moments with a mask: statistics over the valid steps only, per channel (the last
  // axis), mean = sum(m x) / (sum(m) + 1e-7), variance = sum(m (x - mean)^2) / (sum(m) + 1e-7).
  // Masked entries are selected away rather than multiplied by 0, so garbage there (even NaN)
  // never reaches the statistics.
  std::pair<Value, Value> masked_moments(const Value& x, const Value& mask) const {
    const int rank = x.rank();
    if (rank < 3 || x.shape().axis(o_.axis, "BatchNormalization") != rank - 1)
      LOWBIT_THROW(UnsupportedError, name_,
                   " (BatchNormalization): a timestep mask needs a [batch, timesteps, ..., "
                   "channels] input normalised over its last axis, but found input shape ",
                   x.shape().str(), " with axis ", o_.axis);
    std::vector<int64_t> axes;
    for (int d = 0; d < rank - 1; ++d) axes.push_back(d);
    const Value valid = detail::mask_expanded(mask, rank);
    const Value w = ops::broadcast_like(ops::cast(valid, DType::kF32), x);
    const Value count = ops::sum(w, axes) + 1e-7;
    const Value xm = ops::where(valid, x, ops::scalar_like(x, 0.0));
    const Value mean = ops::sum(xm, axes) / count;
    const Value d = ops::where(valid, xm - mean, ops::scalar_like(x, 0.0));
    const Value variance = ops::sum(d * d, axes) / count;
    return {mean, variance};
  }

  BatchNormalizationOptions o_;
};

}  // namespace

LayerPtr Dense(int64_t units, DenseOptions o) {
  return std::make_shared<DenseLayer>(units, std::move(o));
}
LayerPtr Activation(const std::string& a, ActivationOptions o) {
  return std::make_shared<ActivationLayer>(a, std::move(o));
}
LayerPtr Rescaling(double scale, double offset, RescalingOptions o) {
  return std::make_shared<RescalingLayer>(scale, offset, std::move(o));
}
LayerPtr ReLU(ReLUOptions o) { return std::make_shared<ReLULayer>(std::move(o)); }
LayerPtr Dropout(double rate, DropoutOptions o) {
  return std::make_shared<DropoutLayer>(rate, std::move(o));
}
LayerPtr BatchNormalization(BatchNormalizationOptions o) {
  return std::make_shared<BatchNormLayer>(std::move(o));
}

namespace detail {
void register_core_layers() {
  register_layer("Dense", [](const Json& c) {
    DenseOptions o;
    o.activation = c.value("activation", "linear");
    o.use_bias = c.value("use_bias", true);
    o.kernel_initializer = c.value("kernel_initializer", "glorot_uniform");
    o.bias_initializer = c.value("bias_initializer", "zeros");
    o.name = c.value("name", "");
    return Dense(c.at("units").get<int64_t>(), o);
  });
  register_layer("Rescaling", [](const Json& c) {
    RescalingOptions o;
    if (c.contains("param_shape")) o.param_shape = c.at("param_shape").get<std::vector<int64_t>>();
    o.name = c.value("name", "");
    return Rescaling(c.value("scale", 1.0), c.value("offset", 0.0), o);
  });
  register_layer("Activation", [](const Json& c) {
    return Activation(c.at("activation").get<std::string>(), {.name = c.value("name", "")});
  });
  register_layer("ReLU", [](const Json& c) {
    ReLUOptions o;
    if (c.contains("max_value") && !c.at("max_value").is_null())
      o.max_value = c.at("max_value").get<double>();
    o.negative_slope = c.value("negative_slope", 0.0);
    o.threshold = c.value("threshold", 0.0);
    o.name = c.value("name", "");
    return ReLU(o);
  });
  register_layer("Dropout", [](const Json& c) {
    DropoutOptions o;
    if (c.contains("noise_shape") && !c.at("noise_shape").is_null())
      o.noise_shape = c.at("noise_shape").get<std::vector<int64_t>>();
    o.seed = c.value("seed", int64_t{-1});
    o.name = c.value("name", "");
    return Dropout(c.at("rate").get<double>(), o);
  });
  register_layer("BatchNormalization", [](const Json& c) {
    BatchNormalizationOptions o;
    o.axis = c.value("axis", -1);
    o.momentum = c.value("momentum", 0.99);
    o.epsilon = c.value("epsilon", 1e-3);
    o.center = c.value("center", true);
    o.scale = c.value("scale", true);
    o.name = c.value("name", "");
    return BatchNormalization(o);
  });
}
}  // namespace detail

}  // namespace lowbit::nn
