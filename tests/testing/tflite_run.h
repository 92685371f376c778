// Runs a .tflite model in TFLite's interpreter compiled to WebAssembly (npm
// @tensorflow/tfjs-tflite, installed by scripts/setup into tools/interop/node_modules) through
// tools/interop/tflite_run.mjs: how the interop tests check an exported .tflite in a real TFLite
// interpreter. A test that needs it fails (not skips) when it is missing, naming the command.
#pragma once

#include <string>
#include <vector>

#include "lowbit/tensor.h"

namespace lowbit::testing {

// The outputs of `model` (in the subgraph's output order) on `inputs` (fed to its inputs in
// order; f32, s8, s32, s64). `work_dir` receives the .npy files (created if missing). Throws
// std::runtime_error with tflite_run's message when node or the interpreter fails.
std::vector<Tensor> run_tflite(const std::string& model, const std::vector<Tensor>& inputs,
                               const std::string& work_dir);

}  // namespace lowbit::testing
