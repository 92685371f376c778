// The op registry: every op is declared once, as an OpDef, with
//   - its input count (attributes belong to each node: the Attrs that infer, grad and prepare
//     read; kernels never see them),
//   - a shape/dtype rule (`infer`), which also validates and throws ShapeError/DTypeError,
//   - a gradient rule (`grad`) written with other ops, so gradients are graphs too,
//   - a prepare step (`prepare`): turns attributes and concrete input/output types into the
//     kernels' parameter struct, once per executor plan (never per call),
//   - its kernel table: a reference kernel (plain loops: the definition of the op, rounding
//     included) and optional fast kernels, each naming its ISA, each checked against the
//     reference by the tests (tests/ops/registry_test.cc fails on a listed kernel never checked).
// Tests and benchmarks iterate all_ops(). docs/adding-an-op.md walks through one.
#pragma once

#include <any>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "lowbit/attrs.h"
#include "lowbit/error.h"
#include "lowbit/isa.h"
#include "lowbit/shape.h"
#include "lowbit/tensor.h"

namespace lowbit {

class Value;
class Graph;

// Static type of a value in a graph: dtype and a shape whose dims may be kUnknown.
struct ValueType {
  DType dtype = DType::kF32;
  Shape shape;
};

struct InferCtx {
  const std::string& op;
  std::span<const ValueType> in;
  const Attrs& attrs;
};

// What `prepare` sees: concrete input and output types (shapes known) and the attributes.
struct PrepareCtx {
  const std::string& op;
  std::span<const ValueType> in;
  std::span<const ValueType> out;
  const Attrs& attrs;
  // Per input, the tensor of the graph constant it is bound to, or nullptr (a fed, variable or
  // computed input; empty when the op runs eagerly). A constant's data is fixed once its graph
  // is planned, so what depends only on it (packed weights) may be made once and not checked
  // again per call.
  std::span<const Tensor* const> constants = {};
  bool is_constant(size_t i) const { return i < constants.size() && constants[i] != nullptr; }
};

// Inputs, preallocated outputs (shapes from `infer`, concrete) and the parameters `prepare`
// made. Kernels must not allocate in the hot path, throw, or look at the graph; they read their
// attributes from params<P>(), never by name.
struct KernelCtx {
  std::span<const Tensor> in;
  std::span<Tensor> out;
  const std::any* prepared = nullptr;  // what OpDef::prepare returned (empty: no prepare)
  // The prepared parameters as P (the type the op's prepare returns; checked).
  template <class P>
  const P& params() const {
    const P* p = prepared ? std::any_cast<P>(prepared) : nullptr;
    LOWBIT_CHECK(p != nullptr, "kernel params of the wrong type or missing (op prepare bug)");
    return *p;
  }
};

// What a gradient rule sees: the node's inputs and outputs as graph values, and the incoming
// gradients of its outputs (dy(i) is a zero tensor when no gradient flows into output i).
struct GradCtx {
  Graph& graph;
  std::span<const Value> in;
  std::span<const Value> out;
  std::span<const Value> dys;  // undefined entries: no gradient reaches that output
  const Attrs& attrs;
  Value dy(int i = 0) const;  // the incoming gradient, zeros if none
  bool has_dy(int i) const;
};

using InferFn = std::function<std::vector<ValueType>(const InferCtx&)>;
// Returns one gradient per input; an undefined Value means "no gradient" for that input.
using GradFn = std::function<std::vector<Value>(const GradCtx&)>;
using KernelFn = std::function<void(const KernelCtx&)>;
// Returns the kernels' parameters (any copyable struct, read back with KernelCtx::params<P>());
// may throw like a shape rule (it runs when a plan is made, before any kernel).
using PrepareFn = std::function<std::any(const PrepareCtx&)>;

// One row of an op's kernel table. `supports` sees the prepared context of the first run of a
// plan; the first listed kernel whose ISA the CPU has (cpu_has) and that supports the shapes
// runs, else the reference.
struct FastKernel {
  std::string name;  // `<op>[_layout]_<dtype>__<isa>`, e.g. "matmul_f32__dnnl"
  Isa isa = Isa::kPortable;
  std::function<bool(const KernelCtx&)> supports;  // empty: supports everything
  KernelFn run;
};

struct OpDef {
  std::string name;
  int num_inputs = 1;  // -1: variadic (at least one)
  InferFn infer;
  GradFn grad;         // empty: not differentiable (integer/bool outputs, comparisons, argmax)
  PrepareFn prepare;   // empty: the kernels take no parameters
  KernelFn reference;  // empty only for graph sources (placeholder, constant, variable)
  std::vector<FastKernel> fast;  // the rest of the kernel table, best first
  int view_of_input = -1;        // >= 0: output 0 is a reshape view of that input; no kernel runs
  std::string doc;               // one line, for listings and the DOT graph
};

// Registers an op; throws ValueError if the name is taken. Built-in ops register themselves
// the first time the registry is used.
void register_op(OpDef def);
// Throws ValueError "unknown op 'x'" (with close names) when missing.
const OpDef& find_op(const std::string& name);
// Every registered op, sorted by name.
std::vector<const OpDef*> all_ops();

enum class KernelChoice { kFastest, kReference };
// Which kernels run (eagerly and in executors created afterwards). Default kFastest.
void set_kernel_choice(KernelChoice c);
KernelChoice kernel_choice();

// Runs `def`'s prepare step (an empty std::any when it has none).
std::any prepare_op(const OpDef& def, std::span<const ValueType> in, std::span<const ValueType> out,
                    const Attrs& attrs, std::span<const Tensor* const> constants = {});
// The fast kernel that runs ctx under `choice`: the first whose ISA the CPU has and that
// supports ctx; nullptr: the reference.
const FastKernel* choose_kernel(const OpDef& def, const KernelCtx& ctx, KernelChoice choice);
// Runs `def` on ctx with choose_kernel's kernel (or the reference).
void run_kernel(const OpDef& def, const KernelCtx& ctx, KernelChoice choice);

// Validates inputs (count, defined, dtype, known shapes) and infers output types.
std::vector<ValueType> infer_op(const OpDef& def, std::span<const ValueType> in,
                                const Attrs& attrs);

// Eager execution: infer, allocate the outputs, run the kernel.
std::vector<Tensor> run_op(const std::string& name, const std::vector<Tensor>& inputs,
                           const Attrs& attrs = {});
std::vector<Tensor> run_op(const OpDef& def, const std::vector<Tensor>& inputs, const Attrs& attrs,
                           KernelChoice choice);

}  // namespace lowbit
