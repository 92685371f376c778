// Host-side parts of the TF range trackers (include/lowbit/quant/range.h): mode names, config
// validation and the initial state. The updates are op compositions in the header.
#include "lowbit/quant/range.h"

#include <cmath>

#include "lowbit/error.h"

namespace lowbit::quant {

namespace {
constexpr RangeMode kModes[] = {RangeMode::kLastValue, RangeMode::kMovingAverage,
                                RangeMode::kMovingAverageDebiased, RangeMode::kAllValues};
}  // namespace

const char* range_mode_name(RangeMode mode) {
  switch (mode) {
    case RangeMode::kLastValue:
      return "last_value";
    case RangeMode::kMovingAverage:
      return "moving_average";
    case RangeMode::kMovingAverageDebiased:
      return "moving_average_debiased";
    case RangeMode::kAllValues:
      return "all_values";
  }
  return "?";
}

RangeMode parse_range_mode(const std::string& name) {
  std::string names;
  for (RangeMode m : kModes) {
    if (name == range_mode_name(m)) return m;
    names += std::string(names.empty() ? "" : ", ") + range_mode_name(m);
  }
  LOWBIT_THROW(ValueError, "parse_range_mode: expected one of ", names, " but found '", name, "'");
}

void validate(const RangeConfig& c) {
  if (c.num_bits < 2 || c.num_bits > 16)
    LOWBIT_THROW(ValueError, "RangeConfig: 'num_bits': expected an integer in [2, 16] but found ",
                 c.num_bits);
  if (!(c.ema_decay >= 0 && c.ema_decay <= 1))
    LOWBIT_THROW(ValueError, "RangeConfig: 'ema_decay': expected a value in [0, 1] but found ",
                 c.ema_decay);
  if (!(c.init_min <= c.init_max))
    LOWBIT_THROW(ValueError, "RangeConfig: expected init_min <= init_max but found init_min ",
                 c.init_min, ", init_max ", c.init_max);
}

RangeState<Tensor> initial_range_state(const RangeConfig& c, int64_t channels) {
  validate(c);
  if (c.per_channel && channels <= 0)
    LOWBIT_THROW(ValueError,
                 "initial_range_state: argument 'channels': expected the channel count (> 0) of a "
                 "per-channel tracker but found ",
                 channels);
  if (!c.per_channel && channels != 0)
    LOWBIT_THROW(ValueError,
                 "initial_range_state: argument 'channels': expected 0 for a per-tensor tracker "
                 "but found ",
                 channels);
  const Shape shape = c.per_channel ? Shape{channels} : Shape{};
  RangeState<Tensor> s;
  s.min = Tensor::full(shape, c.init_min);
  s.max = Tensor::full(shape, c.init_max);
  if (c.mode == RangeMode::kMovingAverageDebiased) {
    s.biased_min = Tensor::zeros(shape);
    s.biased_max = Tensor::zeros(shape);
    s.count = Tensor::zeros({});
  }
  return s;
}

}  // namespace lowbit::quant
