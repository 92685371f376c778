#include <algorithm>
#include <map>
#include <mutex>

#include "lowbit/graph.h"
#include "lowbit/ops/base.h"
#include "ops/families.h"

namespace lowbit {

namespace {
struct Registry {
  std::map<std::string, OpDef> ops;
};

Registry& raw_registry() {
  static Registry r;
  return r;
}

Registry& registry() {
  static std::once_flag once;
  std::call_once(once, [] {
    detail::register_graph_ops();
    detail::register_elementwise_ops();
    detail::register_reduce_ops();
    detail::register_shape_ops();
    detail::register_linalg_ops();
    detail::register_conv_ops();
    detail::register_nn_ops();
    detail::register_optim_ops();
    detail::register_quantizer_ops();
    detail::register_fake_quant_ops();
    detail::register_rnn_ops();
    detail::register_mask_ops();
    detail::register_integer_numerics_ops();
    detail::register_int8_ops();
    detail::register_int8_recurrent_ops();
  });
  return raw_registry();
}

KernelChoice g_choice = KernelChoice::kFastest;

int edit_distance(const std::string& a, const std::string& b) {
  std::vector<int> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = static_cast<int>(i);
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}
}  // namespace

void register_op(OpDef def) {
  auto& r = raw_registry();
  if (def.name.empty()) LOWBIT_THROW(ValueError, "register_op: the op has no name");
  if (!def.infer) LOWBIT_THROW(ValueError, "register_op: op '", def.name, "' has no shape rule");
  if (r.ops.count(def.name))
    LOWBIT_THROW(ValueError, "register_op: op '", def.name, "' is already registered");
  for (size_t i = 0; i < def.fast.size(); ++i) {
    const FastKernel& fk = def.fast[i];
    const std::string suffix = std::string("__") + isa_name(fk.isa);
    if (fk.name.rfind(def.name + "_", 0) != 0 || fk.name.size() < suffix.size() ||
        fk.name.compare(fk.name.size() - suffix.size(), suffix.size(), suffix) != 0)
      LOWBIT_THROW(ValueError, "register_op: op '", def.name, "': fast kernel '", fk.name,
                   "' must be named <op>[_layout]_<dtype>", suffix, " (its ISA is ",
                   isa_name(fk.isa), ")");
    if (!fk.run)
      LOWBIT_THROW(ValueError, "register_op: op '", def.name, "': fast kernel '", fk.name,
                   "' has no run function");
    for (size_t j = 0; j < i; ++j)
      if (def.fast[j].name == fk.name)
        LOWBIT_THROW(ValueError, "register_op: op '", def.name, "': kernel name '", fk.name,
                     "' is listed twice");
  }
  std::string name = def.name;
  r.ops.emplace(name, std::move(def));
}

const OpDef& find_op(const std::string& name) {
  auto& r = registry();
  auto it = r.ops.find(name);
  if (it != r.ops.end()) return it->second;
  std::string close;
  for (const auto& [k, v] : r.ops)
    if (edit_distance(k, name) <= 2) close += (close.empty() ? "" : ", ") + k;
  LOWBIT_THROW(ValueError, "unknown op '", name, "'",
               close.empty() ? std::string() : " (did you mean: " + close + "?)");
}

std::vector<const OpDef*> all_ops() {
  std::vector<const OpDef*> out;
  for (const auto& [k, v] : registry().ops) out.push_back(&v);
  return out;
}

void set_kernel_choice(KernelChoice c) { g_choice = c; }
KernelChoice kernel_choice() { return g_choice; }

std::any prepare_op(const OpDef& def, std::span<const ValueType> in, std::span<const ValueType> out,
                    const Attrs& attrs, std::span<const Tensor* const> constants) {
  if (!def.prepare) return {};
  PrepareCtx ctx{def.name, in, out, attrs, constants};
  return def.prepare(ctx);
}

const FastKernel* choose_kernel(const OpDef& def, const KernelCtx& ctx, KernelChoice choice) {
  if (choice != KernelChoice::kFastest) return nullptr;
  for (const auto& fk : def.fast)
    if (cpu_has(fk.isa) && (!fk.supports || fk.supports(ctx))) return &fk;
  return nullptr;
}

void run_kernel(const OpDef& def, const KernelCtx& ctx, KernelChoice choice) {
  if (const FastKernel* fk = choose_kernel(def, ctx, choice)) {
    fk->run(ctx);
    return;
  }
  LOWBIT_CHECK(def.reference, "op ", def.name, " has no kernel");
  def.reference(ctx);
}

std::vector<ValueType> infer_op(const OpDef& def, std::span<const ValueType> in,
                                const Attrs& attrs) {
  if (def.num_inputs >= 0 && static_cast<int>(in.size()) != def.num_inputs)
    LOWBIT_THROW(ValueError, def.name, ": expected ", def.num_inputs, " inputs but found ",
                 in.size());
  if (def.num_inputs < 0 && in.empty())
    LOWBIT_THROW(ValueError, def.name, ": expected at least one input but found none");
  InferCtx ctx{def.name, in, attrs};
  return def.infer(ctx);
}

std::vector<Tensor> run_op(const OpDef& def, const std::vector<Tensor>& inputs, const Attrs& attrs,
                           KernelChoice choice) {
  std::vector<ValueType> in_types;
  in_types.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined())
      LOWBIT_THROW(ValueError, def.name, ": input ", i, " is an undefined tensor");
    in_types.push_back({inputs[i].dtype(), inputs[i].shape()});
  }
  std::vector<ValueType> out_types = infer_op(def, in_types, attrs);
  std::vector<Tensor> outs;
  outs.reserve(out_types.size());
  if (def.view_of_input >= 0) {
    outs.push_back(inputs[def.view_of_input].reshape(out_types[0].shape));
    return outs;
  }
  for (const auto& t : out_types) {
    if (!t.shape.is_known())
      LOWBIT_THROW(ShapeError, def.name, ": output shape ", t.shape.str(),
                   " is not known for concrete inputs (op bug)");
    outs.emplace_back(t.shape, t.dtype);
  }
  if (!def.reference && def.fast.empty())
    LOWBIT_THROW(UnsupportedError, def.name, ": this op is a graph source and cannot run eagerly");
  const std::any params = prepare_op(def, in_types, out_types, attrs);
  KernelCtx ctx{inputs, outs, &params};
  run_kernel(def, ctx, choice);
  return outs;
}

std::vector<Tensor> run_op(const std::string& name, const std::vector<Tensor>& inputs,
                           const Attrs& attrs) {
  return run_op(find_op(name), inputs, attrs, g_choice);
}

Value GradCtx::dy(int i) const {
  if (dys[i].defined()) return dys[i];
  return ops::zeros_like(out[i]);
}
bool GradCtx::has_dy(int i) const { return dys[i].defined(); }

namespace ops {
std::vector<Tensor> apply(const std::string& name, const std::vector<Tensor>& inputs,
                          const Attrs& attrs) {
  return run_op(name, inputs, attrs);
}

std::vector<Value> apply(const std::string& name, const std::vector<Value>& inputs,
                         const Attrs& attrs) {
  if (inputs.empty() || !inputs[0].defined())
    LOWBIT_THROW(GraphError, name, ": symbolic call needs a defined first input to find the graph");
  return inputs[0].graph().add_node(name, inputs, attrs);
}

Tensor scalar_like(const Tensor& x, double v) { return Tensor::full({}, v, x.dtype()); }
Value scalar_like(const Value& x, double v) {
  return x.graph().constant(Tensor::full({}, v, x.dtype()));
}
}  // namespace ops

}  // namespace lowbit
