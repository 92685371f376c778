// Keras 3 optimizers (SGD, Adam, AdamW, RMSprop), learning-rate schedules, gradient clipping and
// decoupled weight decay, as graph ops.
//
// An optimizer does not run anything itself: build_updates() appends to a Graph the ops that
// compute each variable's new value from its gradient, and returns them as state updates for an
// Executor, together with the updates of the optimizer's own slot variables (momentum, m, v ...).
// The training loop feeds the learning rate and the step number each step:
//
//   Graph g;
//   Value w = g.variable("w", weight_tensor);
//   Value loss = ...;
//   auto grads = gradients(loss, {w});
//   Value lr = g.placeholder("lr", DType::kF32, {}), t = g.placeholder("t", DType::kF32, {});
//   auto opt = nn::Adam({.learning_rate = 1e-3});
//   Executor step(g, {loss}, opt->build_updates(g, {w}, grads, {"w"}, lr, t));
//   for (...) {
//     auto feeds = opt->step_feeds(lr, t);   // lr = learning_rate_at(iterations()), t =
//     iterations()+1 feeds.emplace_back(x, batch); step.run(feeds);
//     opt->set_iterations(opt->iterations() + 1);
//   }
//
// Per update, in Keras' order (K3:optimizers/base_optimizer.py `_backend_apply_gradients`):
//   1. clip the gradients (at most one of clipnorm, clipvalue, global_clipnorm);
//   2. decay the weights, decoupled from the gradient: w <- w - w * weight_decay * lr;
//   3. the optimizer's rule (below) on the decayed w and the clipped gradient.
// All arithmetic is f32 in the graph; trainable variables and their gradients must be f32.
//
// Rules (g the clipped gradient, lr the learning rate of this step, t the 1-based step number):
//   SGD      momentum 0:  w -= lr * g
//            momentum mu: m = mu*m - lr*g;  w += m            (nesterov: w += mu*m - lr*g)
//   Adam     m += (g - m)(1 - beta_1);  v += (g^2 - v)(1 - beta_2)
//            alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
//            w -= alpha * m / (sqrt(v) + epsilon)   epsilon outside the bias correction
//            amsgrad: v_hat = max(v_hat, v) replaces v in the last line
//   AdamW    Adam with weight_decay defaulting to 0.004
//   RMSprop  v = rho*v + (1 - rho) g^2
//            centered: a = rho*a + (1 - rho) g;  d = v - a^2 + epsilon   otherwise d = v + epsilon
//            inc = lr * g / sqrt(d)                  epsilon INSIDE the square root (as Keras 3)
//            momentum > 0: mom = momentum*mom + inc;  w -= mom    otherwise w -= inc
//
// Slots: zero tensors owned by the optimizer, created on first use and keyed
// "<slot>/<variable name>" ("momentum/dense/kernel", "velocity/dense/kernel"). Every graph the
// optimizer builds updates into binds the same tensors, so a training graph rebuilt for another
// input signature continues the same moment estimates.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/graph.h"

