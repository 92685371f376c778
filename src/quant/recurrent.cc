// QuantizedLSTM / QuantizedGRU: the integer LSTM step of quantization-semantics.md 3.7 in float,
// unrolled over time (include/lowbit/quant/recurrent.h states the numerics and the rules).
#include "lowbit/quant/recurrent.h"

#include <cmath>
#include <functional>
#include <sstream>

#include "lowbit/nn/layers.h"
#include "lowbit/ops.h"
#include "lowbit/ops/fake_quant.h"
#include "lowbit/ops/integer_numerics.h"
#include "lowbit/quant/range.h"
#include "quant/quant_layers.h"

namespace lowbit::quant {

namespace {

constexpr int kCellMaxBits = 6;  // p in [0, 6]: the integer kernel's tanh supports Q0.15..Q6.9

std::string fmt(double v) {
  std::ostringstream os;
  os.precision(4);
  os << v;
  return os.str();
}

// A kernel [rows, G*U] viewed as [rows*U, G] (one column per gate block) and back.
template <Operand T>
T blocks_view(const T& w, int64_t gates, int64_t units) {
  const int64_t rows = w.shape()[0];
  return ops::reshape(ops::transpose(ops::reshape(w, {rows, gates, units}), {0, 2, 1}),
                      {rows * units, gates});
}
template <Operand T>
T blocks_unview(const T& v, int64_t gates, int64_t units) {
  const int64_t rows = v.shape()[0] / units;
  return ops::reshape(ops::transpose(ops::reshape(v, {rows, units, gates}), {0, 2, 1}),
                      {rows, gates * units});
}

// p = the smallest integer in [0, 6] with 2^p >= m: the number of k in 0..5 with m > 2^k.
template <Operand T>
T cell_bits(const T& m) {
  T p = ops::cast(ops::greater(m, ops::scalar_like(m, 1.0)), DType::kF32);
  for (int k = 1; k < kCellMaxBits; ++k)
    p = p + ops::cast(ops::greater(m, ops::scalar_like(m, std::ldexp(1.0, k))), DType::kF32);
  return p;
}

const nn::Weight& inner_weight(const nn::Layer& l, const std::string& name) {
  for (const auto& w : l.weights())
    if (w.name == name) return w;
  LOWBIT_THROW(ValueError, l.name(), ": has no weight '", name, "' (not built)");
}

// nv where the batch had a valid step (any undefined: no mask, always), else old.
Value guarded(const Value& any, const Value& nv, const Value& old) {
  return any.defined() ? ops::where(any, nv, old) : nv;
}

}  // namespace

QuantizedRecurrentLayer::QuantizedRecurrentLayer(nn::LayerPtr layer, QuantizerConfig activations,
                                                 int weight_bits, std::string name,
                                                 int64_t quant_delay)
    : nn::Layer("quantized_recurrent", name.empty() && layer ? layer->name() : std::move(name)),
      layer_(std::move(layer)),
      act_(std::move(activations)),
      weight_bits_(weight_bits),
      quant_delay_(quant_delay) {
  if (!layer_) LOWBIT_THROW(ValueError, "QuantizedRecurrent: the float layer is null");
  const std::string c = layer_->class_name();
  if (c != "LSTM" && c != "GRU")
    LOWBIT_THROW(ValueError, "QuantizedRecurrent: expected an LSTM or GRU layer but found ",
                 layer_->name(), " (", c, ")");
  lstm_ = c == "LSTM";
  gates_ = lstm_ ? 4 : 3;
  inner_ = layer_->get_config();
  units_ = inner_.at("units").get<int64_t>();
  const std::string who = class_name() + "(" + layer_->name() + ")";
  if (inner_.value("activation", "") != "tanh" ||
      inner_.value("recurrent_activation", "") != "sigmoid")
    LOWBIT_THROW(UnsupportedError, who,
                 ": the integer LSTM/GRU computes activation tanh and recurrent_activation "
                 "sigmoid but the layer has '",
                 inner_.value("activation", ""), "' and '",
                 inner_.value("recurrent_activation", ""), "'");
  validate(act_, QuantizerRole::kActivation, who + ".activations");
  if (act_.scheme != "tf" || act_.range == "moving_average_debiased")
    LOWBIT_THROW(UnsupportedError, who,
                 ": activations: the recurrent quantizers support scheme 'tf' with range "
                 "moving_average, all_values or last_value but found '",
                 act_.scheme, "' / '", act_.range, "'");
  if (weight_bits < 2 || weight_bits > 16)
    LOWBIT_THROW(ValueError, who, ": weight_bits: expected 2..16 but found ", weight_bits);
  if (quant_delay < 0)
    LOWBIT_THROW(ValueError, who, ": quant_delay: expected >= 0 but found ", quant_delay);
  trainable_ = layer_->trainable();
}

const nn::Weight& QuantizedRecurrentLayer::state(const std::string& name) const {
  for (const auto& w : weights_)
    if (w.name == name) return w;
  LOWBIT_THROW(ValueError, name_, " (", class_name(), "): quantizer state '", name,
               "' is missing (layer not built)");
}
nn::Weight& QuantizedRecurrentLayer::state(const std::string& name) {
  return const_cast<nn::Weight&>(static_cast<const QuantizedRecurrentLayer&>(*this).state(name));
}

void QuantizedRecurrentLayer::build(const std::vector<Shape>& s) {
  if (!layer_->built()) {
    Graph g;
    std::vector<Value> in;
    for (size_t i = 0; i < s.size(); ++i)
      in.push_back(g.placeholder("input" + std::to_string(i), DType::kF32, s[i]));
    nn::CallContext ctx(g, false);
    layer_->apply(in, ctx);
  }
  auto add = [&](const std::string& n, const Shape& shape, double v) {
    weights_.push_back({n, Tensor::full(shape, v, DType::kF32), false});
  };
  add("x_min", {}, act_.init_min);
  add("x_max", {}, act_.init_max);
  add("h_min", {}, act_.init_min);
  add("h_max", {}, act_.init_max);
  if (lstm_) add("cell_max_abs", {}, std::max(std::fabs(act_.init_min), std::fabs(act_.init_max)));
  for (const char* w : {"kernel", "recurrent_kernel"}) {
    add(std::string(w) + "_min", {gates_}, -6);
    add(std::string(w) + "_max", {gates_}, 6);
  }
  if (quant_delay_ > 0 || act_.freeze_after >= 0) step_weight(*this);
}

Value QuantizedRecurrentLayer::quantize_blocks(const Value& w, const std::string& name,
                                               nn::CallContext& ctx, Value* steps) {
  const nn::Weight &wmin = state(name + "_min"), &wmax = state(name + "_max");
  const bool update = ctx.training() && !ctx.bound(wmin).defined();
  Value mn = ctx.var(*this, wmin), mx = ctx.var(*this, wmax);
  Value v = blocks_view(w, gates_, units_);
  if (update) {
    ops::MinMax<Value> b = ops::min_max(v, true);
    ops::MinMax<Value> r = range_target(b.min, b.max, true, weight_bits_, true);
    ctx.add_update(mn, r.min);
    ctx.add_update(mx, r.max);
    mn = r.min;
    mx = r.max;
  }
  Value q = ops::fake_quant_with_min_max_vars_per_channel(v, mn, mx, weight_bits_, true);
  // The grid steps as fake_quant_nudge computes them (f32): (max - min) / (2^bits - 2).
  if (steps) *steps = (mx - mn) / ops::scalar_like(mx, std::ldexp(1.0, weight_bits_) - 2.0);
  return blocks_unview(q, gates_, units_);
}

std::vector<Value> QuantizedRecurrentLayer::call(const std::vector<Value>& in,
                                                 nn::CallContext& ctx) {
  const int ns = lstm_ ? 2 : 1;
  if (in.size() != 1 && in.size() != static_cast<size_t>(1 + ns))
    LOWBIT_THROW(ValueError, name_, " (", class_name(), "): expected 1 input (x) or ", 1 + ns,
                 " (x and the initial state", ns == 2 ? "s h, c" : " h", ") but found ", in.size());
  Value x = in[0];
  if (x.dtype() != DType::kF32 || x.shape().rank() != 3)
    LOWBIT_THROW(ShapeError, name_, " (", class_name(),
                 "): expected x f32 [batch, timesteps, features] but found ", dtype_name(x.dtype()),
                 x.shape().str());
  const int64_t steps = x.shape()[1], u = units_, g = gates_;
  if (steps == kUnknown)
    LOWBIT_THROW(UnsupportedError, name_, " (", class_name(),
                 "): the number of timesteps must be known (the quantized recurrence is "
                 "unrolled) but x has shape ",
                 x.shape().str());
  for (size_t s = 1; s < in.size(); ++s) {
    const Shape& ss = in[s].shape();
    if (in[s].dtype() != DType::kF32 || ss.rank() != 2 || (ss[1] != kUnknown && ss[1] != u))
      LOWBIT_THROW(ShapeError, name_, " (", class_name(), "): initial state ", s - 1,
                   ": expected f32 [batch, ", u, "] but found ", dtype_name(in[s].dtype()),
                   ss.str());
  }
  const bool training = ctx.training();
  RangeConfig rc = range_config(act_);
  rc.per_channel = false;  // the recurrent ranges (x, h, cell) are per tensor
  const bool sequences = inner_.value("return_sequences", false);
  const bool backwards = inner_.value("go_backwards", false);
  const bool zero_output = inner_.value("zero_output_for_mask", false);
  const bool reset_after = lstm_ || inner_.value("reset_after", true);
  const double rate = inner_.value("dropout", 0.0), rrate = inner_.value("recurrent_dropout", 0.0);
  const int64_t seed =
      inner_.contains("seed") && !inner_.at("seed").is_null()
          ? inner_.at("seed").get<int64_t>()
          : static_cast<int64_t>(std::hash<std::string>{}(layer_->name()) & 0x7fffffff);
  Graph& graph = ctx.graph();

  // Quant delay: before it every quantizer is the identity and the integer functions are the
  // float ones (the float LSTM/GRU), while the trackers run; freeze_after: the trackers stop.
  Value warm, frozen;
  if (quant_delay_ > 0 || act_.freeze_after >= 0) {
    Value step = bind_step(*this, ctx);
    if (training && quant_delay_ > 0)
      warm = ops::less(step, ops::scalar_like(step, static_cast<double>(quant_delay_)));
    if (training && act_.freeze_after >= 0)
      frozen =
          ops::greater_equal(step, ops::scalar_like(step, static_cast<double>(act_.freeze_after)));
  }
  auto sel = [&](const Value& q, const Value& f) {
    return warm.defined() ? ops::where(warm, f, q) : q;
  };
  auto track = [&](const Value& var, const Value& nv) {
    ctx.add_update(var, frozen.defined() ? ops::where(frozen, var, nv) : nv);
  };
  auto logistic = [&](const Value& a) { return sel(ops::fixed_logistic(a), ops::sigmoid(a)); };
  auto tanh_q = [&](const Value& a, const Value& bits) {
    return sel(ops::fixed_tanh(a, bits), ops::tanh(a));
  };

  // Mask: bool [B, T]; masked steps of x become 0 before anything reads them.
  Value mask = ctx.input_mask(0), any_valid;
  if (mask.defined()) {
    if (mask.dtype() != DType::kBool) mask = ops::not_equal(mask, ops::scalar_like(mask, 0.0));
    x = ops::where(ops::reshape(mask, {-1, steps, 1}), x, ops::scalar_like(x, 0.0));
    Value valid = ops::cast(mask, DType::kF32);
    any_valid = ops::greater(ops::max(valid), ops::scalar_like(valid, 0.0));
  }

  // x: int8 asymmetric, range updated from this batch (0 at masked steps changes nothing: the
  // target range always contains 0).
  // A tf grid's step as fake_quant_nudge computes it (f32): (max - min) / (qmax - qmin).
  auto grid_step = [&](const Value& mn, const Value& mx) {
    return (mx - mn) /
           ops::scalar_like(mx, std::ldexp(1.0, act_.bits) - (act_.narrow_range ? 2 : 1));
  };
  Value xq, xq_grid, x_step;
  {
    Graph::Scope scope(graph, "x_quant");
    const bool update = training && !ctx.bound(state("x_min")).defined();
    Value mn = ctx.var(*this, state("x_min")), mx = ctx.var(*this, state("x_max"));
    if (update) {
      ops::MinMax<Value> b = ops::min_max(x);
      RangeState<Value> n = update_range(RangeState<Value>{mn, mx, {}, {}, {}}, b.min, b.max, rc);
      Value nmn = guarded(any_valid, n.min, mn), nmx = guarded(any_valid, n.max, mx);
      if (frozen.defined()) {
        nmn = ops::where(frozen, mn, nmn);
        nmx = ops::where(frozen, mx, nmx);
      }
      ctx.add_update(mn, nmn);
      ctx.add_update(mx, nmx);
      mn = nmn;
      mx = nmx;
    }
    xq_grid = ops::fake_quant_with_min_max_vars(x, mn, mx, act_.bits, act_.narrow_range);
    x_step = grid_step(mn, mx);
    xq = sel(xq_grid, x);
  }

  // Weights per gate block; biases float.
  const nn::Weight& wk = inner_weight(*layer_, "kernel");
  const nn::Weight& wr = inner_weight(*layer_, "recurrent_kernel");
  Value kernel, rkernel, kq, rkq, kstep, rkstep;  // kq, rkq: quantized also during a delay
  {
    Graph::Scope scope(graph, "kernel_quant");
    Value k = ctx.var(*layer_, wk);
    kq = quantize_blocks(k, "kernel", ctx, &kstep);
    kernel = sel(kq, k);
  }
  {
    Graph::Scope scope(graph, "recurrent_kernel_quant");
    Value k = ctx.var(*layer_, wr);
    rkq = quantize_blocks(k, "recurrent_kernel", ctx, &rkstep);
    rkernel = sel(rkq, k);
  }
  Value input_bias, recurrent_bias;
  if (inner_.value("use_bias", true)) {
    Value bias = ctx.var(*layer_, inner_weight(*layer_, "bias"));
    if (!lstm_ && reset_after) {
      input_bias = ops::reshape(ops::slice(bias, {0, 0}, {1, ops::kSliceMax}), {g * u});
      recurrent_bias = ops::reshape(ops::slice(bias, {1, 0}, {2, ops::kSliceMax}), {g * u});
    } else {
      input_bias = bias;
    }
  }

  const bool drop = training && rate > 0 && rate < 1, rdrop = training && rrate > 0 && rrate < 1;
  Value xd = drop ? ops::dropout(xq, ctx.rng_step(), rate, seed, {kUnknown, 1, kUnknown}) : xq;
  Value e12 = graph.constant(Tensor::scalar(-12.0f), "q3_12_exponent");
  Value three = graph.constant(Tensor::scalar(3.0f), "gate_int_bits");
  auto P = [&](const Value& v) { return sel(ops::fake_quant_pot(v, e12), v); };  // Q3.12 grid
  // The forward is the integer step's arithmetic exactly (ops::fixed_matmul, fixed_hidden,
  // fake_quant_pot_mul: int32 bias, (M0, shift) multipliers, exact products, the op's
  // rounding and saturation), the gradient that of the float expression of the same value
  // (ops::straight_through); `exact` only where the inputs are on their grids (no dropout).
  auto exact = [&](const Value& path, const Value& value, const Value& warm_value) {
    return sel(ops::straight_through(path, value), warm_value);
  };
  Value xp = ops::matmul(xd, kernel);
  if (input_bias.defined()) xp = xp + input_bias;
  Value ax;  // input partial sums of every step [B, T, G*U]
  if (drop) {
    ax = P(xp);
  } else {
    const int64_t depth = x.shape()[2];
    Value e = ops::fixed_matmul(ops::reshape(xq_grid, {-1, depth}), x_step, kq, kstep, input_bias);
    ax = exact(ops::fake_quant_pot(xp, e12), ops::reshape(e, {-1, steps, g * u}), xp);
  }

  // h: one int8 quantizer for the outputs and the recurrent input, read before this batch's
  // update (the recurrence needs it from step 1 on); the cell exponent likewise.
  const bool update_h = training && !ctx.bound(state("h_min")).defined();
  Value hmin = ctx.var(*this, state("h_min")), hmax = ctx.var(*this, state("h_max"));
  auto FQh = [&](const Value& v) {
    return sel(ops::fake_quant_with_min_max_vars(v, hmin, hmax, act_.bits, act_.narrow_range), v);
  };
  const Value h_step = grid_step(hmin, hmax);
  // The new h code of the integer step (form lstm, gru, reset) with the gradient of FQh(path).
  auto H = [&](const std::vector<Value>& in, const std::string& form, const Value& path) {
    return exact(ops::fake_quant_with_min_max_vars(path, hmin, hmax, act_.bits, act_.narrow_range),
                 ops::fixed_hidden(in, hmin, hmax, form, act_.bits, act_.narrow_range), path);
  };
  // A recurrent partial sum: exact unless recurrent dropout moved h off its grid.
  auto R = [&](const Value& hv, const Value& w, const Value& wq, const Value& wsteps,
               const Value& bias, bool saturate) {
    Value mm = ops::matmul(hv, w);
    if (bias.defined()) mm = mm + bias;
    if (rdrop) return saturate ? P(mm) : mm;
    Value path = saturate ? ops::fake_quant_pot(mm, e12) : mm;
    return exact(path, ops::fixed_matmul(hv, h_step, wq, wsteps, bias, saturate), mm);
  };
  Value cmax, p, cell_exp;
  bool update_c = false;
  if (lstm_) {
    update_c = training && !ctx.bound(state("cell_max_abs")).defined();
    cmax = ctx.var(*this, state("cell_max_abs"));
    p = cell_bits(cmax);
    cell_exp = p - 15.0;
  }
  auto C = [&](const Value& v) { return sel(ops::fake_quant_pot(v, cell_exp), v); };  // 2^(p-15)
  // A product of two int16 codes rounded to the grid 2^e (RDPOT), exactly.
  auto Cm = [&](const Value& a, const Value& b, const Value& e) {
    Value v = a * b;
    return exact(ops::fake_quant_pot(v, e), ops::fake_quant_pot_mul(a, b, e), v);
  };

  Value zero =
      ops::reshape(ops::zeros_like(ops::slice(xp, {0, 0, 0}, {ops::kSliceMax, 1, u})), {-1, u});
  Value h = in.size() > 1 ? FQh(in[1]) : zero;
  Value c = lstm_ ? (in.size() > 1 ? C(in[2]) : zero) : Value();
  Value rdm;
  if (rdrop) rdm = ops::dropout(ops::ones_like(zero), ctx.rng_step(), rrate, seed + 1000003);

  auto block = [&](const Value& v, int64_t k0, int64_t k1) {
    return ops::slice(v, {0, k0 * u}, {ops::kSliceMax, k1 * u});
  };
  Value rk_zr, rk_h, rkq_zr, rkq_h, rks_zr, rks_h;  // GRU reset_after = false: the candidate's
  if (!reset_after) {                               // recurrent matmul is separate
    rk_zr = ops::slice(rkernel, {0, 0}, {ops::kSliceMax, 2 * u});
    rk_h = ops::slice(rkernel, {0, 2 * u}, {ops::kSliceMax, 3 * u});
    rkq_zr = ops::slice(rkq, {0, 0}, {ops::kSliceMax, 2 * u});
    rkq_h = ops::slice(rkq, {0, 2 * u}, {ops::kSliceMax, 3 * u});
    rks_zr = ops::slice(rkstep, {0}, {2});
    rks_h = ops::slice(rkstep, {2}, {3});
  }
  std::vector<Value> outs, h_stats, c_stats;
  Value last = zero;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = backwards ? steps - 1 - s : s;
    Graph::Scope scope(graph, "step_" + std::to_string(s));
    Value ax_t = ops::reshape(ops::slice(ax, {0, t, 0}, {ops::kSliceMax, t + 1, ops::kSliceMax}),
                              {-1, g * u});
    Value hin = rdm.defined() ? h * rdm : h;
    Value h_pre, h_new, c_new, c_sum;
    if (lstm_) {
      // Q3.12: the recurrent partial sum is not saturated before it is added (TFLite)
      Value a = P(ax_t + R(hin, rkernel, rkq, rkstep, Value(), false));
      Value ig = logistic(block(a, 0, 1)), fg = logistic(block(a, 1, 2));
      Value gg = tanh_q(block(a, 2, 3), three), og = logistic(block(a, 3, 4));
      c_sum = Cm(fg, c, cell_exp) + Cm(ig, gg, cell_exp);
      c_new = C(c_sum);
      Value tc = tanh_q(c_new, p);
      h_pre = og * tc;
      h_new = H({og, tc}, "lstm", h_pre);
    } else {
      Value zr, hh;
      if (reset_after) {
        // z, r: the recurrent sums unsaturated; the candidate's saturated (spec 3.7 GRU)
        Value ah = R(hin, rkernel, rkq, rkstep, recurrent_bias, false);
        zr = logistic(P(block(ax_t, 0, 2) + block(ah, 0, 2)));
        Value r = block(zr, 1, 2);
        Value rp = rdrop ? P(r * P(block(ah, 2, 3))) : Cm(r, P(block(ah, 2, 3)), e12);
        hh = tanh_q(P(block(ax_t, 2, 3) + rp), three);
      } else {
        zr = logistic(P(block(ax_t, 0, 2) + R(hin, rk_zr, rkq_zr, rks_zr, Value(), false)));
        Value r = block(zr, 1, 2);
        // r h requantized with h's parameters
        Value rh = rdrop ? FQh(r * hin) : H({r, hin}, "reset", r * hin);
        hh = tanh_q(P(block(ax_t, 2, 3) + R(rh, rk_h, rkq_h, rks_h, Value(), true)), three);
      }
      Value z = block(zr, 0, 1);
      // 1 - z: the code 32767 - z (the float cell's 1 - z during the delay)
      h_pre = z * h + sel((1.0 - std::ldexp(1.0, -15)) - z, 1.0 - z) * hh;
      h_new = H({z, h, hh}, "gru", h_pre);
    }
    if (mask.defined()) {
      Value m = ops::reshape(ops::slice(mask, {0, t}, {ops::kSliceMax, t + 1}), {-1, 1});
      h = ops::where(m, h_new, h);
      if (lstm_) c = ops::where(m, c_new, c);
      last = ops::where(m, h_new, zero_output ? zero : last);
      if (update_h) h_stats.push_back(ops::where(m, h_pre, zero));
      if (update_c) c_stats.push_back(ops::where(m, ops::abs(c_sum), zero));
    } else {
      h = h_new;
      c = c_new;
      last = h_new;
      if (update_h) h_stats.push_back(h_pre);
      if (update_c) c_stats.push_back(ops::abs(c_sum));
    }
    if (sequences) outs.push_back(last);
  }

