// Fast batch-norm kernels for the channels-last case (normalised axis last, f32), in
// src/kernels/fast/batch_norm.cc; the reference kernels are in src/ops/nn.cc.
#pragma once

#include <cstdint>

namespace lowbit::kernels {

// x viewed as [rows, channels] (the channel axis last).
struct BatchNormParams {
  int64_t rows = 0, channels = 0;
  double epsilon = 1e-3;
};

// y = gamma (x - mean) / sqrt(var + eps) + beta with the batch's mean and (biased) variance,
// which are written to mean[channels] and var[channels].
void batch_norm_training_nhwc_f32__portable(const BatchNormParams& p, const float* x,
                                            const float* gamma, const float* beta, float* y,
                                            float* mean, float* var);
// Gradient of batch_norm_training w.r.t. x, gamma and beta.
void batch_norm_training_backward_nhwc_f32__portable(const BatchNormParams& p, const float* x,
                                                     const float* gamma, const float* mean,
                                                     const float* var, const float* dy, float* dx,
                                                     float* dgamma, float* dbeta);

}  // namespace lowbit::kernels
