// Convolutions and pooling: TF 'same' geometry, hand-checked goldens, an independent naive
// convolution, adjoint identities for the backward ops, gradient checks (groups, dilation,
// stride, even kernels with 'same', explicit pads), the Keras golden vectors, composite ops
// (conv1d, depthwise_conv2d, 1-D pools), graphs with unknown dims, fast kernels vs reference,
// and error messages.
#include "kernels/reference/conv.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "lowbit/threads.h"
#include "ops/conv_common.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::expect_throws_with;
using testing::tensors_near;

// Sums of f32 products accumulated in double and rounded once.
constexpr double kAtol = 1e-5, kRtol = 1e-5;

Tensor vec(std::vector<float> v, Shape s) { return Tensor::from_vector<float>(v, s); }
Tensor rnd(Shape s, Rng& rng) { return testing::random_tensor(s, rng); }

// ---------------------------------------------------------------------------------------------
// Geometry

struct Dim {
  int64_t out, before, after;
};
Dim same_dim(int64_t in, int64_t k, int64_t s, int64_t d = 1) {
  Dim r;
  detail::window_dim("t", "width", in, k, s, d, detail::Padding::kSame, 0, 0, &r.out, &r.before,
                     &r.after);
  return r;
}

TEST(ConvGeometry, SamePaddingPutsTheExtraCellAtTheEnd) {
  // layer-semantics.md section 7.2 examples.
  Dim d = same_dim(7, 4, 2);
  EXPECT_EQ(d.out, 4);
  EXPECT_EQ(d.before, 1);
  EXPECT_EQ(d.after, 2);
  d = same_dim(5, 2, 2);
  EXPECT_EQ(d.out, 3);
  EXPECT_EQ(d.before, 0);
  EXPECT_EQ(d.after, 1);
  d = same_dim(6, 2, 2);
  EXPECT_EQ(d.out, 3);
  EXPECT_EQ(d.before, 0);
  EXPECT_EQ(d.after, 0);
  d = same_dim(9, 2, 1);
  EXPECT_EQ(d.out, 9);
  EXPECT_EQ(d.before, 0);
  EXPECT_EQ(d.after, 1);
  d = same_dim(5, 3, 1, 2);  // k_eff 5 -> total 4
  EXPECT_EQ(d.out, 5);
  EXPECT_EQ(d.before, 2);
  EXPECT_EQ(d.after, 2);
  d = same_dim(2, 5, 3);  // larger window than input is fine with 'same'
  EXPECT_EQ(d.out, 1);
  EXPECT_EQ(d.before, 1);
  EXPECT_EQ(d.after, 2);
  // Through the op geometry: H=7,k=4,s=2 -> (1,2); W=5,k=2,s=2 -> (0,1).
  auto p =
      detail::conv2d_params({2, 7, 5, 3}, {4, 2, 3, 8}, {{"strides", {2, 2}}, {"padding", "same"}});
  EXPECT_EQ(p.out_h, 4);
  EXPECT_EQ(p.pad_top, 1);
  EXPECT_EQ(p.pad_bottom, 2);
  EXPECT_EQ(p.out_w, 3);
  EXPECT_EQ(p.pad_left, 0);
  EXPECT_EQ(p.pad_right, 1);
  EXPECT_EQ(p.out_c, 8);
  p = detail::conv2d_params({1, 10, 9, 1}, {3, 2, 1, 1},
                            {{"strides", 3}, {"dilations", {2, 1}}, {"padding", "valid"}});
  EXPECT_EQ(p.out_h, 2);  // k_eff 5: floor((10-5)/3)+1
  EXPECT_EQ(p.out_w, 3);  // floor((9-2)/3)+1
  p = detail::conv2d_params({1, 4, 4, 1}, {3, 3, 1, 1},
                            {{"padding", "explicit"}, {"pads", {1, 0, 2, 3}}});
  EXPECT_EQ(p.out_h, 3);
  EXPECT_EQ(p.out_w, 7);
  EXPECT_EQ(p.pad_left, 2);
  EXPECT_EQ(p.pad_right, 3);
}

// ---------------------------------------------------------------------------------------------
// An independent naive convolution: pad the input explicitly into a larger zero tensor, then
// slide the (dilated) window with the stride, all in double.

Tensor naive_conv2d(const Tensor& x, const Tensor& w, const Attrs& attrs) {
  const auto p = detail::conv2d_params(x.shape(), w.shape(), attrs);
  const int64_t ph = p.in_h + p.pad_top + p.pad_bottom, pw = p.in_w + p.pad_left + p.pad_right;
  std::vector<double> xp(p.n * ph * pw * p.in_c, 0.0);
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t h = 0; h < p.in_h; ++h)
      for (int64_t ww = 0; ww < p.in_w; ++ww)
        for (int64_t c = 0; c < p.in_c; ++c)
          xp[((n * ph + h + p.pad_top) * pw + ww + p.pad_left) * p.in_c + c] =
              x.at<float>({n, h, ww, c});
  Tensor y({p.n, p.out_h, p.out_w, p.out_c}, DType::kF32);
  const int64_t cig = p.in_c / p.groups, cog = p.out_c / p.groups;
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t oh = 0; oh < p.out_h; ++oh)
      for (int64_t ow = 0; ow < p.out_w; ++ow)
        for (int64_t g = 0; g < p.groups; ++g)
          for (int64_t o = 0; o < cog; ++o) {
            double s = 0;
            for (int64_t kh = 0; kh < p.k_h; ++kh)
              for (int64_t kw = 0; kw < p.k_w; ++kw)
                for (int64_t i = 0; i < cig; ++i)
                  s += xp[((n * ph + oh * p.stride_h + kh * p.dil_h) * pw + ow * p.stride_w +
                           kw * p.dil_w) *
                              p.in_c +
                          g * cig + i] *
                       w.at<float>({kh, kw, i, g * cog + o});
            y.at<float>({n, oh, ow, g * cog + o}) = static_cast<float>(s);
          }
  return y;
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += double{a.data<float>()[i]} * b.data<float>()[i];
  return s;
}

struct ConvCase {
  Shape x, w;
  Attrs attrs;
};

