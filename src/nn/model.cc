#include "lowbit/nn/model.h"

#include <algorithm>
#include <set>
#include <sstream>

#include "lowbit/ops.h"
#include "nn/model_internal.h"

namespace lowbit::nn {

// ---- Input ----
InputLayer::InputLayer(Shape shape, DType dtype, std::string name)
    : Layer("input_layer", std::move(name)), shape_(std::move(shape)), dtype_(dtype) {
  built_ = true;
}
Json InputLayer::get_config() const {
  Json j = Layer::get_config();
  std::vector<int64_t> dims(shape_.dims().begin() + 1, shape_.dims().end());
  j["shape"] = dims;
  j["dtype"] = dtype_name(dtype_);
  return j;
}

namespace {
Shape with_batch(const Shape& s) {
  std::vector<int64_t> d{kUnknown};
  d.insert(d.end(), s.dims().begin(), s.dims().end());
  return Shape(d);
}
}  // namespace

KTensor Input(const Shape& shape, DType dtype, const std::string& name) {
  for (int64_t d : shape.dims())
    if (d < 1 && d != kUnknown)
      LOWBIT_THROW(ShapeError, "Input: dims must be positive or kUnknown but found ", shape.str());
  auto layer = std::make_shared<InputLayer>(with_batch(shape), dtype, name);
  auto node = std::make_shared<LayerNode>();
  node->layer = layer;
  node->outputs.push_back({dtype, layer->batch_shape()});
  return {node, 0};
}

LayerPtr InputSpec(const Shape& shape, DType dtype, const std::string& name) {
  return Input(shape, dtype, name).node->layer;
}

// ---- Model ----
std::shared_ptr<Model> Model::create(std::vector<KTensor> inputs, std::vector<KTensor> outputs,
                                     const std::string& name) {
  return std::make_shared<Model>(std::move(inputs), std::move(outputs), name);
}

Model::Model(const std::string& default_name, const std::string& name)
    : Layer(default_name, name) {}

Model::Model(std::vector<KTensor> inputs, std::vector<KTensor> outputs, const std::string& name)
    : Layer("functional", name) {
  set_graph(std::move(inputs), std::move(outputs));
}
Model::~Model() = default;

void Model::set_graph(std::vector<KTensor> inputs, std::vector<KTensor> outputs) {
  if (inputs.empty() || outputs.empty())
    LOWBIT_THROW(ValueError, name_, ": a model needs at least one input and one output");
  for (const KTensor& k : inputs)
    if (!k.node || !std::dynamic_pointer_cast<InputLayer>(k.node->layer))
      LOWBIT_THROW(ValueError, name_, ": model inputs must come from nn::Input()");
  inputs_ = std::move(inputs);
  outputs_ = std::move(outputs);
  // Topological order by depth-first search from the outputs.
  nodes_.clear();
  std::set<LayerNode*> done, active;
  std::function<void(const std::shared_ptr<LayerNode>&)> visit =
      [&](const std::shared_ptr<LayerNode>& n) {
        if (done.count(n.get())) return;
        if (active.count(n.get())) LOWBIT_THROW(ValueError, name_, ": the layer graph has a cycle");
        active.insert(n.get());
        for (const KTensor& k : n->inputs) visit(k.node);
        for (const KTensor& k : n->masks)
          if (k.defined()) visit(k.node);
        active.erase(n.get());
        done.insert(n.get());
        nodes_.push_back(n);
      };
  for (const KTensor& k : outputs_) visit(k.node);
  for (const auto& n : nodes_)
    if (std::dynamic_pointer_cast<InputLayer>(n->layer) &&
        std::none_of(inputs_.begin(), inputs_.end(), [&](const KTensor& k) { return k.node == n; }))
      LOWBIT_THROW(ValueError, name_, ": output depends on input '", n->layer->name(),
                   "' that is not among the model's inputs");
  built_ = true;
  compiled_.clear();
}

std::vector<LayerPtr> Model::layers() const {
  std::vector<LayerPtr> out;
  std::set<Layer*> seen;
  for (const auto& n : nodes_)
    if (seen.insert(n->layer.get()).second) out.push_back(n->layer);
  return out;
}

LayerPtr Model::get_layer(const std::string& name) const {
  for (const auto& l : layers())
    if (l->name() == name) return l;
  LOWBIT_THROW(ValueError, name_, ": no layer named '", name, "'");
}

void Model::set_trainable(bool t) {
  trainable_ = t;
  for (const auto& l : layers()) l->set_trainable(t);
}

std::vector<Value> Model::call(const std::vector<Value>& inputs, CallContext& ctx) {
  if (inputs.size() != inputs_.size())
    LOWBIT_THROW(ValueError, name_, ": expected ", inputs_.size(), " inputs but found ",
                 inputs.size());
  std::map<std::pair<LayerNode*, int>, Value> env, masks;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Shape& want = inputs_[i].shape();
    const Shape& got = inputs[i].shape();
    bool ok = want.rank() == got.rank() && inputs[i].dtype() == inputs_[i].dtype();
    for (int d = 1; ok && d < want.rank(); ++d)
      ok = want[d] == kUnknown || got[d] == kUnknown || want[d] == got[d];
    if (!ok)
      LOWBIT_THROW(ShapeError, name_, ": input '", inputs_[i].node->layer->name(), "' expects ",
                   dtype_name(inputs_[i].dtype()), want.str(), " but found ",
                   dtype_name(inputs[i].dtype()), got.str());
    env[{inputs_[i].node.get(), 0}] = inputs[i];
    masks[{inputs_[i].node.get(), 0}] = ctx.input_mask(i);
  }
  auto lookup = [](const auto& m, const KTensor& k) {
    auto it = m.find({k.node.get(), k.index});
    return it == m.end() ? Value() : it->second;
  };
  for (const auto& n : nodes_) {
    if (std::dynamic_pointer_cast<InputLayer>(n->layer)) continue;
    std::vector<Value> in, in_masks;
    for (size_t i = 0; i < n->inputs.size(); ++i) {
      const KTensor& k = n->inputs[i];
      in.push_back(env.at({k.node.get(), k.index}));
      const bool explicit_mask = i < n->masks.size() && n->masks[i].defined();
      in_masks.push_back(explicit_mask ? env.at({n->masks[i].node.get(), n->masks[i].index})
                                       : lookup(masks, k));
    }
    bool saved = ctx.training();
    if (n->training) ctx.set_training(*n->training);
    std::vector<Value> out_masks;
    std::vector<Value> out = n->layer->apply(in, in_masks, ctx, out_masks);
    ctx.set_training(saved);
    for (size_t i = 0; i < out.size(); ++i) {
      env[{n.get(), static_cast<int>(i)}] = out[i];
      masks[{n.get(), static_cast<int>(i)}] = out_masks[i];
    }
  }
  std::vector<Value> result;
  last_output_masks_.clear();
  for (const KTensor& k : outputs_) {
    result.push_back(env.at({k.node.get(), k.index}));
    last_output_masks_.push_back(lookup(masks, k));
  }
  return result;
}