namespace lowbit::nn {

using Json = nlohmann::json;

// ---- Learning-rate schedules (K3:optimizers/schedules/learning_rate_schedule.py) ----

// A learning rate as a function of the optimizer's step count (iterations done so far, 0 for
// the first update, as Keras calls schedule(optimizer.iterations)). Values are computed in double.
class LearningRateSchedule {
 public:
  virtual ~LearningRateSchedule();
  virtual double operator()(int64_t step) const = 0;
  virtual std::string class_name() const = 0;
  // {"module": "keras.optimizers.schedules", "class_name": ..., "config": {...},
  //  "registered_name": null}, the Keras 3 serialized form (schedule_from_config reads it).
  virtual Json get_config() const = 0;
};
using SchedulePtr = std::shared_ptr<LearningRateSchedule>;

// initial * decay_rate^(step / decay_steps); staircase: the exponent is floor(step / decay_steps).
// Throws ValueError unless decay_steps > 0.
SchedulePtr ExponentialDecay(double initial, int64_t decay_steps, double decay_rate,
                             bool staircase = false);
// Without warmup: s = min(step, decay_steps),
//   initial * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha).
// With warmup_target: s = min(step, warmup_steps + decay_steps); for s < warmup_steps the rate
// rises linearly, initial + (warmup_target - initial) * s / warmup_steps; afterwards the cosine
// above runs from warmup_target over s - warmup_steps. Throws ValueError unless decay_steps > 0.
SchedulePtr CosineDecay(double initial, int64_t decay_steps, double alpha = 0.0,
                        std::optional<double> warmup_target = std::nullopt,
                        int64_t warmup_steps = 0);
// values[0] while step <= boundaries[0], values[i] while boundaries[i-1] < step <= boundaries[i],
// values.back() after the last boundary. Throws ValueError unless values has one more entry than
// boundaries, boundaries is non-empty and strictly increasing.
SchedulePtr PiecewiseConstantDecay(std::vector<int64_t> boundaries, std::vector<double> values);
// initial / (1 + decay_rate * step / decay_steps) (staircase: floor of the ratio).
SchedulePtr InverseTimeDecay(double initial, int64_t decay_steps, double decay_rate,
                             bool staircase = false);
// (initial - end) * (1 - s / d)^power + end with s = min(step, decay_steps), d = decay_steps;
// cycle: d = decay_steps * ceil(step / decay_steps) (1 at step 0) and s = step.
SchedulePtr PolynomialDecay(double initial, int64_t decay_steps, double end = 1e-4,
                            double power = 1.0, bool cycle = false);
// Rebuilds a schedule from {"class_name", "config"} (extra "module"/"registered_name" ignored).
// Throws ValueError for an unknown class or a bad field.
SchedulePtr schedule_from_config(const Json& j);

// ---- Optimizers ----

struct OptimizerOptions {
  // Unset: the optimizer's Keras default. Must be finite and >= 0 (ValueError otherwise).
  std::optional<double> learning_rate;
  SchedulePtr schedule;  // overrides learning_rate when set
  // Gradient clipping, at most one (ValueError otherwise); each must be >= 0 and 0 does nothing
  // (as Keras). clipnorm: each gradient g * c / max(||g||, c); global_clipnorm: every gradient
  // times c / max(global norm, c) (NaN when the global norm is not finite, as Keras);
  // clipvalue: each element clipped to [-c, c].
  std::optional<double> clipnorm, clipvalue, global_clipnorm;
  // Decoupled weight decay w <- w - w * weight_decay * lr before each update; unset: none
  // (AdamW: 0.004).
  std::optional<double> weight_decay;
};

class Optimizer {
 public:
  virtual ~Optimizer();
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  virtual std::string class_name() const = 0;        // "SGD", "Adam", "AdamW", "RMSprop"
  const std::string& name() const { return name_; }  // Keras default names: "SGD", "adam" ...
  void set_name(std::string name) { name_ = std::move(name); }

  // Appends to `g` the ops updating each trainable variable vars[i] from grads[i] and returns
  // the (variable, new value) state updates, slot updates included. names[i] is a stable unique
  // name of vars[i] ("dense/kernel") that keys its slots. `lr` is an f32 scalar holding this
  // step's learning rate and `t` an f32 scalar holding the 1-based step number (see
  // step_feeds()). An undefined grads[i] leaves vars[i] alone (Keras skips None gradients).
  // Throws ValueError for lists of different lengths, repeated names or no gradient at all;
  // GraphError when a var is not a variable of g; DTypeError / ShapeError when a gradient is
  // not f32 of its variable's shape or a stored slot has another shape than its variable.
  std::vector<std::pair<Value, Value>> build_updates(Graph& g, const std::vector<Value>& vars,
                                                     const std::vector<Value>& grads,
                                                     const std::vector<std::string>& names,
                                                     const Value& lr, const Value& t);

  // The schedule's value at `step`, or the constant learning rate.
  double learning_rate_at(int64_t step) const;
  double learning_rate() const { return lr_; }  // the constant (ignored with a schedule)
  // Sets a constant learning rate (what Keras' LearningRateScheduler callback does). Throws
  // ValueError when the optimizer follows a schedule (as Keras) or lr is negative / not finite.
  void set_learning_rate(double lr);
  const SchedulePtr& schedule() const { return o_.schedule; }
  // Updates applied so far; the training loop adds one after each committed step.
  int64_t iterations() const { return iterations_; }
  void set_iterations(int64_t n) { iterations_ = n; }
  // Feeds for the coming update: lr = learning_rate_at(iterations()), t = iterations() + 1.
  std::vector<std::pair<Value, Tensor>> step_feeds(const Value& lr, const Value& t) const;

