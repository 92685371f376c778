// Fused recurrences (include/lowbit/ops/rnn.h): lstm_sequence, gru_sequence,
// simple_rnn_sequence and their backward-through-time ops.
//
// Reference kernels: one batch row at a time (rows are independent), every sum in double, the
// states rounded to f32 after each step as a framework keeps them. The recurrent-kernel
// gradient is summed per element over the valid (b, t) in a fixed order, so nothing depends
// on the thread count. Fast kernels: src/kernels/fast/rnn.cc.
#include "lowbit/ops/rnn.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/fast/rnn.h"
#include "lowbit/ops.h"
#include "ops/families.h"
#include "ops/op_util.h"

namespace lowbit::detail {

namespace {

using kernels::RnnAct;
using kernels::RnnCell;
using kernels::RnnSeq;

// Work (multiply-adds) above which the reference kernels split rows across threads.
constexpr int64_t kParallelMacs = int64_t{1} << 18;

struct CellInfo {
  RnnCell cell;
  const char* op;
  int gates;             // gate blocks G of x_proj and recurrent_kernel
  int states;            // carried states (h, c)
  bool recurrent_bias;   // GRU: an input recurrent_bias [G*U]
  int workspace_blocks;  // width of the gates workspace in units of U
  const char* state_names[2];
};

constexpr CellInfo kLstm{RnnCell::kLstm, "lstm_sequence", 4, 2, false, 5, {"h0", "c0"}};
constexpr CellInfo kGru{RnnCell::kGru, "gru_sequence", 3, 1, true, 4, {"h0", ""}};
constexpr CellInfo kSimple{RnnCell::kSimple, "simple_rnn_sequence", 1, 1, false, 1, {"h0", ""}};

// ---- activations ---------------------------------------------------------------------------

bool parse_act(const std::string& s, RnnAct* a) {
  if (s == "tanh")
    *a = RnnAct::kTanh;
  else if (s == "sigmoid")
    *a = RnnAct::kSigmoid;
  else if (s == "hard_sigmoid")
    *a = RnnAct::kHardSigmoid;
  else if (s == "relu")
    *a = RnnAct::kRelu;
  else if (s == "linear")
    *a = RnnAct::kLinear;
  else
    return false;
  return true;
}

RnnAct require_act(const InferCtx& c, const char* attr, const char* dflt) {
  RnnAct a;
  const std::string s = c.attrs.s(attr, dflt);
  if (!parse_act(s, &a))
    LOWBIT_THROW(ValueError, c.op, ": attribute '", attr,
                 "': expected tanh, sigmoid, hard_sigmoid, relu or linear but found '", s, "'");
  return a;
}

// Kernels: the shape rule has validated the name.
RnnAct kernel_act(const Attrs& attrs, const char* attr, const char* dflt) {
  RnnAct a = RnnAct::kTanh;
  parse_act(attrs.s(attr, dflt), &a);
  return a;
}

double act_apply(RnnAct a, double x) {
  switch (a) {
    case RnnAct::kTanh:
      return std::tanh(x);
    case RnnAct::kSigmoid:
      return x >= 0 ? 1 / (1 + std::exp(-x)) : std::exp(x) / (1 + std::exp(x));
    case RnnAct::kHardSigmoid:
      return std::min(std::max(x + 3, 0.0), 6.0) / 6;
    case RnnAct::kRelu:
      return std::max(x, 0.0);
    case RnnAct::kLinear:
      break;
  }
  return x;
}

// The derivative at the point whose activation is y (every supported activation allows it).
double act_grad(RnnAct a, double y) {
  switch (a) {
    case RnnAct::kTanh:
      return 1 - y * y;
    case RnnAct::kSigmoid:
      return y * (1 - y);
    case RnnAct::kHardSigmoid:
      return y > 0 && y < 1 ? 1.0 / 6 : 0.0;
    case RnnAct::kRelu:
      return y > 0 ? 1.0 : 0.0;
    case RnnAct::kLinear:
      break;
  }
  return 1;
}

float act_f(RnnAct a, double x) { return static_cast<float>(act_apply(a, x)); }

// ---- shape rules ---------------------------------------------------------------------------

std::string dim_str(int64_t d) { return d == kUnknown ? "?" : std::to_string(d); }

// One dimension (batch, time, units) seen by several arguments: the first known value wins,
// later arguments are checked against it.
int64_t first_known(std::initializer_list<int64_t> ds) {
  for (int64_t d : ds)
    if (d != kUnknown) return d;
  return kUnknown;
}

// Input i must be f32 with dims compatible with `want` ("[batch, units]" in the message).
void require_shape(const InferCtx& c, int i, const char* arg, std::vector<int64_t> want,
                   const char* meaning, bool any_float_or_bool = false) {
  const ValueType& t = c.in[i];
  if (any_float_or_bool) {
    if (t.dtype != DType::kF32 && t.dtype != DType::kBool)
      LOWBIT_THROW(DTypeError, c.op, ": argument '", arg,
                   "': expected dtype bool or f32 but found ", type_str(t));
  } else {
    require_float(c, i, arg);
  }
  bool ok = t.shape.rank() == static_cast<int>(want.size());
  for (int d = 0; ok && d < t.shape.rank(); ++d) ok = dims_compatible(t.shape[d], want[d]);
  if (!ok) {
    std::string w = "[";
    for (size_t d = 0; d < want.size(); ++d) w += (d ? "," : "") + dim_str(want[d]);
    LOWBIT_THROW(ShapeError, c.op, ": argument '", arg, "': expected shape ", w, "] (", meaning,
                 ") but found ", t.shape.str());
  }
}

struct Flags {
  bool masked = false, recurrent_dropout = false;
};

Flags require_input_count(const InferCtx& c, int base, const char* base_names) {
  Flags f{c.attrs.b("masked", false), c.attrs.b("recurrent_dropout", false)};
  const size_t want = base + f.masked + f.recurrent_dropout;
  if (c.in.size() != want)
    LOWBIT_THROW(ValueError, c.op, ": expected ", want, " inputs (", base_names,
                 f.masked ? ", mask" : "", f.recurrent_dropout ? ", recurrent_dropout_mask" : "",
                 ") but found ", c.in.size());
  return f;
}

void require_attrs(const InferCtx& c, const CellInfo& cell) {
  for (const char* a : {"go_backwards", "return_sequences", "zero_output_for_mask"})
    c.attrs.b(a, false);  // type check
  require_act(c, "activation", "tanh");
  if (cell.gates > 1) require_act(c, "recurrent_activation", "sigmoid");
  if (cell.cell == RnnCell::kGru) c.attrs.b("reset_after", true);
}

// Dims of a sequence op: batch B, time T, units U (G*U the gate width).
struct Dims {
  int64_t b = kUnknown, t = kUnknown, u = kUnknown;
  int64_t gu(int g) const { return u == kUnknown ? kUnknown : g * u; }
};

int64_t units_from_width(int64_t width, int g) {
  return width != kUnknown && width % g == 0 ? width / g : kUnknown;
}

// Checks the optional trailing inputs (mask at `i`, then the recurrent dropout mask).
void require_masks(const InferCtx& c, int i, const Flags& f, const Dims& d, int g) {
  if (f.masked) require_shape(c, i++, "mask", {d.b, d.t}, "batch, timesteps", true);
  if (f.recurrent_dropout)
    require_shape(c, i, "recurrent_dropout_mask", {d.b, d.gu(g)}, "batch, gates*units");
}

ValueType f32(std::vector<int64_t> dims) { return {DType::kF32, Shape(std::move(dims))}; }

std::vector<ValueType> infer_forward(const InferCtx& c, const CellInfo& cell) {
  const int g = cell.gates;
  const int base = 2 + cell.recurrent_bias + cell.states;
  const char* names = cell.cell == RnnCell::kLstm  ? "x_proj, recurrent_kernel, h0, c0"
                      : cell.cell == RnnCell::kGru ? "x_proj, recurrent_kernel, recurrent_bias, h0"
                                                   : "x_proj, recurrent_kernel, h0";
  const Flags f = require_input_count(c, base, names);
  require_attrs(c, cell);
  require_float(c, 0, "x_proj");
  require_rank(c, 0, 3, "x_proj");
  require_float(c, 1, "recurrent_kernel");
  require_rank(c, 1, 2, "recurrent_kernel");
  const int s0 = 2 + cell.recurrent_bias;  // first state
  for (int s = 0; s < cell.states; ++s) {
    require_float(c, s0 + s, cell.state_names[s]);
    require_rank(c, s0 + s, 2, cell.state_names[s]);
  }
  const Shape& xp = c.in[0].shape;
  const Shape& rk = c.in[1].shape;
  Dims d;
  d.u = first_known(
      {rk[0], units_from_width(rk[1], g), units_from_width(xp[2], g), c.in[s0].shape[1]});
  d.b = first_known({xp[0], c.in[s0].shape[0]});
  d.t = xp[1];
  if (f.masked) {
    const Shape& m = c.in[base].shape;
    if (m.rank() == 2) {
      d.b = first_known({d.b, m[0]});
      d.t = first_known({d.t, m[1]});
    }
  }
  require_shape(c, 1, "recurrent_kernel", {d.u, d.gu(g)}, "units, gates*units");
  require_shape(c, 0, "x_proj", {d.b, d.t, d.gu(g)}, "batch, timesteps, gates*units");
  if (cell.recurrent_bias) require_shape(c, 2, "recurrent_bias", {d.gu(g)}, "gates*units");
  for (int s = 0; s < cell.states; ++s)
    require_shape(c, s0 + s, cell.state_names[s], {d.b, d.u}, "batch, units");
  require_masks(c, base, f, d, g);

  std::vector<ValueType> out;
  out.push_back(c.attrs.b("return_sequences", true) ? f32({d.b, d.t, d.u}) : f32({d.b, d.u}));
  for (int s = 0; s < cell.states; ++s) out.push_back(f32({d.b, d.u}));
  for (int s = 0; s < cell.states; ++s) out.push_back(f32({d.b, d.t, d.u}));  // h_prev, c_prev
  const int64_t w = d.u == kUnknown ? kUnknown : cell.workspace_blocks * d.u;
  out.push_back(f32({d.b, d.t, w}));  // gates
  return out;
}

// Backward inputs: dy, d states..., recurrent_kernel, h_prev (, c_prev), gates [, masks].
std::vector<ValueType> infer_backward(const InferCtx& c, const CellInfo& cell) {
  const int g = cell.gates;
  const int ns = cell.states;
  const int base = 1 + ns + 1 + ns + 1;
  const char* names = cell.cell == RnnCell::kLstm
                          ? "dy, dh, dc, recurrent_kernel, h_prev, c_prev, gates"
                          : "dy, dh, recurrent_kernel, h_prev, gates";
  const Flags f = require_input_count(c, base, names);
  require_attrs(c, cell);
  const int rk = 1 + ns, hp = rk + 1, gates = hp + ns;
  require_float(c, rk, "recurrent_kernel");
  require_rank(c, rk, 2, "recurrent_kernel");
  require_float(c, hp, "h_prev");
  require_rank(c, hp, 3, "h_prev");
  const Shape& r = c.in[rk].shape;
  const Shape& h = c.in[hp].shape;
  Dims d;
  d.u = first_known({r[0], units_from_width(r[1], g), h[2]});
  d.b = h[0];
  d.t = h[1];
  require_shape(c, rk, "recurrent_kernel", {d.u, d.gu(g)}, "units, gates*units");
  require_shape(c, hp, "h_prev", {d.b, d.t, d.u}, "batch, timesteps, units");
  if (ns == 2) require_shape(c, hp + 1, "c_prev", {d.b, d.t, d.u}, "batch, timesteps, units");
  const int64_t w = d.u == kUnknown ? kUnknown : cell.workspace_blocks * d.u;
  require_shape(c, gates, "gates", {d.b, d.t, w}, "batch, timesteps, workspace width");
  if (c.attrs.b("return_sequences", true))
    require_shape(c, 0, "dy", {d.b, d.t, d.u}, "batch, timesteps, units");
  else
    require_shape(c, 0, "dy", {d.b, d.u}, "batch, units");
  require_shape(c, 1, "dh", {d.b, d.u}, "batch, units");
  if (ns == 2) require_shape(c, 2, "dc", {d.b, d.u}, "batch, units");
  require_masks(c, base, f, d, g);

  std::vector<ValueType> out{f32({d.b, d.t, d.gu(g)}), f32({d.u, d.gu(g)})};
  if (cell.recurrent_bias) out.push_back(f32({d.gu(g)}));
  for (int s = 0; s < ns; ++s) out.push_back(f32({d.b, d.u}));
  return out;
}

// ---- gradient rules ------------------------------------------------------------------------

GradFn forward_grad(const CellInfo& cell) {
  return [cell](const GradCtx& g) -> std::vector<Value> {
    const int ns = cell.states;
    const int first_ws = 1 + ns;
    for (size_t k = first_ws; k < g.out.size(); ++k)
      if (g.has_dy(static_cast<int>(k)))
        LOWBIT_THROW(UnsupportedError, cell.op, ": output ", k,
                     " is the backward pass's workspace and carries no gradient");
    std::vector<Value> in{g.dy(0)};
    for (int s = 0; s < ns; ++s) in.push_back(g.dy(1 + s));
    in.push_back(g.in[1]);  // recurrent_kernel
    for (size_t k = first_ws; k < g.out.size(); ++k) in.push_back(g.out[k]);
    const int base = 2 + cell.recurrent_bias + ns;
    for (size_t k = base; k < g.in.size(); ++k) in.push_back(g.in[k]);  // masks
    std::vector<Value> d = ops::apply(std::string(cell.op) + "_backward", in, g.attrs);
    // d = {dx_proj, d recurrent_kernel, (d recurrent_bias), d states...}
    std::vector<Value> grads(d.begin(), d.end());
    grads.resize(g.in.size());  // no gradient for the masks
    return grads;
  };
}

// ---- kernels: shared ------------------------------------------------------------------------

// The prepared part of a sequence: geometry and attributes (pointers are bound per call).
struct RnnPrepared {
  RnnSeq seq;
  bool masked = false, rdrop = false;
};

// h_prev_like: the [B, T, U] workspace (an output of the forward op, an input of the backward).
std::any prepare_rnn(const PrepareCtx& c, const CellInfo& cell, const Shape& h_prev_like) {
  RnnPrepared p;
  RnnSeq& s = p.seq;
  s.batch = h_prev_like[0];
  s.steps = h_prev_like[1];
  s.units = h_prev_like[2];
  s.gates = cell.gates;
  s.go_backwards = c.attrs.b("go_backwards", false);
  s.return_sequences = c.attrs.b("return_sequences", true);
  s.zero_output_for_mask = c.attrs.b("zero_output_for_mask", false);
  s.reset_after = c.attrs.b("reset_after", true);
  s.act = kernel_act(c.attrs, "activation", "tanh");
  s.ract = kernel_act(c.attrs, "recurrent_activation", "sigmoid");
  p.masked = c.attrs.b("masked", false);
  p.rdrop = c.attrs.b("recurrent_dropout", false);
  return p;
}

RnnSeq seq_of(const KernelCtx& k) {
  const RnnPrepared& p = k.params<RnnPrepared>();
  RnnSeq s = p.seq;
  const bool masked = p.masked;
  const bool rdrop = p.rdrop;
  const size_t n = k.in.size();
  if (rdrop) s.recurrent_dropout = k.in[n - 1].data<float>();
  if (masked) {
    const Tensor& m = k.in[n - 1 - rdrop];
    if (m.dtype() == DType::kBool)
      s.mask_bool = m.data<bool>();
    else
      s.mask_f32 = m.data<float>();
  }
  return s;
}

bool parallel_rows(const RnnSeq& s) {
  return s.batch > 1 && s.batch * s.steps * s.gates * s.units * s.units > kParallelMacs;
}

// Recurrent-dropout factor of unit u in gate block `block` of row b (1 without dropout).
double rdm(const RnnSeq& s, int64_t b, int64_t block, int64_t u) {
  return s.recurrent_dropout ? s.recurrent_dropout[(b * s.gates + block) * s.units + u] : 1.0;
}

// Writes out_t of row b (processing step t) from the carried h, given whether the step was
// valid and whether any earlier step was. Returns nothing; y is [B,T,U] or [B,U].
void write_output(const RnnSeq& s, float* y, int64_t b, int64_t t, const float* h, bool valid,
                  bool seen) {
  const bool last = t == s.steps - 1;
  if (!s.return_sequences && !last) return;
  float* out = s.return_sequences ? y + (b * s.steps + t) * s.units : y + b * s.units;
  const bool use_h = s.zero_output_for_mask ? valid : seen;
  for (int64_t u = 0; u < s.units; ++u) out[u] = use_h ? h[u] : 0.0f;
}

// Processing index of row b's first valid step (steps if none).
int64_t first_valid_step(const RnnSeq& s, int64_t b) {
  for (int64_t t = 0; t < s.steps; ++t)
    if (s.valid(b, s.input_step(t))) return t;
  return s.steps;
}

// Adds the gradient of out_t (processing step t) to the carried dh of row b.
void add_output_grad(const RnnSeq& s, const float* dy, int64_t b, int64_t t, int64_t first_valid,
                     double* dh) {
  const bool last = t == s.steps - 1;
  if (!s.return_sequences && !last) return;
  const bool use_h = s.zero_output_for_mask ? s.valid(b, s.input_step(t)) : t >= first_valid;
  if (!use_h) return;
  const float* g = s.return_sequences ? dy + (b * s.steps + t) * s.units : dy + b * s.units;
  for (int64_t u = 0; u < s.units; ++u) dh[u] += g[u];
}

template <class F>
void for_each_row(const RnnSeq& s, F f) {
#pragma omp parallel for schedule(static) if (parallel_rows(s))
  for (int64_t b = 0; b < s.batch; ++b) f(b);
}

// d recurrent_kernel [U, G*U]: dR[u, j] = sum over valid (b, ti) in order of
// a(b, ti, u, j) * d(b, ti, j), in double; split across threads by u only.
template <class A, class D>
void recurrent_kernel_grad(const RnnSeq& s, float* dr, A a, D d) {
  const int64_t gu = s.gates * s.units;
#pragma omp parallel for schedule(static) if (parallel_rows(s))
  for (int64_t u = 0; u < s.units; ++u) {
    std::vector<double> acc(gu, 0.0);
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t ti = 0; ti < s.steps; ++ti) {
        if (!s.valid(b, ti)) continue;
        for (int64_t j = 0; j < gu; ++j) acc[j] += a(b, ti, u, j) * d(b, ti, j);
      }
    for (int64_t j = 0; j < gu; ++j) dr[u * gu + j] = static_cast<float>(acc[j]);
  }
}

// ---- kernels: LSTM -------------------------------------------------------------------------

void lstm_forward_reference(const KernelCtx& k) {
  const RnnSeq s = seq_of(k);
  const int64_t U = s.units, T = s.steps, GU = 4 * U;
  const float* xp = k.in[0].data<float>();
  const float* rk = k.in[1].data<float>();
  float* y = k.out[0].data<float>();
  float* h_all = k.out[1].data<float>();
  float* c_all = k.out[2].data<float>();
  float* hprev = k.out[3].data<float>();
  float* cprev = k.out[4].data<float>();
  float* gates = k.out[5].data<float>();
  std::copy_n(k.in[2].data<float>(), s.batch * U, h_all);
  std::copy_n(k.in[3].data<float>(), s.batch * U, c_all);
  for_each_row(s, [&](int64_t b) {
    float* h = h_all + b * U;
    float* c = c_all + b * U;
    std::vector<double> z(GU);
    bool seen = false;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t ti = s.input_step(t);
      const int64_t row = b * T + ti;
      std::copy_n(h, U, hprev + row * U);
      std::copy_n(c, U, cprev + row * U);
      float* gr = gates + row * 5 * U;
      const bool valid = s.valid(b, ti);
      if (!valid) {
        std::fill_n(gr, 5 * U, 0.0f);
      } else {
        for (int64_t j = 0; j < GU; ++j) {
          double acc = xp[row * GU + j];
          for (int64_t u = 0; u < U; ++u) acc += h[u] * rdm(s, b, j / U, u) * rk[u * GU + j];
          z[j] = acc;
        }
        for (int64_t u = 0; u < U; ++u) {
          const float i = act_f(s.ract, z[u]), f = act_f(s.ract, z[U + u]);
          const float g = act_f(s.act, z[2 * U + u]), o = act_f(s.ract, z[3 * U + u]);
          const float cn =
              static_cast<float>(static_cast<double>(f) * c[u] + static_cast<double>(i) * g);
          const float a = act_f(s.act, cn);
          gr[u] = i;
          gr[U + u] = f;
          gr[2 * U + u] = g;
          gr[3 * U + u] = o;
          gr[4 * U + u] = a;
          c[u] = cn;
          h[u] = static_cast<float>(static_cast<double>(o) * a);
        }
        seen = true;
      }
      write_output(s, y, b, t, h, valid, seen);
    }
    if (T == 0 && !s.return_sequences) std::fill_n(y + b * U, U, 0.0f);
  });
}

