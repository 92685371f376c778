// Executor: schedule once, plan per input signature, run without allocating.
//
// Memory plan: every value produced by a kernel gets a slice of one arena. Lifetimes are
// [producer step, last consumer step]; fetched values and update sources live to the end.
// Slices are placed greedily by decreasing size at the lowest offset that does not overlap a
// slice with an intersecting lifetime (the "greedy by size" planner TFLite uses). Views
// (reshape) share their source's slice and extend its lifetime.
//
// Variable updates are double-buffered: a node output that becomes a variable's new value is
// written into a spare buffer of the variable's size instead of the arena, and after the step
// the spare and the variable exchange their memory blocks (Storage::swap_buffers) instead of
// copying — every tensor on the variable's storage sees the new value, as with a copy. Where
// that is not possible (a borrowed or view variable, a source that is fetched, a view, or the
// source of two updates) the value is copied as before.
#include <algorithm>
#include <any>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>

#include "lowbit/graph.h"
#include "ops/op_util.h"

namespace lowbit {

namespace {
constexpr size_t kAlign = 64;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

enum class Bind : uint8_t { kArena, kFeed, kConstant, kVariable, kView, kSpare };

// LOWBIT_PROFILE_OPS=1: wall time per (op, kernel, output shape) summed over every executor
// run of the process, printed to stderr at exit, largest first. A developer's tool for finding
// where a step's time goes (docs/performance.md); off, it costs one branch per node.
class OpProfile {
 public:
  static OpProfile* get() {
    static OpProfile* p = [] {
      const char* e = std::getenv("LOWBIT_PROFILE_OPS");
      return e && *e && std::string(e) != "0" ? new OpProfile : nullptr;
    }();
    return p;
  }
  void add(const std::string& key, double seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& [t, n] = totals_[key];
    t += seconds;
    ++n;
  }

 private:
  OpProfile() {
    std::atexit([] { get()->print(); });
  }
  void print() {
    std::vector<std::pair<double, std::string>> rows;
    double all = 0;
    for (const auto& [key, tn] : totals_) {
      rows.push_back({tn.first, key + "  x" + std::to_string(tn.second)});
      all += tn.first;
    }
    std::sort(rows.rbegin(), rows.rend());
    std::fprintf(stderr, "lowbit op profile (LOWBIT_PROFILE_OPS): %.3f s in kernels\n", all);
    for (const auto& [t, key] : rows)
      std::fprintf(stderr, "%10.2f ms %5.1f%%  %s\n", t * 1e3, all > 0 ? 100 * t / all : 0.0,
                   key.c_str());
  }
  std::mutex mu_;
  std::map<std::string, std::pair<double, int64_t>> totals_;
};

// "NaN", "inf" or "-inf" for the first non-finite element of an f32 tensor; nullptr when all
// are finite (or t is not f32). The scan ORs exponent bits (vectorizes; no float compares).
const char* first_non_finite(const Tensor& t) {
  if (!t.defined() || t.dtype() != DType::kF32) return nullptr;
  const auto* bits = static_cast<const uint32_t*>(static_cast<const void*>(t.data<float>()));
  const int64_t n = t.numel();
  constexpr uint32_t kExp = 0x7f800000u;
  uint32_t any = 0;
  for (int64_t i = 0; i < n; ++i) any |= ((bits[i] & kExp) == kExp) ? 1u : 0u;
  if (!any) return nullptr;
  for (int64_t i = 0; i < n; ++i) {
    const float v = t.data<float>()[i];
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  }
  return nullptr;
}
}  // namespace

struct Executor::Impl {
  Graph& g;
  std::vector<Value> fetches;
  std::vector<std::pair<Value, Value>> updates;
  ExecutorOptions options;
  std::vector<int> schedule;      // node ids in execution order
  std::vector<int> placeholders;  // value ids of the placeholders needed