  // Slot state for saving: key ("velocity/dense/kernel") -> tensor. Graphs hold these tensors'
  // storage: to restore, use load_slot (or copy_from into the existing tensor), not assignment.
  std::map<std::string, Tensor>& slots() { return slots_; }
  const std::map<std::string, Tensor>& slots() const { return slots_; }
  // Copies `value` into the existing slot (ShapeError / DTypeError when it differs) or creates
  // the slot from a copy of it.
  void load_slot(const std::string& key, const Tensor& value);

  // Variables whose name matches one of these regular expressions (std::regex_search, as Keras'
  // exclude_from_weight_decay(var_names=...)) get no weight decay. Call before building updates.
  void exclude_from_weight_decay(const std::vector<std::string>& name_patterns);

  // Keras 3 get_config(): "name", "learning_rate" (a number or a serialized schedule),
  // "weight_decay", "clipnorm", "global_clipnorm", "clipvalue", "use_ema", "ema_momentum",
  // "ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps", then the
  // optimizer's own arguments ("momentum", "beta_1", ...). Unset options are null.
  virtual Json get_config() const;
  const OptimizerOptions& options() const { return o_; }

 protected:
  Optimizer(std::string name, OptimizerOptions o, double default_lr);

  // What one build_updates call shares between its variables.
  struct StepContext {
    Graph& g;
    Value lr, t;
    std::vector<std::pair<Value, Value>>& updates;
    std::map<std::string, Value> cache;  // scalars computed once per call (Adam's alpha)
  };
  // Keras update_step for one variable: `w` is the variable's current value (already decayed),
  // `var` the graph variable (for slot shapes). Appends slot updates to c.updates and returns
  // the variable's new value.
  virtual Value update_step(StepContext& c, const Value& var, const Value& w, const Value& grad,
                            const std::string& name) = 0;
  // The slot `slot` of variable `name`, bound into c.g (zeros of var's shape on first use).
  Value slot(StepContext& c, const std::string& slot, const std::string& name, const Value& var);
  // Appends the optimizer's own config entries.
  virtual void add_config(Json& j) const = 0;

 private:
  std::vector<Value> clip(const std::vector<Value>& grads) const;
  bool use_weight_decay(const std::string& name) const;

  std::string name_;
  OptimizerOptions o_;
  double lr_;
  int64_t iterations_ = 0;
  std::map<std::string, Tensor> slots_;
  std::vector<std::string> wd_exclude_;  // regular expressions
};
using OptimizerPtr = std::shared_ptr<Optimizer>;

// Keras defaults: learning_rate 0.01.
struct SGDOptions {
  double momentum = 0.0;  // in [0, 1] (ValueError otherwise); 0 keeps no slot
  bool nesterov = false;
};
// Keras defaults: learning_rate 0.001. Slots "momentum" (m), "velocity" (v), "velocity_hat".
struct AdamOptions {
  double beta_1 = 0.9;
  double beta_2 = 0.999;
  double epsilon = 1e-7;
  bool amsgrad = false;
};
// Keras defaults: learning_rate 0.001. Slots "velocity", "momentum" (momentum > 0),
// "average_gradient" (centered).
struct RMSpropOptions {
  double rho = 0.9;
  double momentum = 0.0;
  double epsilon = 1e-7;
  bool centered = false;
};

OptimizerPtr SGD(OptimizerOptions o = {}, SGDOptions s = {});
OptimizerPtr Adam(OptimizerOptions o = {}, AdamOptions a = {});
// Adam with decoupled weight decay; o.weight_decay unset means 0.004.
OptimizerPtr AdamW(OptimizerOptions o = {}, AdamOptions a = {});
OptimizerPtr RMSprop(OptimizerOptions o = {}, RMSpropOptions r = {});

// {"module": "keras.optimizers", "class_name": ..., "config": get_config(),
//  "registered_name": null}, as keras.optimizers.serialize.
Json optimizer_to_config(const Optimizer& opt);
// Rebuilds an optimizer from {"class_name", "config"} (class names case-insensitive, "config"
// may be absent). Accepts Keras 3 and tf.keras 2 configs; throws UnsupportedError for features
// we lack (use_ema, loss_scale_factor, gradient_accumulation_steps, ema_overwrite_frequency) and
// ValueError for unknown classes or arguments.
OptimizerPtr optimizer_from_config(const Json& j);
// "sgd", "adam", "adamw", "rmsprop" (case-insensitive) with Keras defaults, as
// keras.optimizers.get; ValueError otherwise.
OptimizerPtr optimizer_by_name(const std::string& name);

}  // namespace lowbit::nn
