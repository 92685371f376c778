// Matmul and conv2d (forward, backward-input, backward-filter) kernels: the plain-loop
// references against the oneDNN fast kernels, at 1 and 2 threads, in GFLOP/s (one multiply-add
// = 2 flops). The conv layers are those of the benchmark CNN at batch 64:
//   conv1: 28x28x1  -> 32, 3x3, stride 1, same
//   conv2: 28x28x32 -> 64, 3x3, stride 2, same
//   conv3: 14x14x64 -> 64, 3x3, stride 2, same
// BM_PeakFma measures the core's f32 FMA throughput (independent 512-bit FMA chains), the
// ceiling to compare the kernels with.
//
//   ./build/bench/matmul_conv_bench --benchmark_counters_tabular=true
//   ./build/bench/matmul_conv_bench --benchmark_filter='Conv.*Dnnl'
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <string>
#include <vector>

#include "kernels/dnnl/dnnl_kernels.h"
#include "kernels/reference/conv.h"
#include "kernels/reference/matmul.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"

namespace lowbit {
namespace {

using kernels::Conv2DParams;
using kernels::MatMulParams;
namespace tuning = kernels::dnnl_tuning;

std::vector<float> random_vector(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = rng.uniform(-1.0f, 1.0f);
  return v;
}

void set_flops(benchmark::State& state, double flops_per_iter) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops_per_iter / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- peak ----

__attribute__((target("avx512f"))) void BM_PeakFma(benchmark::State& state) {
  set_num_threads(static_cast<int>(state.range(0)));
  constexpr int64_t kSteps = 1 << 20;
  float sink = 0;
  for (auto _ : state) {
#pragma omp parallel reduction(+ : sink)
    {
      __m512 acc[12];
      for (int j = 0; j < 12; ++j) acc[j] = _mm512_set1_ps(0.001f * j);
      const __m512 a = _mm512_set1_ps(0.9999f), b = _mm512_set1_ps(1e-4f);
      for (int64_t i = 0; i < kSteps; ++i) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
      }
      alignas(64) float lanes[16];
      for (int j = 0; j < 12; ++j) {
        _mm512_store_ps(lanes, acc[j]);
        sink += lanes[0];
      }
    }
  }
  benchmark::DoNotOptimize(sink);
  set_flops(state, 2.0 * 16 * 12 * kSteps * state.range(0));
}
BENCHMARK(BM_PeakFma)->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime();

// ---- matmul ----

enum class Impl { kReference, kDnnl };

template <Impl kImpl>
void BM_MatMul(benchmark::State& state) {
  MatMulParams p;
  p.m = state.range(0);
  p.k = state.range(1);
  p.n = state.range(2);
  set_num_threads(static_cast<int>(state.range(3)));
  auto a = random_vector(p.m * p.k, 1), b = random_vector(p.k * p.n, 2);
  std::vector<float> c(static_cast<size_t>(p.m * p.n));
  if constexpr (kImpl == Impl::kDnnl) {
    if (!kernels::matmul_f32__dnnl_supported(p)) {
      state.SkipWithError("oneDNN declines this geometry");
      return;
    }
    state.SetLabel(tuning::matmul_impl(p));
  }
  for (auto _ : state) {
    if constexpr (kImpl == Impl::kDnnl) {
      kernels::matmul_f32__dnnl(p, a.data(), b.data(), c.data());
    } else {
      kernels::matmul_f32_reference(p, a.data(), b.data(), c.data());
    }
    benchmark::DoNotOptimize(c.data());
  }
  set_flops(state, 2.0 * p.m * p.n * p.k);
}

void matmul_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "k", "n", "threads"});
  for (int t : {1, 2}) {
    b->Args({64, 784, 256, t});
    b->Args({64, 256, 256, t});
    b->Args({512, 512, 512, t});
  }
  b->UseRealTime();
}
BENCHMARK(BM_MatMul<Impl::kReference>)->Apply(matmul_args);
BENCHMARK(BM_MatMul<Impl::kDnnl>)->Apply(matmul_args);