  struct Plan {
    std::vector<Shape> shapes;              // by value id (only scheduled values)
    std::vector<Bind> bind;                 // by value id
    std::vector<size_t> offset;             // arena offset (kArena)
    std::vector<int> view_root;             // for kView: the value whose memory it shares
    std::vector<Tensor> slots;              // prebuilt arena tensors (kArena and views of arena)
    std::vector<const FastKernel*> kernel;  // chosen per scheduled node (nullptr: reference)
    std::vector<bool> kernel_chosen;
    std::vector<std::any> params;  // per scheduled node: what its op's prepare made for this plan
    std::vector<int> spare_of;     // by value id: index into `spares` (kSpare)
    size_t arena_bytes = 0;
    size_t total_bytes = 0;
  };
  std::map<std::vector<std::vector<int64_t>>, Plan> plans;
  Plan* current = nullptr;
  std::shared_ptr<Storage> arena;
  std::vector<Tensor> spares;     // by update index: the double buffer (undefined: copy)
  std::vector<Tensor> ins, outs;  // scratch reused per node
  std::string refused;            // refused_update()

  Impl(Graph& graph, std::vector<Value> f, std::vector<std::pair<Value, Value>> u,
       ExecutorOptions o)
      : g(graph), fetches(std::move(f)), updates(std::move(u)), options(o) {
    std::vector<bool> needed(g.num_nodes(), false);
    std::vector<int> stack;
    for (const Value& v : fetches) {
      g.check_owns(v, "Executor(fetches)");
      stack.push_back(g.value_info(v.id()).node);
    }
    for (const auto& [var, val] : updates) {
      g.check_owns(var, "Executor(updates)");
      g.check_owns(val, "Executor(updates)");
      if (!g.is_variable(var))
        LOWBIT_THROW(GraphError, "Executor: update target '", var.name(), "' is not a variable");
      if (var.dtype() != val.dtype() || var.shape().rank() != val.shape().rank())
        LOWBIT_THROW(ShapeError, "Executor: update of variable '", var.name(), "' (",
                     detail::type_str({var.dtype(), var.shape()}), ") by '", val.name(), "' (",
                     detail::type_str({val.dtype(), val.shape()}), "): types differ");
      stack.push_back(g.value_info(val.id()).node);
    }
    while (!stack.empty()) {
      int id = stack.back();
      stack.pop_back();
      if (needed[id]) continue;
      needed[id] = true;
      for (int vid : g.node(id).inputs) stack.push_back(g.value_info(vid).node);
    }
    for (int id = 0; id < g.num_nodes(); ++id) {
      if (!needed[id]) continue;
      schedule.push_back(id);
      if (g.node(id).op->name == "placeholder") placeholders.push_back(g.node(id).outputs[0]);
    }
  }