// Geometries covering stride, dilation, groups, even kernels with 'same', explicit pads,
// size-1 edges and windows that leave trailing input unread under 'valid'.
std::vector<ConvCase> conv_cases() {
  return {
      {{1, 5, 5, 1}, {3, 3, 1, 1}, {}},
      {{2, 6, 5, 3}, {4, 4, 3, 2}, {{"strides", {2, 2}}, {"padding", "same"}}},
      {{1, 7, 6, 2}, {2, 3, 2, 3}, {{"strides", {2, 1}}, {"padding", "same"}}},
      {{2, 8, 7, 4}, {3, 2, 2, 6}, {{"groups", 2}, {"padding", "same"}}},
      {{1, 9, 9, 6}, {3, 3, 2, 3}, {{"groups", 3}, {"dilations", {2, 2}}}},
      {{1, 9, 8, 2}, {2, 3, 2, 2}, {{"dilations", {3, 2}}, {"padding", "same"}, {"strides", 2}}},
      {{2, 7, 7, 3}, {3, 3, 3, 2}, {{"strides", {3, 2}}}},  // valid, 7 -> 2 rows, 1 row unread
      {{1, 4, 5, 2},
       {3, 2, 2, 1},
       {{"padding", "explicit"}, {"pads", {2, 1, 0, 3}}, {"strides", {2, 2}}}},
      {{1, 1, 1, 1}, {1, 1, 1, 1}, {}},
      {{3, 1, 7, 5}, {1, 3, 5, 4}, {{"padding", "same"}}},
      {{1, 3, 3, 4}, {3, 3, 1, 4}, {{"groups", 4}, {"padding", "same"}}},        // depthwise-like
      {{1, 2, 3, 2}, {4, 5, 2, 2}, {{"padding", "same"}, {"strides", {3, 3}}}},  // window > input
  };
}

TEST(Conv2D, GoldenByHand) {
  testing::note_reference_tested("conv2d");
  Tensor x = vec({1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 3, 3, 1});
  Tensor w = vec({1, 0, 0, -1}, {2, 2, 1, 1});  // y[i,j] = x[i,j] - x[i+1,j+1]
  EXPECT_TRUE(tensors_near(ops::conv2d(x, w), vec({-4, -4, -4, -4}, {1, 2, 2, 1}), 0, 0));
  // 'same' with an even kernel pads only at the bottom/right: the last row and column see
  // zeros at (i+1, j+1).
  EXPECT_TRUE(tensors_near(ops::conv2d(x, w, {{"padding", "same"}}),
                           vec({-4, -4, 3, -4, -4, 6, 7, 8, 9}, {1, 3, 3, 1}), 0, 0));
  // Stride 2 + 'same' on width 5 with k=2: out 3, pads (0,1): [x0+x1, x2+x3, x4].
  Tensor row = vec({1, 2, 3, 4, 5}, {1, 1, 5, 1});
  Tensor ones = vec({1, 1}, {1, 2, 1, 1});
  EXPECT_TRUE(tensors_near(ops::conv2d(row, ones, {{"strides", 2}, {"padding", "same"}}),
                           vec({3, 7, 5}, {1, 1, 3, 1}), 0, 0));
  // Dilation 2: y[j] = x[j] + x[j+2].
  EXPECT_TRUE(tensors_near(ops::conv2d(row, ones, {{"dilations", {1, 2}}}),
                           vec({4, 6, 8}, {1, 1, 3, 1}), 0, 0));
  // Explicit pads (left 2, right 0): [0+0, 0+1, 1+2, 2+3, 3+4, 4+5].
  EXPECT_TRUE(
      tensors_near(ops::conv2d(row, ones, {{"padding", "explicit"}, {"pads", {0, 0, 2, 0}}}),
                   vec({0, 1, 3, 5, 7, 9}, {1, 1, 6, 1}), 0, 0));
  // Groups: channels [1,2 | 3,4], w[0,0,i,o] = [[1,2],[3,4]]; group 0 -> output 0 uses
  // column 0 on channels 0,1: 1*1 + 2*3 = 7; group 1 -> output 1: 3*2 + 4*4 = 22.
  Tensor xc = vec({1, 2, 3, 4}, {1, 1, 1, 4});
  Tensor wg = vec({1, 2, 3, 4}, {1, 1, 2, 2});
  EXPECT_TRUE(tensors_near(ops::conv2d(xc, wg, {{"groups", 2}}), vec({7, 22}, {1, 1, 1, 2}), 0, 0));
  // Two output channels, no groups: w [1,1,1,2] = [2, -1].
  EXPECT_TRUE(tensors_near(ops::conv2d(row, vec({2, -1}, {1, 1, 1, 2})),
                           vec({2, -1, 4, -2, 6, -3, 8, -4, 10, -5}, {1, 1, 5, 2}), 0, 0));
}

TEST(Conv2D, BackwardGoldenByHand) {
  testing::note_reference_tested("conv2d_backward_input");
  testing::note_reference_tested("conv2d_backward_filter");
  // 1-D stride 2 'same' k=2 on width 5: y = [x0+x1, x2+x3, x4] (w = [1,1]).
  Tensor row = vec({1, 2, 3, 4, 5}, {1, 1, 5, 1});
  Tensor ones = vec({1, 1}, {1, 2, 1, 1});
  Tensor dy = vec({10, 20, 30}, {1, 1, 3, 1});
  Attrs a{{"strides", 2}, {"padding", "same"}};
  EXPECT_TRUE(tensors_near(ops::conv2d_backward_input(dy, ones, row, a),
                           vec({10, 10, 20, 20, 30}, {1, 1, 5, 1}), 0, 0));
  // dw[0] = sum_j dy_j * x[2j] = 10*1 + 20*3 + 30*5; dw[1] = 10*2 + 20*4 + 30*0 (padding).
  EXPECT_TRUE(tensors_near(ops::conv2d_backward_filter(row, dy, ones, a),
                           vec({220, 100}, {1, 2, 1, 1}), 0, 0));
  // 'valid' stride 2 on width 5 with k=2 leaves x4 unread: its gradient is 0.
  EXPECT_TRUE(tensors_near(
      ops::conv2d_backward_input(vec({10, 20}, {1, 1, 2, 1}), ones, row, {{"strides", 2}}),
      vec({10, 10, 20, 20, 0}, {1, 1, 5, 1}), 0, 0));
}

