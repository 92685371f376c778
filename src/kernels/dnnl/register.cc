// oneDNN fast kernels, added to ops registered by the op families.
//
// Selection: a kernel runs when its `supports` says yes — f32 operands, a geometry oneDNN
// accepts (a primitive is created and cached on the first ask) and at least a few thousand
// multiply-adds (below that the plain-loop reference is as fast; see dnnl_kernels.cc for the
// measured thresholds). Otherwise the reference kernel runs.
#include "kernels/dnnl/dnnl_kernels.h"
#include "lowbit/op.h"
#include "ops/conv_common.h"
#include "ops/families.h"
#include "ops/linalg_common.h"

namespace lowbit::detail {
namespace {

// The two data inputs and the output are f32 (a "like" input is only read for its shape).
bool f32_operands(const KernelCtx& k) {
  return k.in[0].dtype() == DType::kF32 && k.in[1].dtype() == DType::kF32 &&
         k.out[0].dtype() == DType::kF32;
}
const float* in_f(const KernelCtx& k, int i) { return k.in[i].data<float>(); }
float* out_f(const KernelCtx& k) { return k.out[0].data<float>(); }

kernels::MatMulParams mm(const KernelCtx& k) {
  return matmul_params(k.in[0].shape(), k.in[1].shape(), k.attrs);
}
// Geometry of conv2d(x, w); conv2d_backward_input(dy, w, x_like);
// conv2d_backward_filter(x, dy, w_like).
kernels::Conv2DParams conv_fwd(const KernelCtx& k) {
  return conv2d_params(k.in[0].shape(), k.in[1].shape(), k.attrs);
}
kernels::Conv2DParams conv_bwd_input(const KernelCtx& k) {
  return conv2d_params(k.in[2].shape(), k.in[1].shape(), k.attrs);
}
kernels::Conv2DParams conv_bwd_filter(const KernelCtx& k) {
  return conv2d_params(k.in[0].shape(), k.in[2].shape(), k.attrs);
}

}  // namespace

void register_dnnl_kernels() {
  add_fast_kernel("matmul",
                  {.name = "matmul_f32__dnnl",
                   .supports =
                       [](const KernelCtx& k) {
                         return f32_operands(k) && kernels::matmul_f32__dnnl_supported(mm(k));
                       },
                   .run =
                       [](const KernelCtx& k) {
                         kernels::matmul_f32__dnnl(mm(k), in_f(k, 0), in_f(k, 1), out_f(k));
                       }});
  add_fast_kernel("conv2d", {.name = "conv2d_forward_f32__dnnl",
                             .supports =
                                 [](const KernelCtx& k) {
                                   return f32_operands(k) &&
                                          kernels::conv2d_forward_f32__dnnl_supported(conv_fwd(k));
                                 },
                             .run =
                                 [](const KernelCtx& k) {
                                   kernels::conv2d_forward_f32__dnnl(conv_fwd(k), in_f(k, 0),
                                                                     in_f(k, 1), out_f(k));
                                 }});
  add_fast_kernel(
      "conv2d_backward_input",
      {.name = "conv2d_backward_input_f32__dnnl",
       .supports =
           [](const KernelCtx& k) {
             return f32_operands(k) &&
                    kernels::conv2d_backward_input_f32__dnnl_supported(conv_bwd_input(k));
           },
       .run =
           [](const KernelCtx& k) {
             kernels::conv2d_backward_input_f32__dnnl(conv_bwd_input(k), in_f(k, 0), in_f(k, 1),
                                                      out_f(k));
           }});
  add_fast_kernel(
      "conv2d_backward_filter",
      {.name = "conv2d_backward_filter_f32__dnnl",
       .supports =
           [](const KernelCtx& k) {
             return f32_operands(k) &&
                    kernels::conv2d_backward_filter_f32__dnnl_supported(conv_bwd_filter(k));
           },
       .run =
           [](const KernelCtx& k) {
             kernels::conv2d_backward_filter_f32__dnnl(conv_bwd_filter(k), in_f(k, 0), in_f(k, 1),
                                                       out_f(k));
           }});
}

}  // namespace lowbit::detail
