#include "lowbit/graph.h"

#include <set>
#include <sstream>

#include "lowbit/ops/base.h"
#include "ops/families.h"
#include "ops/op_util.h"

namespace lowbit {

namespace detail {
void register_graph_ops() {
  // Sources: their values are bound by the executor (fed, held constant, or the graph's
  // variable tensor); none runs a kernel.
  register_op({.name = "placeholder",
               .num_inputs = 0,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 return {{c.attrs.dtype("dtype"), Shape(c.attrs.ints("shape"))}};
               },
               .doc = "a value fed at run time"});
  register_op({.name = "constant",
               .num_inputs = 0,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 const Tensor& t = c.attrs.tensor("value");
                 return {{t.dtype(), t.shape()}};
               },
               .doc = "a constant tensor"});
  register_op({.name = "variable",
               .num_inputs = 0,
               .infer = [](const InferCtx& c) -> std::vector<ValueType> {
                 return {{c.attrs.dtype("dtype"), Shape(c.attrs.ints("shape"))}};
               },
               .doc = "a persistent tensor owned by the graph"});
}
}  // namespace detail

Graph& Value::graph() const {
  if (!g_) LOWBIT_THROW(GraphError, "Value: use of an undefined value");
  return *g_;
}
DType Value::dtype() const { return graph().value_info(id_).type.dtype; }
const Shape& Value::shape() const { return graph().value_info(id_).type.shape; }
std::string Value::name() const {
  const ValueInfo& vi = graph().value_info(id_);
  const Node& n = graph().node(vi.node);
  return vi.index == 0 ? n.name : n.name + ":" + std::to_string(vi.index);
}

Graph::Graph() = default;
Graph::~Graph() = default;

std::string Graph::unique_name(const std::string& base) {
  std::string prefix;
  for (const auto& s : scopes_) prefix += s + "/";
  std::string full = prefix + base;
  int& count = name_counts_[full];
  std::string name = count == 0 ? full : full + "_" + std::to_string(count);
  ++count;
  while (node_by_name_.count(name)) name = full + "_" + std::to_string(count++);
  return name;
}

Graph::Scope::Scope(Graph& g, const std::string& prefix) : g_(g) { g_.scopes_.push_back(prefix); }
Graph::Scope::~Scope() { g_.scopes_.pop_back(); }

void Graph::check_owns(const Value& v, const char* who) const {
  if (!v.defined()) LOWBIT_THROW(GraphError, who, ": an input value is undefined");
  if (&v.graph() != this)
    LOWBIT_THROW(GraphError, who, ": value '", v.name(), "' belongs to another graph");
}

std::vector<Value> Graph::add_node(const std::string& op, const std::vector<Value>& inputs,
                                   const Attrs& attrs, const std::string& name) {
  const OpDef& def = find_op(op);
  std::vector<ValueType> in_types;
  in_types.reserve(inputs.size());
  for (const Value& v : inputs) {
    check_owns(v, op.c_str());
    in_types.push_back(values_[v.id()].type);
  }
  std::vector<ValueType> out_types = infer_op(def, in_types, attrs);
  Node n;
  n.id = num_nodes();
  n.op = &def;
  n.name = unique_name(name.empty() ? op : name);
  n.attrs = attrs;
  for (const Value& v : inputs) n.inputs.push_back(v.id());
  std::vector<Value> outs;
  for (size_t i = 0; i < out_types.size(); ++i) {
    int vid = num_values();
    values_.push_back({n.id, static_cast<int>(i), out_types[i]});
    n.outputs.push_back(vid);
    outs.emplace_back(this, vid);
  }
  node_by_name_[n.name] = n.id;
  nodes_.push_back(std::move(n));
  return outs;
}

Value Graph::placeholder(const std::string& name, DType dtype, const Shape& shape) {
  for (int64_t d : shape.dims())
    if (d < kUnknown)
      LOWBIT_THROW(ShapeError, "placeholder '", name, "': dims must be >= 0 or kUnknown, found ",
                   shape.str());
  return add_node("placeholder", {}, {{"dtype", dtype}, {"shape", shape.dims()}}, name)[0];
}