TEST(Conv2D, MatchesNaiveConvolution) {
  Rng rng(11);
  for (const ConvCase& c : conv_cases()) {
    SCOPED_TRACE(c.x.str() + " * " + c.w.str() + " {" + c.attrs.str() + "}");
    Tensor x = rnd(c.x, rng), w = rnd(c.w, rng);
    EXPECT_TRUE(
        tensors_near(ops::conv2d(x, w, c.attrs), naive_conv2d(x, w, c.attrs), kAtol, kRtol));
  }
}

TEST(Conv2D, BackwardOpsAreTheAdjointsOfTheForward) {
  // sum(conv(x, w) * dy) = sum(x * backward_input(dy, w)) = sum(w * backward_filter(x, dy)).
  Rng rng(12);
  for (const ConvCase& c : conv_cases()) {
    SCOPED_TRACE(c.x.str() + " * " + c.w.str() + " {" + c.attrs.str() + "}");
    Tensor x = rnd(c.x, rng), w = rnd(c.w, rng);
    Tensor y = ops::conv2d(x, w, c.attrs);
    Tensor dy = rnd(y.shape(), rng);
    const double l = dot(y, dy);
    Tensor dx = ops::conv2d_backward_input(dy, w, x, c.attrs);
    Tensor dw = ops::conv2d_backward_filter(x, dy, w, c.attrs);
    EXPECT_EQ(dx.shape(), x.shape());
    EXPECT_EQ(dw.shape(), w.shape());
    EXPECT_NEAR(dot(x, dx), l, 1e-4 * (1 + std::abs(l)));
    EXPECT_NEAR(dot(w, dw), l, 1e-4 * (1 + std::abs(l)));
  }
}

TEST(Conv2D, Gradients) {
  Rng rng(13);
  for (const ConvCase& c : conv_cases()) {
    Tensor x = rnd(c.x, rng), w = rnd(c.w, rng);
    testing::expect_gradients_match("conv2d", {x, w}, c.attrs);
    Tensor dy = rnd(ops::conv2d(x, w, c.attrs).shape(), rng);
    // x_like / w_like only give shapes: check the two differentiable inputs.
    testing::expect_gradients_match("conv2d_backward_input", {dy, w, x}, c.attrs, {.wrt = {0, 1}});
    testing::expect_gradients_match("conv2d_backward_filter", {x, dy, w}, c.attrs, {.wrt = {0, 1}});
  }
}

TEST(Conv2D, ReferenceKernelsAreThreadCountIndependent) {
  Rng rng(14);
  Tensor x = rnd({2, 17, 15, 8}, rng), w = rnd({3, 3, 4, 12}, rng);
  Attrs a{{"groups", 2}, {"padding", "same"}, {"strides", {2, 1}}};
  Tensor dy = rnd(ops::conv2d(x, w, a).shape(), rng);
  auto run = [&] {
    std::vector<Tensor> r;
    r.push_back(run_op(find_op("conv2d"), {x, w}, a, KernelChoice::kReference)[0]);
    r.push_back(
        run_op(find_op("conv2d_backward_input"), {dy, w, x}, a, KernelChoice::kReference)[0]);
    r.push_back(
        run_op(find_op("conv2d_backward_filter"), {x, dy, w}, a, KernelChoice::kReference)[0]);
    return r;
  };
  const int saved = num_threads();
  set_num_threads(1);
  auto one = run();
  set_num_threads(2);
  auto two = run();
  set_num_threads(saved);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(testing::tensors_equal(one[i], two[i]));
}

TEST(Conv2D, FastKernelsMatchReference) {
  Rng rng(15);
  std::vector<ConvCase> cases = conv_cases();
  for (int64_t s : {1, 2, 7, 13, 16, 17, 31}) {
    cases.push_back({{2, s, s + 1, 3}, {3, 3, 3, 5}, {{"padding", "same"}}});
    cases.push_back({{1, s + 3, s + 2, 8}, {3, 2, 8, s}, {{"strides", 2}}});
    cases.push_back({{1, s + 1, 5, 2 * s}, {2, 2, 2, 2 * s}, {{"groups", s}, {"padding", "same"}}});
  }
  cases.push_back({{8, 28, 28, 1}, {5, 5, 1, 32}, {{"padding", "same"}}});
  cases.push_back({{4, 14, 14, 32}, {3, 3, 32, 64}, {{"padding", "same"}, {"strides", 2}}});
  for (const ConvCase& c : cases) {
    Tensor x = rnd(c.x, rng), w = rnd(c.w, rng);
    Tensor dy =
        rnd(run_op(find_op("conv2d"), {x, w}, c.attrs, KernelChoice::kReference)[0].shape(), rng);
    // oneDNN sums in f32 in a blocked order: roundoff grows with the window size.
    testing::expect_fast_matches_reference("conv2d", {x, w}, c.attrs, 1e-4, 1e-4);
    testing::expect_fast_matches_reference("conv2d_backward_input", {dy, w, x}, c.attrs, 1e-4,
                                           1e-4);
    testing::expect_fast_matches_reference("conv2d_backward_filter", {x, dy, w}, c.attrs, 1e-3,
                                           1e-4);
  }
}

// ---------------------------------------------------------------------------------------------
// Pooling

