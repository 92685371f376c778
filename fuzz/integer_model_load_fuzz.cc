// libFuzzer target: the integer model file loader (quant::IntegerModel::load_bytes, the code of
// IntegerModel::load on bytes in memory). Any input must either load or be refused with a
// lowbit::Error (IoError for the safetensors layer, ValueError for the graph); a model that
// loads must then survive what a user does with it: graph_json, inspect_table, inspect_json and
// a predict on a tiny zero input (when its per-example size is small). Anything else, an
// exception of another kind, a crash, a sanitizer report, a leak or a huge allocation, is a bug
// that the loader must be taught to refuse. docs/fuzzing.md has the commands.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "lowbit/error.h"
#include "lowbit/quant/convert.h"
#include "lowbit/tensor.h"
#include "lowbit/threads.h"

using namespace lowbit;

namespace {

[[noreturn]] void fail(const char* stage, const char* what) {
  std::fprintf(stderr, "integer_model_load_fuzz: %s threw an unexpected exception: %s\n", stage,
               what);
  std::abort();
}

// Exercises a loaded model; no exception is expected here (the loader validated it).
void use(quant::IntegerModel& m) {
  const char* stage = "graph_json";
  try {
    (void)m.graph_json();
    stage = "inspect_table";
    (void)m.inspect_table();
    stage = "inspect_json";
    (void)m.inspect_json();
    stage = "constant_bytes";
    (void)m.constant_bytes();
    // predict on one zero example, if one example of the input and every tensor is small.
    stage = "predict";
    const Shape& in = m.tensors.at(m.input).shape;
    std::vector<int64_t> dims = in.dims();
    dims[0] = 1;
    const Shape one(dims);
    if (one.numel() > 4096) return;
    for (const quant::IntegerTensor& t : m.tensors) {
      std::vector<int64_t> d = t.shape.dims();
      if (!d.empty() && d[0] == kUnknown) d[0] = 1;
      const Shape s(d);
      if (!s.is_known() || s.numel() > (1 << 16)) return;
    }
    const Tensor y = m.predict(Tensor::zeros(one, m.tensors.at(m.input).dtype));  // ids: 0
    if (y.dtype() != DType::kF32 || y.rank() < 1 || y.shape()[0] != 1) fail(stage, "bad output");
  } catch (const std::exception& e) {
    fail(stage, e.what());
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  quant::IntegerModel m;
  try {
    m = quant::IntegerModel::load_bytes(data, size, "fuzz-input");
  } catch (const Error&) {
    return 0;  // refused, with a message: what a bad file must get
  } catch (const std::exception& e) {
    fail("IntegerModel::load_bytes", e.what());
  }
  use(m);
  return 0;
}
