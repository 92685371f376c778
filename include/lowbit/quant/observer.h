// PyTorch observers (torch.ao.quantization MinMaxObserver, MovingAverageMinMaxObserver and their
// per-channel variants) as pure functions over Operands: given the old state tensors and a
// batch, they return the new state; calculate_qparams turns a state into (scale, zero_point) for
// ops::fake_quantize_per_tensor_affine / _per_channel_affine. A layer keeps the state as
// non-trainable variables and records the update (Graph::add_update), so observing runs inside
// the training graph. Numerics: quantization-semantics.md section 4.2, bit for bit (f32 ops).
//
//   quant::ObserverConfig cfg;                      // quint8, per tensor affine, reduce_range off
//   auto st = quant::observer_initial_state(cfg);   // min +inf, max -inf: "nothing observed"
//   st = quant::moving_average_observer_update(st, x, cfg);
//   auto qp = quant::calculate_qparams(st, cfg);    // qp.scale, qp.zero_point (f32, integer)
//   const ops::QuantRange r = quant::observer_quant_range(cfg);
//   Tensor y = ops::fake_quantize_per_tensor_affine(x, qp.scale, qp.zero_point, r.min,
//                                                   r.max);
//
// State: min_val, max_val, f32 rank 0 (per tensor) or [C] (per channel, C = x's size along
// ch_axis). Batch statistics are exact (min/max). Observers are not differentiated: the op
// "calculate_qparams" has no gradient rule, and the non-learnable fake-quant ops it feeds give
// scale and zero_point no gradient, so autodiff never reaches it. (Feeding its outputs to a
// learnable op would ask for that gradient: UnsupportedError.)
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "lowbit/ops.h"