Value Graph::constant(const Tensor& t, const std::string& name) {
  if (!t.defined()) LOWBIT_THROW(ValueError, "constant: the tensor is undefined");
  return add_node("constant", {}, {{"value", t}}, name.empty() ? "const" : name)[0];
}

Value Graph::variable(const std::string& name, const Tensor& init, bool trainable) {
  if (!init.defined())
    LOWBIT_THROW(ValueError, "variable '", name, "': the initial tensor is undefined");
  int64_t slot = static_cast<int64_t>(var_tensors_.size());
  var_tensors_.push_back(init);
  return add_node("variable", {},
                  {{"dtype", init.dtype()},
                   {"shape", init.shape().dims()},
                   {"slot", slot},
                   {"trainable", trainable}},
                  name)[0];
}

bool Graph::is_variable(const Value& v) const {
  return v.defined() && &v.graph() == this && producer(v).op->name == "variable";
}
bool Graph::is_trainable(const Value& v) const {
  return is_variable(v) && producer(v).attrs.b("trainable");
}

Tensor& Graph::variable_tensor(const Value& v) {
  if (!is_variable(v))
    LOWBIT_THROW(GraphError, "variable_tensor: '", v.defined() ? v.name() : "?",
                 "' is not a variable of this graph");
  return var_tensors_[producer(v).attrs.i("slot")];
}
const Tensor& Graph::variable_tensor(const Value& v) const {
  return const_cast<Graph*>(this)->variable_tensor(v);
}

std::vector<Value> Graph::variables(bool trainable_only) const {
  std::vector<Value> out;
  for (const Node& n : nodes_)
    if (n.op->name == "variable" && (!trainable_only || n.attrs.b("trainable")))
      out.emplace_back(const_cast<Graph*>(this), n.outputs[0]);
  return out;
}

Value Graph::find(const std::string& node_name) {
  auto it = node_by_name_.find(node_name);
  if (it == node_by_name_.end()) LOWBIT_THROW(GraphError, "find: no node named '", node_name, "'");
  return Value(this, nodes_[it->second].outputs.at(0));
}

void Graph::add_update(const Value& variable, const Value& new_value) {
  check_owns(variable, "add_update");
  check_owns(new_value, "add_update");
  if (!is_variable(variable))
    LOWBIT_THROW(GraphError, "add_update: '", variable.name(), "' is not a variable");
  if (variable.dtype() != new_value.dtype())
    LOWBIT_THROW(DTypeError, "add_update: variable '", variable.name(), "' is ",
                 dtype_name(variable.dtype()), " but the new value is ",
                 dtype_name(new_value.dtype()));
  updates_.emplace_back(variable, new_value);
}

void Graph::verify() const {
  for (const Node& n : nodes_) {
    std::vector<ValueType> in;
    for (int vid : n.inputs) {
      if (vid < 0 || vid >= num_values() || values_[vid].node >= n.id)
        LOWBIT_THROW(GraphError, "verify: node '", n.name, "' reads value ", vid,
                     " that is not defined before it");
      in.push_back(values_[vid].type);
    }
    std::vector<ValueType> out = infer_op(*n.op, in, n.attrs);
    if (out.size() != n.outputs.size())
      LOWBIT_THROW(GraphError, "verify: node '", n.name, "' has ", n.outputs.size(),
                   " outputs but its op gives ", out.size());
    for (size_t i = 0; i < out.size(); ++i) {
      const ValueInfo& vi = values_[n.outputs[i]];
      if (vi.node != n.id || vi.index != static_cast<int>(i) || vi.type.dtype != out[i].dtype ||
          vi.type.shape != out[i].shape)
        LOWBIT_THROW(GraphError, "verify: node '", n.name, "' output ", i, " is recorded as ",
                     detail::type_str(vi.type), " but its op gives ", detail::type_str(out[i]));
    }
  }
  for (const auto& [var, val] : updates_) {
    if (!is_variable(var)) LOWBIT_THROW(GraphError, "verify: update target is not a variable");
    (void)val;
  }
}

