// quantize_model: the QAT rewrite of a layer DAG (include/lowbit/quant/quantize_model.h states
// the placement rules; docs/quantization.md explains them).
//
// The float model is first flattened into a list of layer calls in topological order (nested
// models inlined), each with the references of its inputs. A second pass walks that list once
// and emits the new model through the functional API: fused patterns are matched at their
// first layer and consume their later parts, FakeQuant layers are inserted at pattern ends and
// where rules 4-5 ask, and every new layer gets a copy of its float weights.
#include "lowbit/quant/quantize_model.h"

#include <algorithm>
#include <functional>
#include <set>

#include "lowbit/nn/layers.h"
#include "lowbit/quant/recurrent.h"

namespace lowbit::quant {

namespace {

// ---- The flat layer graph --------------------------------------------------------------------

struct Ref {
  int node = -1;
  int index = 0;
  auto operator<=>(const Ref&) const = default;
};

struct FlatNode {
  nn::LayerPtr layer;  // the float model's layer (an InputLayer for model inputs)
  std::vector<Ref> in;
  std::vector<ValueType> outs;
  std::optional<bool> training;
  bool is_input = false;
  std::vector<Ref> masks;  // explicit input masks of the call (CallOptions::masks); node -1: none
};

class Flattener {
 public:
  std::vector<FlatNode> nodes;

  // Appends the calls of `m` with its inputs bound to `inputs`; returns its outputs.
  std::vector<Ref> expand(const nn::Model& m, const std::vector<Ref>& inputs,
                          std::optional<bool> training) {
    std::map<const nn::LayerNode*, std::vector<Ref>> outs;
    for (size_t i = 0; i < m.inputs().size(); ++i) outs[m.inputs()[i].node.get()] = {inputs[i]};
    std::function<void(const std::shared_ptr<nn::LayerNode>&)> visit =
        [&](const std::shared_ptr<nn::LayerNode>& n) {
          if (outs.count(n.get())) return;
          if (std::dynamic_pointer_cast<nn::InputLayer>(n->layer))
            LOWBIT_THROW(ValueError, "quantize_model: ", m.name(), ": input '", n->layer->name(),
                         "' is not among the model's inputs");
          for (const nn::KTensor& k : n->inputs) visit(k.node);
          std::vector<Ref> in;
          for (const nn::KTensor& k : n->inputs) in.push_back(outs.at(k.node.get()).at(k.index));
          const std::optional<bool> mode = n->training ? n->training : training;
          if (auto sub = std::dynamic_pointer_cast<nn::Model>(n->layer)) {
            outs[n.get()] = expand(*sub, in, mode);  // nested model: inline its calls
            return;
          }
          FlatNode f{n->layer, in, n->outputs, mode, false, {}};
          for (const nn::KTensor& k : n->masks) {
            if (k.node) visit(k.node);
            f.masks.push_back(k.node ? outs.at(k.node.get()).at(k.index) : Ref{});
          }
          nodes.push_back(std::move(f));
          std::vector<Ref> r;
          for (size_t i = 0; i < n->outputs.size(); ++i)
            r.push_back({static_cast<int>(nodes.size()) - 1, static_cast<int>(i)});
          outs[n.get()] = r;
        };
    std::vector<Ref> result;
    for (const nn::KTensor& k : m.outputs()) {
      visit(k.node);
      result.push_back(outs.at(k.node.get()).at(k.index));
    }
    return result;
  }
};

// ---- Layer classification ----------------------------------------------------------------------

std::string cls(const FlatNode& n) { return n.layer->class_name(); }

std::string own_activation(const nn::Layer& l) {
  if (l.class_name() == "Activation") return "linear";  // its function is the layer itself
  Json c = l.get_config();
  return c.contains("activation") && c.at("activation").is_string()
             ? c.at("activation").get<std::string>()
             : std::string("linear");
}

// Functions whose integer outputs have fixed parameters: quantize before them, not after.
bool quantized_before(const std::string& activation) {
  return activation == "softmax" || activation == "log_softmax" || activation == "sigmoid" ||
         activation == "hard_sigmoid" || activation == "tanh";
}

// The fixed output grid of the integer form of sigmoid, tanh and softmax (TFLite's LOGISTIC,
// TANH, SOFTMAX; semantics 3.6), as a tf FakeQuant range that never moves: 8-bit codes
// [0, 255] of step 1/256 from 0 (int8 zero point -128), or of step 1/128 from -1 (tanh: int8
// zero point 0). Other functions: none.
std::optional<QuantizerConfig> fixed_output_quantizer(const std::string& activation) {
  QuantizerConfig c;
  c.scheme = "tf";
  c.bits = 8;
  c.range = "fixed";
  if (activation == "sigmoid" || activation == "softmax") {
    c.init_min = 0.0;
    c.init_max = 255.0 / 256.0;
    return c;
  }
  if (activation == "tanh") {
    c.init_min = -1.0;
    c.init_max = 127.0 / 128.0;
    return c;
  }
  return std::nullopt;
}

bool conv_like(const std::string& c) {
  return c == "Dense" || c == "Conv1D" || c == "Conv2D" || c == "DepthwiseConv2D" ||
         c == "SeparableConv2D";
}
bool foldable(const std::string& c) {
  return c == "Dense" || c == "Conv1D" || c == "Conv2D" || c == "DepthwiseConv2D";
}

// ReLU (slope 0, threshold 0, max_value none or 6) or Activation relu|relu6|linear.
bool fusable_activation(const nn::Layer& l) {
  Json c = l.get_config();
  if (l.class_name() == "Activation") {
    const std::string a = c.value("activation", "");
    return a == "relu" || a == "relu6" || a == "linear";
  }
  if (l.class_name() != "ReLU") return false;
  const bool capped = c.contains("max_value") && !c.at("max_value").is_null();
  return c.value("negative_slope", 0.0) == 0.0 && c.value("threshold", 0.0) == 0.0 &&
         (!capped || c.at("max_value").get<double>() == 6.0);
}

bool pass_through(const std::string& c) {
  static const char* const kNames[] = {"MaxPooling1D",       "MaxPooling2D", "GlobalMaxPooling1D",
                                       "GlobalMaxPooling2D", "Flatten",      "Reshape",
                                       "ZeroPadding2D",      "Dropout"};
  return std::any_of(std::begin(kNames), std::end(kNames), [&](const char* n) { return c == n; });
}

bool bn_on_last_axis(const FlatNode& n) {
  const int axis = n.layer->get_config().value("axis", -1);
  return axis == -1 || (!n.outs.empty() && axis == n.outs[0].shape.rank() - 1);
}

// ---- Configs per quantizer ----------------------------------------------------------------------

const char* const kActivationSchemes[] = {"tf", "torch", "lsq", "pact", "none"};

QuantizerConfig with_scheme(QuantizerConfig c, const std::string& scheme) {
  if (c.scheme == scheme) return c;
  c.scheme = scheme;
  // Keep the range mode when the new scheme has it; otherwise its closest counterpart.
  if (scheme == "torch" && c.range != "last_value" && c.range != "moving_average")
    c.range = c.range == "all_values" ? "minmax" : "moving_average";
  if (scheme == "tf" && c.range == "minmax") c.range = "all_values";
  return c;
}

// ---- The rewrite ------------------------------------------------------------------------------

class Rewriter {
 public:
  Rewriter(const nn::Model& model, const QuantizeConfig& cfg) : model_(model), cfg_(cfg) {}

