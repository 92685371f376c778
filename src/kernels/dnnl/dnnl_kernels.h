// oneDNN (DNNL) fast kernels for f32 matmul and 2-D convolution. Same signatures and layouts
// as the reference kernels (kernels/reference/matmul.h, kernels/reference/conv.h): NHWC
// activations, HWIO filters ([k_h, k_w, in_c / groups, out_c]), row-major matrices.
//
// How they run:
//   - one CPU engine and stream for the process;
//   - a primitive cache keyed by (kernel, params, thread count): creating a oneDNN primitive
//     costs tens of microseconds, so each geometry is created once. The thread count is part
//     of the key because oneDNN fixes its work split (and scratchpad size) at creation time;
//   - the scratchpad is user-managed (dnnl::scratchpad_mode::user) and lives, with the
//     buffers of any layout reorders, in process-wide buffers that only grow: no allocation
//     per call once a geometry has run;
//   - calls are serialised by one mutex (the buffers are shared); each call parallelises
//     internally over omp_get_max_threads() threads (lowbit::set_num_threads).
//
// Numerics: f32 accumulation in oneDNN's own order (the references sum in double), so results
// differ from the reference by rounding only (tests: atol ~ 1e-5 * sqrt(K) for inputs of order
// 1). At a fixed thread count the results are deterministic run to run.
//
// `*_supported` says whether the kernel handles the geometry (oneDNN accepts it and it is not
// so small that the reference is faster); calling a kernel on an unsupported geometry aborts.
#pragma once

#include <cstddef>
#include <string>

#include "kernels/conv_params.h"
#include "kernels/reference/matmul.h"

namespace lowbit::kernels {

// C[b] = op(A[b]) * op(B[b]); see MatMulParams.
void matmul_f32__dnnl(const MatMulParams& p, const float* a, const float* b, float* c);
// y = conv2d(x, w); x [n,in_h,in_w,in_c], w [k_h,k_w,in_c/groups,out_c], y [n,out_h,out_w,out_c].
void conv2d_forward_f32__dnnl(const Conv2DParams& p, const float* x, const float* w, float* y);
// dx = d(sum(y * dy)) / dx, overwritten.
void conv2d_backward_input_f32__dnnl(const Conv2DParams& p, const float* dy, const float* w,
                                     float* dx);
// dw = d(sum(y * dy)) / dw, overwritten.
void conv2d_backward_filter_f32__dnnl(const Conv2DParams& p, const float* x, const float* dy,
                                      float* dw);

bool matmul_f32__dnnl_supported(const MatMulParams& p);
bool conv2d_forward_f32__dnnl_supported(const Conv2DParams& p);
bool conv2d_backward_input_f32__dnnl_supported(const Conv2DParams& p);
bool conv2d_backward_filter_f32__dnnl_supported(const Conv2DParams& p);

// For benchmarks and tests: how the kernels are set up.
namespace dnnl_tuning {

// Filter layout handed to the convolution primitives. kPlain describes our HWIO filters as they
// are (no copy); kBlocked lets oneDNN pick its preferred (blocked) filter layout and reorders
// the filters (or the filter gradient) on every call — filters change every training step, so
// a reordered copy cannot be cached. Activations always stay NHWC. Default kBlocked: 1.3-3x
// faster on the benchmark CNN's layers (bench/matmul_conv_bench.cc), except backward-input
// into one channel, which always prefers kPlain. When the preferred layout only gets oneDNN's
// slow reference implementation, the other one is used.
enum class ConvFilterLayout { kPlain, kBlocked };
void set_conv_filter_layout(ConvFilterLayout layout);
ConvFilterLayout conv_filter_layout();

// When false, *_supported ignores the size thresholds (oneDNN runs even where the reference
// would be faster); tests use it to exercise oneDNN on tiny shapes. Default true.
void set_size_thresholds(bool enabled);

// oneDNN implementation chosen for a geometry at the current thread count ("" if unsupported),
// e.g. "brg:avx512_core" or "jit:avx512_common".
std::string matmul_impl(const MatMulParams& p);
std::string conv2d_forward_impl(const Conv2DParams& p);
std::string conv2d_backward_input_impl(const Conv2DParams& p);
std::string conv2d_backward_filter_impl(const Conv2DParams& p);

// Cached primitives (including cached "unsupported" answers), and bytes held by the persistent
// scratchpad/reorder buffers.
size_t cache_size();
size_t buffer_bytes();
void clear_cache();

}  // namespace dnnl_tuning
}  // namespace lowbit::kernels
