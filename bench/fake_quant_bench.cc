// TF fake-quant kernels (include/lowbit/ops/fake_quant.h) against a plain copy, in bytes moved
// per second (inputs read + outputs written), kernels called directly on preallocated outputs.
//   BM_Copy                   memcpy of n floats (8 bytes per element)
//   BM_TfFakeQuant/<kernel>   fast (AVX-512 or AVX2, whichever the CPU has first) and reference
//                             kernels: the vars forward (8 B/elem), its fused gradient dx + dmin +
//                             dmax (12 B/elem), the per-channel forward on a channels-last
//                             [n/64, 64] tensor (8 B/elem) and its gradient (12 B/elem),
//                             min_max per tensor (4 B/elem)
// Arguments: n (elements), threads. Inputs are uniform on [-4, 4], the range [-3, 3], so about
// a quarter of the elements are outside it (the gradient's sums have work to do).
//
//   ./build/bench/fake_quant_bench --benchmark_filter='Copy|vars'
#include <benchmark/benchmark.h>

#include <cstring>
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
  set_num_threads(static_cast<int>(state.range(1)));
  const Tensor x = random_tensor({n}, 1);
  Tensor y({n}, DType::kF32);
  for (auto _ : state) {
    std::memcpy(y.raw(), x.raw(), x.nbytes());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * n * 8);
  set_num_threads(1);
}

enum class Kind { kVars, kVarsGradient, kPerChannel, kPerChannelGradient, kMinMax };

struct Case {
  Kind kind;
  bool fast;
};

void BM_TfFakeQuant(benchmark::State& state, Case c) {
  const int64_t n = state.range(0);
  set_num_threads(static_cast<int>(state.range(1)));
  const Tensor x = random_tensor({n}, 2), dy = random_tensor({n}, 3);
  const Attrs attrs{{"num_bits", 8}, {"narrow_range", false}, {"per_channel", false}};
  const char* op = nullptr;
  std::vector<Tensor> in;
  int64_t bytes = 8;
  switch (c.kind) {
    case Kind::kVars:
      op = "fake_quant_with_min_max_vars";
      in = {x, Tensor::scalar(-3), Tensor::scalar(3)};
      break;
    case Kind::kVarsGradient:
      op = "fake_quant_with_min_max_vars_gradient";
      in = {dy, x, Tensor::scalar(-3), Tensor::scalar(3)};
      bytes = 12;
      break;
    case Kind::kPerChannel:
      op = "fake_quant_with_min_max_vars_per_channel";
      in = {x.reshape({n / 64, 64}), Tensor::full({64}, -3), Tensor::full({64}, 3)};
      break;
    case Kind::kPerChannelGradient:
      op = "fake_quant_with_min_max_vars_per_channel_gradient";
      in = {dy.reshape({n / 64, 64}), x.reshape({n / 64, 64}), Tensor::full({64}, -3),
            Tensor::full({64}, 3)};
      bytes = 12;
      break;
    case Kind::kMinMax:
      op = "min_max";
      in = {x};
      bytes = 4;
      break;
  }
  const OpDef& def = find_op(op);
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
  const KernelFn& run = c.fast ? best->run : def.reference;
  for (auto _ : state) {
    run(ctx);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * n * bytes);
  set_num_threads(1);
}

constexpr int64_t kBig = 1 << 24;    // 64 MiB per tensor: memory bound
constexpr int64_t kSmall = 1 << 16;  // 256 KiB: in cache

BENCHMARK(BM_Copy)
    ->Args({kSmall, 1})
    ->Args({kBig, 1})
    ->Args({kBig, 2})
    ->Unit(benchmark::kMicrosecond);
#define LOWBIT_TFQ_BENCH(label, ...)                          \
  BENCHMARK_CAPTURE(BM_TfFakeQuant, label, Case{__VA_ARGS__}) \
      ->Args({kSmall, 1})                                     \
      ->Args({kBig, 1})                                       \
      ->Args({kBig, 2})                                       \
      ->Unit(benchmark::kMicrosecond)
LOWBIT_TFQ_BENCH(vars_fast, Kind::kVars, true);
LOWBIT_TFQ_BENCH(vars_reference, Kind::kVars, false);
LOWBIT_TFQ_BENCH(vars_gradient_fast, Kind::kVarsGradient, true);
LOWBIT_TFQ_BENCH(vars_gradient_reference, Kind::kVarsGradient, false);
LOWBIT_TFQ_BENCH(per_channel_fast, Kind::kPerChannel, true);
LOWBIT_TFQ_BENCH(per_channel_reference, Kind::kPerChannel, false);
LOWBIT_TFQ_BENCH(per_channel_gradient_fast, Kind::kPerChannelGradient, true);
LOWBIT_TFQ_BENCH(per_channel_gradient_reference, Kind::kPerChannelGradient, false);
LOWBIT_TFQ_BENCH(min_max_fast, Kind::kMinMax, true);
LOWBIT_TFQ_BENCH(min_max_reference, Kind::kMinMax, false);

}  // namespace
}  // namespace lowbit

BENCHMARK_MAIN();