  // Tracker updates from the valid steps (and the given initial states).
  if (update_h) {
    Graph::Scope scope(graph, "h_quant");
    if (in.size() > 1) h_stats.push_back(in[1]);
    ops::MinMax<Value> b = ops::min_max(ops::concat(h_stats, 1));
    RangeState<Value> n = update_range(RangeState<Value>{hmin, hmax, {}, {}, {}}, b.min, b.max, rc);
    track(hmin, guarded(any_valid, n.min, hmin));
    track(hmax, guarded(any_valid, n.max, hmax));
  }
  if (update_c) {
    Graph::Scope scope(graph, "cell_quant");
    if (in.size() > 1) c_stats.push_back(ops::abs(in[2]));
    Value m = ops::max(ops::concat(c_stats, 1));
    track(cmax, guarded(any_valid, moving_average(cmax, m, act_.ema_decay), cmax));
  }

  std::vector<Value> out{sequences ? ops::stack(outs, 1) : last};
  if (inner_.value("return_state", false)) {
    out.push_back(h);
    if (lstm_) out.push_back(c);
  }
  return out;
}

std::vector<Value> QuantizedRecurrentLayer::compute_mask(const std::vector<Value>&,
                                                         const std::vector<Value>& outputs,
                                                         nn::CallContext& ctx) {
  // As the float layer: with return_sequences the sequence output carries the mask (reversed
  // for go_backwards, whose output is in processing order); states never do.
  std::vector<Value> masks(outputs.size());
  const Value m = ctx.input_mask(0);
  if (!inner_.value("return_sequences", false) || !m.defined()) return masks;
  const Value out_mask = inner_.value("go_backwards", false)
                             ? ops::slice(m, {0, -1}, {ops::kSliceMax, ops::kSliceMin}, {1, -1})
                             : m;
  for (size_t i = 0; i < outputs.size(); ++i)
    if (outputs[i].rank() == 3) masks[i] = out_mask;
  return masks;
}

