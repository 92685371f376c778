#include "testing/op_testing.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

namespace lowbit::testing {

std::string shared_dir() {
  if (const char* e = std::getenv("LOWBIT_SHARED_DIR")) return e;
  return LOWBIT_SHARED_DIR_DEFAULT;
}

std::set<std::string>& gradchecked_ops() {
  static std::set<std::string> s;
  return s;
}
std::set<std::string>& reference_tested_ops() {
  static std::set<std::string> s;
  return s;
}
void note_reference_tested(const std::string& op) { reference_tested_ops().insert(op); }
std::set<std::string>& nonfinite_checked_ops() {
  static std::set<std::string> s;
  return s;
}
std::set<std::string>& checked_kernel_cases() {
  static std::set<std::string> s;
  return s;
}

std::string input_signature(const std::vector<Tensor>& inputs) {
  std::string sig;
  for (const Tensor& t : inputs) {
    if (!sig.empty()) sig += ';';
    sig += std::string(dtype_name(t.dtype())) + t.shape().str();
  }
  sig.erase(std::remove(sig.begin(), sig.end(), ' '), sig.end());
  return sig;
}

bool is_edge_shape(const std::vector<Tensor>& inputs) {
  if (inputs.empty()) return false;
  const Tensor& x = inputs[0];
  if (x.numel() < 16) return true;
  return x.rank() > 0 && x.dim(-1) % 16 != 0;
}

void note_kernel_checked(const FastKernel& fk, const std::vector<Tensor>& inputs) {
  checked_kernel_cases().insert(fk.name + " " + input_signature(inputs) + " " +
                                (is_edge_shape(inputs) ? "1" : "0"));
}

bool run_listed_kernel(const OpDef& def, const FastKernel& fk, const std::vector<Tensor>& inputs,
                       const Attrs& attrs, std::vector<Tensor>& outs) {
  outs.clear();
  if (!cpu_has(fk.isa)) return false;
  std::vector<ValueType> in_types;
  for (const Tensor& t : inputs) in_types.push_back({t.dtype(), t.shape()});
  const std::vector<ValueType> out_types = infer_op(def, in_types, attrs);
  for (const ValueType& t : out_types) outs.emplace_back(t.shape, t.dtype);
  const std::any params = prepare_op(def, in_types, out_types, attrs);
  KernelCtx ctx{inputs, outs, &params};
  if (fk.supports && !fk.supports(ctx)) {
    outs.clear();
    return false;
  }
  fk.run(ctx);
  return true;
}

Tensor random_tensor(const Shape& shape, Rng& rng, float lo, float hi) {
  Tensor t(shape, DType::kF32);
  for (float& v : t.span<float>()) v = rng.uniform(lo, hi);
  return t;
}

Tensor random_int_tensor(const Shape& shape, Rng& rng, int64_t lo, int64_t hi, DType dtype) {
  Tensor t(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.set_from_double(
        i, static_cast<double>(lo + static_cast<int64_t>(rng.next_u32() % (hi - lo + 1))));
  return t;
}

::testing::AssertionResult tensors_near(const Tensor& got, const Tensor& want, double atol,
                                        double rtol) {
  if (got.dtype() != want.dtype() || got.shape() != want.shape())
    return ::testing::AssertionFailure()
           << "type differs: got " << dtype_name(got.dtype()) << got.shape().str() << ", want "
           << dtype_name(want.dtype()) << want.shape().str();
  double worst = 0;
  int64_t worst_i = -1;
  for (int64_t i = 0; i < got.numel(); ++i) {
    double g = got.get_as_double(i), w = want.get_as_double(i);
    if (g == w || (std::isnan(g) && std::isnan(w))) continue;  // equal infinities, both NaN
    double excess = std::abs(g - w) - (atol + rtol * std::abs(w));
    if (std::isnan(g) != std::isnan(w)) excess = INFINITY;
    if (excess > worst || (std::isnan(excess) && worst_i < 0)) {
      worst = std::isnan(excess) ? 0 : excess;
      worst_i = i;
    }
  }
  if (worst_i < 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "element " << worst_i << " of " << got.shape().str() << ": got "
         << got.get_as_double(worst_i) << ", want " << want.get_as_double(worst_i) << " (atol "
         << atol << ", rtol " << rtol << ")";
}

::testing::AssertionResult tensors_equal(const Tensor& got, const Tensor& want) {
  return tensors_near(got, want, 0, 0);
}

namespace {
double objective(const std::string& op, const std::vector<Tensor>& inputs, const Attrs& attrs,
                 const std::vector<Tensor>& cot) {
  std::vector<Tensor> outs = run_op(find_op(op), inputs, attrs, KernelChoice::kReference);
  double l = 0;
  for (size_t k = 0; k < outs.size(); ++k) {
    if (!cot[k].defined()) continue;
    for (int64_t i = 0; i < outs[k].numel(); ++i)
      l += static_cast<double>(outs[k].data<float>()[i]) * cot[k].data<float>()[i];
  }
  return l;
}
}  // namespace

void expect_gradients_match(const std::string& op, const std::vector<Tensor>& inputs,
                            const Attrs& attrs, GradCheckOptions opt) {
  SCOPED_TRACE("gradient check of op '" + op + "' attrs {" + attrs.str() + "}");
  gradchecked_ops().insert(op);
  Graph g;
  std::vector<Value> in;
  for (size_t i = 0; i < inputs.size(); ++i)
    in.push_back(g.placeholder("in" + std::to_string(i), inputs[i].dtype(), inputs[i].shape()));
  std::vector<Value> outs = g.add_node(op, in, attrs);
  Rng rng(opt.seed);
  std::vector<Value> ys, cots;
  std::vector<Tensor> cot_t(outs.size());
  for (size_t k = 0; k < outs.size(); ++k) {
    if (outs[k].dtype() != DType::kF32) continue;
    if (!opt.outputs.empty() &&
        std::find(opt.outputs.begin(), opt.outputs.end(), static_cast<int>(k)) == opt.outputs.end())
      continue;
    std::vector<ValueType> in_t;
    for (const auto& t : inputs) in_t.push_back({t.dtype(), t.shape()});
    Shape s = infer_op(find_op(op), in_t, attrs)[k].shape;
    cot_t[k] = random_tensor(s, rng, 0.5f, 1.5f);
    ys.push_back(outs[k]);
    cots.push_back(g.constant(cot_t[k]));
  }
  ASSERT_FALSE(ys.empty()) << "op has no f32 output";
  std::vector<int> wrt = opt.wrt;
  if (wrt.empty())
    for (size_t i = 0; i < inputs.size(); ++i)
      if (inputs[i].dtype() == DType::kF32) wrt.push_back(static_cast<int>(i));
  std::vector<Value> wrt_v;
  for (int i : wrt) wrt_v.push_back(in[i]);
  std::vector<Value> grads = gradients(ys, wrt_v, cots);
  g.verify();
  Executor ex(g, grads);
  std::vector<std::pair<Value, Tensor>> feeds;
  for (size_t i = 0; i < inputs.size(); ++i) feeds.emplace_back(in[i], inputs[i]);
  std::vector<Tensor> analytic = ex.run(feeds);

  for (size_t j = 0; j < wrt.size(); ++j) {
    int i = wrt[j];
    std::vector<Tensor> x = inputs;
    x[i] = inputs[i].clone();
    Tensor numeric(inputs[i].shape(), DType::kF32);
    float* px = x[i].data<float>();
    for (int64_t e = 0; e < x[i].numel(); ++e) {
      float orig = px[e];
      px[e] = orig + static_cast<float>(opt.eps);
      double lp = objective(op, x, attrs, cot_t);
      px[e] = orig - static_cast<float>(opt.eps);
      double lm = objective(op, x, attrs, cot_t);
      px[e] = orig;
      numeric.data<float>()[e] = static_cast<float>((lp - lm) / (2 * opt.eps));
    }
    EXPECT_TRUE(tensors_near(analytic[j], numeric, opt.atol, opt.rtol))
        << "gradient w.r.t. input " << i << "\nanalytic: " << analytic[j].str(8)
        << "\nnumeric:  " << numeric.str(8);
  }
}

int expect_fast_matches_reference(const std::string& op, const std::vector<Tensor>& inputs,
                                  const Attrs& attrs, double atol, double rtol,
                                  const std::function<bool(const FastKernel&)>& which) {
  SCOPED_TRACE("fast vs reference of op '" + op + "' attrs {" + attrs.str() + "}");
  const OpDef& def = find_op(op);
  std::vector<Tensor> ref = run_op(def, inputs, attrs, KernelChoice::kReference);
  int ran = 0;
  auto run_fast = [&](const std::vector<Tensor>& in, const std::vector<Tensor>& want,
                      const char* what) {
    int n = 0;
    for (const FastKernel& fk : def.fast) {
      if (which && !which(fk)) continue;
      std::vector<Tensor> outs;
      if (!run_listed_kernel(def, fk, in, attrs, outs)) continue;
      ++n;
      note_kernel_checked(fk, in);
      for (size_t k = 0; k < outs.size(); ++k)
        EXPECT_TRUE(tensors_near(outs[k], want[k], atol, rtol))
            << "fast kernel " << fk.name << ", output " << k << what;
    }
    return n;
  };
  ran = run_fast(inputs, ref, "");
  // An op whose inputs are all integers (the int8 ops) has no value to poison: its non-finite
  // check holds vacuously once a fast row ran.
  const bool any_float = std::any_of(inputs.begin(), inputs.end(),
                                     [](const Tensor& t) { return t.dtype() == DType::kF32; });
  if (ran > 0 && !any_float) nonfinite_checked_ops().insert(op);
  // The same with NaN, +Inf and -Inf in the first f32 input (issue 14: one rule for non-finite
  // values everywhere; the reference is the rule): NaN where the reference has NaN, the same
  // infinities, finite values as above.
  if (ran > 0 && !inputs.empty() && inputs[0].dtype() == DType::kF32 && inputs[0].numel() > 0) {
    std::vector<Tensor> poisoned = inputs;
    poisoned[0] = inputs[0].clone();
    float* p = poisoned[0].data<float>();
    const int64_t n = poisoned[0].numel();
    p[0] = std::numeric_limits<float>::quiet_NaN();
    if (n >= 3) {
      p[n / 2] = std::numeric_limits<float>::infinity();
      p[n - 1] = -std::numeric_limits<float>::infinity();
    }
    std::vector<Tensor> ref_p = run_op(def, poisoned, attrs, KernelChoice::kReference);
    if (run_fast(poisoned, ref_p, " (with NaN, +Inf, -Inf in input 0)") > 0)
      nonfinite_checked_ops().insert(op);
  }
  return ran;
}

}  // namespace lowbit::testing
