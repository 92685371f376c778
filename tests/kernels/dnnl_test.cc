// oneDNN fast kernels against the reference kernels: matmul (every transpose/batch layout,
// broadcast and padded batch strides) and conv2d forward / backward-input / backward-filter
// (groups, depthwise, dilation, strides, even kernels with 'same', asymmetric explicit pads,
// batch 1, one channel), called directly and through the op registry; plus the cache,
// determinism and thread-count behaviour.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/dnnl/dnnl_kernels.h"
#include "kernels/reference/conv.h"
#include "kernels/reference/matmul.h"
#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "lowbit/threads.h"
#include "ops/conv_common.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using kernels::Conv2DParams;
using kernels::MatMulParams;
namespace tuning = kernels::dnnl_tuning;
using testing::tensors_near;

// Tolerance. Both sides multiply the same f32 inputs; the reference sums the K products in
// double and rounds once, oneDNN sums in f32 in its own (blocked, vectorised) order. For inputs
// of order 1 the f32 rounding error of a K-term sum grows like eps * sqrt(K) * |partial sum|
// ~ 1e-8 * K (random-walk partial sums of size ~sqrt(K)/3), which stays below
// kAtolPerSqrtK * sqrt(K) for K up to 1e6. A wrong index or a missed term is off by O(0.1).
constexpr double kAtolPerSqrtK = 1e-5;
constexpr double kRtol = 1e-5;

double atol_for(int64_t k) { return kAtolPerSqrtK * std::sqrt(static_cast<double>(k)); }

Tensor random(const Shape& s, uint64_t seed) {
  Rng rng(seed);
  return testing::random_tensor(s, rng);
}

// Runs oneDNN on tiny shapes too (below its size threshold) for the duration of a test.
class DnnlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    threads_ = num_threads();
    tuning::set_size_thresholds(false);
  }
  void TearDown() override {
    tuning::set_size_thresholds(true);
    tuning::set_conv_filter_layout(layout_);
    set_num_threads(threads_);
  }
  int threads_ = 1;
  tuning::ConvFilterLayout layout_ = tuning::conv_filter_layout();
};

// ---- matmul ----

struct MatMulCase {
  int64_t batch, m, n, k;
  bool ta, tb;
  int64_t a_stride, b_stride;  // -1: dense (m*k / k*n), 0: broadcast, else as given
};

MatMulParams to_params(const MatMulCase& c) {
  MatMulParams p;
  p.batch = c.batch, p.m = c.m, p.n = c.n, p.k = c.k, p.trans_a = c.ta, p.trans_b = c.tb;
  p.a_batch_stride = c.batch == 1 ? 0 : c.a_stride < 0 ? c.m * c.k : c.a_stride;
  p.b_batch_stride = c.batch == 1 ? 0 : c.b_stride < 0 ? c.k * c.n : c.b_stride;
  return p;
}

int64_t operand_elems(int64_t batch, int64_t stride, int64_t rows, int64_t cols) {
  return stride == 0 ? rows * cols : (batch - 1) * stride + rows * cols;
}

void check_matmul(const MatMulCase& c) {
  const MatMulParams p = to_params(c);
  SCOPED_TRACE(::testing::Message()
               << "batch " << p.batch << " m " << p.m << " n " << p.n << " k " << p.k << " ta "
               << p.trans_a << " tb " << p.trans_b << " strides " << p.a_batch_stride << ","
               << p.b_batch_stride << " threads " << num_threads());
  ASSERT_TRUE(kernels::matmul_f32__dnnl_supported(p));
  Tensor a = random({operand_elems(p.batch, p.a_batch_stride, p.m, p.k)}, 1);
  Tensor b = random({operand_elems(p.batch, p.b_batch_stride, p.k, p.n)}, 2);
  Tensor want({p.batch * p.m * p.n}, DType::kF32), got({p.batch * p.m * p.n}, DType::kF32);
  got.fill(12345);  // every element must be overwritten
  kernels::matmul_f32_reference(p, a.data<float>(), b.data<float>(), want.data<float>());
  kernels::matmul_f32__dnnl(p, a.data<float>(), b.data<float>(), got.data<float>());
  EXPECT_TRUE(tensors_near(got, want, atol_for(p.k), kRtol));
}

