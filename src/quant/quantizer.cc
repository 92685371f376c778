// Quantizer state and the QAT layers: FakeQuant, QuantizeWrapper, FoldedConvBatchNorm
// (include/lowbit/quant/quantizer.h; docs/quantization.md).
#include "lowbit/quant/quantizer.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "lowbit/ops.h"
#include "lowbit/ops/fake_quant.h"
#include "lowbit/ops/quantizer_ops.h"
#include "lowbit/quant/observer.h"
#include "lowbit/quant/range.h"
#include "quant/quant_layers.h"

namespace lowbit::quant {

namespace {

// ---- the schemes: one row each ----------------------------------------------------------------
// Adding a scheme is adding a row (and its case in Quantizer::build/init_from/apply). The
// quantizer looks its row up by name (scheme_row); nothing else compares scheme strings.
enum class Kind { kTf, kTorch, kLsq, kPact, kBinary, kTernary, kNone };
struct SchemeRow {
  const char* name;
  Kind kind;
  bool weights, activations;           // the roles it may quantize
  bool has_bits;                       // bits (2..16) apply
  bool has_symmetric;                  // sym/asym applies (shown by describe)
  bool has_narrow;                     // narrow_range applies (shown by describe)
  std::vector<std::string> ranges;     // tracked schemes: the valid `range` values (min/max state)
  std::vector<std::string> variables;  // untracked schemes: their trainable state fields
};
const std::vector<SchemeRow>& scheme_rows() {
  static const std::vector<SchemeRow> rows = {
      {"tf",
       Kind::kTf,
       true,
       true,
       true,
       true,
       true,
       {"last_value", "moving_average", "moving_average_debiased", "all_values", "fixed"},
       {}},
      {"torch",
       Kind::kTorch,
       true,
       true,
       true,
       true,
       true,
       {"minmax", "moving_average", "last_value"},
       {}},
      {"lsq", Kind::kLsq, true, true, true, true, false, {}, {"step_size"}},
      {"pact", Kind::kPact, false, true, true, false, false, {}, {"alpha"}},
      {"binary", Kind::kBinary, true, false, false, false, false, {}, {}},
      {"ternary", Kind::kTernary, true, false, false, false, false, {}, {}},
      {"none", Kind::kNone, true, true, false, false, false, {}, {}},
  };
  return rows;
}
std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const std::string& n : v) out += (out.empty() ? "" : ", ") + n;
  return out;
}
// The row of c.scheme; ValueError naming `who` and the valid names otherwise.
const SchemeRow& scheme_row(const QuantizerConfig& c, const std::string& who = "quantizer") {
  std::vector<std::string> names;
  for (const SchemeRow& r : scheme_rows()) {
    if (c.scheme == r.name) return r;
    names.push_back(r.name);
  }
  LOWBIT_THROW(ValueError, who, ": scheme: expected one of ", join(names), " but found '", c.scheme,
               "'");
}
bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

template <size_t N>
bool one_of(const std::string& s, const char* const (&names)[N]) {
  return std::any_of(std::begin(names), std::end(names), [&](const char* n) { return s == n; });
}
template <size_t N>
std::string list(const char* const (&names)[N]) {
  std::string out;
  for (const char* n : names) out += (out.empty() ? "" : ", ") + std::string(n);
  return out;
}

std::string fmt(double v) {
  std::ostringstream os;
  os.precision(4);
  os << v;
  return os.str();
}

bool tracked(const QuantizerConfig& c) { return !scheme_row(c).ranges.empty(); }

// Builds a layer by tracing it once on a scratch graph (f32 placeholders: the layers wrapped
// here take float inputs, and Embedding accepts f32 ids) and returns its output types.
std::vector<ValueType> build_by_trace(nn::Layer& l, const std::vector<Shape>& shapes) {
  Graph g;
  std::vector<Value> in;
  for (size_t i = 0; i < shapes.size(); ++i)
    in.push_back(g.placeholder("input" + std::to_string(i), DType::kF32, shapes[i]));
  nn::CallContext ctx(g, false);
  std::vector<ValueType> out;
  for (const Value& v : l.apply(in, ctx)) out.push_back({v.dtype(), v.shape()});
  return out;
}

const nn::Weight* find_weight(const nn::Layer& l, const std::string& name) {
  for (const auto& w : l.weights())
    if (w.name == name) return &w;
  return nullptr;
}
const nn::Weight& need_weight(const nn::Layer& l, const std::string& name) {
  const nn::Weight* w = find_weight(l, name);
  if (!w) LOWBIT_THROW(ValueError, l.name(), " (", l.class_name(), "): has no weight '", name, "'");
  return *w;
}

// DepthwiseConv2D-style kernels [kh, kw, C, M] feed output channel c*M + m: per channel they
// are viewed as [kh*kw, C*M] (a reshape view, no copy).
bool depthwise_view(const std::string& weight, const Shape& s, bool per_channel) {
  return per_channel && weight == "depthwise_kernel" && s.rank() == 4;
}
Shape depthwise_shape(const Shape& s) { return Shape{s[0] * s[1], s[2] * s[3]}; }

std::string activation_of(const nn::Layer& l) {
  Json c = l.get_config();
  return c.contains("activation") && c.at("activation").is_string()
             ? c.at("activation").get<std::string>()
             : std::string("linear");
}

}  // namespace

// The layer's step counter: s64 [], +1 per training step (read before the increment).
nn::Weight& step_weight(nn::Layer& l) {
  for (auto& w : l.weights())
    if (w.name == "step") return w;
  l.weights().push_back({"step", Tensor::zeros({}, DType::kS64), false});
  return l.weights().back();
}
const nn::Weight& step_weight(const nn::Layer& l) {
  for (const auto& w : l.weights())
    if (w.name == "step") return w;
  LOWBIT_THROW(ValueError, l.name(), ": has no step counter (not built)");
}
// Binds the step counter; records its increment once per trace in training mode.
Value bind_step(nn::Layer& l, nn::CallContext& ctx) {
  const nn::Weight& w = step_weight(static_cast<const nn::Layer&>(l));
  const bool first = !ctx.bound(w).defined();
  Value step = ctx.var(l, w);
  if (ctx.training() && first) ctx.add_update(step, step + ops::scalar_like(step, 1));
  return step;
}

