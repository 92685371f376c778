#include "lowbit/nn/callbacks.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "lowbit/nn/model.h"

namespace lowbit::nn {

namespace {

// Keras "auto" mode: maximise accuracy-like and AUC metrics, minimise the rest.
bool maximise(const std::string& monitor, const std::string& mode) {
  if (mode == "max") return true;
  if (mode == "min") return false;
  if (mode != "auto")
    LOWBIT_THROW(ValueError, "callback: mode must be 'auto', 'min' or 'max' but found '", mode,
                 "'");
  return monitor.find("acc") != std::string::npos || monitor.find("auc") != std::string::npos;
}

class EarlyStoppingCallback : public Callback {
 public:
  explicit EarlyStoppingCallback(EarlyStoppingOptions o)
      : o_(std::move(o)), max_(maximise(o_.monitor, o_.mode)) {
    if (o_.patience < 0) LOWBIT_THROW(ValueError, "EarlyStopping: patience must be >= 0");
  }
  void on_train_begin(const Logs&) override {
    wait_ = 0;
    best_ =
        max_ ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
    best_weights_.clear();
    stopped_epoch_ = -1;
  }
  void on_epoch_end(int epoch, const Logs& logs) override {
    auto it = logs.find(o_.monitor);
    if (it == logs.end()) {
      std::string have;
      for (const auto& [k, v] : logs) have += (have.empty() ? "" : ", ") + k;
      LOWBIT_THROW(ValueError, "EarlyStopping: monitored metric '", o_.monitor,
                   "' is not in the logs (available: ", have,
                   "); give validation data or monitor another metric");
    }
    if (epoch < o_.start_from_epoch) return;
    double v = it->second;
    bool better = max_ ? v - o_.min_delta > best_ : v + o_.min_delta < best_;
    if (better) {
      best_ = v;
      wait_ = 0;
      if (o_.restore_best_weights) {
        best_weights_.clear();
        for (auto& [name, w] : model->named_weights()) best_weights_.push_back(w->value.clone());
      }
      return;
    }
    if (++wait_ > o_.patience) {
      model->stop_training = true;
      stopped_epoch_ = epoch;
      if (o_.restore_best_weights && !best_weights_.empty()) {
        auto named = model->named_weights();
        for (size_t i = 0; i < named.size() && i < best_weights_.size(); ++i)
          named[i].second->value.copy_from(best_weights_[i]);
      }
    }
  }

 private:
  EarlyStoppingOptions o_;
  bool max_;
  int wait_ = 0;
  double best_ = 0;
  int stopped_epoch_ = -1;
  std::vector<Tensor> best_weights_;
};

std::string expand_epoch(const std::string& path, int epoch) {
  std::string out = path;
  const std::string key = "{epoch}";
  for (size_t p = out.find(key); p != std::string::npos; p = out.find(key))
    out.replace(p, key.size(), std::to_string(epoch + 1));
  return out;
}

class ModelCheckpointCallback : public Callback {
 public:
  ModelCheckpointCallback(std::string path, ModelCheckpointOptions o)
      : path_(std::move(path)), o_(std::move(o)), max_(maximise(o_.monitor, o_.mode)) {
    if (path_.empty()) LOWBIT_THROW(ValueError, "ModelCheckpoint: the path is empty");
  }
  void on_train_begin(const Logs&) override {
    best_ =
        max_ ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
  }
  void on_epoch_end(int epoch, const Logs& logs) override {
    if (o_.save_best_only) {
      auto it = logs.find(o_.monitor);
      if (it == logs.end())
        LOWBIT_THROW(ValueError, "ModelCheckpoint: monitored metric '", o_.monitor,
                     "' is not in the logs");
      double v = it->second;
      if (!std::isfinite(v)) return;
      if (!(max_ ? v > best_ : v < best_)) return;
      best_ = v;
    }
    model->save(expand_epoch(path_, epoch));
  }