  nn::ModelPtr run() {
    std::vector<Ref> in_refs;
    for (const nn::KTensor& k : model_.inputs()) {
      FlatNode f{k.node->layer, {}, k.node->outputs, std::nullopt, true, {}};
      flat_.nodes.push_back(std::move(f));
      in_refs.push_back({static_cast<int>(flat_.nodes.size()) - 1, 0});
    }
    const std::vector<Ref> out_refs = flat_.expand(model_, in_refs, std::nullopt);
    nodes_ = &flat_.nodes;
    index_graph(out_refs);
    check_overrides();

    std::vector<nn::KTensor> inputs;
    done_.assign(nodes_->size(), false);
    for (size_t i = 0; i < nodes_->size(); ++i) {
      if (done_[i]) continue;
      const FlatNode& n = (*nodes_)[i];
      if (n.is_input)
        inputs.push_back(emit_input(static_cast<int>(i)));
      else
        emit(static_cast<int>(i));
    }
    std::vector<nn::KTensor> outputs;
    for (const Ref& r : out_refs) outputs.push_back(env_.at(r).t);
    return nn::Model::create(inputs, outputs, model_.name());
  }

 private:
  struct Tensorish {
    nn::KTensor t;  // what consumers read
    bool quantized = false;
    nn::KTensor raw;  // before an input quantizer (Embedding ids read this)
  };

  const FlatNode& node(int i) const { return (*nodes_)[i]; }

  void index_graph(const std::vector<Ref>& outs) {
    for (const Ref& r : outs) model_outputs_.insert(r);
    std::map<std::string, const nn::Layer*> names;
    for (size_t i = 0; i < nodes_->size(); ++i) {
      const FlatNode& n = node(static_cast<int>(i));
      for (size_t k = 0; k < n.in.size(); ++k) consumers_[n.in[k]].push_back(static_cast<int>(i));
      const std::string c = cls(n);
      if (c == "FakeQuant" || c == "QuantizeWrapper" || c == "FoldedConvBatchNorm" ||
          c == "QuantizedLSTM" || c == "QuantizedGRU")
        LOWBIT_THROW(ValueError, "quantize_model: ", model_.name(),
                     " is already quantized (layer '", n.layer->name(), "' is a ", c,
                     "); quantize its float original");
      calls_[n.layer.get()]++;
      auto [it, fresh] = names.emplace(n.layer->name(), n.layer.get());
      if (!fresh && it->second != n.layer.get())
        LOWBIT_THROW(UnsupportedError, "quantize_model: two different layers are named '",
                     n.layer->name(), "' (after flattening nested models); rename one");
      used_names_.insert(n.layer->name());
    }
    // The first and the last layer with quantizable weights (QuantizeConfig::
    // first_last_weight_bits), in the flattened (topological) order, skipped layers excluded.
    for (size_t i = 0; i < nodes_->size(); ++i) {
      const FlatNode& n = node(static_cast<int>(i));
      if (n.is_input || skipped(static_cast<int>(i)) || quantizable_weights(*n.layer).empty())
        continue;
      if (!first_weighted_) first_weighted_ = n.layer.get();
      last_weighted_ = n.layer.get();
    }
  }