Json QuantizedRecurrentLayer::get_config() const {
  Json j = nn::Layer::get_config();
  j["layer"] = nn::layer_to_config(*layer_);
  j["activations"] = to_json(act_);
  j["weight_bits"] = weight_bits_;
  j["quant_delay"] = quant_delay_;
  return j;
}

void QuantizedRecurrentLayer::set_trainable(bool t) {
  trainable_ = t;
  layer_->set_trainable(t);
}

int QuantizedRecurrentLayer::cell_int_bits() const {
  if (!lstm_) return 0;
  return static_cast<int>(cell_bits(state("cell_max_abs").value).get_as_double(0));
}

bool QuantizedRecurrentLayer::awaiting_calibration() const {
  if (weights_.empty()) return false;  // not built
  for (const auto& w : weights_)
    if (w.name == "step") return w.value.get_as_double(0) == 0;
  for (const char* n : {"x_min", "h_min"})
    if (state(n).value.get_as_double(0) != static_cast<float>(act_.init_min)) return false;
  for (const char* n : {"x_max", "h_max"})
    if (state(n).value.get_as_double(0) != static_cast<float>(act_.init_max)) return false;
  return true;
}

std::string QuantizedBidirectionalLayer::summary_note() const {
  std::string s;
  for (const auto* d : {&forward_, &backward_}) {
    if (!*d) continue;
    const std::string note = (*d)->summary_note();
    if (note.empty()) continue;
    if (!s.empty()) s += "\n    ";
    s += (d == &forward_ ? "forward " : "backward ") + (*d)->name() + ": " + note;
  }
  return s;
}