void lstm_backward_reference(const KernelCtx& k) {
  const RnnSeq s = seq_of(k);
  const int64_t U = s.units, T = s.steps, GU = 4 * U;
  const float* dy = k.in[0].data<float>();
  const float* rk = k.in[3].data<float>();
  const float* hprev = k.in[4].data<float>();
  const float* cprev = k.in[5].data<float>();
  const float* gates = k.in[6].data<float>();
  float* dxp = k.out[0].data<float>();
  float* dh0 = k.out[2].data<float>();
  float* dc0 = k.out[3].data<float>();
  for_each_row(s, [&](int64_t b) {
    std::vector<double> dh(k.in[1].data<float>() + b * U, k.in[1].data<float>() + (b + 1) * U);
    std::vector<double> dc(k.in[2].data<float>() + b * U, k.in[2].data<float>() + (b + 1) * U);
    std::vector<double> dz(GU);
    const int64_t first_valid = first_valid_step(s, b);
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t ti = s.input_step(t);
      const int64_t row = b * T + ti;
      add_output_grad(s, dy, b, t, first_valid, dh.data());
      float* dz_out = dxp + row * GU;
      if (!s.valid(b, ti)) {
        std::fill_n(dz_out, GU, 0.0f);
        continue;
      }
      const float* gr = gates + row * 5 * U;
      for (int64_t u = 0; u < U; ++u) {
        const double i = gr[u], f = gr[U + u], g = gr[2 * U + u], o = gr[3 * U + u];
        const double a = gr[4 * U + u];
        const double dcn = dc[u] + dh[u] * o * act_grad(s.act, a);
        dz[u] = dcn * g * act_grad(s.ract, i);
        dz[U + u] = dcn * cprev[row * U + u] * act_grad(s.ract, f);
        dz[2 * U + u] = dcn * i * act_grad(s.act, g);
        dz[3 * U + u] = dh[u] * a * act_grad(s.ract, o);
        dc[u] = dcn * f;
      }
      for (int64_t j = 0; j < GU; ++j) dz_out[j] = static_cast<float>(dz[j]);
      for (int64_t u = 0; u < U; ++u) {
        double acc = 0;
        for (int64_t j = 0; j < GU; ++j) acc += dz[j] * rk[u * GU + j] * rdm(s, b, j / U, u);
        dh[u] = acc;
      }
    }
    for (int64_t u = 0; u < U; ++u) {
      dh0[b * U + u] = static_cast<float>(dh[u]);
      dc0[b * U + u] = static_cast<float>(dc[u]);
    }
  });
  recurrent_kernel_grad(
      s, k.out[1].data<float>(),
      [&](int64_t b, int64_t ti, int64_t u, int64_t j) {
        return hprev[(b * T + ti) * U + u] * rdm(s, b, j / U, u);
      },
      [&](int64_t b, int64_t ti, int64_t j) -> double { return dxp[(b * T + ti) * GU + j]; });
}