  void check_overrides() const {
    for (const auto& [name, o] : cfg_.overrides) {
      if (used_names_.count(name)) continue;
      std::string all;
      for (const auto& n : used_names_) all += (all.empty() ? "" : ", ") + n;
      LOWBIT_THROW(ValueError, "quantize_model: override for '", name,
                   "' names no layer of the model; layers: ", all);
    }
  }

  const LayerOverride* override_of(const std::string& name) const {
    auto it = cfg_.overrides.find(name);
    return it == cfg_.overrides.end() ? nullptr : &it->second;
  }
  bool skipped(int i) const {
    const LayerOverride* o = override_of(node(i).layer->name());
    return o && o->skip;
  }

  QuantizerConfig weight_config(const nn::Layer& part) const {
    auto it = origin_.find(&part);  // a part of a split layer: the float layer's settings
    const nn::Layer& l = it == origin_.end() ? part : *it->second;
    QuantizerConfig c = cfg_.weights;
    if (cfg_.first_last_weight_bits && (&l == first_weighted_ || &l == last_weighted_))
      c.bits = *cfg_.first_last_weight_bits;
    // An Embedding's rows are its output activations: one grid for the whole table (per
    // tensor), so the gathered rows share one (scale, zero point), as an integer gather needs.
    // Only an explicit override makes it per channel (per output feature).
    if (l.class_name() == "Embedding") c.per_channel = false;
    if (const LayerOverride* o = override_of(l.name())) {
      if (o->scheme && *o->scheme != "pact") c = with_scheme(c, *o->scheme);
      if (o->weight_bits) c.bits = *o->weight_bits;
      if (o->per_channel) c.per_channel = *o->per_channel;
    }
    return c;
  }
  // The quantizer at the output of a pattern from node `head` to node `end`.
  QuantizerConfig activation_config(int end, int head) const {
    // Masking reads a model input unquantized (see emit_input): its output is that input's
    // quantized form, so it takes the input quantizer.
    QuantizerConfig c = cls(node(end)) == "Masking" && node(node(end).in.at(0).node).is_input
                            ? cfg_.inputs
                            : cfg_.activations;
    const LayerOverride* o = override_of(node(end).layer->name());
    if (!o) o = override_of(node(head).layer->name());
    if (o) {
      const bool fits =
          o->scheme && std::any_of(std::begin(kActivationSchemes), std::end(kActivationSchemes),
                                   [&](const char* s) { return *o->scheme == s; });
      if (fits) c = with_scheme(c, *o->scheme);
      if (o->activation_bits) c.bits = *o->activation_bits;
    }
    return c;
  }

  // The only consumer of output 0 of node i, if it has exactly one, takes one input and i's
  // output is not a model output; else -1.
  int sole_consumer(int i) const {
    const Ref r{i, 0};
    if (model_outputs_.count(r)) return -1;
    auto it = consumers_.find(r);
    if (it == consumers_.end() || it->second.size() != 1) return -1;
    const int c = it->second[0];
    return node(c).in.size() == 1 ? c : -1;
  }

  std::string unique_name(const std::string& base) {
    std::string name = base;
    for (int k = 1; used_names_.count(name); ++k) name = base + "_" + std::to_string(k);
    used_names_.insert(name);
    return name;
  }

  // A fresh copy of a float layer (same config and name; `linear` drops its own activation).
  nn::LayerPtr clone(const nn::Layer& l, bool linear = false) {
    auto key = std::make_pair(&l, linear);
    if (auto it = clones_.find(key); it != clones_.end()) return it->second;
    Json j = nn::layer_to_config(l);
    if (linear) j["config"]["activation"] = "linear";
    nn::LayerPtr c;
    try {
      c = nn::layer_from_config(j);
    } catch (const ValueError& e) {
      LOWBIT_THROW(UnsupportedError, "quantize_model: cannot copy layer '", l.name(), "' (",
                   l.class_name(), "): ", e.what(),
                   " (register its class with nn::register_layer so it can be rebuilt)");
    }
    clones_[key] = c;
    pending_copies_.emplace_back(&l, c.get());
    return c;
  }

