// Recurrent layers (SimpleRNN, LSTM, GRU) and Bidirectional: the input projection of all steps
// as one matmul, then one fused recurrence op (src/ops/rnn.cc). Semantics and the mask hook:
// include/lowbit/nn/layers.h.
#include <functional>
#include <optional>

#include "lowbit/nn/layers.h"
#include "lowbit/ops.h"
#include "nn/layer_registry.h"
#include "nn/layers_common.h"

namespace lowbit::nn {

namespace {

enum class Kind { kSimpleRNN, kLSTM, kGRU };

// Everything a recurrent layer needs, whatever its class (the public options structs are
// per class; unused fields keep their defaults).
struct RecurrentConfig {
  Kind kind = Kind::kLSTM;
  int64_t units = 1;
  std::string activation = "tanh";
  std::string recurrent_activation = "sigmoid";
  bool use_bias = true;
  std::string kernel_initializer = "glorot_uniform";
  std::string recurrent_initializer = "orthogonal";
  std::string bias_initializer = "zeros";
  bool unit_forget_bias = true;
  double dropout = 0.0;
  double recurrent_dropout = 0.0;
  bool reset_after = true;
  bool return_sequences = false;
  bool return_state = false;
  bool go_backwards = false;
  bool zero_output_for_mask = false;
  bool unroll = false;
  int64_t seed = -1;
  std::string name;
};

const char* class_of(Kind k) {
  return k == Kind::kLSTM ? "LSTM" : k == Kind::kGRU ? "GRU" : "SimpleRNN";
}
const char* default_name(Kind k) {
  return k == Kind::kLSTM ? "lstm" : k == Kind::kGRU ? "gru" : "simple_rnn";
}
int gates_of(Kind k) { return k == Kind::kLSTM ? 4 : k == Kind::kGRU ? 3 : 1; }
int states_of(Kind k) { return k == Kind::kLSTM ? 2 : 1; }

void check_rnn_activation(const std::string& who, const char* arg, const std::string& name) {
  for (const char* ok : {"tanh", "sigmoid", "hard_sigmoid", "relu", "linear"})
    if (name == ok) return;
  LOWBIT_THROW(ValueError, who, ": argument '", arg,
               "': expected tanh, sigmoid, hard_sigmoid, relu or linear (what the fused "
               "recurrence supports) but found '",
               name, "'");
}

class RecurrentLayer : public Layer {
 public:
  explicit RecurrentLayer(RecurrentConfig c)
      : Layer(default_name(c.kind), c.name), c_(std::move(c)) {
    const std::string who = class_of(c_.kind);
    if (c_.units < 1)
      LOWBIT_THROW(ValueError, who, ": argument 'units': expected >= 1 but found ", c_.units);
    check_rnn_activation(who, "activation", c_.activation);
    if (c_.kind != Kind::kSimpleRNN)
      check_rnn_activation(who, "recurrent_activation", c_.recurrent_activation);
    for (auto [arg, rate] : {std::pair<const char*, double>{"dropout", c_.dropout},
                             {"recurrent_dropout", c_.recurrent_dropout}})
      if (!(rate >= 0 && rate <= 1))
        LOWBIT_THROW(ValueError, who, ": argument '", arg,
                     "': expected a rate in [0, 1] but found ", rate);
    // Dropout seed: the given one, or derived from the name (the config keeps null then, so a
    // copy under another name, as Bidirectional makes, draws its own masks).
    seed_ =
        c_.seed >= 0 ? c_.seed : static_cast<int64_t>(std::hash<std::string>{}(name_)&0x7fffffff);
  }

  std::string class_name() const override { return class_of(c_.kind); }
  int num_inputs() const override { return -1; }
  const RecurrentConfig& config() const { return c_; }
  void force_zero_output(bool v) { c_.zero_output_for_mask = v; }

