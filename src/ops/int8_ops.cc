// The integer-only inference ops (include/lowbit/ops/int8.h): shape rules that also validate
// the quantization attributes (so a bad scale fails when the graph is built), prepare steps
// that turn them into fixed-point output stages once per plan (TFLite's Prepare), and the
// kernel tables. Loops: kernels/reference/int8.cc; fast rows: kernels/fast/int8.h (conv, fully
// connected), int8_pool.h, int8_add.h, int8_quantize.h, int8_lut.h (the table ops qlogistic,
// qtanh, requantize, qsoftmax, and dequantize).
#include <algorithm>
#include <cmath>
#include <optional>

#include "kernels/fast/int8.h"
#include "kernels/fast/int8_add.h"
#include "kernels/fast/int8_lut.h"
#include "kernels/fast/int8_pool.h"
#include "kernels/fast/int8_quantize.h"
#include "kernels/reference/int8.h"
#include "lowbit/fixed_point.h"
#include "lowbit/ops/int8.h"
#include "ops/conv_common.h"
#include "ops/families.h"
#include "ops/op_util.h"

namespace lowbit::detail {

namespace {

using quant::ConvOutputStage;
using quant::FusedActivation;
using quant::Rounding;

// ---- attributes ------------------------------------------------------------------------------

double scale_attr(const std::string& op, const Attrs& a, const char* name) {
  if (!a.has(name))
    LOWBIT_THROW(ValueError, op, ": attribute '", name, "' is required (a scale > 0)");
  const double s = a.f(name);
  if (!std::isfinite(s) || !(s > 0) || static_cast<float>(s) <= 0.0f)
    LOWBIT_THROW(ValueError, op, ": attribute '", name, "': expected a finite scale > 0 but found ",
                 s);
  return s;
}

int32_t zero_point_attr(const std::string& op, const Attrs& a, const char* name) {
  const int64_t zp = a.i(name, 0);
  if (zp < -128 || zp > 127)
    LOWBIT_THROW(ValueError, op, ": attribute '", name,
                 "': expected an int8 zero point in [-128, 127] but found ", zp);
  return static_cast<int32_t>(zp);
}

Rounding rounding_attr(const std::string& op, const Attrs& a) {
  const std::string r = a.s("rounding", "double");
  if (r == "double") return Rounding::kDouble;
  if (r == "single") return Rounding::kSingle;
  LOWBIT_THROW(ValueError, op, ": attribute 'rounding': expected 'double' or 'single' but found '",
               r, "'");
}

FusedActivation activation_attr(const std::string& op, const Attrs& a) {
  try {
    return quant::fused_activation_from_name(a.s("activation", "none"));
  } catch (const ValueError& e) {
    LOWBIT_THROW(ValueError, op, ": attribute 'activation': ", e.what());
  }
}

// The per-channel output stages of a conv or fully-connected op with `channels` outputs.
std::vector<ConvOutputStage> output_stages(const std::string& op, const Attrs& a,
                                           int64_t channels) {
  const double s_in = scale_attr(op, a, "input_scale");
  const double s_out = scale_attr(op, a, "output_scale");
  const int32_t zp_out = zero_point_attr(op, a, "output_zero_point");
  if (!a.has("weight_scales"))
    LOWBIT_THROW(ValueError, op,
                 ": attribute 'weight_scales' is required (one scale per output "
                 "channel, or one)");
  const std::vector<double>& sw = a.floats("weight_scales");
  if (sw.size() != 1 && static_cast<int64_t>(sw.size()) != channels)
    LOWBIT_THROW(ValueError, op, ": attribute 'weight_scales': expected 1 or ", channels,
                 " scales (one per output channel) but found ", sw.size());
  const FusedActivation act = activation_attr(op, a);
  const Rounding rounding = rounding_attr(op, a);
  // An optional narrower clamp: the codes of the output's grid (a 4-bit activation stored as
  // int8 keeps its 16 codes).
  const int64_t lo = a.i("act_min", -128), hi = a.i("act_max", 127);
  if (lo < -128 || hi > 127 || lo > hi)
    LOWBIT_THROW(ValueError, op,
                 ": attributes 'act_min', 'act_max': expected -128 <= act_min <= "
                 "act_max <= 127 but found ",
                 lo, ", ", hi);
  std::vector<ConvOutputStage> stages;
  stages.reserve(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const double s_w = sw.size() == 1 ? sw[0] : sw[c];
    if (!std::isfinite(s_w) || !(static_cast<float>(s_w) > 0.0f))
      LOWBIT_THROW(ValueError, op, ": attribute 'weight_scales': channel ", c,
                   ": expected a finite scale > 0 but found ", s_w);
    try {
      stages.push_back(quant::make_conv_output_stage({.input_scale = static_cast<float>(s_in),
                                                      .weight_scale = static_cast<float>(s_w),
                                                      .output_scale = static_cast<float>(s_out),
                                                      .output_zero_point = zp_out,
                                                      .activation = act,
                                                      .dtype = DType::kS8,
                                                      .rounding = rounding}));
    } catch (const ValueError& e) {
      LOWBIT_THROW(ValueError, op, ": output channel ", c, ": ", e.what());
    }
    ConvOutputStage& st = stages.back();
    st.act_min = std::max<int32_t>(st.act_min, static_cast<int32_t>(lo));
    st.act_max = std::min<int32_t>(st.act_max, static_cast<int32_t>(hi));
    if (st.act_min > st.act_max) st.act_min = st.act_max;  // an empty intersection: one code
  }
  return stages;
}

// The clamp of a pool's output codes (attributes act_min/act_max, default the int8 range).
std::pair<int32_t, int32_t> clamp_attrs(const std::string& op, const Attrs& a) {
  const int64_t lo = a.i("act_min", -128), hi = a.i("act_max", 127);
  if (lo < -128 || hi > 127 || lo > hi)
    LOWBIT_THROW(ValueError, op,
                 ": attributes 'act_min', 'act_max': expected -128 <= act_min <= "
                 "act_max <= 127 but found ",
                 lo, ", ", hi);
  return {static_cast<int32_t>(lo), static_cast<int32_t>(hi)};
}

void require_bias(const InferCtx& c, int i, int64_t channels) {
  require_dtype(c, i, DType::kS32, "bias");
  const Shape& b = c.in[i].shape;
  if (b.rank() != 1 || !dims_compatible(b[0], channels))
    LOWBIT_THROW(ShapeError, c.op, ": argument 'bias': expected shape [", channels,
                 "] (one int32 per output channel) but found ", b.str());
}

// ---- qconv2d ---------------------------------------------------------------------------------

std::vector<ValueType> infer_qconv2d(const InferCtx& c) {
  require_dtype(c, 0, DType::kS8, "x");
  require_dtype(c, 1, DType::kS8, "w");
  const auto p = conv2d_geometry(c.op, c.in[0].shape, c.in[1].shape, c.attrs);
  require_bias(c, 2, p.out_c);
  zero_point_attr(c.op, c.attrs, "input_zero_point");
  if (p.out_c != kUnknown) output_stages(c.op, c.attrs, p.out_c);
  return {{DType::kS8, Shape{p.n, p.out_h, p.out_w, p.out_c}}};
}

std::any prepare_qconv2d(const PrepareCtx& c) {
  kernels::QConvParams q;
  q.geo = conv2d_geometry(c.op, c.in[0].shape, c.in[1].shape, c.attrs);
  q.input_zero_point = zero_point_attr(c.op, c.attrs, "input_zero_point");
  q.stages = output_stages(c.op, c.attrs, q.geo.out_c);
  q.workspace = kernels::make_qworkspace();
  q.workspace->constant_weights = c.is_constant(1) && c.is_constant(2);
  return q;
}

// ---- qfully_connected ------------------------------------------------------------------------

std::vector<ValueType> infer_qfully_connected(const InferCtx& c) {
  require_dtype(c, 0, DType::kS8, "x");
  require_dtype(c, 1, DType::kS8, "w");
  const Shape &x = c.in[0].shape, &w = c.in[1].shape;
  if (x.rank() < 1 || w.rank() != 2 || !dims_compatible(x[x.rank() - 1], w[0]))
    LOWBIT_THROW(ShapeError, c.op,
                 ": arguments 'x' and 'w': expected x [..., K] and w [K, U] but "
                 "found ",
                 x.str(), " and ", w.str());
  require_bias(c, 2, w[1]);
  zero_point_attr(c.op, c.attrs, "input_zero_point");
  if (w[1] != kUnknown) output_stages(c.op, c.attrs, w[1]);
  std::vector<int64_t> d = x.dims();
  d.back() = w[1];
  return {{DType::kS8, Shape(std::move(d))}};
}

std::any prepare_qfully_connected(const PrepareCtx& c) {
  const Shape &x = c.in[0].shape, &w = c.in[1].shape;
  kernels::QFullyConnectedParams q;
  q.depth = w[0];
  q.units = w[1];
  q.rows = x.numel() / (q.depth > 0 ? q.depth : 1);
  q.input_zero_point = zero_point_attr(c.op, c.attrs, "input_zero_point");
  q.stages = output_stages(c.op, c.attrs, q.units);
  q.workspace = kernels::make_qworkspace();
  q.workspace->constant_weights = c.is_constant(1) && c.is_constant(2);
  return q;
}

// ---- pools -----------------------------------------------------------------------------------

struct QPoolParams {
  kernels::Conv2DParams geo;
  int32_t act_min = -128, act_max = 127;
  std::optional<kernels::QAvgRequant> requant;  // qavg_pool2d with output parameters
};

// qavg_pool2d's optional output parameters: all four of input_scale, input_zero_point,
// output_scale, output_zero_point, or none (the input's parameters, TFLite's rounding).
std::optional<kernels::QAvgRequant> avg_requant(const std::string& op, const Attrs& a,
                                                int64_t window) {
  const char* const keys[] = {"input_scale", "input_zero_point", "output_scale",
                              "output_zero_point"};
  int given = 0;
  for (const char* k : keys) given += a.has(k);
  if (given == 0) return std::nullopt;
  if (op != "qavg_pool2d" || given != 4)
    LOWBIT_THROW(ValueError, op,
                 op == "qavg_pool2d"
                     ? ": give all of input_scale, input_zero_point, output_scale and "
                       "output_zero_point, or none (the output keeps the input's parameters)"
                     : ": the output keeps the input's parameters; attributes input_scale, "
                       "output_scale and their zero points are not taken");
  kernels::QAvgRequant r;
  r.input_zero_point = zero_point_attr(op, a, "input_zero_point");
  r.output_zero_point = zero_point_attr(op, a, "output_zero_point");
  r.rounding = rounding_attr(op, a);
  const double m = static_cast<double>(static_cast<float>(scale_attr(op, a, "input_scale"))) /
                   static_cast<double>(static_cast<float>(scale_attr(op, a, "output_scale")));
  r.per_count.resize(static_cast<size_t>(window) + 1);
  for (int64_t n = 1; n <= window; ++n) {
    r.per_count[n] = quant::quantize_multiplier(m / static_cast<double>(n), r.rounding);
    if (r.per_count[n].shift > 30)
      LOWBIT_THROW(ValueError, op, ": input_scale / output_scale = ", m,
                   " is too large (a multiplier must be < 2^30)");
  }
  return r;
}

std::vector<ValueType> infer_qpool2d(const InferCtx& c) {
  require_dtype(c, 0, DType::kS8, "x");
  const auto p = pool2d_geometry(c.op, c.in[0].shape, c.attrs);
  clamp_attrs(c.op, c.attrs);
  avg_requant(c.op, c.attrs, p.k_h * p.k_w);
  return {{DType::kS8, Shape{p.n, p.out_h, p.out_w, p.out_c}}};
}

std::any prepare_qpool2d(const PrepareCtx& c) {
  QPoolParams q;
  q.geo = pool2d_geometry(c.op, c.in[0].shape, c.attrs);
  std::tie(q.act_min, q.act_max) = clamp_attrs(c.op, c.attrs);
  q.requant = avg_requant(c.op, c.attrs, q.geo.k_h * q.geo.k_w);
  return q;
}

// ---- fake_quant_bias -------------------------------------------------------------------------

std::vector<ValueType> infer_fake_quant_bias(const InferCtx& c) {
  require_float(c, 0, "bias");
  require_float(c, 1, "input_step");
  require_float(c, 2, "weight_step");
  require_rank(c, 0, 1, "bias");
  const Shape& si = c.in[1].shape;
  const Shape& sw = c.in[2].shape;
  if (si.rank() != 0)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'input_step': expected rank 0 but found ", si.str());
  const bool ok =
      sw.rank() == 0 || (sw.rank() == 1 && (sw[0] == kUnknown || c.in[0].shape[0] == kUnknown ||
                                            sw[0] == c.in[0].shape[0]));
  if (!ok)
    LOWBIT_THROW(ShapeError, c.op,
                 ": argument 'weight_step': expected rank 0 or [channels] matching bias ",
                 c.in[0].shape.str(), " but found ", sw.str());
  return {{DType::kF32, c.in[0].shape}};
}

using PoolKernelFn = void (*)(const kernels::Conv2DParams&, int32_t, int32_t,
                              const kernels::QAvgRequant*, const int8_t*, int8_t*);

// qmax_pool2d's fast kernel in the pools' signature (a max never requantizes).
void qmax_pool2d_fast(const kernels::Conv2DParams& p, int32_t act_min, int32_t act_max,
                      const kernels::QAvgRequant*, const int8_t* x, int8_t* y) {
  kernels::qmax_pool2d_nhwc_s8__avx2(p, act_min, act_max, x, y);
}

// The fast row of a pool (kernels/fast/int8_pool.h): AVX2, windows below 2^20 taps; the
// average row also takes a requantizing average (given output parameters).
FastKernel pool_row(const std::string& name, PoolKernelFn fn) {
  return {.name = name,
          .isa = Isa::kAvx2,
          .supports =
              [](const KernelCtx& k) {
                const auto& q = k.params<QPoolParams>();
                return q.geo.k_h * q.geo.k_w <= kernels::kMaxFastPoolTaps;
              },
          .run =
              [fn](const KernelCtx& k) {
                const auto& q = k.params<QPoolParams>();
                fn(q.geo, q.act_min, q.act_max, q.requant ? &*q.requant : nullptr,
                   k.in[0].data<int8_t>(), k.out[0].data<int8_t>());
              }};
}

// ---- qadd, requantize --------------------------------------------------------------------------

quant::AddStage add_stage(const std::string& op, const Attrs& a) {
  const auto [lo, hi] = clamp_attrs(op, a);
  try {
    quant::AddStage st = quant::make_add_stage(
        {.input1_scale = static_cast<float>(scale_attr(op, a, "input1_scale")),
         .input1_zero_point = zero_point_attr(op, a, "input1_zero_point"),
         .input2_scale = static_cast<float>(scale_attr(op, a, "input2_scale")),
         .input2_zero_point = zero_point_attr(op, a, "input2_zero_point"),
         .output_scale = static_cast<float>(scale_attr(op, a, "output_scale")),
         .output_zero_point = zero_point_attr(op, a, "output_zero_point"),
         .activation = activation_attr(op, a),
         .dtype = DType::kS8,
         .rounding = rounding_attr(op, a)});
    // The optional narrower clamp of a low-bit output grid, intersected with the activation's.
    st.act_min = std::max(st.act_min, lo);
    st.act_max = std::min(st.act_max, hi);
    if (st.act_min > st.act_max) st.act_min = st.act_max;  // an empty intersection: one code
    return st;
  } catch (const ValueError& e) {
    const std::string what = e.what();
    if (what.rfind(op, 0) == 0) throw;
    LOWBIT_THROW(ValueError, op, ": ", what);
  }
}

using AddKernelFn = void (*)(const quant::AddStage&, int64_t, const int8_t*, const int8_t*,
                             int8_t*);

// The fast rows of qadd (kernels/fast/int8_add.h): AVX-512, then AVX2; a stage with a left
// shift (a multiplier that rounded up to 1) runs the reference.
FastKernel add_row(const std::string& name, Isa isa, AddKernelFn fn) {
  return {.name = name,
          .isa = isa,
          .supports =
              [](const KernelCtx& k) {
                return kernels::qadd_s8_fast_supported(k.params<quant::AddStage>());
              },
          .run =
              [fn](const KernelCtx& k) {
                fn(k.params<quant::AddStage>(), k.out[0].numel(), k.in[0].data<int8_t>(),
                   k.in[1].data<int8_t>(), k.out[0].data<int8_t>());
              }};
}

std::vector<ValueType> infer_qadd(const InferCtx& c) {
  require_dtype(c, 0, DType::kS8, "a");
  require_dtype(c, 1, DType::kS8, "b");
  const Shape &a = c.in[0].shape, &b = c.in[1].shape;
  bool same = a.rank() == b.rank();
  for (int d = 0; same && d < a.rank(); ++d) same = dims_compatible(a[d], b[d]);
  if (!same)
    LOWBIT_THROW(ShapeError, c.op, ": arguments 'a' and 'b' must have the same shape but found ",
                 a.str(), " and ", b.str());
  add_stage(c.op, c.attrs);
  std::vector<int64_t> d = a.dims();
  for (int i = 0; i < a.rank(); ++i) d[i] = merge_dim(a[i], b[i]);
  return {{DType::kS8, Shape(std::move(d))}};
}

kernels::RequantizeStage requantize_stage(const std::string& op, const Attrs& a) {
  kernels::RequantizeStage s;
  s.input_zero_point = zero_point_attr(op, a, "input_zero_point");
  s.output_zero_point = zero_point_attr(op, a, "output_zero_point");
  s.rounding = rounding_attr(op, a);
  std::tie(s.qmin, s.qmax) = clamp_attrs(op, a);
  const double m = static_cast<double>(static_cast<float>(scale_attr(op, a, "input_scale"))) /
                   static_cast<double>(static_cast<float>(scale_attr(op, a, "output_scale")));
  s.multiplier = quant::quantize_multiplier(m, s.rounding);
  if (s.multiplier.shift > 30)
    LOWBIT_THROW(ValueError, op, ": input_scale / output_scale = ", m,
                 " is too large (a multiplier must be < 2^30)");
  return s;
}

// requantize's prepared parameters: the stage (the reference) and the table of its 256 codes
// (the fast rows, kernels/fast/int8_lut.h).
struct RequantizeParams {
  kernels::RequantizeStage stage;
  kernels::QLutStage table;
};

std::vector<ValueType> infer_requantize(const InferCtx& c) {
  require_dtype(c, 0, DType::kS8, "x");
  requantize_stage(c.op, c.attrs);
  return {{DType::kS8, c.in[0].shape}};
}

// ---- quantize, dequantize ----------------------------------------------------------------------

quant::QuantParams qparams(const std::string& op, const Attrs& a) {
  return {static_cast<float>(scale_attr(op, a, "scale")), zero_point_attr(op, a, "zero_point")};
}

std::vector<ValueType> infer_quantize(const InferCtx& c) {
  require_float(c, 0, "x");
  qparams(c.op, c.attrs);
  return {{DType::kS8, c.in[0].shape}};
}
std::vector<ValueType> infer_dequantize(const InferCtx& c) {
  require_dtype(c, 0, DType::kS8, "q");
  qparams(c.op, c.attrs);
  return {{DType::kF32, c.in[0].shape}};
}

// ---- qlogistic, qtanh, qsoftmax (fixed output parameters) --------------------------------------

struct FixedOutput {
  double scale;
  int32_t zero_point;
};
FixedOutput fixed_output(const std::string& op) {
  if (op == "qtanh") return {1.0 / 128, 0};
  return {1.0 / 256, -128};  // qlogistic, qsoftmax
}

// The input's (scale, zero point); output_scale / output_zero_point, when given, must be the
// op's fixed ones (TFLite enforces them too).
std::pair<double, int32_t> nonlinear_input(const std::string& op, const Attrs& a) {
  const double s_in = static_cast<float>(scale_attr(op, a, "input_scale"));
  const int32_t zp_in = zero_point_attr(op, a, "input_zero_point");
  const FixedOutput f = fixed_output(op);
  if ((a.has("output_scale") && a.f("output_scale") != f.scale) ||
      (a.has("output_zero_point") && a.i("output_zero_point") != f.zero_point))
    LOWBIT_THROW(ValueError, op, ": the output parameters are fixed at scale ", f.scale,
                 ", zero point ", f.zero_point, " but attributes ask for scale ",
                 a.f("output_scale", f.scale), ", zero point ",
                 a.i("output_zero_point", f.zero_point), " (drop them, or requantize the output)");
  return {s_in, zp_in};
}

// TFLite's PopulateLookupTable, in f32 as TFLite computes it: dequantize, the function in f32
// (std::exp / std::tanh of float), times 1 / s_out, round half away from zero, + zp_out, clamp.
kernels::QLutStage lut_stage(const std::string& op, const Attrs& a) {
  const auto [s_in_d, zp_in] = nonlinear_input(op, a);
  const float s_in = static_cast<float>(s_in_d);
  const FixedOutput out = fixed_output(op);
  const float inverse_scale = 1.0f / static_cast<float>(out.scale);
  const bool tanh = op == "qtanh";
  kernels::QLutStage st;
  for (int32_t q = -128; q <= 127; ++q) {
    const float x = s_in * static_cast<float>(q - zp_in);
    const float f = tanh ? std::tanh(x) : 1.0f / (1.0f + std::exp(-x));
    const float rescaled = std::round(f * inverse_scale);
    const int32_t code = static_cast<int32_t>(rescaled + static_cast<float>(out.zero_point));
    st.table[q + 128] = static_cast<int8_t>(std::clamp(code, -128, 127));
  }
  return st;
}

quant::SoftmaxStage softmax_stage(const std::string& op, const Attrs& a) {
  const auto [s_in, zp_in] = nonlinear_input(op, a);
  (void)zp_in;  // softmax sees only differences of codes
  try {
    return quant::make_softmax_stage(static_cast<float>(s_in), a.f("beta", 1.0));
  } catch (const ValueError& e) {
    LOWBIT_THROW(ValueError, op, ": ", e.what());
  }
}

std::vector<ValueType> infer_qnonlinear(const InferCtx& c) {
  require_dtype(c, 0, DType::kS8, "x");
  if (c.op == "qsoftmax") {
    if (c.in[0].shape.rank() < 1)
      LOWBIT_THROW(ShapeError, c.op,
                   ": argument 'x' must have rank >= 1 (softmax over the last "
                   "axis) but is a scalar");
    softmax_stage(c.op, c.attrs);
  } else {
    lut_stage(c.op, c.attrs);
  }
  return {{DType::kS8, c.in[0].shape}};
}

const int8_t* in_s8(const KernelCtx& k, int i) { return k.in[i].data<int8_t>(); }
int8_t* out_s8(const KernelCtx& k) { return k.out[0].data<int8_t>(); }

// A bias input of zero elements is "no bias" for the kernels.
const int32_t* bias_s32(const KernelCtx& k) {
  return k.in[2].numel() > 0 ? k.in[2].data<int32_t>() : nullptr;
}

// The fast rows of qconv2d / qfully_connected: AVX-512 VNNI, then AVX2 (kernels/fast/int8.h).
using ConvKernelFn = void (*)(const kernels::QConvParams&, const int8_t*, const int8_t*,
                              const int32_t*, int8_t*);
using FcKernelFn = void (*)(const kernels::QFullyConnectedParams&, const int8_t*, const int8_t*,
                            const int32_t*, int8_t*);

using ConvSupportsFn = bool (*)(const kernels::QConvParams&);

FastKernel conv_row(const std::string& name, Isa isa, ConvKernelFn fn,
                    ConvSupportsFn supports = kernels::qconv2d_s8_fast_supported) {
  return {.name = name,
          .isa = isa,
          .supports =
              [supports](const KernelCtx& k) { return supports(k.params<kernels::QConvParams>()); },
          .run =
              [fn](const KernelCtx& k) {
                fn(k.params<kernels::QConvParams>(), in_s8(k, 0), in_s8(k, 1), bias_s32(k),
                   out_s8(k));
              }};
}

FastKernel fc_row(const std::string& name, Isa isa, FcKernelFn fn) {
  return {.name = name,
          .isa = isa,
          .supports =
              [](const KernelCtx& k) {
                return kernels::qfully_connected_s8_fast_supported(
                    k.params<kernels::QFullyConnectedParams>());
              },
          .run =
              [fn](const KernelCtx& k) {
                fn(k.params<kernels::QFullyConnectedParams>(), in_s8(k, 0), in_s8(k, 1),
                   bias_s32(k), out_s8(k));
              }};
}

using LutKernelFn = void (*)(const kernels::QLutStage&, int64_t, const int8_t*, int8_t*);

// The fast rows of the table ops (kernels/fast/int8_lut.h): AVX-512 VBMI, then AVX2. `table`
// reads the 256-entry table from the op's params.
template <class Params>
FastKernel lut_row(const std::string& name, Isa isa, LutKernelFn fn,
                   const kernels::QLutStage& (*table)(const Params&)) {
  return {.name = name, .isa = isa, .run = [fn, table](const KernelCtx& k) {
            fn(table(k.params<Params>()), k.out[0].numel(), in_s8(k, 0), out_s8(k));
          }};
}
const kernels::QLutStage& lut_of(const kernels::QLutStage& s) { return s; }
const kernels::QLutStage& requantize_lut_of(const RequantizeParams& p) { return p.table; }

using SoftmaxKernelFn = void (*)(const kernels::QSoftmaxParams&, int64_t, int64_t, const int8_t*,
                                 int8_t*);

// The rows and depth of a softmax over the last axis.
std::pair<int64_t, int64_t> softmax_rows(const KernelCtx& k) {
  const int64_t depth = k.in[0].shape()[k.in[0].rank() - 1];
  return {depth > 0 ? k.in[0].numel() / depth : 0, depth};
}

FastKernel softmax_row(const std::string& name, Isa isa, SoftmaxKernelFn fn) {
  return {.name = name, .isa = isa, .run = [fn](const KernelCtx& k) {
            const auto [rows, depth] = softmax_rows(k);
            fn(k.params<kernels::QSoftmaxParams>(), rows, depth, in_s8(k, 0), out_s8(k));
          }};
}

using DequantizeKernelFn = void (*)(quant::QuantParams, int64_t, const int8_t*, float*);

FastKernel dequantize_row(const std::string& name, Isa isa, DequantizeKernelFn fn) {
  return {.name = name, .isa = isa, .run = [fn](const KernelCtx& k) {
            fn(k.params<quant::QuantParams>(), k.out[0].numel(), in_s8(k, 0),
               k.out[0].data<float>());
          }};
}

}  // namespace

void register_int8_ops() {
  register_op({.name = "qconv2d",
               .num_inputs = 3,
               .infer = infer_qconv2d,
               .prepare = prepare_qconv2d,
               .reference =
                   [](const KernelCtx& k) {
                     kernels::qconv2d_s8_reference(k.params<kernels::QConvParams>(), in_s8(k, 0),
                                                   in_s8(k, 1), k.in[2].data<int32_t>(), out_s8(k));
                   },
               // The depthwise and few-input-channel rows first: each declines what it does
               // not specialise in, which the general rows then take.
               .fast = {conv_row("qconv2d_depthwise_s8__avx512_vnni", Isa::kAvx512Vnni,
                                 kernels::qconv2d_depthwise_s8__avx512_vnni,
                                 kernels::qconv2d_s8_depthwise_supported),
                        conv_row("qconv2d_fewc_s8__avx512_vnni", Isa::kAvx512Vnni,
                                 kernels::qconv2d_fewc_s8__avx512_vnni,
                                 kernels::qconv2d_s8_few_in_channels_supported),
                        conv_row("qconv2d_s8__avx512_vnni", Isa::kAvx512Vnni,
                                 kernels::qconv2d_s8__avx512_vnni),
                        conv_row("qconv2d_s8__avx2", Isa::kAvx2, kernels::qconv2d_s8__avx2)},
               .doc = "int8 2-D convolution (NHWC x HWIO, groups), int32 bias, per-channel "
                      "requantization"});
  register_op({.name = "qfully_connected",
               .num_inputs = 3,
               .infer = infer_qfully_connected,
               .prepare = prepare_qfully_connected,
               .reference =
                   [](const KernelCtx& k) {
                     kernels::qfully_connected_s8_reference(
                         k.params<kernels::QFullyConnectedParams>(), in_s8(k, 0), in_s8(k, 1),
                         k.in[2].data<int32_t>(), out_s8(k));
                   },
               .fast = {fc_row("qfully_connected_s8__avx512_vnni", Isa::kAvx512Vnni,
                               kernels::qfully_connected_s8__avx512_vnni),
                        fc_row("qfully_connected_s8__avx2", Isa::kAvx2,
                               kernels::qfully_connected_s8__avx2)},
               .doc = "int8 fully connected (x [..., K] . w [K, U]), int32 bias, per-unit "
                      "requantization"});
  register_op({.name = "qmax_pool2d",
               .num_inputs = 1,
               .infer = infer_qpool2d,
               .prepare = prepare_qpool2d,
               .reference =
                   [](const KernelCtx& k) {
                     const auto& q = k.params<QPoolParams>();
                     kernels::qmax_pool2d_s8_reference(q.geo, q.act_min, q.act_max, in_s8(k, 0),
                                                       out_s8(k));
                   },
               .fast = {pool_row("qmax_pool2d_nhwc_s8__avx2", qmax_pool2d_fast)},
               .doc = "int8 max pooling (NHWC), the input's parameters"});
  register_op({.name = "qavg_pool2d",
               .num_inputs = 1,
               .infer = infer_qpool2d,
               .prepare = prepare_qpool2d,
               .reference =
                   [](const KernelCtx& k) {
                     const auto& q = k.params<QPoolParams>();
                     kernels::qavg_pool2d_s8_reference(q.geo, q.act_min, q.act_max,
                                                       q.requant ? &*q.requant : nullptr,
                                                       in_s8(k, 0), out_s8(k));
                   },
               .fast = {pool_row("qavg_pool2d_nhwc_s8__avx2", kernels::qavg_pool2d_nhwc_s8__avx2)},
               .doc = "int8 average pooling (NHWC, TFLite rounding), the input's parameters or "
                      "given output parameters"});
  register_op({.name = "fake_quant_bias",
               .num_inputs = 3,
               .infer = infer_fake_quant_bias,
               .grad = [](const GradCtx& g) -> std::vector<Value> {
                 return {g.dy(), Value(), Value()};  // straight through; steps: none
               },
               .reference =
                   [](const KernelCtx& k) {
                     kernels::fake_quant_bias_f32_reference(
                         k.in[0].numel(), k.in[0].data<float>(), k.in[1].data<float>()[0],
                         k.in[2].data<float>(), k.in[2].rank() == 1, k.out[0].data<float>());
                   },
               .doc = "a bias rounded to its int32 grid s_in * s_w (QAT, straight through)"});
  register_op({.name = "qadd",
               .num_inputs = 2,
               .infer = infer_qadd,
               .prepare = [](const PrepareCtx& c) -> std::any { return add_stage(c.op, c.attrs); },
               .reference =
                   [](const KernelCtx& k) {
                     kernels::qadd_s8_reference(k.params<quant::AddStage>(), k.out[0].numel(),
                                                in_s8(k, 0), in_s8(k, 1), out_s8(k));
                   },
               .fast = {add_row("qadd_s8__avx512", Isa::kAvx512, kernels::qadd_s8__avx512),
                        add_row("qadd_s8__avx2", Isa::kAvx2, kernels::qadd_s8__avx2)},
               .doc = "int8 elementwise add (TFLite's quantized Add)"});
  register_op({.name = "requantize",
               .num_inputs = 1,
               .infer = infer_requantize,
               .prepare = [](const PrepareCtx& c) -> std::any {
                 RequantizeParams p;
                 p.stage = requantize_stage(c.op, c.attrs);
                 p.table = kernels::requantize_table(p.stage);
                 return p;
               },
               .reference =
                   [](const KernelCtx& k) {
                     kernels::requantize_s8_reference(k.params<RequantizeParams>().stage,
                                                      k.out[0].numel(), in_s8(k, 0), out_s8(k));
                   },
               // A table of the reference's 256 codes, looked up (kernels/fast/int8_lut.h).
               .fast = {lut_row<RequantizeParams>("requantize_s8__avx512_vbmi", Isa::kAvx512Vbmi,
                                                  kernels::qlut_s8__avx512_vbmi, requantize_lut_of),
                        lut_row<RequantizeParams>("requantize_s8__avx2", Isa::kAvx2,
                                                  kernels::qlut_s8__avx2, requantize_lut_of)},
               .doc = "int8 codes to other (scale, zero point)"});
  // qlogistic and qtanh: the same 256-entry table op, built at prepare for each function.
  for (const auto& [name, doc] :
       {std::pair<const char*, const char*>{"qlogistic",
                                            "int8 logistic (TFLite LOGISTIC; output scale 1/256, "
                                            "zero point -128), a 256-entry table"},
        {"qtanh", "int8 tanh (TFLite TANH; output scale 1/128, zero point 0), a 256-entry table"}})
    register_op(
        {.name = name,
         .num_inputs = 1,
         .infer = infer_qnonlinear,
         .prepare = [](const PrepareCtx& c) -> std::any { return lut_stage(c.op, c.attrs); },
         .reference =
             [](const KernelCtx& k) {
               kernels::qlut_s8_reference(k.params<kernels::QLutStage>(), k.out[0].numel(),
                                          in_s8(k, 0), out_s8(k));
             },
         .fast = {lut_row<kernels::QLutStage>(std::string(name) + "_s8__avx512_vbmi",
                                              Isa::kAvx512Vbmi, kernels::qlut_s8__avx512_vbmi,
                                              lut_of),
                  lut_row<kernels::QLutStage>(std::string(name) + "_s8__avx2", Isa::kAvx2,
                                              kernels::qlut_s8__avx2, lut_of)},
         .doc = doc});
  register_op(
      {.name = "qsoftmax",
       .num_inputs = 1,
       .infer = infer_qnonlinear,
       .prepare = [](const PrepareCtx& c) -> std::any {
         return kernels::make_qsoftmax_params(softmax_stage(c.op, c.attrs));
       },
       .reference =
           [](const KernelCtx& k) {
             const auto [rows, depth] = softmax_rows(k);
             kernels::qsoftmax_s8_reference(k.params<kernels::QSoftmaxParams>().stage, rows, depth,
                                            in_s8(k, 0), out_s8(k));
           },
       // The exp of every difference tabulated at prepare (kernels/fast/int8_lut.h).
       .fast = {softmax_row("qsoftmax_s8__avx512_vbmi", Isa::kAvx512Vbmi,
                            kernels::qsoftmax_s8__avx512_vbmi),
                softmax_row("qsoftmax_s8__avx2", Isa::kAvx2, kernels::qsoftmax_s8__avx2)},
       .doc = "int8 softmax over the last axis (TFLite SOFTMAX; output scale 1/256, zero point "
              "-128): TFLite's reference, gemmlowp fixed point"});
  register_op({.name = "quantize",
               .num_inputs = 1,
               .infer = infer_quantize,
               .prepare = [](const PrepareCtx& c) -> std::any { return qparams(c.op, c.attrs); },
               .reference =
                   [](const KernelCtx& k) {
                     kernels::quantize_s8_reference(k.params<quant::QuantParams>(),
                                                    k.out[0].numel(), k.in[0].data<float>(),
                                                    out_s8(k));
                   },
               .fast = {{.name = "quantize_f32_s8__avx2",
                         .isa = Isa::kAvx2,
                         .run =
                             [](const KernelCtx& k) {
                               kernels::quantize_f32_s8__avx2(k.params<quant::QuantParams>(),
                                                              k.out[0].numel(),
                                                              k.in[0].data<float>(), out_s8(k));
                             }}},
               .doc = "f32 to int8 codes (TFLite Quantize)"});
  register_op({.name = "dequantize",
               .num_inputs = 1,
               .infer = infer_dequantize,
               .prepare = [](const PrepareCtx& c) -> std::any { return qparams(c.op, c.attrs); },
               .reference =
                   [](const KernelCtx& k) {
                     kernels::dequantize_s8_reference(k.params<quant::QuantParams>(),
                                                      k.out[0].numel(), in_s8(k, 0),
                                                      k.out[0].data<float>());
                   },
               .fast = {dequantize_row("dequantize_s8_f32__avx512", Isa::kAvx512,
                                       kernels::dequantize_s8_f32__avx512),
                        dequantize_row("dequantize_s8_f32__avx2", Isa::kAvx2,
                                       kernels::dequantize_s8_f32__avx2)},
               .doc = "int8 codes to f32 (TFLite Dequantize)"});
}

}  // namespace lowbit::detail
