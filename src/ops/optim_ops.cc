// Fused optimizer updates (include/lowbit/ops/optim.h): each produces a variable's new value and
// new slots in one pass, with the f32 operations of the composed Keras formulas in the same
// order, so results match the composed graph bit for bit (no FMA contraction: the library is
// built for baseline x86-64/aarch64 without -ffast-math).
#include <cmath>

#include "kernels/fast/optim.h"
#include "lowbit/ops.h"
#include "ops/elementwise_common.h"
#include "ops/families.h"

namespace lowbit::detail {

namespace {

// w and the per-variable inputs named in `args` (indices into c.in) must be f32 of one shape;
// `scalar` must be an f32 scalar.
void require_update_inputs(const InferCtx& c,
                           std::initializer_list<std::pair<int, const char*>> args, int scalar,
                           const char* scalar_name) {
  for (const auto& [i, name] : args) require_float(c, i, name);
  require_float(c, scalar, scalar_name);
  require_rank(c, scalar, 0, scalar_name);
  const Shape& ws = c.in[0].shape;
  for (const auto& [i, name] : args) {
    const Shape& s = c.in[i].shape;
    bool ok = s.rank() == ws.rank();
    for (int d = 0; ok && d < s.rank(); ++d) ok = dims_compatible(s[d], ws[d]);
    if (!ok)
      LOWBIT_THROW(ShapeError, c.op, ": argument '", name, "' must have the shape of 'w' ",
                   ws.str(), " but found ", type_str(c.in[i]));
  }
}

std::vector<ValueType> infer_adam(const InferCtx& c) {
  if (c.in.size() != 5 && c.in.size() != 6)
    LOWBIT_THROW(ValueError, c.op,
                 ": expected 5 inputs (w, g, m, v, alpha) or 6 (w, g, m, v, alpha, vhat) but "
                 "found ",
                 c.in.size());
  const bool ams = c.in.size() == 6;
  if (ams)
    require_update_inputs(c, {{0, "w"}, {1, "g"}, {2, "m"}, {3, "v"}, {5, "vhat"}}, 4, "alpha");
  else
    require_update_inputs(c, {{0, "w"}, {1, "g"}, {2, "m"}, {3, "v"}}, 4, "alpha");
  for (const char* a : {"beta_1", "beta_2", "epsilon"})
    if (!c.attrs.has(a)) LOWBIT_THROW(ValueError, c.op, ": attribute '", a, "' is missing");
  return std::vector<ValueType>(ams ? 4 : 3, c.in[0]);
}

void adam_kernel(const KernelCtx& k) {
  const bool ams = k.in.size() == 6;
  const kernels::AdamParams& p = k.params<kernels::AdamParams>();
  const float c1 = p.c1, c2 = p.c2, eps = p.epsilon;
  const float* w = k.in[0].data<float>();
  const float* g = k.in[1].data<float>();
  const float* m = k.in[2].data<float>();
  const float* v = k.in[3].data<float>();
  const float alpha = k.in[4].data<float>()[0];
  float* wo = k.out[0].data<float>();
  float* mo = k.out[1].data<float>();
  float* vo = k.out[2].data<float>();
  const int64_t n = k.out[0].numel();
  if (!ams) {
    for_each_index(n, [=](int64_t i) {
      const float gi = g[i];
      const float mn = m[i] + (gi - m[i]) * c1;
      const float vn = v[i] + (gi * gi - v[i]) * c2;
      mo[i] = mn;
      vo[i] = vn;
      wo[i] = w[i] - (mn * alpha) / (std::sqrt(vn) + eps);
    });
    return;
  }
  const float* vh = k.in[5].data<float>();
  float* vho = k.out[3].data<float>();
  for_each_index(n, [=](int64_t i) {
    const float gi = g[i];
    const float mn = m[i] + (gi - m[i]) * c1;
    const float vn = v[i] + (gi * gi - v[i]) * c2;
    const float a = vh[i];
    const float vhn = (std::isnan(a) || a >= vn) ? a : vn;  // ops::maximum(vhat, v')
    mo[i] = mn;
    vo[i] = vn;
    vho[i] = vhn;
    wo[i] = w[i] - (mn * alpha) / (std::sqrt(vhn) + eps);
  });
}

std::vector<ValueType> infer_sgd(const InferCtx& c) {
  require_update_inputs(c, {{0, "w"}, {1, "g"}, {2, "m"}}, 3, "lr");
  if (!c.attrs.has("momentum")) LOWBIT_THROW(ValueError, c.op, ": attribute 'momentum' is missing");
  return std::vector<ValueType>(2, c.in[0]);
}

void sgd_kernel(const KernelCtx& k) {
  const float mom = k.params<kernels::SgdParams>().momentum;
  const bool nesterov = k.params<kernels::SgdParams>().nesterov;
  const float* w = k.in[0].data<float>();
  const float* g = k.in[1].data<float>();
  const float* m = k.in[2].data<float>();
  const float lr = k.in[3].data<float>()[0];
  float* wo = k.out[0].data<float>();
  float* mo = k.out[1].data<float>();
  const int64_t n = k.out[0].numel();
  if (nesterov) {
    for_each_index(n, [=](int64_t i) {
      const float gl = g[i] * lr;
      const float mn = m[i] * mom - gl;
      mo[i] = mn;
      wo[i] = w[i] + (mn * mom - gl);
    });
  } else {
    for_each_index(n, [=](int64_t i) {
      const float mn = m[i] * mom - g[i] * lr;
      mo[i] = mn;
      wo[i] = w[i] + mn;
    });
  }
}

}  // namespace

void register_optim_ops() {
  register_op({.name = "adam_update",
               .num_inputs = -1,
               .infer = infer_adam,
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return kernels::AdamParams{static_cast<float>(1.0 - c.attrs.f("beta_1")),
                                            static_cast<float>(1.0 - c.attrs.f("beta_2")),
                                            static_cast<float>(c.attrs.f("epsilon"))};
               },
               .reference = adam_kernel,
               // AMSGrad (a sixth input) keeps the reference kernel.
               .fast = {{.name = "adam_update_f32__avx512",
                         .isa = Isa::kAvx512,
                         .supports = [](const KernelCtx& k) { return k.in.size() == 5; },
                         .run =
                             [](const KernelCtx& k) {
                               kernels::adam_update_f32__avx512(
                                   k.params<kernels::AdamParams>(), k.out[0].numel(),
                                   k.in[0].data<float>(), k.in[1].data<float>(),
                                   k.in[2].data<float>(), k.in[3].data<float>(),
                                   k.in[4].data<float>()[0], k.out[0].data<float>(),
                                   k.out[1].data<float>(), k.out[2].data<float>());
                             }}},
               .doc = "fused Adam step: (w, g, m, v, alpha[, vhat]) -> (w', m', v'[, vhat'])"});
  register_op({.name = "sgd_momentum_update",
               .num_inputs = 4,
               .infer = infer_sgd,
               .prepare = [](const PrepareCtx& c) -> std::any {
                 return kernels::SgdParams{static_cast<float>(c.attrs.f("momentum")),
                                           c.attrs.b("nesterov", false)};
               },
               .reference = sgd_kernel,
               .fast = {{.name = "sgd_momentum_update_f32__avx512",
                         .isa = Isa::kAvx512,
                         .run =
                             [](const KernelCtx& k) {
                               kernels::sgd_momentum_update_f32__avx512(
                                   k.params<kernels::SgdParams>(), k.out[0].numel(),
                                   k.in[0].data<float>(), k.in[1].data<float>(),
                                   k.in[2].data<float>(), k.in[3].data<float>()[0],
                                   k.out[0].data<float>(), k.out[1].data<float>());
                             }}},
               .doc = "fused SGD momentum step: (w, g, m, lr) -> (w', m')"});
}

}  // namespace lowbit::detail
