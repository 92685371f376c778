// Model::compile / fit / evaluate / predict: the Keras training loop on top of one traced
// training graph per model (forward in training mode, loss, autodiff, optimizer updates, state
// updates) run by an Executor that reuses its memory every step.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iomanip>
#include <iostream>
#include <limits>
#include <set>
#include <sstream>

#include "lowbit/nn/model.h"
#include "lowbit/ops.h"
#include "lowbit/threads.h"
#include "nn/model_internal.h"

namespace lowbit::nn {

namespace {

using Clock = std::chrono::steady_clock;

// Row r of t [N, ...] as a [1, ...] tensor.
Tensor row_of(const Tensor& t, int64_t r) {
  std::vector<int64_t> d = t.shape().dims();
  d[0] = 1;
  Tensor row(Shape(d), t.dtype());
  const size_t bytes = t.nbytes() / static_cast<size_t>(t.dim(0));
  std::memcpy(row.raw(), static_cast<const char*>(t.raw()) + static_cast<size_t>(r) * bytes, bytes);
  return row;
}

[[noreturn]] void rethrow_with(const std::exception_ptr& e, const std::string& more) {
  try {
    std::rethrow_exception(e);
  } catch (const ShapeError& x) {
    throw ShapeError(x.what() + more);
  } catch (const DTypeError& x) {
    throw DTypeError(x.what() + more);
  } catch (const ValueError& x) {
    throw ValueError(x.what() + more);
  } catch (const UnsupportedError& x) {
    throw UnsupportedError(x.what() + more);
  } catch (const Error& x) {
    throw Error(x.what() + more);
  }
}

// Runs check(t) on one tensor of batch k of `epoch`. If it throws, the error (same type) gains
// where the bad value is in the user's terms: the tensor's name and, when some rows pass on
// their own, the first row that fails and its position in the source data. Positions in the
// message of the check itself ("index [29] of [32]") refer to the batch, which fit shuffles.
template <class F>
void check_batch_tensor(const Tensor& t, const std::string& what, const data::Dataset& d,
                        int64_t epoch, int64_t k, F check) {
  try {
    check(t);
    return;
  } catch (const Error&) {
    const std::exception_ptr e = std::current_exception();
    std::string more = detail::cat(" (in ", what, ", batch ", k + 1);
    if (t.defined() && t.rank() >= 1 && t.dim(0) > 1) {
      int64_t first_bad = -1, bad = 0;
      for (int64_t r = 0; r < t.dim(0); ++r) {
        try {
          check(row_of(t, r));
        } catch (const Error&) {
          if (first_bad < 0) first_bad = r;
          ++bad;
        }
      }
      if (first_bad >= 0 && bad < t.dim(0)) {
        const std::vector<int64_t> src = d.source_indices(epoch, k);
        more += detail::cat(": row ", first_bad, " of the batch");
        if (static_cast<size_t>(first_bad) < src.size())
          more += detail::cat(", which is sample ", src[static_cast<size_t>(first_bad)],
                              " of the data (0-based, before shuffling)");
        if (bad > 1) more += detail::cat("; ", bad, " rows of this batch fail");
      }
    }
    rethrow_with(e, more + ")");
  }
}

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

// The loss of every output (one loss object applied to each, as Keras with a single loss),
// their sum, and the fetch list: total, predictions, masks, per-output losses.
std::vector<Value> output_losses(Graph& g, const Loss& loss, const std::vector<Value>& outputs,
                                 const std::vector<Value>& masks, const std::vector<Value>& ys,
                                 const Value& sw, Value* total, OutputFetches* where) {
  const size_t k = outputs.size();
  std::vector<Value> per;
  for (size_t i = 0; i < k; ++i) {
    // The output's timestep mask: masked steps count for nothing, the mean is over the valid
    // ones (Keras 3 Loss.__call__, layer-semantics.md 4.1).
    Graph::Scope s(g, k == 1 ? std::string("loss") : "loss_" + std::to_string(i));
    per.push_back(loss(ys[i], outputs[i], sw, masks[i]));
  }
  *total = per[0];
  for (size_t i = 1; i < k; ++i) *total = *total + per[i];
  std::vector<Value> fetches{*total};
  fetches.insert(fetches.end(), outputs.begin(), outputs.end());
  where->mask.assign(k, -1);
  where->loss.assign(k, -1);
  for (size_t i = 0; i < k; ++i)
    if (masks[i].defined()) {
      where->mask[i] = static_cast<int>(fetches.size());
      fetches.push_back(masks[i]);
    }
  if (k > 1)
    for (size_t i = 0; i < k; ++i) {
      where->loss[i] = static_cast<int>(fetches.size());
      fetches.push_back(per[i]);
    }
  return fetches;
}

// Metrics of a multi-output model: every compiled metric name for every output, logged as
// "<output layer>_<metric>" (Keras); metric objects score the first output. One output: as is.
struct OutputMetric {
  size_t output;
  std::string prefix;
  MetricPtr metric;
};

std::vector<OutputMetric> make_output_metrics(const CompileOptions& co, const Loss* loss,
                                              const std::vector<Value>& outs,
                                              const std::vector<std::string>& names,
                                              bool with_objects = true) {
  std::vector<OutputMetric> r;
  const bool several = outs.size() > 1;
  for (size_t i = 0; i < outs.size(); ++i) {
    const ValueType t{outs[i].dtype(), outs[i].shape()};
    for (const auto& m : co.metrics)
      r.push_back({i, several ? names[i] + "_" : "", metric_by_name(m, loss, t)});
  }
  if (with_objects)  // stateful: fit's own; evaluation (and validation in fit) leaves them
    for (const auto& m : co.metric_objects) r.push_back({0, several ? names[0] + "_" : "", m});
  return r;
}

void update_output_metrics(std::vector<OutputMetric>& ms, std::vector<MetricPtr>& losses,
                           const OutputFetches& f, const data::Batch& b,
                           const std::vector<Tensor>& r) {
  for (auto& m : ms) {
    const int mi = f.mask[m.output];
    m.metric->update(b.y[m.output], r[1 + m.output], b.sample_weight, mi >= 0 ? r[mi] : Tensor());
  }
  for (size_t i = 0; i < losses.size(); ++i)
    dynamic_cast<MeanMetric&>(*losses[i])
        .update_value(r[static_cast<size_t>(f.loss[i])].item<float>(), static_cast<double>(b.size()));
}

void log_output_metrics(const std::vector<OutputMetric>& ms, const std::vector<MetricPtr>& losses,
                        const std::string& prefix, Logs& logs) {
  for (const auto& l : losses) logs[prefix + l->name()] = l->result();
  for (const auto& m : ms) logs[prefix + m.prefix + m.metric->name()] = m.metric->result();
}

}  // namespace

void Model::compile(CompileOptions o) {
  if (!o.loss)
    LOWBIT_THROW(ValueError, name_,
                 ": compile needs a loss (e.g. nn::SparseCategoricalCrossentropy())");
  if (inputs_.empty())
    LOWBIT_THROW(ValueError, name_,
                 ": the model has no input shape yet; start it with InputSpec or call build_for");
  // Metric names are resolved now, so that a typo fails here and not at the end of the first
  // epoch (Keras resolves them in compile too).
  for (size_t i = 0; i < o.metrics.size(); ++i) {
    try {
      for (const auto& out : outputs_) (void)metric_by_name(o.metrics[i], o.loss.get(), out.type());
    } catch (const Error& e) {
      LOWBIT_THROW(ValueError, name_, ".compile: metrics[", i, "] = '", o.metrics[i],
                   "': ", e.what());
    }
  }
  for (size_t i = 0; i < o.metric_objects.size(); ++i)
    if (!o.metric_objects[i])
      LOWBIT_THROW(ValueError, name_, ".compile: metric_objects[", i, "] is null");
  optimizer_ = o.optimizer ? o.optimizer : optimizer_by_name("rmsprop");
  loss_ = o.loss;
  compile_options_ = std::move(o);
  train_states_.clear();
}

TrainState& Model::train_state() {
  if (!loss_) LOWBIT_THROW(ValueError, name_, ": call compile() before fit()/evaluate()");
  std::string sig = mode_signature(true);
  auto it = train_states_.find(sig);
  if (it != train_states_.end()) return *it->second;
  auto st = std::make_unique<TrainState>();
  Graph& g = st->graph;
  CallContext ctx(g, /*training=*/true, rng_state_);
  Trace tr = trace(g, ctx);
  st->x = tr.inputs;
  st->outputs = tr.outputs;
  const size_t k = tr.outputs.size();
  std::vector<Value> masks(k);
  for (size_t i = 0; i < k; ++i) {
    const Value& y_pred = tr.outputs[i];
    const ValueType yt = loss_->target_type({y_pred.dtype(), y_pred.shape()});
    st->ys.push_back(
        g.placeholder(k == 1 ? std::string("y_true") : "y_true_" + std::to_string(i), yt.dtype, yt.shape));
    if (i < tr.output_masks.size()) masks[i] = tr.output_masks[i];
  }
  st->sw = g.placeholder("sample_weight", DType::kF32, {kUnknown});
  std::vector<Value> fetches =
      output_losses(g, *loss_, tr.outputs, masks, st->ys, st->sw, &st->loss, &st->fetch);
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
  // A step whose updates are not all finite is not applied (issue 14): a NaN or Inf weight,
  // optimizer slot or moving statistic could otherwise come from a finite loss.
  st->exec = std::make_unique<Executor>(g, fetches, updates,
                                        ExecutorOptions{.refuse_non_finite_updates = true});
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
  auto input_label = [&](size_t i) {
    return detail::cat("input '", inputs_[i].node->layer->name(), "' (x[", i, "])");
  };
  auto output_name = [&](size_t i) { return outputs_[i].node->layer->name(); };
  auto target_label = [&](size_t i) {
    return outputs_.size() == 1
               ? std::string("the targets (y)")
               : detail::cat("the targets of output '", output_name(i), "' (y[", i, "])");
  };
  std::vector<std::string> out_names;
  for (size_t i = 0; i < outputs_.size(); ++i) out_names.push_back(output_name(i));
  TrainState& st = train_state();
  // An unbatched dataset is shuffled and batched here; a batched one is used as given (Keras).
  data::Dataset train = train_in;
  if (train.batch_size() == 0) {
    if (o.shuffle) train = train.shuffle(o.seed);
    train = train.batch(o.batch_size);
  }
  const int64_t steps = train.num_batches();

  // Metrics, resolved like Keras compile does.
  std::vector<OutputMetric> metrics =
      make_output_metrics(compile_options_, loss_.get(), st.outputs, out_names);
  auto loss_mean = Mean("loss");
  auto* loss_tracker = dynamic_cast<MeanMetric*>(loss_mean.get());
  std::vector<MetricPtr> output_loss_means;  // several outputs: each one's loss
  if (st.outputs.size() > 1)
    for (size_t i = 0; i < st.outputs.size(); ++i) output_loss_means.push_back(Mean(output_name(i) + "_loss"));

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
  double result_loss = 0;  // the loss of the last step run (applied or not)
  for (int epoch = o.initial_epoch; epoch < o.epochs && !stop_training; ++epoch) {
    if (o.verbose) out << "Epoch " << epoch + 1 << "/" << o.epochs << "\n";
    for (auto& cb : o.callbacks) cb->on_epoch_begin(epoch, logs);
    loss_mean->reset();
    for (auto& m : output_loss_means) m->reset();
    for (auto& m : metrics) m.metric->reset();
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
      if (batch.y.size() != st.outputs.size())
        LOWBIT_THROW(ValueError, name_, ".fit: the model has ", st.outputs.size(),
                     " outputs, so each batch needs as many target tensors, but the data gives ",
                     batch.y.size());
      std::vector<std::pair<Value, Tensor>> feeds;
      for (size_t i = 0; i < st.x.size(); ++i) {
        check_tensor_against(name_ + ".fit", "x", batch.x[i], {st.x[i].dtype(), st.x[i].shape()});
        check_batch_tensor(batch.x[i], input_label(i), train, epoch, step,
                           [&](const Tensor& t) { validate_input(static_cast<int>(i), t); });
        feeds.emplace_back(st.x[i], batch.x[i]);
      }
      // Validated and converted to the placeholder's type (s32 or [B, 1] labels, int one-hot).
      for (size_t i = 0; i < st.outputs.size(); ++i) {
        Tensor targets;
        check_batch_tensor(batch.y[i], target_label(i), train, epoch, step, [&](const Tensor& t) {
          targets = loss_->prepare_targets(t, st.outputs[i].shape());
        });
        feeds.emplace_back(st.ys[i], targets);
      }
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
      result_loss = std::numeric_limits<double>::quiet_NaN();
      if (tune) {
        const int threads = st.tuner.next(user_threads);
        if (num_threads() != threads) set_num_threads(threads);
      }
      const auto t0 = std::chrono::steady_clock::now();
      auto result = st.exec->run(feeds, [&](const std::vector<Tensor>& f) {
        finite = std::isfinite(f[0].item<float>());
        return finite;
      });
      result_loss = result[0].item<float>();
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
      if (!st.exec->refused_update().empty()) {
        history.stop_reason = detail::cat(
            "the update of ", st.exec->refused_update(), " is non-finite at epoch ", epoch + 1,
            ", batch ", step + 1, " (the loss was ", result[0].item<float>(),
            "); the step was not applied, the weights keep their last finite values. "
            "Lower the learning rate, clip the gradients (clipnorm) or check the data.");
        out << "\n" << name_ << ".fit: training stopped: " << history.stop_reason << "\n";
        stop_training = true;
        break;
      }
      optimizer_->set_iterations(optimizer_->iterations() + 1);
      loss_tracker->update_value(result[0].item<float>(), static_cast<double>(n));
      update_output_metrics(metrics, output_loss_means, st.fetch, batch, result);
      logs.clear();
      logs["loss"] = loss_mean->result();
      log_output_metrics(metrics, output_loss_means, "", logs);
      ++step;
      bar.update(step, logs);
      for (auto& cb : o.callbacks) cb->on_train_batch_end(step - 1, logs);
    }
    if (stop_training && !history.stop_reason.empty()) {
      // Stopped by the step guard inside this epoch: History keeps the partial epoch (the mean
      // of the steps applied, or the refused loss when none was), so that history["loss"] is
      // never empty after fit returns and its last entry says where training stood.
      if (step > 0) {
        logs.clear();
        logs["loss"] = loss_mean->result();
        log_output_metrics(metrics, output_loss_means, "", logs);
      } else {
        logs.clear();
        logs["loss"] = result_loss;
      }
      history.epochs.push_back(epoch);
      for (const auto& [k, v] : logs) history.history[k].push_back(v);
      history.last_epoch_partial = true;
      history.stop_reason += detail::cat(" History holds epoch ", epoch + 1, " as far as it ran (",
                                         step, " of ", steps, " batches applied).");
      break;
    }
    if (o.validation_data) {
      Logs v = run_evaluation(*o.validation_data, o.batch_size, 0, out, "val_");
      logs.insert(v.begin(), v.end());
    }
    bar.update(step, logs, /*final=*/true);
    if (o.verbose == 2) out << step << "/" << steps << fmt_logs(logs) << "\n";
    history.epochs.push_back(epoch);
    for (const auto& [k, v] : logs) history.history[k].push_back(v);
    for (auto& cb : o.callbacks) cb->on_epoch_end(epoch, logs);
    if (stop_training && history.stop_reason.empty() && epoch + 1 < o.epochs)
      history.stop_reason =
          detail::cat("a callback (e.g. EarlyStopping) set stop_training after epoch ", epoch + 1,
                      " of ", o.epochs);
  }
  for (auto& cb : o.callbacks) cb->on_train_end(logs);
  return history;
}