  void build(const std::vector<Shape>& s) override {
    check_input(s[0].rank() == 3 && s[0][2] != kUnknown,
                "rank 3 [batch, timesteps, features] with known features", s[0]);
    const int64_t d = s[0][2], u = c_.units, g = gates_of(c_.kind);
    add_weight("kernel", {d, g * u}, c_.kernel_initializer);
    add_weight("recurrent_kernel", {u, g * u}, c_.recurrent_initializer);
    if (!c_.use_bias) return;
    if (c_.kind == Kind::kLSTM && c_.unit_forget_bias) {
      // Keras: bias_initializer for i, ones for f, bias_initializer for c and o.
      Weight& b = add_weight("bias", {g * u}, "zeros");
      Tensor i = initialize(c_.bias_initializer, {u}, global_rng());
      Tensor co = initialize(c_.bias_initializer, {2 * u}, global_rng());
      float* p = b.value.data<float>();
      for (int64_t k = 0; k < u; ++k) {
        p[k] = i.data<float>()[k];
        p[u + k] = 1.0f;
        p[2 * u + k] = co.data<float>()[k];
        p[3 * u + k] = co.data<float>()[u + k];
      }
    } else if (c_.kind == Kind::kGRU && c_.reset_after) {
      add_weight("bias", {2, g * u}, c_.bias_initializer);
    } else {
      add_weight("bias", {g * u}, c_.bias_initializer);
    }
  }

  std::vector<Value> call(const std::vector<Value>& in, CallContext& ctx) override {
    const int ns = states_of(c_.kind);
    if (in.size() != 1 && in.size() != static_cast<size_t>(1 + ns))
      LOWBIT_THROW(ValueError, name_, " (", class_name(), "): expected 1 input (x) or ", 1 + ns,
                   " (x and the initial state", ns == 2 ? "s h, c" : " h", ") but found ",
                   in.size());
    const Value& x = in[0];
    const int64_t u = c_.units, g = gates_of(c_.kind);
    Value mask = input_mask(x, ctx);
    // Masked steps never reach the arithmetic (issue 14): the recurrence skips them, but the
    // input projection's weight gradient is x^T @ dxp, and NaN or Inf at a masked step times its
    // zero gradient would still be NaN. A select, not a multiply: whatever a masked step holds
    // reads as 0 forward and gets exactly 0 backward.
    Value xs = x;
    if (mask.defined()) {
      const Value valid = mask.dtype() == DType::kBool ? mask : ops::cast(mask, DType::kBool);
      xs = ops::where(ops::expand_dims(valid, 2), x, ops::scalar_like(x, 0.0));
    }
    // Keras: LSTM and GRU drop only for 0 < rate < 1; SimpleRNN for any rate > 0.
    auto applies = [&](double rate) {
      return ctx.training() && rate > 0 && (rate < 1 || c_.kind == Kind::kSimpleRNN);
    };
    const bool drop = applies(c_.dropout), rdrop = applies(c_.recurrent_dropout);
    Value kernel = ctx.var(*this, weights_[0]);
    Value rk = ctx.var(*this, weights_[1]);
    Value bias = c_.use_bias ? ctx.var(*this, weights_[2]) : Value();

    // Input projection of every step: one matmul (one per gate block with per-gate dropout).
    Value input_bias = bias, recurrent_bias;
    if (c_.use_bias && c_.kind == Kind::kGRU && c_.reset_after) {
      input_bias = ops::reshape(ops::slice(bias, {0, 0}, {1, ops::kSliceMax}), {g * u});
      recurrent_bias = ops::reshape(ops::slice(bias, {1, 0}, {2, ops::kSliceMax}), {g * u});
    }
    Value xp;
    const std::vector<int64_t> per_sequence{kUnknown, 1, kUnknown};  // one mask per (b, feature)
    if (drop && rdrop && g > 1) {
      // Keras implementation 1: a separate input mask for each gate block.
      std::vector<Value> parts;
      for (int64_t k = 0; k < g; ++k) {
        Value xk = ops::dropout(xs, ctx.rng_step(), c_.dropout, seed_ + k, per_sequence);
        Value wk = ops::slice(kernel, {0, k * u}, {ops::kSliceMax, (k + 1) * u});
        parts.push_back(ops::matmul(xk, wk));
      }
      xp = ops::concat(parts, 2);
      if (input_bias.defined()) xp = xp + input_bias;
    } else {
      Value xd = drop ? ops::dropout(xs, ctx.rng_step(), c_.dropout, seed_, per_sequence) : xs;
      if (input_bias.defined()) {
        // The bias rides in the GEMM as a column of ones: [x, 1] @ [kernel; bias] is
        // x @ kernel + bias, and the matmul's weight gradient carries the bias gradient. A
        // broadcast add and its reduction over B*T rows cost ~10% of a training step.
        Value ones = ops::ones_like(ops::slice(xd, {0, 0, 0}, {ops::kSliceMax, ops::kSliceMax, 1}));
        Value w = ops::concat(std::vector<Value>{kernel, ops::reshape(input_bias, {1, g * u})}, 0);
        xp = ops::matmul(ops::concat(std::vector<Value>{xd, ones}, 2), w);
      } else {
        xp = ops::matmul(xd, kernel);
      }
    }

    // Initial states: given, or zeros [B, U] (shaped from a slice of xp).
    std::vector<Value> init;
    for (int s = 0; s < ns; ++s) {
      if (in.size() > 1) {
        check_state(in[1 + s], x, s);
        init.push_back(in[1 + s]);
      } else {
        if (init.empty()) {
          Value first = ops::slice(xp, {0, 0, 0}, {ops::kSliceMax, 1, u});
          init.push_back(ops::reshape(ops::zeros_like(first), {-1, u}));
        } else {
          init.push_back(init[0]);
        }
      }
    }
    Value rdm;
    if (rdrop) {
      Value ones = ops::reshape(
          ops::ones_like(ops::slice(xp, {0, 0, 0}, {ops::kSliceMax, 1, g * u})), {-1, g * u});
      rdm = ops::dropout(ones, ctx.rng_step(), c_.recurrent_dropout, seed_ + 1000003);
    }

    ops::RnnOptions o;
    o.go_backwards = c_.go_backwards;
    o.return_sequences = c_.return_sequences;
    o.zero_output_for_mask = c_.zero_output_for_mask;
    o.activation = c_.activation;
    o.recurrent_activation = c_.recurrent_activation;
    o.reset_after = c_.reset_after;
    ops::RnnOutputs<Value> r;
    if (c_.kind == Kind::kLSTM) {
      r = ops::lstm_sequence(xp, rk, init[0], init[1], o, mask, rdm);
    } else if (c_.kind == Kind::kGRU) {
      if (!recurrent_bias.defined())
        recurrent_bias = ctx.graph().constant(Tensor::zeros({g * u}), "zero_recurrent_bias");
      r = ops::gru_sequence(xp, rk, recurrent_bias, init[0], o, mask, rdm);
    } else {
      r = ops::simple_rnn_sequence(xp, rk, init[0], o, mask, rdm);
    }
    std::vector<Value> out{r.y};
    if (c_.return_state) out.insert(out.end(), r.states.begin(), r.states.end());
    return out;
  }