  // Copies float weights into the clones built since the last call (a clone is built by its
  // first functional call), then lets wrappers start their quantizer state from them.
  void copy_pending_weights() {
    for (auto& [from, to] : pending_copies_) {
      const auto& fw = from->weights();
      auto& tw = to->weights();
      if (fw.size() != tw.size())
        LOWBIT_THROW(ValueError, "quantize_model: the copy of '", from->name(), "' has ", tw.size(),
                     " weights but the original has ", fw.size());
      for (size_t k = 0; k < fw.size(); ++k) {
        if (fw[k].name != tw[k].name || fw[k].value.shape() != tw[k].value.shape())
          LOWBIT_THROW(ValueError, "quantize_model: weight ", k, " of '", from->name(), "' is '",
                       fw[k].name, "' ", fw[k].value.shape().str(), " but the copy has '",
                       tw[k].name, "' ", tw[k].value.shape().str());
        tw[k].value.copy_from(fw[k].value);
      }
    }
    pending_copies_.clear();
    for (auto* w : pending_wrappers_) w->init_from_weights();
    pending_wrappers_.clear();
    for (auto* f : pending_folds_) f->init_from_weights();
    pending_folds_.clear();
    for (auto* r : pending_recurrent_) r->init_from_weights();
    pending_recurrent_.clear();
  }

  std::vector<nn::KTensor> call(const nn::LayerPtr& l, const std::vector<nn::KTensor>& in,
                                std::optional<bool> training, std::vector<nn::KTensor> masks = {}) {
    std::vector<nn::KTensor> out = (*l)(in, nn::CallOptions{training, std::move(masks)});
    copy_pending_weights();
    return out;
  }
  nn::KTensor call1(const nn::LayerPtr& l, const nn::KTensor& in, std::optional<bool> training) {
    return call(l, {in}, training).at(0);
  }

  // One FakeQuant per tensor (shared by every consumer that needs it).
  nn::KTensor quantize(const Ref& r, const nn::KTensor& t, const QuantizerConfig& qc,
                       const std::string& producer) {
    if (auto it = quantized_.find(r); it != quantized_.end()) return it->second;
    auto fq = FakeQuant(qc, cfg_.quant_delay, unique_name(producer + "_quant"));
    nn::KTensor y = call1(fq, t, std::nullopt);
    quantized_[r] = y;
    return y;
  }
  // Input r of a merge or a pre-quantized activation: quantized if not already.
  nn::KTensor quantized_input(const Ref& r, int consumer) {
    const Tensorish& v = env_.at(r);
    if (v.quantized || v.t.dtype() != DType::kF32) return v.t;
    std::string producer = node(r.node).layer->name();
    if (node(r.node).outs.size() > 1) producer += "_" + std::to_string(r.index);
    nn::KTensor q = quantize(r, v.t, activation_config(r.node, r.node), producer);
    env_[r] = {q, true, v.raw.node ? v.raw : v.t};
    (void)consumer;
    return q;
  }

  // Layers that read a tensor before its quantizer: Embedding (integer ids), Masking (the mask
  // must come from the values the user passed; quantizing first could turn a value near
  // mask_value into it; its output is quantized instead) and LSTM/GRU (their quantized layer
  // quantizes x itself: reading the FakeQuant's output would quantize twice). A FakeQuant that
  // only such layers read is not part of the result.
  bool reads_raw(int i) const {
    const std::string c = cls(node(i));
    return c == "Embedding" || c == "Masking" || c == "LSTM" || c == "GRU" ||
           quantized_bidirectional(i);
  }
  // A Bidirectional around an LSTM or GRU (both directions): QuantizedBidirectional.
  bool quantized_bidirectional(int i) const {
    if (cls(node(i)) != "Bidirectional") return false;
    const Json c = node(i).layer->get_config();
    for (const char* k : {"layer", "backward_layer"}) {
      if (!c.contains(k) || !c.at(k).is_object()) return false;
      const std::string inner = c.at(k).value("class_name", "");
      if (inner != "LSTM" && inner != "GRU") return false;
    }
    return true;
  }

  // The explicit masks the float call was given (CallOptions::masks), as tensors of the result.
  std::vector<nn::KTensor> masks_of(int i) const {
    std::vector<nn::KTensor> m;
    for (const Ref& r : node(i).masks) m.push_back(r.node >= 0 ? env_.at(r).t : nn::KTensor{});
    return m;
  }

  std::vector<nn::KTensor> inputs_of(int i) const {
    std::vector<nn::KTensor> in;
    const bool ids = reads_raw(i);
    for (const Ref& r : node(i).in) {
      const Tensorish& v = env_.at(r);
      in.push_back(ids && v.raw.node ? v.raw : v.t);
    }
    return in;
  }