TEST(Pool2D, GoldenByHand) {
  testing::note_reference_tested("max_pool2d");
  testing::note_reference_tested("avg_pool2d");
  testing::note_reference_tested("max_pool2d_backward");
  testing::note_reference_tested("avg_pool2d_backward");
  // 3x3, pool 2, stride 2, 'same' (TF issue 60509): out 2x2, pads (0,1); the windows hold
  // 4, 2, 2 and 1 valid cells; avg divides by those counts.
  Tensor x = vec({1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 3, 3, 1});
  Attrs same{{"ksize", {2, 2}}, {"padding", "same"}};
  EXPECT_TRUE(tensors_near(ops::avg_pool2d(x, same), vec({3, 4.5f, 7.5f, 9}, {1, 2, 2, 1}), 0, 0));
  EXPECT_TRUE(tensors_near(ops::max_pool2d(x, same), vec({5, 6, 8, 9}, {1, 2, 2, 1}), 0, 0));
  // Negative inputs: padded cells are ignored, not zeros.
  Tensor neg = ops::neg(x);
  EXPECT_TRUE(tensors_near(ops::max_pool2d(neg, same), vec({-1, -3, -7, -9}, {1, 2, 2, 1}), 0, 0));
  // 'valid' drops the last row/column.
  EXPECT_TRUE(tensors_near(ops::avg_pool2d(x, {{"ksize", 2}}), vec({3}, {1, 1, 1, 1}), 0, 0));
  // Stride 1 overlapping windows, two channels (second = 10 * first).
  Tensor x2 = vec({1, 10, 2, 20, 3, 30, 4, 40}, {1, 2, 2, 2});
  EXPECT_TRUE(tensors_near(ops::max_pool2d(x2, {{"ksize", {1, 2}}, {"strides", 1}}),
                           vec({2, 20, 4, 40}, {1, 2, 1, 2}), 0, 0));

  // Backward: avg gives dy/count to each valid cell.
  Tensor dy = vec({4, 2, 6, 5}, {1, 2, 2, 1});
  EXPECT_TRUE(tensors_near(ops::avg_pool2d_backward(dy, x, same),
                           vec({1, 1, 1, 1, 1, 1, 3, 3, 5}, {1, 3, 3, 1}), 0, 0));
  // Max: to the argmax of each window (5, 6, 8, 9).
  EXPECT_TRUE(tensors_near(ops::max_pool2d_backward(x, dy, same),
                           vec({0, 0, 0, 0, 4, 2, 0, 6, 5}, {1, 3, 3, 1}), 0, 0));
  // Ties go to the first maximum in row-major order (TF CPU MaxPoolGrad); overlapping
  // windows add up: 1x4 input [7, 7, 3, 7], pool 2 stride 1 -> windows {0,1}, {1,2}, {2,3}.
  Tensor tie = vec({7, 7, 3, 7}, {1, 1, 4, 1});
  Attrs s1{{"ksize", {1, 2}}, {"strides", 1}};
  EXPECT_TRUE(tensors_near(ops::max_pool2d_backward(tie, vec({1, 10, 100}, {1, 1, 3, 1}), s1),
                           vec({1, 10, 0, 100}, {1, 1, 4, 1}), 0, 0));
  // 2-D tie: all equal -> the top-left cell of each window.
  Tensor flat = Tensor::full({1, 2, 2, 1}, 1.0);
  EXPECT_TRUE(tensors_near(ops::max_pool2d_backward(flat, vec({5}, {1, 1, 1, 1}), {{"ksize", 2}}),
                           vec({5, 0, 0, 0}, {1, 2, 2, 1}), 0, 0));
}

// Distinct values spaced by 0.1 (shuffled), so finite differences never cross a max tie.
Tensor distinct(Shape s, Rng& rng) {
  Tensor t(s, DType::kF32);
  std::vector<int64_t> idx(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) idx[i] = i;
  for (int64_t i = t.numel() - 1; i > 0; --i) std::swap(idx[i], idx[rng.next_u32() % (i + 1)]);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.data<float>()[i] = 0.1f * static_cast<float>(idx[i]) - 0.05f * t.numel();
  return t;
}

std::vector<std::pair<Shape, Attrs>> pool_cases() {
  return {
      {{1, 3, 3, 1}, {{"ksize", 2}, {"padding", "same"}}},
      {{2, 5, 4, 3}, {{"ksize", {2, 2}}, {"strides", {2, 2}}, {"padding", "same"}}},
      {{1, 6, 5, 2}, {{"ksize", {3, 2}}, {"strides", {1, 1}}, {"padding", "same"}}},
      {{1, 7, 6, 2}, {{"ksize", {3, 3}}, {"strides", {2, 2}}}},
      {{2, 4, 5, 1}, {{"ksize", {2, 3}}, {"strides", {1, 2}}}},
      {{1, 1, 1, 3}, {{"ksize", 1}}},
      {{1, 2, 3, 2}, {{"ksize", {4, 5}}, {"strides", 3}, {"padding", "same"}}},
  };
}

TEST(Pool2D, Gradients) {
  Rng rng(21);
  for (const auto& [s, a] : pool_cases()) {
    Tensor x = distinct(s, rng);
    testing::expect_gradients_match("max_pool2d", {x}, a);
    testing::expect_gradients_match("avg_pool2d", {x}, a);
    Tensor dy = rnd(ops::avg_pool2d(x, a).shape(), rng);
    testing::expect_gradients_match("avg_pool2d_backward", {dy, x}, a, {.wrt = {0}});
  }
}

TEST(Pool2D, BackwardOpsAreAdjoints) {
  // avg pooling is linear: sum(avg(x) * dy) = sum(x * avg_backward(dy)). Max pooling is linear
  // in x at fixed argmax: sum(max(x) * dy) = sum(x * max_backward(x, dy)).
  Rng rng(22);
  for (const auto& [s, a] : pool_cases()) {
    Tensor x = distinct(s, rng);
    Tensor ya = ops::avg_pool2d(x, a), ym = ops::max_pool2d(x, a);
    Tensor dy = rnd(ya.shape(), rng);
    EXPECT_NEAR(dot(x, ops::avg_pool2d_backward(dy, x, a)), dot(ya, dy), 1e-4);
    EXPECT_NEAR(dot(x, ops::max_pool2d_backward(x, dy, a)), dot(ym, dy), 1e-4);
  }
}

TEST(Pool2D, FastKernelsMatchReference) {
  Rng rng(23);
  for (const auto& [s, a] : pool_cases()) {
    Tensor x = distinct(s, rng);
    Tensor dy = rnd(ops::avg_pool2d(x, a).shape(), rng);
    testing::expect_fast_matches_reference("max_pool2d", {x}, a);
    testing::expect_fast_matches_reference("avg_pool2d", {x}, a);
    testing::expect_fast_matches_reference("max_pool2d_backward", {x, dy}, a);
    testing::expect_fast_matches_reference("avg_pool2d_backward", {dy, x}, a);
  }
}

// ---------------------------------------------------------------------------------------------
// Composite ops: conv1d, depthwise_conv2d, 1-D pools, and the views they use.

