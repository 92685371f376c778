// Integer-LSTM numerics as f32 ops: fake_quant_pot, fixed_logistic, fixed_tanh
// (include/lowbit/ops/integer_numerics.h; quantization-semantics.md 3.7). The reference kernels are
// serial loops over the integer functions of lowbit/fixed_point.h; these ops run on
// [batch, units] gate tensors, so no fast kernels.
#include "lowbit/ops/integer_numerics.h"

#include <algorithm>
#include <cmath>

#include "lowbit/fixed_point.h"
#include "lowbit/ops.h"
#include "lowbit/ops/fake_quant.h"
#include "ops/families.h"
#include "ops/op_util.h"

namespace lowbit::detail {
namespace {

void require_scalar_arg(const InferCtx& c, int i, const char* arg) {
  require_float(c, i, arg);
  if (c.in[i].shape.rank() != 0)
    LOWBIT_THROW(ShapeError, c.op, ": argument '", arg,
                 "': expected a scalar (shape []) holding an integer but found shape ",
                 c.in[i].shape.str());
}

int bits_of(const Attrs& a) { return static_cast<int>(a.i("bits", 16)); }

// The integer a scalar f32 argument holds, rounded and clamped into [lo, hi] (kernels never
// throw; NaN gives lo).
int scalar_int(const Tensor& t, int lo, int hi) {
  const float v = t.data<float>()[0];
  if (!(v == v)) return lo;
  return static_cast<int>(std::clamp(std::round(static_cast<double>(v)), double(lo), double(hi)));
}

// round_away(x * 2^shift) saturated to int16 (NaN -> 0).
int16_t to_q15_code(float x, int shift) {
  const double v = std::round(std::ldexp(static_cast<double>(x), shift));
  if (!(v == v)) return 0;
  return static_cast<int16_t>(std::clamp(v, -32768.0, 32767.0));
}

std::vector<ValueType> infer_pot(const InferCtx& c) {
  require_float(c, 0, "x");
  require_scalar_arg(c, 1, "exponent");
  const int64_t b = c.attrs.i("bits", 16);
  if (b < 2 || b > 16)
    LOWBIT_THROW(ValueError, c.op, ": attribute 'bits': expected a value in [2, 16] but found ", b);
  return {c.in[0]};
}

void pot_reference(const KernelCtx& k) {
  const int e = scalar_int(k.in[1], -60, 60);
  const int bits = static_cast<int>(k.params<ScalarParam>().value);
  const double kmin = -std::ldexp(1.0, bits - 1), kmax = std::ldexp(1.0, bits - 1) - 1;
  const float* x = k.in[0].data<float>();
  float* y = k.out[0].data<float>();
  const int64_t n = k.in[0].numel();
  for (int64_t i = 0; i < n; ++i) {
    // x / 2^e is exact in f64; round_away, clamp, and back (exact: a code times a power of 2).
    const double q = std::clamp(std::round(std::ldexp(static_cast<double>(x[i]), -e)), kmin, kmax);
    y[i] = x[i] != x[i] ? x[i] : static_cast<float>(std::ldexp(q, e));
  }
}

std::vector<Value> pot_grad(const GradCtx& g) {
  const Value& x = g.in[0];
  const int bits = bits_of(g.attrs);
  Value step = ops::pow(ops::scalar_like(g.in[1], 2.0), g.in[1]);  // 2^e
  Value lo = step * -std::ldexp(1.0, bits - 1), hi = step * (std::ldexp(1.0, bits - 1) - 1);
  Value inside = ops::logical_and(ops::greater_equal(x, lo), ops::less_equal(x, hi));
  return {ops::where(inside, g.dy(), ops::zeros_like(g.dy())), Value()};
}

std::vector<ValueType> infer_logistic(const InferCtx& c) {
  require_float(c, 0, "x");
  return {c.in[0]};
}

void logistic_reference(const KernelCtx& k) {
  const float* x = k.in[0].data<float>();
  float* y = k.out[0].data<float>();
  const int64_t n = k.in[0].numel();
  for (int64_t i = 0; i < n; ++i)
    y[i] = std::ldexp(static_cast<float>(quant::logistic_int16(to_q15_code(x[i], 12), 3)), -15);
}

std::vector<Value> logistic_grad(const GradCtx& g) {
  Value s = ops::sigmoid(ops::fake_quant_pot(g.in[0], -12));
  return {g.dy() * s * (1.0 - s)};
}

std::vector<ValueType> infer_tanh(const InferCtx& c) {
  require_float(c, 0, "x");
  require_scalar_arg(c, 1, "int_bits");
  return {c.in[0]};
}

void tanh_reference(const KernelCtx& k) {
  const int p = scalar_int(k.in[1], 0, 6);
  const float* x = k.in[0].data<float>();
  float* y = k.out[0].data<float>();
  const int64_t n = k.in[0].numel();
  for (int64_t i = 0; i < n; ++i)
    y[i] = std::ldexp(static_cast<float>(quant::tanh_int16(to_q15_code(x[i], 15 - p), p)), -15);
}

std::vector<Value> tanh_grad(const GradCtx& g) {
  // The quantized input: the grid 2^(p-15) with p clamped as the kernel does (p is an integer).
  Value p = ops::clip(g.in[1], 0.0, 6.0);
  Value t = ops::tanh(ops::fake_quant_pot(g.in[0], p - 15.0));
  return {g.dy() * (1.0 - t * t), Value()};
}

// ---- the exact integer step (forward only; used through straight_through) -----------------

std::vector<ValueType> infer_straight_through(const InferCtx& c) {
  require_float(c, 0, "path");
  require_float(c, 1, "value");
  const Shape &a = c.in[0].shape, &b = c.in[1].shape;
  bool ok = a.rank() == b.rank();
  for (int d = 0; ok && d < a.rank(); ++d) ok = dims_compatible(a[d], b[d]);
  if (!ok)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'value': expected the shape of 'path' ", a.str(),
                 " but found ", b.str());
  return {c.in[0]};
}

// An integer a finite double holds, clamped into +-lim (garbage inputs never overflow a cast).
int64_t to_int(double v, double lim) {
  if (!(v == v)) return 0;
  return static_cast<int64_t>(std::clamp(std::round(v), -lim, lim));
}
int32_t sat32(int64_t v) {
  return static_cast<int32_t>(std::clamp<int64_t>(v, INT32_MIN, INT32_MAX));
}
// quantize_multiplier for a run-time real multiplier: (0, 0) when it is not usable.
quant::QuantizedMultiplier runtime_multiplier(double m) {
  if (!std::isfinite(m) || !(m > 0) || m >= std::ldexp(1.0, 30)) return {};
  return quant::quantize_multiplier(m, quant::Rounding::kDouble);
}
int32_t mbqm(int64_t acc, quant::QuantizedMultiplier m) {
  if (m.multiplier == 0) return 0;
  return quant::multiply_by_quantized_multiplier(sat32(acc), m, quant::Rounding::kDouble);
}

std::vector<ValueType> infer_fixed_matmul(const InferCtx& c) {
  if (c.in.size() != 4 && c.in.size() != 5)
    LOWBIT_THROW(ValueError, c.op, ": expected 4 arguments (x, x_step, w, w_steps) or 5 (and a ",
                 "bias) but found ", c.in.size());
  for (size_t i = 0; i < c.in.size(); ++i) require_float(c, static_cast<int>(i), "argument");
  const Shape &x = c.in[0].shape, &w = c.in[2].shape, &ws = c.in[3].shape;
  if (x.rank() != 2 || w.rank() != 2 || !dims_compatible(x[1], w[0]))
    LOWBIT_THROW(ShapeError, c.op, ": expected x [n, k] and w [k, m] but found ", x.str(), " and ",
                 w.str());
  if (c.in[1].shape.rank() != 0)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'x_step': expected a scalar but found ",
                 c.in[1].shape.str());
  if (ws.rank() != 1 || ws[0] == kUnknown || w[1] == kUnknown || w[1] % ws[0] != 0)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'w_steps': expected [g] dividing w's ", w.str(),
                 " columns into gate blocks but found ", ws.str());
  if (c.in.size() == 5 && (c.in[4].shape.rank() != 1 || c.in[4].shape[0] != w[1]))
    LOWBIT_THROW(ShapeError, c.op, ": argument 'bias': expected [", w[1], "] but found ",
                 c.in[4].shape.str());
  return {{DType::kF32, Shape{x[0], w[1]}}};
}

