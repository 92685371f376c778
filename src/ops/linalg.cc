// Linear algebra ops: matmul (batched, with transposes) and its gradient.
#include "kernels/dnnl/dnnl_kernels.h"
#include "kernels/reference/matmul.h"
#include "lowbit/ops.h"
#include "ops/families.h"
#include "ops/linalg_common.h"
#include "ops/op_util.h"

namespace lowbit::detail {

namespace {

struct Dims {
  int64_t m, k_a, k_b, n;
};
Dims matrix_dims(const Shape& a, const Shape& b, bool ta, bool tb) {
  return {ta ? a[-1] : a[-2], ta ? a[-2] : a[-1], tb ? b[-1] : b[-2], tb ? b[-2] : b[-1]};
}

std::vector<int64_t> batch_dims(const Shape& s) { return {s.dims().begin(), s.dims().end() - 2}; }

int64_t product(const std::vector<int64_t>& v) {
  int64_t p = 1;
  for (int64_t d : v) p *= d;
  return p;
}

}  // namespace

Shape matmul_shape(const std::string& op, const Shape& a, const Shape& b, const Attrs& attrs) {
  const bool ta = attrs.b("transpose_a", false), tb = attrs.b("transpose_b", false);
  const bool sum_batch = attrs.b("sum_batch", false);
  if (a.rank() < 2)
    LOWBIT_THROW(ShapeError, op, ": argument 'a': expected rank >= 2 [..., M, K] but found shape ",
                 a.str());
  if (b.rank() < 2)
    LOWBIT_THROW(ShapeError, op, ": argument 'b': expected rank >= 2 [..., K, N] but found shape ",
                 b.str());
  const Dims d = matrix_dims(a, b, ta, tb);
  if (!dims_compatible(d.k_a, d.k_b))
    LOWBIT_THROW(ShapeError, op, ": argument 'b': inner dimensions differ: expected ",
                 tb ? "[...,*," : "[...,", d.k_a, tb ? "]" : ",*]", " but found ", b.str(),
                 " (a is ", a.str(), ta ? ", transposed" : "", ")");
  std::vector<int64_t> batch;
  const auto ba = batch_dims(a), bb = batch_dims(b);
  if (sum_batch) {
    if (!ta || tb)
      LOWBIT_THROW(ValueError, op,
                   ": attribute 'sum_batch': expected transpose_a=true and "
                   "transpose_b=false but found transpose_a=",
                   ta, ", transpose_b=", tb);
    if (ba.empty() || ba.size() != bb.size())
      LOWBIT_THROW(ShapeError, op,
                   ": sum_batch: expected a and b with the same batch dims but found ", a.str(),
                   " and ", b.str());
  }
  if (!ba.empty() && !bb.empty()) {
    bool ok = ba.size() == bb.size();
    for (size_t i = 0; ok && i < ba.size(); ++i) ok = dims_compatible(ba[i], bb[i]);
    if (!ok)
      LOWBIT_THROW(ShapeError, op,
                   ": batch dimensions differ: expected b with batch dims equal "
                   "to a's (or a rank-2 operand) but found a ",
                   a.str(), " and b ", b.str());
    if (!sum_batch)
      for (size_t i = 0; i < ba.size(); ++i) batch.push_back(merge_dim(ba[i], bb[i]));
  } else {
    batch = ba.empty() ? bb : ba;
  }
  batch.push_back(d.m);
  batch.push_back(d.n);
  return Shape(std::move(batch));
}

kernels::MatMulParams matmul_params(const Shape& a, const Shape& b, const Attrs& attrs) {
  const bool ta = attrs.b("transpose_a", false), tb = attrs.b("transpose_b", false);
  const Dims d = matrix_dims(a, b, ta, tb);
  kernels::MatMulParams p;
  p.m = d.m, p.n = d.n, p.k = d.k_a, p.trans_a = ta, p.trans_b = tb;
  if (attrs.b("sum_batch", false)) {
    p.k *= product(batch_dims(a));  // [B,K,M] is [B*K,M] in memory; likewise b.
  } else if (b.rank() == 2 && !ta) {
    p.m *= product(batch_dims(a));  // [B,M,K] is [B*M,K] in memory.
  } else {
    p.batch = product(batch_dims(a.rank() > 2 ? a : b));
    p.a_batch_stride = a.rank() > 2 ? d.m * d.k_a : 0;
    p.b_batch_stride = b.rank() > 2 ? d.k_a * d.n : 0;
  }
  return p;
}

namespace {

Value matmul_v(const Value& a, const Value& b, bool ta, bool tb, bool sum_batch = false) {
  Attrs at;
  if (ta) at.set("transpose_a", true);
  if (tb) at.set("transpose_b", true);
  if (sum_batch) at.set("sum_batch", true);
  return ops::apply1("matmul", {a, b}, at);
}

// C = op_a(A) op_b(B) per batch. With G = dC:
//   dA = G op_b(B)^T  (stored transposed when transpose_a),
//   dB = op_a(A)^T G  (stored transposed when transpose_b),
// summed over the batch when the operand was a shared rank-2 matrix.
std::vector<Value> matmul_grad(const GradCtx& g) {
  const Value &a = g.in[0], &b = g.in[1];
  const Value dy = g.dy();
  const bool ta = g.attrs.b("transpose_a", false), tb = g.attrs.b("transpose_b", false);
  if (g.attrs.b("sum_batch", false)) {  // C = sum_b A[b]^T B[b]
    return {matmul_v(b, dy, false, true), matmul_v(a, dy, false, false)};
  }
  const bool shared_a = a.rank() == 2 && b.rank() > 2, shared_b = b.rank() == 2 && a.rank() > 2;
  Value da = ta ? matmul_v(b, dy, tb, true) : matmul_v(dy, b, false, !tb);
  if (shared_a) da = ops::sum_like(da, a);
  Value db;
  if (shared_b && !ta) {
    // a's batch dims fold into the contraction: one [B*M,K]^T x [B*M,N] product.
    db = tb ? matmul_v(dy, a, true, false, true) : matmul_v(a, dy, true, false, true);
  } else {
    db = tb ? matmul_v(dy, a, true, ta) : matmul_v(a, dy, !ta, false);
    if (shared_b) db = ops::sum_like(db, b);
  }
  return {da, db};
}

}  // namespace

void register_linalg_ops() {
  register_op(
      {.name = "matmul",
       .num_inputs = 2,
       .infer = [](const InferCtx& c) -> std::vector<ValueType> {
         require_float(c, 0, "a");
         require_float(c, 1, "b");
         return {{DType::kF32, matmul_shape(c.op, c.in[0].shape, c.in[1].shape, c.attrs)}};
       },
       .grad = matmul_grad,
       .prepare = [](const PrepareCtx& c) -> std::any {
         return matmul_params(c.in[0].shape, c.in[1].shape, c.attrs);
       },
       .reference =
           [](const KernelCtx& k) {
             kernels::matmul_f32_reference(k.params<kernels::MatMulParams>(), k.in[0].data<float>(),
                                           k.in[1].data<float>(), k.out[0].data<float>());
           },
       // oneDNN when its matmul_f32__dnnl_supported says yes (f32, not tiny).
       .fast = {{.name = "matmul_f32__dnnl",
                 .isa = Isa::kDnnl,
                 .supports =
                     [](const KernelCtx& k) {
                       return k.in[0].dtype() == DType::kF32 && k.in[1].dtype() == DType::kF32 &&
                              kernels::matmul_f32__dnnl_supported(
                                  k.params<kernels::MatMulParams>());
                     },
                 .run =
                     [](const KernelCtx& k) {
                       kernels::matmul_f32__dnnl(k.params<kernels::MatMulParams>(),
                                                 k.in[0].data<float>(), k.in[1].data<float>(),
                                                 k.out[0].data<float>());
                     }}},
       .doc = "batched matrix product op(a) @ op(b) (transpose_a, transpose_b)"});
}

}  // namespace lowbit::detail
