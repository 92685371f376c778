// int8 qconv2d / qfully_connected / qadd (include/lowbit/ops/int8.h): the fast kernel the executor
// would choose (AVX-512 VNNI, else AVX2) against the reference, kernels called directly on
// preallocated outputs with params prepared once (as a plan does), in GOP/s = 2 * MACs / time.
//   bench CNN (input 28x28x1), batch 1 and 256:
//     cnn_conv1  3x3 1 -> 32, same, ReLU          cnn_conv2  3x3 32 -> 64, stride 2, same, ReLU
//     cnn_conv3  3x3 64 -> 64, stride 2, same     cnn_dense  64 -> 10 (after global avg pool)
//   MobileNetV2-style, batch 1:
//     mbv2_expand 1x1 112x112x16 -> 96            mbv2_dw 3x3 depthwise 56x56x144, stride 1
//     mbv2_last 1x1 7x7x320 -> 1280              mbv2_first 3x3 224x224x3 -> 32, stride 2
//     mbv2_dw_b<i>: the 3x3 depthwise conv of block i (every distinct shape of the 17 blocks)
//   BM_QAdd: qadd on MobileNetV2's first and last residual shapes, each fast row and the
//     reference, in elements/s.
//   BM_Elementwise: requantize, qlogistic, qtanh, dequantize on 10^3 and 10^5 codes, and
//   BM_QSoftmax: qsoftmax on [256, 10] and [8, 1001]; each fast row and the reference, in
//     elements/s (kernels/fast/int8_lut.h).
// GB/s counts the activation bytes read and written. Arguments: batch, threads. Codes are
// uniform random; per-channel weight scales, double rounding, ReLU.
//
// BM_PeakVnni: the int8 peak of one core, 16 independent vpdpbusd zmm chains (64 u8 x s8
// multiply-adds each), in GOP/s = 2 * MACs / time.
//
//   ./build/bench/int8_ops_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <string>
#include <vector>

#include "lowbit/isa.h"
#include "lowbit/op.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"