// ---- Configuration ----------------------------------------------------------------------------

QuantizerConfig default_weight_quantizer() {
  return {.scheme = "tf",
          .bits = 8,
          .symmetric = true,
          .narrow_range = true,
          .per_channel = true,
          .range = "last_value"};
}
QuantizerConfig default_activation_quantizer() { return {}; }
QuantizerConfig default_input_quantizer() {
  return {.range = "all_values", .init_min = 0, .init_max = 0};
}

void validate(const QuantizerConfig& c, QuantizerRole role, const std::string& who) {
  const bool weights = role == QuantizerRole::kWeight;
  const SchemeRow& row = scheme_row(c, who);
  if (weights && !row.weights)
    LOWBIT_THROW(ValueError, who, ": scheme '", c.scheme, "' quantizes activations, not weights");
  if (!weights && !row.activations)
    LOWBIT_THROW(ValueError, who, ": scheme '", c.scheme, "' quantizes weights, not activations");
  if (row.has_bits && (c.bits < 2 || c.bits > 16))
    LOWBIT_THROW(ValueError, who, ": bits: expected 2..16 but found ", c.bits);
  if (!row.ranges.empty() && !contains(row.ranges, c.range))
    LOWBIT_THROW(ValueError, who, ": range: expected one of ", join(row.ranges), " for scheme '",
                 c.scheme, "' but found '", c.range, "'");
  if (!(c.ema_decay >= 0 && c.ema_decay <= 1))
    LOWBIT_THROW(ValueError, who, ": ema_decay: expected a value in [0, 1] but found ",
                 c.ema_decay);
  if (!(c.init_min <= c.init_max))
    LOWBIT_THROW(ValueError, who, ": init_min (", c.init_min, ") must be <= init_max (", c.init_max,
                 ")");
  if (c.freeze_after < -1)
    LOWBIT_THROW(ValueError, who, ": freeze_after: expected -1 (never) or >= 0 but found ",
                 c.freeze_after);
  if (c.range == "fixed" && !(c.init_min <= 0 && 0 <= c.init_max && c.init_min < c.init_max))
    LOWBIT_THROW(ValueError, who, ": range 'fixed' keeps [init_min, init_max], which must hold 0 ",
                 "and be non-empty, but is [", c.init_min, ", ", c.init_max, "]");
  if (row.kind == Kind::kPact && !(c.init_max > 0))
    LOWBIT_THROW(ValueError, who, ": scheme 'pact' starts alpha at init_max, which must be > 0");
  if (row.kind == Kind::kPact && c.per_channel)
    LOWBIT_THROW(ValueError, who, ": scheme 'pact' has one alpha per tensor (per_channel false)");
}

Json to_json(const QuantizerConfig& c) {
  return {{"scheme", c.scheme},           {"bits", c.bits},
          {"symmetric", c.symmetric},     {"narrow_range", c.narrow_range},
          {"per_channel", c.per_channel}, {"range", c.range},
          {"ema_decay", c.ema_decay},     {"init_min", c.init_min},
          {"init_max", c.init_max},       {"freeze_after", c.freeze_after}};
}

QuantizerConfig quantizer_config_from_json(const Json& j, const QuantizerConfig& d) {
  if (!j.is_object())
    LOWBIT_THROW(ValueError, "quantizer config: expected a JSON object but found ", j.dump());
  static const char* const kKeys[] = {"scheme",      "bits",        "symmetric", "narrow_range",
                                      "per_channel", "range",       "ema_decay", "init_min",
                                      "init_max",    "freeze_after"};
  for (const auto& [k, v] : j.items())
    if (!one_of(k, kKeys))
      LOWBIT_THROW(ValueError, "quantizer config: unknown field '", k, "'; expected ", list(kKeys));
  QuantizerConfig c;
  c.scheme = j.value("scheme", d.scheme);
  c.bits = j.value("bits", d.bits);
  c.symmetric = j.value("symmetric", d.symmetric);
  c.narrow_range = j.value("narrow_range", d.narrow_range);
  c.per_channel = j.value("per_channel", d.per_channel);
  c.range = j.value("range", d.range);
  c.ema_decay = j.value("ema_decay", d.ema_decay);
  c.init_min = j.value("init_min", d.init_min);
  c.init_max = j.value("init_max", d.init_max);
  c.freeze_after = j.value("freeze_after", d.freeze_after);
  return c;
}

std::string describe(const QuantizerConfig& c) {
  const SchemeRow& row = scheme_row(c);
  std::string s = c.scheme;
  if (row.kind == Kind::kNone) return "none (float)";
  if (row.has_bits) s += " " + std::to_string(c.bits) + "-bit";
  if (row.has_symmetric) s += c.symmetric ? " sym" : " asym";
  if (c.narrow_range && row.has_narrow) s += " narrow";
  s += c.per_channel ? " per-channel" : " per-tensor";
  if (tracked(c)) {
    s += " " + c.range;
    if (c.range == "moving_average" || c.range == "moving_average_debiased")
      s += "(" + fmt(c.ema_decay) + ")";
  }
  if (c.freeze_after >= 0) s += " frozen after " + std::to_string(c.freeze_after);
  return s;
}

// ---- Quantizer --------------------------------------------------------------------------------

RangeConfig range_config(const QuantizerConfig& c) {
  RangeConfig rc;
  rc.mode = parse_range_mode(c.range);
  rc.per_channel = c.per_channel;
  rc.symmetric = c.symmetric;
  rc.num_bits = c.bits;
  rc.narrow_range = c.narrow_range;
  rc.ema_decay = c.ema_decay;
  rc.init_min = c.init_min;
  rc.init_max = c.init_max;
  return rc;
}

ObserverConfig observer_config(const QuantizerConfig& c) {
  ObserverConfig oc;
  oc.qscheme = c.per_channel ? QScheme::kPerChannelAffine : QScheme::kPerTensorAffine;
  oc.ch_axis = -1;
  oc.averaging_constant = 1.0 - c.ema_decay;
  return oc;
}

