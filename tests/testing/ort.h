// Runs an ONNX model in ONNX Runtime (onnxruntime-node, installed by scripts/setup into
// tools/interop/node_modules) through tools/interop/ort_run.mjs: how the interop tests check a
// file in the real runtime. ONNX Runtime is never a dependency of the library; a test that needs
// it fails (not skips) when it is missing, naming the command that installs it.
#pragma once

#include <string>
#include <vector>

#include "lowbit/tensor.h"

namespace lowbit::testing {

// The outputs of `model` (in the graph's output order) on `inputs` (fed to the graph's inputs in
// order; f32, s8, u8, s32, s64). `work_dir` receives the .npy files (created if missing).
// Throws std::runtime_error with ort_run's message when node or onnxruntime-node fails.
std::vector<Tensor> run_onnxruntime(const std::string& model, const std::vector<Tensor>& inputs,
                                    const std::string& work_dir,
                                    const std::string& optimization = "all");

// What run_onnxruntime and run_tflite (tflite_run.h) share: runs
// `node tools/interop/SCRIPT MODEL WORK_DIR/WHO_out WORK_DIR/WHO_in<i>.npy... EXTRA_ARGS...` and
// reads the .npy outputs listed by the JSON line the runner prints last. `who` prefixes the file
// names and the messages of the std::runtime_error thrown when the runner fails.
std::vector<Tensor> run_interop_script(const std::string& who, const std::string& script,
                                       const std::string& model, const std::vector<Tensor>& inputs,
                                       const std::string& work_dir,
                                       const std::vector<std::string>& extra_args = {});

// A fresh empty directory under the system temp dir for one test (removed by the caller, or left
// for inspection on failure).
std::string fresh_temp_dir(const std::string& stem);

}  // namespace lowbit::testing
