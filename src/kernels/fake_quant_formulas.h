// The TF fake-quant arithmetic shared by the reference kernels (src/ops/fake_quant.cc) and the
// fast kernels (src/kernels/fast/fake_quant.cc), and the parameters and pointers of one kernel
// call: the nudge and the per-element formulas of
// shared quantization-semantics.md 1.2-1.4, each operation one f32 rounding (the build has
// -ffp-contract=off). A fast kernel that evaluates the same operations in the same order on
// SIMD lanes is bit-identical to these.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace lowbit::kernels {

// The attributes of the TF fake-quant ops, prepared once per plan (OpDef::prepare; validated by
// the shape rules). min/max: the args range (f32, as TF's float attributes).
struct FakeQuantConfig {
  int num_bits = 8;
  bool narrow_range = false;
  float min = -6, max = 6;
  bool per_channel = false;  // min_max
};

// The tensors of one call, by role (unused ones null): x [n] viewed as [n / d, d] for the
// per-channel ops (d = x's last dim, 1 for per-tensor ops); min/max the range inputs (vars, per
// channel); y the output (y or dx); lo/hi the dmin/dmax outputs (gradients) or min_max's
// outputs.
struct FakeQuantIo {
  const float* x = nullptr;
  const float* dy = nullptr;
  const float* min = nullptr;
  const float* max = nullptr;
  float* y = nullptr;
  float* lo = nullptr;
  float* hi = nullptr;
  int64_t n = 0, d = 1;
};

// The order of the per-tensor gradient sums (dmin, dmax), part of the ops' definition so that
// results do not depend on the thread count or the SIMD width: the elements are cut into blocks
// of kFakeQuantSumBlock; within a block, element i goes to lane i % kFakeQuantSumLanes, each lane
// summing its elements in order in double (what 16 SIMD lanes do); a block's sum is its lanes
// added in lane order, and the result is the block sums added in block order.
constexpr int64_t kFakeQuantSumBlock = int64_t{1} << 15;
constexpr int kFakeQuantSumLanes = 16;
static_assert(kFakeQuantSumBlock % kFakeQuantSumLanes == 0);

inline double sum_lanes(const double* lanes) {
  double s = 0;
  for (int j = 0; j < kFakeQuantSumLanes; ++j) s += lanes[j];
  return s;
}
// Elements above which the kernels split work across threads.
constexpr int64_t kFakeQuantParallelGrain = int64_t{1} << 15;

// One range after the nudge, with what the forward formula needs.
struct FakeQuantParams {
  float nudged_min = 0;
  float nudged_max = 0;
  float scale = 0;
  float inv_scale = 0;
  float quant_zero = 0;  // floor(-nudged_min * inv_scale + 0.5): the zero point as TF recomputes it
  bool zero = false;     // min == max == 0 (vars, per channel): y = 0, dx = dy
  int zero_point = 0;
};

inline FakeQuantParams fake_quant_params(float min, float max, int num_bits, bool narrow_range) {
  const int quant_min = narrow_range ? 1 : 0;
  const int quant_max = (1 << num_bits) - 1;
  const float qn = static_cast<float>(quant_min);
  const float qx = static_cast<float>(quant_max);
  FakeQuantParams p;
  p.zero = min == 0.0f && max == 0.0f;
  p.scale = (max - min) / (qx - qn);
  p.inv_scale = (qx - qn) / (max - min);  // computed directly, not as 1 / scale
  const float zero_point_from_min = qn - min / p.scale;
  if (zero_point_from_min < qn)
    p.zero_point = quant_min;
  else if (zero_point_from_min > qx)
    p.zero_point = quant_max;
  else if (std::isnan(zero_point_from_min))  // NaN or infinite min/max: TF's uint16 cast is
    p.zero_point = quant_min;                // undefined there; the output is NaN anyway
  else
    p.zero_point = static_cast<int>(std::round(zero_point_from_min));  // ties away from zero
  const float zp = static_cast<float>(p.zero_point);
  p.nudged_min = (qn - zp) * p.scale;
  p.nudged_max = (qx - zp) * p.scale;
  p.quant_zero = std::floor(-p.nudged_min * p.inv_scale + 0.5f);
  return p;
}

// Eigen's cwiseMin(nudged_max).cwiseMax(nudged_min): std::min(a, b) is (b < a) ? b : a, so a
// NaN x passes through both.
inline float fake_quant_clamp(float x, const FakeQuantParams& p) {
  return std::max(std::min(x, p.nudged_max), p.nudged_min);
}

// y for one element. kDivide: (c - nudged_min) / scale (vars); else * inv_scale (args, per
// channel). Not for p.zero ranges (the caller writes 0).
template <bool kDivide>
inline float fake_quant_value(float x, const FakeQuantParams& p) {
  const float shifted = fake_quant_clamp(x, p) - p.nudged_min;
  const float t = kDivide ? shifted / p.scale : shifted * p.inv_scale;
  return std::floor((t - p.quant_zero) + 0.5f) * p.scale;
}

// The straight-through mask: nudged_min <= x <= nudged_max (false for NaN).
inline bool fake_quant_passes(float x, const FakeQuantParams& p) {
  return p.nudged_min <= x && x <= p.nudged_max;
}

// The per-channel view [rows, d] of x (d = last dim).
struct ChannelRows {
  int64_t rows = 0;
  int64_t d = 0;
};
inline ChannelRows channel_rows(const FakeQuantIo& io) {
  ChannelRows v;
  v.d = io.d;
  v.rows = v.d > 0 ? io.n / v.d : 0;
  return v;
}

// The result of min_max from an order-dependent scan that skipped NaN: NaN if one was seen, and
// +0.0 for a zero (min(-0, +0) keeps whichever came first; x + 0.0f turns -0 into +0 and leaves
// every other value, infinities included, unchanged).
inline void min_max_finish(float* lo, float* hi, bool saw_nan) {
  if (saw_nan) {
    *lo = *hi = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  *lo = *lo + 0.0f;
  *hi = *hi + 0.0f;
}

}  // namespace lowbit::kernels
