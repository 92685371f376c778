// Fast kernels of the PyTorch-style fake-quant ops and PACT (src/kernels/fast/quantizer_ops.cc):
// one driver per op over the ISA's inner loops, bit-identical to the reference kernels of
// src/ops/quantizer_ops.cc at any thread count.
#pragma once

#include <span>

#include "kernels/quantizer_formulas.h"
#include "lowbit/tensor.h"

namespace lowbit::kernels::fqt {

// The op a call computes; `in` and `out` are the op's inputs and outputs
// (include/lowbit/ops/quantizer_ops.h), f32 and contiguous.
enum class TorchFakeQuantOp {
  kPerTensor,
  kPerChannel,
  kPerTensorBackward,
  kPerChannelBackward,
  kLearnablePerTensor,
  kLearnablePerChannel,
  kLearnablePerTensorBackward,
  kLearnablePerChannelBackward,
  kPact,
  kPactBackward
};

void fake_quantize_f32__avx512(TorchFakeQuantOp op, const TorchFakeQuantConfig& config,
                               std::span<const Tensor> in, std::span<Tensor> out);
void fake_quantize_f32__avx2(TorchFakeQuantOp op, const TorchFakeQuantConfig& config,
                             std::span<const Tensor> in, std::span<Tensor> out);
void fake_quantize_f32__portable(TorchFakeQuantOp op, const TorchFakeQuantConfig& config,
                                 std::span<const Tensor> in, std::span<Tensor> out);

}  // namespace lowbit::kernels::fqt