  nn::KTensor emit_input(int i) {
    const FlatNode& n = node(i);
    auto il = std::dynamic_pointer_cast<nn::InputLayer>(n.layer);
    const Shape& bs = il->batch_shape();
    std::vector<int64_t> dims(bs.dims().begin() + 1, bs.dims().end());
    nn::KTensor k = nn::Input(Shape(dims), il->dtype(), il->name());
    env_[{i, 0}] = {k, false, k};
    bool all_ids = true;
    if (auto it = consumers_.find({i, 0}); it != consumers_.end())
      for (int c : it->second) all_ids = all_ids && reads_raw(c);
    if (il->dtype() == DType::kF32 && !skipped(i) && !all_ids) {
      QuantizerConfig qc = cfg_.inputs;
      if (const LayerOverride* o = override_of(il->name()))
        if (o->activation_bits) qc.bits = *o->activation_bits;
      env_[{i, 0}] = {quantize({i, 0}, k, qc, il->name()), true, k};
    }
    return k;
  }

  nn::LayerPtr wrapper(const nn::Layer& l, bool linear) {
    auto key = std::make_pair(&l, linear);
    if (auto it = wrappers_.find(key); it != wrappers_.end()) return it->second;
    std::map<std::string, QuantizerConfig> q;
    for (const std::string& w : quantizable_weights(l)) q[w] = weight_config(l);
    auto w =
        std::make_shared<QuantizeWrapperLayer>(clone(l, linear), q, cfg_.quant_delay, l.name());
    w->set_quantize_bias(cfg_.quantize_bias);
    wrappers_[key] = w;
    pending_wrappers_.push_back(w.get());
    return w;
  }

  // Ends a pattern: FakeQuant on the output of node `end` (pattern from `head`).
  void finish(int end, int head, const nn::KTensor& t) {
    if (t.dtype() != DType::kF32) {
      env_[{end, 0}] = {t, false, {}};
      return;
    }
    nn::KTensor q = quantize({end, 0}, t, activation_config(end, head), node(end).layer->name());
    env_[{end, 0}] = {q, true, t};
  }

  // The optional activation after node `end`: returns its node or -1.
  int fused_activation_after(int end) const {
    const int a = sole_consumer(end);
    return a >= 0 && !skipped(a) && fusable_activation(*node(a).layer) ? a : -1;
  }

  void emit(int i) {
    const FlatNode& n = node(i);
    const std::string c = cls(n);
    if (skipped(i)) {
      auto out = call(clone(*n.layer), inputs_of(i), n.training, masks_of(i));
      for (size_t k = 0; k < out.size(); ++k) env_[{i, static_cast<int>(k)}] = {out[k], false, {}};
      return;
    }
    if (conv_like(c)) return emit_conv_pattern(i);
    if (c == "Embedding") {
      nn::KTensor y = call(wrapper(*n.layer, false), inputs_of(i), n.training).at(0);
      env_[{i, 0}] = {y, true, {}};  // rows of the quantized table are grid values
      return;
    }
    if (c == "LSTM" || c == "GRU") return emit_recurrent(i);
    if (quantized_bidirectional(i)) return emit_bidirectional(i);
    if (!quantizable_weights(*n.layer).empty()) {  // SimpleRNN: wrapper, outputs below
      return quantize_outputs(
          i, call(wrapper(*n.layer, false), inputs_of(i), n.training, masks_of(i)));
    }
    if (c == "BatchNormalization" || c == "Add" || c == "Multiply") {
      std::vector<nn::KTensor> in;
      if (c == "BatchNormalization")
        in = inputs_of(i);
      else
        for (const Ref& r : n.in) in.push_back(quantized_input(r, i));
      nn::KTensor y = call(clone(*n.layer), in, n.training, masks_of(i)).at(0);
      int end = i;
      if (const int a = fused_activation_after(i); a >= 0) {
        y = call1(clone(*node(a).layer), y, node(a).training);
        done_[a] = true;
        end = a;
      }
      return finish(end, i, y);
    }
    if (c == "Activation" && quantized_before(n.layer->get_config().value("activation", ""))) {
      nn::KTensor y = call1(clone(*n.layer), quantized_input(n.in.at(0), i), n.training);
      fixed_output(i, n.layer->get_config().value("activation", ""), y, n.layer->name());
      return;
    }
    std::vector<nn::KTensor> out = call(clone(*n.layer), inputs_of(i), n.training, masks_of(i));
    if (pass_through(c)) {
      const bool q =
          std::all_of(n.in.begin(), n.in.end(), [&](const Ref& r) { return env_.at(r).quantized; });
      for (size_t k = 0; k < out.size(); ++k) env_[{i, static_cast<int>(k)}] = {out[k], q, {}};
      return;
    }
    // Concatenate, standalone activations, and any other layer: quantize each f32 output.
    quantize_outputs(i, out);
  }

  void quantize_outputs(int i, const std::vector<nn::KTensor>& out) {
    for (size_t k = 0; k < out.size(); ++k) quantize_output(i, out, k);
  }
  // Output k of node i (of `out`): a FakeQuant on it when f32.
  void quantize_output(int i, const std::vector<nn::KTensor>& out, size_t k) {
    const Ref r{i, static_cast<int>(k)};
    if (out[k].dtype() != DType::kF32) {
      env_[r] = {out[k], false, {}};
      return;
    }
    std::string producer = node(i).layer->name();
    if (out.size() > 1) producer += "_" + std::to_string(k);
    env_[r] = {quantize(r, out[k], activation_config(i, i), producer), true, out[k]};
  }