// The qlstm/qgru partial sum of x (on the grid x_step) and w (gate block g on w_steps[g]):
// sat16(MBQM(round(b / (s_x s_W,g)) + sum (x / s_x)(w / s_W,g), f32(s_x s_W,g) / 2^-12)) / 2^12,
// exactly the op's integer arithmetic (without the saturation when saturate is false).
void fixed_matmul_reference(const KernelCtx& k) {
  const bool saturate = k.params<Attrs>().b("saturate", true);
  const Tensor &x = k.in[0], &w = k.in[2], &ws = k.in[3];
  const int64_t n = x.shape()[0], kk = x.shape()[1], m = w.shape()[1], g = ws.shape()[0];
  const int64_t blk = m / g;
  const float sx = k.in[1].data<float>()[0];
  const float* px = x.data<float>();
  const float* pw = w.data<float>();
  const float* pb = k.in.size() == 5 ? k.in[4].data<float>() : nullptr;
  std::vector<int64_t> xc(static_cast<size_t>(n * kk)), wc(static_cast<size_t>(kk * m)), bc(m, 0);
  std::vector<quant::QuantizedMultiplier> mult(g);
  for (int64_t i = 0; i < n * kk; ++i)
    xc[i] = to_int(static_cast<double>(px[i]) / static_cast<double>(sx), 1 << 20);
  for (int64_t gi = 0; gi < g; ++gi) {
    const float sw = ws.data<float>()[gi];
    const float prod = sw * sx;  // f32, as the op's gate_multipliers and bias_scale
    mult[gi] = runtime_multiplier(static_cast<double>(std::ldexp(prod, 12)));
    for (int64_t col = gi * blk; col < (gi + 1) * blk; ++col) {
      for (int64_t r = 0; r < kk; ++r)
        wc[r * m + col] =
            to_int(static_cast<double>(pw[r * m + col]) / static_cast<double>(sw), 1 << 20);
      const float bs = quant::bias_scale(sx, sw);
      if (pb && std::isfinite(pb[col]) && std::isfinite(bs) && bs > 0.0f &&
          std::isfinite(1.0 / static_cast<double>(bs)))
        bc[col] = quant::quantize_bias(pb[col], bs);
    }
  }
  float* y = k.out[0].data<float>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t col = 0; col < m; ++col) {
      int64_t acc = bc[col];
      for (int64_t r = 0; r < kk; ++r) acc += xc[i * kk + r] * wc[r * m + col];
      int64_t code = mbqm(acc, mult[col / blk]);
      code = saturate ? std::clamp<int64_t>(code, -32768, 32767)
                      : std::clamp<int64_t>(code, -(1 << 24), 1 << 24);
      y[i * m + col] = std::ldexp(static_cast<float>(code), -12);
    }
}