std::string QuantizedRecurrentLayer::summary_note() const {
  if (weights_.empty()) return "";
  auto range = [&](const char* n) {
    return "[" + fmt(state(std::string(n) + "_min").value.get_as_double(0)) + ", " +
           fmt(state(std::string(n) + "_max").value.get_as_double(0)) + "]";
  };
  std::string s =
      std::string("integer ") + (lstm_ ? "LSTM" : "GRU") + " step (8x8_16): gates Q3.12 -> Q0.15";
  if (lstm_) {
    const int p = cell_int_bits();
    s += ", cell Q" + std::to_string(p) + "." + std::to_string(15 - p) + " (max|c| " +
         fmt(state("cell_max_abs").value.get_as_double(0)) + ")";
  }
  s += "\n    x, h: " + describe(act_) + ", x " + range("x") + ", h " + range("h");
  if (awaiting_calibration()) s += " (initial ranges: not calibrated yet)";
  s += "\n    weights: tf " + std::to_string(weight_bits_) +
       "-bit sym narrow per gate block last_value";
  return s;
}

void QuantizedRecurrentLayer::init_from_weights() {
  for (const char* n : {"kernel", "recurrent_kernel"}) {
    Tensor v = blocks_view(inner_weight(*layer_, n).value, gates_, units_);
    ops::MinMax<Tensor> b = ops::min_max(v, true);
    ops::MinMax<Tensor> r = range_target(b.min, b.max, true, weight_bits_, true);
    state(std::string(n) + "_min").value.copy_from(r.min);
    state(std::string(n) + "_max").value.copy_from(r.max);
  }
}

