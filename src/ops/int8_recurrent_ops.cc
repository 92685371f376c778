// The integer LSTM and GRU over a whole sequence (include/lowbit/ops/int8.h: qlstm, qgru) and
// the timestep mask of a Masking layer (timestep_mask): shape rules that validate the
// quantization attributes, a prepare step that turns them into multipliers once per plan, and
// reference kernels written as the specification (quantization-semantics.md 3.7, "8x8_16"):
// plain loops, one batch row at a time. qlstm and qgru also have fast rows, AVX-512 VNNI then
// AVX2 (src/kernels/fast/int8_rnn.h: one GEMM for the input projection of every step, the
// recurrent matmul and the gate arithmetic vectorised), bit-identical to the reference
// (tests/ops/int8_rnn_test.cc).
#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <vector>

#include "kernels/fast/int8_rnn.h"
#include "lowbit/fixed_point.h"
#include "lowbit/isa.h"
#include "lowbit/ops/int8.h"
#include "ops/families.h"
#include "ops/op_util.h"

namespace lowbit::detail {

namespace {

using quant::QuantizedMultiplier;
using quant::Rounding;

// ---- attributes ------------------------------------------------------------------------------

double rnn_scale(const std::string& op, const Attrs& a, const char* name) {
  if (!a.has(name))
    LOWBIT_THROW(ValueError, op, ": attribute '", name, "' is required (a scale > 0)");
  const double s = a.f(name);
  if (!std::isfinite(s) || !(static_cast<float>(s) > 0.0f))
    LOWBIT_THROW(ValueError, op, ": attribute '", name, "': expected a finite scale > 0 but found ",
                 s);
  return s;
}

int32_t rnn_zero_point(const std::string& op, const Attrs& a, const char* name) {
  if (!a.has(name)) LOWBIT_THROW(ValueError, op, ": attribute '", name, "' is required");
  const int64_t zp = a.i(name);
  if (zp < -128 || zp > 127)
    LOWBIT_THROW(ValueError, op, ": attribute '", name,
                 "': expected an int8 zero point in [-128, 127] but found ", zp);
  return static_cast<int32_t>(zp);
}

// M as (M0, shift) for the double-rounding multiply, which needs shift <= 30 (M < 2^30).
QuantizedMultiplier rnn_multiplier(const std::string& op, const char* what, double m) {
  if (!std::isfinite(m) || m < 0)
    LOWBIT_THROW(ValueError, op, ": multiplier ", what, " = ", m, " is not finite and >= 0");
  const QuantizedMultiplier q = quant::quantize_multiplier(m, Rounding::kDouble);
  if (q.shift > 30)
    LOWBIT_THROW(ValueError, op, ": multiplier ", what, " = ", m,
                 " is too large (a multiplier must be < 2^30)");
  return q;
}

// Everything the kernels read, made once per plan.
struct QRnnParams {
  bool lstm = true;
  int64_t batch = 0, steps = 0, depth = 0, units = 0, gates = 4;
  int32_t zp_x = 0, zp_h = 0;
  int cell_bits = 0;  // LSTM: p, the cell's integer bits (cell scale 2^(p-15))
  bool reset_after = true, sequences = false, backwards = false, zero_output = false;
  bool reverse_output = false;  // go_backwards sequences: output at the input's time index
  bool has_mask = false;
  std::vector<QuantizedMultiplier> mx, mh;  // per gate: s_x s_Wx,g / 2^-12, s_h s_Wh,g / 2^-12
  QuantizedMultiplier m_out;                // LSTM: 2^-30 / s_h; GRU: 2^-15 / s_h
  // Scratch, sized here so that the kernel does not allocate (one plan runs one batch at a time).
  std::shared_ptr<std::vector<int32_t>> scratch;
  // The fast rows' view of the same parameters and their workspace (sized at prepare).
  kernels::QRnnConfig fast_cfg;
  std::shared_ptr<kernels::QRnnWorkspace> fast_ws;
};

struct RnnArgs {
  int gates = 4;
  int nin = 4;  // without the mask
  const char* bias_names[2] = {"bias", nullptr};
};

RnnArgs rnn_args(const std::string& op, const Attrs& a) {
  RnnArgs r;
  if (op == "qlstm") return r;
  r.gates = 3;
  r.nin = 5;
  r.bias_names[0] = "input_bias";
  r.bias_names[1] = "recurrent_bias";
  (void)a;
  return r;
}

std::vector<QuantizedMultiplier> gate_multipliers(const std::string& op, const Attrs& a,
                                                  const char* name, double s_side, int gates) {
  if (!a.has(name))
    LOWBIT_THROW(ValueError, op, ": attribute '", name,
                 "' is required (one weight scale per gate)");
  const std::vector<double>& sw = a.floats(name);
  if (static_cast<int>(sw.size()) != gates)
    LOWBIT_THROW(ValueError, op, ": attribute '", name, "': expected ", gates,
                 " scales (one per gate block) but found ", sw.size());
  std::vector<QuantizedMultiplier> m;
  for (int g = 0; g < gates; ++g) {
    if (!std::isfinite(sw[g]) || !(static_cast<float>(sw[g]) > 0.0f))
      LOWBIT_THROW(ValueError, op, ": attribute '", name, "': gate ", g,
                   ": expected a finite scale > 0 but found ", sw[g]);
    // f32(s_W * s_side) / 2^-12 (exact in f32), then QuantizeMultiplier in f64 (spec 3.7).
    const float prod = static_cast<float>(sw[g]) * static_cast<float>(s_side);
    m.push_back(rnn_multiplier(op, name, static_cast<double>(std::ldexp(prod, 12))));
  }
  return m;
}

QRnnParams rnn_params(const std::string& op, const Attrs& a) {
  const RnnArgs r = rnn_args(op, a);
  QRnnParams q;
  q.lstm = op == "qlstm";
  q.gates = r.gates;
  const double s_x = rnn_scale(op, a, "input_scale");
  const double s_h = rnn_scale(op, a, "hidden_scale");
  q.zp_x = rnn_zero_point(op, a, "input_zero_point");
  q.zp_h = rnn_zero_point(op, a, "hidden_zero_point");
  q.mx = gate_multipliers(op, a, "input_weight_scales", s_x, r.gates);
  q.mh = gate_multipliers(op, a, "recurrent_weight_scales", s_h, r.gates);
  const float sh = static_cast<float>(s_h);
  if (q.lstm) {
    if (!a.has("cell_int_bits"))
      LOWBIT_THROW(ValueError, op, ": attribute 'cell_int_bits' is required (p in [0, 6])");
    const int64_t p = a.i("cell_int_bits");
    if (p < 0 || p > 6)
      LOWBIT_THROW(ValueError, op, ": attribute 'cell_int_bits': expected p in [0, 6] (cell scale ",
                   "2^(p-15), tanh_int16 supports Q0.15..Q6.9) but found ", p);
    q.cell_bits = static_cast<int>(p);
    q.m_out = rnn_multiplier(op, "2^-30 / hidden_scale", std::ldexp(1.0, -30) / sh);
  } else {
    if (a.has("cell_int_bits"))
      LOWBIT_THROW(ValueError, op, ": attribute 'cell_int_bits': a GRU has no cell state");
    q.reset_after = a.b("reset_after", true);
    q.m_out = rnn_multiplier(op, "2^-15 / hidden_scale", std::ldexp(1.0, -15) / sh);
  }
  q.sequences = a.b("return_sequences", false);
  q.backwards = a.b("go_backwards", false);
  q.zero_output = a.b("zero_output_for_mask", false);
  q.reverse_output = a.b("reverse_output", false);
  if (q.reverse_output && !(q.sequences && q.backwards))
    LOWBIT_THROW(ValueError, op, ": attribute 'reverse_output' needs return_sequences and ",
                 "go_backwards (it undoes the reversal of a backward sequence)");
  return q;
}

// ---- qlstm, qgru: shapes -----------------------------------------------------------------------

std::vector<ValueType> infer_qrnn(const InferCtx& c) {
  const RnnArgs r = rnn_args(c.op, c.attrs);
  const int n = static_cast<int>(c.in.size());
  if (n != r.nin && n != r.nin + 1)
    LOWBIT_THROW(ValueError, c.op, ": expected ", r.nin, " arguments (x, w_x, w_h, ",
                 r.gates == 4 ? "bias" : "input_bias, recurrent_bias", ") or ", r.nin + 1,
                 " (and a timestep mask) but found ", n);
  require_dtype(c, 0, DType::kS8, "x");
  require_dtype(c, 1, DType::kS8, "w_x");
  require_dtype(c, 2, DType::kS8, "w_h");
  require_rank(c, 0, 3, "x");
  require_rank(c, 1, 2, "w_x");
  require_rank(c, 2, 2, "w_h");
  const Shape &x = c.in[0].shape, &wx = c.in[1].shape, &wh = c.in[2].shape;
  const int64_t u = wh[0];
  if (u == kUnknown || wh[1] != r.gates * u)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'w_h': expected [units, ", r.gates,
                 " * units] (gate blocks side by side) but found ", wh.str());
  if (!dims_compatible(wx[0], x[2]) || wx[1] != r.gates * u)
    LOWBIT_THROW(ShapeError, c.op, ": argument 'w_x': expected [", x[2], ", ", r.gates * u,
                 "] for x ", x.str(), " and w_h ", wh.str(), " but found ", wx.str());
  for (int i = 3; i < r.nin; ++i) {
    const char* name = r.bias_names[i - 3];
    require_dtype(c, i, DType::kS32, name);
    const Shape& b = c.in[i].shape;
    if (b.rank() != 1 || b[0] != r.gates * u)
      LOWBIT_THROW(ShapeError, c.op, ": argument '", name, "': expected [", r.gates * u,
                   "] (one int32 per gate unit) but found ", b.str());
  }
  if (n == r.nin + 1) {
    require_dtype(c, r.nin, DType::kBool, "mask");
    const Shape& m = c.in[r.nin].shape;
    if (m.rank() != 2 || !dims_compatible(m[0], x[0]) || !dims_compatible(m[1], x[1]))
      LOWBIT_THROW(ShapeError, c.op, ": argument 'mask': expected bool [batch, timesteps] for x ",
                   x.str(), " but found ", m.str());
  }
  const QRnnParams q = rnn_params(c.op, c.attrs);
  if (q.sequences) return {{DType::kS8, Shape{x[0], x[1], u}}};
  return {{DType::kS8, Shape{x[0], u}}};
}

std::any prepare_qrnn(const PrepareCtx& c) {
  QRnnParams q = rnn_params(c.op, c.attrs);
  const Shape &x = c.in[0].shape, &wh = c.in[2].shape;
  q.batch = x[0];
  q.steps = x[1];
  q.depth = x[2];
  q.units = wh[0];
  q.has_mask = static_cast<int>(c.in.size()) == (q.lstm ? 5 : 6);
  // eb_x, eb_h [G*U]; h, h', c, last, r h [U]; gate codes [G*U]
  const int64_t gu = q.gates * q.units;
  q.scratch = std::make_shared<std::vector<int32_t>>(static_cast<size_t>(3 * gu + 5 * q.units));
  kernels::QRnnConfig& f = q.fast_cfg;
  f.lstm = q.lstm;
  f.batch = q.batch;
  f.steps = q.steps;
  f.depth = q.depth;
  f.units = q.units;
  f.gates = q.gates;
  f.zp_x = q.zp_x;
  f.zp_h = q.zp_h;
  f.cell_bits = q.cell_bits;
  f.reset_after = q.reset_after;
  f.sequences = q.sequences;
  f.backwards = q.backwards;
  f.zero_output = q.zero_output;
  f.reverse_output = q.reverse_output;
  for (int g = 0; g < q.gates; ++g) {
    f.mx[g] = q.mx[g];
    f.mh[g] = q.mh[g];
  }
  f.m_out = q.m_out;
  q.fast_ws = kernels::make_qrnn_workspace(f);
  // wx, wh and the bias(es): inputs 1 .. nin - 1 (the mask, if any, comes after them).
  bool constant = true;
  for (int i = 1; i < rnn_args(c.op, c.attrs).nin; ++i) constant = constant && c.is_constant(i);
  q.fast_ws->constant_weights = constant;
  return q;
}

// ---- qlstm, qgru: the reference kernel ----------------------------------------------------------

int32_t sat16(int64_t v) { return static_cast<int32_t>(std::clamp<int64_t>(v, -32768, 32767)); }
int32_t clamp8(int32_t v) { return std::clamp<int32_t>(v, -128, 127); }
int32_t mbqm(int32_t x, QuantizedMultiplier m) {
  return quant::multiply_by_quantized_multiplier(x, m, Rounding::kDouble);
}
int32_t rdpot(int32_t x, int e) { return quant::rounding_divide_by_pot(x, e); }
int32_t logistic(int32_t a) { return quant::logistic_int16(static_cast<int16_t>(a), 3); }
int32_t tanh16(int32_t a, int bits) { return quant::tanh_int16(static_cast<int16_t>(a), bits); }

// One sequence (batch row b), spec 3.7 "Integer step" and "GRU", gates in Keras' order (LSTM i,
// f, c, o; GRU z, r, h), weight blocks side by side in the columns.
void qrnn_reference(const QRnnParams& q, const int8_t* x, const int8_t* wx, const int8_t* wh,
                    const int32_t* bx, const int32_t* bh, const bool* mask, int8_t* y) {
  const int64_t T = q.steps, D = q.depth, U = q.units, G = q.gates, GU = G * U;
  int32_t* s = q.scratch->data();
  int32_t *eb_x = s, *eb_h = s + GU, *gate = s + 2 * GU;
  int32_t *h = s + 3 * GU, *hn = h + U, *c = hn + U, *last = c + U, *rh = last + U;
  // Precomputed int32: the bias with the zero-point terms folded in (TFLite's
  // PopulatePrecomputedZPTimesWeightsWithBias).
  for (int64_t col = 0; col < GU; ++col) {
    int32_t sx = 0, sh = 0;
    for (int64_t d = 0; d < D; ++d) sx += wx[d * GU + col];
    for (int64_t k = 0; k < U; ++k) sh += wh[k * GU + col];
    eb_x[col] = (bx ? bx[col] : 0) - q.zp_x * sx;
    eb_h[col] = (bh ? bh[col] : 0) - q.zp_h * sh;
  }
  auto dot_x = [&](const int8_t* xt, int64_t col) {
    int32_t acc = eb_x[col];
    for (int64_t d = 0; d < D; ++d) acc += static_cast<int32_t>(wx[d * GU + col]) * xt[d];
    return acc;
  };
  auto dot_h = [&](const int32_t* hv, int64_t col) {
    int32_t acc = eb_h[col];
    for (int64_t k = 0; k < U; ++k) acc += static_cast<int32_t>(wh[k * GU + col]) * hv[k];
    return acc;
  };
  const int p = q.cell_bits;
  for (int64_t b = 0; b < q.batch; ++b) {
    for (int64_t j = 0; j < U; ++j) {
      h[j] = q.zp_h;  // h0 = 0 (real), c0 = 0
      c[j] = 0;
      last[j] = q.zp_h;
    }
    for (int64_t st = 0; st < T; ++st) {
      const int64_t t = q.backwards ? T - 1 - st : st;
      int8_t* out = q.sequences ? y + (b * T + (q.reverse_output ? t : st)) * U : nullptr;
      if (mask && !mask[b * T + t]) {
        // Masked: h and c keep their codes; the output repeats the last valid one (zp_h before
        // the first; always zp_h with zero_output_for_mask). Nothing reads x_t.
        if (q.zero_output)
          for (int64_t j = 0; j < U; ++j) last[j] = q.zp_h;
        if (out)
          for (int64_t j = 0; j < U; ++j) out[j] = static_cast<int8_t>(last[j]);
        continue;
      }
      const int8_t* xt = x + (b * T + t) * D;
      if (q.lstm) {
        // a_g = sat16(sat16(MBQM(eb_x + W_x q_x, M_x)) + MBQM(eb_h + W_h q_h, M_h))    Q3.12
        for (int64_t col = 0; col < GU; ++col) {
          const int64_t g = col / U;
          const int32_t px = sat16(mbqm(dot_x(xt, col), q.mx[g]));
          gate[col] = sat16(static_cast<int64_t>(px) + mbqm(dot_h(h, col), q.mh[g]));
        }
        for (int64_t j = 0; j < U; ++j) {
          const int32_t i = logistic(gate[j]), f = logistic(gate[U + j]);
          const int32_t g = tanh16(gate[2 * U + j], 3), o = logistic(gate[3 * U + j]);
          // c' = sat16(RDPOT(f c, 15) + RDPOT(i g, 15 + p))            units 2^(p-15)
          c[j] = sat16(static_cast<int64_t>(rdpot(f * c[j], 15)) + rdpot(i * g, 15 + p));
          // h' = clamp8(MBQM(o tanh_p(c'), 2^-30 / s_h) + zp_h)
          hn[j] = clamp8(mbqm(o * tanh16(c[j], p), q.m_out) + q.zp_h);
        }
      } else {
        // z, r: as the LSTM gates (the recurrent side carries the recurrent bias).
        for (int64_t col = 0; col < 2 * U; ++col) {
          const int64_t g = col / U;
          const int32_t px = sat16(mbqm(dot_x(xt, col), q.mx[g]));
          gate[col] = logistic(sat16(static_cast<int64_t>(px) + mbqm(dot_h(h, col), q.mh[g])));
        }
        const int32_t *z = gate, *r = gate + U;
        if (!q.reset_after)  // r h requantized to h's parameters before its matmul
          for (int64_t k = 0; k < U; ++k)
            rh[k] = clamp8(rdpot(r[k] * (h[k] - q.zp_h), 15) + q.zp_h);
        for (int64_t j = 0; j < U; ++j) {
          const int64_t col = 2 * U + j;
          const int32_t px = sat16(mbqm(dot_x(xt, col), q.mx[2]));
          int32_t pre;
          if (q.reset_after) {
            const int32_t ph = sat16(mbqm(dot_h(h, col), q.mh[2]));
            pre = sat16(static_cast<int64_t>(px) + rdpot(r[j] * ph, 15));
          } else {
            pre = sat16(static_cast<int64_t>(px) + sat16(mbqm(dot_h(rh, col), q.mh[2])));
          }
          const int32_t hh = tanh16(pre, 3);
          // acc = z (q_h - zp_h) + MBQM((32767 - z) hh, 2^-15 / s_h)     units 2^-15 s_h
          const int32_t acc = z[j] * (h[j] - q.zp_h) + mbqm((32767 - z[j]) * hh, q.m_out);
          hn[j] = clamp8(rdpot(acc, 15) + q.zp_h);
        }
      }
      for (int64_t j = 0; j < U; ++j) h[j] = last[j] = hn[j];
      if (out)
        for (int64_t j = 0; j < U; ++j) out[j] = static_cast<int8_t>(hn[j]);
    }
    if (!q.sequences)
      for (int64_t j = 0; j < U; ++j) y[b * U + j] = static_cast<int8_t>(last[j]);
  }
}

// The arguments as the kernels read them.
struct QRnnArgs {
  const int32_t *bx = nullptr, *bh = nullptr;
  const bool* mask = nullptr;
};
QRnnArgs qrnn_args(const KernelCtx& k, const QRnnParams& q) {
  const int nin = q.lstm ? 4 : 5;
  QRnnArgs a;
  a.bx = k.in[3].numel() > 0 ? k.in[3].data<int32_t>() : nullptr;
  // A GRU with reset_after = false has its biases on the input side only (spec 3.7): the
  // recurrent_bias argument is not read.
  a.bh = !q.lstm && q.reset_after && k.in[4].numel() > 0 ? k.in[4].data<int32_t>() : nullptr;
  a.mask = q.has_mask ? k.in[nin].data<bool>() : nullptr;
  return a;
}

void run_qrnn(const KernelCtx& k) {
  const auto& q = k.params<QRnnParams>();
  const QRnnArgs a = qrnn_args(k, q);
  qrnn_reference(q, k.in[0].data<int8_t>(), k.in[1].data<int8_t>(), k.in[2].data<int8_t>(), a.bx,
                 a.bh, a.mask, k.out[0].data<int8_t>());
}

using QRnnFastFn = void (*)(const kernels::QRnnConfig&, kernels::QRnnWorkspace&, const int8_t*,
                            const int8_t*, const int8_t*, const int32_t*, const int32_t*,
                            const bool*, int8_t*);

// A fast row of qlstm / qgru (kernels/fast/int8_rnn.h); every shape is supported.
FastKernel qrnn_row(const std::string& op, Isa isa, QRnnFastFn fn) {
  return {.name = op + "_s8__" + isa_name(isa),
          .isa = isa,
          .supports = {},
          .run = [fn](const KernelCtx& k) {
            const auto& q = k.params<QRnnParams>();
            const QRnnArgs a = qrnn_args(k, q);
            std::lock_guard<std::mutex> lock(q.fast_ws->mu);
            fn(q.fast_cfg, *q.fast_ws, k.in[0].data<int8_t>(), k.in[1].data<int8_t>(),
               k.in[2].data<int8_t>(), a.bx, a.bh, a.mask, k.out[0].data<int8_t>());
          }};
}

// ---- timestep_mask -----------------------------------------------------------------------------

std::vector<ValueType> infer_timestep_mask(const InferCtx& c) {
  require_float(c, 0, "x");
  require_rank(c, 0, 3, "x");
  if (!c.attrs.has("mask_value"))
    LOWBIT_THROW(ValueError, c.op, ": attribute 'mask_value' is required");
  if (!std::isfinite(c.attrs.f("mask_value")))
    LOWBIT_THROW(ValueError, c.op, ": attribute 'mask_value' must be finite but is ",
                 c.attrs.f("mask_value"));
  const Shape& x = c.in[0].shape;
  return {{DType::kBool, Shape{x[0], x[1]}}};
}

}  // namespace

void register_int8_recurrent_ops() {
  for (const char* name : {"qlstm", "qgru"})
    register_op({.name = name,
                 .num_inputs = -1,
                 .infer = infer_qrnn,
                 .prepare = prepare_qrnn,
                 .reference = run_qrnn,
                 .fast = {qrnn_row(name, Isa::kAvx512Vnni, kernels::qrnn_s8__avx512_vnni),
                          qrnn_row(name, Isa::kAvx2, kernels::qrnn_s8__avx2)},
                 .doc = std::string("integer ") + (name[1] == 'l' ? "LSTM" : "GRU") +
                        " over a sequence (8x8_16: int8 x, weights and h, int16 gates" +
                        (name[1] == 'l' ? " and cell" : "") + "), optional timestep mask"});
  register_op({.name = "timestep_mask",
               .num_inputs = 1,
               .infer = infer_timestep_mask,
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return ScalarParam{c.attrs.f("mask_value")};
               },
               .reference =
                   [](const KernelCtx& k) {
                     // Keras Masking: a step is valid when any feature differs from mask_value
                     // (f32 comparison, as the float layer's not_equal).
                     const float mv = static_cast<float>(k.params<ScalarParam>().value);
                     const Tensor& x = k.in[0];
                     const int64_t rows = x.shape()[0] * x.shape()[1], d = x.shape()[2];
                     const float* px = x.data<float>();
                     bool* pm = k.out[0].data<bool>();
                     for (int64_t r = 0; r < rows; ++r) {
                       bool any = false;
                       for (int64_t i = 0; i < d; ++i) any = any || px[r * d + i] != mv;
                       pm[r] = any;
                     }
                   },
               .doc = "the timestep mask of a Masking layer: any(x[b, t, :] != mask_value)"});
}

}  // namespace lowbit::detail