// ---- kernels: GRU --------------------------------------------------------------------------

void gru_forward_reference(const KernelCtx& k) {
  const RnnSeq s = seq_of(k);
  const int64_t U = s.units, T = s.steps, GU = 3 * U;
  const float* xp = k.in[0].data<float>();
  const float* rk = k.in[1].data<float>();
  const float* rb = k.in[2].data<float>();
  float* y = k.out[0].data<float>();
  float* h_all = k.out[1].data<float>();
  float* hprev = k.out[2].data<float>();
  float* gates = k.out[3].data<float>();
  std::copy_n(k.in[3].data<float>(), s.batch * U, h_all);
  for_each_row(s, [&](int64_t b) {
    float* h = h_all + b * U;
    std::vector<double> rec(GU);
    std::vector<float> q(U), z(U), r(U);
    bool seen = false;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t ti = s.input_step(t);
      const int64_t row = b * T + ti;
      std::copy_n(h, U, hprev + row * U);
      float* gr = gates + row * 4 * U;
      const bool valid = s.valid(b, ti);
      if (!valid) {
        std::fill_n(gr, 4 * U, 0.0f);
      } else {
        const float* x = xp + row * GU;
        // z and r blocks (and the h block for reset_after) of h @ R + rb
        const int64_t blocks = s.reset_after ? 3 : 2;
        for (int64_t j = 0; j < blocks * U; ++j) {
          double acc = rb[j];
          for (int64_t u = 0; u < U; ++u) acc += h[u] * rdm(s, b, j / U, u) * rk[u * GU + j];
          rec[j] = acc;
        }
        for (int64_t u = 0; u < U; ++u) {
          z[u] = act_f(s.ract, x[u] + rec[u]);
          r[u] = act_f(s.ract, x[U + u] + rec[U + u]);
        }
        if (!s.reset_after) {
          for (int64_t u = 0; u < U; ++u)
            q[u] = static_cast<float>(static_cast<double>(r[u]) * h[u] * rdm(s, b, 2, u));
          for (int64_t j = 0; j < U; ++j) {
            double acc = rb[2 * U + j];
            for (int64_t u = 0; u < U; ++u)
              acc += static_cast<double>(q[u]) * rk[u * GU + 2 * U + j];
            rec[2 * U + j] = acc;
          }
        }
        for (int64_t u = 0; u < U; ++u) {
          const float rh = static_cast<float>(rec[2 * U + u]);
          const float hh = s.reset_after
                               ? act_f(s.act, x[2 * U + u] + static_cast<double>(r[u]) * rh)
                               : act_f(s.act, x[2 * U + u] + rec[2 * U + u]);
          gr[u] = z[u];
          gr[U + u] = r[u];
          gr[2 * U + u] = hh;
          gr[3 * U + u] = s.reset_after ? rh : q[u];
        }
        for (int64_t u = 0; u < U; ++u)
          h[u] = static_cast<float>(static_cast<double>(z[u]) * h[u] +
                                    (1.0 - z[u]) * static_cast<double>(gr[2 * U + u]));
        seen = true;
      }
      write_output(s, y, b, t, h, valid, seen);
    }
    if (T == 0 && !s.return_sequences) std::fill_n(y + b * U, U, 0.0f);
  });
}