std::vector<Value> Model::compute_mask(const std::vector<Value>&, const std::vector<Value>& outputs,
                                       CallContext&) {
  std::vector<Value> m = std::move(last_output_masks_);
  last_output_masks_.clear();
  m.resize(outputs.size());
  return m;
}

Model::Trace Model::trace(Graph& g, CallContext& ctx) {
  Trace t;
  for (size_t i = 0; i < inputs_.size(); ++i)
    t.inputs.push_back(
        g.placeholder(inputs_[i].node->layer->name(), inputs_[i].dtype(), inputs_[i].shape()));
  t.outputs = apply(t.inputs, {}, ctx, t.output_masks);
  return t;
}

std::string Model::mode_signature(bool training) const {
  // Frozen flags change what a trace emits (frozen BatchNormalization runs in inference mode).
  std::string s = training ? "T:" : "I:";
  std::function<void(const Layer&)> walk = [&](const Layer& l) {
    s += l.trainable() ? '1' : '0';
    for (const auto& sub : l.sublayers()) walk(*sub);
  };
  walk(*this);
  return s;
}

const Layer* Model::uncalibrated_layer() const {
  std::function<const Layer*(const Layer&)> walk = [&](const Layer& l) -> const Layer* {
    if (l.awaiting_calibration()) return &l;
    for (const auto& sub : l.sublayers())
      if (const Layer* u = walk(*sub)) return u;
    return nullptr;
  };
  for (const auto& l : layers())
    if (const Layer* u = walk(*l)) return u;
  return nullptr;
}

