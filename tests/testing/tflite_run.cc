#include "testing/tflite_run.h"

#include "testing/ort.h"

namespace lowbit::testing {

std::vector<Tensor> run_tflite(const std::string& model, const std::vector<Tensor>& inputs,
                               const std::string& work_dir) {
  return run_interop_script("tflite", "tflite_run.mjs", model, inputs, work_dir);
}

}  // namespace lowbit::testing