void gru_backward_reference(const KernelCtx& k) {
  const RnnSeq s = seq_of(k);
  const int64_t U = s.units, T = s.steps, GU = 3 * U;
  const float* dy = k.in[0].data<float>();
  const float* rk = k.in[2].data<float>();
  const float* hprev = k.in[3].data<float>();
  const float* gates = k.in[4].data<float>();
  float* dxp = k.out[0].data<float>();
  float* drb = k.out[2].data<float>();
  float* dh0 = k.out[3].data<float>();
  for_each_row(s, [&](int64_t b) {
    std::vector<double> dh(k.in[1].data<float>() + b * U, k.in[1].data<float>() + (b + 1) * U);
    std::vector<double> drp(GU), dhh_pre(U), dnext(U);
    const int64_t first_valid = first_valid_step(s, b);
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t ti = s.input_step(t);
      const int64_t row = b * T + ti;
      add_output_grad(s, dy, b, t, first_valid, dh.data());
      float* dx_out = dxp + row * GU;
      if (!s.valid(b, ti)) {
        std::fill_n(dx_out, GU, 0.0f);
        continue;
      }
      const float* gr = gates + row * 4 * U;
      const float* hp = hprev + row * U;
      for (int64_t u = 0; u < U; ++u) {
        const double z = gr[u], hh = gr[2 * U + u];
        dhh_pre[u] = dh[u] * (1 - z) * act_grad(s.act, hh);
        drp[u] = dh[u] * (hp[u] - hh) * act_grad(s.ract, z);  // d z pre-activation
        dnext[u] = dh[u] * z;
      }
      if (s.reset_after) {
        for (int64_t u = 0; u < U; ++u) {
          const double r = gr[U + u], rh = gr[3 * U + u];
          drp[U + u] = dhh_pre[u] * rh * act_grad(s.ract, r);
          drp[2 * U + u] = dhh_pre[u] * r;
        }
      } else {
        // q = r * h * m_h feeds R[:, 2U:]: dq = dhh_pre @ R_h^T.
        for (int64_t u = 0; u < U; ++u) {
          double dq = 0;
          for (int64_t j = 0; j < U; ++j) dq += dhh_pre[j] * rk[u * GU + 2 * U + j];
          const double r = gr[U + u], hm = hp[u] * rdm(s, b, 2, u);
          drp[U + u] = dq * hm * act_grad(s.ract, r);
          dnext[u] += dq * r * rdm(s, b, 2, u);
          drp[2 * U + u] = dhh_pre[u];
        }
      }
      for (int64_t u = 0; u < U; ++u) {
        dx_out[u] = static_cast<float>(drp[u]);
        dx_out[U + u] = static_cast<float>(drp[U + u]);
        dx_out[2 * U + u] = static_cast<float>(dhh_pre[u]);
      }
      // Through the recurrent product h @ R (all blocks for reset_after, z and r otherwise).
      const int64_t blocks = s.reset_after ? 3 : 2;
      for (int64_t u = 0; u < U; ++u) {
        double acc = dnext[u];
        for (int64_t j = 0; j < blocks * U; ++j)
          acc += drp[j] * rk[u * GU + j] * rdm(s, b, j / U, u);
        dh[u] = acc;
      }
    }
    for (int64_t u = 0; u < U; ++u) dh0[b * U + u] = static_cast<float>(dh[u]);
  });
  // The recurrent pre-activation gradient: dx_proj except the h block, which is r * dhh_pre
  // with reset_after (its matrix input is h * m_h) and dhh_pre otherwise (input q).
  auto drp_at = [&](int64_t b, int64_t ti, int64_t j) -> double {
    const int64_t row = b * T + ti;
    const double d = dxp[row * GU + j];
    if (j >= 2 * U && s.reset_after) return d * gates[row * 4 * U + U + (j - 2 * U)];
    return d;
  };
  recurrent_kernel_grad(
      s, k.out[1].data<float>(),
      [&](int64_t b, int64_t ti, int64_t u, int64_t j) -> double {
        const int64_t row = b * T + ti;
        if (j >= 2 * U && !s.reset_after) return gates[row * 4 * U + 3 * U + u];
        return hprev[row * U + u] * rdm(s, b, j / U, u);
      },
      drp_at);
  std::vector<double> acc(GU, 0.0);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t ti = 0; ti < T; ++ti)
      if (s.valid(b, ti))
        for (int64_t j = 0; j < GU; ++j) acc[j] += drp_at(b, ti, j);
  for (int64_t j = 0; j < GU; ++j) drb[j] = static_cast<float>(acc[j]);
}