Quantizer::Quantizer(std::string prefix, QuantizerConfig config, QuantizerRole role)
    : prefix_(std::move(prefix)), config_(std::move(config)), role_(role) {}

const nn::Weight* Quantizer::find(const nn::Layer& owner, const std::string& field) const {
  return find_weight(owner, prefix_ + field);
}
nn::Weight& Quantizer::get(nn::Layer& owner, const std::string& field) const {
  for (auto& w : owner.weights())
    if (w.name == prefix_ + field) return w;
  LOWBIT_THROW(ValueError, owner.name(), ": quantizer state '", prefix_ + field,
               "' is missing (layer not built)");
}

namespace {
std::vector<std::string> state_fields(const QuantizerConfig& c) {
  if (tracked(c)) {
    if (c.range == "moving_average_debiased")
      return {"min", "max", "min_biased", "max_biased", "count"};
    return {"min", "max"};
  }
  return scheme_row(c).variables;
}
}  // namespace

namespace {
// The integer range of the torch and lsq schemes: signed [-2^(b-1), 2^(b-1) - 1] when symmetric
// (narrow: from -(2^(b-1) - 1)), else unsigned [0, 2^b - 1].
std::pair<int64_t, int64_t> signed_or_unsigned_range(const QuantizerConfig& c) {
  const int64_t half = int64_t{1} << (c.bits - 1);
  if (c.symmetric) return {c.narrow_range ? -(half - 1) : -half, half - 1};
  return {0, (int64_t{1} << c.bits) - 1};
}
// LSQ's Q_P for the initial step.
double lsq_qp(const QuantizerConfig& c) {
  return static_cast<double>(signed_or_unsigned_range(c).second);
}
}  // namespace

void Quantizer::build(nn::Layer& owner, const Shape& shape) const {
  int64_t channels = 0;
  if (config_.per_channel) {
    if (shape.rank() < 1 || shape[-1] == kUnknown)
      LOWBIT_THROW(ShapeError, owner.name(),
                   ": a per-channel quantizer needs a known last dim but ", "found shape ",
                   shape.str());
    channels = shape[-1];
  }
  const Shape s = config_.per_channel ? Shape{channels} : Shape{};
  const bool torch = scheme_row(config_).kind == Kind::kTorch;
  for (const std::string& f : state_fields(config_)) {
    if (find(owner, f))
      LOWBIT_THROW(ValueError, owner.name(), ": quantizer state '", prefix_ + f, "' added twice");
    double init = 0;
    bool trainable = false;
    if (f == "min") init = config_.init_min;
    if (f == "max") init = config_.init_max;
    if (torch && (f == "min" || f == "max"))
      init = f == "min" ? HUGE_VAL : -HUGE_VAL;  // PyTorch observers: nothing observed yet
    if (f == "step_size") {
      // The grid spans [-Q_N s, Q_P s]: start with Q_P s = init_max (init_from replaces it by
      // LSQ's 2 mean|x| / sqrt(Q_P) when it sees the weights).
      init = std::max(config_.init_max, 1e-3) / lsq_qp(config_);
      trainable = true;
    }
    if (f == "alpha") {
      init = config_.init_max;
      trainable = true;
    }
    owner.weights().push_back({prefix_ + f, Tensor::full(s, init, DType::kF32), trainable});
  }
}

void Quantizer::init_from(nn::Layer& owner, const Tensor& x) const {
  const QuantizerConfig& c = config_;
  const Kind kind = scheme_row(c).kind;
  if (kind == Kind::kTf) {
    const ops::MinMax<Tensor> b = ops::min_max(x, c.per_channel);
    const ops::MinMax<Tensor> r = range_target(b.min, b.max, c.symmetric, c.bits, c.narrow_range);
    get(owner, "min").value.copy_from(r.min);
    get(owner, "max").value.copy_from(r.max);
  } else if (kind == Kind::kTorch) {
    const ObserverState<Tensor> b = batch_min_max(x, observer_config(c));
    get(owner, "min").value.copy_from(b.min_val);
    get(owner, "max").value.copy_from(b.max_val);
  } else if (kind == Kind::kLsq) {
    Tensor s = ops::lsq_init_step(x, c.bits, c.symmetric,
                                  c.per_channel ? std::optional<int>(-1) : std::nullopt);
    // An all-zero channel would get step 0 (the op needs step > 0): keep a tiny one.
    get(owner, "step_size").value.copy_from(ops::maximum(s, ops::scalar_like(s, 1e-8)));
  }
}

