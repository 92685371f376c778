// Integer-LSTM numerics as f32 ops: fake_quant_pot, fixed_logistic, fixed_tanh
// (include/lowbit/ops/integer_numerics.h; quantization-semantics.md 3.7). The reference kernels are
// serial loops over the integer functions of lowbit/fixed_point.h; these ops run on
// [batch, units] gate tensors, so no fast kernels.
#include "lowbit/ops/integer_numerics.h"

#include <algorithm>
#include <cmath>

#include "lowbit/fixed_point.h"
#include "lowbit/ops.h"
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

}  // namespace

void register_integer_numerics_ops() {
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
