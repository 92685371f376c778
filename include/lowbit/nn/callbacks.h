// Training callbacks (Keras semantics): hooks called by Model::fit at the start and end of
// training, epochs and batches. `logs` hold the metric values ("loss", "accuracy", "val_loss",
// ...).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lowbit/tensor.h"

namespace lowbit::nn {

class Model;
using Logs = std::map<std::string, double>;

class Callback {
 public:
  virtual ~Callback() = default;
  virtual void on_train_begin(const Logs&) {}
  virtual void on_train_end(const Logs&) {}
  virtual void on_epoch_begin(int /*epoch*/, const Logs&) {}
  virtual void on_epoch_end(int /*epoch*/, const Logs&) {}
  virtual void on_train_batch_begin(int64_t /*batch*/, const Logs&) {}
  virtual void on_train_batch_end(int64_t /*batch*/, const Logs&) {}
  // Set by fit before on_train_begin.
  Model* model = nullptr;
};
using CallbackPtr = std::shared_ptr<Callback>;

struct EarlyStoppingOptions {
  std::string monitor = "val_loss";
  double min_delta = 0;
  int patience = 0;
  std::string mode = "auto";  // "min", "max", "auto" (max for accuracy-like names)
  bool restore_best_weights = false;
  int start_from_epoch = 0;
};
// Stops training when `monitor` has not improved by min_delta for `patience` epochs.
CallbackPtr EarlyStopping(EarlyStoppingOptions o = {});

struct ModelCheckpointOptions {
  std::string monitor = "val_loss";
  bool save_best_only = false;
  std::string mode = "auto";
};
// Saves the model (Model::save, atomic) at the end of each epoch, or only when `monitor`
// improves. "{epoch}" in the path is replaced by the 1-based epoch number.
CallbackPtr ModelCheckpoint(std::string path, ModelCheckpointOptions o = {});

// Writes one CSV row per epoch: epoch, then the logs in sorted key order.
CallbackPtr CSVLogger(std::string path, char separator = ',', bool append = false);

// Sets the learning rate at the start of each epoch to schedule(epoch, current_lr).
CallbackPtr LearningRateScheduler(std::function<double(int epoch, double lr)> schedule);

// A callback from lambdas (any may be empty).
struct LambdaCallbackFns {
  std::function<void(int, const Logs&)> on_epoch_begin, on_epoch_end;
  std::function<void(int64_t, const Logs&)> on_train_batch_end;
  std::function<void(const Logs&)> on_train_begin, on_train_end;
};
CallbackPtr LambdaCallback(LambdaCallbackFns fns);

// What fit returns: one value per epoch for every logged metric.
struct History {
  std::map<std::string, std::vector<double>> history;
  std::vector<int> epochs;
  // Empty when fit ran all its epochs; otherwise why training stopped and where (a callback
  // such as EarlyStopping after an epoch, or the step guard: a non-finite loss or update, with
  // what to do about it).
  std::string stop_reason;
  // True when the step guard stopped fit inside an epoch: the last entry of every history list
  // is that epoch as far as it ran (the mean over its applied batches; the refused loss itself
  // when not even the first batch was applied, so history["loss"] is never empty).
  bool last_epoch_partial = false;
};

}  // namespace lowbit::nn