// ---- kernels: SimpleRNN --------------------------------------------------------------------

void simple_forward_reference(const KernelCtx& k) {
  const RnnSeq s = seq_of(k);
  const int64_t U = s.units, T = s.steps;
  const float* xp = k.in[0].data<float>();
  const float* rk = k.in[1].data<float>();
  float* y = k.out[0].data<float>();
  float* h_all = k.out[1].data<float>();
  float* hprev = k.out[2].data<float>();
  float* gates = k.out[3].data<float>();
  std::copy_n(k.in[2].data<float>(), s.batch * U, h_all);
  for_each_row(s, [&](int64_t b) {
    float* h = h_all + b * U;
    std::vector<float> hn(U);
    bool seen = false;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t ti = s.input_step(t);
      const int64_t row = b * T + ti;
      std::copy_n(h, U, hprev + row * U);
      float* gr = gates + row * U;
      const bool valid = s.valid(b, ti);
      if (!valid) {
        std::fill_n(gr, U, 0.0f);
      } else {
        for (int64_t j = 0; j < U; ++j) {
          double acc = xp[row * U + j];
          for (int64_t u = 0; u < U; ++u) acc += h[u] * rdm(s, b, 0, u) * rk[u * U + j];
          hn[j] = act_f(s.act, acc);
        }
        std::copy_n(hn.data(), U, gr);
        std::copy_n(hn.data(), U, h);
        seen = true;
      }
      write_output(s, y, b, t, h, valid, seen);
    }
    if (T == 0 && !s.return_sequences) std::fill_n(y + b * U, U, 0.0f);
  });
}