TEST_F(DnnlTest, MatMulMatchesReferenceOnEdgeSizes) {
  const int64_t sizes[][3] = {{1, 1, 1},      {1, 7, 1},       {5, 1, 3},    {2, 3, 4},
                              {17, 31, 13},   {16, 16, 16},    {15, 17, 33}, {64, 256, 256},
                              {64, 784, 256}, {257, 129, 300}, {1, 1000, 37}};
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (const auto& s : sizes)
      for (bool ta : {false, true})
        for (bool tb : {false, true}) check_matmul({1, s[0], s[1], s[2], ta, tb, -1, -1});
  }
}

TEST_F(DnnlTest, MatMulBatchedAndBroadcast) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_matmul({3, 5, 7, 11, ta, tb, -1, -1});  // both batched
      check_matmul({4, 13, 9, 6, ta, tb, 0, -1});   // a shared (rank-2)
      check_matmul({4, 13, 9, 6, ta, tb, -1, 0});   // b shared
      check_matmul({3, 8, 5, 4, ta, tb, 0, 0});     // both shared: batch copies
      check_matmul({2, 33, 65, 17, ta, tb, -1, -1});
    }
}

TEST_F(DnnlTest, MatMulPaddedBatchStrides) {
  // Batches that do not touch: gaps between matrices (a sliced tensor).
  check_matmul({3, 4, 6, 5, false, false, 4 * 5 + 7, 5 * 6 + 3});
  check_matmul({3, 4, 6, 5, true, true, 4 * 5 + 1, 5 * 6 + 11});
}

TEST_F(DnnlTest, MatMulSizeThreshold) {
  tuning::set_size_thresholds(true);
  EXPECT_FALSE(kernels::matmul_f32__dnnl_supported(to_params({1, 1, 1, 1, false, false, 0, 0})));
  EXPECT_TRUE(kernels::matmul_f32__dnnl_supported(to_params({1, 64, 64, 64, false, false, 0, 0})));
  // Invalid geometry is declined, not crashed on.
  MatMulParams bad;
  bad.m = 0;
  EXPECT_FALSE(kernels::matmul_f32__dnnl_supported(bad));
}

TEST_F(DnnlTest, MatMulThroughRegistry) {
  struct Case {
    Shape a, b;
    bool ta, tb;
  };
  const Case cases[] = {{{64, 784}, {784, 256}, false, false},
                        {{31, 17}, {31, 13}, true, false},
                        {{5, 7, 11}, {5, 13, 11}, false, true},
                        {{4, 9, 16}, {16, 32}, false, false},  // batch folded into M
                        {{9, 16}, {4, 16, 32}, false, false},  // shared a
                        {{2, 3, 8, 16}, {2, 3, 16, 8}, true, true}};
  tuning::set_size_thresholds(true);
  int seed = 10;
  for (const Case& c : cases) {
    Tensor a = random(c.a, seed++), b = random(c.b, seed++);
    Attrs attrs{{"transpose_a", c.ta}, {"transpose_b", c.tb}};
    const int64_t k = c.ta ? c.a[c.a.rank() - 2] : c.a[c.a.rank() - 1];
    EXPECT_GE(testing::expect_fast_matches_reference("matmul", {a, b}, attrs, atol_for(k), kRtol),
              1)
        << "oneDNN kernel did not run for " << c.a.str() << " x " << c.b.str();
  }
  // Below the threshold the fast kernel declines and the reference runs.
  EXPECT_EQ(
      testing::expect_fast_matches_reference("matmul", {random({2, 2}, 1), random({2, 2}, 2)}), 0);
}