std::string Graph::str() const {
  std::ostringstream os;
  for (const Node& n : nodes_) {
    for (size_t i = 0; i < n.outputs.size(); ++i) {
      if (i) os << ", ";
      os << (i == 0 ? n.name : n.name + ":" + std::to_string(i));
    }
    os << " = " << n.op->name << "(";
    for (size_t i = 0; i < n.inputs.size(); ++i)
      os << (i ? ", " : "") << Value(const_cast<Graph*>(this), n.inputs[i]).name();
    os << ")";
    std::string a;
    for (const auto& [k, v] : n.attrs.items())
      if (k != "value" && k != "slot") a += (a.empty() ? "" : ", ") + k + "=" + v.str();
    if (!a.empty()) os << " {" << a << "}";
    os << " : ";
    for (size_t i = 0; i < n.outputs.size(); ++i)
      os << (i ? ", " : "") << detail::type_str(values_[n.outputs[i]].type);
    os << "\n";
  }
  return os.str();
}

namespace {
std::string dot_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o;
}
}  // namespace

std::string Graph::to_dot(const std::vector<Value>& outputs) const {
  std::vector<bool> keep(nodes_.size(), outputs.empty());
  if (!outputs.empty()) {
    std::vector<int> stack;
    for (const Value& v : outputs) stack.push_back(values_.at(v.id()).node);
    while (!stack.empty()) {
      int id = stack.back();
      stack.pop_back();
      if (keep[id]) continue;
      keep[id] = true;
      for (int vid : nodes_[id].inputs) stack.push_back(values_[vid].node);
    }
  }
  std::ostringstream os;
  os << "digraph lowbit {\n  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=10];\n"
        "  edge [fontname=\"Helvetica\", fontsize=9];\n";
  for (const Node& n : nodes_) {
    if (!keep[n.id]) continue;
    const std::string& op = n.op->name;
    std::string label = n.name;
    std::string style;
    if (op == "placeholder") {
      style = "shape=ellipse, style=filled, fillcolor=\"#cde4ff\"";
      label += "\x01placeholder " + detail::type_str(values_[n.outputs[0]].type);
    } else if (op == "variable") {
      style = "shape=box, style=\"rounded,filled\", fillcolor=\"#ffe4b5\"";
      label += "\x01variable " + detail::type_str(values_[n.outputs[0]].type) +
               (n.attrs.b("trainable") ? "" : " (state)");
    } else if (op == "constant") {
      style = "shape=note, style=filled, fillcolor=\"#eeeeee\"";
      const Tensor& t = n.attrs.tensor("value");
      label += t.numel() == 1 ? "\x01= " + std::to_string(t.get_as_double(0))
                              : "\x01"
                                "constant " +
                                    detail::type_str({t.dtype(), t.shape()});
    } else {
      style = "shape=box";
      label += "\x01" + op;
      std::string a;
      for (const auto& [k, v] : n.attrs.items()) a += "\x01" + k + "=" + v.str();
      label += a;
    }
    std::string esc = dot_escape(label);
    for (size_t p = esc.find('\x01'); p != std::string::npos; p = esc.find('\x01'))
      esc.replace(p, 1, "\\n");
    os << "  n" << n.id << " [label=\"" << esc << "\", " << style << "];\n";
  }
  for (const Node& n : nodes_) {
    if (!keep[n.id]) continue;
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const ValueInfo& vi = values_[n.inputs[i]];
      os << "  n" << vi.node << " -> n" << n.id << " [label=\""
         << dot_escape(detail::type_str(vi.type)) << "\"];\n";
    }
  }
  for (const auto& [var, val] : updates_) {
    int src = values_[val.id()].node, dst = values_[var.id()].node;
    if (keep[src] && keep[dst])
      os << "  n" << src << " -> n" << dst
         << " [style=dashed, color=\"#c05000\", label=\"update\", constraint=false];\n";
  }
  os << "}\n";
  return os.str();
}

}  // namespace lowbit