 private:
  std::string path_;
  ModelCheckpointOptions o_;
  bool max_;
  double best_ = 0;
};

class CSVLoggerCallback : public Callback {
 public:
  CSVLoggerCallback(std::string path, char sep, bool append)
      : path_(std::move(path)), sep_(sep), append_(append) {}
  void on_train_begin(const Logs&) override {
    bool exists = std::filesystem::exists(path_);
    file_.open(path_, append_ ? std::ios::app : std::ios::trunc);
    if (!file_) LOWBIT_THROW(IoError, "CSVLogger: cannot open '", path_, "' for writing");
    header_written_ = append_ && exists;
  }
  void on_epoch_end(int epoch, const Logs& logs) override {
    if (!header_written_) {
      file_ << "epoch";
      for (const auto& [k, v] : logs) file_ << sep_ << k;
      file_ << "\n";
      header_written_ = true;
    }
    file_ << epoch;
    for (const auto& [k, v] : logs) file_ << sep_ << v;
    file_ << "\n";
    file_.flush();
  }
  void on_train_end(const Logs&) override { file_.close(); }

 private:
  std::string path_;
  char sep_;
  bool append_;
  bool header_written_ = false;
  std::ofstream file_;
};

class LearningRateSchedulerCallback : public Callback {
 public:
  explicit LearningRateSchedulerCallback(std::function<double(int, double)> f) : f_(std::move(f)) {
    if (!f_) LOWBIT_THROW(ValueError, "LearningRateScheduler: the schedule function is empty");
  }
  void on_epoch_begin(int epoch, const Logs&) override {
    auto opt = model->optimizer();
    if (!opt) LOWBIT_THROW(ValueError, "LearningRateScheduler: the model is not compiled");
    double lr = f_(epoch, opt->learning_rate_at(opt->iterations()));
    if (!(lr >= 0) || !std::isfinite(lr))
      LOWBIT_THROW(ValueError,
                   "LearningRateScheduler: the schedule returned an invalid learning rate ", lr);
    opt->set_learning_rate(lr);
  }

 private:
  std::function<double(int, double)> f_;
};

class LambdaCallbackImpl : public Callback {
 public:
  explicit LambdaCallbackImpl(LambdaCallbackFns f) : f_(std::move(f)) {}
  void on_epoch_begin(int e, const Logs& l) override {
    if (f_.on_epoch_begin) f_.on_epoch_begin(e, l);
  }
  void on_epoch_end(int e, const Logs& l) override {
    if (f_.on_epoch_end) f_.on_epoch_end(e, l);
  }
  void on_train_batch_end(int64_t b, const Logs& l) override {
    if (f_.on_train_batch_end) f_.on_train_batch_end(b, l);
  }
  void on_train_begin(const Logs& l) override {
    if (f_.on_train_begin) f_.on_train_begin(l);
  }
  void on_train_end(const Logs& l) override {
    if (f_.on_train_end) f_.on_train_end(l);
  }

 private:
  LambdaCallbackFns f_;
};

}  // namespace

CallbackPtr EarlyStopping(EarlyStoppingOptions o) {
  return std::make_shared<EarlyStoppingCallback>(std::move(o));
}
CallbackPtr ModelCheckpoint(std::string path, ModelCheckpointOptions o) {
  return std::make_shared<ModelCheckpointCallback>(std::move(path), std::move(o));
}
CallbackPtr CSVLogger(std::string path, char separator, bool append) {
  return std::make_shared<CSVLoggerCallback>(std::move(path), separator, append);
}
CallbackPtr LearningRateScheduler(std::function<double(int, double)> schedule) {
  return std::make_shared<LearningRateSchedulerCallback>(std::move(schedule));
}
CallbackPtr LambdaCallback(LambdaCallbackFns fns) {
  return std::make_shared<LambdaCallbackImpl>(std::move(fns));
}

}  // namespace lowbit::nn