Tensor QuantizedRecurrentLayer::quantized_kernel() const {
  Tensor v = blocks_view(inner_weight(*layer_, "kernel").value, gates_, units_);
  return blocks_unview(
      ops::fake_quant_with_min_max_vars_per_channel(v, state("kernel_min").value,
                                                    state("kernel_max").value, weight_bits_, true),
      gates_, units_);
}
Tensor QuantizedRecurrentLayer::quantized_recurrent_kernel() const {
  Tensor v = blocks_view(inner_weight(*layer_, "recurrent_kernel").value, gates_, units_);
  return blocks_unview(ops::fake_quant_with_min_max_vars_per_channel(
                           v, state("recurrent_kernel_min").value,
                           state("recurrent_kernel_max").value, weight_bits_, true),
                       gates_, units_);
}

nn::LayerPtr QuantizedRecurrent(nn::LayerPtr layer, QuantizerConfig activations, int weight_bits,
                                const std::string& name, int64_t quant_delay) {
  return std::make_shared<QuantizedRecurrentLayer>(std::move(layer), std::move(activations),
                                                   weight_bits, name, quant_delay);
}

// ---- QuantizedBidirectional ---------------------------------------------------------------

namespace {
std::shared_ptr<QuantizedRecurrentLayer> direction(const Json& layer_config,
                                                   const QuantizerConfig& a, int bits,
                                                   int64_t delay, const char* which) {
  if (layer_config.is_object() && layer_config.contains("class_name")) {
    const std::string c = layer_config.at("class_name").get<std::string>();
    if (c == "LSTM" || c == "GRU") {
      nn::LayerPtr l = nn::layer_from_config(layer_config);
      return std::make_shared<QuantizedRecurrentLayer>(l, a, bits, l->name(), delay);
    }
    LOWBIT_THROW(ValueError, "QuantizedBidirectional: the ", which,
                 " layer must be an LSTM or GRU but is a ", c);
  }
  LOWBIT_THROW(ValueError, "QuantizedBidirectional: the config has no ", which, " layer");
}
}  // namespace