TEST_F(DnnlTest, MatMulDeterministicAndCached) {
  const MatMulParams p = to_params({1, 200, 300, 500, false, true, 0, 0});
  Tensor a = random({p.m * p.k}, 3), b = random({p.k * p.n}, 4);
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    Tensor c1({p.m * p.n}, DType::kF32), c2({p.m * p.n}, DType::kF32);
    kernels::matmul_f32__dnnl(p, a.data<float>(), b.data<float>(), c1.data<float>());
    const size_t entries = tuning::cache_size(), bytes = tuning::buffer_bytes();
    kernels::matmul_f32__dnnl(p, a.data<float>(), b.data<float>(), c2.data<float>());
    EXPECT_EQ(std::memcmp(c1.raw(), c2.raw(), c1.nbytes()), 0) << "threads " << threads;
    EXPECT_EQ(tuning::cache_size(), entries) << "a repeated call must reuse the primitive";
    EXPECT_EQ(tuning::buffer_bytes(), bytes) << "a repeated call must not grow the buffers";
  }
}

// ---- conv2d ----

struct ConvCase {
  int64_t n, h, w, c, kh, kw, oc, groups, sh, sw, dh, dw;
  int padding;           // 0 valid, 1 same, 2 explicit
  int64_t pads[4] = {};  // top, bottom, left, right (explicit)
};

Conv2DParams conv_params(const ConvCase& c) {
  Conv2DParams p;
  p.n = c.n, p.in_h = c.h, p.in_w = c.w, p.in_c = c.c, p.k_h = c.kh, p.k_w = c.kw, p.out_c = c.oc;
  p.groups = c.groups, p.stride_h = c.sh, p.stride_w = c.sw, p.dil_h = c.dh, p.dil_w = c.dw;
  if (c.padding == 2) {
    p.pad_top = c.pads[0], p.pad_bottom = c.pads[1], p.pad_left = c.pads[2],
    p.pad_right = c.pads[3];
    p.out_h = (c.h + p.pad_top + p.pad_bottom - ((c.kh - 1) * c.dh + 1)) / c.sh + 1;
    p.out_w = (c.w + p.pad_left + p.pad_right - ((c.kw - 1) * c.dw + 1)) / c.sw + 1;
  } else {
    EXPECT_TRUE(kernels::window_geometry(c.h, c.kh, c.sh, c.dh, c.padding == 1, &p.out_h,
                                         &p.pad_top, &p.pad_bottom));
    EXPECT_TRUE(kernels::window_geometry(c.w, c.kw, c.sw, c.dw, c.padding == 1, &p.out_w,
                                         &p.pad_left, &p.pad_right));
  }
  return p;
}