void simple_backward_reference(const KernelCtx& k) {
  const RnnSeq s = seq_of(k);
  const int64_t U = s.units, T = s.steps;
  const float* dy = k.in[0].data<float>();
  const float* rk = k.in[2].data<float>();
  const float* hprev = k.in[3].data<float>();
  const float* gates = k.in[4].data<float>();
  float* dxp = k.out[0].data<float>();
  float* dh0 = k.out[2].data<float>();
  for_each_row(s, [&](int64_t b) {
    std::vector<double> dh(k.in[1].data<float>() + b * U, k.in[1].data<float>() + (b + 1) * U);
    std::vector<double> dz(U);
    const int64_t first_valid = first_valid_step(s, b);
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t ti = s.input_step(t);
      const int64_t row = b * T + ti;
      add_output_grad(s, dy, b, t, first_valid, dh.data());
      float* dz_out = dxp + row * U;
      if (!s.valid(b, ti)) {
        std::fill_n(dz_out, U, 0.0f);
        continue;
      }
      for (int64_t j = 0; j < U; ++j) {
        dz[j] = dh[j] * act_grad(s.act, gates[row * U + j]);
        dz_out[j] = static_cast<float>(dz[j]);
      }
      for (int64_t u = 0; u < U; ++u) {
        double acc = 0;
        for (int64_t j = 0; j < U; ++j) acc += dz[j] * rk[u * U + j];
        dh[u] = acc * rdm(s, b, 0, u);
      }
    }
    for (int64_t u = 0; u < U; ++u) dh0[b * U + u] = static_cast<float>(dh[u]);
  });
  recurrent_kernel_grad(
      s, k.out[1].data<float>(),
      [&](int64_t b, int64_t ti, int64_t u, int64_t) {
        return hprev[(b * T + ti) * U + u] * rdm(s, b, 0, u);
      },
      [&](int64_t b, int64_t ti, int64_t j) -> double { return dxp[(b * T + ti) * U + j]; });
}

