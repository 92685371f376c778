// Keras-style layers built on the op graph.
//
// A layer owns its weights (tensors) and, when called, emits ops into a Graph: the layer graph
// (what summary() shows and a model file stores) is traced into an op graph per call mode. The
// same weights back every graph the layer is traced into, so a training graph and an inference
// graph of one model always see the same values.
//
//   auto dense = nn::Dense(10, {.activation = "relu"});
//   nn::KTensor x = nn::Input({784});
//   nn::KTensor y = (*dense)(x);                // functional API: symbolic, records a node
//
// `training` (what Dropout, BatchNormalization and later quantizer ranges look at) is carried by
// the CallContext of one trace; see docs/layers.md.
#pragma once

#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "lowbit/graph.h"
#include "lowbit/rng.h"

namespace lowbit::nn {

using Json = nlohmann::json;

class Layer;
using LayerPtr = std::shared_ptr<Layer>;

// A weight of a layer: a tensor that graphs bind variables to.
struct Weight {
  std::string name;  // "kernel", "bias", "moving_mean", ...
  Tensor value;
  bool trainable = true;
};

// Seeds the generator that layer initialisers draw from (in build order), so models built in
// the same order with the same seed start from identical weights.
void set_random_seed(uint64_t seed);
Rng& global_rng();

// Creates an initial tensor: "zeros", "ones", "glorot_uniform", "glorot_normal", "he_uniform",
// "he_normal", "lecun_uniform", "lecun_normal", "uniform" (U(-0.05, 0.05)), "random_normal"
// (N(0, 0.05)), "orthogonal". Fans follow Keras compute_fans (conv kernels: receptive field x
// channels). Throws ValueError for an unknown name.
Tensor initialize(const std::string& initializer, const Shape& shape, Rng& rng);

// State of one trace of layers into a graph.
class CallContext {
 public:
  CallContext(Graph& g, bool training, Tensor rng_state = Tensor());
  Graph& graph() const { return g_; }
  bool training() const { return training_; }
  void set_training(bool t) { training_ = t; }

  // What `layer` reads for its weight `w`: the graph variable bound to it (created once per
  // graph and weight), or, while a WeightHookScope for `layer` is alive, the hook's transform
  // of that variable (see below).
  Value var(const Layer& layer, const Weight& w);
  // The variable already bound to `w` in this trace (undefined if the trace did not use it).
  // Always the variable itself, never a hooked value: optimizers update it and gradients are
  // taken with respect to it.
  Value bound(const Weight& w) const;

  // Weight hooks: a layer that wraps another (quantization-aware training's QuantizeWrapper)
  // changes what the wrapped layer reads for its weights without touching the layer's code.
  // While a WeightHookScope(ctx, layer, hook) is alive, var(layer, w) calls hook(w, variable)
  // and returns its result when defined (e.g. the fake-quantized kernel), else the variable
  // (biases pass unchanged). The hook runs once per weight and trace: later reads of the same
  // weight, also by later calls of a shared layer, return the first result, so state updates
  // the hook records happen once per step. Hooks apply only to the named layer (not to its
  // sublayers); scopes nest, the innermost hook for a layer wins.
  using WeightHook = std::function<Value(const Weight& w, const Value& variable)>;
  class WeightHookScope {
   public:
    WeightHookScope(CallContext& ctx, const Layer& layer, WeightHook hook);
    ~WeightHookScope();
    WeightHookScope(const WeightHookScope&) = delete;
    WeightHookScope& operator=(const WeightHookScope&) = delete;

   private:
    CallContext& ctx_;
  };
  // Records a state update (e.g. moving statistics); the caller's executor writes it.
  void add_update(const Value& variable, const Value& new_value);
  const std::vector<std::pair<Value, Value>>& updates() const { return updates_; }
  // The s64 scalar random-stream step for random ops (Dropout). In training mode it advances
  // by one per executed step (a state update).
  Value rng_step();

  // Timestep masks of the inputs of the layer call being traced, one per input (an undefined
  // Value: that input has none), each bool [batch, timesteps] (true = valid step). Set by
  // Layer::apply(inputs, input_masks, ctx, output_masks), which models use for every layer
  // call; a layer reads it in call() (recurrent layers, BatchNormalization) and in
  // compute_mask(). Empty when nothing set it. A layer calling another one with the plain
  // apply() passes it on unchanged (Bidirectional's inner layers see the outer call's masks).
  // See docs/masking.md.
  std::vector<Value> input_masks;
  // The mask of input i, or an undefined Value (no mask, or i beyond input_masks).
  Value input_mask(size_t i = 0) const { return i < input_masks.size() ? input_masks[i] : Value(); }

