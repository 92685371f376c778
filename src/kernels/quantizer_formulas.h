// The element formulas of the PyTorch-style fake-quant ops (include/lowbit/ops/quantizer_ops.h),
// shared by the reference kernels (src/ops/quantizer_ops.cc) and the vectorised fast kernels
// (src/kernels/fast/quantizer_ops.cc), and the prepared attributes both read. Each line is one
// f32 operation with one rounding
// (-ffp-contract=off), so a vectorised loop over these functions is bit-identical to the scalar
// one. Codes are kept as f32: every code and every difference of codes is an integer of
// magnitude <= 2^24 (the shape rules bound the quantization range), hence exact, and comparing
// the f32 code with quant_min/quant_max is comparing PyTorch's int64 code.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#include "lowbit/shape.h"

namespace lowbit::kernels::fqt {

// The attributes of the PyTorch-style ops, prepared once per plan (OpDef::prepare; validated
// by the shape rules). axis: normalised against the rank of x (per-channel ops).
struct TorchFakeQuantConfig {
  int64_t quant_min = 0, quant_max = 255;
  int axis = 0;
  bool use_grad_scaling = false;
  double grad_factor = 1.0;
  int64_t bits = 8;  // PACT
};

// Quantization ranges must lie in [-kMaxCode, kMaxCode].
constexpr int64_t kMaxCode = int64_t{1} << 23;

// Summation order of dscale / dzero_point / dalpha (per tensor): chunks of kSumChunk elements,
// inside a chunk kLanes double accumulators taking element i at lane i % kLanes, lanes added in
// order, then chunks added in order.
constexpr int64_t kSumChunk = 1 << 14;
constexpr int kLanes = 8;

// Affine parameters of one tensor or channel.
struct Affine {
  float scale = 1, inv_scale = 1, zp = 0, qmin = 0, qmax = 0;
};
inline Affine make_affine(float scale, float zp, int64_t qmin, int64_t qmax) {
  return {scale, 1.0f / scale, zp, static_cast<float>(qmin), static_cast<float>(qmax)};
}

// clamp that lets NaN through (a NaN code gives a NaN output).
inline float clamp_code(float q, float lo, float hi) { return q < lo ? lo : (q > hi ? hi : q); }

// Forward: q = zp + round_even(x * inv_scale); y = (clamp(q) - zp) * scale.
inline float fq_forward(float x, const Affine& p) {
  const float q = p.zp + std::nearbyint(x * p.inv_scale);
  return (clamp_code(q, p.qmin, p.qmax) - p.zp) * p.scale;
}
// Backward: dx = dy * (qmin <= q <= qmax) with the forward's q (PyTorch: dY * mask). Written
// with & and selects rather than && so that loops over it vectorise without branches.
inline float fq_backward(float x, float dy, const Affine& p) {
  const float q = p.zp + std::nearbyint(x * p.inv_scale);
  return dy * static_cast<float>((q >= p.qmin) & (q <= p.qmax));
}

// c ? a : b on the bits: both operands are computed unconditionally, so a loop over it has no
// branches to if-convert (GCC will not speculate f32 operations that could trap).
inline float pick(bool c, float a, float b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return std::bit_cast<float>((std::bit_cast<uint32_t>(a) & m) | (std::bit_cast<uint32_t>(b) & ~m));
}

// Learnable backward terms (PyTorch's fake_quantize_learnable_*_grad_kernel_cpu): p.zp is the
// backward zero point, g = f32(grad_factor).
struct LearnableTerms {
  float dx, dscale, dzp;
};
inline LearnableTerms learnable_backward(float x, float dy, const Affine& p, float g) {
  const float q = std::nearbyint(p.zp + x * p.inv_scale);
  const bool below = q<p.qmin, above = q> p.qmax;
  LearnableTerms t;
  t.dx = dy * static_cast<float>((q >= p.qmin) & (q <= p.qmax));
  const float dzp_out = ((dy * -1.0f) * p.scale) * g;
  const float ds_below = (dy * (p.qmin - p.zp)) * g;
  const float ds_above = (dy * (p.qmax - p.zp)) * g;
  const float xfq = (q - p.zp) * p.scale;
  const float ds_in = ((dy * (xfq - x)) * p.inv_scale) * g;
  t.dscale = pick(below, ds_below, pick(above, ds_above, ds_in));
  t.dzp = pick(below | above, dzp_out, 0.0f);
  return t;
}

// 2^bits - 1 as f32 (exact for bits <= 16).
inline float levels(int64_t bits) { return static_cast<float>((int64_t{1} << bits) - 1); }

// PACT with alpha and s = alpha / (2^bits - 1): y = round_even(clamp(x, 0, alpha) / s) * s;
// dx = dy on [0, alpha); the dalpha term is dy on [alpha, inf).
inline float pact_forward(float x, float alpha, float s) {
  const float c = x < 0.0f ? 0.0f : (x > alpha ? alpha : x);
  return std::nearbyint(c / s) * s;
}
inline float pact_dx(float x, float dy, float alpha) {
  return dy * static_cast<float>((x >= 0.0f) & (x < alpha));
}
inline float pact_dalpha(float x, float dy, float alpha) { return pick(x >= alpha, dy, 0.0f); }

// Zero points of the learnable ops, as f32 integers in [qmin, qmax] (NaN -> qmin).
inline float clamp_zero_point(float v, int64_t qmin, int64_t qmax) {
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  return !(v >= lo) ? lo : (v > hi ? hi : v);
}
// Per-tensor forward and both per-channel directions: clamp(round_even(z)).
inline float zero_point_rounded(float z, int64_t qmin, int64_t qmax) {
  return clamp_zero_point(std::nearbyint(z), qmin, qmax);
}
// Per-tensor backward: trunc(clamp(z + 0.5f)).
inline float zero_point_backward(float z, int64_t qmin, int64_t qmax) {
  return std::trunc(clamp_zero_point(z + 0.5f, qmin, qmax));
}

// The grad_factor a learnable kernel uses: attribute "grad_factor", or with "use_grad_scaling"
// 1/sqrt(numel(x) * quant_max) in double; then rounded to f32 as PyTorch passes it.
inline float grad_factor(const TorchFakeQuantConfig& a, int64_t numel) {
  if (a.use_grad_scaling)
    return static_cast<float>(
        1.0 / std::sqrt(static_cast<double>(numel) * static_cast<double>(a.quant_max)));
  return static_cast<float>(a.grad_factor);
}

// x seen as [outer, channels, inner] around an axis.
struct ChannelView {
  int64_t outer = 1, channels = 1, inner = 1;
};
inline ChannelView channel_view(const Shape& s, int axis) {
  ChannelView v;
  for (int d = 0; d < s.rank(); ++d) {
    if (d < axis)
      v.outer *= s[d];
    else if (d == axis)
      v.channels = s[d];
    else
      v.inner *= s[d];
  }
  return v;
}

}  // namespace lowbit::kernels::fqt
