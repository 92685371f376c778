// The dataflow graph: nodes are ops (with attributes), edges are values with a static dtype and
// a partially known shape. Placeholders are fed at run time, constants hold a tensor, variables
// hold persistent tensors (weights, moving statistics) owned by the graph.
//
//   Graph g;
//   Value x = g.placeholder("x", DType::kF32, {kUnknown, 784});   // batch size unknown
//   Value w = g.variable("w", Tensor::zeros({784, 10}));
//   Value y = ops::matmul(x, w);
//   Value loss = ops::mean(ops::square(y));
//   auto grads = gradients(loss, {w});                           // appends the backward graph
//   Executor step(g, {loss}, {{w, w - 0.1f * grads[0]}});         // fetches, state updates
//   Tensor l = step.run({{x, batch}})[0];
//
// Layers (a later layer of the house) emit ops into a Graph; `to_dot()` shows the result.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/op.h"

namespace lowbit {

class Graph;

// A handle to one output of one node in a graph. Cheap to copy.
class Value {
 public:
  Value() = default;
  Value(Graph* g, int id) : g_(g), id_(id) {}
  bool defined() const { return g_ != nullptr; }
  Graph& graph() const;
  int id() const { return id_; }
  DType dtype() const;
  const Shape& shape() const;
  int rank() const { return shape().rank(); }
  // Name of the producing node, with ":k" for outputs k > 0.
  std::string name() const;
  bool operator==(const Value& o) const { return g_ == o.g_ && id_ == o.id_; }

 private:
  Graph* g_ = nullptr;
  int id_ = -1;
};

struct Node {
  int id = 0;
  const OpDef* op = nullptr;
  std::string name;
  Attrs attrs;
  std::vector<int> inputs;   // value ids
  std::vector<int> outputs;  // value ids
};

struct ValueInfo {
  int node = 0;   // producer
  int index = 0;  // output index within the producer
  ValueType type;
};

class Graph {
 public:
  Graph();
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  // A value fed at run time; dims may be kUnknown.
  Value placeholder(const std::string& name, DType dtype, const Shape& shape);
  Value constant(const Tensor& t, const std::string& name = "");
  Value scalar(float v) { return constant(Tensor::scalar(v)); }
  // A persistent tensor owned by the graph; `trainable` ones are what optimizers update.
  Value variable(const std::string& name, const Tensor& init, bool trainable = true);

  // Appends a node running `op` on `inputs` (all from this graph); infers and checks types.
  std::vector<Value> add_node(const std::string& op, const std::vector<Value>& inputs,
                              const Attrs& attrs = {}, const std::string& name = "");

  // Name scopes: nodes created while a Scope lives are named "prefix/op_N".
  class Scope {
   public:
    Scope(Graph& g, const std::string& prefix);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Graph& g_;
  };

  int num_nodes() const { return static_cast<int>(nodes_.size()); }
  int num_values() const { return static_cast<int>(values_.size()); }
  const Node& node(int id) const { return nodes_.at(id); }
  const ValueInfo& value_info(int id) const { return values_.at(id); }
  Value value(int id) { return Value(this, id); }
  const Node& producer(const Value& v) const { return nodes_.at(values_.at(v.id()).node); }

  bool is_variable(const Value& v) const;
  bool is_trainable(const Value& v) const;
  // The tensor behind a variable (mutable: optimizers and loaders write it).
  Tensor& variable_tensor(const Value& v);
  const Tensor& variable_tensor(const Value& v) const;
  // Variables in creation order.
  std::vector<Value> variables(bool trainable_only = false) const;
  // Finds a node output by node name ("dense/w"); throws GraphError when absent.
  Value find(const std::string& node_name);

  // State updates recorded while building (e.g. batch-norm moving statistics). They are not
  // applied by themselves: pass them to an Executor, which writes them after each step.
  void add_update(const Value& variable, const Value& new_value);
  const std::vector<std::pair<Value, Value>>& updates() const { return updates_; }

  // Checks structural invariants (inputs defined before use, types consistent with the op's
  // rule); throws GraphError naming the node.
  void verify() const;
  // One line per node: "dense/matmul_3 = matmul(x, dense/w) : f32[?,128]".
  std::string str() const;
  // Graphviz DOT: one box per op (name, op, attributes), edges labelled with dtype and shape.
  // With `outputs`, only the nodes they depend on are drawn.
  std::string to_dot(const std::vector<Value>& outputs = {}) const;

  void check_owns(const Value& v, const char* who) const;

 private:
  std::string unique_name(const std::string& base);

  std::vector<Node> nodes_;
  std::vector<ValueInfo> values_;
  std::vector<Tensor> var_tensors_;  // indexed by the variable node's "slot" attribute
  std::vector<std::pair<Value, Value>> updates_;
  std::vector<std::string> scopes_;
  std::map<std::string, int> name_counts_;
  std::map<std::string, int> node_by_name_;
};

// Reverse-mode automatic differentiation as a graph transformation: appends the backward ops
// for d(sum(ys[k] * grad_ys[k]))/d(wrt[j]) and returns one value per `wrt` (zeros when `wrt[j]`
// does not influence ys). Values used several times accumulate; broadcasting is undone by
// summing; integer and bool paths carry no gradient. Throws UnsupportedError naming the op
// when a needed op has no gradient rule.
std::vector<Value> gradients(const std::vector<Value>& ys, const std::vector<Value>& wrt,
                             const std::vector<Value>& grad_ys);
// Same for a scalar loss (seed 1).
std::vector<Value> gradients(const Value& loss, const std::vector<Value>& wrt);

struct ExecutorOptions {
  bool reuse_memory = true;  // plan buffers by liveness; false: one buffer per value (tests)
  // Writes the state updates of a run only if every f32 update value is finite (no NaN, no
  // Inf); otherwise none is written and refused_update() names the first variable at fault. A
  // training loop sets it so that a step can never leave a non-finite weight, optimizer slot or
  // moving statistic behind, whatever produced it (one pass over the update values per step).
  bool refuse_non_finite_updates = false;
};

// Runs a graph: orders the needed nodes once, infers concrete shapes per input signature,
// plans buffers by liveness in one arena reused across steps, runs the kernels, returns the
// fetches and then writes the state updates into their variables.
class Executor {
 public:
  Executor(Graph& g, std::vector<Value> fetches, std::vector<std::pair<Value, Value>> updates = {},
           ExecutorOptions options = {});
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Feeds every placeholder the fetches need (dtype and known dims must match: ShapeError,
  // DTypeError otherwise). Returned tensors are owned by the caller.
  std::vector<Tensor> run(const std::vector<std::pair<Value, Tensor>>& feeds = {});
  // Same, but the state updates are written only if `commit(fetches)` returns true: a training
  // loop uses it to refuse a step whose loss is NaN, so the weights stay at their last good values.
  std::vector<Tensor> run(const std::vector<std::pair<Value, Tensor>>& feeds,
                          const std::function<bool(const std::vector<Tensor>&)>& commit);
  // With ExecutorOptions::refuse_non_finite_updates: after a run that wrote no update because
  // one was not finite, that variable's name and what it held ("NaN", "inf", "-inf"); empty
  // after a run that wrote its updates (or was refused by `commit`).
  const std::string& refused_update() const;

  // Arena bytes of the current plan (the peak of live intermediates).
  size_t peak_bytes() const;
  // Sum of the sizes of all intermediates of the current plan (what no reuse would need).
  size_t total_intermediate_bytes() const;
  // Nodes run per step.
  int num_scheduled_nodes() const;
  // Placeholders the fetches depend on.
  std::vector<Value> required_feeds() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowbit
