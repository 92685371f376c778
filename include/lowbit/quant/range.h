// TensorFlow's range trackers (shared quantization-semantics.md 2.1): how the min/max that a
// fake-quant op reads are estimated from the tensors flowing through it during training.
//
// Every function is pure: it takes the old state and a batch and returns the new state, as
// tensors (eager) or graph values (symbolic). A layer keeps the state as non-trainable
// variables, calls update_range() in training mode and records each field's new value as a
// state update (Graph::add_update); at inference it reads state.min / state.max unchanged.
// The fake-quant op of the same step consumes the just-updated values (as TF does).
//
//   quant::RangeConfig cfg;                               // TFMOT activations: EMA 0.999, asym.
//   auto state = quant::initial_range_state(cfg);        // Tensors: min -6, max 6
//   Graph g;  Value x = ...;
//   quant::RangeState<Value> s{g.variable("min", state.min, false),
//                              g.variable("max", state.max, false)};
//   quant::RangeState<Value> next = quant::update_range(s, x, cfg);
//   g.add_update(s.min, next.min);  g.add_update(s.max, next.max);
//   Value y = ops::fake_quant_with_min_max_vars(x, next.min, next.max);
//
// Per batch, (bmin, bmax) = ops::min_max(x, per_channel): rank 0, or [d] reducing every axis
// but the last. The target range keeps 0 inside it (TFLite requires it):
//   asymmetric: rmin = min(bmin, 0),  rmax = max(bmax, 0)
//   symmetric:  ratio = -1 if narrow_range else -(2^b - 2) / 2^b   (8 bit: -0.9921875)
//               rmin = min(bmin, bmax / ratio),  rmax = max(bmax, bmin * ratio)
// Update modes (all f32; d = f32(1 - decay) with the difference taken in f64, as TF converts
// the Python float 1 - decay):
//   kLastValue               min = rmin, max = rmax                     (weights)
//   kMovingAverage           v = v - (v - r) * d, no bias correction     (TFMOT activations,
//                                                                         init -6 / 6)
//   kMovingAverageDebiased   shadow b = b - (b - r) * d, count n = n + 1, (TF1 contrib.quantize,
//                            v = b / (1 - (1 - d)^n)  [(1 - d) in f32]    assign_moving_average's
//                                                                         default zero_debias)
//     The shadows start at 0, so the first update gives v = r (up to the f32 rounding of
//     1 - (1 - d), a relative 1.3e-5 at decay 0.999, as in TF): the initial min/max are unused.
//   kAllValues               min = min(min, rmin), max = max(max, rmax)  (TFMOT model inputs,
//                                                                         init 0 / 0)
// NaN: a batch holding NaN gives bmin = bmax = NaN (ops::min_max), so the tracked range becomes
// NaN and so does the fake-quant output: training sees the NaN instead of a silently stale range.
#pragma once

#include <cstdint>
#include <string>

#include "lowbit/ops.h"