  // LSTM/GRU: QuantizedLSTM/QuantizedGRU (lowbit/quant/recurrent.h), which quantizes x, the
  // weights per gate block, the gates, the cell and h itself: its output and h state are int8
  // grid values (no FakeQuant after), the LSTM cell state is on its int16 grid (not int8: a
  // later merge quantizes it).
  // Bidirectional(LSTM | GRU): QuantizedBidirectional, two quantized directions; unmerged
  // sequence outputs and h states are on int8 grids, a merged output (concat of two grids, as
  // the Concatenate rule, or their sum/mean/product) gets one FakeQuant after, LSTM cell states
  // are int16 (unquantized for what follows).
  // The settings of a QuantizedLSTM/GRU for node i: x and h are TF-style int8 EMA ranges (the
  // integer LSTM's), the weight bits those of the weight quantizer when it has a bit width.
  std::pair<QuantizerConfig, int> recurrent_settings(int i) const {
    QuantizerConfig a = activation_config(i, i);
    if (a.scheme != "tf") {
      const int bits = a.bits;
      a = default_activation_quantizer();
      a.bits = bits;
    }
    if (a.range == "moving_average_debiased") a.range = "moving_average";
    const QuantizerConfig w = weight_config(*node(i).layer);
    const bool graded = w.scheme == "tf" || w.scheme == "torch" || w.scheme == "lsq";
    return {a, graded ? w.bits : 8};
  }

  void emit_bidirectional(int i) {
    const FlatNode& n = node(i);
    nn::LayerPtr& q = recurrent_[n.layer.get()];
    const Json config = n.layer->get_config();
    std::shared_ptr<QuantizedBidirectionalLayer> b;
    if (!q) {
      const auto [a, bits] = recurrent_settings(i);
      b = std::make_shared<QuantizedBidirectionalLayer>(config, a, bits, n.layer->name(),
                                                        cfg_.quant_delay);
      q = b;
    }
    const std::vector<nn::KTensor> out = call(q, inputs_of(i), n.training, masks_of(i));
    if (b) b->copy_float_weights(*n.layer);
    const bool merged = config.contains("merge_mode") && !config.at("merge_mode").is_null();
    const size_t seq = merged ? 1 : 2;
    const bool lstm = config.at("layer").value("class_name", "") == "LSTM";
    for (size_t k = 0; k < out.size(); ++k) {
      // States after the sequence output(s): LSTM (h, c) per direction, GRU (h).
      const bool cell = lstm && k >= seq && (k - seq) % 2 == 1;
      if (cell || out[k].dtype() != DType::kF32)
        env_[{i, static_cast<int>(k)}] = {out[k], false, {}};
      else if (k >= seq || !merged)  // h states, unmerged sequences: int8 grids
        env_[{i, static_cast<int>(k)}] = {out[k], true, {}};
      else  // merged: two grids (concat) or their sum/mean/product, quantized once more
        quantize_output(i, out, k);
    }
  }

  void emit_recurrent(int i) {
    const FlatNode& n = node(i);
    nn::LayerPtr& q = recurrent_[n.layer.get()];
    if (!q) {
      const auto [a, bits] = recurrent_settings(i);
      auto r = std::make_shared<QuantizedRecurrentLayer>(clone(*n.layer), a, bits, n.layer->name(),
                                                         cfg_.quant_delay);
      pending_recurrent_.push_back(r.get());
      q = r;
    }
    const std::vector<nn::KTensor> out = call(q, inputs_of(i), n.training, masks_of(i));
    for (size_t k = 0; k < out.size(); ++k)
      env_[{i, static_cast<int>(k)}] = {out[k], !(cls(n) == "LSTM" && k == 2), {}};
  }

  std::vector<int64_t> config_ints(const Json& c, const char* key) const {
    std::vector<int64_t> v;
    if (c.at(key).is_array())
      for (const auto& e : c.at(key)) v.push_back(e.get<int64_t>());
    else
      v.push_back(c.at(key).get<int64_t>());
    return v;
  }

