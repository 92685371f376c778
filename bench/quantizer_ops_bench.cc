// PyTorch-style fake-quant kernels against a plain copy, in bytes moved per second (inputs read +
// outputs written), on n f32 elements, kernels called directly on preallocated outputs.
//   BM_Copy                  memcpy of n floats (8 bytes per element)
//   BM_FakeQuant/<kernel>    fast (vectorised) and reference kernels of
//                            fake_quantize_per_tensor_affine (8 B/elem), its backward (12 B/elem),
//                            the per-channel op on a channels-last [n/64, 64] tensor (8 B/elem),
//                            the learnable backward (dx + dscale + dzp: 12 B/elem)
// Argument: n (elements); threads: the second argument.
//
//   ./build/bench/quantizer_ops_bench
#include <benchmark/benchmark.h>

#include <cstring>
#include <string>
#include <vector>

#include "lowbit/op.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"

namespace lowbit {
namespace {

Tensor random_tensor(const Shape& s, uint64_t seed) {
  Rng rng(seed);
  Tensor t(s, DType::kF32);
  for (float& v : t.span<float>()) v = rng.uniform(-4.0f, 4.0f);
  return t;
}

void BM_Copy(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor x = random_tensor({n}, 1);
  Tensor y({n}, DType::kF32);
  for (auto _ : state) {
    std::memcpy(y.raw(), x.raw(), x.nbytes());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * n * 8);
}

struct Case {
  const char* op;
  bool per_channel;
  bool backward;
  bool fast;
};

void BM_FakeQuant(benchmark::State& state, Case c) {
  const int64_t n = state.range(0);
  set_num_threads(static_cast<int>(state.range(1)));
  const Shape shape = c.per_channel ? Shape{n / 64, 64} : Shape{n};
  const Tensor x = random_tensor(shape, 2), dy = random_tensor(shape, 3);
  Attrs attrs{{"quant_min", -128}, {"quant_max", 127}};
  std::vector<Tensor> in;
  if (c.per_channel) {
    attrs.set("axis", -1);
    in = {x, Tensor::full({64}, 0.05), Tensor::full({64}, 3)};
  } else {
    in = {x, Tensor::scalar(0.05f), Tensor::scalar(3)};
  }
  if (c.backward) in.insert(in.begin(), dy);
  const OpDef& def = find_op(c.op);
  std::vector<ValueType> types;
  for (const Tensor& t : in) types.push_back({t.dtype(), t.shape()});
  std::vector<Tensor> out;
  const std::vector<ValueType> out_types = infer_op(def, types, attrs);
  for (const ValueType& t : out_types) out.emplace_back(t.shape, t.dtype);
  const std::any params = prepare_op(def, types, out_types, attrs);
  const KernelCtx ctx{in, out, &params};
  const FastKernel* best = choose_kernel(def, ctx, KernelChoice::kFastest);
  if (c.fast && !best) {
    state.SkipWithError("no fast kernel on this CPU");
    return;
  }
  if (best) state.SetLabel(best->name);
  const KernelFn& run = c.fast ? best->run : def.reference;
  for (auto _ : state) {
    run(ctx);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * n * (c.backward ? 12 : 8));
  set_num_threads(1);
}

constexpr int64_t kBig = 1 << 24;    // 64 MiB per tensor: memory bound
constexpr int64_t kSmall = 1 << 16;  // 256 KiB: in cache

BENCHMARK(BM_Copy)->Arg(kSmall)->Arg(kBig)->Unit(benchmark::kMicrosecond);
#define LOWBIT_FQ_BENCH(label, ...)                         \
  BENCHMARK_CAPTURE(BM_FakeQuant, label, Case{__VA_ARGS__}) \
      ->Args({kSmall, 1})                                   \
      ->Args({kBig, 1})                                     \
      ->Args({kBig, 2})                                     \
      ->Unit(benchmark::kMicrosecond)
LOWBIT_FQ_BENCH(per_tensor_fast, "fake_quantize_per_tensor_affine", false, false, true);
LOWBIT_FQ_BENCH(per_tensor_reference, "fake_quantize_per_tensor_affine", false, false, false);
LOWBIT_FQ_BENCH(per_tensor_backward_fast, "fake_quantize_per_tensor_affine_backward", false, true,
                true);
LOWBIT_FQ_BENCH(per_channel_fast, "fake_quantize_per_channel_affine", true, false, true);
LOWBIT_FQ_BENCH(learnable_backward_fast, "fake_quantize_learnable_per_tensor_affine_backward",
                false, true, true);
LOWBIT_FQ_BENCH(learnable_backward_reference, "fake_quantize_learnable_per_tensor_affine_backward",
                false, true, false);
LOWBIT_FQ_BENCH(learnable_per_channel_backward_fast,
                "fake_quantize_learnable_per_channel_affine_backward", true, true, true);

}  // namespace
}  // namespace lowbit

BENCHMARK_MAIN();