  Json get_config() const override {
    Json j = Layer::get_config();
    j["units"] = c_.units;
    j["activation"] = c_.activation;
    if (c_.kind != Kind::kSimpleRNN) j["recurrent_activation"] = c_.recurrent_activation;
    j["use_bias"] = c_.use_bias;
    j["kernel_initializer"] = c_.kernel_initializer;
    j["recurrent_initializer"] = c_.recurrent_initializer;
    j["bias_initializer"] = c_.bias_initializer;
    if (c_.kind == Kind::kLSTM) j["unit_forget_bias"] = c_.unit_forget_bias;
    j["dropout"] = c_.dropout;
    j["recurrent_dropout"] = c_.recurrent_dropout;
    if (c_.kind == Kind::kGRU) j["reset_after"] = c_.reset_after;
    j["seed"] = c_.seed >= 0 ? Json(c_.seed) : Json(nullptr);
    j["return_sequences"] = c_.return_sequences;
    j["return_state"] = c_.return_state;
    j["go_backwards"] = c_.go_backwards;
    j["stateful"] = false;
    j["unroll"] = c_.unroll;
    j["zero_output_for_mask"] = c_.zero_output_for_mask;
    return j;
  }

 private:
  // The timestep mask of x from the call context (undefined: none), checked against x.
  Value input_mask(const Value& x, const CallContext& ctx) const {
    if (ctx.input_masks.empty() || !ctx.input_masks[0].defined()) return Value();
    const Value& m = ctx.input_masks[0];
    if (m.dtype() != DType::kBool && m.dtype() != DType::kF32)
      LOWBIT_THROW(DTypeError, name_, " (", class_name(),
                   "): mask: expected dtype bool or f32 but found ", dtype_name(m.dtype()));
    const Shape& ms = m.shape();
    const Shape& xs = x.shape();
    const bool ok = ms.rank() == 2 && detail_dims_compatible(ms[0], xs[0]) &&
                    detail_dims_compatible(ms[1], xs[1]);
    if (!ok)
      LOWBIT_THROW(ShapeError, name_, " (", class_name(),
                   "): mask: expected shape [batch, timesteps] matching x ", xs.str(),
                   " but found ", ms.str());
    return m;
  }
  static bool detail_dims_compatible(int64_t a, int64_t b) {
    return a == kUnknown || b == kUnknown || a == b;
  }
  void check_state(const Value& s, const Value& x, int index) const {
    const Shape& ss = s.shape();
    const bool ok = s.dtype() == DType::kF32 && ss.rank() == 2 &&
                    detail_dims_compatible(ss[0], x.shape()[0]) &&
                    detail_dims_compatible(ss[1], c_.units);
    if (!ok)
      LOWBIT_THROW(ShapeError, name_, " (", class_name(), "): initial state ", index,
                   ": expected f32 [batch, ", c_.units, "] but found ", dtype_name(s.dtype()),
                   ss.str());
  }

