// Keras 3 optimizers and learning-rate schedules as graph updates.
// Sources of the formulas: K3:optimizers/{base_optimizer,sgd,adam,adamw,rmsprop}.py and
// K3:optimizers/schedules/learning_rate_schedule.py (docs: layer-semantics.md section 7.7).
#include "lowbit/nn/optimizers.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numbers>
#include <regex>
#include <set>

#include "lowbit/ops.h"
#include "ops/op_util.h"

namespace lowbit::nn {

namespace {

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

Json opt_json(const std::optional<double>& v) { return v ? Json(*v) : Json(nullptr); }

// Reads a Keras config object, remembering which keys were used so that unknown ones are
// reported (Keras: "Argument(s) not recognized").
class ConfigReader {
 public:
  ConfigReader(const Json& cfg, std::string who) : cfg_(cfg), who_(std::move(who)) {
    if (!cfg_.is_object())
      LOWBIT_THROW(ValueError, who_, ": expected a config object but found ", cfg_.dump());
  }
  bool has(const std::string& key) {
    used_.insert(key);
    return cfg_.contains(key) && !cfg_.at(key).is_null();
  }
  const Json& raw(const std::string& key) {
    used_.insert(key);
    return cfg_.at(key);
  }
  double number(const std::string& key, double def) {
    if (!has(key)) return def;
    const Json& v = cfg_.at(key);
    if (!v.is_number())
      LOWBIT_THROW(ValueError, who_, ": '", key, "' must be a number but found ", v.dump());
    return v.get<double>();
  }
  std::optional<double> optional_number(const std::string& key) {
    if (!has(key)) return std::nullopt;
    return number(key, 0.0);
  }
  int64_t integer(const std::string& key, int64_t def) {
    if (!has(key)) return def;
    double d = number(key, 0.0);
    if (d != std::floor(d) || std::abs(d) > 9e15)
      LOWBIT_THROW(ValueError, who_, ": '", key, "' must be an integer but found ", d);
    return static_cast<int64_t>(d);
  }
  bool boolean(const std::string& key, bool def) {
    if (!has(key)) return def;
    const Json& v = cfg_.at(key);
    if (!v.is_boolean())
      LOWBIT_THROW(ValueError, who_, ": '", key, "' must be a boolean but found ", v.dump());
    return v.get<bool>();
  }
  std::string string(const std::string& key, const std::string& def) {
    if (!has(key)) return def;
    const Json& v = cfg_.at(key);
    if (!v.is_string())
      LOWBIT_THROW(ValueError, who_, ": '", key, "' must be a string but found ", v.dump());
    return v.get<std::string>();
  }
  // Keys Keras writes that carry nothing for us.
  void ignore(const std::string& key) { used_.insert(key); }
  void finish() const {
    for (const auto& [k, v] : cfg_.items())
      if (!used_.count(k)) LOWBIT_THROW(ValueError, who_, ": argument '", k, "' not recognized");
  }
  const std::string& who() const { return who_; }

 private:
  const Json& cfg_;
  std::string who_;
  std::set<std::string> used_;
};

Json wrap_schedule(const std::string& class_name, Json config) {
  return {{"module", "keras.optimizers.schedules"},
          {"class_name", class_name},
          {"config", std::move(config)},
          {"registered_name", nullptr}};
}

void check_decay_steps(const char* who, const char* arg, int64_t steps) {
  if (steps <= 0) LOWBIT_THROW(ValueError, who, ": '", arg, "' must be > 0 but found ", steps);
}

// ---- Schedules ----

// ExponentialDecay and InverseTimeDecay: the same arguments, p = step / decay_steps (floored
// with staircase), and lr = initial * rate^p or initial / (1 + rate * p).
class RateDecaySchedule : public LearningRateSchedule {
 public:
  RateDecaySchedule(bool inverse_time, double initial, int64_t steps, double rate, bool staircase,
                    std::string name)
      : inverse_time_(inverse_time),
        initial_(initial),
        steps_(steps),
        rate_(rate),
        staircase_(staircase),
        name_(std::move(name)) {
    check_decay_steps(class_name().c_str(), "decay_steps", steps);
  }
  double operator()(int64_t step) const override {
    double p = static_cast<double>(step) / static_cast<double>(steps_);
    if (staircase_) p = std::floor(p);
    return inverse_time_ ? initial_ / (1.0 + rate_ * p) : initial_ * std::pow(rate_, p);
  }
  std::string class_name() const override {
    return inverse_time_ ? "InverseTimeDecay" : "ExponentialDecay";
  }
  Json get_config() const override {
    return wrap_schedule(class_name(), {{"initial_learning_rate", initial_},
                                        {"decay_steps", steps_},
                                        {"decay_rate", rate_},
                                        {"staircase", staircase_},
                                        {"name", name_}});
  }