namespace lowbit::quant {

enum class RangeMode { kLastValue, kMovingAverage, kMovingAverageDebiased, kAllValues };

// "last_value", "moving_average", "moving_average_debiased", "all_values".
const char* range_mode_name(RangeMode mode);
// The inverse of range_mode_name; throws ValueError listing the names.
RangeMode parse_range_mode(const std::string& name);

struct RangeConfig {
  RangeMode mode = RangeMode::kMovingAverage;
  bool per_channel = false;   // one range per channel of the last axis
  bool symmetric = false;     // the ratio rule above
  int num_bits = 8;           // used by the symmetric ratio
  bool narrow_range = false;  // used by the symmetric ratio
  double ema_decay = 0.999;   // moving-average modes; in [0, 1]
  double init_min = -6;       // initial state (TFMOT: -6/6 for last value and EMA, 0/0 for all
  double init_max = 6;        // values; contrib.quantize: -6/6 weights, 0/6 activations)
};

// Throws ValueError naming the field: num_bits outside [2, 16], decay outside [0, 1], or
// init_min > init_max.
void validate(const RangeConfig& config);

// The state of one tracker. min/max: f32 [] (per tensor) or [d] (per channel), what the
// fake-quant op reads. The debiased mode also keeps the shadow averages (same shape) and the
// update count (f32 [], as TF's local_step); in the other modes these are undefined. Store
// every defined field as a non-trainable weight (and save it with the model).
template <Operand T>
struct RangeState {
  T min;
  T max;
  T biased_min;  // kMovingAverageDebiased only
  T biased_max;  // kMovingAverageDebiased only
  T count;       // kMovingAverageDebiased only
};

// The initial state: min/max filled with init_min/init_max ([] or [channels]); shadows 0 and
// count 0 in the debiased mode. `channels` is required (> 0) when config.per_channel.
// Throws ValueError for an invalid config or a missing channel count.
RangeState<Tensor> initial_range_state(const RangeConfig& config, int64_t channels = 0);

// The target range of one batch (rule above) from its statistics bmin, bmax ([] or [d]).
template <Operand T>
ops::MinMax<T> range_target(const T& batch_min, const T& batch_max, bool symmetric, int num_bits,
                            bool narrow_range) {
  if (!symmetric)
    return {ops::minimum(batch_min, ops::scalar_like(batch_min, 0.0)),
            ops::maximum(batch_max, ops::scalar_like(batch_max, 0.0))};
  const double ratio =
      narrow_range ? -1.0 : -((1 << num_bits) - 2.0) / static_cast<double>(1 << num_bits);
  return {ops::minimum(batch_min, ops::div(batch_max, ops::scalar_like(batch_max, ratio))),
          ops::maximum(batch_max, ops::mul(batch_min, ops::scalar_like(batch_min, ratio)))};
}

// v - (v - r) * d with d = f32(1 - decay) (TF's assign_moving_average without debiasing).
template <Operand T>
T moving_average(const T& v, const T& r, double decay) {
  return ops::sub(v, ops::mul(ops::sub(v, r), ops::scalar_like(v, 1.0 - decay)));
}

// The new state after one batch with statistics (batch_min, batch_max) ([] or [d] as the state).
// Does not validate the config (initial_range_state does).
template <Operand T>
RangeState<T> update_range(const RangeState<T>& s, const T& batch_min, const T& batch_max,
                           const RangeConfig& config) {
  const ops::MinMax<T> r =
      range_target(batch_min, batch_max, config.symmetric, config.num_bits, config.narrow_range);
  RangeState<T> out = s;
  switch (config.mode) {
    case RangeMode::kLastValue:
      out.min = r.min;
      out.max = r.max;
      break;
    case RangeMode::kMovingAverage:
      out.min = moving_average(s.min, r.min, config.ema_decay);
      out.max = moving_average(s.max, r.max, config.ema_decay);
      break;
    case RangeMode::kMovingAverageDebiased: {
      out.biased_min = moving_average(s.biased_min, r.min, config.ema_decay);
      out.biased_max = moving_average(s.biased_max, r.max, config.ema_decay);
      out.count = ops::add(s.count, ops::scalar_like(s.count, 1.0));
      // 1 - d in f32, as TF's `1.0 - decay` on the f32 decay tensor.
      const float d = static_cast<float>(1.0 - config.ema_decay);
      const T keep = ops::scalar_like(s.count, static_cast<double>(1.0f - d));
      const T bias = ops::sub(ops::scalar_like(s.count, 1.0), ops::pow(keep, out.count));
      out.min = ops::div(out.biased_min, bias);
      out.max = ops::div(out.biased_max, bias);
      break;
    }
    case RangeMode::kAllValues:
      out.min = ops::minimum(s.min, r.min);
      out.max = ops::maximum(s.max, r.max);
      break;
  }
  return out;
}

// One training step of the tracker on a batch x: min_max(x, per_channel), then update_range.
// x: f32; per channel its last dim must match the state's [d].
template <Operand T>
RangeState<T> update_range(const RangeState<T>& s, const T& x, const RangeConfig& config) {
  const ops::MinMax<T> b = ops::min_max(x, config.per_channel);
  return update_range(s, b.min, b.max, config);
}

}  // namespace lowbit::quant