// ---- fast kernels (src/kernels/fast/rnn.cc) ---------------------------------------------------

FastKernel fast_forward(const CellInfo& cell, Isa isa) {
  return {.name = std::string(cell.op) + "_f32__" + isa_name(isa),
          .isa = isa,
          .supports = [](const KernelCtx& k) { return kernels::rnn_fast_supported(seq_of(k)); },
          .run =
              [cell, run = isa == Isa::kAvx512
                               ? kernels::rnn_forward_f32__avx512
                               : kernels::rnn_forward_f32__portable](const KernelCtx& k) {
                const int ns = cell.states;
                kernels::RnnForwardArgs a;
                a.x_proj = k.in[0].data<float>();
                a.rk = k.in[1].data<float>();
                if (cell.recurrent_bias) a.rb = k.in[2].data<float>();
                const int s0 = 2 + cell.recurrent_bias;
                a.h0 = k.in[s0].data<float>();
                if (ns == 2) a.c0 = k.in[s0 + 1].data<float>();
                a.y = k.out[0].data<float>();
                a.h = k.out[1].data<float>();
                if (ns == 2) a.c = k.out[2].data<float>();
                a.hprev = k.out[1 + ns].data<float>();
                if (ns == 2) a.cprev = k.out[2 + ns].data<float>();
                a.gates = k.out[1 + 2 * ns].data<float>();
                run(cell.cell, seq_of(k), a);
              }};
}