TEST(ConvViews, ShapesAndGradients) {
  testing::note_reference_tested("insert_axis");
  testing::note_reference_tested("remove_axis");
  testing::note_reference_tested("merge_axes");
  Tensor x = vec({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor a = ops::insert_axis(x, 1);
  EXPECT_EQ(a.shape(), Shape({2, 1, 3}));
  EXPECT_TRUE(a.same_storage(x) || tensors_near(a.reshape({2, 3}), x, 0, 0));
  EXPECT_EQ(ops::insert_axis(x, 2).shape(), Shape({2, 3, 1}));
  EXPECT_EQ(ops::remove_axis(a, 1).shape(), Shape({2, 3}));
  EXPECT_TRUE(tensors_near(ops::remove_axis(a, 1), x, 0, 0));
  EXPECT_EQ(ops::merge_axes(x, 0).shape(), Shape({6}));
  EXPECT_TRUE(tensors_near(ops::merge_axes(x, 0), vec({1, 2, 3, 4, 5, 6}, {6}), 0, 0));
  Rng rng(31);
  testing::expect_gradients_match("insert_axis", {rnd({2, 3}, rng)}, {{"axis", 0}});
  testing::expect_gradients_match("remove_axis", {rnd({2, 1, 3}, rng)}, {{"axis", 1}});
  testing::expect_gradients_match("merge_axes", {rnd({2, 3, 4}, rng)}, {{"axis", 1}});
  Graph g;
  Value v = g.placeholder("v", DType::kF32, {kUnknown, kUnknown, 4});
  EXPECT_EQ(ops::insert_axis(v, 1).shape(), Shape({kUnknown, 1, kUnknown, 4}));
  EXPECT_EQ(ops::merge_axes(v, 1).shape(), Shape({kUnknown, kUnknown}));
  EXPECT_EQ(ops::merge_axes(v, 0).shape(), Shape({kUnknown, 4}));
  expect_throws_with<ShapeError>([&] { ops::remove_axis(x, 0); }, "expected size 1 on axis 0");
  expect_throws_with<ValueError>([&] { ops::insert_axis(x, 3); }, "expected 0 <= axis <= 2");
  expect_throws_with<ValueError>([&] { ops::merge_axes(x, 1); }, "expected 0 <= axis <= 0");
}

// Finite-difference check of a composite function (several ops), like expect_gradients_match.
template <class F>
void expect_composite_gradients_match(F f, const std::vector<Tensor>& inputs, double eps = 1e-2) {
  Graph g;
  std::vector<Value> in;
  for (size_t i = 0; i < inputs.size(); ++i)
    in.push_back(g.placeholder("in" + std::to_string(i), DType::kF32, inputs[i].shape()));
  Value y = f(in);
  Rng rng(99);
  Tensor cot = testing::random_tensor(f(inputs).shape(), rng, 0.5f, 1.5f);
  auto grads = gradients({y}, in, {g.constant(cot)});
  Executor ex(g, grads);
  std::vector<std::pair<Value, Tensor>> feeds;
  for (size_t i = 0; i < inputs.size(); ++i) feeds.emplace_back(in[i], inputs[i]);
  auto analytic = ex.run(feeds);
  for (size_t i = 0; i < inputs.size(); ++i) {
    std::vector<Tensor> x = inputs;
    x[i] = inputs[i].clone();
    Tensor numeric(inputs[i].shape(), DType::kF32);
    for (int64_t e = 0; e < x[i].numel(); ++e) {
      float& v = x[i].data<float>()[e];
      const float orig = v;
      v = orig + static_cast<float>(eps);
      const double lp = dot(f(x), cot);
      v = orig - static_cast<float>(eps);
      const double lm = dot(f(x), cot);
      v = orig;
      numeric.data<float>()[e] = static_cast<float>((lp - lm) / (2 * eps));
    }
    EXPECT_TRUE(tensors_near(analytic[i], numeric, 2e-3, 2e-2)) << "input " << i;
  }
}

TEST(Conv1D, GoldenAndPadding) {
  Tensor x = vec({1, 2, 3, 4, 5}, {1, 5, 1});
  Tensor w = vec({1, 10}, {2, 1, 1});  // y[j] = x[j] + 10 x[j+1]
  EXPECT_TRUE(tensors_near(ops::conv1d(x, w), vec({21, 32, 43, 54}, {1, 4, 1}), 0, 0));
  // same, stride 2: out 3, pads (0,1).
  EXPECT_TRUE(tensors_near(ops::conv1d(x, w, {{"strides", 2}, {"padding", "same"}}),
                           vec({21, 43, 5}, {1, 3, 1}), 0, 0));
  // causal: left pad (k-1)*d = 1: y[j] = x[j-1] + 10 x[j].
  EXPECT_TRUE(tensors_near(ops::conv1d(x, w, {{"padding", "causal"}}),
                           vec({10, 21, 32, 43, 54}, {1, 5, 1}), 0, 0));
  // causal with dilation 2: left pad 2: y[j] = x[j-2] + 10 x[j].
  EXPECT_TRUE(tensors_near(ops::conv1d(x, w, {{"padding", "causal"}, {"dilations", 2}}),
                           vec({10, 20, 31, 42, 53}, {1, 5, 1}), 0, 0));
  EXPECT_TRUE(
      tensors_near(ops::conv1d(x, w, {{"padding", "explicit"}, {"pads", {0, 2}}, {"strides", {3}}}),
                   vec({21, 54}, {1, 2, 1}), 0, 0));
  // groups: channels (1 | 2) each with its own filter.
  Tensor x2 = vec({1, 2, 3, 4}, {1, 2, 2});
  Tensor w2 = vec({1, 1, 10, 10}, {2, 1, 2});  // w[k, 0, o]
  // output 0 = channel 0: 1*1 + 3*10; output 1 = channel 1: 2*1 + 4*10.
  EXPECT_TRUE(tensors_near(ops::conv1d(x2, w2, {{"groups", 2}}), vec({31, 42}, {1, 1, 2}), 0, 0));
}

TEST(Conv1D, Gradients) {
  Rng rng(32);
  const std::vector<Attrs> attrs = {
      {},
      {{"strides", 2}, {"padding", "same"}},
      {{"padding", "causal"}, {"dilations", 2}},
      {{"padding", "explicit"}, {"pads", {1, 2}}},
      {{"groups", 2}, {"padding", "same"}},
  };
  for (const Attrs& a : attrs) {
    SCOPED_TRACE(a.str());
    expect_composite_gradients_match([&](const auto& in) { return ops::conv1d(in[0], in[1], a); },
                                     {rnd({2, 7, 4}, rng), rnd({3, 4 / a.i("groups", 1), 4}, rng)});
  }
}

TEST(DepthwiseConv2D, ChannelOrderIsCTimesMPlusM) {
  // C = 2, M = 2, 1x1 filter: output channel c*M + m = x[c] * w[c, m].
  Tensor x = vec({1, 2, 3, 4}, {1, 1, 2, 2});
  Tensor w = vec({10, 20, 30, 40}, {1, 1, 2, 2});  // w[0,0,c,m]
  EXPECT_TRUE(tensors_near(ops::depthwise_conv2d(x, w),
                           vec({10, 20, 60, 80, 30, 60, 120, 160}, {1, 1, 2, 4}), 0, 0));
  // Matches per-channel conv2d with the channel's [KH,KW,1,M] filter.
  Rng rng(33);
  Tensor xs = rnd({2, 6, 5, 3}, rng), ws = rnd({3, 2, 3, 2}, rng);
  Attrs a{{"strides", 2}, {"padding", "same"}, {"dilations", {1, 2}}};
  Tensor y = ops::depthwise_conv2d(xs, ws, a);
  ASSERT_EQ(y.shape(), Shape({2, 3, 3, 6}));
  for (int64_t c = 0; c < 3; ++c) {
    Tensor xc({2, 6, 5, 1}, DType::kF32), wc({3, 2, 1, 2}, DType::kF32);
    for (int64_t i = 0; i < 2 * 6 * 5; ++i) xc.data<float>()[i] = xs.data<float>()[i * 3 + c];
    for (int64_t i = 0; i < 3 * 2; ++i)
      for (int64_t m = 0; m < 2; ++m)
        wc.data<float>()[i * 2 + m] = ws.data<float>()[(i * 3 + c) * 2 + m];
    Tensor yc = ops::conv2d(xc, wc, a);
    for (int64_t i = 0; i < 2 * 3 * 3; ++i)
      for (int64_t m = 0; m < 2; ++m)
        EXPECT_EQ(y.data<float>()[i * 6 + c * 2 + m], yc.data<float>()[i * 2 + m]);
  }
  expect_composite_gradients_match(
      [&](const auto& in) { return ops::depthwise_conv2d(in[0], in[1], a); },
      {rnd({1, 5, 4, 3}, rng), rnd({2, 2, 3, 2}, rng)});
}

TEST(Pool1D, GoldenAndGradients) {
  Tensor x = vec({1, 5, 2, 4}, {1, 4, 1});
  EXPECT_TRUE(tensors_near(ops::avg_pool1d(x, {{"ksize", 2}, {"strides", 1}, {"padding", "same"}}),
                           vec({3, 3.5f, 3, 4}, {1, 4, 1}), 0, 0));
  EXPECT_TRUE(tensors_near(ops::max_pool1d(x, {{"ksize", 2}}), vec({5, 4}, {1, 2, 1}), 0, 0));
  EXPECT_TRUE(tensors_near(ops::max_pool1d(x, {{"ksize", 3}, {"strides", 2}, {"padding", "same"}}),
                           vec({5, 4}, {1, 2, 1}), 0, 0));
  Rng rng(34);
  Tensor xd = distinct({2, 7, 3}, rng);
  const Attrs a{{"ksize", 3}, {"strides", 2}, {"padding", "same"}};
  expect_composite_gradients_match([&](const auto& in) { return ops::max_pool1d(in[0], a); }, {xd});
  expect_composite_gradients_match([&](const auto& in) { return ops::avg_pool1d(in[0], a); }, {xd});
}

// ---------------------------------------------------------------------------------------------
// Keras golden vectors (layer-semantics.md section 0): outputs and the gradients of
// L = sum(output * cotangent) w.r.t. inputs and weights.

Tensor json_tensor(const nlohmann::json& j) {
  std::vector<int64_t> dims = j.at("shape").get<std::vector<int64_t>>();
  std::vector<float> data;
  for (double v : j.at("data")) data.push_back(static_cast<float>(v));
  return Tensor::from_vector<float>(data, Shape(dims));
}

nlohmann::json load_case(const std::string& name) {
  std::ifstream f(testing::shared_dir() + "/testdata/keras/" + name + ".json");
  EXPECT_TRUE(f.good()) << "missing golden file " << name;
  return nlohmann::json::parse(f);
}

// Runs layer(x, weights...) in a graph and checks output and all gradients in the file.
void check_golden(const std::string& name,
                  const std::function<Value(const Value&, const std::vector<Value>&)>& layer) {
  SCOPED_TRACE(name);
  const nlohmann::json j = load_case(name);
  const double atol = j["tolerance"]["atol"], rtol = j["tolerance"]["rtol"];
  Graph g;
  Tensor xt = json_tensor(j["inputs"]["x"]);
  Value x = g.placeholder("x", DType::kF32, xt.shape());
  std::vector<Value> ws;
  for (const auto& w : j["weights"]) ws.push_back(g.variable(w["name"], json_tensor(w)));
  Value y = layer(x, ws);
  const Tensor cot = json_tensor(j["grad"]["cotangents"][0]);
  std::vector<Value> wrt{x};
  wrt.insert(wrt.end(), ws.begin(), ws.end());
  auto grads = gradients({y}, wrt, {g.constant(cot)});
  std::vector<Value> fetches{y};
  fetches.insert(fetches.end(), grads.begin(), grads.end());
  Executor ex(g, fetches);
  auto out = ex.run({{x, xt}});
  EXPECT_TRUE(tensors_near(out[0], json_tensor(j["outputs"]["output"]), atol, rtol)) << "output";
  EXPECT_TRUE(tensors_near(out[1], json_tensor(j["grad"]["d_inputs"]["x"]), atol, rtol)) << "dx";
  if (j["grad"].contains("d_weights")) {
    for (size_t i = 0; i < ws.size(); ++i) {
      EXPECT_TRUE(tensors_near(out[2 + i], json_tensor(j["grad"]["d_weights"][i]), atol, rtol))
          << "d " << j["grad"]["d_weights"][i]["name"];
    }
  }
}

std::vector<int64_t> cfg_ints(const nlohmann::json& v) {
  if (v.is_number()) return {v.get<int64_t>()};
  return v.get<std::vector<int64_t>>();
}

TEST(KerasGolden, Conv1DSameStride2Kernel2) {
  const auto cfg = load_case("dev_conv1d_same_s2_k2")["layer"]["config"];
  ASSERT_EQ(cfg["padding"], "same");
  const Attrs a{{"strides", cfg_ints(cfg["strides"])}, {"padding", "same"}};
  check_golden("dev_conv1d_same_s2_k2", [&](const Value& x, const std::vector<Value>& w) {
    return ops::conv1d(x, w[0], a) + w[1];
  });
}

TEST(KerasGolden, Conv2DSameStride2Kernel4) {
  const auto cfg = load_case("dev_conv2d_same_s2_k4")["layer"]["config"];
  const Attrs a{{"strides", cfg_ints(cfg["strides"])}, {"padding", "same"}};
  check_golden("dev_conv2d_same_s2_k4", [&](const Value& x, const std::vector<Value>& w) {
    return ops::conv2d(x, w[0], a) + w[1];
  });
}

TEST(KerasGolden, DepthwiseSameStride2Multiplier2) {
  const auto cfg = load_case("dev_depthwise_same_s2_k2_m2")["layer"]["config"];
  ASSERT_EQ(cfg["depth_multiplier"], 2);
  const Attrs a{{"strides", cfg_ints(cfg["strides"])}, {"padding", "same"}};
  check_golden("dev_depthwise_same_s2_k2_m2", [&](const Value& x, const std::vector<Value>& w) {
    return ops::depthwise_conv2d(x, w[0], a) + w[1];
  });
}

TEST(KerasGolden, AvgPool1DSamePool2Stride1) {
  const auto cfg = load_case("dev_avgpool1d_same_p2_s1")["layer"]["config"];
  const Attrs a{{"ksize", cfg_ints(cfg["pool_size"])},
                {"strides", cfg_ints(cfg["strides"])},
                {"padding", "same"}};
  check_golden("dev_avgpool1d_same_p2_s1",
               [&](const Value& x, const std::vector<Value>&) { return ops::avg_pool1d(x, a); });
}

TEST(KerasGolden, AvgPool2DSamePool2Stride2) {
  const auto cfg = load_case("dev_avgpool2d_same_p2_s2")["layer"]["config"];
  const Attrs a{{"ksize", cfg_ints(cfg["pool_size"])},
                {"strides", cfg_ints(cfg["strides"])},
                {"padding", "same"}};
  check_golden("dev_avgpool2d_same_p2_s2",
               [&](const Value& x, const std::vector<Value>&) { return ops::avg_pool2d(x, a); });
}

// ---------------------------------------------------------------------------------------------
// Graphs with unknown batch and spatial dims

TEST(ConvGraph, UnknownBatchAndSpatialDims) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, kUnknown, kUnknown, 3});
  Value w = g.variable("w", Tensor::zeros({3, 3, 3, 4}));
  const Attrs a{{"strides", 2}, {"padding", "same"}};
  Value y = ops::max_pool2d(ops::conv2d(x, w, a), {{"ksize", 2}, {"padding", "same"}});
  EXPECT_EQ(y.shape(), Shape({kUnknown, kUnknown, kUnknown, 4}));
  Value c = g.placeholder("c", DType::kF32, y.shape());
  auto grads = gradients({y}, {x, w}, {c});
  EXPECT_EQ(grads[0].shape(), Shape({kUnknown, kUnknown, kUnknown, 3}));
  EXPECT_EQ(grads[1].shape(), Shape({3, 3, 3, 4}));
  Rng rng(41);
  Tensor wv = rnd({3, 3, 3, 4}, rng);
  g.variable_tensor(w).copy_from(wv);
  Executor ex(g, {y, grads[0], grads[1]});
  for (Shape xs : {Shape{2, 9, 7, 3}, Shape{1, 4, 4, 3}, Shape{3, 1, 1, 3}}) {
    Tensor xv = rnd(xs, rng);
    Tensor conv = ops::conv2d(xv, wv, a);
    Tensor yv = ops::max_pool2d(conv, {{"ksize", 2}, {"padding", "same"}});
    Tensor cv = rnd(yv.shape(), rng);
    auto out = ex.run({{x, xv}, {c, cv}});
    EXPECT_TRUE(tensors_near(out[0], yv, 0, 0));
    Tensor dconv = ops::max_pool2d_backward(conv, cv, {{"ksize", 2}, {"padding", "same"}});
    EXPECT_TRUE(tensors_near(out[1], ops::conv2d_backward_input(dconv, wv, xv, a), kAtol, kRtol));
    EXPECT_TRUE(tensors_near(out[2], ops::conv2d_backward_filter(xv, dconv, wv, a), kAtol, kRtol));
  }
}