QuantizedBidirectionalLayer::QuantizedBidirectionalLayer(const Json& c, QuantizerConfig activations,
                                                         int weight_bits, std::string name,
                                                         int64_t quant_delay)
    : nn::Layer("quantized_bidirectional", std::move(name)) {
  merge_mode_ = c.contains("merge_mode") && !c.at("merge_mode").is_null()
                    ? c.at("merge_mode").get<std::string>()
                    : std::string("none");
  if (merge_mode_ != "concat" && merge_mode_ != "sum" && merge_mode_ != "mul" &&
      merge_mode_ != "ave" && merge_mode_ != "none")
    LOWBIT_THROW(ValueError, "QuantizedBidirectional: merge_mode: expected concat, sum, mul, ave ",
                 "or none but found '", merge_mode_, "'");
  forward_ = direction(c.value("layer", Json()), activations, weight_bits, quant_delay, "forward");
  backward_ = direction(c.value("backward_layer", Json()), activations, weight_bits, quant_delay,
                        "backward");
  sequences_ = c.at("layer").at("config").value("return_sequences", false);
}

void QuantizedBidirectionalLayer::build(const std::vector<Shape>& s) {
  Graph scratch;
  nn::CallContext ctx(scratch, false);
  std::vector<Value> in;
  for (size_t i = 0; i < s.size(); ++i)
    in.push_back(scratch.placeholder("input" + std::to_string(i), DType::kF32, s[i]));
  call(in, ctx);
}