void Model::require_calibrated(const std::string& who) const {
  if (allow_uncalibrated) return;
  if (const Layer* u = uncalibrated_layer())
    LOWBIT_THROW(ValueError, name_, ".", who, ": layer '", u->name(), "' (", u->class_name(),
                 ") has not seen any data yet: its quantization range is the initial one, so "
                 "the results would be meaningless. Calibrate first: model->calibrate(data) "
                 "(a few hundred samples run in training mode, ranges only) or fit().");
}

void Model::validate_input(int index, const Tensor& value) const {
  if (index < 0 || index >= static_cast<int>(inputs_.size())) return;
  const LayerNode* in = inputs_[index].node.get();
  for (const auto& n : nodes_)
    for (size_t k = 0; k < n->inputs.size(); ++k)
      if (n->inputs[k].node.get() == in) n->layer->validate_input(static_cast<int>(k), value);
}

void Model::validate_inputs(const std::vector<Tensor>& xs) const {
  for (size_t i = 0; i < xs.size() && i < inputs_.size(); ++i)
    if (xs[i].defined()) validate_input(static_cast<int>(i), xs[i]);
}

std::vector<Tensor> Model::predict_on_batch(const std::vector<Tensor>& xs, CallOptions opt) {
  bool training = opt.training.value_or(false);
  if (!training) require_calibrated("predict");
  std::string sig = mode_signature(training);
  auto it = compiled_.find(sig);
  if (it == compiled_.end()) {
    auto c = std::make_unique<CompiledCall>();
    CallContext ctx(c->graph, training, rng_state_);
    Trace t = trace(c->graph, ctx);
    c->inputs = t.inputs;
    c->outputs = t.outputs;
    c->executor = std::make_unique<Executor>(c->graph, c->outputs, ctx.updates());
    it = compiled_.emplace(sig, std::move(c)).first;
  }
  CompiledCall& c = *it->second;
  if (xs.size() != c.inputs.size())
    LOWBIT_THROW(ValueError, name_, ": expected ", c.inputs.size(), " input tensors but found ",
                 xs.size());
  std::vector<std::pair<Value, Tensor>> feeds;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Shape& want = c.inputs[i].shape();
    bool ok = xs[i].defined() && xs[i].rank() == want.rank();
    for (int d = 1; ok && d < want.rank(); ++d) ok = want[d] == kUnknown || want[d] == xs[i].dim(d);
    if (!ok)
      LOWBIT_THROW(ShapeError, name_, ": input ", i, " expects shape ", want.str(), " but found ",
                   xs[i].defined() ? xs[i].shape().str() : std::string("an undefined tensor"));
    if (xs[i].dtype() != c.inputs[i].dtype())
      LOWBIT_THROW(DTypeError, name_, ": input ", i, " expects dtype ",
                   dtype_name(c.inputs[i].dtype()), " but found ", dtype_name(xs[i].dtype()));
    feeds.emplace_back(c.inputs[i], xs[i]);
  }
  validate_inputs(xs);
  return c.executor->run(feeds);
}