 private:
  bool inverse_time_;
  double initial_;
  int64_t steps_;
  double rate_;
  bool staircase_;
  std::string name_;
};

class PolynomialDecaySchedule : public LearningRateSchedule {
 public:
  PolynomialDecaySchedule(double initial, int64_t steps, double end, double power, bool cycle,
                          std::string name)
      : initial_(initial),
        steps_(steps),
        end_(end),
        power_(power),
        cycle_(cycle),
        name_(std::move(name)) {
    check_decay_steps("PolynomialDecay", "decay_steps", steps);
  }
  double operator()(int64_t step) const override {
    double s = static_cast<double>(step), d = static_cast<double>(steps_);
    if (cycle_)
      d *= step == 0 ? 1.0 : std::ceil(s / d);
    else
      s = std::min(s, d);
    return (initial_ - end_) * std::pow(1.0 - s / d, power_) + end_;
  }
  std::string class_name() const override { return "PolynomialDecay"; }
  Json get_config() const override {
    return wrap_schedule(class_name(), {{"initial_learning_rate", initial_},
                                        {"decay_steps", steps_},
                                        {"end_learning_rate", end_},
                                        {"power", power_},
                                        {"cycle", cycle_},
                                        {"name", name_}});
  }

 private:
  double initial_;
  int64_t steps_;
  double end_, power_;
  bool cycle_;
  std::string name_;
};

class CosineDecaySchedule : public LearningRateSchedule {
 public:
  CosineDecaySchedule(double initial, int64_t steps, double alpha, std::optional<double> target,
                      int64_t warmup_steps, std::string name)
      : initial_(initial),
        steps_(steps),
        alpha_(alpha),
        target_(target),
        warmup_steps_(warmup_steps),
        name_(std::move(name)) {
    check_decay_steps("CosineDecay", "decay_steps", steps);
    if (warmup_steps < 0)
      LOWBIT_THROW(ValueError, "CosineDecay: 'warmup_steps' must be >= 0 but found ", warmup_steps);
  }
  double operator()(int64_t step) const override {
    const double d = static_cast<double>(steps_);
    double s = static_cast<double>(step);
    if (!target_) return decay(std::min(s, d), initial_);
    const double w = static_cast<double>(warmup_steps_);
    s = std::min(s, d + w);
    if (s < w) return (*target_ - initial_) * (s / w) + initial_;
    return decay(s - w, *target_);
  }
  std::string class_name() const override { return "CosineDecay"; }
  Json get_config() const override {
    return wrap_schedule(class_name(), {{"initial_learning_rate", initial_},
                                        {"decay_steps", steps_},
                                        {"alpha", alpha_},
                                        {"name", name_},
                                        {"warmup_target", opt_json(target_)},
                                        {"warmup_steps", warmup_steps_}});
  }

 private:
  double decay(double s, double from) const {
    double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * s / static_cast<double>(steps_)));
    return from * ((1.0 - alpha_) * cosine + alpha_);
  }
  double initial_;
  int64_t steps_;
  double alpha_;
  std::optional<double> target_;
  int64_t warmup_steps_;
  std::string name_;
};

class PiecewiseConstantSchedule : public LearningRateSchedule {
 public:
  PiecewiseConstantSchedule(std::vector<int64_t> boundaries, std::vector<double> values,
                            std::string name)
      : boundaries_(std::move(boundaries)), values_(std::move(values)), name_(std::move(name)) {
    if (boundaries_.size() + 1 != values_.size())
      LOWBIT_THROW(ValueError,
                   "PiecewiseConstantDecay: expected one more value than boundaries but found ",
                   boundaries_.size(), " boundaries and ", values_.size(), " values");
    if (boundaries_.empty())
      LOWBIT_THROW(ValueError, "PiecewiseConstantDecay: expected at least one boundary");
    for (size_t i = 1; i < boundaries_.size(); ++i)
      if (boundaries_[i] <= boundaries_[i - 1])
        LOWBIT_THROW(ValueError,
                     "PiecewiseConstantDecay: boundaries must be strictly increasing but ",
                     "boundaries[", i, "] = ", boundaries_[i], " follows ", boundaries_[i - 1]);
  }
  double operator()(int64_t step) const override {
    // The first boundary >= step; values_[i] covers (boundaries[i-1], boundaries[i]].
    auto it = std::lower_bound(boundaries_.begin(), boundaries_.end(), step);
    return values_[static_cast<size_t>(it - boundaries_.begin())];
  }
  std::string class_name() const override { return "PiecewiseConstantDecay"; }
  Json get_config() const override {
    return wrap_schedule(class_name(),
                         {{"boundaries", boundaries_}, {"values", values_}, {"name", name_}});
  }