TEST(ConvGraph, Conv1DCausalWithUnknownBatchAndTime) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, kUnknown, 2});
  Value w = g.variable("w", Tensor::zeros({3, 2, 5}));
  Value y = ops::avg_pool1d(ops::conv1d(x, w, {{"padding", "causal"}, {"dilations", 2}}),
                            {{"ksize", 2}, {"strides", 1}, {"padding", "same"}});
  EXPECT_EQ(y.shape(), Shape({kUnknown, kUnknown, 5}));
  auto grads = gradients({y}, {x, w}, {ops::ones_like(y)});
  Rng rng(42);
  Tensor wv = rnd({3, 2, 5}, rng);
  g.variable_tensor(w).copy_from(wv);
  Executor ex(g, {y, grads[0], grads[1]});
  for (Shape xs : {Shape{2, 6, 2}, Shape{1, 1, 2}}) {
    Tensor xv = rnd(xs, rng);
    auto out = ex.run({{x, xv}});
    EXPECT_EQ(out[0].shape(), Shape({xs[0], xs[1], 5}));
    EXPECT_EQ(out[1].shape(), xs);
    EXPECT_EQ(out[2].shape(), Shape({3, 2, 5}));
    // Causality: output step t depends only on x[<= t+1] (the pool looks one step ahead).
    if (xs[1] == 6) {
      Tensor x2 = xv.clone();
      x2.at<float>({0, 5, 0}) += 1.0f;
      Tensor y2 = ex.run({{x, x2}})[0];
      for (int64_t t = 0; t < 4; ++t)
        for (int64_t o = 0; o < 5; ++o)
          EXPECT_EQ(y2.at<float>({0, t, o}), out[0].at<float>({0, t, o})) << t;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(ConvErrors, ShapesAndAttributes) {
  Tensor x = Tensor::zeros({1, 5, 5, 4});
  expect_throws_with<ShapeError>(
      [&] {
        ops::conv2d(x, Tensor::zeros({3, 3, 3, 2}));
      },
      "channels differ: expected [KH,KW,4,Cout]");
  expect_throws_with<ShapeError>(
      [&] {
        ops::conv2d(x, Tensor::zeros({3, 3, 2, 3}), {{"groups", 2}});
      },
      "expected output channels divisible by groups=2 but found 3");
  expect_throws_with<ShapeError>(
      [&] {
        ops::conv2d(x, Tensor::zeros({3, 3, 1, 3}), {{"groups", 3}});
      },
      "expected input channels divisible by groups=3 but found 4");
  expect_throws_with<ShapeError>(
      [&] {
        ops::conv2d(x, Tensor::zeros({6, 3, 4, 2}));
      },
      "does not fit the input height 5");
  expect_throws_with<ShapeError>(
      [&] {
        ops::conv2d(x, Tensor::zeros({3, 3, 4, 2}), {{"dilations", 3}});
      },
      "effective size 7");
  expect_throws_with<ShapeError>(
      [&] {
        ops::conv2d(Tensor::zeros({5, 5, 4}), x);
      },
      "argument 'x': expected rank 4");
  expect_throws_with<ShapeError>(
      [&] {
        ops::conv2d(x, Tensor::zeros({3, 4, 2}));
      },
      "argument 'w': expected rank 4");
  expect_throws_with<DTypeError>(
      [&] {
        ops::conv2d(Tensor::zeros({1, 5, 5, 4}, DType::kS32), Tensor::zeros({1, 1, 4, 1}));
      },
      "expected dtype f32");
  expect_throws_with<ValueError>(
      [&] {
        ops::conv2d(x, Tensor::zeros({1, 1, 4, 1}), {{"padding", "full"}});
      },
      "expected 'valid', 'same' or 'explicit' but found 'full'");
  expect_throws_with<ValueError>(
      [&] {
        ops::conv2d(x, Tensor::zeros({1, 1, 4, 1}), {{"strides", {1, 0}}});
      },
      "attribute 'strides': expected values >= 1 but found [1,0]");
  expect_throws_with<ValueError>(
      [&] {
        ops::conv2d(x, Tensor::zeros({1, 1, 4, 1}), {{"strides", {1, 2, 3}}});
      },
      "expected an int or a list of 2 ints");
  expect_throws_with<ValueError>(
      [&] {
        ops::conv2d(x, Tensor::zeros({1, 1, 4, 1}), {{"padding", "explicit"}});
      },
      "attribute 'pads'");
  expect_throws_with<ValueError>(
      [&] {
        ops::conv2d(x, Tensor::zeros({1, 1, 4, 1}), {{"groups", 0}});
      },
      "attribute 'groups': expected >= 1");
  expect_throws_with<ShapeError>(
      [&] {
        ops::conv2d_backward_input(Tensor::zeros({1, 4, 4, 2}), Tensor::zeros({3, 3, 4, 2}), x);
      },
      "argument 'dy': expected shape [1,3,3,2]");
  expect_throws_with<ShapeError>(
      [&] {
        ops::conv2d_backward_filter(x, Tensor::zeros({1, 3, 3, 3}), Tensor::zeros({3, 3, 4, 2}));
      },
      "argument 'dy': expected shape [1,3,3,2]");

  // 1-D and depthwise name themselves.
  Tensor x1 = Tensor::zeros({2, 4, 3});
  expect_throws_with<ShapeError>(
      [&] {
        ops::conv1d(x1, Tensor::zeros({2, 2, 5}));
      },
      "conv1d: argument 'w': channels differ");
  expect_throws_with<ShapeError>(
      [&] {
        ops::conv1d(x1, Tensor::zeros({2, 1, 5}), {{"groups", 3}});
      },
      "conv1d: argument 'w': expected output channels divisible by groups=3 but found 5");
  expect_throws_with<ShapeError>(
      [&] {
        ops::conv1d(x1, Tensor::zeros({5, 3, 5}));
      },
      "conv1d: argument 'x': the window");
  expect_throws_with<ShapeError>(
      [&] {
        ops::conv1d(x, Tensor::zeros({5, 3, 5}));
      },
      "conv1d: argument 'x': expected rank 3");
  expect_throws_with<ValueError>(
      [&] {
        ops::conv1d(x1, Tensor::zeros({2, 3, 5}), {{"padding", "full"}});
      },
      "'valid', 'same', 'causal' or 'explicit'");
  expect_throws_with<ShapeError>(
      [&] {
        ops::depthwise_conv2d(x, Tensor::zeros({2, 2, 3, 2}));
      },
      "depthwise_conv2d: argument 'w': channels differ");
  expect_throws_with<ValueError>(
      [&] {
        ops::depthwise_conv2d(x, Tensor::zeros({2, 2, 4, 2}), {{"groups", 2}});
      },
      "depthwise_conv2d: attribute 'groups'");

  // Pools.
  expect_throws_with<ShapeError>(
      [&] {
        ops::max_pool2d(x, {{"ksize", {6, 2}}});
      },
      "does not fit the input height 5");
  expect_throws_with<ValueError>([&] { ops::avg_pool2d(x, {}); }, "attribute 'ksize'");
  expect_throws_with<ValueError>(
      [&] {
        ops::avg_pool2d(x, {{"ksize", 2}, {"padding", "explicit"}});
      },
      "expected 'valid' or 'same'");
  expect_throws_with<ShapeError>(
      [&] {
        ops::avg_pool1d(x1, {{"ksize", 5}});
      },
      "avg_pool1d: argument 'x': the window");
  expect_throws_with<ValueError>(
      [&] {
        ops::max_pool1d(x1, {{"ksize", {2, 2}}});
      },
      "expected an int or a list of 1 ints");
  expect_throws_with<ShapeError>(
      [&] {
        ops::max_pool2d_backward(x, Tensor::zeros({1, 2, 2, 3}), {{"ksize", 2}});
      },
      "argument 'dy': expected shape [1,2,2,4]");

  // Unknown dims pass at build time; the window check runs again with the fed shapes.
  Graph g;
  Value v = g.placeholder("v", DType::kF32, {kUnknown, kUnknown, kUnknown, 4});
  Value y = ops::conv2d(v, g.constant(Tensor::zeros({3, 3, 4, 1})));
  Executor ex(g, {y});
  expect_throws_with<GraphError>(
      [&] {
        ex.run({{v, Tensor::zeros({1, 2, 5, 4})}});
      },
      "does not fit the input height 2");
}

}  // namespace
}  // namespace lowbit
