// Mask-making layers (Masking, MissingFeatures, FeatureDropout) and the mask rule of the
// recurrent layers (docs/masking.md). include/lowbit/nn/masking.h states the semantics.
#include <functional>
#include <limits>

#include "lowbit/nn/masking.h"
#include "lowbit/ops.h"
#include "nn/layer_registry.h"
#include "nn/layers_common.h"

namespace lowbit::nn {

namespace {

// lengths [B] (any integer type, or f32) -> bool [B, maxlen]: mask[b, t] = t < lengths[b].
class SequenceMaskLayer : public Layer {
 public:
  SequenceMaskLayer(int64_t maxlen, SequenceMaskOptions o)
      : Layer("sequence_mask", o.name), maxlen_(maxlen) {
    if (maxlen < 1)
      LOWBIT_THROW(ValueError, "SequenceMask: argument 'maxlen': expected >= 1 but found ", maxlen);
  }
  std::string class_name() const override { return "SequenceMask"; }
  void build(const std::vector<Shape>& s) override {
    check_input(s[0].rank() == 1, "rank 1 [batch] (one length per sequence)", s[0]);
  }
  std::vector<Value> call(const std::vector<Value>& in, CallContext&) override {
    Value n = in[0].dtype() == DType::kS32 ? in[0] : ops::cast(in[0], DType::kS32);
    return {ops::sequence_mask(n, maxlen_)};
  }
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext&) override {
    return detail::no_mask(out);
  }
  Json get_config() const override {
    Json j = Layer::get_config();
    j["maxlen"] = maxlen_;
    return j;
  }

 private:
  int64_t maxlen_;
};

class MaskingLayer : public Layer {
 public:
  MaskingLayer(double mask_value, MaskingOptions o)
      : Layer("masking", o.name), mask_value_(mask_value) {}
  std::string class_name() const override { return "Masking"; }

  void build(const std::vector<Shape>& s) override {
    check_input(s[0].rank() >= 3, "rank >= 3 [batch, timesteps, features]", s[0]);
  }
  std::vector<Value> call(const std::vector<Value>& in, CallContext& ctx) override {
    return {detail::zero_masked(in[0], mask_of(in[0], ctx))};
  }
  std::vector<Value> compute_mask(const std::vector<Value>& in, const std::vector<Value>&,
                                  CallContext& ctx) override {
    return {mask_of(in[0], ctx)};
  }
  Json get_config() const override {
    Json j = Layer::get_config();
    j["mask_value"] = mask_value_;
    return j;
  }

 private:
  Value mask_of(const Value& x, const CallContext& ctx) const {
    Value differs = ops::not_equal(x, ops::scalar_like(x, mask_value_));
    std::vector<int64_t> axes;
    for (int d = 2; d < x.rank(); ++d) axes.push_back(d);
    Value m = ops::reduce_any(differs, axes);
    if (const Value incoming = ctx.input_mask(0); incoming.defined())
      m = ops::logical_and(m, incoming);
    return m;
  }

  double mask_value_;
};

// The presence of each value: !isnan(x), AND-ed with the feature mask when one is given.
Value presence(const Layer& l, const std::vector<Value>& in) {
  const Value& x = in[0];
  Value present = ops::equal(x, x);  // false only for NaN
  if (in.size() == 2) {
    const Value& m = in[1];
    if (m.dtype() != DType::kBool && m.dtype() != DType::kF32)
      LOWBIT_THROW(DTypeError, l.name(), " (", l.class_name(),
                   "): feature_mask must be bool or f32 (1 = present) but found ",
                   dtype_name(m.dtype()));
    present = ops::logical_and(
        present, m.dtype() == DType::kBool ? m : ops::not_equal(m, ops::scalar_like(m, 0.0)));
  }
  return present;
}

void check_feature_inputs(const Layer& l, const std::vector<Shape>& s) {
  if (s.size() != 1 && s.size() != 2)
    LOWBIT_THROW(ValueError, l.name(), " (", l.class_name(),
                 "): expected 1 input (x, NaN = missing) or 2 (x, feature_mask) but found ",
                 s.size());
  if (s[0].rank() < 2 || s[0][-1] == kUnknown)
    LOWBIT_THROW(ShapeError, l.name(), " (", l.class_name(),
                 "): expected x of rank >= 2 [batch, (timesteps,) features] with a known "
                 "feature dim but found ",
                 s[0].str());
  if (s.size() == 2) {
    bool ok = s[1].rank() == s[0].rank();
    for (int d = 0; ok && d < s[0].rank(); ++d)
      ok = s[0][d] == kUnknown || s[1][d] == kUnknown || s[0][d] == s[1][d];
    if (!ok)
      LOWBIT_THROW(ShapeError, l.name(), " (", l.class_name(),
                   "): feature_mask must have x's shape ", s[0].str(), " but found ", s[1].str());
  }
}

class MissingFeaturesLayer : public Layer {
 public:
  explicit MissingFeaturesLayer(MissingFeaturesOptions o)
      : Layer("missing_features", o.name), o_(std::move(o)) {}
  std::string class_name() const override { return "MissingFeatures"; }
  int num_inputs() const override { return -1; }