 private:
  std::vector<int64_t> boundaries_;
  std::vector<double> values_;
  std::string name_;
};

}  // namespace

LearningRateSchedule::~LearningRateSchedule() = default;

SchedulePtr ExponentialDecay(double initial, int64_t decay_steps, double decay_rate,
                             bool staircase) {
  return std::make_shared<RateDecaySchedule>(false, initial, decay_steps, decay_rate, staircase,
                                             "ExponentialDecay");
}
SchedulePtr CosineDecay(double initial, int64_t decay_steps, double alpha,
                        std::optional<double> warmup_target, int64_t warmup_steps) {
  return std::make_shared<CosineDecaySchedule>(initial, decay_steps, alpha, warmup_target,
                                               warmup_steps, "CosineDecay");
}
SchedulePtr PiecewiseConstantDecay(std::vector<int64_t> boundaries, std::vector<double> values) {
  return std::make_shared<PiecewiseConstantSchedule>(std::move(boundaries), std::move(values),
                                                     "PiecewiseConstant");
}
SchedulePtr InverseTimeDecay(double initial, int64_t decay_steps, double decay_rate,
                             bool staircase) {
  return std::make_shared<RateDecaySchedule>(true, initial, decay_steps, decay_rate, staircase,
                                             "InverseTimeDecay");
}
SchedulePtr PolynomialDecay(double initial, int64_t decay_steps, double end, double power,
                            bool cycle) {
  return std::make_shared<PolynomialDecaySchedule>(initial, decay_steps, end, power, cycle,
                                                   "PolynomialDecay");
}

SchedulePtr schedule_from_config(const Json& j) {
  if (!j.is_object() || !j.contains("class_name") || !j.at("class_name").is_string())
    LOWBIT_THROW(ValueError,
                 "schedule_from_config: expected {\"class_name\", \"config\"} but found ",
                 j.dump());
  const std::string cls = j.at("class_name").get<std::string>();
  const Json cfg = j.contains("config") ? j.at("config") : Json::object();
  ConfigReader r(cfg, "schedule_from_config(" + cls + ")");
  SchedulePtr s;
  auto initial = [&] {
    if (!r.has("initial_learning_rate"))
      LOWBIT_THROW(ValueError, r.who(), ": 'initial_learning_rate' is missing");
    return r.number("initial_learning_rate", 0.0);
  };
  auto required_int = [&](const char* key) {
    if (!r.has(key)) LOWBIT_THROW(ValueError, r.who(), ": '", key, "' is missing");
    return r.integer(key, 0);
  };
  if (cls == "ExponentialDecay" || cls == "InverseTimeDecay") {
    double init = initial();
    int64_t steps = required_int("decay_steps");
    if (!r.has("decay_rate")) LOWBIT_THROW(ValueError, r.who(), ": 'decay_rate' is missing");
    double rate = r.number("decay_rate", 0.0);
    bool staircase = r.boolean("staircase", false);
    std::string name = r.string("name", cls);
    if (cls == "ExponentialDecay")
      s = std::make_shared<RateDecaySchedule>(false, init, steps, rate, staircase, name);
    else
      s = std::make_shared<RateDecaySchedule>(true, init, steps, rate, staircase, name);
  } else if (cls == "CosineDecay") {
    double init = initial();
    int64_t steps = required_int("decay_steps");
    double alpha = r.number("alpha", 0.0);
    std::optional<double> target = r.optional_number("warmup_target");
    int64_t warmup = r.integer("warmup_steps", 0);
    s = std::make_shared<CosineDecaySchedule>(init, steps, alpha, target, warmup,
                                              r.string("name", "CosineDecay"));
  } else if (cls == "PolynomialDecay") {
    double init = initial();
    int64_t steps = required_int("decay_steps");
    double end = r.number("end_learning_rate", 1e-4);
    double power = r.number("power", 1.0);
    bool cycle = r.boolean("cycle", false);
    s = std::make_shared<PolynomialDecaySchedule>(init, steps, end, power, cycle,
                                                  r.string("name", "PolynomialDecay"));
  } else if (cls == "PiecewiseConstantDecay") {
    if (!r.has("boundaries") || !r.has("values"))
      LOWBIT_THROW(ValueError, r.who(), ": 'boundaries' and 'values' are required");
    std::vector<int64_t> b;
    std::vector<double> v;
    const Json& jb = r.raw("boundaries");
    const Json& jv = r.raw("values");
    if (!jb.is_array() || !jv.is_array())
      LOWBIT_THROW(ValueError, r.who(), ": 'boundaries' and 'values' must be lists");
    for (const Json& x : jb) {
      if (!x.is_number() || x.get<double>() != std::floor(x.get<double>()))
        LOWBIT_THROW(ValueError, r.who(), ": boundaries must be integers but found ", x.dump());
      b.push_back(static_cast<int64_t>(x.get<double>()));
    }
    for (const Json& x : jv) {
      if (!x.is_number())
        LOWBIT_THROW(ValueError, r.who(), ": values must be numbers but found ", x.dump());
      v.push_back(x.get<double>());
    }
    s = std::make_shared<PiecewiseConstantSchedule>(std::move(b), std::move(v),
                                                    r.string("name", "PiecewiseConstant"));
  } else {
    LOWBIT_THROW(ValueError, "schedule_from_config: unknown class '", cls,
                 "'; expected ExponentialDecay, CosineDecay, PiecewiseConstantDecay, "
                 "InverseTimeDecay or PolynomialDecay");
  }
  r.finish();
  return s;
}

