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

  // Timestep masks travelling beside the inputs of the current call (hook for masking).
  std::vector<Value> input_masks;

 private:
  Graph& g_;
  bool training_;
  Tensor rng_state_;
  Value rng_step_;
  std::map<const void*, Value> vars_;
  std::vector<std::pair<Value, Value>> updates_;
  std::vector<std::pair<const Layer*, WeightHook>> hooks_;  // innermost last
  std::map<const void*, Value> hooked_;                     // weight -> hooked value
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
};

// Per-call options of the functional API and of model calls.
struct CallOptions {
  std::optional<bool> training;  // unset: inherit (inference when nothing sets it)
};

// One application of a layer to symbolic inputs.
struct LayerNode {
  LayerPtr layer;
  std::vector<KTensor> inputs;
  std::vector<ValueType> outputs;
  std::optional<bool> training;  // forced mode for this call, if any
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
  // Checks the data of a tensor about to be fed to input `index` of this layer, on the host,
  // before any graph runs; throws (ValueError) for values the graph could not handle, e.g.
  // Embedding ids out of range. Models call it for the layers their inputs feed directly
  // (Model::validate_inputs). The default accepts everything.
  virtual void validate_input(int /*index*/, const Tensor& /*value*/) const {}

  std::vector<Weight>& weights() { return weights_; }
  const std::vector<Weight>& weights() const { return weights_; }
  // Weights an optimizer updates: trainable weights of a trainable layer.
  std::vector<Weight*> trainable_weights();
  std::vector<Weight*> non_trainable_weights();
  int64_t count_params(bool trainable) const;
  virtual std::vector<LayerPtr> sublayers() const { return {}; }

  // Builds if needed (checking the input count) and calls.
  std::vector<Value> apply(const std::vector<Value>& inputs, CallContext& ctx);
  // Functional API: records a node and returns symbolic outputs.
  KTensor operator()(const KTensor& x, CallOptions opt = {});
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