// clamp(round_away(a b / 2^e), -2^(bits-1), 2^(bits-1) - 1) * 2^e with the product exact (f64).
void pot_mul_reference(const KernelCtx& k) {
  const int e = scalar_int(k.in[2], -60, 60);
  const int bits = static_cast<int>(k.params<Attrs>().i("bits", 16));
  const double kmin = -std::ldexp(1.0, bits - 1), kmax = std::ldexp(1.0, bits - 1) - 1;
  const float *a = k.in[0].data<float>(), *b = k.in[1].data<float>();
  float* y = k.out[0].data<float>();
  for (int64_t i = 0; i < k.in[0].numel(); ++i) {
    const double v = static_cast<double>(a[i]) * static_cast<double>(b[i]);
    const double q = std::clamp(std::round(std::ldexp(v, -e)), kmin, kmax);
    y[i] = v != v ? static_cast<float>(v) : static_cast<float>(std::ldexp(q, e));
  }
}

std::vector<ValueType> infer_same_shapes(const InferCtx& c, int n_tensors, int n_scalars) {
  if (static_cast<int>(c.in.size()) != n_tensors + n_scalars)
    LOWBIT_THROW(ValueError, c.op, ": expected ", n_tensors + n_scalars, " arguments but found ",
                 c.in.size());
  for (int i = 0; i < n_tensors + n_scalars; ++i) require_float(c, i, "argument");
  for (int i = 1; i < n_tensors; ++i) {
    const Shape &a = c.in[0].shape, &b = c.in[i].shape;
    bool ok = a.rank() == b.rank();
    for (int d = 0; ok && d < a.rank(); ++d) ok = dims_compatible(a[d], b[d]);
    if (!ok)
      LOWBIT_THROW(ShapeError, c.op, ": argument ", i, ": expected the shape of argument 0 ",
                   a.str(), " but found ", b.str());
  }
  for (int i = n_tensors; i < n_tensors + n_scalars; ++i)
    if (c.in[i].shape.rank() != 0)
      LOWBIT_THROW(ShapeError, c.op, ": argument ", i, ": expected a scalar but found ",
                   c.in[i].shape.str());
  return {c.in[0]};
}