  RecurrentConfig c_;
  int64_t seed_ = 0;
};

RecurrentConfig config_of(Kind kind, int64_t units) {
  RecurrentConfig c;
  c.kind = kind;
  c.units = units;
  return c;
}

// ---- Bidirectional ----

std::string without_prefix(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0 ? s.substr(prefix.size()) : s;
}

LayerPtr copy_with(const Layer& l, const std::string& name, std::optional<bool> go_backwards) {
  Json j = layer_to_config(l);
  j["config"]["name"] = name;
  if (go_backwards) j["config"]["go_backwards"] = *go_backwards;
  return layer_from_config(j);
}

class BidirectionalLayer : public Layer {
 public:
  BidirectionalLayer(const LayerPtr& layer, BidirectionalOptions o)
      : Layer("bidirectional", o.name), merge_mode_(o.merge_mode) {
    if (merge_mode_ != "concat" && merge_mode_ != "sum" && merge_mode_ != "mul" &&
        merge_mode_ != "ave" && merge_mode_ != "none")
      LOWBIT_THROW(ValueError,
                   "Bidirectional: argument 'merge_mode': expected concat, sum, mul, "
                   "ave or none but found '",
                   merge_mode_, "'");
    auto rnn = [](const LayerPtr& l, const char* arg) {
      auto r = std::dynamic_pointer_cast<RecurrentLayer>(l);
      if (!r)
        LOWBIT_THROW(ValueError, "Bidirectional: argument '", arg,
                     "': expected a SimpleRNN, LSTM or GRU layer but found ",
                     l ? l->class_name() : std::string("null"));
      return r;
    };
    rnn(layer, "layer");
    forward_ =
        rnn(copy_with(*layer, "forward_" + without_prefix(layer->name(), "forward_"), {}), "layer");
    backward_ =
        o.backward_layer
            ? rnn(o.backward_layer, "backward_layer")
            : rnn(copy_with(*layer, "backward_" + without_prefix(layer->name(), "backward_"), true),
                  "layer");
    const RecurrentConfig& f = forward_->config();
    const RecurrentConfig& b = backward_->config();
    if (f.go_backwards == b.go_backwards)
      LOWBIT_THROW(ValueError,
                   "Bidirectional: the forward and backward layers must differ in "
                   "go_backwards but both have go_backwards = ",
                   f.go_backwards);
    if (f.return_sequences != b.return_sequences || f.return_state != b.return_state ||
        states_of(f.kind) != states_of(b.kind))
      LOWBIT_THROW(ValueError,
                   "Bidirectional: the forward and backward layers must agree in "
                   "return_sequences, return_state and their number of states");
    // Keras forces zero outputs at masked steps when returning sequences.
    for (auto* l : {forward_.get(), backward_.get()}) l->force_zero_output(f.return_sequences);
  }

  std::string class_name() const override { return "Bidirectional"; }
  int num_inputs() const override { return -1; }
  void set_trainable(bool t) override {
    Layer::set_trainable(t);
    forward_->set_trainable(t);
    backward_->set_trainable(t);
  }

  void build(const std::vector<Shape>& s) override {
    // Build both layers on a scratch trace, then expose their weights (shared tensors).
    Graph scratch;
    CallContext ctx(scratch, false);
    std::vector<Value> in;
    for (size_t i = 0; i < s.size(); ++i)
      in.push_back(scratch.placeholder("input" + std::to_string(i), DType::kF32, s[i]));
    auto [fin, bin] = split_inputs(in);
    forward_->apply(fin, ctx);
    backward_->apply(bin, ctx);
    for (const Layer* l :
         {static_cast<const Layer*>(forward_.get()), static_cast<const Layer*>(backward_.get())})
      for (const Weight& w : l->weights())
        weights_.push_back({l->name() + "/" + w.name, w.value, w.trainable});
  }