Value Quantizer::apply(const Value& x, nn::CallContext& ctx, const nn::Layer& owner,
                       const Value& step, int64_t quant_delay, Value* grid_step) const {
  const QuantizerConfig& c = config_;
  const Kind kind = scheme_row(c).kind;
  if (grid_step) *grid_step = Value();
  if (kind == Kind::kNone) return x;
  // The grid's step as grid() computes it (float arithmetic in the same order), from the range
  // or parameter this call quantizes with; none while a warm-up delay may pass x through.
  const bool on_grid = !(ctx.training() && quant_delay > 0);
  const bool tracked_range = tracked(c);
  Value y;
  if (tracked_range) {
    const nn::Weight& wmin = *find(owner, "min");
    const nn::Weight& wmax = *find(owner, "max");
    // A second use of this state in one trace (a shared layer called again) reads the range
    // the first use computed; updates are recorded once.
    // A "fixed" range (a function's fixed output grid) is never updated.
    const bool update = ctx.training() && !ctx.bound(wmin).defined() && c.range != "fixed";
    Value mn = ctx.var(owner, wmin), mx = ctx.var(owner, wmax);
    std::vector<std::pair<Value, Value>> next;  // (state variable, new value)
    if (kind == Kind::kTf) {
      if (update) {
        const RangeConfig rc = range_config(c);
        RangeState<Value> s{mn, mx, {}, {}, {}};
        if (rc.mode == RangeMode::kMovingAverageDebiased) {
          s.biased_min = ctx.var(owner, *find(owner, "min_biased"));
          s.biased_max = ctx.var(owner, *find(owner, "max_biased"));
          s.count = ctx.var(owner, *find(owner, "count"));
        }
        RangeState<Value> n = update_range(s, x, rc);
        next = {{s.min, n.min}, {s.max, n.max}};
        if (rc.mode == RangeMode::kMovingAverageDebiased)
          next.insert(
              next.end(),
              {{s.biased_min, n.biased_min}, {s.biased_max, n.biased_max}, {s.count, n.count}});
      }
    } else {
      if (update) {
        const ObserverConfig oc = observer_config(c);
        const ObserverState<Value> s{mn, mx};
        ObserverState<Value> n = c.range == "minmax" ? minmax_observer_update(s, x, oc)
                                 : c.range == "moving_average"
                                     ? moving_average_observer_update(s, x, oc)
                                     : batch_min_max(x, oc);
        next = {{mn, n.min_val}, {mx, n.max_val}};
      }
    }
    if (!next.empty()) {
      if (c.freeze_after >= 0) {
        // Frozen: keep the state (selects on [] or [channels]: cheap).
        Value frozen =
            ops::greater_equal(step, ops::scalar_like(step, static_cast<double>(c.freeze_after)));
        for (auto& [var, nv] : next) nv = ops::where(frozen, var, nv);
      }
      for (const auto& [var, nv] : next) ctx.add_update(var, nv);
      mn = next[0].second;  // the op reads the just-updated range (semantics 2.1)
      mx = next[1].second;
    }
    if (kind == Kind::kTf) {
      if (grid_step && on_grid) {
        const ops::FakeQuantNudge n = ops::fake_quant_nudge(0.0f, 1.0f, c.bits, c.narrow_range);
        *grid_step =
            (mx - mn) / ops::scalar_like(
                            mx, static_cast<double>(static_cast<float>(n.quant_max - n.quant_min)));
      }
      y = c.per_channel
              ? ops::fake_quant_with_min_max_vars_per_channel(x, mn, mx, c.bits, c.narrow_range)
              : ops::fake_quant_with_min_max_vars(x, mn, mx, c.bits, c.narrow_range);
    } else {
      const auto [qmin, qmax] = signed_or_unsigned_range(c);
      QParams<Value> qp = c.symmetric ? symmetric_qparams(mn, mx, qmin, qmax, 0)
                                      : affine_qparams(mn, mx, qmin, qmax);
      y = c.per_channel
              ? ops::fake_quantize_per_channel_affine(x, qp.scale, qp.zero_point, -1, qmin, qmax)
              : ops::fake_quantize_per_tensor_affine(x, qp.scale, qp.zero_point, qmin, qmax);
    }
  } else {
    if (kind == Kind::kLsq) {
      // N of the gradient scale: the weights' count (numel when the op runs) or, for
      // activations, the features per example (the paper's choice), when known.
      int64_t n = 0;
      if (role_ == QuantizerRole::kActivation) {
        n = 1;
        for (int d = 1; d < x.rank(); ++d) n = x.shape()[d] == kUnknown ? 0 : n * x.shape()[d];
        if (x.rank() < 2) n = 0;
      }
      Value s = ctx.var(owner, *find(owner, "step_size"));
      if (grid_step && on_grid) *grid_step = s;
      y = ops::lsq_quantize(x, s, c.bits, c.symmetric,
                            c.per_channel ? std::optional<int>(-1) : std::nullopt, n);
    } else if (kind == Kind::kPact) {
      Value alpha = ctx.var(owner, *find(owner, "alpha"));
      if (grid_step && on_grid)
        *grid_step = alpha / ops::scalar_like(
                                 alpha, static_cast<double>(static_cast<float>((1 << c.bits) - 1)));
      y = ops::pact_quantize(x, alpha, c.bits);
    } else if (kind == Kind::kBinary) {
      y = ops::binary_quantize(x, c.per_channel);
    } else {
      y = ops::ternary_quantize(x, c.per_channel);
    }
  }
  if (ctx.training() && quant_delay > 0) {
    // Float warm-up: identity (and identity gradient) before the delay; trackers ran above.
    Value warm = ops::less(step, ops::scalar_like(step, static_cast<double>(quant_delay)));
    y = ops::where(warm, x, y);
  }
  return y;
}

Tensor Quantizer::min(const nn::Layer& owner) const {
  if (const nn::Weight* w = find(owner, "min")) return w->value;
  return Tensor();
}
Tensor Quantizer::max(const nn::Layer& owner) const {
  if (const nn::Weight* w = find(owner, "max")) return w->value;
  return Tensor();
}

Quantizer::Grid Quantizer::grid(const nn::Layer& owner) const {
  const QuantizerConfig& c = config_;
  const Kind kind = scheme_row(c).kind;
  Grid g;
  auto values = [&](const char* field) {
    const nn::Weight* w = find(owner, field);
    if (!w)
      LOWBIT_THROW(ValueError, owner.name(), ": quantizer state '", prefix_ + field,
                   "' is missing (layer not built)");
    const Tensor t = w->value.to(DType::kF32);
    return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
  };
  if (kind == Kind::kTf) {
    const std::vector<float> mn = values("min"), mx = values("max");
    for (size_t i = 0; i < mn.size(); ++i) {
      const ops::FakeQuantNudge n = ops::fake_quant_nudge(mn[i], mx[i], c.bits, c.narrow_range);
      g.scale.push_back(n.scale);
      g.zero_point.push_back(n.zero_point);
      g.qmin = n.quant_min;
      g.qmax = n.quant_max;
    }
  } else if (kind == Kind::kLsq) {
    g.scale = values("step_size");
    g.zero_point.assign(g.scale.size(), 0);
    const ops::QuantRange r = ops::lsq_range(c.bits, c.symmetric);
    g.qmin = r.min;
    g.qmax = r.max;
  } else if (kind == Kind::kPact) {
    const std::vector<float> alpha = values("alpha");
    g.qmin = 0;
    g.qmax = (1 << c.bits) - 1;
    for (float a : alpha) g.scale.push_back(a / static_cast<float>(g.qmax));
    g.zero_point.assign(g.scale.size(), 0);
  } else {
    LOWBIT_THROW(UnsupportedError, owner.name(), ": the '", c.scheme,
                 "' quantizer has no stored grid (scale, zero point); integer conversion supports "
                 "the tf, lsq and pact schemes");
  }
  return g;
}