FastKernel fast_backward(const CellInfo& cell, Isa isa) {
  const int ns = cell.states, hp = 2 + ns;  // inputs: dy, d states, rk, h_prev...
  return {
      .name = std::string(cell.op) + "_backward_f32__" + isa_name(isa),
      .isa = isa,
      .supports = [](const KernelCtx& k) { return kernels::rnn_fast_supported(seq_of(k)); },
      .run =
          [cell, ns, hp,
           run = isa == Isa::kAvx512 ? kernels::rnn_backward_f32__avx512
                                     : kernels::rnn_backward_f32__portable](const KernelCtx& k) {
            kernels::RnnBackwardArgs a;
            a.dy = k.in[0].data<float>();
            a.dh = k.in[1].data<float>();
            if (ns == 2) a.dc = k.in[2].data<float>();
            a.rk = k.in[1 + ns].data<float>();
            a.hprev = k.in[hp].data<float>();
            if (ns == 2) a.cprev = k.in[hp + 1].data<float>();
            a.gates = k.in[hp + ns].data<float>();
            a.dxp = k.out[0].data<float>();
            a.drk = k.out[1].data<float>();
            const int d0 = 2 + cell.recurrent_bias;
            if (cell.recurrent_bias) a.drb = k.out[2].data<float>();
            a.dh0 = k.out[d0].data<float>();
            if (ns == 2) a.dc0 = k.out[d0 + 1].data<float>();
            run(cell.cell, seq_of(k), a);
          }};
}

// ---- registration --------------------------------------------------------------------------

void register_cell(const CellInfo& cell, KernelFn forward, KernelFn backward, const char* doc) {
  register_op({.name = cell.op,
               .num_inputs = -1,
               .infer = [cell](const InferCtx& c) { return infer_forward(c, cell); },
               .grad = forward_grad(cell),
               .prepare =
                   [cell](const PrepareCtx& c) {
                     return prepare_rnn(c, cell, c.out[1 + cell.states].shape);
                   },
               .reference = std::move(forward),
               .fast = {fast_forward(cell, Isa::kAvx512), fast_forward(cell, Isa::kPortable)},
               .doc = doc});
  register_op({.name = std::string(cell.op) + "_backward",
               .num_inputs = -1,
               .infer = [cell](const InferCtx& c) { return infer_backward(c, cell); },
               .prepare =
                   [cell](const PrepareCtx& c) {
                     return prepare_rnn(c, cell, c.in[2 + cell.states].shape);
                   },
               .reference = std::move(backward),
               .fast = {fast_backward(cell, Isa::kAvx512), fast_backward(cell, Isa::kPortable)},
               .doc = std::string("backward through time of ") + cell.op +
                      ": d x_proj, d recurrent_kernel, (d recurrent_bias), d initial states"});
}

}  // namespace

void register_rnn_ops() {
  register_cell(kLstm, lstm_forward_reference, lstm_backward_reference,
                "LSTM over a sequence (Keras gates i f c o) from projected inputs, with masks");
  register_cell(kGru, gru_forward_reference, gru_backward_reference,
                "GRU over a sequence (Keras gates z r h, reset_after or not) from projected "
                "inputs, with masks");
  register_cell(kSimple, simple_forward_reference, simple_backward_reference,
                "SimpleRNN over a sequence from projected inputs, with masks");
}

}  // namespace lowbit::detail