  Plan make_plan(const std::map<int, const Tensor*>& feeds) {
    Plan p;
    const int nv = g.num_values();
    p.shapes.resize(nv);
    p.bind.assign(nv, Bind::kArena);
    p.offset.assign(nv, 0);
    p.view_root.assign(nv, -1);
    p.slots.resize(nv);
    p.kernel.assign(schedule.size(), nullptr);
    p.kernel_chosen.assign(schedule.size(), false);
    p.params.resize(schedule.size());

    std::vector<int> first(nv, -1), last(nv, -1);
    for (size_t step = 0; step < schedule.size(); ++step) {
      const Node& n = g.node(schedule[step]);
      const std::string& op = n.op->name;
      if (op == "placeholder") {
        p.bind[n.outputs[0]] = Bind::kFeed;
        p.shapes[n.outputs[0]] = feeds.at(n.outputs[0])->shape();
        continue;
      }
      if (op == "constant") {
        p.bind[n.outputs[0]] = Bind::kConstant;
        p.shapes[n.outputs[0]] = n.attrs.tensor("value").shape();
        continue;
      }
      if (op == "variable") {
        p.bind[n.outputs[0]] = Bind::kVariable;
        p.shapes[n.outputs[0]] = g.variable_tensor(Value(&g, n.outputs[0])).shape();
        continue;
      }
      std::vector<ValueType> in;
      std::vector<const Tensor*> constants;
      for (int vid : n.inputs) {
        in.push_back({g.value_info(vid).type.dtype, p.shapes[vid]});
        constants.push_back(p.bind[vid] == Bind::kConstant
                                ? &g.node(g.value_info(vid).node).attrs.tensor("value")
                                : nullptr);
        int root = p.bind[vid] == Bind::kView ? p.view_root[vid] : vid;
        last[root] = static_cast<int>(step);
      }
      std::vector<ValueType> out;
      try {
        out = infer_op(*n.op, in, n.attrs);
        p.params[step] = prepare_op(*n.op, in, out, n.attrs, constants);
      } catch (const Error& e) {
        throw GraphError(std::string("while planning node '") + n.name + "': " + e.what());
      }
      for (size_t i = 0; i < out.size(); ++i) {
        int vid = n.outputs[i];
        const ValueType& st = g.value_info(vid).type;
        bool ok = st.dtype == out[i].dtype && st.shape.rank() == out[i].shape.rank();
        for (int d = 0; ok && d < st.shape.rank(); ++d)
          ok = st.shape[d] == kUnknown || st.shape[d] == out[i].shape[d];
        if (!ok || !out[i].shape.is_known())
          LOWBIT_THROW(ShapeError, "node '", n.name, "': its static type is ", detail::type_str(st),
                       " but the fed inputs give ", detail::type_str(out[i]));
        p.shapes[vid] = out[i].shape;
        if (n.op->view_of_input >= 0 && i == 0) {
          int src = n.inputs[n.op->view_of_input];
          p.bind[vid] = Bind::kView;
          p.view_root[vid] = p.bind[src] == Bind::kView ? p.view_root[src] : src;
        } else {
          first[vid] = static_cast<int>(step);
          last[vid] = std::max(last[vid], static_cast<int>(step));
        }
      }
    }
    // Double-buffered update sources (see the top of this file).
    p.spare_of.assign(nv, -1);
    spares.resize(updates.size());
    {
      std::map<int, int> uses;
      for (const auto& u : updates) ++uses[u.second.id()];
      std::set<int> fetched;
      for (const Value& v : fetches) fetched.insert(v.id());
      for (size_t i = 0; i < updates.size(); ++i) {
        const int vid = updates[i].second.id();
        const Tensor& var = g.variable_tensor(updates[i].first);
        const bool ok = p.bind[vid] == Bind::kArena && first[vid] >= 0 && uses[vid] == 1 &&
                        !fetched.count(vid) && var.storage()->owned() &&
                        var.raw() == var.storage()->data() &&
                        var.storage()->bytes() == var.nbytes() && p.shapes[vid] == var.shape();
        if (!ok) continue;
        p.bind[vid] = Bind::kSpare;
        p.spare_of[vid] = static_cast<int>(i);
        if (!spares[i].defined() || spares[i].shape() != var.shape())
          spares[i] = Tensor(var.shape(), var.dtype());
      }
    }
    const int end = static_cast<int>(schedule.size());
    auto keep_to_end = [&](int vid) {
      int root = p.bind[vid] == Bind::kView ? p.view_root[vid] : vid;
      last[root] = end;
    };
    for (const Value& v : fetches) keep_to_end(v.id());
    for (const auto& u : updates) keep_to_end(u.second.id());

    // Place arena values.
    std::vector<int> arena_vals;
    for (int step = 0; step < end; ++step)
      for (int vid : g.node(schedule[step]).outputs)
        if (p.bind[vid] == Bind::kArena && first[vid] >= 0) arena_vals.push_back(vid);
    auto bytes_of = [&](int vid) {
      return align_up(static_cast<size_t>(p.shapes[vid].numel()) *
                      dtype_size(g.value_info(vid).type.dtype));
    };
    for (int vid : arena_vals) p.total_bytes += bytes_of(vid);
    if (!options.reuse_memory) {
      size_t off = 0;
      for (int vid : arena_vals) {
        p.offset[vid] = off;
        off += bytes_of(vid);
      }
      p.arena_bytes = off;
    } else {
      std::vector<int> order = arena_vals;
      std::stable_sort(order.begin(), order.end(),
                       [&](int a, int b) { return bytes_of(a) > bytes_of(b); });
      struct Placed {
        size_t off, size;
        int first, last;
      };
      std::vector<Placed> placed;
      for (int vid : order) {
        size_t size = bytes_of(vid);
        std::vector<std::pair<size_t, size_t>> busy;
        for (const Placed& q : placed)
          if (q.first <= last[vid] && first[vid] <= q.last) busy.emplace_back(q.off, q.size);
        std::sort(busy.begin(), busy.end());
        size_t off = 0;
        for (const auto& [bo, bs] : busy) {
          if (off + size <= bo) break;
          off = std::max(off, bo + bs);
        }
        p.offset[vid] = off;
        placed.push_back({off, size, first[vid], last[vid]});
        p.arena_bytes = std::max(p.arena_bytes, off + size);
      }
    }
    return p;
  }