  std::vector<Value> call(const std::vector<Value>& in, CallContext& ctx) override {
    auto [fin, bin] = split_inputs(in);
    return merge_bidirectional(forward_->apply(fin, ctx), backward_->apply(bin, ctx), merge_mode_,
                               forward_->config().return_sequences);
  }

  Json get_config() const override {
    Json j = Layer::get_config();
    j["merge_mode"] = merge_mode_ == "none" ? Json(nullptr) : Json(merge_mode_);
    j["layer"] = layer_to_config(*forward_);
    j["backward_layer"] = layer_to_config(*backward_);
    return j;
  }

 private:
  std::pair<std::vector<Value>, std::vector<Value>> split_inputs(
      const std::vector<Value>& in) const {
    const size_t ns = states_of(forward_->config().kind);
    if (in.size() != 1 && in.size() != 1 + 2 * ns)
      LOWBIT_THROW(ValueError, name_, " (Bidirectional): expected 1 input (x) or ", 1 + 2 * ns,
                   " (x, the forward initial states, then the backward ones) but found ",
                   in.size());
    std::vector<Value> f{in[0]}, b{in[0]};
    for (size_t s = 0; in.size() > 1 && s < ns; ++s) {
      f.push_back(in[1 + s]);
      b.push_back(in[1 + ns + s]);
    }
    return {f, b};
  }