  // A SeparableConv2D as its two parts (TF-MOT's SeparableConv transform): a DepthwiseConv2D
  // "<name>_depthwise" (the depthwise kernel, strides, padding, dilation; no bias, linear) and a
  // 1x1 Conv2D "<name>" (the pointwise kernel, the bias, the activation). Float layers, built on
  // the separable's input shape and holding its weights; made once per separable layer.
  std::pair<nn::LayerPtr, nn::LayerPtr> separable_parts(const nn::Layer& sep, const Shape& x) {
    auto& parts = separable_[&sep];
    if (parts.first) return parts;
    const Json c = sep.get_config();
    auto dw = nn::DepthwiseConv2D(nn::Ints(config_ints(c, "kernel_size")),
                                  {.strides = nn::Ints(config_ints(c, "strides")),
                                   .padding = c.value("padding", "valid"),
                                   .depth_multiplier = c.value("depth_multiplier", int64_t{1}),
                                   .dilation_rate = nn::Ints(config_ints(c, "dilation_rate")),
                                   .use_bias = false,
                                   .name = unique_name(sep.name() + "_depthwise")});
    auto pw = nn::Conv2D(c.at("filters").get<int64_t>(), 1,
                         {.activation = c.value("activation", "linear"),
                          .use_bias = c.value("use_bias", true),
                          .name = sep.name()});
    std::vector<int64_t> dims(x.dims().begin() + 1, x.dims().end());
    (*pw)((*dw)(nn::Input(Shape(dims))));  // builds both
    auto weight = [&](const char* name) -> const Tensor& {
      for (const nn::Weight& w : sep.weights())
        if (w.name == name) return w.value;
      LOWBIT_THROW(ValueError, "quantize_model: SeparableConv2D '", sep.name(), "' has no weight '",
                   name, "'");
    };
    for (nn::Weight& w : dw->weights())
      if (w.name == "depthwise_kernel") w.value.copy_from(weight("depthwise_kernel"));
    for (nn::Weight& w : pw->weights()) {
      if (w.name == "kernel") w.value.copy_from(weight("pointwise_kernel"));
      if (w.name == "bias") w.value.copy_from(weight("bias"));
    }
    origin_[dw.get()] = &sep;
    origin_[pw.get()] = &sep;
    parts = {dw, pw};
    return parts;
  }

  void emit_conv_pattern(int head) {
    const FlatNode& n = node(head);
    // The layer whose kernel the pattern's output stage reads: the layer itself, or the
    // pointwise part of a SeparableConv2D, whose depthwise part is quantized first (its output
    // is an int8 tensor of the integer model: DEPTHWISE_CONV_2D then CONV_2D).
    nn::LayerPtr conv = n.layer;
    std::vector<nn::KTensor> conv_in = inputs_of(head), conv_masks = masks_of(head);
    if (cls(n) == "SeparableConv2D") {
      const auto [dw, pw] = separable_parts(*n.layer, conv_in.at(0).shape());
      nn::KTensor d = call(wrapper(*dw, false), conv_in, n.training, conv_masks).at(0);
      auto fq = FakeQuant(activation_config(head, head), cfg_.quant_delay,
                          unique_name(dw->name() + "_quant"));
      conv_in = {call1(fq, d, std::nullopt)};
      conv_masks = {};
      conv = pw;
    }
    const std::string act = own_activation(*conv);
    int bn = -1;
    if (act == "linear") {
      const int b = sole_consumer(head);
      if (b >= 0 && !skipped(b) && cls(node(b)) == "BatchNormalization" && bn_on_last_axis(node(b)))
        bn = b;
    }
    int end = bn >= 0 ? bn : head;
    const int a = act == "linear" ? fused_activation_after(end) : -1;
    const bool fold = bn >= 0 && cfg_.fold_batch_norm && foldable(conv->class_name()) &&
                      calls_.at(n.layer.get()) == 1 && calls_.at(node(bn).layer.get()) == 1;
    const bool split = quantized_before(act);  // softmax & co: FakeQuant before the function
    nn::KTensor y;
    if (fold) {
      auto f = std::make_shared<FoldedConvBatchNormLayer>(clone(*conv), clone(*node(bn).layer),
                                                          weight_config(*conv), cfg_.quant_delay,
                                                          cfg_.freeze_bn_delay, conv->name());
      f->set_quantize_bias(cfg_.quantize_bias);
      pending_folds_.push_back(f.get());
      y = call(f, conv_in, n.training, conv_masks).at(0);
    } else {
      y = call(wrapper(*conv, split), conv_in, n.training, conv_masks).at(0);
      if (bn >= 0) y = call1(clone(*node(bn).layer), y, node(bn).training);
    }
    if (bn >= 0) done_[bn] = true;
    if (a >= 0) {
      y = call1(clone(*node(a).layer), y, node(a).training);
      done_[a] = true;
      end = a;
    }
    if (!split) return finish(end, head, y);
    // Quantize the pre-activation output, then apply the activation as its own layer.
    y = quantize({head, 0}, y, activation_config(head, head), n.layer->name());
    auto key = n.layer.get();
    if (!split_activations_.count(key))
      split_activations_[key] =
          nn::Activation(act, {.name = unique_name(n.layer->name() + "_" + act)});
    y = call1(split_activations_[key], y, n.training);
    fixed_output(head, act, y, split_activations_[key]->name());
  }