// ---- Optimizer ----

Optimizer::Optimizer(std::string name, OptimizerOptions o, double default_lr)
    : name_(std::move(name)), o_(std::move(o)) {
  const std::string who = name_;
  int clips = 0;
  for (const auto& [arg, v] :
       {std::pair{"clipnorm", o_.clipnorm}, std::pair{"clipvalue", o_.clipvalue},
        std::pair{"global_clipnorm", o_.global_clipnorm}}) {
    if (!v) continue;
    ++clips;
    if (!(*v >= 0)) LOWBIT_THROW(ValueError, who, ": '", arg, "' must be >= 0 but found ", *v);
  }
  if (clips > 1)
    LOWBIT_THROW(ValueError, who,
                 ": only one of clipnorm, clipvalue and global_clipnorm can be set but found "
                 "clipnorm=",
                 opt_json(o_.clipnorm).dump(), ", clipvalue=", opt_json(o_.clipvalue).dump(),
                 ", global_clipnorm=", opt_json(o_.global_clipnorm).dump());
  if (o_.weight_decay && !std::isfinite(*o_.weight_decay))
    LOWBIT_THROW(ValueError, who, ": 'weight_decay' must be finite but found ", *o_.weight_decay);
  if (o_.learning_rate && !(*o_.learning_rate >= 0 && std::isfinite(*o_.learning_rate)))
    LOWBIT_THROW(ValueError, who, ": 'learning_rate' must be a finite number >= 0 but found ",
                 *o_.learning_rate, " (leave it unset for the Keras default, ", default_lr, ")");
  lr_ = o_.learning_rate.value_or(default_lr);
}

Optimizer::~Optimizer() = default;

void Optimizer::set_learning_rate(double lr) {
  if (o_.schedule)
    LOWBIT_THROW(ValueError, name_,
                 ".set_learning_rate: the optimizer follows a learning-rate schedule; "
                 "a LearningRateScheduler cannot also set it (use one or the other)");
  if (!(lr >= 0) || !std::isfinite(lr))
    LOWBIT_THROW(ValueError, name_, ".set_learning_rate: expected a finite lr >= 0 but found ", lr);
  lr_ = lr;
}

double Optimizer::learning_rate_at(int64_t step) const {
  return o_.schedule ? (*o_.schedule)(step) : lr_;
}

std::vector<std::pair<Value, Tensor>> Optimizer::step_feeds(const Value& lr, const Value& t) const {
  return {{lr, Tensor::scalar(static_cast<float>(learning_rate_at(iterations_)))},
          {t, Tensor::scalar(static_cast<float>(iterations_ + 1))}};
}