// Small sizes: where the per-call cost of oneDNN meets the reference (the size threshold in
// dnnl_kernels.cc). Square m = k = n, 1 thread.
void small_matmul_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "k", "n", "threads"});
  for (int t : {1, 2})
    for (int s : {2, 4, 8, 12, 16, 24, 32, 48, 64, 96}) b->Args({s, s, s, t});
}
BENCHMARK(BM_MatMul<Impl::kReference>)->Name("BM_MatMulSmall<Reference>")->Apply(small_matmul_args);
// With the size threshold off, so that oneDNN runs even below it.
void BM_MatMulSmallDnnl(benchmark::State& state) {
  tuning::set_size_thresholds(false);
  BM_MatMul<Impl::kDnnl>(state);
  tuning::set_size_thresholds(true);
}
BENCHMARK(BM_MatMulSmallDnnl)->Name("BM_MatMulSmall<Dnnl>")->Apply(small_matmul_args);

// ---- conv2d ----

Conv2DParams cnn_layer(int64_t layer, int64_t batch = 64) {
  Conv2DParams p;
  p.n = batch;
  p.k_h = p.k_w = 3;
  switch (layer) {
    case 0:
      p.in_h = p.in_w = 28, p.in_c = 1, p.out_c = 32, p.stride_h = p.stride_w = 1;
      break;
    case 1:
      p.in_h = p.in_w = 28, p.in_c = 32, p.out_c = 64, p.stride_h = p.stride_w = 2;
      break;
    default:
      p.in_h = p.in_w = 14, p.in_c = 64, p.out_c = 64, p.stride_h = p.stride_w = 2;
      break;
  }
  kernels::window_geometry(p.in_h, p.k_h, p.stride_h, 1, true, &p.out_h, &p.pad_top, &p.pad_bottom);
  kernels::window_geometry(p.in_w, p.k_w, p.stride_w, 1, true, &p.out_w, &p.pad_left, &p.pad_right);
  return p;
}

enum class Dir { kForward, kBackwardInput, kBackwardFilter };

template <Dir kDir, Impl kImpl>
void run_conv(benchmark::State& state, const Conv2DParams& p, int threads, bool blocked) {
  set_num_threads(threads);
  auto x = random_vector(p.n * p.in_h * p.in_w * p.in_c, 1);
  auto w = random_vector(p.k_h * p.k_w * p.in_c / p.groups * p.out_c, 2);
  auto y = random_vector(p.n * p.out_h * p.out_w * p.out_c, 3);
  if constexpr (kImpl == Impl::kDnnl) {
    const auto old_layout = tuning::conv_filter_layout();
    tuning::set_conv_filter_layout(blocked ? tuning::ConvFilterLayout::kBlocked
                                           : tuning::ConvFilterLayout::kPlain);
    const bool ok = kDir == Dir::kForward ? kernels::conv2d_forward_f32__dnnl_supported(p)
                    : kDir == Dir::kBackwardInput
                        ? kernels::conv2d_backward_input_f32__dnnl_supported(p)
                        : kernels::conv2d_backward_filter_f32__dnnl_supported(p);
    if (!ok) {
      tuning::set_conv_filter_layout(old_layout);
      state.SkipWithError("oneDNN declines this geometry");
      return;
    }
    state.SetLabel(kDir == Dir::kForward         ? tuning::conv2d_forward_impl(p)
                   : kDir == Dir::kBackwardInput ? tuning::conv2d_backward_input_impl(p)
                                                 : tuning::conv2d_backward_filter_impl(p));
    for (auto _ : state) {
      if constexpr (kDir == Dir::kForward) {
        kernels::conv2d_forward_f32__dnnl(p, x.data(), w.data(), y.data());
      } else if constexpr (kDir == Dir::kBackwardInput) {
        kernels::conv2d_backward_input_f32__dnnl(p, y.data(), w.data(), x.data());
      } else {
        kernels::conv2d_backward_filter_f32__dnnl(p, x.data(), y.data(), w.data());
      }
      benchmark::ClobberMemory();
    }
    tuning::set_conv_filter_layout(old_layout);
  } else {
    for (auto _ : state) {
      if constexpr (kDir == Dir::kForward) {
        kernels::conv2d_forward_f32_reference(p, x.data(), w.data(), y.data());
      } else if constexpr (kDir == Dir::kBackwardInput) {
        kernels::conv2d_backward_input_f32_reference(p, y.data(), w.data(), x.data());
      } else {
        kernels::conv2d_backward_filter_f32_reference(p, x.data(), y.data(), w.data());
      }
      benchmark::ClobberMemory();
    }
  }
  const double macs =
      static_cast<double>(p.n * p.out_h * p.out_w * p.out_c) * p.k_h * p.k_w * (p.in_c / p.groups);
  set_flops(state, 2.0 * macs);
}

