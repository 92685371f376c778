// Executor overhead: what one node costs beyond its kernel, and a small network end to end.
//   BM_ExecutorChain/<op>  a chain of 1000 tiny nodes on a [1] tensor (x + c, or -x), run by an
//                          Executor; "per_node" is the time per node (kernel work is ~1 ns).
//   BM_EagerChain/<op>     the same 1000 ops called eagerly on Tensors (allocates each output).
//   BM_MlpForward          a 10-layer MLP forward pass (matmul + bias + relu, width 256,
//                          batch 64) through an Executor, in GFLOP/s of its matmuls.
//
//   ./build/bench/executor_bench
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"

namespace lowbit {
namespace {

constexpr int kChainNodes = 1000;

bool has_op(const std::string& name) {
  for (const OpDef* d : all_ops())
    if (d->name == name) return true;
  return false;
}

// Skips the benchmark when `op` is not registered (yet); returns whether it is.
bool require_op(benchmark::State& state, const char* op) {
  if (has_op(op)) return true;
  static std::string message;  // SkipWithError keeps the pointer
  message = std::string("op ") + op + " is not registered";
  state.SkipWithError(message.c_str());
  return false;
}

Tensor random_tensor(const Shape& s, uint64_t seed) {
  Rng rng(seed);
  Tensor t(s, DType::kF32);
  for (float& v : t.span<float>()) v = rng.uniform(-1.0f, 1.0f);
  return t;
}

// One step of the chain: x + c for "add", op(x) for a unary op.
template <Operand T>
T chain_step(const std::string& op, const T& x, const T& c) {
  if (op == "add") return ops::apply1(op, {x, c});
  return ops::apply1(op, {x});
}

void per_node(benchmark::State& state, int nodes) {
  state.counters["per_node"] = benchmark::Counter(
      nodes, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

void BM_ExecutorChain(benchmark::State& state, const char* op) {
  if (!require_op(state, op)) return;
  set_num_threads(1);
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {1});
  Value c = g.constant(Tensor::full({1}, 1e-3));
  Value v = x;
  for (int i = 0; i < kChainNodes; ++i) v = chain_step(op, v, c);
  Executor ex(g, {v});
  const std::vector<std::pair<Value, Tensor>> feeds = {{x, Tensor::full({1}, 1.0)}};
  for (auto _ : state) benchmark::DoNotOptimize(ex.run(feeds));
  state.SetLabel(std::to_string(ex.num_scheduled_nodes()) + " nodes scheduled");
  per_node(state, kChainNodes);
}
BENCHMARK_CAPTURE(BM_ExecutorChain, add, "add");
BENCHMARK_CAPTURE(BM_ExecutorChain, neg, "neg");

void BM_EagerChain(benchmark::State& state, const char* op) {
  if (!require_op(state, op)) return;
  set_num_threads(1);
  const Tensor x = Tensor::full({1}, 1.0), c = Tensor::full({1}, 1e-3);
  for (auto _ : state) {
    Tensor v = x;
    for (int i = 0; i < kChainNodes; ++i) v = chain_step(op, v, c);
    benchmark::DoNotOptimize(v.raw());
  }
  per_node(state, kChainNodes);
}
BENCHMARK_CAPTURE(BM_EagerChain, add, "add");
BENCHMARK_CAPTURE(BM_EagerChain, neg, "neg");

// "w3", "b7": appended rather than concatenated (GCC 12 raises a false -Wrestrict on
// "w" + std::to_string(l)).
std::string layer_name(char prefix, int layer) {
  std::string s(1, prefix);
  s += std::to_string(layer);
  return s;
}

// 10 x (matmul [64,256]x[256,256] + bias + relu). Without add/relu registered, matmuls only.
void BM_MlpForward(benchmark::State& state) {
  constexpr int kLayers = 10;
  const int64_t batch = state.range(0), width = state.range(1);
  set_num_threads(static_cast<int>(state.range(2)));
  const bool full = has_op("add") && has_op("relu");
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, width});
  Value h = x;
  for (int l = 0; l < kLayers; ++l) {
    Value w = g.variable(layer_name('w', l), random_tensor({width, width}, 10 + l));
    h = ops::matmul(h, w);
    if (full) {
      Value b = g.variable(layer_name('b', l), random_tensor({width}, 100 + l));
      h = ops::apply1("relu", {ops::apply1("add", {h, b})});
    }
  }
  Executor ex(g, {h});
  const std::vector<std::pair<Value, Tensor>> feeds = {{x, random_tensor({batch, width}, 1)}};
  for (auto _ : state) benchmark::DoNotOptimize(ex.run(feeds));
  state.SetLabel(full ? "matmul+bias+relu" : "matmul only (add/relu not registered)");
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * kLayers * batch * width * width / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  state.counters["per_layer"] = benchmark::Counter(
      kLayers, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_MlpForward)
    ->ArgNames({"batch", "width", "threads"})
    ->Args({64, 256, 1})
    ->Args({64, 256, 2})
    ->Args({1, 256, 1})
    ->UseRealTime();

}  // namespace
}  // namespace lowbit

BENCHMARK_MAIN();