void Optimizer::load_slot(const std::string& key, const Tensor& value) {
  if (!value.defined())
    LOWBIT_THROW(ValueError, name_, ".load_slot('", key, "'): undefined tensor");
  auto it = slots_.find(key);
  if (it == slots_.end()) {
    slots_[key] = value.clone();
    return;
  }
  if (it->second.dtype() != value.dtype())
    LOWBIT_THROW(DTypeError, name_, ".load_slot('", key, "'): expected dtype ",
                 dtype_name(it->second.dtype()), " but found ", dtype_name(value.dtype()));
  if (it->second.shape() != value.shape())
    LOWBIT_THROW(ShapeError, name_, ".load_slot('", key, "'): expected shape ",
                 it->second.shape().str(), " but found ", value.shape().str());
  it->second.copy_from(value);
}

void Optimizer::exclude_from_weight_decay(const std::vector<std::string>& name_patterns) {
  for (const std::string& p : name_patterns) {
    try {
      std::regex re(p);
    } catch (const std::regex_error& e) {
      LOWBIT_THROW(ValueError, name_, ".exclude_from_weight_decay: invalid pattern '", p,
                   "': ", e.what());
    }
  }
  wd_exclude_ = name_patterns;
}

bool Optimizer::use_weight_decay(const std::string& name) const {
  for (const std::string& p : wd_exclude_)
    if (std::regex_search(name, std::regex(p))) return false;
  return true;
}

std::vector<Value> Optimizer::clip(const std::vector<Value>& grads) const {
  std::vector<Value> out = grads;
  if (o_.clipnorm && *o_.clipnorm > 0) {
    // Each gradient on its own: g * c / max(||g||, c).
    for (Value& g : out) {
      Value c = ops::scalar_like(g, *o_.clipnorm);
      Value norm = ops::sqrt(ops::sum(ops::square(g)));
      g = g * c / ops::maximum(norm, c);
    }
  } else if (o_.global_clipnorm && *o_.global_clipnorm > 0) {
    const double c = *o_.global_clipnorm;
    Value sq;
    for (const Value& g : out) {
      Value s = ops::sum(ops::square(g));
      sq = sq.defined() ? sq + s : s;
    }
    Value norm = ops::sqrt(sq);
    // Keras clip_by_global_norm: c * min(1/norm, 1/c) (1 for a zero norm), plus (norm - norm)
    // so that an inf or NaN norm poisons the step instead of passing unclipped gradients.
    Value scale = c * ops::minimum(1.0 / norm, ops::scalar_like(norm, 1.0 / c)) + (norm - norm);
    for (Value& g : out) g = g * scale;
  } else if (o_.clipvalue && *o_.clipvalue > 0) {
    for (Value& g : out) g = ops::clip(g, -*o_.clipvalue, *o_.clipvalue);
  }
  return out;
}

Value Optimizer::slot(StepContext& c, const std::string& slot_name, const std::string& name,
                      const Value& var) {
  const std::string key = slot_name + "/" + name;
  auto it = slots_.find(key);
  const Shape& shape = var.shape();
  if (it == slots_.end()) {
    it = slots_.emplace(key, Tensor::zeros(shape, var.dtype())).first;
  } else if (it->second.shape() != shape || it->second.dtype() != var.dtype()) {
    LOWBIT_THROW(ShapeError, name_, ": slot '", key, "' is ", dtype_name(it->second.dtype()),
                 it->second.shape().str(), " but its variable is ", dtype_name(var.dtype()),
                 shape.str());
  }
  // Reuse the graph's variable when this tensor is already bound (a second build_updates on the
  // same graph) so one tensor is never written by two update nodes.
  for (const Value& v : c.g.variables()) {
    const Tensor& bound = c.g.variable_tensor(v);
    if (bound.same_storage(it->second) && bound.shape() == shape) return v;
  }
  return c.g.variable(key, it->second, /*trainable=*/false);
}