int hidden_tensors(const Attrs& a) { return a.s("form", "lstm") == "gru" ? 3 : 2; }

std::vector<ValueType> infer_fixed_hidden(const InferCtx& c) {
  const std::string form = c.attrs.s("form", "lstm");
  if (form != "lstm" && form != "gru" && form != "reset")
    LOWBIT_THROW(ValueError, c.op, ": attribute 'form': expected lstm, gru or reset but found '",
                 form, "'");
  return infer_same_shapes(c, hidden_tensors(c.attrs), 2);
}

// The new h code of the integer step on h's grid (h_min, h_max; fake_quant_nudge), as the value
// fake_quant_with_min_max_vars gives that code (k * scale, k = code - zero point):
//   lstm (o, t):      MBQM(o t, 2^-30 / s_h)                          o, t Q0.15
//   gru (z, h, hh):   RDPOT(z k_h + MBQM((32767 - z) hh, 2^-15 / s_h), 15), k_h = h / s_h
//   reset (r, h):     RDPOT(r k_h, 15)
// each clamped to the grid's codes.
void fixed_hidden_reference(const KernelCtx& k) {
  const std::string form = k.params<Attrs>().s("form", "lstm");
  const int nt = hidden_tensors(k.params<Attrs>());
  const ops::FakeQuantNudge nd =
      ops::fake_quant_nudge(k.in[nt].data<float>()[0], k.in[nt + 1].data<float>()[0],
                            static_cast<int>(k.params<Attrs>().i("num_bits", 8)),
                            k.params<Attrs>().b("narrow_range", false));
  const int64_t lo = nd.quant_min - nd.zero_point, hi = nd.quant_max - nd.zero_point;
  const float s = nd.scale;
  const quant::QuantizedMultiplier m_lstm =
      runtime_multiplier(std::ldexp(1.0, -30) / static_cast<double>(s));
  const quant::QuantizedMultiplier m_gru =
      runtime_multiplier(std::ldexp(1.0, -15) / static_cast<double>(s));
  auto q15 = [](float v) { return to_int(std::ldexp(static_cast<double>(v), 15), 32768); };
  auto hcode = [&](float v) {
    return s > 0 ? to_int(static_cast<double>(v) / static_cast<double>(s), 1 << 20) : 0;
  };
  float* y = k.out[0].data<float>();
  for (int64_t i = 0; i < k.in[0].numel(); ++i) {
    const float a = k.in[0].data<float>()[i], b = k.in[1].data<float>()[i];
    int64_t code;
    if (form == "lstm") {
      code = mbqm(q15(a) * q15(b), m_lstm);
    } else if (form == "reset") {
      code = quant::rounding_divide_by_pot(sat32(q15(a) * hcode(b)), 15);
    } else {
      const int64_t z = q15(a), hh = q15(k.in[2].data<float>()[i]);
      const int64_t acc = z * hcode(b) + mbqm((32767 - z) * hh, m_gru);
      code = quant::rounding_divide_by_pot(sat32(acc), 15);
    }
    y[i] = static_cast<float>(std::clamp(code, lo, hi)) * s;
  }
}

