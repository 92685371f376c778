// Compiled traces owned by a Model (shared by model.cc, training.cc).
#pragma once

#include <memory>
#include <vector>

#include "lowbit/graph.h"
#include "lowbit/nn/model.h"
#include "nn/thread_tuner.h"

namespace lowbit::nn {

// One traced mode of a model, compiled once and reused by eager calls.
struct CompiledCall {
  Graph graph;
  std::vector<Value> inputs, outputs;
  std::unique_ptr<Executor> executor;
};

// The training step of a compiled model: forward (training mode), loss, gradients, updates.
struct TrainState {
  Graph graph;
  std::vector<Value> x;
  Value y, sw, lr, t, loss;
  Value mask;  // the timestep mask of the output (undefined: none), fetched for the metrics
  std::vector<Value> outputs;
  std::unique_ptr<Executor> exec;
  ValueType y_type;
  ThreadTuner tuner;  // FitOptions::tune_threads; kept across fit calls
};

}  // namespace lowbit::nn
