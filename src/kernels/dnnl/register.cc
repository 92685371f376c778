// oneDNN fast kernels, added to ops registered by the op families.
//
// Selection: a kernel runs when its `supports` says yes — f32 operands, a geometry oneDNN
// accepts (a primitive is created and cached on the first ask) and at least a few thousand
// multiply-adds (below that the plain-loop reference is as fast; see dnnl_kernels.cc for the
// measured thresholds). Otherwise the reference kernel runs.
#include "kernels/dnnl/dnnl_kernels.h"
#include "lowbit/op.h"
#include "ops/families.h"
#include "ops/linalg_common.h"

namespace lowbit::detail {
namespace {

bool all_f32(const KernelCtx& k) {
  for (const Tensor& t : k.in)
    if (t.dtype() != DType::kF32) return false;
  for (const Tensor& t : k.out)
    if (t.dtype() != DType::kF32) return false;
  return true;
}

kernels::MatMulParams mm(const KernelCtx& k) {
  return matmul_params(k.in[0].shape(), k.in[1].shape(), k.attrs);
}

}  // namespace

void register_dnnl_kernels() {
  add_fast_kernel("matmul", {.name = "matmul_f32__dnnl",
                             .supports =
                                 [](const KernelCtx& k) {
                                   return all_f32(k) && kernels::matmul_f32__dnnl_supported(mm(k));
                                 },
                             .run =
                                 [](const KernelCtx& k) {
                                   kernels::matmul_f32__dnnl(mm(k), k.in[0].data<float>(),
                                                             k.in[1].data<float>(),
                                                             k.out[0].data<float>());
                                 }});
}

}  // namespace lowbit::detail