  // Quantization grids of traced values. A layer whose output lies on a per-tensor grid of step
  // s (quant's FakeQuant) records it; Layer::apply passes it from input to output through a
  // layer that keeps its input's grid (Layer::keeps_grid: max pooling, reshapes, inference
  // dropout); a quantized conv/dense reads its input's step to round its bias to the int32 grid
  // s_in * s_w the integer model stores it on (quant::QuantizeWrapper). Undefined: not known.
  void set_grid_step(const Value& v, const Value& step);
  Value grid_step(const Value& v) const;

 private:
  Graph& g_;
  bool training_;
  Tensor rng_state_;
  Value rng_step_;
  std::map<const void*, Value> vars_;
  std::vector<std::pair<Value, Value>> updates_;
  std::vector<std::pair<const Layer*, WeightHook>> hooks_;  // innermost last
  std::map<const void*, Value> hooked_;                     // weight -> hooked value
  std::map<int, Value> grid_steps_;                         // value id -> grid step
};

struct LayerNode;

// A symbolic tensor of the layer graph (Keras' KerasTensor): returned by Input() and by calling a
// layer on symbolic tensors. Its shape has an unknown batch dim.
struct KTensor {
  std::shared_ptr<LayerNode> node;
  int index = 0;
  const ValueType& type() const;
  const Shape& shape() const { return type().shape; }
  DType dtype() const { return type().dtype; }
  bool defined() const { return node != nullptr; }
  // Whether a timestep mask travels with this tensor (Masking, Embedding(mask_zero), ... put it
  // there; docs/masking.md lists every layer's rule).
  bool has_mask() const;
};

// Per-call options of the functional API and of model calls.
struct CallOptions {
  std::optional<bool> training;  // unset: inherit (inference when nothing sets it)
  // Functional calls only (Keras' `layer(x, mask=m)`): explicit timestep masks, one per input,
  // each a symbolic bool (or f32 0/1) [batch, timesteps] tensor, typically a model input:
  //   KTensor x = Input({T, F}), m = Input({T}, DType::kBool);
  //   KTensor h = (*lstm)(x, {.masks = {m}});      // model = Model::create({x, m}, {h})
  // An undefined entry ({}) keeps the mask that input carries. More entries than inputs is a
  // ValueError. Ignored by eager model calls (feed the mask as a model input instead).
  std::vector<KTensor> masks;
};

// One application of a layer to symbolic inputs.
struct LayerNode {
  LayerPtr layer;
  std::vector<KTensor> inputs;
  std::vector<ValueType> outputs;
  std::optional<bool> training;     // forced mode for this call, if any
  std::vector<KTensor> masks;       // explicit input masks (CallOptions::masks); may be empty
  std::vector<bool> output_masked;  // whether each output carries a timestep mask
};

class Layer : public std::enable_shared_from_this<Layer> {
 public:
  // `name` empty: a unique default from the class name ("dense", "dense_1", ...).
  Layer(const std::string& default_name, std::string name);
  virtual ~Layer();
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  virtual std::string class_name() const = 0;
  const std::string& name() const { return name_; }
  bool trainable() const { return trainable_; }
  // A frozen layer's weights are not trained; a frozen BatchNormalization runs in inference mode.
  virtual void set_trainable(bool t) { trainable_ = t; }
  bool built() const { return built_; }

  // Number of inputs the layer takes (-1: one or more, as Add/Concatenate).
  virtual int num_inputs() const { return 1; }
  // Creates the weights from the input shapes (batch dim unknown). Called once, on first use.
  virtual void build(const std::vector<Shape>& input_shapes);
  // Emits the layer's ops. Inputs are values of ctx.graph().
  virtual std::vector<Value> call(const std::vector<Value>& inputs, CallContext& ctx) = 0;
  // Keras-style constructor arguments ("units", "activation", ...) plus "name" and "trainable".
  virtual Json get_config() const;
  // Extra text for summary() (e.g. quantizer settings); empty by default.
  virtual std::string summary_note() const { return ""; }
  // True while state that inference reads has never seen data: a quantizer's activation range
  // still at its initial value right after quant::quantize_model. Models refuse inference then
  // (predict, evaluate, eager calls) with an error that says to run Model::calibrate(data) or
  // fit first. Layers without such state: false.
  virtual bool awaiting_calibration() const { return false; }
  // True for layers whose non-trainable weights are quantizer state (ranges, step counters):
  // the state Model::calibrate updates. Plain float layers: false.
  virtual bool has_quantizer_state() const { return false; }
  // Checks the data of a tensor about to be fed to input `index` of this layer, on the host,
  // before any graph runs; throws (ValueError) for values the graph could not handle, e.g.
  // Embedding ids out of range. Models call it for the layers their inputs feed directly
  // (Model::validate_inputs). The default accepts everything.
  virtual void validate_input(int /*index*/, const Tensor& /*value*/) const {}
  // True for a one-input layer whose output values are some of its input values, or zeros
  // (max pooling, flatten, reshape, zero padding, dropout at inference): the output lies on its
  // input's quantization grid (CallContext::grid_step), which apply() then passes on.
  virtual bool keeps_grid(const CallContext& /*ctx*/) const { return false; }