std::vector<std::pair<Value, Value>> Optimizer::build_updates(Graph& g,
                                                              const std::vector<Value>& vars,
                                                              const std::vector<Value>& grads,
                                                              const std::vector<std::string>& names,
                                                              const Value& lr, const Value& t) {
  const std::string who = name_ + ".build_updates";
  if (vars.size() != grads.size() || vars.size() != names.size())
    LOWBIT_THROW(ValueError, who, ": expected as many gradients and names as variables but found ",
                 vars.size(), " variables, ", grads.size(), " gradients and ", names.size(),
                 " names");
  for (const auto& [arg, v] : {std::pair{"lr", lr}, std::pair{"t", t}}) {
    if (!v.defined()) LOWBIT_THROW(ValueError, who, ": '", arg, "' is undefined");
    g.check_owns(v, who.c_str());
    if (v.dtype() != DType::kF32 || v.rank() != 0)
      LOWBIT_THROW(DTypeError, who, ": '", arg, "' must be an f32 scalar but found ",
                   detail::type_str({v.dtype(), v.shape()}));
  }
  std::set<std::string> seen;
  std::vector<Value> vs, gs;
  std::vector<std::string> ns;
  for (size_t i = 0; i < vars.size(); ++i) {
    if (!seen.insert(names[i]).second)
      LOWBIT_THROW(ValueError, who, ": variable name '", names[i], "' is repeated");
    if (!grads[i].defined()) continue;  // no gradient: left alone, as Keras filters None
    if (!vars[i].defined() || !g.is_variable(vars[i]))
      LOWBIT_THROW(GraphError, who, ": vars[", i, "] ('", names[i],
                   "') is not a variable of this graph");
    g.check_owns(grads[i], who.c_str());
    const Value& v = vars[i];
    const Value& gr = grads[i];
    if (v.dtype() != DType::kF32 || gr.dtype() != DType::kF32)
      LOWBIT_THROW(DTypeError, who, ": variable '", names[i],
                   "' and its gradient must be f32 but found ",
                   detail::type_str({v.dtype(), v.shape()}), " and ",
                   detail::type_str({gr.dtype(), gr.shape()}));
    bool ok = v.rank() == gr.rank();
    for (int d = 0; ok && d < v.rank(); ++d)
      ok = gr.shape()[d] == kUnknown || gr.shape()[d] == v.shape()[d];
    if (!ok)
      LOWBIT_THROW(ShapeError, who, ": the gradient of '", names[i], "' has shape ",
                   gr.shape().str(), " but the variable is ", v.shape().str());
    vs.push_back(v);
    gs.push_back(gr);
    ns.push_back(names[i]);
  }
  if (vs.empty() && !vars.empty())
    LOWBIT_THROW(ValueError, who, ": no gradients provided for any variable");

  std::vector<std::pair<Value, Value>> updates;
  Graph::Scope scope(g, name_);
  gs = clip(gs);
  StepContext c{g, lr, t, updates, {}};
  const double wd = o_.weight_decay.value_or(0.0);
  for (size_t i = 0; i < vs.size(); ++i) {
    Value w = vs[i];
    if (wd != 0.0 && use_weight_decay(ns[i])) w = w - w * wd * lr;  // decoupled, as Keras
    Value nw = update_step(c, vs[i], w, gs[i], ns[i]);
    updates.emplace_back(vs[i], nw);
  }
  return updates;
}

Json Optimizer::get_config() const {
  Json j;
  j["name"] = name_;
  j["learning_rate"] = o_.schedule ? o_.schedule->get_config() : Json(lr_);
  j["weight_decay"] = opt_json(o_.weight_decay);
  j["clipnorm"] = opt_json(o_.clipnorm);
  j["global_clipnorm"] = opt_json(o_.global_clipnorm);
  j["clipvalue"] = opt_json(o_.clipvalue);
  j["use_ema"] = false;
  j["ema_momentum"] = 0.99;
  j["ema_overwrite_frequency"] = nullptr;
  j["loss_scale_factor"] = nullptr;
  j["gradient_accumulation_steps"] = nullptr;
  add_config(j);
  return j;
}

namespace {

class SGDOptimizer : public Optimizer {
 public:
  SGDOptimizer(OptimizerOptions o, SGDOptions s) : Optimizer("SGD", std::move(o), 0.01), s_(s) {
    if (!(s_.momentum >= 0 && s_.momentum <= 1))
      LOWBIT_THROW(ValueError, "SGD: 'momentum' must be in [0, 1] but found ", s_.momentum);
  }
  std::string class_name() const override { return "SGD"; }

 protected:
  Value update_step(StepContext& c, const Value& var, const Value& w, const Value& g,
                    const std::string& name) override {
    if (s_.momentum == 0) return w - g * c.lr;
    Value m = slot(c, "momentum", name, var);
    // One fused pass: m' = m * momentum - g * lr; w' = w + m' (nesterov: w + (m' * momentum -
    // g * lr)).
    std::vector<Value> r = ops::sgd_momentum_update(w, g, m, c.lr, s_.momentum, s_.nesterov);
    c.updates.emplace_back(m, r[1]);
    return r[0];
  }
  void add_config(Json& j) const override {
    j["momentum"] = s_.momentum;
    j["nesterov"] = s_.nesterov;
  }

