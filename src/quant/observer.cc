// Host-side parts of the PyTorch observers (include/lowbit/quant/observer.h): the effective
// integer range, the symmetric zero point, the initial state and the reduction axes. The state
// updates are op compositions in the header; (scale, zero_point) is the op "calculate_qparams"
// (src/ops/quantizer_ops.cc).
#include "lowbit/quant/observer.h"

#include <cmath>

#include "lowbit/error.h"

namespace lowbit::quant {

namespace {
// Python's floor division by 2.
int64_t floor_half(int64_t v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }
}  // namespace

ops::QuantRange observer_quant_range(const ObserverConfig& c) {
  const bool qint8 = c.dtype == TorchQDType::kQInt8;
  if (c.quant_min.has_value() != c.quant_max.has_value())
    LOWBIT_THROW(ValueError, "observer_quant_range: expected both 'quant_min' and 'quant_max' or ",
                 "neither but found only ", c.quant_min ? "quant_min" : "quant_max");
  if (!c.quant_min) {
    if (qint8) return c.reduce_range ? ops::QuantRange{-64, 63} : ops::QuantRange{-128, 127};
    return c.reduce_range ? ops::QuantRange{0, 127} : ops::QuantRange{0, 255};
  }
  const int64_t a = *c.quant_min, b = *c.quant_max;
  if (!(a <= 0 && 0 <= b) || !(a < b))
    LOWBIT_THROW(ValueError, "observer_quant_range: a custom range must satisfy quant_min <= 0 <= ",
                 "quant_max and quant_min < quant_max but found [", a, ", ", b, "]");
  const int64_t n = b - a + 1;
  if (n > 256)
    LOWBIT_THROW(ValueError, "observer_quant_range: a custom range may hold at most 256 values ",
                 "(PyTorch's 8-bit observers) but [", a, ", ", b, "] holds ", n);
  auto range = [](int64_t lo, int64_t hi) {
    return ops::QuantRange{static_cast<int32_t>(lo), static_cast<int32_t>(hi)};
  };
  ops::QuantRange r = qint8 ? range(floor_half(-n), floor_half(n) - 1) : range(0, n - 1);
  if (c.reduce_range) r = range(floor_half(r.min), floor_half(r.max));
  return r;
}

int64_t symmetric_zero_point(const ObserverConfig& c) {
  if (c.dtype != TorchQDType::kQUInt8) return 0;
  if (!c.quant_min) return 128;
  const ops::QuantRange r = observer_quant_range(c);
  return floor_half(int64_t{r.min} + r.max);
}

ObserverState<Tensor> observer_initial_state(const ObserverConfig& c, int64_t channels) {
  if (channels < 1)
    LOWBIT_THROW(ValueError,
                 "observer_initial_state: argument 'channels': expected >= 1 but found ", channels);
  const Shape s = is_per_channel(c.qscheme) ? Shape{channels} : Shape{};
  return {Tensor::full(s, INFINITY), Tensor::full(s, -INFINITY)};
}

std::vector<int64_t> observer_reduce_axes(const Shape& x, const ObserverConfig& c) {
  if (!is_per_channel(c.qscheme)) return {};
  if (x.rank() < 1)
    LOWBIT_THROW(ShapeError, "observer: per-channel observation needs rank >= 1 but found shape ",
                 x.str());
  const int axis = x.axis(c.ch_axis, "observer (ch_axis)");
  std::vector<int64_t> axes;
  for (int d = 0; d < x.rank(); ++d)
    if (d != axis) axes.push_back(d);
  return axes;
}

}  // namespace lowbit::quant