namespace lowbit::quant {

enum class TorchQDType { kQUInt8, kQInt8 };
enum class QScheme {
  kPerTensorAffine,
  kPerTensorSymmetric,
  kPerChannelAffine,
  kPerChannelSymmetric
};

inline bool is_per_channel(QScheme s) {
  return s == QScheme::kPerChannelAffine || s == QScheme::kPerChannelSymmetric;
}
inline bool is_symmetric(QScheme s) {
  return s == QScheme::kPerTensorSymmetric || s == QScheme::kPerChannelSymmetric;
}

// An observer's constructor arguments (PyTorch's defaults).
struct ObserverConfig {
  TorchQDType dtype = TorchQDType::kQUInt8;
  QScheme qscheme = QScheme::kPerTensorAffine;
  bool reduce_range = false;
  // A custom range (both or neither): PyTorch's "has_customized_qrange".
  std::optional<int64_t> quant_min, quant_max;
  double averaging_constant = 0.01;  // moving average: v <- v + c (batch - v)
  int ch_axis = 0;                   // per-channel schemes; negative counts from the end
  double eps = std::numeric_limits<float>::epsilon();  // smallest scale (2^-23)
};

// The effective integer range (PyTorch 1.13 calculate_qmin_qmax):
//   no custom range: quint8 [0, 255], qint8 [-128, 127]; with reduce_range quint8 [0, 127],
//     qint8 [-64, 63];
//   custom [a, b]: must satisfy a <= 0 <= b, a < b and n = b - a + 1 <= 256 (ValueError);
//     quint8 gives [0, n - 1], qint8 [(-n) // 2, n // 2 - 1] (so qint8 [-127, 127] becomes
//     [-128, 126], as in PyTorch); reduce_range then halves both ends with floor division.
//   Both quant_min and quant_max or neither: ValueError otherwise.
ops::QuantRange observer_quant_range(const ObserverConfig& c);

// The zero point of symmetric schemes: 0, except quint8: 128, or (quant_min + quant_max) // 2 of
// the effective range with a custom range.
int64_t symmetric_zero_point(const ObserverConfig& c);

template <Operand T>
struct ObserverState {
  T min_val;
  T max_val;
};

template <Operand T>
struct QParams {
  T scale;       // f32, >= eps
  T zero_point;  // f32 holding an integer
};

// min_val = +inf, max_val = -inf (nothing observed yet), rank 0 per tensor or [channels].
ObserverState<Tensor> observer_initial_state(const ObserverConfig& c, int64_t channels = 1);

// The reduction axes of x for the config: {} (meaning all) per tensor, all but ch_axis per
// channel. Throws ValueError if ch_axis is outside [-rank, rank), ShapeError for a per-channel
// scalar.
std::vector<int64_t> observer_reduce_axes(const Shape& x, const ObserverConfig& c);

// Min and max of one batch (torch.aminmax): rank 0, or [C] per channel. NaN propagates.
template <Operand T>
ObserverState<T> batch_min_max(const T& x, const ObserverConfig& c) {
  const std::vector<int64_t> axes = observer_reduce_axes(x.shape(), c);
  if (is_per_channel(c.qscheme) && axes.empty()) return {x, x};  // x is [C]: nothing to reduce
  return {ops::min(x, axes), ops::max(x, axes)};
}

// MinMaxObserver / PerChannelMinMaxObserver: min_val = min(batch_min, min_val), max likewise.
template <Operand T>
ObserverState<T> minmax_observer_update(const ObserverState<T>& s, const T& x,
                                        const ObserverConfig& c) {
  const ObserverState<T> b = batch_min_max(x, c);
  return {ops::minimum(b.min_val, s.min_val), ops::maximum(b.max_val, s.max_val)};
}

// MovingAverageMinMaxObserver / MovingAveragePerChannelMinMaxObserver: the first batch sets the
// state (an entry whose min is +inf and max -inf), later ones move it:
//   min_val = min_val + c * (batch_min - min_val)     (f32 ops, c = f32(averaging_constant))
// and likewise max_val. Per channel the test is made per entry.
template <Operand T>
ObserverState<T> moving_average_observer_update(const ObserverState<T>& s, const T& x,
                                                const ObserverConfig& c) {
  const ObserverState<T> b = batch_min_max(x, c);
  const T first = ops::logical_and(ops::equal(s.min_val, ops::scalar_like(s.min_val, INFINITY)),
                                   ops::equal(s.max_val, ops::scalar_like(s.max_val, -INFINITY)));
  const T k = ops::scalar_like(s.min_val, c.averaging_constant);
  const T mn = s.min_val + k * (b.min_val - s.min_val);
  const T mx = s.max_val + k * (b.max_val - s.max_val);
  return {ops::where(first, b.min_val, mn), ops::where(first, b.max_val, mx)};
}

// (scale, zero_point) from a state, elementwise (op "calculate_qparams"), with
// min_neg = min(min_val, 0), max_pos = max(max_val, 0), all f32:
//   affine:    scale = max((max_pos - min_neg) / f32(quant_max - quant_min), eps)
//              zero_point = clamp(quant_min - round_even(min_neg / scale), quant_min, quant_max)
//   symmetric: scale = max(max(-min_neg, max_pos) / f32((quant_max - quant_min) / 2), eps)
//              (8 bit: / 127.5), zero_point = `zero_point`
// An entry never observed (min +inf, max -inf) gives scale 1, zero point 0 (PyTorch's
// check_min_max_valid); an all-zero batch gives scale eps and (affine) zero point quant_min.
template <Operand T>
QParams<T> affine_qparams(const T& min_val, const T& max_val, int64_t quant_min, int64_t quant_max,
                          double eps = std::numeric_limits<float>::epsilon()) {
  auto r = ops::apply(
      "calculate_qparams", {min_val, max_val},
      {{"quant_min", quant_min}, {"quant_max", quant_max}, {"symmetric", false}, {"eps", eps}});
  return {r[0], r[1]};
}
template <Operand T>
QParams<T> symmetric_qparams(const T& min_val, const T& max_val, int64_t quant_min,
                             int64_t quant_max, int64_t zero_point,
                             double eps = std::numeric_limits<float>::epsilon()) {
  auto r = ops::apply("calculate_qparams", {min_val, max_val},
                      {{"quant_min", quant_min},
                       {"quant_max", quant_max},
                       {"symmetric", true},
                       {"zero_point", zero_point},
                       {"eps", eps}});
  return {r[0], r[1]};
}
// The observer's qparams: its effective range, scheme and eps.
template <Operand T>
QParams<T> calculate_qparams(const ObserverState<T>& s, const ObserverConfig& c) {
  const ops::QuantRange r = observer_quant_range(c);
  if (is_symmetric(c.qscheme))
    return symmetric_qparams(s.min_val, s.max_val, r.min, r.max, symmetric_zero_point(c), c.eps);
  return affine_qparams(s.min_val, s.max_val, r.min, r.max, c.eps);
}

}  // namespace lowbit::quant
