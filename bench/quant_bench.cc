// Fake-quant kernels against a plain copy: issue 4 asks that the fast kernels run at memory
// speed. Each benchmark runs the kernel the registry would pick (the first fast kernel that
// supports the inputs, else the reference; the label names it) on preallocated tensors and
// reports
//   GB/s        bytes read + written per second (every input and output tensor once; 1 GB =
//               1e9 bytes),
//   vs_memcpy   GB/s divided by that of BM_Memcpy at the same size and thread count,
//   vs_copy_op  the same against BM_Kernel/copy (each present when that baseline ran earlier in
//               the same process, i.e. was not filtered out).
// Sizes are those of x: 64 KiB (L2), 1 MiB (L2/L3) and 64 MiB (DRAM) of f32, at 1 and 2 threads;
// the per-channel cases view x as [n/64, 64] (channels last).
//   BM_Memcpy       memcpy; above 128 KiB (the library's parallel grain of 2^15 elements) split
//                   into one contiguous chunk per thread, as the elementwise ops split their loops
//   BM_Kernel/copy  the "cast" op f32 -> f32 (an elementwise copy through the op registry)
//   BM_Kernel/<op>  forward and backward (gradient) ops of the fake quants and min_max; an op not
//                   registered (yet) is skipped with a message.
//
//   ./build/bench/quant_bench --benchmark_counters_tabular=true
//   ./build/bench/quant_bench --benchmark_filter='Memcpy|vars'
#include <benchmark/benchmark.h>
#include <omp.h>

#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/op.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"

namespace lowbit {
namespace {

constexpr int64_t kChannels = 64;  // last-axis size of the per-channel cases

constexpr int64_t kParallelBytes = int64_t{4} << 15;  // split memcpy above this size

// GB/s of the baselines by (bytes of x, threads), for the ratios.
using RateTable = std::map<std::pair<int64_t, int>, double>;
RateTable& memcpy_gbps() {
  static RateTable m;
  return m;
}
RateTable& copy_op_gbps() {
  static RateTable m;
  return m;
}

Tensor random_tensor(const Shape& s, uint64_t seed, float lo, float hi) {
  Rng rng(seed);
  Tensor t(s, DType::kF32);
  for (float& v : t.span<float>()) v = rng.uniform(lo, hi);
  return t;
}
Tensor scalar(float v) {
  Tensor t(Shape{}, DType::kF32);
  t.span<float>()[0] = v;
  return t;
}
Tensor filled(int64_t n, float v) {
  Tensor t(Shape{n}, DType::kF32);
  for (float& e : t.span<float>()) e = v;
  return t;
}

// Which op runs on which inputs. x holds values a little beyond the quantization range, so that
// the clamp and both gradient masks are exercised.
enum class Case {
  kCopy,
  kVars,
  kVarsGrad,
  kPerChannel,
  kPerChannelGrad,
  kTorchPerTensor,
  kTorchPerTensorGrad,
  kLearnable,
  kLearnableGrad,
  kMinMax,
  kMinMaxPerChannel,
};

struct Setup {
  std::string op;
  std::vector<Tensor> inputs;
  Attrs attrs;
};

Setup make_setup(Case c, int64_t n) {
  const Tensor x = random_tensor(Shape{n}, 1, -1.2f, 1.2f);
  const Tensor dy = random_tensor(Shape{n}, 2, -1.0f, 1.0f);
  const Tensor x2 = random_tensor(Shape{n / kChannels, kChannels}, 1, -1.2f, 1.2f);
  const Tensor dy2 = random_tensor(Shape{n / kChannels, kChannels}, 2, -1.0f, 1.0f);
  const Attrs tf = {{"num_bits", int64_t{8}}, {"narrow_range", false}};
  const Attrs torch = {{"quant_min", int64_t{-128}}, {"quant_max", int64_t{127}}};
  const Attrs learnable = {
      {"quant_min", int64_t{-128}}, {"quant_max", int64_t{127}}, {"grad_factor", 1.0}};
  const float scale = 2.0f / 255.0f;
  switch (c) {
    case Case::kCopy:
      return {"cast", {x}, {{"dtype", DType::kF32}}};
    case Case::kVars:
      return {"fake_quant_with_min_max_vars", {x, scalar(-1.0f), scalar(1.0f)}, tf};
    case Case::kVarsGrad:
      return {"fake_quant_with_min_max_vars_gradient", {dy, x, scalar(-1.0f), scalar(1.0f)}, tf};
    case Case::kPerChannel:
      return {"fake_quant_with_min_max_vars_per_channel",
              {x2, filled(kChannels, -1.0f), filled(kChannels, 1.0f)},
              tf};
    case Case::kPerChannelGrad:
      return {"fake_quant_with_min_max_vars_per_channel_gradient",
              {dy2, x2, filled(kChannels, -1.0f), filled(kChannels, 1.0f)},
              tf};
    case Case::kTorchPerTensor:
      return {"fake_quantize_per_tensor_affine", {x, scalar(scale), scalar(0.0f)}, torch};
    case Case::kTorchPerTensorGrad:
      return {
          "fake_quantize_per_tensor_affine_backward", {dy, x, scalar(scale), scalar(0.0f)}, torch};
    case Case::kLearnable:
      return {
          "fake_quantize_learnable_per_tensor_affine", {x, scalar(scale), scalar(0.0f)}, learnable};
    case Case::kLearnableGrad:
      return {"fake_quantize_learnable_per_tensor_affine_backward",
              {dy, x, scalar(scale), scalar(0.0f)},
              learnable};
    case Case::kMinMax:
      return {"min_max", {x}, {{"per_channel", false}}};
    case Case::kMinMaxPerChannel:
      return {"min_max", {x2}, {{"per_channel", true}}};
  }
  return {};
}

const OpDef* registered(const std::string& name) {
  for (const OpDef* d : all_ops())
    if (d->name == name) return d;
  return nullptr;
}

int64_t bytes_of(const std::vector<Tensor>& ts) {
  int64_t b = 0;
  for (const Tensor& t : ts) b += t.numel() * static_cast<int64_t>(dtype_size(t.dtype()));
  return b;
}

// Sets GB/s and the ratios to the baselines that ran (the baselines themselves pass false for
// theirs); returns GB/s. seconds: wall time of the timed loop.
double set_rates(benchmark::State& state, int64_t bytes_per_iter, double seconds,
                 bool vs_memcpy = true, bool vs_copy_op = true) {
  const double gbps =
      static_cast<double>(bytes_per_iter) * static_cast<double>(state.iterations()) / seconds / 1e9;
  state.counters["GB/s"] = gbps;
  const auto key = std::make_pair(state.range(0), static_cast<int>(state.range(1)));
  if (auto it = memcpy_gbps().find(key); vs_memcpy && it != memcpy_gbps().end())
    state.counters["vs_memcpy"] = gbps / it->second;
  if (auto it = copy_op_gbps().find(key); vs_copy_op && it != copy_op_gbps().end())
    state.counters["vs_copy_op"] = gbps / it->second;
  return gbps;
}

void BM_Memcpy(benchmark::State& state) {
  const int64_t bytes = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  std::vector<char> src(static_cast<size_t>(bytes), 1), dst(static_cast<size_t>(bytes), 0);
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
#pragma omp parallel num_threads(threads) if (bytes > kParallelBytes)
    {
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t begin = bytes * t / nt, end = bytes * (t + 1) / nt;
      std::memcpy(dst.data() + begin, src.data() + begin, static_cast<size_t>(end - begin));
    }
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  memcpy_gbps()[{bytes, threads}] = set_rates(state, 2 * bytes, seconds, false, false);
}

void BM_Kernel(benchmark::State& state, Case c) {
  const int64_t n = state.range(0) / static_cast<int64_t>(sizeof(float));
  set_num_threads(static_cast<int>(state.range(1)));
  Setup s = make_setup(c, n);
  const OpDef* def = registered(s.op);
  if (def == nullptr) {
    static std::map<std::string, std::string> messages;  // SkipWithError keeps the pointer
    std::string& m = messages[s.op];
    m = "op " + s.op + " is not registered";
    state.SkipWithError(m.c_str());
    return;
  }
  std::vector<ValueType> in_types;
  for (const Tensor& t : s.inputs) in_types.push_back({t.dtype(), t.shape()});
  std::vector<Tensor> outs;
  const std::vector<ValueType> out_types = infer_op(*def, in_types, s.attrs);
  for (const ValueType& vt : out_types) outs.emplace_back(vt.shape, vt.dtype);
  const std::any params = prepare_op(*def, in_types, out_types, s.attrs);
  const KernelCtx ctx{s.inputs, outs, &params};
  KernelFn run = def->reference;
  std::string label = "reference";
  if (const FastKernel* k = choose_kernel(*def, ctx, KernelChoice::kFastest)) {
    run = k->run;
    label = k->name;
  }
  state.SetLabel(label);
  run(ctx);  // touch the outputs once: page faults stay out of the timing
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    run(ctx);
    benchmark::DoNotOptimize(outs[0].raw());
    benchmark::ClobberMemory();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double gbps =
      set_rates(state, bytes_of(s.inputs) + bytes_of(outs), seconds, true, c != Case::kCopy);
  if (c == Case::kCopy) copy_op_gbps()[{state.range(0), static_cast<int>(state.range(1))}] = gbps;
}

void size_thread_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"bytes", "threads"});
  for (int64_t bytes : {int64_t{64} << 10, int64_t{1} << 20, int64_t{64} << 20})
    for (int t : {1, 2}) b->Args({bytes, t});
  b->UseRealTime();
}

