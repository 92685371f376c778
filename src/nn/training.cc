// Model::compile / fit / evaluate / predict: the Keras training loop on top of one traced
// training graph per model (forward in training mode, loss, autodiff, optimizer updates, state
// updates) run by an Executor that reuses its memory every step.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "lowbit/nn/model.h"
#include "lowbit/ops.h"
#include "lowbit/threads.h"
#include "nn/model_internal.h"

namespace lowbit::nn {

namespace {

using Clock = std::chrono::steady_clock;

bool is_tty(std::ostream& out) {
  if (&out == &std::cout) return isatty(fileno(stdout));
  if (&out == &std::cerr) return isatty(fileno(stderr));
  return false;
}

std::string fmt_duration(double s) {
  std::ostringstream os;
  if (s >= 3600)
    os << static_cast<int>(s / 3600) << "h" << std::setw(2) << std::setfill('0')
       << static_cast<int>(s / 60) % 60 << "m";
  else if (s >= 60)
    os << static_cast<int>(s / 60) << "m" << std::setw(2) << std::setfill('0')
       << static_cast<int>(s) % 60 << "s";
  else
    os << static_cast<int>(std::lround(s)) << "s";
  return os.str();
}

std::string fmt_logs(const Logs& logs) {
  std::ostringstream os;
  // Keras order: loss first, then the rest alphabetically (val_ after their train metric).
  std::vector<std::string> keys;
  if (logs.count("loss")) keys.push_back("loss");
  for (const auto& [k, v] : logs)
    if (k != "loss" && k.rfind("val_", 0) != 0) keys.push_back(k);
  if (logs.count("val_loss")) keys.push_back("val_loss");
  for (const auto& [k, v] : logs)
    if (k != "val_loss" && k.rfind("val_", 0) == 0) keys.push_back(k);
  for (const auto& k : keys) {
    double v = logs.at(k);
    os << " - " << k << ": " << std::setprecision(4) << std::fixed << v;
  }
  return os.str();
}

// Keras-like progress bar: "37/125 [========>.....................] - ETA: 2s - loss: 0.4821".
// On a terminal the line is redrawn in place (at most 10 times per second); otherwise a plain
// line is printed at each quarter of the epoch and at its end.
class ProgressBar {
 public:
  ProgressBar(int64_t total, int verbose, std::ostream& out)
      : total_(total), verbose_(verbose), out_(out), tty_(is_tty(out)), start_(Clock::now()) {}
  void update(int64_t step, const Logs& logs, bool final = false) {
    if (verbose_ != 1) return;
    double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
    if (!final) {
      if (tty_) {
        if (elapsed - last_draw_ < 0.1 && step != 1) return;
      } else {
        int64_t quarter = total_ > 0 ? step * 4 / total_ : 0;
        if (quarter == last_quarter_ || step == total_) return;
        last_quarter_ = quarter;
      }
    }
    last_draw_ = elapsed;
    std::ostringstream line;
    int width = 30;
    int64_t w = total_ > 0 ? std::min<int64_t>(width, step * width / total_) : width;
    line << std::setw(static_cast<int>(std::to_string(total_).size())) << step << "/" << total_
         << " [";
    for (int i = 0; i < width; ++i)
      line << (i < w ? (i + 1 == w && step < total_ ? '>' : '=') : '.');
    line << "]";
    if (final) {
      line << " - " << fmt_duration(elapsed) << " " << std::setprecision(0) << std::fixed
           << 1000.0 * elapsed / std::max<int64_t>(step, 1) << "ms/step";
    } else {
      double eta =
          step > 0 ? elapsed / static_cast<double>(step) * static_cast<double>(total_ - step) : 0;
      line << " - ETA: " << fmt_duration(eta);
    }
    line << fmt_logs(logs);
    if (tty_) {
      out_ << "\r" << line.str() << "\033[K";
      if (final) out_ << "\n";
    } else {
      out_ << line.str() << "\n";
    }
    out_.flush();
  }