  std::vector<Weight>& weights() { return weights_; }
  const std::vector<Weight>& weights() const { return weights_; }
  // Weights an optimizer updates: trainable weights of a trainable layer.
  std::vector<Weight*> trainable_weights();
  std::vector<Weight*> non_trainable_weights();
  int64_t count_params(bool trainable) const;
  virtual std::vector<LayerPtr> sublayers() const { return {}; }

  // ---- Timestep masks (docs/masking.md) ----
  // The timestep masks of the outputs of the call just traced: one entry per output, each an
  // undefined Value (no mask) or bool [batch, timesteps] matching the output's first two dims.
  // The input masks are in ctx.input_masks (one per input, undefined = none); `inputs` and
  // `outputs` are the call's values. Called right after call() with the same context.
  // Default rule: no input mask gives no output masks; a defined input mask is handled by the
  // rule registered for class_name() (register_mask_rule), and refused otherwise with an
  // UnsupportedError naming the layer: a layer that does not say what a mask means to it never
  // drops one silently. Every built-in layer overrides this; docs/masking.md has the table.
  virtual std::vector<Value> compute_mask(const std::vector<Value>& inputs,
                                          const std::vector<Value>& outputs, CallContext& ctx);

  // Builds if needed (checking the input count) and calls. ctx.input_masks is left as it is.
  std::vector<Value> apply(const std::vector<Value>& inputs, CallContext& ctx);
  // apply() with timestep masks, as models call every layer: checks each defined mask (bool,
  // or f32 0/1 converted to bool; shape [batch, timesteps] matching its input's first two dims,
  // ShapeError/DTypeError naming the layer otherwise), sets ctx.input_masks, applies, and
  // returns the output masks of compute_mask() in `output_masks` (one per output, checked the
  // same way). ctx.input_masks is restored afterwards. `input_masks` may be shorter than
  // `inputs` (missing entries: no mask).
  std::vector<Value> apply(const std::vector<Value>& inputs, const std::vector<Value>& input_masks,
                           CallContext& ctx, std::vector<Value>& output_masks);
  // Functional API: records a node and returns symbolic outputs.
  //   KTensor h = (*nn::Dense(4))(x);           // one input, one output
  //   KTensor s = (*nn::Add())({h, b});         // several inputs, one output: the tensor
  //   std::vector<KTensor> o = (*lstm)(std::vector<KTensor>{x, h0, c0});  // every output
  // The first two need a layer with exactly one output (ValueError naming the layer and its
  // output count otherwise: call the vector form).
  KTensor operator()(const KTensor& x, CallOptions opt = {});
  KTensor operator()(std::initializer_list<KTensor> xs, CallOptions opt = {});
  std::vector<KTensor> operator()(const std::vector<KTensor>& xs, CallOptions opt = {});

 protected:
  Weight& add_weight(const std::string& name, const Shape& shape, const std::string& initializer,
                     bool trainable = true);
  // Throws ShapeError "<name>: expected ... but found ..." unless cond.
  void check_input(bool cond, const std::string& what, const Shape& found) const;

  std::string name_;
  bool trainable_ = true;
  bool built_ = false;
  std::vector<Weight> weights_;
  std::vector<Shape> build_shapes_;
};

// A mask rule for a layer class (what Layer::compute_mask returns for it), for layers whose
// code cannot override compute_mask (third-party classes). `layer` is the layer being called;
// the other arguments are compute_mask's. A layer's own compute_mask override wins over a
// registered rule. The recurrent layers' rule (SimpleRNN, LSTM, GRU, Bidirectional: consume
// the mask, return it with return_sequences) and every other built-in rule live in the same
// table (builtin_mask_rules in src/nn/layers_masking.cc).
using MaskRule =
    std::function<std::vector<Value>(const Layer& layer, const std::vector<Value>& inputs,
                                     const std::vector<Value>& outputs, CallContext& ctx)>;
void register_mask_rule(const std::string& class_name, MaskRule rule);

// Resets the default-name counters ("dense", "dense_1" ...), for reproducible names in tests.
void reset_layer_names();

// Registry of layer factories for configs: class name -> layer.
using LayerFactory = std::function<LayerPtr(const Json& config)>;
void register_layer(const std::string& class_name, LayerFactory factory);
// Rebuilds a layer from {"class_name": ..., "config": {...}}; throws ValueError for unknown
// classes or bad fields.
LayerPtr layer_from_config(const Json& j);
Json layer_to_config(const Layer& l);  // {"class_name", "config"}

}  // namespace lowbit::nn