std::string Quantizer::summary(const nn::Layer& owner) const {
  std::string name = prefix_.empty() ? "output" : prefix_.substr(0, prefix_.size() - 1);
  std::string s = name + ": " + describe(config_);
  auto span_of = [](const Tensor& t, bool lo) {
    double v = t.get_as_double(0);
    for (int64_t i = 1; i < t.numel(); ++i)
      v = lo ? std::min(v, t.get_as_double(i)) : std::max(v, t.get_as_double(i));
    return v;
  };
  if (config_.per_channel) {
    for (const char* f : {"min", "step_size"})
      if (const nn::Weight* w = find(owner, f)) {
        const size_t at = s.find("per-channel") + 11;
        s.insert(at, "(" + std::to_string(w->value.numel()) + ")");
        break;
      }
  }
  Tensor mn = min(owner), mx = max(owner);
  if (mn.defined() && mx.defined() && mn.numel() > 0)
    s += ", range [" + fmt(span_of(mn, true)) + ", " + fmt(span_of(mx, false)) + "]";
  if (const nn::Weight* w = find(owner, "step_size"); w && w->value.numel() > 0)
    s += ", step [" + fmt(span_of(w->value, true)) + ", " + fmt(span_of(w->value, false)) + "]";
  if (const nn::Weight* w = find(owner, "alpha")) s += ", alpha " + fmt(w->value.get_as_double(0));
  return s;
}

// ---- FakeQuant --------------------------------------------------------------------------------

FakeQuantLayer::FakeQuantLayer(QuantizerConfig config, int64_t quant_delay, std::string name)
    : nn::Layer("fake_quant", std::move(name)),
      quantizer_("", std::move(config), QuantizerRole::kActivation),
      quant_delay_(quant_delay) {
  validate(quantizer_.config(), QuantizerRole::kActivation, "FakeQuant");
  if (quant_delay < 0)
    LOWBIT_THROW(ValueError, "FakeQuant: quant_delay: expected >= 0 but found ", quant_delay);
}

void FakeQuantLayer::build(const std::vector<Shape>& s) {
  quantizer_.build(*this, s[0]);
  step_weight(*this);
}

std::vector<Value> FakeQuantLayer::call(const std::vector<Value>& in, nn::CallContext& ctx) {
  if (in[0].dtype() != DType::kF32)
    LOWBIT_THROW(DTypeError, name_, " (FakeQuant): expected an f32 input but found ",
                 dtype_name(in[0].dtype()));
  Value step = bind_step(*this, ctx);
  Value grid;
  Value y = quantizer_.apply(in[0], ctx, *this, step, quant_delay_, &grid);
  if (grid.defined() && grid.shape().numel() == 1)
    ctx.set_grid_step(y, grid.rank() == 0 ? grid : ops::reshape(grid, std::vector<int64_t>{}));
  return {y};
}

Json FakeQuantLayer::get_config() const {
  Json j = nn::Layer::get_config();
  j["quantizer"] = to_json(quantizer_.config());
  j["quant_delay"] = quant_delay_;
  return j;
}

bool FakeQuantLayer::awaiting_calibration() const {
  if (quantizer_.config().range == "fixed") return false;  // nothing to calibrate
  for (const auto& w : weights_)
    if (w.name == "step") return w.value.get_as_double(0) == 0;
  return false;  // not built
}

std::string FakeQuantLayer::summary_note() const {
  std::string s = "fake quant " + quantizer_.summary(*this);
  if (awaiting_calibration()) s += " (initial range: not calibrated yet)";
  if (quant_delay_ > 0) s += ", delay " + std::to_string(quant_delay_);
  return s;
}

nn::LayerPtr FakeQuant(QuantizerConfig config, int64_t quant_delay, const std::string& name) {
  return std::make_shared<FakeQuantLayer>(std::move(config), quant_delay, name);
}

// ---- QuantizeWrapper --------------------------------------------------------------------------

std::vector<std::string> quantizable_weights(const nn::Layer& l) {
  const std::string c = l.class_name();
  if (c == "Dense" || c == "Conv1D" || c == "Conv2D") return {"kernel"};
  if (c == "DepthwiseConv2D") return {"depthwise_kernel"};
  if (c == "SeparableConv2D") return {"depthwise_kernel", "pointwise_kernel"};
  if (c == "Embedding") return {"embeddings"};
  if (c == "SimpleRNN" || c == "LSTM" || c == "GRU") return {"kernel", "recurrent_kernel"};
  return {};
}

QuantizeWrapperLayer::QuantizeWrapperLayer(nn::LayerPtr layer,
                                           std::map<std::string, QuantizerConfig> quantizers,
                                           int64_t quant_delay, std::string name)
    : nn::Layer("quantize_wrapper", name.empty() && layer ? layer->name() : std::move(name)),
      layer_(std::move(layer)),
      quant_delay_(quant_delay) {
  if (!layer_) LOWBIT_THROW(ValueError, "QuantizeWrapper: the wrapped layer is null");
  if (quant_delay < 0)
    LOWBIT_THROW(ValueError, "QuantizeWrapper: quant_delay: expected >= 0 but found ", quant_delay);
  const std::vector<std::string> allowed = quantizable_weights(*layer_);
  for (auto& [w, cfg] : quantizers) {
    if (std::find(allowed.begin(), allowed.end(), w) == allowed.end()) {
      std::string names;
      for (const auto& a : allowed) names += (names.empty() ? "" : ", ") + a;
      LOWBIT_THROW(
          ValueError, "QuantizeWrapper(", layer_->name(), "): weight '", w,
          "' cannot be quantized; ", layer_->class_name(),
          allowed.empty() ? std::string(" has no quantizable weights") : " quantizes " + names);
    }
    validate(cfg, QuantizerRole::kWeight, "QuantizeWrapper(" + layer_->name() + ")." + w);
    quantizers_.emplace(w, Quantizer(w + "_", cfg, QuantizerRole::kWeight));
  }
  trainable_ = layer_->trainable();
}