 private:
  SGDOptions s_;
};

class AdamOptimizer : public Optimizer {
 public:
  AdamOptimizer(std::string name, OptimizerOptions o, AdamOptions a, bool adamw)
      : Optimizer(std::move(name), std::move(o), 0.001), a_(a), adamw_(adamw) {}
  std::string class_name() const override { return adamw_ ? "AdamW" : "Adam"; }

 protected:
  Value update_step(StepContext& c, const Value& var, const Value& w, const Value& g,
                    const std::string& name) override {
    Value& alpha = c.cache["alpha"];
    if (!alpha.defined()) {
      // Bias corrections folded into the step size; epsilon stays outside ("epsilon hat").
      Value b1p = ops::pow(ops::scalar_like(c.t, a_.beta_1), c.t);
      Value b2p = ops::pow(ops::scalar_like(c.t, a_.beta_2), c.t);
      alpha = c.lr * ops::sqrt(1.0 - b2p) / (1.0 - b1p);
    }
    Value m = slot(c, "momentum", name, var);
    Value v = slot(c, "velocity", name, var);
    // One fused pass (bit-identical to the composed formulas):
    //   m' = m + (g - m)(1 - beta_1), v' = v + (g^2 - v)(1 - beta_2),
    //   [vhat' = max(vhat, v')], w' = w - m' alpha / (sqrt(v' or vhat') + epsilon).
    Value vh = a_.amsgrad ? slot(c, "velocity_hat", name, var) : Value();
    std::vector<Value> r =
        a_.amsgrad ? ops::adam_update(w, g, m, v, vh, alpha, a_.beta_1, a_.beta_2, a_.epsilon)
                   : ops::adam_update(w, g, m, v, alpha, a_.beta_1, a_.beta_2, a_.epsilon);
    c.updates.emplace_back(m, r[1]);
    c.updates.emplace_back(v, r[2]);
    if (a_.amsgrad) c.updates.emplace_back(vh, r[3]);
    return r[0];
  }
  void add_config(Json& j) const override {
    j["beta_1"] = a_.beta_1;
    j["beta_2"] = a_.beta_2;
    j["epsilon"] = a_.epsilon;
    j["amsgrad"] = a_.amsgrad;
  }

 private:
  AdamOptions a_;
  bool adamw_;
};

class RMSpropOptimizer : public Optimizer {
 public:
  RMSpropOptimizer(OptimizerOptions o, RMSpropOptions r)
      : Optimizer("rmsprop", std::move(o), 0.001), r_(r) {}
  std::string class_name() const override { return "RMSprop"; }

 protected:
  Value update_step(StepContext& c, const Value& var, const Value& w, const Value& g,
                    const std::string& name) override {
    Value v = slot(c, "velocity", name, var);
    Value v_new = v * r_.rho + ops::square(g) * (1.0 - r_.rho);
    c.updates.emplace_back(v, v_new);
    Value denom;
    if (r_.centered) {
      Value a = slot(c, "average_gradient", name, var);
      Value a_new = a * r_.rho + g * (1.0 - r_.rho);
      c.updates.emplace_back(a, a_new);
      denom = v_new - ops::square(a_new) + r_.epsilon;
    } else {
      denom = v_new + r_.epsilon;
    }
    // Keras 3 (and TF's ApplyRMSProp) add epsilon inside the square root.
    Value inc = (g * c.lr) / ops::sqrt(denom);
    if (r_.momentum > 0) {
      Value mom = slot(c, "momentum", name, var);
      Value mom_new = mom * r_.momentum + inc;
      c.updates.emplace_back(mom, mom_new);
      return w - mom_new;
    }
    return w - inc;
  }
  void add_config(Json& j) const override {
    j["rho"] = r_.rho;
    j["momentum"] = r_.momentum;
    j["epsilon"] = r_.epsilon;
    j["centered"] = r_.centered;
  }

 private:
  RMSpropOptions r_;
};

}  // namespace

OptimizerPtr SGD(OptimizerOptions o, SGDOptions s) {
  return std::make_shared<SGDOptimizer>(std::move(o), s);
}
OptimizerPtr Adam(OptimizerOptions o, AdamOptions a) {
  return std::make_shared<AdamOptimizer>("adam", std::move(o), a, false);
}
OptimizerPtr AdamW(OptimizerOptions o, AdamOptions a) {
  if (!o.weight_decay) o.weight_decay = 0.004;
  return std::make_shared<AdamOptimizer>("adamw", std::move(o), a, true);
}
OptimizerPtr RMSprop(OptimizerOptions o, RMSpropOptions r) {
  return std::make_shared<RMSpropOptimizer>(std::move(o), r);
}