BENCHMARK(BM_Memcpy)->Apply(size_thread_args);
BENCHMARK_CAPTURE(BM_Kernel, copy, Case::kCopy)->Apply(size_thread_args);
BENCHMARK_CAPTURE(BM_Kernel, vars, Case::kVars)->Apply(size_thread_args);
BENCHMARK_CAPTURE(BM_Kernel, vars_grad, Case::kVarsGrad)->Apply(size_thread_args);
BENCHMARK_CAPTURE(BM_Kernel, per_channel, Case::kPerChannel)->Apply(size_thread_args);
BENCHMARK_CAPTURE(BM_Kernel, per_channel_grad, Case::kPerChannelGrad)->Apply(size_thread_args);
BENCHMARK_CAPTURE(BM_Kernel, torch_per_tensor, Case::kTorchPerTensor)->Apply(size_thread_args);
BENCHMARK_CAPTURE(BM_Kernel, torch_per_tensor_grad, Case::kTorchPerTensorGrad)
    ->Apply(size_thread_args);
BENCHMARK_CAPTURE(BM_Kernel, learnable, Case::kLearnable)->Apply(size_thread_args);
BENCHMARK_CAPTURE(BM_Kernel, learnable_grad, Case::kLearnableGrad)->Apply(size_thread_args);
BENCHMARK_CAPTURE(BM_Kernel, min_max, Case::kMinMax)->Apply(size_thread_args);
BENCHMARK_CAPTURE(BM_Kernel, min_max_per_channel, Case::kMinMaxPerChannel)->Apply(size_thread_args);

}  // namespace
}  // namespace lowbit

BENCHMARK_MAIN();