  // The output of sigmoid, tanh or softmax (node i's output 0): a FakeQuant on the function's
  // fixed grid (fixed_output_quantizer), so the QAT model computes the codes of the integer
  // op; other functions (log_softmax, hard_sigmoid), or activations quantized with scheme
  // "none", stay unquantized.
  void fixed_output(int i, const std::string& activation, const nn::KTensor& y,
                    const std::string& producer) {
    const std::optional<QuantizerConfig> fixed = fixed_output_quantizer(activation);
    if (!fixed || activation_config(i, i).scheme == "none") {
      env_[{i, 0}] = {y, false, {}};
      return;
    }
    auto fq = FakeQuant(*fixed, cfg_.quant_delay, unique_name(producer + "_quant"));
    env_[{i, 0}] = {call1(fq, y, std::nullopt), true, y};
  }

  const nn::Model& model_;
  const QuantizeConfig& cfg_;
  Flattener flat_;
  const std::vector<FlatNode>* nodes_ = nullptr;
  std::map<Ref, std::vector<int>> consumers_;
  std::set<Ref> model_outputs_;
  std::map<const nn::Layer*, int> calls_;
  std::set<std::string> used_names_;
  const nn::Layer* first_weighted_ = nullptr;
  const nn::Layer* last_weighted_ = nullptr;
  std::vector<bool> done_;
  std::map<Ref, Tensorish> env_;
  std::map<Ref, nn::KTensor> quantized_;
  std::map<std::pair<const nn::Layer*, bool>, nn::LayerPtr> clones_, wrappers_;
  std::map<const nn::Layer*, nn::LayerPtr> split_activations_;
  std::vector<std::pair<const nn::Layer*, nn::Layer*>> pending_copies_;
  std::vector<QuantizeWrapperLayer*> pending_wrappers_;
  std::vector<FoldedConvBatchNormLayer*> pending_folds_;
  std::map<const nn::Layer*, nn::LayerPtr> recurrent_;
  std::vector<QuantizedRecurrentLayer*> pending_recurrent_;
  std::map<const nn::Layer*, std::pair<nn::LayerPtr, nn::LayerPtr>> separable_;
  std::map<const nn::Layer*, const nn::Layer*> origin_;  // separable parts -> the float layer
};

}  // namespace

QuantizeConfig QuantizeConfig::preset(const std::string& name) {
  QuantizeConfig c;
  if (name == "w8a8") return c;
  if (name == "w4a8") {
    c.weights.bits = 4;
    return c;
  }
  if (name == "w2a8") {
    c.weights = {.scheme = "lsq", .bits = 2, .symmetric = true, .per_channel = true};
    c.first_last_weight_bits = 8;  // the LSQ paper's protocol
    return c;
  }
  if (name == "w4a4") {
    c.weights.bits = 4;
    c.activations.bits = 4;
    return c;
  }
  LOWBIT_THROW(ValueError, "QuantizeConfig::preset: expected one of w8a8, w4a8, w2a8, w4a4 but ",
               "found '", name, "'");
}

void validate(const QuantizeConfig& cfg) {
  validate(cfg.weights, QuantizerRole::kWeight, "QuantizeConfig.weights");
  validate(cfg.activations, QuantizerRole::kActivation, "QuantizeConfig.activations");
  validate(cfg.inputs, QuantizerRole::kActivation, "QuantizeConfig.inputs");
  if (cfg.first_last_weight_bits &&
      (*cfg.first_last_weight_bits < 2 || *cfg.first_last_weight_bits > 16))
    LOWBIT_THROW(ValueError, "QuantizeConfig.first_last_weight_bits: expected 2..16 but found ",
                 *cfg.first_last_weight_bits);
  if (cfg.quant_delay < 0)
    LOWBIT_THROW(ValueError, "QuantizeConfig.quant_delay: expected >= 0 but found ",
                 cfg.quant_delay);
  if (cfg.freeze_bn_delay < -1)
    LOWBIT_THROW(ValueError, "QuantizeConfig.freeze_bn_delay: expected -1 (never) or >= 0 but ",
                 "found ", cfg.freeze_bn_delay);
  for (const auto& [name, o] : cfg.overrides) {
    const std::string who = "QuantizeConfig.overrides[" + name + "]";
    for (auto bits : {o.weight_bits, o.activation_bits})
      if (bits && (*bits < 2 || *bits > 16))
        LOWBIT_THROW(ValueError, who, ": bits: expected 2..16 but found ", *bits);
    if (o.scheme) {
      QuantizerConfig probe = with_scheme(cfg.weights, *o.scheme);
      if (*o.scheme != "pact")
        validate(probe, QuantizerRole::kWeight, who);
      else
        validate(with_scheme(cfg.activations, "pact"), QuantizerRole::kActivation, who);
    }
  }
}

nn::ModelPtr quantize_model(const nn::Model& model, const QuantizeConfig& cfg) {
  validate(cfg);
  if (model.inputs().empty())
    LOWBIT_THROW(ValueError, "quantize_model: ", model.name(),
                 " has no inputs yet (start a Sequential with InputSpec or call build_for)");
  return Rewriter(model, cfg).run();
}

}  // namespace lowbit::quant