Json optimizer_to_config(const Optimizer& opt) {
  return {{"module", "keras.optimizers"},
          {"class_name", opt.class_name()},
          {"config", opt.get_config()},
          {"registered_name", nullptr}};
}

OptimizerPtr optimizer_by_name(const std::string& name) {
  const std::string n = lower(name);
  if (n == "sgd") return SGD();
  if (n == "adam") return Adam();
  if (n == "adamw") return AdamW();
  if (n == "rmsprop") return RMSprop();
  LOWBIT_THROW(ValueError, "optimizer_by_name: unknown optimizer '", name,
               "'; expected one of sgd, adam, adamw, rmsprop");
}

OptimizerPtr optimizer_from_config(const Json& j) {
  if (j.is_string()) return optimizer_by_name(j.get<std::string>());
  if (!j.is_object() || !j.contains("class_name") || !j.at("class_name").is_string())
    LOWBIT_THROW(ValueError,
                 "optimizer_from_config: expected {\"class_name\", \"config\"} but found ",
                 j.dump());
  const std::string cls = j.at("class_name").get<std::string>();
  const std::string kind = lower(cls);
  if (kind != "sgd" && kind != "adam" && kind != "adamw" && kind != "rmsprop")
    LOWBIT_THROW(ValueError, "optimizer_from_config: unknown class '", cls,
                 "'; expected SGD, Adam, AdamW or RMSprop");
  const Json cfg =
      j.contains("config") && !j.at("config").is_null() ? j.at("config") : Json::object();
  ConfigReader r(cfg, "optimizer_from_config(" + cls + ")");

  OptimizerOptions o;
  if (r.has("learning_rate")) {
    const Json& lr = r.raw("learning_rate");
    if (lr.is_object())
      o.schedule = schedule_from_config(lr);
    else if (!lr.is_null())
      o.learning_rate = r.number("learning_rate", 0.0);
  }
  o.clipnorm = r.optional_number("clipnorm");
  o.clipvalue = r.optional_number("clipvalue");
  o.global_clipnorm = r.optional_number("global_clipnorm");
  if (kind == "adamw" && r.has("weight_decay") == false && cfg.contains("weight_decay"))
    LOWBIT_THROW(ValueError, r.who(), ": 'weight_decay' must be a number for AdamW but found null");
  o.weight_decay = r.optional_number("weight_decay");
  if (r.boolean("use_ema", false))
    LOWBIT_THROW(UnsupportedError, r.who(), ": use_ema=true is not supported");
  r.ignore("ema_momentum");  // only read with use_ema
  for (const char* key :
       {"ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps"})
    if (r.has(key))
      LOWBIT_THROW(UnsupportedError, r.who(), ": '", key, "' is not supported but found ",
                   r.raw(key).dump());
  if (r.number("decay", 0.0) != 0.0)
    LOWBIT_THROW(UnsupportedError, r.who(),
                 ": the legacy 'decay' argument is not supported; use a learning-rate schedule");
  r.ignore("jit_compile");          // tf.keras 2.11+
  r.ignore("is_legacy_optimizer");  // tf.keras 2.11+
  std::string name = r.string("name", "");

  OptimizerPtr opt;
  if (kind == "sgd") {
    SGDOptions s;
    s.momentum = r.number("momentum", s.momentum);
    s.nesterov = r.boolean("nesterov", s.nesterov);
    opt = SGD(o, s);
  } else if (kind == "adam" || kind == "adamw") {
    AdamOptions a;
    a.beta_1 = r.number("beta_1", a.beta_1);
    a.beta_2 = r.number("beta_2", a.beta_2);
    a.epsilon = r.number("epsilon", a.epsilon);
    a.amsgrad = r.boolean("amsgrad", a.amsgrad);
    opt = kind == "adam" ? Adam(o, a) : AdamW(o, a);
  } else {
    RMSpropOptions rp;
    rp.rho = r.number("rho", rp.rho);
    rp.momentum = r.number("momentum", rp.momentum);
    rp.epsilon = r.number("epsilon", rp.epsilon);
    rp.centered = r.boolean("centered", rp.centered);
    opt = RMSprop(o, rp);
  }
  r.finish();
  if (!name.empty()) opt->set_name(name);
  return opt;
}

}  // namespace lowbit::nn