Tensor Model::operator()(const Tensor& x, CallOptions opt) {
  auto outs = predict_on_batch({x}, opt);
  if (outs.size() != 1)
    LOWBIT_THROW(ValueError, name_, ": has ", outs.size(), " outputs; use predict_on_batch");
  return outs[0];
}

std::string Model::to_dot(bool training) {
  Graph g;
  CallContext ctx(g, training, rng_state_);
  Trace t = trace(g, ctx);
  return g.to_dot(t.outputs);
}

std::vector<std::pair<std::string, Weight*>> Model::named_weights() {
  std::vector<std::pair<std::string, Weight*>> out;
  std::set<const void*> seen;
  std::function<void(Layer&, const std::string&)> walk = [&](Layer& l, const std::string& prefix) {
    for (Weight& w : l.weights())
      if (seen.insert(w.value.raw()).second) out.emplace_back(prefix + l.name() + "/" + w.name, &w);
    for (const auto& sub : l.sublayers()) walk(*sub, prefix + l.name() + "/");
  };
  for (const auto& l : layers()) walk(*l, "");
  return out;
}

int64_t Model::count_params_total(bool trainable) const {
  int64_t n = 0;
  std::function<void(const Layer&)> walk = [&](const Layer& l) {
    n += l.count_params(trainable);
    for (const auto& sub : l.sublayers()) walk(*sub);
  };
  for (const auto& l : layers()) walk(*l);
  return n;
}

Json Model::get_config() const {
  // Nodes are referenced Keras-style as [layer name, node index (k-th call of that layer in this
  // model), output index], so shared layers called several times are unambiguous.
  std::map<const LayerNode*, std::pair<std::string, int>> ref;
  std::map<const Layer*, int> calls;
  for (const auto& n : nodes_) ref[n.get()] = {n->layer->name(), calls[n->layer.get()]++};
  auto ktensor_ref = [&](const KTensor& k) {
    const auto& [name, idx] = ref.at(k.node.get());
    return Json::array({name, idx, k.index});
  };
  Json layers_json = Json::array();
  std::map<const Layer*, bool> emitted;
  for (const auto& n : nodes_) {
    Json inbound = Json::array();
    for (const KTensor& k : n->inputs) inbound.push_back(ktensor_ref(k));
    Json lj = layer_to_config(*n->layer);
    lj["inbound"] = inbound;
    if (n->training) lj["training"] = *n->training;
    if (!n->masks.empty()) {
      // Explicit masks (CallOptions::masks): references like "inbound", null where none.
      Json masks = Json::array();
      for (const KTensor& k : n->masks) masks.push_back(k.defined() ? ktensor_ref(k) : Json());
      lj["masks"] = masks;
    }
    layers_json.push_back(lj);
  }
  Json in = Json::array(), out = Json::array();
  for (const KTensor& k : inputs_) in.push_back(ktensor_ref(k));
  for (const KTensor& k : outputs_) out.push_back(ktensor_ref(k));
  return {{"name", name_},
          {"trainable", trainable_},
          {"layers", layers_json},
          {"input_layers", in},
          {"output_layers", out}};
}

namespace {
std::string fmt_int(int64_t v) {
  const std::string digits = std::to_string(v);
  std::string s;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0 && digits[i - 1] != '-') s.push_back(',');
    s.push_back(digits[i]);
  }
  return s;
}
std::string shape_str(const Shape& s) {
  std::string o = "(";
  for (int i = 0; i < s.rank(); ++i) {
    if (i) o += ", ";
    o += s[i] == kUnknown ? "None" : std::to_string(s[i]);
  }
  if (s.rank() == 1) o += ",";
  return o + ")";
}
// Left-aligned in a column of width w, always followed by at least one space.
std::string pad(const std::string& s, size_t w) {
  return s.size() + 1 >= w ? s + " " : s + std::string(w - s.size(), ' ');
}
}  // namespace