std::vector<Value> QuantizedBidirectionalLayer::call(const std::vector<Value>& in,
                                                     nn::CallContext& ctx) {
  const size_t ns = forward_->class_name() == "QuantizedLSTM" ? 2 : 1;
  if (in.size() != 1 && in.size() != 1 + 2 * ns)
    LOWBIT_THROW(ValueError, name_, " (QuantizedBidirectional): expected 1 input (x) or ",
                 1 + 2 * ns, " (x, the forward initial states, then the backward ones) but found ",
                 in.size());
  std::vector<Value> fin{in[0]}, bin{in[0]};
  for (size_t k = 0; in.size() > 1 && k < ns; ++k) {
    fin.push_back(in[1 + k]);
    bin.push_back(in[1 + ns + k]);
  }
  return nn::merge_bidirectional(forward_->apply(fin, ctx), backward_->apply(bin, ctx), merge_mode_,
                                 sequences_);
}

std::vector<Value> QuantizedBidirectionalLayer::compute_mask(const std::vector<Value>&,
                                                             const std::vector<Value>& outputs,
                                                             nn::CallContext& ctx) {
  // As the float wrapper: the sequence outputs (merged, or both) carry the input mask.
  std::vector<Value> masks(outputs.size());
  const Value m = ctx.input_mask(0);
  if (!sequences_ || !m.defined()) return masks;
  const size_t seq = merge_mode_ == "none" ? 2 : 1;
  for (size_t i = 0; i < seq && i < outputs.size(); ++i) masks[i] = m;
  return masks;
}