template <Dir kDir, Impl kImpl>
void BM_Conv(benchmark::State& state) {
  run_conv<kDir, kImpl>(state, cnn_layer(state.range(0)), static_cast<int>(state.range(1)),
                        kImpl == Impl::kDnnl && state.range(2) != 0);
}

void conv_ref_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"layer", "threads"});
  for (int t : {1, 2})
    for (int layer : {0, 1, 2}) b->Args({layer, t});
  b->UseRealTime();
}
// filter_layout: 0 = HWIO as stored, 1 = oneDNN's blocked layout with a reorder per call.
void conv_dnnl_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"layer", "threads", "blocked"});
  for (int t : {1, 2})
    for (int layer : {0, 1, 2})
      for (int blocked : {0, 1}) b->Args({layer, t, blocked});
  b->UseRealTime();
}
BENCHMARK(BM_Conv<Dir::kForward, Impl::kReference>)->Apply(conv_ref_args);
BENCHMARK(BM_Conv<Dir::kForward, Impl::kDnnl>)->Apply(conv_dnnl_args);
BENCHMARK(BM_Conv<Dir::kBackwardInput, Impl::kReference>)->Apply(conv_ref_args);
BENCHMARK(BM_Conv<Dir::kBackwardInput, Impl::kDnnl>)->Apply(conv_dnnl_args);
BENCHMARK(BM_Conv<Dir::kBackwardFilter, Impl::kReference>)->Apply(conv_ref_args);
BENCHMARK(BM_Conv<Dir::kBackwardFilter, Impl::kDnnl>)->Apply(conv_dnnl_args);

// Small convolutions (batch 1, size x size x 4 -> 4, 3x3 same: 144 * size^2 multiply-adds),
// forward, 1 thread, oneDNN with its size threshold off: where it meets the reference.
Conv2DParams small_conv(int64_t size) {
  Conv2DParams p;
  p.in_h = p.in_w = size, p.in_c = p.out_c = 4, p.k_h = p.k_w = 3;
  kernels::window_geometry(size, 3, 1, 1, true, &p.out_h, &p.pad_top, &p.pad_bottom);
  kernels::window_geometry(size, 3, 1, 1, true, &p.out_w, &p.pad_left, &p.pad_right);
  return p;
}
template <Impl kImpl>
void BM_ConvSmall(benchmark::State& state) {
  tuning::set_size_thresholds(false);
  run_conv<Dir::kForward, kImpl>(state, small_conv(state.range(0)),
                                 static_cast<int>(state.range(1)), true);
  tuning::set_size_thresholds(true);
}
void small_conv_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"size", "threads"});
  for (int t : {1, 2})
    for (int s : {1, 2, 3, 4, 6, 8, 16, 24, 32}) b->Args({s, t});
}
BENCHMARK(BM_ConvSmall<Impl::kReference>)->Apply(small_conv_args);
BENCHMARK(BM_ConvSmall<Impl::kDnnl>)->Apply(small_conv_args);

}  // namespace
}  // namespace lowbit

BENCHMARK_MAIN();