namespace lowbit {
namespace {

Tensor random_codes(const Shape& s, uint64_t seed, int64_t lo, int64_t hi, DType dtype) {
  Rng rng(seed);
  Tensor t(s, dtype);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.set_from_double(
        i, static_cast<double>(
               lo + static_cast<int64_t>(rng.next_u32() % static_cast<uint32_t>(hi - lo + 1))));
  return t;
}

struct Shape4 {
  int64_t h, w, c;  // input
  int64_t k, out_c, stride, groups;
  bool dense;  // qfully_connected on [batch, c] x [c, out_c]
};

Attrs quant_attrs(int64_t channels) {
  std::vector<double> sw;
  for (int64_t c = 0; c < channels; ++c) sw.push_back(0.002 + 0.0001 * static_cast<double>(c % 7));
  return {{"input_scale", 0.031}, {"input_zero_point", -3},    {"weight_scales", sw},
          {"output_scale", 0.1},  {"output_zero_point", -128}, {"activation", "relu"}};
}

void BM_Int8(benchmark::State& state, Shape4 s, bool fast) {
  const int64_t batch = state.range(0);
  set_num_threads(static_cast<int>(state.range(1)));
  std::vector<Tensor> in;
  Attrs attrs = quant_attrs(s.out_c);
  int64_t macs = 0;
  const char* op = s.dense ? "qfully_connected" : "qconv2d";
  if (s.dense) {
    in = {random_codes({batch, s.c}, 1, -128, 127, DType::kS8),
          random_codes({s.c, s.out_c}, 2, -127, 127, DType::kS8),
          random_codes({s.out_c}, 3, -2000, 2000, DType::kS32)};
    macs = batch * s.c * s.out_c;
  } else {
    in = {random_codes({batch, s.h, s.w, s.c}, 1, -128, 127, DType::kS8),
          random_codes({s.k, s.k, s.c / s.groups, s.out_c}, 2, -127, 127, DType::kS8),
          random_codes({s.out_c}, 3, -2000, 2000, DType::kS32)};
    attrs.set("padding", "same");
    attrs.set("strides", std::vector<int64_t>{s.stride, s.stride});
    if (s.groups > 1) attrs.set("groups", s.groups);
    const int64_t oh = (s.h + s.stride - 1) / s.stride, ow = (s.w + s.stride - 1) / s.stride;
    macs = batch * oh * ow * s.out_c * s.k * s.k * (s.c / s.groups);
  }
  const OpDef& def = find_op(op);
  std::vector<ValueType> types;
  for (const Tensor& t : in) types.push_back({t.dtype(), t.shape()});
  const std::vector<ValueType> out_types = infer_op(def, types, attrs);
  std::vector<Tensor> out;
  for (const ValueType& t : out_types) out.emplace_back(t.shape, t.dtype);
  const std::any params = prepare_op(def, types, out_types, attrs);
  const KernelCtx ctx{in, out, &params};
  const FastKernel* best = choose_kernel(def, ctx, KernelChoice::kFastest);
  if (fast && !best) {
    state.SkipWithError("no fast kernel on this CPU");
    return;
  }
  const KernelFn& run = fast ? best->run : def.reference;
  if (fast) state.SetLabel(best->name);
  for (auto _ : state) {
    run(ctx);
    benchmark::ClobberMemory();
  }
  state.counters["GOP/s"] =
      benchmark::Counter(static_cast<double>(2 * macs * state.iterations()),
                         benchmark::Counter::kIsRate, benchmark::Counter::OneK::kIs1000);
  // Activation bytes read and written (the weights are small and stay in cache).
  state.counters["GB/s"] =
      benchmark::Counter(static_cast<double>((in[0].numel() + out[0].numel()) * state.iterations()),
                         benchmark::Counter::kIsRate, benchmark::Counter::OneK::kIs1000);
  set_num_threads(1);
}

// qadd on a MobileNetV2 residual tensor [1, h, w, c] (elements/s), each listed row against the
// reference: `row` is a fast kernel's name, or "" for the reference.
void BM_QAdd(benchmark::State& state, int64_t h, int64_t w, int64_t c, std::string row) {
  const std::vector<Tensor> in = {random_codes({1, h, w, c}, 4, -128, 127, DType::kS8),
                                  random_codes({1, h, w, c}, 5, -128, 127, DType::kS8)};
  const Attrs attrs{{"input1_scale", 0.031},  {"input1_zero_point", -3}, {"input2_scale", 0.047},
                    {"input2_zero_point", 9}, {"output_scale", 0.06},    {"output_zero_point", -1}};
  const OpDef& def = find_op("qadd");
  std::vector<ValueType> types;
  for (const Tensor& t : in) types.push_back({t.dtype(), t.shape()});
  const std::vector<ValueType> out_types = infer_op(def, types, attrs);
  std::vector<Tensor> out{Tensor(out_types[0].shape, out_types[0].dtype)};
  const std::any params = prepare_op(def, types, out_types, attrs);
  const KernelCtx ctx{in, out, &params};
  const KernelFn* run = &def.reference;
  for (const FastKernel& fk : def.fast)
    if (fk.name == row) {
      if (!cpu_has(fk.isa)) {
        state.SkipWithError("this CPU lacks the row's ISA");
        return;
      }
      run = &fk.run;
    }
  for (auto _ : state) {
    (*run)(ctx);
    benchmark::ClobberMemory();
  }
  state.counters["elements/s"] =
      benchmark::Counter(static_cast<double>(h * w * c * state.iterations()),
                         benchmark::Counter::kIsRate, benchmark::Counter::OneK::kIs1000);
}
BENCHMARK_CAPTURE(BM_QAdd, mbv2_56x56x24_avx512, 56, 56, 24, "qadd_s8__avx512")->UseRealTime();
BENCHMARK_CAPTURE(BM_QAdd, mbv2_56x56x24_avx2, 56, 56, 24, "qadd_s8__avx2")->UseRealTime();
BENCHMARK_CAPTURE(BM_QAdd, mbv2_56x56x24_reference, 56, 56, 24, "")->UseRealTime();
BENCHMARK_CAPTURE(BM_QAdd, mbv2_7x7x160_avx512, 7, 7, 160, "qadd_s8__avx512")->UseRealTime();
BENCHMARK_CAPTURE(BM_QAdd, mbv2_7x7x160_avx2, 7, 7, 160, "qadd_s8__avx2")->UseRealTime();
BENCHMARK_CAPTURE(BM_QAdd, mbv2_7x7x160_reference, 7, 7, 160, "")->UseRealTime();

// One listed row of `op` (or the reference, row "") on `in`, in elements/s of input 0.
void run_row(benchmark::State& state, const std::string& op, const std::vector<Tensor>& in,
             const Attrs& attrs, const std::string& row) {
  const OpDef& def = find_op(op);
  std::vector<ValueType> types;
  for (const Tensor& t : in) types.push_back({t.dtype(), t.shape()});
  const std::vector<ValueType> out_types = infer_op(def, types, attrs);
  std::vector<Tensor> out{Tensor(out_types[0].shape, out_types[0].dtype)};
  const std::any params = prepare_op(def, types, out_types, attrs);
  const KernelCtx ctx{in, out, &params};
  const KernelFn* run = &def.reference;
  for (const FastKernel& fk : def.fast)
    if (fk.name == row) {
      if (!cpu_has(fk.isa)) {
        state.SkipWithError("this CPU lacks the row's ISA");
        return;
      }
      run = &fk.run;
    }
  if (!row.empty() && run == &def.reference) {
    state.SkipWithError("no such row");
    return;
  }
  for (auto _ : state) {
    (*run)(ctx);
    benchmark::ClobberMemory();
  }
  state.counters["elements/s"] =
      benchmark::Counter(static_cast<double>(in[0].numel() * state.iterations()),
                         benchmark::Counter::kIsRate, benchmark::Counter::OneK::kIs1000);
}

// The table ops and dequantize on n codes (a MobileNetV2 activation is 10^4..10^6 codes).
void BM_Elementwise(benchmark::State& state, std::string op, std::string row) {
  const int64_t n = state.range(0);
  Attrs attrs;
  if (op == "requantize")
    attrs = {{"input_scale", 0.031},
             {"input_zero_point", -3},
             {"output_scale", 0.047},
             {"output_zero_point", 9}};
  else if (op == "dequantize")
    attrs = {{"scale", 0.031}, {"zero_point", -3}};
  else
    attrs = {{"input_scale", 0.05}, {"input_zero_point", -3}};
  run_row(state, op, {random_codes({n}, 6, -128, 127, DType::kS8)}, attrs, row);
}
#define LOWBIT_ELEMENTWISE(op)                                                \
  BENCHMARK_CAPTURE(BM_Elementwise, op##_avx512, #op, #op "_s8__avx512_vbmi") \
      ->Arg(1000)                                                             \
      ->Arg(100000)                                                           \
      ->UseRealTime();                                                        \
  BENCHMARK_CAPTURE(BM_Elementwise, op##_avx2, #op, #op "_s8__avx2")          \
      ->Arg(1000)                                                             \
      ->Arg(100000)                                                           \
      ->UseRealTime();                                                        \
  BENCHMARK_CAPTURE(BM_Elementwise, op##_reference, #op, "")->Arg(1000)->Arg(100000)->UseRealTime()
LOWBIT_ELEMENTWISE(requantize);
LOWBIT_ELEMENTWISE(qlogistic);
LOWBIT_ELEMENTWISE(qtanh);
BENCHMARK_CAPTURE(BM_Elementwise, dequantize_avx512, "dequantize", "dequantize_s8_f32__avx512")
    ->Arg(1000)
    ->Arg(100000)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Elementwise, dequantize_avx2, "dequantize", "dequantize_s8_f32__avx2")
    ->Arg(1000)
    ->Arg(100000)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Elementwise, dequantize_reference, "dequantize", "")
    ->Arg(1000)
    ->Arg(100000)
    ->UseRealTime();

// qsoftmax on [rows, depth]: a classifier's 10 or 1000 classes, and a wide row.
void BM_QSoftmax(benchmark::State& state, std::string row) {
  const int64_t rows = state.range(0), depth = state.range(1);
  run_row(state, "qsoftmax", {random_codes({rows, depth}, 7, -128, 127, DType::kS8)},
          {{"input_scale", 0.1}, {"input_zero_point", -3}}, row);
}
#define LOWBIT_SOFTMAX(label, row) \
  BENCHMARK_CAPTURE(BM_QSoftmax, label, row)->Args({256, 10})->Args({8, 1001})->UseRealTime()
LOWBIT_SOFTMAX(avx512, "qsoftmax_s8__avx512_vbmi");
LOWBIT_SOFTMAX(avx2, "qsoftmax_s8__avx2");
LOWBIT_SOFTMAX(reference, "");

#define LOWBIT_X16(M) \
  M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
__attribute__((target("avx512f,avx512vnni"))) int64_t peak_vnni_loop(int64_t iters) {
  __m512i a = _mm512_set1_epi32(0x01010101), b = _mm512_set1_epi32(0x01ff01ff);
  __asm__ volatile("" : "+v"(a), "+v"(b));  // opaque: nothing to fold
#define LOWBIT_DECL(i) __m512i acc##i = _mm512_set1_epi32(i);
#define LOWBIT_STEP(i) acc##i = _mm512_dpbusd_epi32(acc##i, a, b);
#define LOWBIT_SUM(i) s = _mm512_add_epi32(s, acc##i);
  LOWBIT_X16(LOWBIT_DECL)
  for (int64_t it = 0; it < iters; ++it) {
    LOWBIT_X16(LOWBIT_STEP)
  }
  __m512i s = _mm512_setzero_si512();
  LOWBIT_X16(LOWBIT_SUM)
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, s);
  int64_t sum = 0;
  for (int32_t v : lanes) sum += v;
  return sum;
}

void BM_PeakVnni(benchmark::State& state) {
  if (!cpu_has(Isa::kAvx512Vnni)) {
    state.SkipWithError("no AVX-512 VNNI on this CPU");
    return;
  }
  constexpr int64_t kIters = 1 << 16;
  for (auto _ : state) benchmark::DoNotOptimize(peak_vnni_loop(kIters));
  state.counters["GOP/s"] =
      benchmark::Counter(static_cast<double>(2 * 64 * 16 * kIters * state.iterations()),
                         benchmark::Counter::kIsRate, benchmark::Counter::OneK::kIs1000);
}
BENCHMARK(BM_PeakVnni)->UseRealTime()->Unit(benchmark::kMicrosecond);

const Shape4 kConv1{28, 28, 1, 3, 32, 1, 1, false};
const Shape4 kConv2{28, 28, 32, 3, 64, 2, 1, false};
const Shape4 kConv3{14, 14, 64, 3, 64, 2, 1, false};
const Shape4 kDense{1, 1, 64, 1, 10, 1, 1, true};
const Shape4 kExpand{112, 112, 16, 1, 96, 1, 1, false};
const Shape4 kDepthwise{56, 56, 144, 3, 144, 1, 144, false};
const Shape4 kLast{7, 7, 320, 1, 1280, 1, 1, false};
// MobileNetV2 1.0 / 224: the first conv and the 3x3 depthwise convs of its 17 blocks (how many
// blocks have each shape in the name's comment; mbv2_dw above is block 2).
const Shape4 kFirst{224, 224, 3, 3, 32, 2, 1, false};
const Shape4 kDw112{112, 112, 32, 3, 32, 1, 32, false};    // block 0
const Shape4 kDw112s2{112, 112, 96, 3, 96, 2, 96, false};  // block 1
const Shape4 kDw56s2{56, 56, 144, 3, 144, 2, 144, false};  // block 3
const Shape4 kDw28{28, 28, 192, 3, 192, 1, 192, false};    // blocks 4, 5
const Shape4 kDw28s2{28, 28, 192, 3, 192, 2, 192, false};  // block 6
const Shape4 kDw14{14, 14, 384, 3, 384, 1, 384, false};    // blocks 7-10
const Shape4 kDw14b{14, 14, 576, 3, 576, 1, 576, false};   // blocks 11, 12
const Shape4 kDw14s2{14, 14, 576, 3, 576, 2, 576, false};  // block 13
const Shape4 kDw7{7, 7, 960, 3, 960, 1, 960, false};       // blocks 14-16
// Its 1x1 convs other than mbv2_expand / mbv2_last: expands (few input channels, output-stage
// bound) and projections (deep, few output channels).
const Shape4 kExpand56{56, 56, 24, 1, 144, 1, 1, false};  // blocks 2 (and 3)
const Shape4 kProj112{112, 112, 32, 1, 16, 1, 1, false};  // block 0
const Shape4 kProj14{14, 14, 384, 1, 64, 1, 1, false};    // blocks 7-9
const Shape4 kProj7{7, 7, 960, 1, 160, 1, 1, false};      // blocks 14, 15

#define LOWBIT_INT8_CNN(label, shape)                         \
  BENCHMARK_CAPTURE(BM_Int8, label##_fast, shape, true)       \
      ->ArgsProduct({{1, 256}, {1, 2}})                       \
      ->UseRealTime()                                         \
      ->Unit(benchmark::kMicrosecond);                        \
  BENCHMARK_CAPTURE(BM_Int8, label##_reference, shape, false) \
      ->ArgsProduct({{1, 256}, {1, 2}})                       \
      ->UseRealTime()                                         \
      ->Unit(benchmark::kMicrosecond)
#define LOWBIT_INT8_B1(label, shape)                          \
  BENCHMARK_CAPTURE(BM_Int8, label##_fast, shape, true)       \
      ->ArgsProduct({{1}, {1, 2}})                            \
      ->UseRealTime()                                         \
      ->Unit(benchmark::kMicrosecond);                        \
  BENCHMARK_CAPTURE(BM_Int8, label##_reference, shape, false) \
      ->ArgsProduct({{1}, {1, 2}})                            \
      ->UseRealTime()                                         \
      ->Unit(benchmark::kMicrosecond)

LOWBIT_INT8_CNN(cnn_conv1, kConv1);
LOWBIT_INT8_CNN(cnn_conv2, kConv2);
LOWBIT_INT8_CNN(cnn_conv3, kConv3);
LOWBIT_INT8_CNN(cnn_dense, kDense);
LOWBIT_INT8_B1(mbv2_expand, kExpand);
LOWBIT_INT8_B1(mbv2_dw, kDepthwise);
LOWBIT_INT8_B1(mbv2_last, kLast);
LOWBIT_INT8_B1(mbv2_first, kFirst);
LOWBIT_INT8_B1(mbv2_dw_b0, kDw112);
LOWBIT_INT8_B1(mbv2_dw_b1, kDw112s2);
LOWBIT_INT8_B1(mbv2_dw_b3, kDw56s2);
LOWBIT_INT8_B1(mbv2_dw_b4, kDw28);
LOWBIT_INT8_B1(mbv2_dw_b6, kDw28s2);
LOWBIT_INT8_B1(mbv2_dw_b7, kDw14);
LOWBIT_INT8_B1(mbv2_dw_b11, kDw14b);
LOWBIT_INT8_B1(mbv2_dw_b13, kDw14s2);
LOWBIT_INT8_B1(mbv2_expand_b2, kExpand56);
LOWBIT_INT8_B1(mbv2_project_b0, kProj112);
LOWBIT_INT8_B1(mbv2_project_b7, kProj14);
LOWBIT_INT8_B1(mbv2_project_b14, kProj7);
LOWBIT_INT8_B1(mbv2_dw_b14, kDw7);

}  // namespace
}  // namespace lowbit

BENCHMARK_MAIN();
