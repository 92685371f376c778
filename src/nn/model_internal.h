// Compiled traces owned by a Model (shared by model.cc, training.cc).
#pragma once

#include <memory>
#include <vector>

#include "lowbit/graph.h"
#include "lowbit/nn/model.h"
#include "nn/thread_tuner.h"

namespace lowbit::nn {

// Where the per-output values sit in the fetches of a loss graph: [0] the total loss,
// [1, 1 + k) the k predictions, then each defined output mask, then (with k > 1) each
// output's own loss. -1: not fetched.
struct OutputFetches {
  std::vector<int> mask, loss;
};

// One traced mode of a model, compiled once and reused by eager calls.
struct CompiledCall {
  Graph graph;
  std::vector<Value> inputs, outputs;
  std::unique_ptr<Executor> executor;
  // Evaluation graphs: inputs are x..., y per output..., sample_weight; outputs are the total
  // loss, the predictions, then (see OutputFetches) masks and per-output losses.
  size_t num_x = 0;
  OutputFetches fetch;
};



// The training step of a compiled model: forward (training mode), loss, gradients, updates.
struct TrainState {
  Graph graph;
  std::vector<Value> x;
  std::vector<Value> ys;  // the targets, one per output
  Value sw, lr, t, loss;  // loss: the sum of the outputs' losses (Keras)
  std::vector<Value> outputs;
  OutputFetches fetch;
  std::unique_ptr<Executor> exec;
  ThreadTuner tuner;  // FitOptions::tune_threads; kept across fit calls
};

}  // namespace lowbit::nn