void QuantizeWrapperLayer::build(const std::vector<Shape>& s) {
  if (!layer_->built()) build_by_trace(*layer_, s);
  for (auto& [name, q] : quantizers_) {
    const Shape ws = need_weight(*layer_, name).value.shape();
    q.build(*this, depthwise_view(name, ws, q.config().per_channel) ? depthwise_shape(ws) : ws);
  }
  step_weight(*this);
}

template <typename T>
T QuantizeWrapperLayer::to_channels_last(const std::string& weight, const T& w) const {
  const Quantizer& q = quantizers_.at(weight);
  const Shape s = need_weight(*layer_, weight).value.shape();
  if (!depthwise_view(weight, s, q.config().per_channel)) return w;
  return ops::reshape(w, depthwise_shape(s).dims());
}

std::vector<Value> QuantizeWrapperLayer::call(const std::vector<Value>& in, nn::CallContext& ctx) {
  Value step = bind_step(*this, ctx);
  // The bias grid's steps: the input's (when known) and the kernel quantizer's.
  const std::string kernel = quantizers_.count("depthwise_kernel") ? "depthwise_kernel" : "kernel";
  const Value in_step = quantize_bias_ && layer_->class_name() != "SeparableConv2D" &&
                                layer_->class_name() != "Embedding"
                            ? ctx.grid_step(in[0])
                            : Value();
  Value w_step;
  nn::CallContext::WeightHookScope hook(
      ctx, *layer_, [&](const nn::Weight& w, const Value& v) -> Value {
        if (w.name == "bias" && in_step.defined()) {
          if (!w_step.defined())  // the kernel's hook has not run yet: run it now
            for (const nn::Weight& k : layer_->weights())
              if (k.name == kernel) ctx.var(*layer_, k);
          if (!w_step.defined()) return Value();
          Graph::Scope scope(ctx.graph(), "bias_quant");
          return ops::fake_quant_bias(v, in_step, w_step);
        }
        auto it = quantizers_.find(w.name);
        if (it == quantizers_.end()) return Value();  // biases and the rest: unchanged
        Graph::Scope scope(ctx.graph(), w.name + "_quant");
        Value grid;
        Value q =
            it->second.apply(to_channels_last(w.name, v), ctx, *this, step, quant_delay_, &grid);
        if (w.name == kernel) w_step = grid;
        return ops::reshape(q, w.value.shape().dims());
      });
  // The wrapped layer is built (build above) and shares this layer's input checks and name
  // scope: call it directly, so its ops are named "<name>/..." rather than "<name>/<name>/...".
  return layer_->call(in, ctx);
}

Json QuantizeWrapperLayer::get_config() const {
  Json j = nn::Layer::get_config();
  j["layer"] = nn::layer_to_config(*layer_);
  Json q = Json::object();
  for (const auto& [name, quantizer] : quantizers_) q[name] = to_json(quantizer.config());
  j["weight_quantizers"] = q;
  j["quant_delay"] = quant_delay_;
  j["quantize_bias"] = quantize_bias_;
  return j;
}

std::string QuantizeWrapperLayer::summary_note() const {
  std::string s;
  for (const auto& [name, q] : quantizers_) {
    if (!s.empty()) s += "\n    ";
    s += "weight quant " + q.summary(*this);
  }
  if (quant_delay_ > 0) s += ", delay " + std::to_string(quant_delay_);
  return s;
}

void QuantizeWrapperLayer::set_trainable(bool t) {
  trainable_ = t;
  layer_->set_trainable(t);
}

void QuantizeWrapperLayer::validate_input(int index, const Tensor& value) const {
  layer_->validate_input(index, value);
}

const Quantizer& QuantizeWrapperLayer::quantizer(const std::string& name) const {
  auto it = quantizers_.find(name);
  if (it == quantizers_.end())
    LOWBIT_THROW(ValueError, name_, " (QuantizeWrapper): weight '", name, "' is not quantized");
  return it->second;
}

void QuantizeWrapperLayer::init_from_weights() {
  for (auto& [name, q] : quantizers_)
    q.init_from(*this, to_channels_last(name, need_weight(*layer_, name).value));
}

std::map<std::string, Tensor> QuantizeWrapperLayer::effective_weights() const {
  Graph g;
  nn::CallContext ctx(g, false);
  Value step = ctx.var(*this, step_weight(*this));
  std::vector<std::string> names;
  std::vector<Value> fetches;
  for (const auto& [name, q] : quantizers_) {
    const nn::Weight& w = need_weight(*layer_, name);
    Value v = q.apply(to_channels_last(name, ctx.var(*layer_, w)), ctx, *this, step, 0);
    names.push_back(name);
    fetches.push_back(ops::reshape(v, w.value.shape().dims()));
  }
  std::map<std::string, Tensor> out;
  if (fetches.empty()) return out;
  Executor ex(g, fetches);
  std::vector<Tensor> r = ex.run();
  for (size_t i = 0; i < names.size(); ++i) out[names[i]] = r[i];
  return out;
}

nn::LayerPtr QuantizeWrapper(nn::LayerPtr layer, std::map<std::string, QuantizerConfig> quantizers,
                             int64_t quant_delay, const std::string& name) {
  return std::make_shared<QuantizeWrapperLayer>(std::move(layer), std::move(quantizers),
                                                quant_delay, name);
}

// ---- FoldedConvBatchNorm ----------------------------------------------------------------------