 private:
  int64_t total_;
  int verbose_;
  std::ostream& out_;
  bool tty_;
  Clock::time_point start_;
  double last_draw_ = -1;
  int64_t last_quarter_ = -1;
};

void check_tensor_against(const std::string& who, const char* what, const Tensor& t,
                          const ValueType& want) {
  if (!t.defined()) LOWBIT_THROW(ValueError, who, ": ", what, " is undefined");
  bool ok = t.rank() == want.shape.rank();
  for (int d = 1; ok && d < want.shape.rank(); ++d)
    ok = want.shape[d] == kUnknown || want.shape[d] == t.dim(d);
  if (!ok)
    LOWBIT_THROW(ShapeError, who, ": ", what, " has shape ", t.shape().str(),
                 " but the model expects ", want.shape.str(), " (the first dim is the batch)");
  if (t.dtype() != want.dtype)
    LOWBIT_THROW(DTypeError, who, ": ", what, " has dtype ", dtype_name(t.dtype()),
                 " but the model expects ", dtype_name(want.dtype),
                 "; convert it with Tensor::to()");
}

}  // namespace

void Model::compile(CompileOptions o) {
  if (!o.loss)
    LOWBIT_THROW(ValueError, name_,
                 ": compile needs a loss (e.g. nn::SparseCategoricalCrossentropy())");
  if (inputs_.empty())
    LOWBIT_THROW(ValueError, name_,
                 ": the model has no input shape yet; start it with InputSpec or call build_for");
  optimizer_ = o.optimizer ? o.optimizer : optimizer_by_name("rmsprop");
  loss_ = o.loss;
  compile_options_ = std::move(o);
  train_states_.clear();
}

TrainState& Model::train_state() {
  if (!loss_) LOWBIT_THROW(ValueError, name_, ": call compile() before fit()/evaluate()");
  if (outputs_.size() != 1)
    LOWBIT_THROW(UnsupportedError, name_,
                 ": fit/evaluate support single-output models for now (this one has ",
                 outputs_.size(), ")");
  std::string sig = mode_signature(true);
  auto it = train_states_.find(sig);
  if (it != train_states_.end()) return *it->second;
  auto st = std::make_unique<TrainState>();
  Graph& g = st->graph;
  CallContext ctx(g, /*training=*/true, rng_state_);
  Trace tr = trace(g, ctx);
  st->x = tr.inputs;
  st->outputs = tr.outputs;
  const Value& y_pred = tr.outputs[0];
  st->y_type = loss_->target_type({y_pred.dtype(), y_pred.shape()});
  st->y = g.placeholder("y_true", st->y_type.dtype, st->y_type.shape);
  st->sw = g.placeholder("sample_weight", DType::kF32, {kUnknown});
  st->mask = tr.output_masks.empty() ? Value() : tr.output_masks[0];
  {
    // The output's timestep mask: masked steps count for nothing, the mean is over the valid
    // ones (Keras 3 Loss.__call__, layer-semantics.md 4.1).
    Graph::Scope s(g, "loss");
    st->loss = (*loss_)(st->y, y_pred, st->sw, st->mask);
  }
  // Trainable weights that the trace used, in a stable order.
  std::vector<Value> vars;
  std::vector<std::string> names;
  for (auto& [name, w] : named_weights()) {
    Value v = ctx.bound(*w);
    if (!v.defined() || !g.is_trainable(v)) continue;
    vars.push_back(v);
    names.push_back(name);
  }
  std::vector<std::pair<Value, Value>> updates = ctx.updates();
  if (!vars.empty()) {
    std::vector<Value> grads = gradients(st->loss, vars);
    st->lr = g.placeholder("learning_rate", DType::kF32, {});
    st->t = g.placeholder("step", DType::kF32, {});
    Graph::Scope s(g, "optimizer");
    auto opt_updates = optimizer_->build_updates(g, vars, grads, names, st->lr, st->t);
    updates.insert(updates.end(), opt_updates.begin(), opt_updates.end());
  }
  std::vector<Value> fetches{st->loss, y_pred};
  if (st->mask.defined()) fetches.push_back(st->mask);
  st->exec = std::make_unique<Executor>(g, fetches, updates);
  return *train_states_.emplace(sig, std::move(st)).first->second;
}

History Model::fit(const Tensor& x, const Tensor& y, FitOptions o) {
  if (inputs_.size() != 1)
    LOWBIT_THROW(ValueError, name_, ": fit(x, y) needs a single-input model");
  check_tensor_against(name_ + ".fit", "x", x, inputs_[0].type());
  if (!y.defined() || y.rank() == 0 || y.dim(0) != x.dim(0))
    LOWBIT_THROW(ShapeError, name_, ".fit: x has ", x.defined() ? x.dim(0) : 0,
                 " samples but y has ", y.defined() && y.rank() ? y.dim(0) : 0);
  data::Dataset d = data::Dataset::from_tensors({x}, {y});
  if (o.validation_split > 0) {
    if (o.validation_split >= 1)
      LOWBIT_THROW(ValueError, name_, ".fit: validation_split must be in [0, 1) but found ",
                   o.validation_split);
    if (o.validation_data)
      LOWBIT_THROW(ValueError, name_, ".fit: give validation_split or validation_data, not both");
    int64_t n = d.size();
    int64_t n_val = static_cast<int64_t>(std::floor(static_cast<double>(n) * o.validation_split));
    o.validation_data = d.skip(n - n_val);
    d = d.take(n - n_val);
    o.validation_split = 0;
  }
  return fit(d, std::move(o));
}

History Model::fit(const data::Dataset& train_in, FitOptions o) {
  std::ostream& out = o.out ? *o.out : std::cout;
  if (train_in.size() == 0)
    LOWBIT_THROW(ValueError, name_, ".fit: the training data is empty (0 samples)");
  if (o.initial_epoch < 0 || o.epochs <= o.initial_epoch)
    LOWBIT_THROW(ValueError, name_,
                 ".fit: epochs (the index of the last epoch, as in Keras) must be greater than "
                 "initial_epoch but found epochs=",
                 o.epochs, ", initial_epoch=", o.initial_epoch);
  if (o.batch_size < 1)
    LOWBIT_THROW(ValueError, name_, ".fit: batch_size must be >= 1 but found ", o.batch_size);
  if (o.validation_split > 0)
    LOWBIT_THROW(ValueError, name_, ".fit: validation_split needs fit(x, y)");
  TrainState& st = train_state();
  // An unbatched dataset is shuffled and batched here; a batched one is used as given (Keras).
  data::Dataset train = train_in;
  if (train.batch_size() == 0) {
    if (o.shuffle) train = train.shuffle(o.seed);
    train = train.batch(o.batch_size);
  }
  const int64_t steps = train.num_batches();

  // Metrics, resolved like Keras compile does.
  const ValueType pred_type{st.outputs[0].dtype(), st.outputs[0].shape()};
  std::vector<MetricPtr> metrics;
  for (const auto& m : compile_options_.metrics)
    metrics.push_back(metric_by_name(m, loss_.get(), pred_type));
  for (const auto& m : compile_options_.metric_objects) metrics.push_back(m);
  auto loss_mean = Mean("loss");
  auto* loss_tracker = dynamic_cast<MeanMetric*>(loss_mean.get());

  History history;
  stop_training = false;
  for (auto& cb : o.callbacks) cb->model = this;
  for (auto& cb : o.callbacks) cb->on_train_begin({});
  // Thread tuning (FitOptions::tune_threads); the caller's count comes back however fit ends.
  const int user_threads = num_threads();
  const bool tune = o.tune_threads && user_threads > 1;
  struct RestoreThreads {
    int n;
    ~RestoreThreads() { set_num_threads(n); }
  } restore_threads{user_threads};
  Tensor ones;  // sample weights when none are given, reused while the batch size repeats
  Tensor lr_t = Tensor::zeros({}), t_t = Tensor::zeros({});
  Logs logs;
  for (int epoch = o.initial_epoch; epoch < o.epochs && !stop_training; ++epoch) {
    if (o.verbose) out << "Epoch " << epoch + 1 << "/" << o.epochs << "\n";
    for (auto& cb : o.callbacks) cb->on_epoch_begin(epoch, logs);
    loss_mean->reset();
    for (auto& m : metrics) m->reset();
    ProgressBar bar(steps, o.verbose, out);
    auto it = train.begin_epoch(epoch);
    data::Batch batch;
    int64_t step = 0;
    while (it.next(batch)) {
      for (auto& cb : o.callbacks) cb->on_train_batch_begin(step, logs);
      const int64_t n = batch.size();
      if (batch.x.size() != st.x.size())
        LOWBIT_THROW(ValueError, name_, ".fit: the model takes ", st.x.size(),
                     " inputs but the data gives ", batch.x.size());
      if (batch.y.size() != 1)
        LOWBIT_THROW(ValueError, name_, ".fit: expected one target tensor per batch but found ",
                     batch.y.size());
      std::vector<std::pair<Value, Tensor>> feeds;
      for (size_t i = 0; i < st.x.size(); ++i) {
        check_tensor_against(name_ + ".fit", "x", batch.x[i], {st.x[i].dtype(), st.x[i].shape()});
        feeds.emplace_back(st.x[i], batch.x[i]);
      }
      validate_inputs(batch.x);
      // Validated and converted to the placeholder's type (s32 or [B, 1] labels, int one-hot).
      feeds.emplace_back(st.y, loss_->prepare_targets(batch.y[0], st.outputs[0].shape()));
      Tensor sw = batch.sample_weight;
      if (!sw.defined()) {
        if (!ones.defined() || ones.dim(0) != n) ones = Tensor::full({n}, 1.0);
        sw = ones;
      }
      feeds.emplace_back(st.sw, sw);
      if (st.lr.defined()) {
        lr_t.data<float>()[0] =
            static_cast<float>(optimizer_->learning_rate_at(optimizer_->iterations()));
        t_t.data<float>()[0] = static_cast<float>(optimizer_->iterations() + 1);
        feeds.emplace_back(st.lr, lr_t);
        feeds.emplace_back(st.t, t_t);
      }
      bool finite = true;
      if (tune) {
        const int threads = st.tuner.next(user_threads);
        if (num_threads() != threads) set_num_threads(threads);
      }
      const auto t0 = std::chrono::steady_clock::now();
      auto result = st.exec->run(feeds, [&](const std::vector<Tensor>& f) {
        finite = std::isfinite(f[0].item<float>());
        return finite;
      });
      if (tune)
        st.tuner.record(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      if (!finite) {
        history.stop_reason = detail::cat(
            "loss is ", result[0].item<float>(), " at epoch ", epoch + 1, ", batch ", step + 1,
            "; the step was not applied, the weights keep their last finite values. "
            "Lower the learning rate or check the data.");
        out << "\n" << name_ << ".fit: training stopped: " << history.stop_reason << "\n";
        stop_training = true;
        break;
      }
      optimizer_->set_iterations(optimizer_->iterations() + 1);
      loss_tracker->update_value(result[0].item<float>(), static_cast<double>(n));
      const Tensor out_mask = result.size() > 2 ? result[2] : Tensor();
      for (auto& m : metrics) m->update(batch.y[0], result[1], batch.sample_weight, out_mask);
      logs.clear();
      logs["loss"] = loss_mean->result();
      for (auto& m : metrics) logs[m->name()] = m->result();
      ++step;
      bar.update(step, logs);
      for (auto& cb : o.callbacks) cb->on_train_batch_end(step - 1, logs);
    }
    if (stop_training && !history.stop_reason.empty()) break;
    if (o.validation_data) {
      Logs v = run_evaluation(*o.validation_data, o.batch_size, 0, out, "val_");
      logs.insert(v.begin(), v.end());
    }
    bar.update(step, logs, /*final=*/true);
    if (o.verbose == 2) out << step << "/" << steps << fmt_logs(logs) << "\n";
    history.epochs.push_back(epoch);
    for (const auto& [k, v] : logs) history.history[k].push_back(v);
    for (auto& cb : o.callbacks) cb->on_epoch_end(epoch, logs);
  }
  for (auto& cb : o.callbacks) cb->on_train_end(logs);
  return history;
}

Logs Model::run_evaluation(const data::Dataset& d, int64_t batch_size, int verbose,
                           std::ostream& out, const std::string& prefix) {
  if (!loss_) LOWBIT_THROW(ValueError, name_, ": call compile() before evaluate()");
  if (d.size() == 0) LOWBIT_THROW(ValueError, name_, ".evaluate: the data is empty (0 samples)");
  // Inference graph with the loss.
  std::string sig = "eval:" + mode_signature(false);
  auto it = compiled_.find(sig);
  if (it == compiled_.end()) {
    auto c = std::make_unique<CompiledCall>();
    CallContext ctx(c->graph, false, rng_state_);
    Trace t = trace(c->graph, ctx);
    c->inputs = t.inputs;
    const Value& y_pred = t.outputs[0];
    ValueType yt = loss_->target_type({y_pred.dtype(), y_pred.shape()});
    Value y = c->graph.placeholder("y_true", yt.dtype, yt.shape);
    Value sw = c->graph.placeholder("sample_weight", DType::kF32, {kUnknown});
    c->inputs.push_back(y);
    c->inputs.push_back(sw);
    const Value mask = t.output_masks.empty() ? Value() : t.output_masks[0];
    c->outputs = {(*loss_)(y, y_pred, sw, mask), y_pred};
    if (mask.defined()) c->outputs.push_back(mask);
    c->executor = std::make_unique<Executor>(c->graph, c->outputs);
    it = compiled_.emplace(sig, std::move(c)).first;
  }
  CompiledCall& c = *it->second;
  const ValueType pred_type{c.outputs[1].dtype(), c.outputs[1].shape()};
  std::vector<MetricPtr> metrics;
  for (const auto& m : compile_options_.metrics)
    metrics.push_back(metric_by_name(m, loss_.get(), pred_type));
  auto loss_mean = Mean("loss");
  auto* tracker = dynamic_cast<MeanMetric*>(loss_mean.get());
  data::Dataset batched = d.batch_size() ? d : d.batch(batch_size);
  ProgressBar bar(batched.num_batches(), verbose, out);
  auto iter = batched.begin_epoch(0);
  data::Batch b;
  int64_t step = 0;
  Logs logs;
  Tensor ones;
  const size_t nx = c.inputs.size() - 2;
  while (iter.next(b)) {
    std::vector<std::pair<Value, Tensor>> feeds;
    if (b.x.size() != nx)
      LOWBIT_THROW(ValueError, name_, ".evaluate: the model takes ", nx,
                   " inputs but the data gives ", b.x.size());
    for (size_t i = 0; i < nx; ++i) {
      check_tensor_against(name_ + ".evaluate", "x", b.x[i],
                           {c.inputs[i].dtype(), c.inputs[i].shape()});
      feeds.emplace_back(c.inputs[i], b.x[i]);
    }
    validate_inputs(b.x);
    feeds.emplace_back(c.inputs[nx], loss_->prepare_targets(b.y.at(0), c.outputs[1].shape()));
    Tensor sw = b.sample_weight;
    if (!sw.defined()) {
      if (!ones.defined() || ones.dim(0) != b.size()) ones = Tensor::full({b.size()}, 1.0);
      sw = ones;
    }
    feeds.emplace_back(c.inputs[nx + 1], sw);
    auto r = c.executor->run(feeds);
    tracker->update_value(r[0].item<float>(), static_cast<double>(b.size()));
    const Tensor out_mask = r.size() > 2 ? r[2] : Tensor();
    for (auto& m : metrics) m->update(b.y[0], r[1], b.sample_weight, out_mask);
    logs.clear();
    logs[prefix + "loss"] = loss_mean->result();
    for (auto& m : metrics) logs[prefix + m->name()] = m->result();
    bar.update(++step, logs);
  }
  bar.update(step, logs, true);
  return logs;
}

Logs Model::evaluate(const Tensor& x, const Tensor& y, EvaluateOptions o) {
  if (inputs_.size() != 1)
    LOWBIT_THROW(ValueError, name_, ": evaluate(x, y) needs a single-input model");
  check_tensor_against(name_ + ".evaluate", "x", x, inputs_[0].type());
  return evaluate(data::Dataset::from_tensors({x}, {y}), o);
}

Logs Model::evaluate(const data::Dataset& d, EvaluateOptions o) {
  std::ostream& out = o.out ? *o.out : std::cout;
  return run_evaluation(d, o.batch_size, o.verbose, out, "");
}

Tensor Model::predict(const Tensor& x, int64_t batch_size) {
  if (inputs_.size() != 1 || outputs_.size() != 1)
    LOWBIT_THROW(ValueError, name_,
                 ": predict(x) needs a single-input, single-output model; use predict_on_batch");
  check_tensor_against(name_ + ".predict", "x", x, inputs_[0].type());
  if (batch_size < 1) LOWBIT_THROW(ValueError, name_, ".predict: batch_size must be >= 1");
  const int64_t n = x.dim(0);
  const int64_t row = n ? x.numel() / n : 0;
  Tensor result;
  for (int64_t start = 0; start < n; start += batch_size) {
    int64_t m = std::min(batch_size, n - start);
    std::vector<int64_t> dims = x.shape().dims();
    dims[0] = m;
    Tensor xb = Tensor::wrap(static_cast<char*>(x.raw()) + start * row * dtype_size(x.dtype()),
                             Shape(dims), x.dtype());
    Tensor yb = (*this)(xb);
    if (!result.defined()) {
      std::vector<int64_t> od = yb.shape().dims();
      od[0] = n;
      result = Tensor(Shape(od), yb.dtype());
    }
    std::memcpy(static_cast<char*>(result.raw()) + start * (yb.nbytes() / m), yb.raw(),
                yb.nbytes());
  }
  if (!result.defined()) {
    // Empty input: run nothing, return an empty output with the model's output shape.
    std::vector<int64_t> od = outputs_[0].shape().dims();
    od[0] = 0;
    for (auto& d : od)
      if (d == kUnknown) d = 0;
    result = Tensor::zeros(Shape(od), outputs_[0].dtype());
  }
  return result;
}

}  // namespace lowbit::nn
