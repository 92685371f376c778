#include "lowbit/nn/layer.h"

#include <cmath>
#include <mutex>

#include "lowbit/ops.h"
#include "nn/layer_registry.h"

namespace lowbit::nn {

namespace {
Rng& rng_instance() {
  static Rng rng(1337);
  return rng;
}
std::map<std::string, int>& name_counters() {
  static std::map<std::string, int> m;
  return m;
}
std::map<std::string, LayerFactory>& factories() {
  static std::map<std::string, LayerFactory> m;
  return m;
}

// Keras compute_fans: 2-D (in, out); conv kernels (..., in, out) times the receptive field.
std::pair<double, double> fans(const Shape& s) {
  if (s.rank() == 0) return {1, 1};
  if (s.rank() == 1) return {static_cast<double>(s[0]), static_cast<double>(s[0])};
  if (s.rank() == 2) return {static_cast<double>(s[0]), static_cast<double>(s[1])};
  double receptive = 1;
  for (int i = 0; i < s.rank() - 2; ++i) receptive *= static_cast<double>(s[i]);
  return {receptive * static_cast<double>(s[-2]), receptive * static_cast<double>(s[-1])};
}

// Normal truncated at two standard deviations, as Keras' variance-scaling "normal" draws.
float truncated_normal(Rng& rng) {
  for (;;) {
    float v = rng.normal();
    if (std::abs(v) <= 2.0f) return v;
  }
}
}  // namespace

void set_random_seed(uint64_t seed) { rng_instance() = Rng(seed); }
Rng& global_rng() { return rng_instance(); }

Tensor initialize(const std::string& init, const Shape& shape, Rng& rng) {
  Tensor t = Tensor::zeros(shape, DType::kF32);
  float* p = t.data<float>();
  const int64_t n = t.numel();
  auto [fan_in, fan_out] = fans(shape);
  auto uniform = [&](double limit) {
    for (int64_t i = 0; i < n; ++i)
      p[i] = rng.uniform(static_cast<float>(-limit), static_cast<float>(limit));
  };
  auto normal = [&](double stddev) {
    // Keras truncated normal: stddev corrected by 0.87962566103423978 for the truncation.
    for (int64_t i = 0; i < n; ++i)
      p[i] = static_cast<float>(stddev / 0.87962566103423978) * truncated_normal(rng);
  };
  if (init == "zeros") return t;
  if (init == "ones") {
    t.fill(1.0);
    return t;
  }
  if (init == "glorot_uniform")
    uniform(std::sqrt(6.0 / (fan_in + fan_out)));
  else if (init == "glorot_normal")
    normal(std::sqrt(2.0 / (fan_in + fan_out)));
  else if (init == "he_uniform")
    uniform(std::sqrt(6.0 / fan_in));
  else if (init == "he_normal")
    normal(std::sqrt(2.0 / fan_in));
  else if (init == "lecun_uniform")
    uniform(std::sqrt(3.0 / fan_in));
  else if (init == "lecun_normal")
    normal(std::sqrt(1.0 / fan_in));
  else if (init == "uniform")
    uniform(0.05);
  else if (init == "random_normal") {
    for (int64_t i = 0; i < n; ++i) p[i] = 0.05f * rng.normal();
  } else if (init == "orthogonal") {
    // Flatten to (rows, cols), QR of a normal (max, min) matrix by Gram-Schmidt, fix signs.
    const int64_t cols = shape.rank() ? shape[-1] : 1;
    const int64_t rows = cols ? n / cols : 0;
    const int64_t big = std::max(rows, cols), small = std::min(rows, cols);
    std::vector<double> a(big * small);
    for (double& v : a) v = rng.normal();
    // columns of a (big x small) orthonormalised
    for (int64_t j = 0; j < small; ++j) {
      for (int64_t k = 0; k < j; ++k) {
        double dot = 0;
        for (int64_t i = 0; i < big; ++i) dot += a[i * small + j] * a[i * small + k];
        for (int64_t i = 0; i < big; ++i) a[i * small + j] -= dot * a[i * small + k];
      }
      double norm = 0;
      for (int64_t i = 0; i < big; ++i) norm += a[i * small + j] * a[i * small + j];
      norm = std::sqrt(norm);
      for (int64_t i = 0; i < big; ++i) a[i * small + j] /= norm;
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        p[r * cols + c] = static_cast<float>(rows >= cols ? a[r * small + c] : a[c * small + r]);
  } else {
    LOWBIT_THROW(ValueError, "initializer: unknown name '", init,
                 "'; expected one of zeros, ones, glorot_uniform, glorot_normal, he_uniform, "
                 "he_normal, lecun_uniform, lecun_normal, uniform, random_normal, orthogonal");
  }
  return t;
}

// ---- CallContext ----
CallContext::CallContext(Graph& g, bool training, Tensor rng_state)
    : g_(g), training_(training), rng_state_(std::move(rng_state)) {
  if (!rng_state_.defined()) rng_state_ = Tensor::zeros({}, DType::kS64);
}

Value CallContext::var(const Layer& layer, const Weight& w) {
  const void* key = w.value.raw();
  Value v;
  if (auto it = vars_.find(key); it != vars_.end()) {
    v = it->second;
  } else {
    // Created inside the layer's name scope: the node is named "<layer>/<weight>".
    v = g_.variable(w.name, w.value, w.trainable && layer.trainable());
    vars_[key] = v;
  }
  for (auto h = hooks_.rbegin(); h != hooks_.rend(); ++h) {
    if (h->first != &layer) continue;
    if (auto it = hooked_.find(key); it != hooked_.end()) return it->second;
    // Recorded before the call: a hook reading the same weight again gets the variable.
    hooked_[key] = v;
    Value t = h->second(w, v);
    if (t.defined()) hooked_[key] = t;
    return hooked_[key];
  }
  return v;
}

CallContext::WeightHookScope::WeightHookScope(CallContext& ctx, const Layer& layer, WeightHook hook)
    : ctx_(ctx) {
  ctx_.hooks_.emplace_back(&layer, std::move(hook));
}
CallContext::WeightHookScope::~WeightHookScope() { ctx_.hooks_.pop_back(); }

Value CallContext::bound(const Weight& w) const {
  auto it = vars_.find(w.value.raw());
  return it == vars_.end() ? Value() : it->second;
}

void CallContext::add_update(const Value& variable, const Value& new_value) {
  updates_.emplace_back(variable, new_value);
}

void CallContext::set_grid_step(const Value& v, const Value& step) { grid_steps_[v.id()] = step; }
Value CallContext::grid_step(const Value& v) const {
  auto it = grid_steps_.find(v.id());
  return it == grid_steps_.end() ? Value() : it->second;
}

Value CallContext::rng_step() {
  if (!rng_step_.defined()) {
    rng_step_ = g_.variable("rng_step", rng_state_, false);
    if (training_) add_update(rng_step_, rng_step_ + ops::scalar_like(rng_step_, 1));
  }
  return rng_step_;
}

// ---- KTensor ----
const ValueType& KTensor::type() const {
  if (!node) LOWBIT_THROW(ValueError, "KTensor: undefined symbolic tensor");
  return node->outputs.at(index);
}

bool KTensor::has_mask() const {
  return node && static_cast<size_t>(index) < node->output_masked.size() &&
         node->output_masked[index];
}

// ---- Mask rules ----
namespace {
std::map<std::string, MaskRule>& mask_rules() {
  static std::map<std::string, MaskRule> m = [] {
    std::map<std::string, MaskRule> r;
    for (auto& [cls, rule] : detail::builtin_mask_rules()) r[cls] = std::move(rule);
    return r;
  }();
  return m;
}

// `mask` checked against `x` (the tensor it travels with) and converted to bool.
Value checked_mask(const Layer& l, const char* side, size_t i, Value mask, const Value& x) {
  if (mask.dtype() != DType::kBool) {
    if (mask.dtype() != DType::kF32)
      LOWBIT_THROW(DTypeError, l.name(), " (", l.class_name(), "): the timestep mask of ", side,
                   " ", i, " must be bool (or f32 0/1) but found ", dtype_name(mask.dtype()),
                   mask.shape().str());
    mask = ops::not_equal(mask, ops::scalar_like(mask, 0.0));
  }
  const Shape& m = mask.shape();
  const Shape& s = x.shape();
  auto fits = [](int64_t a, int64_t b) { return a == kUnknown || b == kUnknown || a == b; };
  if (m.rank() != 2 || s.rank() < 2 || !fits(m[0], s[0]) || !fits(m[1], s[1]))
    LOWBIT_THROW(ShapeError, l.name(), " (", l.class_name(), "): the timestep mask of ", side, " ",
                 i, " must be [batch, timesteps] matching the first two dims of ", side, " shape ",
                 s.str(), " but found ", m.str());
  return mask;
}
}  // namespace

void register_mask_rule(const std::string& class_name, MaskRule rule) {
  mask_rules()[class_name] = std::move(rule);
}

std::vector<Value> Layer::compute_mask(const std::vector<Value>& inputs,
                                       const std::vector<Value>& outputs, CallContext& ctx) {
  bool any = false;
  for (size_t i = 0; i < inputs.size(); ++i) any = any || ctx.input_mask(i).defined();
  if (!any) return std::vector<Value>(outputs.size());
  auto it = mask_rules().find(class_name());
  if (it != mask_rules().end()) return it->second(*this, inputs, outputs, ctx);
  LOWBIT_THROW(UnsupportedError, name_, " (", class_name(),
               "): got a timestep mask but this layer has no mask rule, and a mask is never "
               "dropped silently. Remove the mask before this layer (e.g. apply it with "
               "ops::where and do not pass it on), override Layer::compute_mask, or declare a "
               "rule with nn::register_mask_rule(\"",
               class_name(), "\", ...); see docs/masking.md");
}

// ---- Layer ----
Layer::Layer(const std::string& default_name, std::string name) : name_(std::move(name)) {
  if (name_.empty()) {
    int& c = name_counters()[default_name];
    name_ = c == 0 ? default_name : default_name + "_" + std::to_string(c);
    ++c;
  }
}
Layer::~Layer() = default;

void reset_layer_names() { name_counters().clear(); }

void Layer::build(const std::vector<Shape>&) {}

std::vector<Weight*> Layer::trainable_weights() {
  std::vector<Weight*> out;
  if (!trainable_) return out;
  for (auto& w : weights_)
    if (w.trainable) out.push_back(&w);
  return out;
}
std::vector<Weight*> Layer::non_trainable_weights() {
  std::vector<Weight*> out;
  for (auto& w : weights_)
    if (!w.trainable || !trainable_) out.push_back(&w);
  return out;
}
int64_t Layer::count_params(bool trainable) const {
  int64_t n = 0;
  for (const auto& w : weights_)
    if ((w.trainable && trainable_) == trainable) n += w.value.numel();
  return n;
}

Json Layer::get_config() const { return {{"name", name_}, {"trainable", trainable_}}; }

Weight& Layer::add_weight(const std::string& name, const Shape& shape,
                          const std::string& initializer, bool trainable) {
  for (const auto& w : weights_)
    if (w.name == name) LOWBIT_THROW(ValueError, name_, ": weight '", name, "' added twice");
  weights_.push_back({name, initialize(initializer, shape, global_rng()), trainable});
  return weights_.back();
}

void Layer::check_input(bool cond, const std::string& what, const Shape& found) const {
  if (!cond)
    LOWBIT_THROW(ShapeError, name_, " (", class_name(), "): expected ", what,
                 " but found input shape ", found.str());
}

std::vector<Value> Layer::apply(const std::vector<Value>& inputs, CallContext& ctx) {
  int want = num_inputs();
  if ((want >= 0 && static_cast<int>(inputs.size()) != want) || inputs.empty())
    LOWBIT_THROW(ValueError, name_, " (", class_name(), "): expected ",
                 want < 0 ? std::string("at least one") : std::to_string(want),
                 " input(s) but found ", inputs.size());
  std::vector<Shape> shapes;
  for (const Value& v : inputs) shapes.push_back(v.shape());
  if (!built_) {
    build(shapes);
    build_shapes_ = shapes;
    built_ = true;
  } else {
    // Non-batch dims must match what the layer was built for.
    for (size_t i = 0; i < shapes.size() && i < build_shapes_.size(); ++i) {
      const Shape& b = build_shapes_[i];
      bool ok = b.rank() == shapes[i].rank();
      for (int d = 1; ok && d < b.rank(); ++d)
        ok = b[d] == kUnknown || shapes[i][d] == kUnknown || b[d] == shapes[i][d];
      if (!ok)
        LOWBIT_THROW(ShapeError, name_, " (", class_name(), "): input ", i, " has shape ",
                     shapes[i].str(), " but the layer was built for ", b.str());
    }
  }
  Graph::Scope scope(ctx.graph(), name_);
  std::vector<Value> out = call(inputs, ctx);
  if (inputs.size() == 1 && out.size() == 1 && keeps_grid(ctx))
    if (Value s = ctx.grid_step(inputs[0]); s.defined()) ctx.set_grid_step(out[0], s);
  return out;
}

std::vector<Value> Layer::apply(const std::vector<Value>& inputs,
                                const std::vector<Value>& input_masks, CallContext& ctx,
                                std::vector<Value>& output_masks) {
  if (input_masks.size() > inputs.size())
    LOWBIT_THROW(ValueError, name_, " (", class_name(), "): got ", input_masks.size(),
                 " masks for ", inputs.size(), " input(s)");
  std::vector<Value> masks(inputs.size());
  for (size_t i = 0; i < input_masks.size(); ++i)
    if (input_masks[i].defined())
      masks[i] = checked_mask(*this, "input", i, input_masks[i], inputs[i]);
  std::vector<Value> saved = std::move(ctx.input_masks);
  ctx.input_masks = masks;
  try {
    std::vector<Value> out = apply(inputs, ctx);
    std::vector<Value> om;
    {
      Graph::Scope scope(ctx.graph(), name_);
      om = compute_mask(inputs, out, ctx);
    }
    if (om.size() != out.size())
      LOWBIT_THROW(ValueError, name_, " (", class_name(), "): compute_mask returned ", om.size(),
                   " masks for ", out.size(), " output(s)");
    for (size_t i = 0; i < om.size(); ++i)
      if (om[i].defined()) om[i] = checked_mask(*this, "output", i, om[i], out[i]);
    output_masks = std::move(om);
    ctx.input_masks = std::move(saved);
    return out;
  } catch (...) {
    ctx.input_masks = std::move(saved);
    throw;
  }
}

namespace {
KTensor single_output(const Layer& l, std::vector<KTensor> outs) {
  if (outs.size() != 1)
    LOWBIT_THROW(ValueError, l.name(), " (", l.class_name(), "): returns ", outs.size(),
                 " outputs; call it with a std::vector<KTensor>{...} to get all of them");
  return outs[0];
}
}  // namespace

KTensor Layer::operator()(const KTensor& x, CallOptions opt) {
  return single_output(*this, (*this)(std::vector<KTensor>{x}, std::move(opt)));
}

KTensor Layer::operator()(std::initializer_list<KTensor> xs, CallOptions opt) {
  return single_output(*this, (*this)(std::vector<KTensor>(xs), std::move(opt)));
}

std::vector<KTensor> Layer::operator()(const std::vector<KTensor>& xs, CallOptions opt) {
  if (opt.masks.size() > xs.size())
    LOWBIT_THROW(ValueError, name_, " (", class_name(), "): got ", opt.masks.size(), " masks for ",
                 xs.size(), " input(s)");
  // Trace once on a scratch graph to build the weights, learn the output types and which
  // outputs carry a mask (so that a layer refusing a mask says so when the model is built).
  Graph scratch;
  std::vector<Value> in, masks(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    if (!xs[i].defined())
      LOWBIT_THROW(ValueError, name_, " (", class_name(), "): input ", i, " is undefined");
    in.push_back(scratch.placeholder("input" + std::to_string(i), xs[i].dtype(), xs[i].shape()));
    const bool explicit_mask = i < opt.masks.size() && opt.masks[i].defined();
    if (explicit_mask || xs[i].has_mask()) {
      const KTensor& src = explicit_mask ? opt.masks[i] : xs[i];
      const ValueType t = explicit_mask
                              ? src.type()
                              : ValueType{DType::kBool, Shape{xs[i].shape()[0], xs[i].shape()[1]}};
      masks[i] = scratch.placeholder("mask" + std::to_string(i), t.dtype, t.shape);
    }
  }
  CallContext ctx(scratch, opt.training.value_or(false));
  std::vector<Value> out_masks;
  std::vector<Value> out = apply(in, masks, ctx, out_masks);
  auto node = std::make_shared<LayerNode>();
  node->layer = shared_from_this();
  node->inputs = xs;
  node->training = opt.training;
  node->masks = opt.masks;
  for (const Value& v : out) node->outputs.push_back({v.dtype(), v.shape()});
  for (const Value& m : out_masks) node->output_masked.push_back(m.defined());
  std::vector<KTensor> result;
  for (size_t i = 0; i < out.size(); ++i) result.push_back({node, static_cast<int>(i)});
  return result;
}

void register_layer(const std::string& class_name, LayerFactory factory) {
  factories()[class_name] = std::move(factory);
}

LayerPtr layer_from_config(const Json& j) {
  static std::once_flag once;
  std::call_once(once, detail::register_builtin_layers);
  if (!j.is_object() || !j.contains("class_name") || !j.contains("config"))
    LOWBIT_THROW(ValueError,
                 "layer_from_config: expected {\"class_name\": ..., \"config\": {...}} but found ",
                 j.dump().substr(0, 200));
  std::string cls = j.at("class_name").get<std::string>();
  auto it = factories().find(cls);
  if (it == factories().end())
    LOWBIT_THROW(ValueError, "layer_from_config: unknown layer class '", cls, "'");
  try {
    LayerPtr l = it->second(j.at("config"));
    if (j.at("config").contains("trainable"))
      l->set_trainable(j.at("config").at("trainable").get<bool>());
    return l;
  } catch (const nlohmann::json::exception& e) {
    LOWBIT_THROW(ValueError, "layer_from_config: bad config for ", cls, ": ", e.what());
  }
}

Json layer_to_config(const Layer& l) {
  return {{"class_name", l.class_name()}, {"config", l.get_config()}};
}

}  // namespace lowbit::nn