  void build(const std::vector<Shape>& s) override { check_feature_inputs(*this, s); }
  std::vector<Value> call(const std::vector<Value>& in, CallContext&) override {
    const Value& x = in[0];
    const Value present = presence(*this, in);
    const Value filled = ops::where(present, x, ops::scalar_like(x, o_.fill_value));
    if (!o_.indicators) return {filled};
    return {ops::concat(std::vector<Value>{filled, ops::cast(present, DType::kF32)}, x.rank() - 1)};
  }
  // Rank 3: "any feature present" (AND x's own mask). The feature mask's own mask is ignored.
  std::vector<Value> compute_mask(const std::vector<Value>& in, const std::vector<Value>&,
                                  CallContext& ctx) override {
    if (in[0].rank() != 3) return {ctx.input_mask(0)};
    Value m = ops::reduce_any(presence(*this, in), {-1});
    if (const Value incoming = ctx.input_mask(0); incoming.defined())
      m = ops::logical_and(m, incoming);
    return {m};
  }
  Json get_config() const override {
    Json j = Layer::get_config();
    j["fill_value"] = o_.fill_value;
    j["indicators"] = o_.indicators;
    return j;
  }

 private:
  MissingFeaturesOptions o_;
};

class FeatureDropoutLayer : public Layer {
 public:
  FeatureDropoutLayer(double rate, FeatureDropoutOptions o)
      : Layer("feature_dropout", o.name), rate_(rate), o_(std::move(o)) {
    if (!(rate >= 0 && rate <= 1))
      LOWBIT_THROW(ValueError, "FeatureDropout: rate must be in [0, 1] but found ", rate);
    if (o_.seed < 0) o_.seed = static_cast<int64_t>(std::hash<std::string>{}(name_)&0x7fffffff);
  }
  std::string class_name() const override { return "FeatureDropout"; }
  int num_inputs() const override { return -1; }

  void build(const std::vector<Shape>& s) override { check_feature_inputs(*this, s); }
  std::vector<Value> call(const std::vector<Value>& in, CallContext& ctx) override {
    if (!ctx.training() || rate_ == 0) return in;
    const Value& x = in[0];
    std::vector<int64_t> noise;
    if (o_.per_sequence && x.rank() == 3) noise = {-1, 1, -1};
    // Philox dropout of ones: 0 (hidden) or 1/(1 - rate) (kept), the Dropout stream.
    const Value draw =
        ops::dropout(ops::ones_like(x), ctx.rng_step(), rate_, o_.seed, std::move(noise));
    const Value keep = ops::not_equal(draw, ops::scalar_like(draw, 0.0));
    if (in.size() == 1)
      return {ops::where(keep, x, ops::scalar_like(x, std::numeric_limits<double>::quiet_NaN()))};
    const Value& m = in[1];
    if (m.dtype() == DType::kBool) return {x, ops::logical_and(m, keep)};
    if (m.dtype() != DType::kF32)
      LOWBIT_THROW(DTypeError, name_, " (FeatureDropout): feature_mask must be bool or f32 (1 = ",
                   "present) but found ", dtype_name(m.dtype()));
    return {x, ops::where(keep, m, ops::scalar_like(m, 0.0))};
  }
  std::vector<Value> compute_mask(const std::vector<Value>&, const std::vector<Value>& out,
                                  CallContext& ctx) override {
    std::vector<Value> m(out.size());
    m[0] = ctx.input_mask(0);
    return m;
  }
  Json get_config() const override {
    Json j = Layer::get_config();
    j["rate"] = rate_;
    j["per_sequence"] = o_.per_sequence;
    j["seed"] = o_.seed;
    return j;
  }

