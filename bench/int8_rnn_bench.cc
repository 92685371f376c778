// The integer LSTM and GRU (qlstm, qgru; include/lowbit/ops/int8.h): each fast row
// (src/kernels/fast/int8_rnn.h: AVX-512 VNNI, AVX2) against the reference, kernels called
// directly on preallocated outputs with params prepared once (as a plan does), one thread, in
// sequences/s. Shapes: batch 32 and 1, T 20, 32 input features, 64 units, return_sequences,
// a timestep mask with about one step in eight false (GRU: reset_after). Codes uniform random.
//
//   ./build/bench/int8_rnn_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "lowbit/isa.h"
#include "lowbit/op.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"

namespace lowbit {
namespace {

Tensor random_codes(const Shape& s, Rng& rng, int64_t lo, int64_t hi, DType dtype) {
  Tensor t(s, dtype);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.set_from_double(
        i, static_cast<double>(
               lo + static_cast<int64_t>(rng.next_u32() % static_cast<uint32_t>(hi - lo + 1))));
  return t;
}

// `row`: a fast kernel's name suffix ("avx512_vnni", "avx2") or "" for the reference.
void BM_QRnn(benchmark::State& state, std::string op, int64_t batch, std::string row) {
  set_num_threads(1);
  constexpr int64_t kT = 20, kD = 32, kU = 64;
  const bool lstm = op == "qlstm";
  const int64_t gu = (lstm ? 4 : 3) * kU;
  Rng rng(3);
  std::vector<Tensor> in = {random_codes({batch, kT, kD}, rng, -128, 127, DType::kS8),
                            random_codes({kD, gu}, rng, -127, 127, DType::kS8),
                            random_codes({kU, gu}, rng, -127, 127, DType::kS8),
                            random_codes({gu}, rng, -20000, 20000, DType::kS32)};
  if (!lstm) in.push_back(random_codes({gu}, rng, -20000, 20000, DType::kS32));
  Tensor mask({batch, kT}, DType::kBool);
  for (int64_t i = 0; i < mask.numel(); ++i) mask.data<bool>()[i] = rng.next_u32() % 8 != 0;
  in.push_back(mask);
  const std::vector<double> sw(lstm ? 4 : 3, 0.004);
  Attrs attrs{{"input_scale", 0.03},       {"input_zero_point", -5},
              {"hidden_scale", 0.008},     {"hidden_zero_point", 3},
              {"input_weight_scales", sw}, {"recurrent_weight_scales", sw},
              {"return_sequences", true}};
  if (lstm) attrs.set("cell_int_bits", int64_t{2});
  const OpDef& def = find_op(op);
  std::vector<ValueType> types;
  for (const Tensor& t : in) types.push_back({t.dtype(), t.shape()});
  const std::vector<ValueType> out_types = infer_op(def, types, attrs);
  std::vector<Tensor> out{Tensor(out_types[0].shape, out_types[0].dtype)};
  const std::any params = prepare_op(def, types, out_types, attrs);
  const KernelCtx ctx{in, out, &params};
  const KernelFn* run = &def.reference;
  for (const FastKernel& fk : def.fast)
    if (!row.empty() && fk.name == op + "_s8__" + row) {
      if (!cpu_has(fk.isa)) {
        state.SkipWithError("this CPU lacks the row's ISA");
        return;
      }
      run = &fk.run;
      state.SetLabel(fk.name);
    }
  for (auto _ : state) {
    (*run)(ctx);
    benchmark::ClobberMemory();
  }
  state.counters["seq/s"] =
      benchmark::Counter(static_cast<double>(batch * state.iterations()),
                         benchmark::Counter::kIsRate, benchmark::Counter::OneK::kIs1000);
}

#define LOWBIT_QRNN(op, batch)                                                       \
  BENCHMARK_CAPTURE(BM_QRnn, op##_b##batch##_avx512_vnni, #op, batch, "avx512_vnni") \
      ->UseRealTime()                                                                \
      ->Unit(benchmark::kMicrosecond);                                               \
  BENCHMARK_CAPTURE(BM_QRnn, op##_b##batch##_avx2, #op, batch, "avx2")               \
      ->UseRealTime()                                                                \
      ->Unit(benchmark::kMicrosecond);                                               \
  BENCHMARK_CAPTURE(BM_QRnn, op##_b##batch##_reference, #op, batch, "")              \
      ->UseRealTime()                                                                \
      ->Unit(benchmark::kMicrosecond)

LOWBIT_QRNN(qlstm, 32);
LOWBIT_QRNN(qlstm, 1);
LOWBIT_QRNN(qgru, 32);
LOWBIT_QRNN(qgru, 1);

}  // namespace
}  // namespace lowbit

BENCHMARK_MAIN();