const ConvCase kConvCases[] = {
    // n  h   w   c  kh kw oc  g  sh sw dh dw pad
    {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0},                // everything 1
    {1, 5, 5, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1},                // one channel in and out
    {2, 7, 9, 3, 3, 3, 5, 1, 1, 1, 1, 1, 1},                // odd sizes, same
    {3, 13, 11, 4, 3, 3, 6, 1, 2, 2, 1, 1, 1},              // prime spatial, stride 2 same
    {2, 8, 8, 3, 2, 2, 4, 1, 1, 1, 1, 1, 1},                // even kernel, same: pad (0, 1)
    {2, 9, 10, 5, 4, 4, 3, 1, 1, 1, 1, 1, 1},               // even kernel 4, same: pad (1, 2)
    {1, 12, 12, 6, 3, 3, 4, 2, 1, 1, 1, 1, 1},              // groups 2
    {2, 10, 10, 8, 3, 3, 8, 8, 1, 1, 1, 1, 1},              // depthwise
    {1, 11, 13, 6, 3, 3, 9, 3, 2, 1, 1, 1, 0},              // groups 3, stride (2,1), valid
    {2, 15, 15, 3, 3, 3, 4, 1, 1, 1, 2, 2, 1},              // dilation 2, same
    {1, 16, 14, 2, 3, 2, 3, 1, 2, 1, 3, 2, 0},              // dilation (3,2), valid
    {2, 9, 8, 3, 3, 3, 2, 1, 1, 1, 1, 1, 2, {1, 2, 0, 3}},  // asymmetric explicit pads
    {1, 10, 10, 4, 2, 2, 4, 1, 3, 3, 1, 1, 0},              // stride > kernel
    {2, 6, 6, 5, 6, 6, 7, 1, 1, 1, 1, 1, 0},                // kernel = input: 1x1 output
    {2, 5, 7, 16, 1, 1, 32, 1, 1, 1, 1, 1, 0},              // 1x1 conv
    {4, 28, 28, 1, 3, 3, 32, 1, 1, 1, 1, 1, 1},             // bench CNN conv1 (smaller batch)
    {4, 28, 28, 32, 3, 3, 64, 1, 2, 2, 1, 1, 1},            // conv2
    {4, 14, 14, 64, 3, 3, 64, 1, 2, 2, 1, 1, 1},            // conv3
    {1, 17, 19, 37, 5, 5, 29, 1, 1, 1, 1, 1, 1},            // prime channels, 5x5
};

enum class Dir { kForward, kBackwardInput, kBackwardFilter };

void check_conv(const ConvCase& cc, Dir dir) {
  const Conv2DParams p = conv_params(cc);
  SCOPED_TRACE(::testing::Message()
               << "conv n" << p.n << " " << p.in_h << "x" << p.in_w << "x" << p.in_c << " k "
               << p.k_h << "x" << p.k_w << " oc " << p.out_c << " g " << p.groups << " s "
               << p.stride_h << "," << p.stride_w << " d " << p.dil_h << "," << p.dil_w << " pads "
               << p.pad_top << "," << p.pad_bottom << "," << p.pad_left << "," << p.pad_right
               << " dir " << static_cast<int>(dir) << " blocked "
               << (tuning::conv_filter_layout() == tuning::ConvFilterLayout::kBlocked)
               << " threads " << num_threads());
  const Shape xs{p.n, p.in_h, p.in_w, p.in_c}, ws{p.k_h, p.k_w, p.in_c / p.groups, p.out_c},
      ys{p.n, p.out_h, p.out_w, p.out_c};
  Tensor x = random(xs, 1), w = random(ws, 2), dy = random(ys, 3);
  const int64_t cig = p.in_c / p.groups, cog = p.out_c / p.groups;
  if (dir == Dir::kForward) {
    ASSERT_TRUE(kernels::conv2d_forward_f32__dnnl_supported(p));
    Tensor want(ys, DType::kF32), got = Tensor::full(ys, 12345);
    kernels::conv2d_forward_f32_reference(p, x.data<float>(), w.data<float>(), want.data<float>());
    kernels::conv2d_forward_f32__dnnl(p, x.data<float>(), w.data<float>(), got.data<float>());
    EXPECT_TRUE(tensors_near(got, want, atol_for(p.k_h * p.k_w * cig), kRtol));
  } else if (dir == Dir::kBackwardInput) {
    ASSERT_TRUE(kernels::conv2d_backward_input_f32__dnnl_supported(p));
    Tensor want(xs, DType::kF32), got = Tensor::full(xs, 12345);
    kernels::conv2d_backward_input_f32_reference(p, dy.data<float>(), w.data<float>(),
                                                 want.data<float>());
    kernels::conv2d_backward_input_f32__dnnl(p, dy.data<float>(), w.data<float>(),
                                             got.data<float>());
    EXPECT_TRUE(tensors_near(got, want, atol_for(p.k_h * p.k_w * cog), kRtol));
  } else {
    ASSERT_TRUE(kernels::conv2d_backward_filter_f32__dnnl_supported(p));
    Tensor want(ws, DType::kF32), got = Tensor::full(ws, 12345);
    kernels::conv2d_backward_filter_f32_reference(p, x.data<float>(), dy.data<float>(),
                                                  want.data<float>());
    kernels::conv2d_backward_filter_f32__dnnl(p, x.data<float>(), dy.data<float>(),
                                              got.data<float>());
    EXPECT_TRUE(tensors_near(got, want, atol_for(p.n * p.out_h * p.out_w), kRtol));
  }
}