 private:
  double rate_;
  FeatureDropoutOptions o_;
};

// SimpleRNN, LSTM, GRU and Bidirectional consume the mask of x (they read ctx.input_masks);
// with return_sequences every [B, T, U] output carries it (reversed along time for a
// go_backwards layer, whose output is in processing order), states never do.
std::vector<Value> recurrent_mask_rule(const Layer& l, const std::vector<Value>&,
                                       const std::vector<Value>& outputs, CallContext& ctx) {
  const Json c = l.get_config();
  const Json& rc = c.contains("layer") ? c.at("layer").at("config") : c;
  const bool sequences = rc.value("return_sequences", false);
  const bool backwards = !c.contains("layer") && rc.value("go_backwards", false);
  std::vector<Value> masks(outputs.size());
  const Value m = ctx.input_mask(0);
  if (!sequences || !m.defined()) return masks;
  const Value out_mask =
      backwards ? ops::slice(m, {0, -1}, {ops::kSliceMax, ops::kSliceMin}, {1, -1}) : m;
  for (size_t i = 0; i < outputs.size(); ++i)
    if (outputs[i].rank() == 3) masks[i] = out_mask;
  return masks;
}

// Quantization-aware training's layers (src/quant), by class name: FakeQuant is elementwise and
// passes the mask; QuantizeWrapper has the rule of the layer it wraps (whose call sees the
// wrapper's input masks through the context).
std::vector<Value> pass_rule(const Layer&, const std::vector<Value>&,
                             const std::vector<Value>& outputs, CallContext& ctx) {
  return detail::pass_mask(outputs, ctx);
}
std::vector<Value> wrapper_rule(const Layer& l, const std::vector<Value>& inputs,
                                const std::vector<Value>& outputs, CallContext& ctx) {
  const std::vector<LayerPtr> inner = l.sublayers();
  if (inner.size() != 1)
    LOWBIT_THROW(UnsupportedError, l.name(), " (", l.class_name(),
                 "): got a timestep mask but wraps ", inner.size(),
                 " layers, so it has no mask rule (docs/masking.md)");
  return inner[0]->compute_mask(inputs, outputs, ctx);
}

}  // namespace

LayerPtr SequenceMask(int64_t maxlen, SequenceMaskOptions o) {
  return std::make_shared<SequenceMaskLayer>(maxlen, std::move(o));
}
LayerPtr Masking(double mask_value, MaskingOptions o) {
  return std::make_shared<MaskingLayer>(mask_value, std::move(o));
}
LayerPtr MissingFeatures(MissingFeaturesOptions o) {
  return std::make_shared<MissingFeaturesLayer>(std::move(o));
}
LayerPtr FeatureDropout(double rate, FeatureDropoutOptions o) {
  return std::make_shared<FeatureDropoutLayer>(rate, std::move(o));
}

namespace detail {
void register_masking_layers() {
  register_layer("SequenceMask", [](const Json& c) {
    return SequenceMask(c.at("maxlen").get<int64_t>(), {.name = json_name(c)});
  });
  register_layer("Masking", [](const Json& c) {
    return Masking(c.value("mask_value", 0.0), {.name = json_name(c)});
  });
  register_layer("MissingFeatures", [](const Json& c) {
    return MissingFeatures({.fill_value = c.value("fill_value", 0.0),
                            .indicators = c.value("indicators", true),
                            .name = json_name(c)});
  });
  register_layer("FeatureDropout", [](const Json& c) {
    return FeatureDropout(c.at("rate").get<double>(),
                          {.per_sequence = c.value("per_sequence", false),
                           .seed = c.value("seed", int64_t{-1}),
                           .name = json_name(c)});
  });
}

std::vector<std::pair<std::string, MaskRule>> builtin_mask_rules() {
  return {{"SimpleRNN", recurrent_mask_rule}, {"LSTM", recurrent_mask_rule},
          {"GRU", recurrent_mask_rule},       {"Bidirectional", recurrent_mask_rule},
          {"FakeQuant", pass_rule},           {"QuantizeWrapper", wrapper_rule}};
}
}  // namespace detail

}  // namespace lowbit::nn