FoldedConvBatchNormLayer::FoldedConvBatchNormLayer(nn::LayerPtr conv, nn::LayerPtr bn,
                                                   QuantizerConfig weights, int64_t quant_delay,
                                                   int64_t freeze_bn_delay, std::string name)
    : nn::Layer("folded_conv_batch_norm", name.empty() && conv ? conv->name() : std::move(name)),
      conv_(std::move(conv)),
      bn_(std::move(bn)),
      quant_delay_(quant_delay),
      freeze_bn_delay_(freeze_bn_delay) {
  if (!conv_ || !bn_) LOWBIT_THROW(ValueError, "FoldedConvBatchNorm: a sublayer is null");
  const std::string c = conv_->class_name();
  if (c != "Dense" && c != "Conv1D" && c != "Conv2D" && c != "DepthwiseConv2D")
    LOWBIT_THROW(ValueError, "FoldedConvBatchNorm: expected a Dense, Conv1D, Conv2D or ",
                 "DepthwiseConv2D but found ", conv_->name(), " (", c, ")");
  if (activation_of(*conv_) != "linear")
    LOWBIT_THROW(ValueError, "FoldedConvBatchNorm: ", conv_->name(),
                 " must have activation linear to fold a batch norm after it but has '",
                 activation_of(*conv_), "'");
  if (bn_->class_name() != "BatchNormalization")
    LOWBIT_THROW(ValueError, "FoldedConvBatchNorm: expected a BatchNormalization but found ",
                 bn_->name(), " (", bn_->class_name(), ")");
  if (quant_delay < 0)
    LOWBIT_THROW(ValueError, "FoldedConvBatchNorm: quant_delay: expected >= 0 but found ",
                 quant_delay);
  if (freeze_bn_delay < -1)
    LOWBIT_THROW(ValueError,
                 "FoldedConvBatchNorm: freeze_bn_delay: expected -1 (never) or >= 0 but found ",
                 freeze_bn_delay);
  Json bc = bn_->get_config();
  epsilon_ = bc.value("epsilon", 1e-3);
  momentum_ = bc.value("momentum", 0.99);
  kernel_name_ = quantizable_weights(*conv_).at(0);
  validate(weights, QuantizerRole::kWeight, "FoldedConvBatchNorm(" + conv_->name() + ")");
  quantizer_ = Quantizer(kernel_name_ + "_", std::move(weights), QuantizerRole::kWeight);
  trainable_ = conv_->trainable();
}

void FoldedConvBatchNormLayer::build(const std::vector<Shape>& s) {
  std::vector<ValueType> out = build_by_trace(*conv_, s);  // builds it, or checks the shapes
  const Shape& ys = out.at(0).shape;
  const int axis = bn_->get_config().value("axis", -1);
  if (axis != -1 && axis != ys.rank() - 1)
    LOWBIT_THROW(ValueError, name_, " (FoldedConvBatchNorm): the batch norm must normalize the ",
                 "last axis (channels) but has axis ", axis);
  if (!bn_->built()) build_by_trace(*bn_, {ys});
  const Shape ks = need_weight(*conv_, kernel_name_).value.shape();
  quantizer_.build(*this, depthwise_view(kernel_name_, ks, quantizer_.config().per_channel)
                              ? depthwise_shape(ks)
                              : ks);
  step_weight(*this);
}

namespace {
// The per-output-channel factor [C] shaped to multiply a kernel: [C] for Dense/Conv
// (last axis), [Cin, M] for a depthwise kernel [kh, kw, Cin, M].
template <typename T>
T kernel_factor(const T& f, const Shape& kernel, const std::string& kernel_name) {
  if (kernel_name == "depthwise_kernel") return ops::reshape(f, {kernel[2], kernel[3]});
  return f;
}
}  // namespace

std::vector<Value> FoldedConvBatchNormLayer::call(const std::vector<Value>& in,
                                                  nn::CallContext& ctx) {
  Value step = bind_step(*this, ctx);
  const nn::Weight &wg = need_weight(*bn_, "gamma"), &wb = need_weight(*bn_, "beta"),
                   &wm = need_weight(*bn_, "moving_mean"),
                   &wv = need_weight(*bn_, "moving_variance");
  const bool first = !ctx.bound(wm).defined();
  Value gamma = ctx.var(*bn_, wg), beta = ctx.var(*bn_, wb);
  Value mm = ctx.var(*bn_, wm), mv = ctx.var(*bn_, wv);
  // A frozen BatchNormalization runs in inference mode (Keras): the frozen form.
  const bool batch_stats = ctx.training() && bn_->trainable();
  const bool switchable = batch_stats && freeze_bn_delay_ >= 0;
  Value sigma, scale, shift, unscale;
  {
    Graph::Scope s(ctx.graph(), "fold");
    sigma = ops::sqrt(mv + epsilon_);
    scale = gamma / sigma;      // γ/σ
    shift = beta - mm * scale;  // β − μγ/σ
    if (batch_stats) {
      Value zero = ops::zeros_like(gamma);
      unscale = ops::where(ops::equal(gamma, zero), zero, sigma / gamma);  // σ/γ (0 if γ = 0)
    }
  }
  const Shape kshape = need_weight(*conv_, kernel_name_).value.shape();
  bool bias_read = false;
  // Bias rounding (inference form only): the input's grid step and the folded kernel's.
  const Value in_step = quantize_bias_ && !batch_stats ? ctx.grid_step(in[0]) : Value();
  Value w_step;
  auto round_bias = [&](const Value& b) -> Value {
    if (!in_step.defined()) return b;
    if (!w_step.defined()) ctx.var(*conv_, need_weight(*conv_, kernel_name_));  // runs the hook
    if (!w_step.defined()) return b;
    Graph::Scope s(ctx.graph(), "bias_quant");
    return ops::fake_quant_bias(b, in_step, w_step);
  };
  nn::CallContext::WeightHookScope hook(
      ctx, *conv_, [&](const nn::Weight& w, const Value& v) -> Value {
        if (w.name == kernel_name_) {
          Graph::Scope s(ctx.graph(), w.name + "_quant");
          Value wf = v * kernel_factor(scale, kshape, kernel_name_);  // W_fold = W·γ/σ
          Value view = depthwise_view(kernel_name_, kshape, quantizer_.config().per_channel)
                           ? ops::reshape(wf, depthwise_shape(kshape).dims())
                           : wf;
          Value grid;
          Value q = ops::reshape(quantizer_.apply(view, ctx, *this, step, quant_delay_, &grid),
                                 kshape.dims());
          w_step = grid;
          // Batch statistics: the conv computes u = conv(x, FQ(W_fold)·σ/γ) + b, i.e. the
          // quantized folded output z rescaled to the float conv's scale (u = z·σ/γ + b) by
          // rescaling the small kernel instead of the large output.
          return batch_stats ? q * kernel_factor(unscale, kshape, kernel_name_) : q;
        }
        if (w.name == "bias") {
          bias_read = true;
          if (batch_stats) return Value();  // b itself: u = z·σ/γ + b
          Graph::Scope s(ctx.graph(), "fold");
          return round_bias(v * scale + shift);  // the folded bias β + (b − μ)γ/σ
        }
        return Value();
      });
  Value z = conv_->call(in, ctx).at(0);
  Graph::Scope s(ctx.graph(), "fold");
  if (!batch_stats)  // z = conv(x, FQ(W_fold)) + folded bias
    return {bias_read ? z : z + round_bias(shift)};
  auto r = ops::batch_norm_training(z, gamma, beta, -1, epsilon_);  // z is u here
  Value new_mm = mm * momentum_ + r.mean * (1.0 - momentum_);
  Value new_mv = mv * momentum_ + r.variance * (1.0 - momentum_);
  Value y = r.y;
  if (switchable) {
    // After the freeze step: u·γ/σ + β − μγ/σ = conv(x, FQ(W_fold)) + β + (b − μ)γ/σ.
    Value frozen =
        ops::greater_equal(step, ops::scalar_like(step, static_cast<double>(freeze_bn_delay_)));
    new_mm = ops::where(frozen, mm, new_mm);
    new_mv = ops::where(frozen, mv, new_mv);
    y = ops::where(frozen, z * scale + shift, y);
  }
  if (first) {
    ctx.add_update(mm, new_mm);
    ctx.add_update(mv, new_mv);
  }
  return {y};
}