class DnnlConvTest : public DnnlTest, public ::testing::WithParamInterface<int> {};

TEST_P(DnnlConvTest, MatchesReference) {
  const Dir dir = static_cast<Dir>(GetParam());
  for (auto layout : {tuning::ConvFilterLayout::kPlain, tuning::ConvFilterLayout::kBlocked}) {
    tuning::set_conv_filter_layout(layout);
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      for (const ConvCase& c : kConvCases) check_conv(c, dir);
    }
  }
}

std::string dir_name(const ::testing::TestParamInfo<int>& info) {
  static const char* const kNames[] = {"Forward", "BackwardInput", "BackwardFilter"};
  return kNames[info.param];
}
INSTANTIATE_TEST_SUITE_P(Directions, DnnlConvTest, ::testing::Values(0, 1, 2), dir_name);

TEST_F(DnnlTest, ConvDeterministicAtOneThread) {
  set_num_threads(1);
  const Conv2DParams p = conv_params({8, 14, 14, 32, 3, 3, 64, 1, 2, 2, 1, 1, 1});
  Tensor x = random({p.n, p.in_h, p.in_w, p.in_c}, 5);
  Tensor dy = random({p.n, p.out_h, p.out_w, p.out_c}, 6);
  Tensor dw1({p.k_h, p.k_w, p.in_c, p.out_c}, DType::kF32), dw2 = dw1.clone();
  kernels::conv2d_backward_filter_f32__dnnl(p, x.data<float>(), dy.data<float>(),
                                            dw1.data<float>());
  kernels::conv2d_backward_filter_f32__dnnl(p, x.data<float>(), dy.data<float>(),
                                            dw2.data<float>());
  EXPECT_EQ(std::memcmp(dw1.raw(), dw2.raw(), dw1.nbytes()), 0);
}

TEST_F(DnnlTest, ConvSizeThreshold) {
  tuning::set_size_thresholds(true);
  EXPECT_FALSE(kernels::conv2d_forward_f32__dnnl_supported(
      conv_params({1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0})));
  EXPECT_TRUE(kernels::conv2d_forward_f32__dnnl_supported(
      conv_params({4, 28, 28, 1, 3, 3, 32, 1, 1, 1, 1, 1, 1})));
  Conv2DParams bad = conv_params({1, 8, 8, 4, 3, 3, 4, 1, 1, 1, 1, 1, 1});
  bad.groups = 3;  // does not divide the channels
  EXPECT_FALSE(kernels::conv2d_forward_f32__dnnl_supported(bad));
}