Json QuantizedBidirectionalLayer::get_config() const {
  Json j = nn::Layer::get_config();
  j["merge_mode"] = merge_mode_ == "none" ? Json(nullptr) : Json(merge_mode_);
  j["layer"] = nn::layer_to_config(*forward_->layer());
  j["backward_layer"] = nn::layer_to_config(*backward_->layer());
  j["activations"] = to_json(forward_->activations());
  j["weight_bits"] = forward_->weight_bits();
  j["quant_delay"] = forward_->quant_delay();
  return j;
}

void QuantizedBidirectionalLayer::set_trainable(bool t) {
  trainable_ = t;
  forward_->set_trainable(t);
  backward_->set_trainable(t);
}

void QuantizedBidirectionalLayer::copy_float_weights(const nn::Layer& bidirectional) {
  for (const nn::Weight& w : bidirectional.weights()) {
    const size_t slash = w.name.find('/');
    const std::string owner = w.name.substr(0, slash), field = w.name.substr(slash + 1);
    nn::Layer* dst = nullptr;
    if (slash != std::string::npos && owner == forward_->layer()->name())
      dst = forward_->layer().get();
    else if (slash != std::string::npos && owner == backward_->layer()->name())
      dst = backward_->layer().get();
    if (!dst)
      LOWBIT_THROW(ValueError, name_, " (QuantizedBidirectional): weight '", w.name,
                   "' of the float layer belongs to neither direction");
    bool copied = false;
    for (nn::Weight& t : dst->weights())
      if (t.name == field) {
        if (t.value.shape() != w.value.shape())
          LOWBIT_THROW(ValueError, name_, " (QuantizedBidirectional): weight '", w.name,
                       "' has shape ", w.value.shape().str(), " but the copy has ",
                       t.value.shape().str());
        t.value.copy_from(w.value);
        copied = true;
      }
    if (!copied)
      LOWBIT_THROW(ValueError, name_, " (QuantizedBidirectional): no weight '", field, "' in ",
                   dst->name());
  }
  forward_->init_from_weights();
  backward_->init_from_weights();
}

void register_recurrent_quant_layers() {
  nn::register_layer("QuantizedBidirectional", [](const Json& c) -> nn::LayerPtr {
    return std::make_shared<QuantizedBidirectionalLayer>(
        c, quantizer_config_from_json(c.at("activations")), c.value("weight_bits", 8),
        c.value("name", ""), c.value("quant_delay", int64_t{0}));
  });
  for (const char* cls : {"QuantizedLSTM", "QuantizedGRU"})
    nn::register_layer(cls, [](const Json& c) {
      return QuantizedRecurrent(
          nn::layer_from_config(c.at("layer")), quantizer_config_from_json(c.at("activations")),
          c.value("weight_bits", 8), c.value("name", ""), c.value("quant_delay", int64_t{0}));
    });
}

}  // namespace lowbit::quant