std::string Model::summary(int width) const {
  std::ostringstream os;
  const size_t c1 = width * 42 / 100, c2 = width * 22 / 100, c3 = width * 12 / 100,
               c4 = width - c1 - c2 - c3;
  std::string rule(width, '-'), heavy(width, '=');
  os << "Model: \"" << name_ << "\"\n"
     << rule << "\n"
     << pad("Layer (type)", c1) << pad("Output Shape", c2) << pad("Param #", c3)
     << pad("Connected to", c4) << "\n"
     << heavy << "\n";
  bool first = true;
  for (const auto& n : nodes_) {
    if (!first) os << "\n";
    first = false;
    std::string conn;
    for (const KTensor& k : n->inputs) {
      if (!conn.empty()) conn += ", ";
      conn += k.node->layer->name() + "[" + std::to_string(k.index) + "]";
    }
    std::string shapes;
    for (const auto& t : n->outputs) {
      if (!shapes.empty()) shapes.push_back(' ');
      shapes.append(shape_str(t.shape));
    }
    // A layer's own weights and those of its sublayers (nested models, wrappers).
    std::function<int64_t(const Layer&)> count = [&](const Layer& l) {
      int64_t c = l.count_params(true) + l.count_params(false);
      for (const auto& sub : l.sublayers()) c += count(*sub);
      return c;
    };
    const int64_t params = count(*n->layer);
    std::string title = n->layer->name();
    title.append(" (").append(n->layer->class_name()).append(")");
    os << pad(title, c1) << pad(shapes, c2) << pad(fmt_int(params), c3) << conn << "\n";
    std::string note = n->layer->summary_note();
    if (!note.empty()) os << "    " << note << "\n";
  }
  int64_t tr = count_params_total(true), nt = count_params_total(false);
  os << heavy << "\n"
     << "Total params: " << fmt_int(tr + nt) << " (" << fmt_int((tr + nt) * 4) << " bytes)\n"
     << "Trainable params: " << fmt_int(tr) << "\n"
     << "Non-trainable params: " << fmt_int(nt) << "\n"
     << rule << "\n";
  return os.str();
}

// ---- Sequential ----
std::shared_ptr<Sequential> Sequential::create(std::vector<LayerPtr> layers,
                                               const std::string& name) {
  auto s = std::make_shared<Sequential>(name);
  for (auto& l : layers) s->add(std::move(l));
  return s;
}

Sequential::Sequential(const std::string& name) : Model("sequential", name) { built_ = false; }

void Sequential::add(LayerPtr layer) {
  if (!layer) LOWBIT_THROW(ValueError, name_, ": add() got a null layer");
  if (auto in = std::dynamic_pointer_cast<InputLayer>(layer)) {
    if (!pending_.empty() || !inputs_.empty())
      LOWBIT_THROW(ValueError, name_, ": an InputSpec must be the first layer");
    auto node = std::make_shared<LayerNode>();
    node->layer = in;
    node->outputs.push_back({in->dtype(), in->batch_shape()});
    KTensor k{node, 0};
    inputs_ = {k};
    outputs_ = {k};
    pending_.push_back(layer);
    return;
  }
  pending_.push_back(layer);
  if (!inputs_.empty()) {
    KTensor y = (*layer)(outputs_.at(0));
    set_graph(inputs_, {y});
  }
}

void Sequential::build_for(const Shape& input_shape, DType dtype) {
  if (!inputs_.empty()) LOWBIT_THROW(ValueError, name_, ": already has an input shape");
  std::vector<LayerPtr> layers = std::move(pending_);
  pending_.clear();
  add(InputSpec(input_shape, dtype));
  for (auto& l : layers) add(l);
}

Json Sequential::get_config() const {
  Json layers_json = Json::array();
  for (const auto& l : pending_) layers_json.push_back(layer_to_config(*l));
  return {{"name", name_}, {"trainable", trainable_}, {"layers", layers_json}};
}

}  // namespace lowbit::nn