std::any keep_attrs(const PrepareCtx& c) { return c.attrs; }

}  // namespace

void register_integer_numerics_ops() {
  register_op(
      {.name = "straight_through",
       .num_inputs = 2,
       .infer = infer_straight_through,
       .grad = [](const GradCtx& g) -> std::vector<Value> {
         return {g.dy(), Value()};
       },
       .reference =
           [](const KernelCtx& k) {
             const float* v = k.in[1].data<float>();
             std::copy(v, v + k.in[1].numel(), k.out[0].data<float>());
           },
       .doc = "the value of `value`, the gradient of `path` (a straight-through estimator)"});
  register_op({.name = "fixed_matmul",
               .num_inputs = -1,
               .infer = infer_fixed_matmul,
               .prepare = keep_attrs,
               .reference = fixed_matmul_reference,
               .doc = "the integer LSTM's Q3.12 partial sum of grid values (no gradient rule: use "
                      "it as the value of straight_through)"});
  register_op({.name = "fake_quant_pot_mul",
               .num_inputs = 3,
               .infer = [](const InferCtx& c) { return infer_same_shapes(c, 2, 1); },
               .prepare = keep_attrs,
               .reference = pot_mul_reference,
               .doc = "fake_quant_pot of the exact product a b (no gradient rule: use it as the "
                      "value of straight_through)"});
  register_op({.name = "fixed_hidden",
               .num_inputs = -1,
               .infer = infer_fixed_hidden,
               .prepare = keep_attrs,
               .reference = fixed_hidden_reference,
               .doc = "the integer LSTM/GRU's new h code on h's grid (no gradient rule: use it as "
                      "the value of straight_through)"});

  register_op(
      {.name = "fake_quant_pot",
       .num_inputs = 2,
       .infer = infer_pot,
       .grad = pot_grad,
       .prepare = [](const PrepareCtx& c) -> std::any {
         return ScalarParam{double(bits_of(c.attrs))};
       },
       .reference = pot_reference,
       .doc = "clamp(round_away(x / 2^e), -2^(bits-1), 2^(bits-1)-1) * 2^e (STE gradient)"});
  register_op({.name = "fixed_logistic",
               .num_inputs = 1,
               .infer = infer_logistic,
               .grad = logistic_grad,
               .reference = logistic_reference,
               .doc = "gemmlowp int16 logistic of x's Q3.12 code, as f32 on the 2^-15 grid"});
  register_op({.name = "fixed_tanh",
               .num_inputs = 2,
               .infer = infer_tanh,
               .grad = tanh_grad,
               .reference = tanh_reference,
               .doc = "gemmlowp int16 tanh of x's Q(p).(15-p) code, as f32 on the 2^-15 grid"});
}

}  // namespace lowbit::detail