  std::string merge_mode_;
  std::shared_ptr<RecurrentLayer> forward_, backward_;
};

}  // namespace

LayerPtr SimpleRNN(int64_t units, SimpleRNNOptions o) {
  RecurrentConfig c = config_of(Kind::kSimpleRNN, units);
  c.activation = o.activation;
  c.use_bias = o.use_bias;
  c.kernel_initializer = o.kernel_initializer;
  c.recurrent_initializer = o.recurrent_initializer;
  c.bias_initializer = o.bias_initializer;
  c.dropout = o.dropout;
  c.recurrent_dropout = o.recurrent_dropout;
  c.return_sequences = o.return_sequences;
  c.return_state = o.return_state;
  c.go_backwards = o.go_backwards;
  c.zero_output_for_mask = o.zero_output_for_mask;
  c.unroll = o.unroll;
  c.seed = o.seed;
  c.name = o.name;
  return std::make_shared<RecurrentLayer>(c);
}

LayerPtr LSTM(int64_t units, LSTMOptions o) {
  RecurrentConfig c = config_of(Kind::kLSTM, units);
  c.activation = o.activation;
  c.recurrent_activation = o.recurrent_activation;
  c.use_bias = o.use_bias;
  c.kernel_initializer = o.kernel_initializer;
  c.recurrent_initializer = o.recurrent_initializer;
  c.bias_initializer = o.bias_initializer;
  c.unit_forget_bias = o.unit_forget_bias;
  c.dropout = o.dropout;
  c.recurrent_dropout = o.recurrent_dropout;
  c.return_sequences = o.return_sequences;
  c.return_state = o.return_state;
  c.go_backwards = o.go_backwards;
  c.zero_output_for_mask = o.zero_output_for_mask;
  c.unroll = o.unroll;
  c.seed = o.seed;
  c.name = o.name;
  return std::make_shared<RecurrentLayer>(c);
}

LayerPtr GRU(int64_t units, GRUOptions o) {
  RecurrentConfig c = config_of(Kind::kGRU, units);
  c.activation = o.activation;
  c.recurrent_activation = o.recurrent_activation;
  c.use_bias = o.use_bias;
  c.kernel_initializer = o.kernel_initializer;
  c.recurrent_initializer = o.recurrent_initializer;
  c.bias_initializer = o.bias_initializer;
  c.dropout = o.dropout;
  c.recurrent_dropout = o.recurrent_dropout;
  c.reset_after = o.reset_after;
  c.return_sequences = o.return_sequences;
  c.return_state = o.return_state;
  c.go_backwards = o.go_backwards;
  c.zero_output_for_mask = o.zero_output_for_mask;
  c.unroll = o.unroll;
  c.seed = o.seed;
  c.name = o.name;
  return std::make_shared<RecurrentLayer>(c);
}

std::vector<Value> merge_bidirectional(const std::vector<Value>& f, const std::vector<Value>& b,
                                       const std::string& merge_mode, bool sequences) {
  Value y = f.at(0), y_rev = b.at(0);
  if (sequences)
    y_rev = ops::slice(y_rev, {0, ops::kSliceMax}, {ops::kSliceMax, ops::kSliceMin}, {1, -1});
  std::vector<Value> out;
  if (merge_mode == "concat")
    out.push_back(ops::concat(std::vector<Value>{y, y_rev}, -1));
  else if (merge_mode == "sum")
    out.push_back(y + y_rev);
  else if (merge_mode == "ave")
    out.push_back((y + y_rev) * 0.5);
  else if (merge_mode == "mul")
    out.push_back(y * y_rev);
  else
    out = {y, y_rev};
  out.insert(out.end(), f.begin() + 1, f.end());
  out.insert(out.end(), b.begin() + 1, b.end());
  return out;
}

LayerPtr Bidirectional(const LayerPtr& layer, BidirectionalOptions o) {
  return std::make_shared<BidirectionalLayer>(layer, std::move(o));
}

namespace detail {
namespace {

// The fields common to every recurrent class, read from a Keras config.
RecurrentConfig read_config(Kind kind, const Json& c) {
  const std::string who = class_of(kind);
  if (c.value("stateful", false))
    LOWBIT_THROW(ValueError, who, ": config field 'stateful': true is not supported");
  for (const char* k :
       {"kernel_regularizer", "recurrent_regularizer", "bias_regularizer", "activity_regularizer",
        "kernel_constraint", "recurrent_constraint", "bias_constraint"})
    if (c.contains(k) && !c.at(k).is_null())
      LOWBIT_THROW(ValueError, who, ": config field '", k, "' is not supported (found ",
                   c.at(k).dump(), ")");
  RecurrentConfig r = config_of(kind, c.at("units").get<int64_t>());
  // Keras builds the layer with cls(**config): a missing key is the constructor default (tanh),
  // an explicit null is no activation.
  if (c.contains("activation")) r.activation = json_activation(c);
  if (c.contains("recurrent_activation"))
    r.recurrent_activation = c.at("recurrent_activation").is_null()
                                 ? "linear"
                                 : c.at("recurrent_activation").get<std::string>();
  r.use_bias = c.value("use_bias", true);
  r.kernel_initializer = json_initializer(c, "kernel_initializer", "glorot_uniform");
  r.recurrent_initializer = json_initializer(c, "recurrent_initializer", "orthogonal");
  r.bias_initializer = json_initializer(c, "bias_initializer", "zeros");
  r.unit_forget_bias = c.value("unit_forget_bias", true);
  r.dropout = c.value("dropout", 0.0);
  r.recurrent_dropout = c.value("recurrent_dropout", 0.0);
  r.reset_after = c.value("reset_after", true);
  r.return_sequences = c.value("return_sequences", false);
  r.return_state = c.value("return_state", false);
  r.go_backwards = c.value("go_backwards", false);
  r.zero_output_for_mask = c.value("zero_output_for_mask", false);
  r.unroll = c.value("unroll", false);
  r.seed = c.contains("seed") && !c.at("seed").is_null() ? c.at("seed").get<int64_t>() : -1;
  r.name = json_name(c);
  return r;
}

}  // namespace

void register_rnn_layers() {
  for (Kind kind : {Kind::kSimpleRNN, Kind::kLSTM, Kind::kGRU})
    register_layer(class_of(kind), [kind](const Json& c) -> LayerPtr {
      return std::make_shared<RecurrentLayer>(read_config(kind, c));
    });
  register_layer("Bidirectional", [](const Json& c) {
    BidirectionalOptions o;
    o.merge_mode = c.contains("merge_mode") && !c.at("merge_mode").is_null()
                       ? c.at("merge_mode").get<std::string>()
                       : "none";
    if (c.contains("backward_layer") && !c.at("backward_layer").is_null())
      o.backward_layer = layer_from_config(c.at("backward_layer"));
    o.name = json_name(c);
    return Bidirectional(layer_from_config(c.at("layer")), o);
  });
}

}  // namespace detail

}  // namespace lowbit::nn