Json FoldedConvBatchNormLayer::get_config() const {
  Json j = nn::Layer::get_config();
  j["layer"] = nn::layer_to_config(*conv_);
  j["batch_norm"] = nn::layer_to_config(*bn_);
  j["weight_quantizer"] = to_json(quantizer_.config());
  j["quant_delay"] = quant_delay_;
  j["freeze_bn_delay"] = freeze_bn_delay_;
  j["quantize_bias"] = quantize_bias_;
  return j;
}

std::string FoldedConvBatchNormLayer::summary_note() const {
  std::string s = "folded with " + bn_->name() + " (batch statistics " +
                  (freeze_bn_delay_ < 0 ? std::string("always in training")
                                        : "until step " + std::to_string(freeze_bn_delay_)) +
                  ")\n    weight quant " + quantizer_.summary(*this);
  if (quant_delay_ > 0) s += ", delay " + std::to_string(quant_delay_);
  return s;
}

void FoldedConvBatchNormLayer::set_trainable(bool t) {
  trainable_ = t;
  conv_->set_trainable(t);
  bn_->set_trainable(t);
}

Tensor FoldedConvBatchNormLayer::folded_kernel() const {
  const Tensor& k = need_weight(*conv_, kernel_name_).value;
  Tensor scale = need_weight(*bn_, "gamma").value /
                 ops::sqrt(need_weight(*bn_, "moving_variance").value + epsilon_);
  return k * kernel_factor(scale, k.shape(), kernel_name_);
}

Tensor FoldedConvBatchNormLayer::folded_bias() const {
  const Tensor& gamma = need_weight(*bn_, "gamma").value;
  Tensor scale = gamma / ops::sqrt(need_weight(*bn_, "moving_variance").value + epsilon_);
  Tensor shift = need_weight(*bn_, "beta").value - need_weight(*bn_, "moving_mean").value * scale;
  if (const nn::Weight* b = find_weight(*conv_, "bias")) return b->value * scale + shift;
  return shift;
}

Tensor FoldedConvBatchNormLayer::effective_kernel() const {
  const Tensor k = folded_kernel();
  const bool view = depthwise_view(kernel_name_, k.shape(), quantizer_.config().per_channel);
  Graph g;
  nn::CallContext ctx(g, false);
  Value step = ctx.var(*this, step_weight(*this));
  Value v = g.constant(view ? k.reshape(depthwise_shape(k.shape())) : k);
  Value q = ops::reshape(quantizer_.apply(v, ctx, *this, step, 0), k.shape().dims());
  Executor ex(g, {q});
  return ex.run()[0];
}

void FoldedConvBatchNormLayer::init_from_weights() {
  Tensor k = folded_kernel();
  if (depthwise_view(kernel_name_, k.shape(), quantizer_.config().per_channel))
    k = k.reshape(depthwise_shape(k.shape()));
  quantizer_.init_from(*this, k);
}

nn::LayerPtr FoldedConvBatchNorm(nn::LayerPtr conv, nn::LayerPtr batch_norm,
                                 QuantizerConfig weights, int64_t quant_delay,
                                 int64_t freeze_bn_delay, const std::string& name) {
  return std::make_shared<FoldedConvBatchNormLayer>(std::move(conv), std::move(batch_norm),
                                                    std::move(weights), quant_delay,
                                                    freeze_bn_delay, name);
}

// ---- Registry -----------------------------------------------------------------------------------

void register_quant_layers() {
  nn::register_layer("FakeQuant", [](const Json& c) {
    return FakeQuant(quantizer_config_from_json(c.at("quantizer")), c.value("quant_delay", 0),
                     c.value("name", ""));
  });
  nn::register_layer("QuantizeWrapper", [](const Json& c) {
    std::map<std::string, QuantizerConfig> q;
    for (const auto& [w, qc] : c.at("weight_quantizers").items())
      q[w] = quantizer_config_from_json(qc);
    nn::LayerPtr l = QuantizeWrapper(nn::layer_from_config(c.at("layer")), q,
                                     c.value("quant_delay", 0), c.value("name", ""));
    static_cast<QuantizeWrapperLayer&>(*l).set_quantize_bias(c.value("quantize_bias", false));
    return l;
  });
  nn::register_layer("FoldedConvBatchNorm", [](const Json& c) {
    nn::LayerPtr l = FoldedConvBatchNorm(
        nn::layer_from_config(c.at("layer")), nn::layer_from_config(c.at("batch_norm")),
        quantizer_config_from_json(c.at("weight_quantizer")), c.value("quant_delay", 0),
        c.value("freeze_bn_delay", -1), c.value("name", ""));
    static_cast<FoldedConvBatchNormLayer&>(*l).set_quantize_bias(c.value("quantize_bias", false));
    return l;
  });
}

}  // namespace lowbit::quant
