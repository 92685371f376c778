// Reverse-mode autodiff as a graph transformation (docs/design.md, "Autodiff").
#include <vector>

#include "lowbit/graph.h"
#include "lowbit/ops/base.h"
#include "lowbit/ops/elementwise.h"
#include "ops/op_util.h"

namespace lowbit {

namespace {
Value sum_partials(std::vector<Value>& parts) {
  // Pairwise sum keeps the accumulation tree shallow.
  while (parts.size() > 1) {
    std::vector<Value> next;
    for (size_t i = 0; i + 1 < parts.size(); i += 2)
      next.push_back(ops::add(parts[i], parts[i + 1]));
    if (parts.size() % 2) next.push_back(parts.back());
    parts.swap(next);
  }
  return parts.empty() ? Value() : parts[0];
}
}  // namespace

std::vector<Value> gradients(const std::vector<Value>& ys, const std::vector<Value>& wrt,
                             const std::vector<Value>& grad_ys) {
  if (ys.empty()) LOWBIT_THROW(ValueError, "gradients: expected at least one output in ys");
  if (ys.size() != grad_ys.size())
    LOWBIT_THROW(ValueError, "gradients: expected one grad_ys entry per ys entry but found ",
                 grad_ys.size(), " for ", ys.size());
  Graph& g = ys[0].graph();
  for (const Value& v : ys) g.check_owns(v, "gradients(ys)");
  for (const Value& v : wrt) g.check_owns(v, "gradients(wrt)");
  for (size_t k = 0; k < ys.size(); ++k) {
    g.check_owns(grad_ys[k], "gradients(grad_ys)");
    if (!is_float(ys[k].dtype()))
      LOWBIT_THROW(DTypeError, "gradients: ys[", k, "] '", ys[k].name(), "' is not a float value (",
                   dtype_name(ys[k].dtype()), "); only f32 is differentiable");
  }
  const int nv = g.num_values();
  const int nn = g.num_nodes();

  // Values that depend on some wrt entry through float paths.
  std::vector<bool> fwd(nv, false);
  for (const Value& v : wrt)
    if (is_float(v.dtype())) fwd[v.id()] = true;
  for (int id = 0; id < nn; ++id) {
    const Node& n = g.node(id);
    bool any = false;
    for (int vid : n.inputs) any = any || fwd[vid];
    if (any)
      for (int vid : n.outputs) fwd[vid] = fwd[vid] || is_float(g.value_info(vid).type.dtype);
  }

  std::vector<std::vector<Value>> partials(nv);
  int last_node = 0;
  for (size_t k = 0; k < ys.size(); ++k) {
    partials[ys[k].id()].push_back(grad_ys[k]);
    last_node = std::max(last_node, g.value_info(ys[k].id()).node);
  }

  Graph::Scope scope(g, "gradients");
  std::vector<Value> summed(nv);
  for (int id = last_node; id >= 0; --id) {
    // Copy what we need: add_node below may reallocate the node vector.
    const Node node = g.node(id);
    bool any_dy = false;
    std::vector<Value> dys(node.outputs.size());
    for (size_t i = 0; i < node.outputs.size(); ++i) {
      int vid = node.outputs[i];
      if (!partials[vid].empty()) {
        dys[i] = sum_partials(partials[vid]);
        summed[vid] = dys[i];
        any_dy = true;
      }
    }
    if (!any_dy) continue;
    bool needs = false;
    for (int vid : node.inputs) needs = needs || fwd[vid];
    if (!needs) continue;
    if (!node.op->grad)
      LOWBIT_THROW(UnsupportedError, "gradients: op '", node.op->name, "' (node '", node.name,
                   "') has no gradient rule, but a gradient must flow through it");
    std::vector<Value> in, out;
    for (int vid : node.inputs) in.emplace_back(&g, vid);
    for (int vid : node.outputs) out.emplace_back(&g, vid);
    GradCtx ctx{g, in, out, dys, node.attrs};
    std::vector<Value> dx = node.op->grad(ctx);
    if (dx.size() != in.size())
      LOWBIT_THROW(GraphError, "gradients: the gradient rule of '", node.op->name, "' returned ",
                   dx.size(), " values for ", in.size(), " inputs");
    for (size_t i = 0; i < in.size(); ++i) {
      if (!dx[i].defined() || !fwd[in[i].id()]) continue;
      const ValueType& want = g.value_info(in[i].id()).type;
      const ValueType& got = g.value_info(dx[i].id()).type;
      bool ok = got.dtype == want.dtype && got.shape.rank() == want.shape.rank();
      for (int d = 0; ok && d < want.shape.rank(); ++d)
        ok = detail::dims_compatible(got.shape[d], want.shape[d]);
      if (!ok)
        LOWBIT_THROW(GraphError, "gradients: the gradient rule of '", node.op->name,
                     "' gave input ", i, " a gradient of type ", detail::type_str(got),
                     " but the input is ", detail::type_str(want), " (op bug)");
      partials[in[i].id()].push_back(dx[i]);
    }
  }

  std::vector<Value> result;
  for (const Value& v : wrt) {
    Value gsum = summed[v.id()];
    if (!gsum.defined() && !partials[v.id()].empty()) gsum = sum_partials(partials[v.id()]);
    if (!gsum.defined()) gsum = ops::zeros_like(v);
    result.push_back(gsum);
  }
  return result;
}

std::vector<Value> gradients(const Value& loss, const std::vector<Value>& wrt) {
  if (!loss.defined()) LOWBIT_THROW(ValueError, "gradients: the loss is undefined");
  if (loss.shape().rank() != 0 && loss.shape().numel() != 1)
    LOWBIT_THROW(ShapeError, "gradients: expected a scalar loss but found shape ",
                 loss.shape().str(), "; reduce it first (ops::sum or ops::mean) or pass grad_ys");
  Value seed;
  {
    Graph::Scope scope(loss.graph(), "gradients");
    seed = ops::ones_like(loss);
  }
  return gradients(std::vector<Value>{loss}, wrt, {seed});
}

}  // namespace lowbit
