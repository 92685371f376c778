// Fast TF fake-quant kernels (src/kernels/fast/fake_quant.cc), AVX-512F and AVX2 builds of the
// same drivers, bit-identical to the reference kernels of src/ops/fake_quant.cc.
#pragma once

#include "kernels/fake_quant_formulas.h"

namespace lowbit::kernels {

// Which op a call computes (the ops of include/lowbit/ops/fake_quant.h), and the roles of
// FakeQuantIo it reads and writes:
//   kArgs                 x -> y (range: config.min/max)
//   kVars, kPerChannel    x, min, max -> y
//   kArgsGradient         dy, x -> y (= dx)
//   kVarsGradient, kPerChannelGradient   dy, x, min, max -> y (= dx), lo (= dmin), hi (= dmax)
//   kMinMax               x -> lo, hi (per tensor, or per channel with config.per_channel)
enum class FakeQuantOp {
  kArgs,
  kVars,
  kPerChannel,
  kArgsGradient,
  kVarsGradient,
  kPerChannelGradient,
  kMinMax
};

void fake_quant_f32__avx512(FakeQuantOp op, const FakeQuantConfig& config, const FakeQuantIo& io);
void fake_quant_f32__avx2(FakeQuantOp op, const FakeQuantConfig& config, const FakeQuantIo& io);

}  // namespace lowbit::kernels