  void bind_arena(Plan& p) {
    if (!arena || arena->bytes() < p.arena_bytes) {
      arena = std::make_shared<Storage>(std::max<size_t>(p.arena_bytes, 64));
      for (auto& [k, plan] : plans) plan.slots.assign(plan.slots.size(), Tensor());
    }
    char* base = static_cast<char*>(arena->data());
    for (int step = 0; step < static_cast<int>(schedule.size()); ++step)
      for (int vid : g.node(schedule[step]).outputs)
        if (p.bind[vid] == Bind::kArena && !p.slots[vid].defined())
          p.slots[vid] =
              Tensor::wrap(base + p.offset[vid], p.shapes[vid], g.value_info(vid).type.dtype);
  }

  std::vector<Tensor> run(const std::vector<std::pair<Value, Tensor>>& feed_list,
                          const std::function<bool(const std::vector<Tensor>&)>* commit) {
    std::map<int, const Tensor*> feeds;
    for (const auto& [v, t] : feed_list) {
      g.check_owns(v, "Executor::run(feeds)");
      if (g.producer(v).op->name != "placeholder")
        LOWBIT_THROW(GraphError, "Executor::run: '", v.name(), "' is fed but is not a placeholder");
      if (!t.defined())
        LOWBIT_THROW(ValueError, "Executor::run: the tensor fed to '", v.name(), "' is undefined");
      if (t.dtype() != v.dtype())
        LOWBIT_THROW(DTypeError, "Executor::run: placeholder '", v.name(), "' expects dtype ",
                     dtype_name(v.dtype()), " but was fed ", dtype_name(t.dtype()));
      bool ok = t.rank() == v.rank();
      for (int d = 0; ok && d < v.rank(); ++d)
        ok = v.shape()[d] == kUnknown || v.shape()[d] == t.dim(d);
      if (!ok)
        LOWBIT_THROW(ShapeError, "Executor::run: placeholder '", v.name(), "' expects shape ",
                     v.shape().str(), " but was fed ", t.shape().str());
      feeds[v.id()] = &t;
    }
    std::vector<std::vector<int64_t>> sig;
    for (int vid : placeholders) {
      auto it = feeds.find(vid);
      if (it == feeds.end())
        LOWBIT_THROW(GraphError, "Executor::run: placeholder '", Value(&g, vid).name(),
                     "' is needed by the fetches but was not fed");
      sig.push_back(it->second->shape().dims());
    }
    auto it = plans.find(sig);
    if (it == plans.end()) it = plans.emplace(sig, make_plan(feeds)).first;
    Plan& p = it->second;
    current = &p;
    bind_arena(p);

    // Bind sources.
    std::vector<Tensor>& s = p.slots;
    for (int id : schedule) {
      const Node& n = g.node(id);
      int vid = n.outputs.empty() ? -1 : n.outputs[0];
      if (vid < 0) continue;
      if (p.bind[vid] == Bind::kFeed)
        s[vid] = *feeds.at(vid);
      else if (p.bind[vid] == Bind::kConstant)
        s[vid] = n.attrs.tensor("value");
      else if (p.bind[vid] == Bind::kVariable)
        s[vid] = g.variable_tensor(Value(&g, vid));
      for (int out : n.outputs)
        if (p.bind[out] == Bind::kSpare) s[out] = spares[p.spare_of[out]];
    }
    const KernelChoice choice = kernel_choice();
    OpProfile* const profile = OpProfile::get();
    for (size_t step = 0; step < schedule.size(); ++step) {
      const Node& n = g.node(schedule[step]);
      int vid0 = n.outputs.empty() ? -1 : n.outputs[0];
      if (vid0 >= 0 && (p.bind[vid0] == Bind::kFeed || p.bind[vid0] == Bind::kConstant ||
                        p.bind[vid0] == Bind::kVariable))
        continue;
      if (vid0 >= 0 && p.bind[vid0] == Bind::kView) {
        s[vid0] = s[n.inputs[n.op->view_of_input]].reshape(p.shapes[vid0]);
        continue;
      }
      ins.clear();
      outs.clear();
      for (int vid : n.inputs) ins.push_back(s[vid]);
      for (int vid : n.outputs) outs.push_back(s[vid]);
      KernelCtx ctx{ins, outs, &p.params[step]};
      if (!p.kernel_chosen[step]) {
        p.kernel_chosen[step] = true;
        p.kernel[step] = choose_kernel(*n.op, ctx, choice);
      }
      const auto t0 =
          profile ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
      if (p.kernel[step])
        p.kernel[step]->run(ctx);
      else
        n.op->reference(ctx);
      if (profile)
        profile->add(n.op->name + " [" + (p.kernel[step] ? p.kernel[step]->name : "reference") +
                         "] " + (outs.empty() ? std::string() : outs[0].shape().str()),
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }

    std::vector<Tensor> result;
    result.reserve(fetches.size());
    for (const Value& v : fetches) result.push_back(s[v.id()].clone());
    refused.clear();
    if (commit && *commit && !(*commit)(result)) {
      for (int vid : placeholders) s[vid] = Tensor();
      return result;
    }
    if (options.refuse_non_finite_updates)
      for (const auto& [var, val] : updates)
        if (const char* what = first_non_finite(s[val.id()])) {
          refused = detail::cat(var.name(), " (", what, ")");
          for (int vid : placeholders) s[vid] = Tensor();
          return result;
        }
    // Sources of updates that alias other variables must be read before any write.
    std::vector<Tensor> sources;
    for (const auto& [var, val] : updates) {
      Tensor src = s[val.id()];
      if (p.bind[val.id()] != Bind::kArena && p.bind[val.id()] != Bind::kSpare) src = src.clone();
      sources.push_back(src);
    }
    for (size_t i = 0; i < updates.size(); ++i) {
      Tensor& dst = g.variable_tensor(updates[i].first);
      if (dst.shape() != sources[i].shape())
        LOWBIT_THROW(ShapeError, "Executor::run: update of '", updates[i].first.name(),
                     "' has shape ", sources[i].shape().str(), " but the variable is ",
                     dst.shape().str());
      // A variable replaced since planning (another storage) falls back to the copy.
      if (p.bind[updates[i].second.id()] == Bind::kSpare && dst.raw() == dst.storage()->data() &&
          dst.storage()->swap_buffers(*sources[i].storage()))
        continue;
      dst.copy_from(sources[i]);
    }
    // Drop references to fed tensors so callers may reuse them freely.
    for (int vid : placeholders) s[vid] = Tensor();
    return result;
  }
};

Executor::Executor(Graph& g, std::vector<Value> fetches,
                   std::vector<std::pair<Value, Value>> updates, ExecutorOptions options)
    : impl_(std::make_unique<Impl>(g, std::move(fetches), std::move(updates), options)) {}
Executor::~Executor() = default;

std::vector<Tensor> Executor::run(const std::vector<std::pair<Value, Tensor>>& feeds) {
  return impl_->run(feeds, nullptr);
}
std::vector<Tensor> Executor::run(const std::vector<std::pair<Value, Tensor>>& feeds,
                                  const std::function<bool(const std::vector<Tensor>&)>& commit) {
  return impl_->run(feeds, &commit);
}
const std::string& Executor::refused_update() const { return impl_->refused; }
size_t Executor::peak_bytes() const { return impl_->current ? impl_->current->arena_bytes : 0; }
size_t Executor::total_intermediate_bytes() const {
  return impl_->current ? impl_->current->total_bytes : 0;
}
int Executor::num_scheduled_nodes() const { return static_cast<int>(impl_->schedule.size()); }
std::vector<Value> Executor::required_feeds() const {
  std::vector<Value> out;
  for (int vid : impl_->placeholders) out.emplace_back(&impl_->g, vid);
  return out;
}

}  // namespace lowbit