// Through the registry: the op's attrs (padding modes, strides, dilations, groups, explicit
// asymmetric pads) reach the oneDNN kernels via conv2d_params, for all three conv ops, and
// the fast path really runs (thresholds on, as in production).
TEST_F(DnnlTest, ConvThroughRegistry) {
  struct Case {
    Shape x, w;
    Attrs attrs;
  };
  const Case cases[] = {
      {{4, 28, 28, 1}, {3, 3, 1, 32}, {{"padding", "same"}}},
      {{4, 28, 28, 32}, {3, 3, 32, 64}, {{"padding", "same"}, {"strides", {2, 2}}}},
      {{1, 14, 14, 64}, {3, 3, 64, 64}, {{"padding", "same"}, {"strides", 2}}},
      {{2, 9, 10, 5}, {4, 4, 5, 3}, {{"padding", "same"}}},  // even kernel: pads (1, 2)
      {{3, 13, 11, 6}, {3, 3, 2, 9}, {{"groups", 3}, {"strides", {2, 1}}}},
      {{2, 10, 10, 8}, {3, 3, 1, 8}, {{"groups", 8}, {"padding", "same"}}},  // depthwise
      {{2, 15, 15, 3}, {3, 3, 3, 4}, {{"dilations", 2}, {"padding", "same"}}},
      {{2, 9, 8, 3},
       {3, 3, 3, 6},
       {{"padding", "explicit"}, {"pads", {1, 2, 0, 3}}}},  // asymmetric
      {{1, 17, 19, 37}, {5, 5, 37, 29}, {{"padding", "valid"}}},
  };
  tuning::set_size_thresholds(true);
  uint64_t seed = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE("x " + c.x.str() + " w " + c.w.str() + " " + c.attrs.str());
    Tensor x = random(c.x, seed++), w = random(c.w, seed++);
    const Conv2DParams p = detail::conv2d_params(c.x, c.w, c.attrs);
    Tensor dy = random({p.n, p.out_h, p.out_w, p.out_c}, seed++);
    const int64_t cig = p.in_c / p.groups, cog = p.out_c / p.groups;
    EXPECT_GE(testing::expect_fast_matches_reference("conv2d", {x, w}, c.attrs,
                                                     atol_for(p.k_h * p.k_w * cig), kRtol),
              1);
    EXPECT_GE(testing::expect_fast_matches_reference("conv2d_backward_input", {dy, w, x}, c.attrs,
                                                     atol_for(p.k_h * p.k_w * cog), kRtol),
              1);
    EXPECT_GE(testing::expect_fast_matches_reference("conv2d_backward_filter", {x, dy, w}, c.attrs,
                                                     atol_for(p.n * p.out_h * p.out_w), kRtol),
              1);
  }
}

// A training-style graph (conv -> dense, with gradients for both weights) run by an Executor
// gives the same outputs and gradients with the oneDNN kernels as with the references.
TEST_F(DnnlTest, ExecutorGraphMatchesReference) {
  tuning::set_size_thresholds(true);
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 12, 12, 3});
  Value dy = g.placeholder("dy", DType::kF32, {kUnknown, 6, 6, 10});
  Value w1 = g.variable("w1", random({3, 3, 3, 16}, 1));
  Value w2 = g.variable("w2", random({16, 10}, 2));
  Value h = ops::conv2d(x, w1, {{"padding", "same"}, {"strides", 2}});
  Value y = ops::matmul(h, w2);  // [N,6,6,16] x [16,10]: batch folded into M
  auto grads = gradients({y}, {w1, w2}, {dy});
  const std::vector<std::pair<Value, Tensor>> feeds = {{x, random({8, 12, 12, 3}, 3)},
                                                       {dy, random({8, 6, 6, 10}, 4)}};
  std::vector<Tensor> got, want;
  tuning::clear_cache();
  {
    Executor ex(g, {y, grads[0], grads[1]});
    got = ex.run(feeds);
  }
  EXPECT_GE(tuning::cache_size(), 4u) << "the oneDNN kernels did not run";
  set_kernel_choice(KernelChoice::kReference);
  {
    Executor ex(g, {y, grads[0], grads[1]});
    want = ex.run(feeds);
  }
  set_kernel_choice(KernelChoice::kFastest);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_TRUE(tensors_near(got[0], want[0], atol_for(3 * 3 * 3 * 16), kRtol));
  EXPECT_TRUE(tensors_near(got[1], want[1], atol_for(8 * 36 * 10 * 16), kRtol));
  EXPECT_TRUE(tensors_near(got[2], want[2], atol_for(8 * 36), kRtol));
}

}  // namespace
}  // namespace lowbit