Logs Model::run_evaluation(const data::Dataset& d, int64_t batch_size, int verbose,
                           std::ostream& out, const std::string& prefix) {
  if (!loss_) LOWBIT_THROW(ValueError, name_, ": call compile() before evaluate()");
  if (d.size() == 0) LOWBIT_THROW(ValueError, name_, ".evaluate: the data is empty (0 samples)");
  require_calibrated(prefix.empty() ? "evaluate" : "fit (validation)");
  // Inference graph with the loss.
  std::string sig = "eval:" + mode_signature(false);
  auto it = compiled_.find(sig);
  if (it == compiled_.end()) {
    auto c = std::make_unique<CompiledCall>();
    CallContext ctx(c->graph, false, rng_state_);
    Trace t = trace(c->graph, ctx);
    c->inputs = t.inputs;
    c->num_x = t.inputs.size();
    const size_t k = t.outputs.size();
    std::vector<Value> ys, masks(k);
    for (size_t i = 0; i < k; ++i) {
      const ValueType yt = loss_->target_type({t.outputs[i].dtype(), t.outputs[i].shape()});
      ys.push_back(c->graph.placeholder(k == 1 ? std::string("y_true") : "y_true_" + std::to_string(i),
                                        yt.dtype, yt.shape));
      if (i < t.output_masks.size()) masks[i] = t.output_masks[i];
    }
    Value sw = c->graph.placeholder("sample_weight", DType::kF32, {kUnknown});
    c->inputs.insert(c->inputs.end(), ys.begin(), ys.end());
    c->inputs.push_back(sw);
    Value total;
    c->outputs = output_losses(c->graph, *loss_, t.outputs, masks, ys, sw, &total, &c->fetch);
    c->executor = std::make_unique<Executor>(c->graph, c->outputs);
    it = compiled_.emplace(sig, std::move(c)).first;
  }
  CompiledCall& c = *it->second;
  auto input_label = [&](size_t i) {
    return detail::cat("input '", inputs_[i].node->layer->name(), "' (x[", i, "])");
  };
  auto output_name = [&](size_t i) { return outputs_[i].node->layer->name(); };
  auto target_label = [&](size_t i) {
    return outputs_.size() == 1
               ? std::string("the targets (y)")
               : detail::cat("the targets of output '", output_name(i), "' (y[", i, "])");
  };
  std::vector<std::string> out_names;
  for (size_t i = 0; i < outputs_.size(); ++i) out_names.push_back(output_name(i));

  const size_t k = outputs_.size();
  std::vector<Value> preds(c.outputs.begin() + 1, c.outputs.begin() + 1 + static_cast<std::ptrdiff_t>(k));
  std::vector<OutputMetric> metrics =
      make_output_metrics(compile_options_, loss_.get(), preds, out_names, /*with_objects=*/false);
  std::vector<MetricPtr> output_loss_means;
  if (k > 1)
    for (size_t i = 0; i < k; ++i) output_loss_means.push_back(Mean(output_name(i) + "_loss"));
  auto loss_mean = Mean("loss");
  auto* tracker = dynamic_cast<MeanMetric*>(loss_mean.get());
  data::Dataset batched = d.batch_size() ? d : d.batch(batch_size);
  ProgressBar bar(batched.num_batches(), verbose, out);
  auto iter = batched.begin_epoch(0);
  data::Batch b;
  int64_t step = 0;
  Logs logs;
  Tensor ones;
  const size_t nx = c.num_x;
  while (iter.next(b)) {
    std::vector<std::pair<Value, Tensor>> feeds;
    if (b.x.size() != nx)
      LOWBIT_THROW(ValueError, name_, ".evaluate: the model takes ", nx,
                   " inputs but the data gives ", b.x.size());
    if (b.y.size() != k)
      LOWBIT_THROW(ValueError, name_, ".evaluate: the model has ", k,
                   " outputs, so each batch needs as many target tensors, but the data gives ",
                   b.y.size());
    for (size_t i = 0; i < nx; ++i) {
      check_tensor_against(name_ + ".evaluate", "x", b.x[i],
                           {c.inputs[i].dtype(), c.inputs[i].shape()});
      check_batch_tensor(b.x[i], input_label(i), batched, 0, step,
                         [&](const Tensor& t) { validate_input(static_cast<int>(i), t); });
      feeds.emplace_back(c.inputs[i], b.x[i]);
    }
    for (size_t i = 0; i < k; ++i) {
      Tensor targets;
      check_batch_tensor(b.y[i], target_label(i), batched, 0, step, [&](const Tensor& t) {
        targets = loss_->prepare_targets(t, preds[i].shape());
      });
      feeds.emplace_back(c.inputs[nx + i], targets);
    }
    Tensor sw = b.sample_weight;
    if (!sw.defined()) {
      if (!ones.defined() || ones.dim(0) != b.size()) ones = Tensor::full({b.size()}, 1.0);
      sw = ones;
    }
    feeds.emplace_back(c.inputs[nx + k], sw);
    auto r = c.executor->run(feeds);
    tracker->update_value(r[0].item<float>(), static_cast<double>(b.size()));
    update_output_metrics(metrics, output_loss_means, c.fetch, b, r);
    logs.clear();
    logs[prefix + "loss"] = loss_mean->result();
    log_output_metrics(metrics, output_loss_means, prefix, logs);
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
    LOWBIT_THROW(ValueError, name_, ": predict(x) needs a single-input, single-output model (this one has ",
                 inputs_.size(), " inputs and ", outputs_.size(),
                 " outputs); use predict({x1, x2, ...}), which returns one tensor per output");
  return predict(std::vector<Tensor>{x}, batch_size)[0];
}

std::vector<Tensor> Model::predict(const std::vector<Tensor>& xs, int64_t batch_size) {
  if (xs.size() != inputs_.size())
    LOWBIT_THROW(ValueError, name_, ".predict: the model takes ", inputs_.size(),
                 " inputs but found ", xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    const std::string what = "x[" + std::to_string(i) + "]";
    check_tensor_against(name_ + ".predict", what.c_str(), xs[i], inputs_[i].type());
  }
  if (batch_size < 1) LOWBIT_THROW(ValueError, name_, ".predict: batch_size must be >= 1");
  const int64_t n = xs[0].dim(0);
  for (size_t i = 1; i < xs.size(); ++i)
    if (xs[i].dim(0) != n)
      LOWBIT_THROW(ShapeError, name_, ".predict: x[", i, "] has ", xs[i].dim(0),
                   " samples but x[0] has ", n);
  require_calibrated("predict");
  std::vector<Tensor> result(outputs_.size());
  for (int64_t start = 0; start < n; start += batch_size) {
    const int64_t m = std::min(batch_size, n - start);
    std::vector<Tensor> batch;
    for (const Tensor& x : xs) {
      std::vector<int64_t> dims = x.shape().dims();
      dims[0] = m;
      const size_t row = x.nbytes() / static_cast<size_t>(n);
      batch.push_back(Tensor::wrap(static_cast<char*>(x.raw()) + static_cast<size_t>(start) * row,
                                   Shape(dims), x.dtype()));
    }
    std::vector<Tensor> yb = predict_on_batch(batch);
    for (size_t k = 0; k < yb.size(); ++k) {
      if (!result[k].defined()) {
        std::vector<int64_t> od = yb[k].shape().dims();
        od[0] = n;
        result[k] = Tensor(Shape(od), yb[k].dtype());
      }
      std::memcpy(static_cast<char*>(result[k].raw()) + static_cast<size_t>(start) * (yb[k].nbytes() / m),
                  yb[k].raw(), yb[k].nbytes());
    }
  }
  for (size_t k = 0; k < result.size(); ++k) {
    if (result[k].defined()) continue;
    // Empty input: run nothing, return an empty output with the model's output shape.
    std::vector<int64_t> od = outputs_[k].shape().dims();
    od[0] = 0;
    for (auto& d : od)
      if (d == kUnknown) d = 0;
    result[k] = Tensor::zeros(Shape(od), outputs_[k].dtype());
  }
  return result;
}

int64_t Model::calibrate(const data::Dataset& data, int64_t batch_size, int verbose,
                         std::ostream* out_stream) {
  std::ostream& out = out_stream ? *out_stream : std::cout;
  if (data.size() == 0) LOWBIT_THROW(ValueError, name_, ".calibrate: the data is empty (0 samples)");
  if (data.batch_size() == 0 && batch_size < 1)
    LOWBIT_THROW(ValueError, name_, ".calibrate: batch_size must be >= 1 but found ", batch_size);
  // Training-mode trace; of its state updates only those of the quantizer state
  // (Layer::has_quantizer_state) are kept.
  Graph g;
  CallContext ctx(g, /*training=*/true, rng_state_);
  Trace tr = trace(g, ctx);
  std::set<int> quant_vars;
  std::function<void(Layer&)> walk = [&](Layer& l) {
    if (l.has_quantizer_state())
      for (auto& w : l.weights())
        if (!w.trainable)
          if (Value v = ctx.bound(w); v.defined()) quant_vars.insert(v.id());
    for (const auto& sub : l.sublayers()) walk(*sub);
  };
  for (const auto& l : layers()) walk(*l);
  std::vector<std::pair<Value, Value>> updates;
  for (const auto& u : ctx.updates())
    if (quant_vars.count(u.first.id())) updates.push_back(u);
  if (updates.empty())
    LOWBIT_THROW(ValueError, name_,
                 ".calibrate: the model has no quantizer state to calibrate (quantize it first "
                 "with quant::quantize_model)");
  Executor ex(g, {tr.outputs[0]}, updates);
  data::Dataset batched = data.batch_size() ? data : data.batch(batch_size);
  ProgressBar bar(batched.num_batches(), verbose, out);
  auto it = batched.begin_epoch(0);
  data::Batch b;
  int64_t steps = 0;
  while (it.next(b)) {
    if (b.x.size() != tr.inputs.size())
      LOWBIT_THROW(ValueError, name_, ".calibrate: the model takes ", tr.inputs.size(),
                   " inputs but the data gives ", b.x.size());
    std::vector<std::pair<Value, Tensor>> feeds;
    for (size_t i = 0; i < tr.inputs.size(); ++i) {
      check_tensor_against(name_ + ".calibrate", "x", b.x[i],
                           {tr.inputs[i].dtype(), tr.inputs[i].shape()});
      feeds.emplace_back(tr.inputs[i], b.x[i]);
    }
    validate_inputs(b.x);
    ex.run(feeds);
    bar.update(++steps, {});
  }
  bar.update(steps, {}, true);
  return steps;
}

}  // namespace lowbit::nn
