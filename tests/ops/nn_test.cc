// Tests of the nn ops (include/lowbit/ops/nn.h): softmax family, cross-entropy losses, batch
// normalization and dropout. Expected values are computed in double here, by hand, or read from
// the Keras golden vectors in ../shared/testdata/keras.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::expect_gradients_match;
using testing::expect_throws_with;
using testing::tensors_equal;
using testing::tensors_near;

// f32 results of double-accurate kernels: a few ulps of the largest value.
constexpr double kAtol = 1e-6;
constexpr double kRtol = 1e-5;

Tensor f32(std::vector<float> v, Shape s) { return Tensor::from_vector<float>(v, s); }
Tensor s64_scalar(int64_t v) { return Tensor::full({}, static_cast<double>(v), DType::kS64); }
// Dropout with a concrete step.
Tensor drop(const Tensor& x, int64_t step, double rate, int64_t seed,
            std::vector<int64_t> noise = {}) {
  return ops::dropout(x, s64_scalar(step), rate, seed, noise);
}

// Double references on a [outer, n, inner] view around `axis`.
struct View {
  int64_t outer = 1, n = 1, inner = 1;
};
View view_of(const Shape& s, int axis) {
  if (axis < 0) axis += s.rank();
  View v;
  for (int d = 0; d < s.rank(); ++d) (d < axis ? v.outer : d == axis ? v.n : v.inner) *= s[d];
  return v;
}
int64_t at(const View& v, int64_t o, int64_t k, int64_t i) { return (o * v.n + k) * v.inner + i; }

Tensor softmax_ref(const Tensor& x, int axis, bool log) {
  View v = view_of(x.shape(), axis);
  Tensor y(x.shape(), DType::kF32);
  for (int64_t o = 0; o < v.outer; ++o)
    for (int64_t i = 0; i < v.inner; ++i) {
      double m = -INFINITY, s = 0;
      for (int64_t k = 0; k < v.n; ++k) m = std::max(m, x.get_as_double(at(v, o, k, i)));
      for (int64_t k = 0; k < v.n; ++k) s += std::exp(x.get_as_double(at(v, o, k, i)) - m);
      for (int64_t k = 0; k < v.n; ++k) {
        double z = x.get_as_double(at(v, o, k, i)) - m;
        y.set_from_double(at(v, o, k, i), log ? z - std::log(s) : std::exp(z) / s);
      }
    }
  return y;
}

// Per-channel mean and biased variance in double.
std::pair<std::vector<double>, std::vector<double>> moments_ref(const Tensor& x, int axis) {
  View v = view_of(x.shape(), axis);
  std::vector<double> mean(v.n, 0), var(v.n, 0);
  const double n = static_cast<double>(v.outer * v.inner);
  for (int64_t o = 0; o < v.outer; ++o)
    for (int64_t k = 0; k < v.n; ++k)
      for (int64_t i = 0; i < v.inner; ++i) mean[k] += x.get_as_double(at(v, o, k, i)) / n;
  for (int64_t o = 0; o < v.outer; ++o)
    for (int64_t k = 0; k < v.n; ++k)
      for (int64_t i = 0; i < v.inner; ++i) {
        double d = x.get_as_double(at(v, o, k, i)) - mean[k];
        var[k] += d * d / n;
      }
  return {mean, var};
}

Tensor bn_ref(const Tensor& x, const Tensor& gamma, const Tensor& beta,
              const std::vector<double>& mean, const std::vector<double>& var, int axis,
              double eps) {
  View v = view_of(x.shape(), axis);
  Tensor y(x.shape(), DType::kF32);
  for (int64_t o = 0; o < v.outer; ++o)
    for (int64_t k = 0; k < v.n; ++k)
      for (int64_t i = 0; i < v.inner; ++i) {
        int64_t e = at(v, o, k, i);
        y.set_from_double(
            e, gamma.get_as_double(k) * (x.get_as_double(e) - mean[k]) / std::sqrt(var[k] + eps) +
                   beta.get_as_double(k));
      }
  return y;
}

Tensor from_double(const std::vector<double>& v, Shape s) {
  Tensor t(s, DType::kF32);
  for (size_t i = 0; i < v.size(); ++i) t.set_from_double(static_cast<int64_t>(i), v[i]);
  return t;
}

// Runs f at 1 and at 2 threads and expects bitwise-equal results.
template <class F>
void expect_thread_count_independent(F f) {
  const int saved = num_threads();
  set_num_threads(1);
  std::vector<Tensor> one = f();
  set_num_threads(2);
  std::vector<Tensor> two = f();
  set_num_threads(saved);
  ASSERT_EQ(one.size(), two.size());
  for (size_t k = 0; k < one.size(); ++k)
    EXPECT_TRUE(tensors_equal(two[k], one[k])) << "output " << k;
}

// ---- softmax -------------------------------------------------------------------------------

TEST(NnSoftmax, HandCheckedValues) {
  // softmax([0, ln 2, ln 5]) = [1, 2, 5] / 8; log_softmax = log of that.
  Tensor x = f32({0.0f, std::log(2.0f), std::log(5.0f), 3, 3, 3}, {2, 3});
  EXPECT_TRUE(tensors_near(ops::softmax(x),
                           f32({0.125f, 0.25f, 0.625f, 1 / 3.0f, 1 / 3.0f, 1 / 3.0f}, {2, 3}),
                           kAtol, kRtol));
  EXPECT_TRUE(tensors_near(ops::log_softmax(x),
                           f32({std::log(0.125f), std::log(0.25f), std::log(0.625f),
                                -std::log(3.0f), -std::log(3.0f), -std::log(3.0f)},
                               {2, 3}),
                           kAtol, kRtol));
  testing::note_reference_tested("softmax");
  testing::note_reference_tested("log_softmax");
}

TEST(NnSoftmax, EveryAxisMatchesDouble) {
  Rng rng(1);
  Tensor x = testing::random_tensor({2, 3, 4}, rng, -3, 3);
  for (int axis : {0, 1, 2, -1, -2}) {
    SCOPED_TRACE(axis);
    EXPECT_TRUE(tensors_near(ops::softmax(x, axis), softmax_ref(x, axis, false), kAtol, kRtol));
    EXPECT_TRUE(tensors_near(ops::log_softmax(x, axis), softmax_ref(x, axis, true), kAtol, kRtol));
  }
}

TEST(NnSoftmax, LargeLogitsAreStable) {
  Tensor x = f32({1000, -1000, 999, -1000, -1001, -1000}, {2, 3});
  Tensor p = ops::softmax(x);
  Tensor lp = ops::log_softmax(x);
  const double e = std::exp(-1.0);
  EXPECT_TRUE(tensors_near(
      p, from_double({1 / (1 + e), 0, e / (1 + e), 1 / (2 + e), e / (2 + e), 1 / (2 + e)}, {2, 3}),
      kAtol, kRtol));
  // log_softmax stays finite where softmax underflows to 0.
  EXPECT_NEAR(lp.at<float>({0, 1}), -2000 - std::log1p(e), 1e-3);
  for (float v : lp.span<float>()) EXPECT_TRUE(std::isfinite(v));
}

TEST(NnSoftmax, NanOrInfPoisonsOnlyItsSlice) {
  const float inf = std::numeric_limits<float>::infinity();
  Tensor x = f32({1, NAN, 2, 1, inf, 2, 1, 2, 3}, {3, 3});
  Tensor p = ops::softmax(x);
  for (int j = 0; j < 3; ++j) {
    EXPECT_TRUE(std::isnan(p.at<float>({0, j})));
    EXPECT_TRUE(std::isnan(p.at<float>({1, j})));
    EXPECT_TRUE(std::isfinite(p.at<float>({2, j})));
  }
}

TEST(NnSoftmax, Gradients) {
  Rng rng(2);
  for (int axis : {-1, 0, 1}) {
    Tensor x = testing::random_tensor({2, 3, 4}, rng, -2, 2);
    expect_gradients_match("softmax", {x}, {{"axis", axis}});
    expect_gradients_match("log_softmax", {x}, {{"axis", axis}});
  }
  expect_gradients_match("softmax", {testing::random_tensor({5}, rng, -2, 2)});
}

TEST(NnSoftmax, BackwardOpsMatchFormulas) {
  Rng rng(3);
  for (int axis : {-1, 1}) {
    Tensor y = ops::softmax(testing::random_tensor({3, 4, 2}, rng, -2, 2), axis);
    Tensor ly = ops::log_softmax(testing::random_tensor({3, 4, 2}, rng, -2, 2), axis);
    Tensor dy = testing::random_tensor({3, 4, 2}, rng, -1, 1);
    View v = view_of(y.shape(), axis);
    std::vector<double> want(y.numel()), want_log(y.numel());
    for (int64_t o = 0; o < v.outer; ++o)
      for (int64_t i = 0; i < v.inner; ++i) {
        double dot = 0, sum = 0;
        for (int64_t k = 0; k < v.n; ++k) {
          int64_t e = at(v, o, k, i);
          dot += dy.get_as_double(e) * y.get_as_double(e);
          sum += dy.get_as_double(e);
        }
        for (int64_t k = 0; k < v.n; ++k) {
          int64_t e = at(v, o, k, i);
          want[e] = y.get_as_double(e) * (dy.get_as_double(e) - dot);
          want_log[e] = dy.get_as_double(e) - std::exp(ly.get_as_double(e)) * sum;
        }
      }
    EXPECT_TRUE(tensors_near(ops::softmax_backward(y, dy, axis), from_double(want, y.shape()),
                             kAtol, kRtol));
    EXPECT_TRUE(tensors_near(ops::log_softmax_backward(ly, dy, axis),
                             from_double(want_log, y.shape()), kAtol, kRtol));
  }
  testing::note_reference_tested("softmax_backward");
  testing::note_reference_tested("log_softmax_backward");
}

TEST(NnSoftmax, Errors) {
  expect_throws_with<ShapeError>([] { ops::softmax(Tensor::scalar(1)); },
                                 "softmax: argument 'x': expected rank >= 1 but found shape []");
  expect_throws_with<ValueError>(
      [] {
        ops::log_softmax(Tensor::zeros({2, 3}), 2);
      },
      "log_softmax: axis 2 is out of range");
  expect_throws_with<DTypeError>([] { ops::softmax(Tensor::zeros({2}, DType::kS32)); },
                                 "expected dtype f32 but found s32[2]");
  expect_throws_with<ShapeError>(
      [] {
        ops::softmax_backward(Tensor::zeros({2, 3}), Tensor::zeros({3, 2}));
      },
      "softmax_backward: argument 'dy': expected the shape of 'y' [2,3] but found [3,2]");
}

TEST(NnSoftmax, GraphWithUnknownBatch) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 5});
  Value p = ops::softmax(x);
  Value lp = ops::log_softmax(x, 0);
  EXPECT_EQ(p.shape(), Shape({kUnknown, 5}));
  Value loss_like = ops::mul(p, lp);
  auto grads = gradients({loss_like}, {x}, {ops::ones_like(loss_like)});
  Executor ex(g, {p, lp, grads[0]});
  Rng rng(4);
  for (int64_t b : {1, 3}) {
    Tensor tx = testing::random_tensor({b, 5}, rng, -2, 2);
    auto out = ex.run({{x, tx}});
    EXPECT_TRUE(tensors_equal(out[0], ops::softmax(tx)));
    EXPECT_TRUE(tensors_equal(out[1], ops::log_softmax(tx, 0)));
    EXPECT_EQ(out[2].shape(), Shape({b, 5}));
  }
}

TEST(NnSoftmax, ThreadCountIndependent) {
  Rng rng(5);
  Tensor x = testing::random_tensor({1500, 37}, rng, -5, 5);
  Tensor dy = testing::random_tensor({1500, 37}, rng, -1, 1);
  expect_thread_count_independent([&] {
    Tensor y = ops::softmax(x);
    return std::vector<Tensor>{y, ops::log_softmax(x, 0), ops::softmax_backward(y, dy)};
  });
}

// ---- cross-entropy losses ------------------------------------------------------------------

// -sum(labels * log_softmax(logits)) per row, in double.
Tensor softmax_ce_ref(const Tensor& z, const Tensor& t) {
  Tensor p = softmax_ref(z, -1, false);
  const int64_t c = z.dim(-1), rows = z.numel() / c;
  std::vector<double> loss(rows, 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < c; ++k)
      loss[r] -= t.get_as_double(r * c + k) * std::log(p.get_as_double(r * c + k));
  std::vector<int64_t> dims = z.shape().dims();
  dims.pop_back();
  return from_double(loss, Shape(dims));
}

TEST(NnCrossEntropy, SoftmaxCrossEntropyValues) {
  // Two equal logits, one-hot label: log 2. Labels need not sum to 1 (the second row: 2.5 * ...).
  EXPECT_NEAR(ops::softmax_cross_entropy(f32({0, 0}, {1, 2}), f32({1, 0}, {1, 2})).item<float>(),
              std::log(2.0), 1e-7);
  Rng rng(6);
  Tensor z = testing::random_tensor({2, 3, 4}, rng, -3, 3);
  Tensor t = testing::random_tensor({2, 3, 4}, rng, 0, 1);
  Tensor loss = ops::softmax_cross_entropy(z, t);
  EXPECT_EQ(loss.shape(), Shape({2, 3}));
  EXPECT_TRUE(tensors_near(loss, softmax_ce_ref(z, t), kAtol, kRtol));
  testing::note_reference_tested("softmax_cross_entropy");
}

TEST(NnCrossEntropy, SparseMatchesDenseOneHot) {
  Rng rng(7);
  Tensor z = testing::random_tensor({5, 4}, rng, -3, 3);
  Tensor labels = Tensor::from_vector<int64_t>({0, 3, 1, 2, 3}, {5});
  Tensor onehot = Tensor::zeros({5, 4});
  for (int64_t r = 0; r < 5; ++r) onehot.at<float>({r, labels.data<int64_t>()[r]}) = 1;
  Tensor want = softmax_ce_ref(z, onehot);
  EXPECT_TRUE(tensors_near(ops::sparse_softmax_cross_entropy(z, labels), want, kAtol, kRtol));
  EXPECT_TRUE(tensors_near(ops::sparse_softmax_cross_entropy(z, labels.to(DType::kS32)), want,
                           kAtol, kRtol));
  testing::note_reference_tested("sparse_softmax_cross_entropy");
}

TEST(NnCrossEntropy, LargeLogitsGiveFiniteLosses) {
  Tensor z = f32({1000, -1000, 0, -1000, 1000, 1000}, {2, 3});
  // Row 0, label 1: logsumexp = 1000 (+ negligible) so the loss is 2000.
  Tensor sparse = ops::sparse_softmax_cross_entropy(z, Tensor::from_vector<int32_t>({1, 2}, {2}));
  EXPECT_NEAR(sparse.at<float>({0}), 2000, 1e-3);
  EXPECT_NEAR(sparse.at<float>({1}), std::log(2.0), 1e-6);
  Tensor dense = ops::softmax_cross_entropy(z, f32({0, 1, 0, 0.5f, 0, 0.5f}, {2, 3}));
  EXPECT_NEAR(dense.at<float>({0}), 2000, 1e-3);
  EXPECT_NEAR(dense.at<float>({1}), 1000.0 + std::log(2.0), 1e-3);  // 0.5 * 2000 + log 2
  Tensor bce =
      ops::sigmoid_cross_entropy(f32({1000, -1000, 1000, -1000}, {4}), f32({1, 1, 0, 0}, {4}));
  EXPECT_TRUE(tensors_near(bce, f32({0, 1000, 1000, 0}, {4}), 1e-3, 0));
  // Gradients stay finite too.
  Tensor dz = ops::sparse_softmax_cross_entropy_backward(
      z, Tensor::from_vector<int32_t>({1, 2}, {2}), f32({1, 1}, {2}));
  EXPECT_TRUE(tensors_near(dz, f32({1, -1, 0, 0, 0.5f, -0.5f}, {2, 3}), 1e-6, 0));
}

TEST(NnCrossEntropy, SparseLabelOutOfRangeGivesNaN) {
  Tensor z = f32({1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3}, {4, 3});
  for (DType dt : {DType::kS32, DType::kS64}) {
    Tensor labels =
        dt == DType::kS32
            ? Tensor::from_vector<int32_t>({-1, 2, 3, std::numeric_limits<int32_t>::max()}, {4})
            : Tensor::from_vector<int64_t>({-1, 2, 3, int64_t{1} << 40}, {4});
    Tensor loss = ops::sparse_softmax_cross_entropy(z, labels);
    EXPECT_TRUE(std::isnan(loss.at<float>({0})));
    EXPECT_NEAR(loss.at<float>({1}), std::log(std::exp(-2.0) + std::exp(-1.0) + 1), 1e-6);
    EXPECT_TRUE(std::isnan(loss.at<float>({2})));
    EXPECT_TRUE(std::isnan(loss.at<float>({3})));
    Tensor dz = ops::sparse_softmax_cross_entropy_backward(z, labels, f32({1, 1, 1, 1}, {4}));
    for (int j = 0; j < 3; ++j) {
      EXPECT_TRUE(std::isnan(dz.at<float>({0, j})));
      EXPECT_TRUE(std::isfinite(dz.at<float>({1, j})));
      EXPECT_TRUE(std::isnan(dz.at<float>({3, j})));
    }
  }
}

TEST(NnCrossEntropy, SigmoidCrossEntropyValues) {
  Tensor x = f32({0, 0, 2, -3, 0.5f}, {5});
  Tensor t = f32({0.5f, 1, 0, 1, 0.25f}, {5});
  std::vector<double> want;
  for (int i = 0; i < 5; ++i) {
    double xi = x.get_as_double(i), ti = t.get_as_double(i);
    double p = 1 / (1 + std::exp(-xi));
    want.push_back(-(ti * std::log(p) + (1 - ti) * std::log(1 - p)));
  }
  EXPECT_NEAR(want[0], std::log(2.0), 1e-12);  // the hand-checked one
  EXPECT_TRUE(tensors_near(ops::sigmoid_cross_entropy(x, t), from_double(want, {5}), kAtol, kRtol));
  testing::note_reference_tested("sigmoid_cross_entropy");
}

TEST(NnCrossEntropy, BackwardOpsMatchFormulas) {
  Rng rng(8);
  Tensor z = testing::random_tensor({3, 4}, rng, -2, 2);
  Tensor t = testing::random_tensor({3, 4}, rng, 0, 1);
  Tensor dy = testing::random_tensor({3}, rng, -1, 1);
  Tensor p = softmax_ref(z, -1, false), lp = softmax_ref(z, -1, true);
  std::vector<double> dz(12), dt(12), dz_sparse(12);
  Tensor labels = Tensor::from_vector<int64_t>({2, 0, 3}, {3});
  for (int r = 0; r < 3; ++r) {
    double tsum = 0;
    for (int c = 0; c < 4; ++c) tsum += t.get_as_double(r * 4 + c);
    for (int c = 0; c < 4; ++c) {
      int e = r * 4 + c;
      dz[e] = dy.get_as_double(r) * (p.get_as_double(e) * tsum - t.get_as_double(e));
      dt[e] = -dy.get_as_double(r) * lp.get_as_double(e);
      dz_sparse[e] = dy.get_as_double(r) * (p.get_as_double(e) - (c == labels.data<int64_t>()[r]));
    }
  }
  auto d = ops::softmax_cross_entropy_backward(z, t, dy);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_TRUE(tensors_near(d[0], from_double(dz, {3, 4}), kAtol, kRtol));
  EXPECT_TRUE(tensors_near(d[1], from_double(dt, {3, 4}), kAtol, kRtol));
  EXPECT_TRUE(tensors_near(ops::sparse_softmax_cross_entropy_backward(z, labels, dy),
                           from_double(dz_sparse, {3, 4}), kAtol, kRtol));
  Tensor dye = testing::random_tensor({3, 4}, rng, -1, 1);
  std::vector<double> dx(12);
  for (int e = 0; e < 12; ++e)
    dx[e] = dye.get_as_double(e) * (1 / (1 + std::exp(-z.get_as_double(e))) - t.get_as_double(e));
  EXPECT_TRUE(tensors_near(ops::sigmoid_cross_entropy_backward(z, t, dye), from_double(dx, {3, 4}),
                           kAtol, kRtol));
  testing::note_reference_tested("softmax_cross_entropy_backward");
  testing::note_reference_tested("sparse_softmax_cross_entropy_backward");
  testing::note_reference_tested("sigmoid_cross_entropy_backward");
}

TEST(NnCrossEntropy, Gradients) {
  Rng rng(9);
  expect_gradients_match("softmax_cross_entropy", {testing::random_tensor({3, 4}, rng, -2, 2),
                                                   testing::random_tensor({3, 4}, rng, 0, 1)});
  expect_gradients_match("softmax_cross_entropy", {testing::random_tensor({2, 2, 3}, rng, -2, 2),
                                                   testing::random_tensor({2, 2, 3}, rng, 0, 1)});
  for (DType dt : {DType::kS32, DType::kS64})
    expect_gradients_match("sparse_softmax_cross_entropy",
                           {testing::random_tensor({4, 5}, rng, -2, 2),
                            testing::random_int_tensor({4}, rng, 0, 4, dt)});
  expect_gradients_match("sigmoid_cross_entropy", {testing::random_tensor({2, 5}, rng, -3, 3),
                                                   testing::random_tensor({2, 5}, rng, 0, 1)});
}

TEST(NnCrossEntropy, Errors) {
  Tensor z = Tensor::zeros({2, 3});
  expect_throws_with<ShapeError>(
      [&] {
        ops::softmax_cross_entropy(z, Tensor::zeros({2, 4}));
      },
      "softmax_cross_entropy: argument 'labels': expected the shape of "
      "'logits' [2,3] but found [2,4]");
  expect_throws_with<DTypeError>(
      [&] {
        ops::softmax_cross_entropy(z, Tensor::zeros({2, 3}, DType::kS64));
      },
      "argument 'labels': expected dtype f32");
  expect_throws_with<ShapeError>(
      [&] {
        ops::sparse_softmax_cross_entropy(z, Tensor::zeros({2, 1}, DType::kS64));
      },
      "sparse_softmax_cross_entropy: argument 'labels': expected shape [2] (the leading dims of "
      "logits [2,3]) but found [2,1]");
  expect_throws_with<DTypeError>([&] { ops::sparse_softmax_cross_entropy(z, Tensor::zeros({2})); },
                                 "argument 'labels': expected dtype s32 or s64 but found f32[2]");
  expect_throws_with<ShapeError>(
      [&] { ops::sparse_softmax_cross_entropy(Tensor::scalar(1), Tensor::zeros({}, DType::kS64)); },
      "argument 'logits': expected rank >= 1");
  expect_throws_with<ShapeError>([&] { ops::sigmoid_cross_entropy(z, Tensor::zeros({3})); },
                                 "sigmoid_cross_entropy: argument 'labels': expected the shape");
  expect_throws_with<ShapeError>(
      [&] { ops::softmax_cross_entropy_backward(z, z, Tensor::zeros({3})); },
      "argument 'dy': expected shape [2] (the per-example loss shape) but found [3]");
}

TEST(NnCrossEntropy, GraphWithUnknownBatch) {
  Graph g;
  Value z = g.placeholder("z", DType::kF32, {kUnknown, 4});
  Value labels = g.placeholder("labels", DType::kS64, {kUnknown});
  Value t = g.placeholder("t", DType::kF32, {kUnknown, 4});
  Value sparse = ops::sparse_softmax_cross_entropy(z, labels);
  Value dense = ops::softmax_cross_entropy(z, t);
  EXPECT_EQ(sparse.shape(), Shape({kUnknown}));
  auto grads = gradients({sparse, dense}, {z, t}, {ops::ones_like(sparse), ops::ones_like(dense)});
  Executor ex(g, {sparse, dense, grads[0], grads[1]});
  Rng rng(10);
  for (int64_t b : {2, 5}) {
    Tensor tz = testing::random_tensor({b, 4}, rng, -2, 2);
    Tensor tl = testing::random_int_tensor({b}, rng, 0, 3);
    Tensor tt = testing::random_tensor({b, 4}, rng, 0, 1);
    auto out = ex.run({{z, tz}, {labels, tl}, {t, tt}});
    EXPECT_TRUE(tensors_equal(out[0], ops::sparse_softmax_cross_entropy(tz, tl)));
    EXPECT_TRUE(tensors_equal(out[1], ops::softmax_cross_entropy(tz, tt)));
    Tensor ones = Tensor::full({b}, 1.0);
    Tensor want_dz = ops::sparse_softmax_cross_entropy_backward(tz, tl, ones) +
                     ops::softmax_cross_entropy_backward(tz, tt, ones)[0];
    EXPECT_TRUE(tensors_near(out[2], want_dz, 1e-6, 0));
    EXPECT_TRUE(tensors_equal(out[3], ops::softmax_cross_entropy_backward(tz, tt, ones)[1]));
  }
}

TEST(NnCrossEntropy, ThreadCountIndependent) {
  Rng rng(11);
  Tensor z = testing::random_tensor({4000, 10}, rng, -5, 5);
  Tensor t = testing::random_tensor({4000, 10}, rng, 0, 1);
  Tensor labels = testing::random_int_tensor({4000}, rng, 0, 9);
  Tensor dy = testing::random_tensor({4000}, rng, -1, 1);
  expect_thread_count_independent([&] {
    auto d = ops::softmax_cross_entropy_backward(z, t, dy);
    return std::vector<Tensor>{ops::softmax_cross_entropy(z, t),
                               ops::sparse_softmax_cross_entropy(z, labels),
                               d[0],
                               d[1],
                               ops::sparse_softmax_cross_entropy_backward(z, labels, dy),
                               ops::sigmoid_cross_entropy(z, t)};
  });
}

// ---- batch normalization -------------------------------------------------------------------

nlohmann::json load_golden(const std::string& name) {
  std::ifstream f(testing::shared_dir() + "/testdata/keras/" + name);
  EXPECT_TRUE(f.good()) << "missing golden file " << name << " under " << testing::shared_dir();
  return f.good() ? nlohmann::json::parse(f) : nlohmann::json();
}

// A {shape, dtype, data} object as an f32 tensor (numbers parsed as double, cast to float).
Tensor json_tensor(const nlohmann::json& j) {
  std::vector<int64_t> shape = j.at("shape").get<std::vector<int64_t>>();
  std::vector<float> data;
  for (double d : j.at("data").get<std::vector<double>>()) data.push_back(static_cast<float>(d));
  return Tensor::from_vector<float>(data, Shape(shape));
}

const nlohmann::json& weight(const nlohmann::json& weights, const std::string& name) {
  for (const auto& w : weights)
    if (w.at("name") == name) return w;
  throw std::runtime_error("no weight " + name);
}

TEST(NnBatchNorm, KerasGoldenDense) {
  nlohmann::json j = load_golden("dev_bn_dense.json");
  ASSERT_FALSE(j.is_null());
  const double atol = j["tolerance"]["atol"], rtol = j["tolerance"]["rtol"];
  const double eps = j["layer"]["config"]["epsilon"], momentum = j["layer"]["config"]["momentum"];
  ASSERT_EQ(j["layer"]["config"]["axis"], -1);
  Tensor x = json_tensor(j["inputs"]["x"]);
  Tensor gamma = json_tensor(weight(j["weights"], "gamma"));
  Tensor beta = json_tensor(weight(j["weights"], "beta"));
  Tensor moving_mean = json_tensor(weight(j["weights"], "moving_mean"));
  Tensor moving_var = json_tensor(weight(j["weights"], "moving_variance"));
  const auto& outs = j["outputs"];

  // Training: output, batch statistics, and the gradients of sum(y * cotangent).
  Graph g;
  Value vx = g.placeholder("x", DType::kF32, {kUnknown, 2});
  Value vg = g.placeholder("gamma", DType::kF32, {2});
  Value vb = g.placeholder("beta", DType::kF32, {2});
  auto bn = ops::batch_norm_training(vx, vg, vb, -1, eps);
  ASSERT_EQ(j["grad"]["cotangents"][0]["for"], "output");
  Value cot = g.constant(json_tensor(j["grad"]["cotangents"][0]));
  auto grads = gradients({bn.y}, {vx, vg, vb}, {cot});
  Executor ex(g, {bn.y, bn.mean, bn.variance, grads[0], grads[1], grads[2]});
  auto out = ex.run({{vx, x}, {vg, gamma}, {vb, beta}});
  EXPECT_TRUE(tensors_near(out[0], json_tensor(outs["output_training_true"]), atol, rtol));
  EXPECT_TRUE(tensors_near(out[1], json_tensor(outs["batch_mean"]), atol, rtol));
  EXPECT_TRUE(tensors_near(out[2], json_tensor(outs["batch_variance_biased"]), atol, rtol));
  const auto& gt = j["grad"]["training_true"];
  EXPECT_TRUE(tensors_near(out[3], json_tensor(gt["d_inputs"]["x"]), atol, rtol));
  EXPECT_TRUE(tensors_near(out[4], json_tensor(weight(gt["d_weights"], "gamma")), atol, rtol));
  EXPECT_TRUE(tensors_near(out[5], json_tensor(weight(gt["d_weights"], "beta")), atol, rtol));

  // Inference with the moving statistics (training false / omitted), and its x gradient.
  Tensor inf = ops::batch_norm_inference(x, gamma, beta, moving_mean, moving_var, -1, eps);
  EXPECT_TRUE(tensors_near(inf, json_tensor(outs["output_training_false"]), atol, rtol));
  EXPECT_TRUE(tensors_near(inf, json_tensor(outs["output_training_omitted"]), atol, rtol));
  auto dinf = ops::batch_norm_inference_backward(x, gamma, moving_mean, moving_var,
                                                 json_tensor(j["grad"]["cotangents"][0]), -1, eps);
  EXPECT_TRUE(
      tensors_near(dinf[0], json_tensor(j["grad"]["training_false"]["d_inputs"]["x"]), atol, rtol));

  // The Keras 3 moving update (biased variance) done with our batch statistics, then inference.
  Tensor new_mean = moving_mean * momentum + out[1] * (1 - momentum);
  Tensor new_var = moving_var * momentum + out[2] * (1 - momentum);
  EXPECT_TRUE(
      tensors_near(new_mean, json_tensor(outs["moving_mean_after_one_training_call"]), atol, rtol));
  EXPECT_TRUE(tensors_near(new_var, json_tensor(outs["moving_variance_after_one_training_call"]),
                           atol, rtol));
  EXPECT_TRUE(tensors_near(ops::batch_norm_inference(x, gamma, beta, new_mean, new_var, -1, eps),
                           json_tensor(outs["output_training_false_after_update"]), atol, rtol));
}

TEST(NnBatchNorm, TrainingMatchesDoubleOnEveryAxis) {
  Rng rng(12);
  Tensor x = testing::random_tensor({2, 3, 4}, rng, -2, 3);
  for (int axis : {0, 1, 2, -1}) {
    SCOPED_TRACE(axis);
    const int64_t c = x.dim(axis);
    Tensor gamma = testing::random_tensor({c}, rng, 0.5, 2),
           beta = testing::random_tensor({c}, rng, -1, 1);
    auto [mean, var] = moments_ref(x, axis);
    auto bn = ops::batch_norm_training(x, gamma, beta, axis, 0.01);
    EXPECT_TRUE(tensors_near(bn.y, bn_ref(x, gamma, beta, mean, var, axis, 0.01), kAtol, kRtol));
    EXPECT_TRUE(tensors_near(bn.mean, from_double(mean, {c}), kAtol, kRtol));
    EXPECT_TRUE(tensors_near(bn.variance, from_double(var, {c}), kAtol, kRtol));
    // Inference with the same statistics gives the same output.
    EXPECT_TRUE(
        tensors_near(ops::batch_norm_inference(x, gamma, beta, bn.mean, bn.variance, axis, 0.01),
                     bn.y, kAtol, kRtol));
  }
  // By hand, eps 0: channel 0 {1, 3}: mean 2, variance 1, y = x - 2; channel 1 {10, 14}: mean 12,
  // variance 4, gamma 2, beta 5: y = (x - 12) + 5.
  auto bn = ops::batch_norm_training(f32({1, 10, 3, 14}, {2, 2}), f32({1, 2}, {2}),
                                     f32({0, 5}, {2}), -1, 0.0);
  EXPECT_TRUE(tensors_equal(bn.y, f32({-1, 3, 1, 7}, {2, 2})));
  EXPECT_TRUE(tensors_equal(bn.mean, f32({2, 12}, {2})));
  EXPECT_TRUE(tensors_equal(bn.variance, f32({1, 4}, {2})));
  testing::note_reference_tested("batch_norm_training");
  testing::note_reference_tested("batch_norm_inference");
}

TEST(NnBatchNorm, LargeMeanDoesNotCancel) {
  // Values 1000 +- 1e-2: float E[x^2] - E[x]^2 would lose everything; two passes in double do not.
  Tensor x = f32({1000.01f, 999.99f, 1000.01f, 999.99f}, {4, 1});
  auto bn = ops::batch_norm_training(x, f32({1}, {1}), f32({0}, {1}), -1, 0.0);
  const double d = (1000.01f - 999.99f) / 2.0;
  EXPECT_NEAR(bn.variance.item<float>(), d * d, 1e-9);
  EXPECT_TRUE(tensors_near(bn.y, f32({1, -1, 1, -1}, {4, 1}), 1e-5, 0));
}

TEST(NnBatchNorm, BackwardOpsMatchFormulas) {
  Rng rng(13);
  const double eps = 1e-3;
  Tensor x = testing::random_tensor({3, 2, 4}, rng, -2, 2);
  Tensor gamma = testing::random_tensor({2}, rng, 0.5, 2);
  Tensor dy = testing::random_tensor({3, 2, 4}, rng, -1, 1);
  Tensor mean = testing::random_tensor({2}, rng, -0.5, 0.5),
         var = testing::random_tensor({2}, rng, 0.5, 2);
  Tensor dmean = testing::random_tensor({2}, rng, -1, 1),
         dvar = testing::random_tensor({2}, rng, -1, 1);
  const View v = view_of(x.shape(), 1);
  const double n = 12;
  std::vector<double> sdy(2, 0), sdyxc(2, 0);
  for (int64_t o = 0; o < v.outer; ++o)
    for (int64_t k = 0; k < 2; ++k)
      for (int64_t i = 0; i < v.inner; ++i) {
        int64_t e = at(v, o, k, i);
        sdy[k] += dy.get_as_double(e);
        sdyxc[k] += dy.get_as_double(e) * (x.get_as_double(e) - mean.get_as_double(k));
      }
  std::vector<double> dx_train(x.numel()), dx_inf(x.numel()), dx_mom(x.numel());
  std::vector<double> dgamma(2), dbeta(2), dm(2), dv(2);
  for (int64_t k = 0; k < 2; ++k) {
    double r = 1 / std::sqrt(var.get_as_double(k) + eps), gk = gamma.get_as_double(k);
    dgamma[k] = sdyxc[k] * r;
    dbeta[k] = sdy[k];
    dm[k] = -gk * r * sdy[k];
    dv[k] = -0.5 * gk * r * r * r * sdyxc[k];
    for (int64_t o = 0; o < v.outer; ++o)
      for (int64_t i = 0; i < v.inner; ++i) {
        int64_t e = at(v, o, k, i);
        double xhat = (x.get_as_double(e) - mean.get_as_double(k)) * r;
        dx_train[e] = gk * r / n * (n * dy.get_as_double(e) - sdy[k] - xhat * sdyxc[k] * r);
        dx_inf[e] = dy.get_as_double(e) * gk * r;
        dx_mom[e] = dmean.get_as_double(k) / n +
                    dvar.get_as_double(k) * 2 * (x.get_as_double(e) - mean.get_as_double(k)) / n;
      }
  }
  auto t = ops::batch_norm_training_backward(x, gamma, mean, var, dy, 1, eps);
  ASSERT_EQ(t.size(), 3u);
  EXPECT_TRUE(tensors_near(t[0], from_double(dx_train, x.shape()), kAtol, kRtol));
  EXPECT_TRUE(tensors_near(t[1], from_double(dgamma, {2}), kAtol, kRtol));
  EXPECT_TRUE(tensors_near(t[2], from_double(dbeta, {2}), kAtol, kRtol));
  auto inf = ops::batch_norm_inference_backward(x, gamma, mean, var, dy, 1, eps);
  ASSERT_EQ(inf.size(), 5u);
  EXPECT_TRUE(tensors_near(inf[0], from_double(dx_inf, x.shape()), kAtol, kRtol));
  EXPECT_TRUE(tensors_near(inf[1], from_double(dgamma, {2}), kAtol, kRtol));
  EXPECT_TRUE(tensors_near(inf[2], from_double(dbeta, {2}), kAtol, kRtol));
  EXPECT_TRUE(tensors_near(inf[3], from_double(dm, {2}), kAtol, kRtol));
  EXPECT_TRUE(tensors_near(inf[4], from_double(dv, {2}), kAtol, kRtol));
  EXPECT_TRUE(tensors_near(ops::batch_norm_moments_backward(x, mean, dmean, dvar, 1),
                           from_double(dx_mom, x.shape()), kAtol, kRtol));
  testing::note_reference_tested("batch_norm_training_backward");
  testing::note_reference_tested("batch_norm_inference_backward");
  testing::note_reference_tested("batch_norm_moments_backward");
}

TEST(NnBatchNorm, Gradients) {
  Rng rng(14);
  auto r = [&](Shape s, float lo = -1, float hi = 1) {
    return testing::random_tensor(s, rng, lo, hi);
  };
  // All three outputs get cotangents: the paths through the batch mean and variance are checked.
  expect_gradients_match("batch_norm_training", {r({4, 3}), r({3}, 0.5, 1.5), r({3})});
  expect_gradients_match("batch_norm_training", {r({2, 3, 3, 2}), r({2}, 0.5, 1.5), r({2})});
  expect_gradients_match("batch_norm_training", {r({2, 3, 2}), r({3}, 0.5, 1.5), r({3})},
                         {{"axis", 1}, {"epsilon", 0.01}});
  expect_gradients_match("batch_norm_inference",
                         {r({4, 3}), r({3}, 0.5, 1.5), r({3}), r({3}), r({3}, 0.5, 1.5)});
  expect_gradients_match("batch_norm_inference",
                         {r({2, 3, 2}), r({3}, 0.5, 1.5), r({3}), r({3}), r({3}, 0.5, 1.5)},
                         {{"axis", 1}});
}

TEST(NnBatchNorm, GradientOfStatisticsOutputs) {
  // d/dx of sum(mean * a) + sum(variance * b) is a/n + 2 b (x - mean)/n.
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 2});
  auto bn = ops::batch_norm_training(x, g.constant(f32({1, 1}, {2})), g.constant(f32({0, 0}, {2})));
  auto grads = gradients({bn.mean, bn.variance}, {x},
                         {g.constant(f32({1, 2}, {2})), g.constant(f32({3, 0}, {2}))});
  Executor ex(g, grads);
  Tensor tx = f32({1, 0, 3, 4}, {2, 2});  // means 2, 2
  auto out = ex.run({{x, tx}});
  EXPECT_TRUE(tensors_near(out[0], f32({0.5f - 3, 1, 0.5f + 3, 1}, {2, 2}), 1e-6, 0));
}

TEST(NnBatchNorm, Errors) {
  Tensor x = Tensor::zeros({4, 3});
  Tensor c3 = Tensor::zeros({3});
  expect_throws_with<ShapeError>([&] { ops::batch_norm_training(x, Tensor::zeros({4}), c3); },
                                 "batch_norm_training: argument 'gamma': expected shape [3] (one "
                                 "value per channel of x) but found [4]");
  expect_throws_with<ShapeError>(
      [&] {
        ops::batch_norm_training(x, c3, Tensor::zeros({1, 3}));
      },
      "argument 'beta': expected shape [3]");
  expect_throws_with<ShapeError>(
      [&] { ops::batch_norm_inference(x, c3, c3, c3, Tensor::zeros({4}), 1); },
      "argument 'variance': expected shape [3]");
  expect_throws_with<DTypeError>([&] { ops::batch_norm_training(x.to(DType::kS32), c3, c3); },
                                 "argument 'x': expected dtype f32");
  expect_throws_with<ValueError>([&] { ops::batch_norm_training(x, c3, c3, 2); },
                                 "axis 2 is out of range");
  expect_throws_with<ValueError>([&] { ops::batch_norm_training(x, c3, c3, -1, -1e-3); },
                                 "attribute 'epsilon': expected a finite value >= 0");
  expect_throws_with<ShapeError>(
      [&] {
        ops::batch_norm_training_backward(x, c3, c3, c3, Tensor::zeros({4, 4}));
      },
      "argument 'dy': expected the shape of 'x' [4,3] but found [4,4]");
}

TEST(NnBatchNorm, GraphWithUnknownBatch) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 2, 3});
  Value gamma = g.variable("gamma", f32({1, 2, 3}, {3}));
  Value beta = g.variable("beta", f32({0, 0, 1}, {3}));
  auto bn = ops::batch_norm_training(x, gamma, beta);
  EXPECT_EQ(bn.y.shape(), Shape({kUnknown, 2, 3}));
  EXPECT_EQ(bn.mean.shape(), Shape({3}));
  Value loss_like = ops::mul(bn.y, bn.y);
  auto grads = gradients({loss_like}, {gamma}, {ops::ones_like(loss_like)});
  Executor ex(g, {bn.y, grads[0]});
  Rng rng(15);
  for (int64_t b : {1, 4}) {
    Tensor tx = testing::random_tensor({b, 2, 3}, rng, -2, 2);
    auto out = ex.run({{x, tx}});
    auto eager = ops::batch_norm_training(tx, g.variable_tensor(gamma), g.variable_tensor(beta));
    EXPECT_TRUE(tensors_equal(out[0], eager.y));
    // d sum(y^2)/d gamma = 2 sum(y * xhat) with xhat = (y - beta) / gamma.
    auto yv = eager.y;
    for (int c = 0; c < 3; ++c) {
      double want = 0, gc = c + 1.0, bc = c == 2 ? 1.0 : 0.0;
      for (int64_t e = c; e < yv.numel(); e += 3)
        want += 2 * yv.get_as_double(e) * (yv.get_as_double(e) - bc) / gc;
      EXPECT_NEAR(out[1].get_as_double(c), want, 1e-4 * std::max(1.0, std::abs(want)));
    }
  }
}

TEST(NnBatchNorm, ThreadCountIndependent) {
  Rng rng(16);
  for (int axis : {-1, 1}) {
    Tensor x = testing::random_tensor({64, 40, 24}, rng, -2, 3);
    const int64_t c = x.dim(axis);
    Tensor gamma = testing::random_tensor({c}, rng, 0.5, 2),
           beta = testing::random_tensor({c}, rng);
    Tensor dy = testing::random_tensor(x.shape(), rng);
    expect_thread_count_independent([&] {
      auto bn = ops::batch_norm_training(x, gamma, beta, axis);
      auto d = ops::batch_norm_training_backward(x, gamma, bn.mean, bn.variance, dy, axis);
      auto di = ops::batch_norm_inference_backward(x, gamma, bn.mean, bn.variance, dy, axis);
      return std::vector<Tensor>{bn.y, bn.mean, bn.variance, d[0], d[1], d[2], di[0], di[3], di[4]};
    });
  }
}

// ---- edge sizes --------------------------------------------------------------------------

TEST(NnEdgeSizes, OneClassOneExampleAndEmptyTensors) {
  // One class: softmax is 1, log_softmax 0, the cross-entropy of a label 1 is 0.
  Tensor z = f32({3, -7, 0}, {3, 1});
  EXPECT_TRUE(tensors_equal(ops::softmax(z), Tensor::full({3, 1}, 1.0)));
  EXPECT_TRUE(tensors_equal(ops::log_softmax(z), Tensor::zeros({3, 1})));
  EXPECT_TRUE(
      tensors_equal(ops::softmax_cross_entropy(z, Tensor::full({3, 1}, 1.0)), Tensor::zeros({3})));
  EXPECT_TRUE(tensors_equal(ops::sparse_softmax_cross_entropy(z, Tensor::zeros({3}, DType::kS64)),
                            Tensor::zeros({3})));
  // A batch of one: variance 0, so y = beta.
  auto one = ops::batch_norm_training(f32({4, 5}, {1, 2}), f32({2, 3}, {2}), f32({0.5f, -1}, {2}));
  EXPECT_TRUE(tensors_equal(one.y, f32({0.5f, -1}, {1, 2})));
  EXPECT_TRUE(tensors_equal(one.variance, Tensor::zeros({2})));
  // Empty batches: empty outputs; batch statistics of nothing are NaN.
  Tensor empty = Tensor::zeros({0, 4});
  EXPECT_EQ(ops::softmax(empty).shape(), Shape({0, 4}));
  EXPECT_EQ(ops::sparse_softmax_cross_entropy(empty, Tensor::zeros({0}, DType::kS32)).shape(),
            Shape({0}));
  EXPECT_EQ(drop(empty, 0, 0.5, 1).shape(), Shape({0, 4}));
  auto bn = ops::batch_norm_training(empty, Tensor::full({4}, 1.0), Tensor::zeros({4}));
  EXPECT_EQ(bn.y.shape(), Shape({0, 4}));
  EXPECT_TRUE(std::isnan(bn.mean.at<float>({0})));
  auto d = ops::batch_norm_training_backward(empty, Tensor::full({4}, 1.0), Tensor::zeros({4}),
                                             Tensor::full({4}, 1.0), empty);
  EXPECT_TRUE(tensors_equal(d[1], Tensor::zeros({4})));
  EXPECT_TRUE(tensors_equal(d[2], Tensor::zeros({4})));
  // Zero classes: no label is valid.
  Tensor no_classes = Tensor::zeros({2, 0});
  EXPECT_TRUE(
      tensors_equal(ops::softmax_cross_entropy(no_classes, no_classes), Tensor::zeros({2})));
  EXPECT_TRUE(
      std::isnan(ops::sparse_softmax_cross_entropy(no_classes, Tensor::zeros({2}, DType::kS64))
                     .at<float>({0})));
}

// ---- dropout -------------------------------------------------------------------------------

TEST(NnDropout, KerasGoldenAtTheOpLevel) {
  // Of dev_dropout_inference_identity, what concerns the op: rate 0 in training is the exact
  // identity, and with rate 0.3 every element is 0 or x / 0.7. (Inference never calls the op:
  // that part is the layer's.)
  nlohmann::json j = load_golden("dev_dropout_inference_identity.json");
  ASSERT_FALSE(j.is_null());
  Tensor x = json_tensor(j["inputs"]["x"]);
  EXPECT_TRUE(
      tensors_equal(drop(x, 0, 0.0, 1), json_tensor(j["outputs"]["dropout_rate0_training_true"])));
  const double rate = j["layer"]["config"]["rate"];
  const double atol = j["tolerance"]["atol"], rtol = j["tolerance"]["rtol"];
  int kept = 0;
  for (int64_t step = 0; step < 20; ++step) {
    Tensor y = drop(x, step, rate, j["layer"]["config"]["seed"]);
    for (int64_t i = 0; i < x.numel(); ++i) {
      double yi = y.get_as_double(i), want = x.get_as_double(i) / (1 - rate);
      if (yi != 0) {
        EXPECT_NEAR(yi, want, atol + rtol * std::abs(want));
        ++kept;
      }
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, 200);
  testing::note_reference_tested("dropout");
}

TEST(NnDropout, RateZeroIsIdentityAndRateOneGivesZeros) {
  Rng rng(17);
  Tensor x = testing::random_tensor({7, 13}, rng);
  EXPECT_TRUE(tensors_equal(drop(x, 5, 0.0, 3), x));
  EXPECT_TRUE(tensors_equal(drop(x, 5, 1.0, 3), Tensor::zeros({7, 13})));
}

TEST(NnDropout, MaskFollowsTheDocumentedStream) {
  Tensor x = Tensor::full({3, 5}, 2.0);
  const double rate = 0.4;
  const float scale = static_cast<float>(1 / (1 - rate));
  Tensor y = drop(x, 9, rate, 42);
  for (int64_t i = 0; i < 15; ++i) {
    bool keep = philox_uniform(42, 9, i) >= rate;
    EXPECT_EQ(y.data<float>()[i], keep ? 2.0f * scale : 0.0f) << i;
  }
}

TEST(NnDropout, KeptFractionAndScaling) {
  const int64_t n = 100000;
  Rng rng(18);
  Tensor x = testing::random_tensor({n}, rng, 0.5f, 1.5f);
  for (double rate : {0.1, 0.3, 0.5, 0.9}) {
    SCOPED_TRACE(rate);
    Tensor y = drop(x, 1, rate, 7);
    const float scale = static_cast<float>(1 / (1 - rate));
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
      float yi = y.data<float>()[i];
      if (yi != 0) {
        ++kept;
        EXPECT_EQ(yi, x.data<float>()[i] * scale);
      }
    }
    // Binomial standard deviation <= sqrt(0.25 / n) = 0.0016; 0.01 is > 6 sigma.
    EXPECT_NEAR(static_cast<double>(kept) / n, 1 - rate, 0.01);
  }
}

TEST(NnDropout, MaskDependsOnSeedAndStepOnly) {
  Tensor x = Tensor::full({50000}, 1.0);
  Tensor a = drop(x, 3, 0.5, 11);
  EXPECT_TRUE(tensors_equal(drop(x, 3, 0.5, 11), a));
  auto differing = [&](const Tensor& b) {
    int64_t d = 0;
    for (int64_t i = 0; i < x.numel(); ++i)
      d += (a.data<float>()[i] == 0) != (b.data<float>()[i] == 0);
    return static_cast<double>(d) / x.numel();
  };
  // Independent masks differ at 2 * 0.5 * 0.5 = half the positions.
  EXPECT_NEAR(differing(drop(x, 4, 0.5, 11)), 0.5, 0.02);
  EXPECT_NEAR(differing(drop(x, 3, 0.5, 12)), 0.5, 0.02);
}

TEST(NnDropout, ThreadCountIndependent) {
  Rng rng(19);
  Tensor x = testing::random_tensor({300, 400}, rng);
  expect_thread_count_independent([&] {
    return std::vector<Tensor>{drop(x, 2, 0.3, 5), drop(x, 2, 0.3, 5, {1, -1})};
  });
}

TEST(NnDropout, NoiseShapeBroadcastsTheMask) {
  const int64_t b = 3, t = 4, f = 5;
  Tensor x = Tensor::full({b, t, f}, 1.0);
  const double rate = 0.5;
  for (std::vector<int64_t> noise : std::vector<std::vector<int64_t>>{{-1, 1, -1}, {3, 1, 5}}) {
    Tensor y = drop(x, 6, rate, 8, noise);
    for (int64_t bi = 0; bi < b; ++bi)
      for (int64_t fi = 0; fi < f; ++fi) {
        // The mask element of (b, *, f) is element b * f + fi of the [b, 1, f] noise tensor.
        bool keep = philox_uniform(8, 6, bi * f + fi) >= rate;
        for (int64_t ti = 0; ti < t; ++ti) EXPECT_EQ(y.at<float>({bi, ti, fi}), keep ? 2.0f : 0.0f);
      }
  }
  // A noise shape equal to x's shape is the default mask.
  EXPECT_TRUE(tensors_equal(drop(x, 6, rate, 8, {-1, -1, -1}), drop(x, 6, rate, 8)));
  // All-ones noise shape: one draw for the whole tensor.
  Tensor all = drop(x, 6, rate, 8, {1, 1, 1});
  bool keep = philox_uniform(8, 6, 0) >= rate;
  EXPECT_TRUE(tensors_equal(all, Tensor::full({b, t, f}, keep ? 2.0 : 0.0)));
}

TEST(NnDropout, GradientUsesTheSameMask) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 6});
  Value step = g.placeholder("step", DType::kS64, {});
  Value y = ops::dropout(x, step, 0.4, 21, {-1, 1});
  Value c = g.placeholder("c", DType::kF32, {kUnknown, 6});
  auto grads = gradients({y}, {x}, {c});
  Executor ex(g, {y, grads[0]});
  Rng rng(20);
  Tensor tx = testing::random_tensor({40, 6}, rng, 0.5f, 1.5f);
  Tensor tc = testing::random_tensor({40, 6}, rng, 0.5f, 1.5f);
  for (int64_t s : {0, 1}) {
    auto out = ex.run({{x, tx}, {step, s64_scalar(s)}, {c, tc}});
    EXPECT_TRUE(tensors_equal(out[0], drop(tx, s, 0.4, 21, {-1, 1})));
    EXPECT_TRUE(tensors_equal(out[1], drop(tc, s, 0.4, 21, {-1, 1})));
    for (int64_t i = 0; i < tx.numel(); ++i)
      EXPECT_EQ(out[0].data<float>()[i] == 0, out[1].data<float>()[i] == 0) << i;
  }
  for (double rate : {0.0, 0.3, 1.0})
    expect_gradients_match("dropout", {testing::random_tensor({4, 5}, rng), s64_scalar(3)},
                           {{"rate", rate}, {"seed", 1}});
}

TEST(NnDropout, StepVariableAdvancesTheMask) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 100});
  Value step = g.variable("step", Tensor::zeros({}, DType::kS64), /*trainable=*/false);
  Value y = ops::dropout(x, step, 0.5, 2);
  Executor ex(g, {y}, {{step, step + 1.0}});
  Tensor tx = Tensor::full({10, 100}, 1.0);
  Tensor first = ex.run({{x, tx}})[0];
  Tensor second = ex.run({{x, tx}})[0];
  EXPECT_TRUE(tensors_equal(first, drop(tx, 0, 0.5, 2)));
  EXPECT_TRUE(tensors_equal(second, drop(tx, 1, 0.5, 2)));
  EXPECT_FALSE(tensors_equal(first, second));
}

TEST(NnDropout, Errors) {
  Tensor x = Tensor::zeros({2, 3});
  for (double rate : {-0.1, 1.5, std::nan("")})
    expect_throws_with<ValueError>(
        [&] { drop(x, 0, rate, 0); },
        "dropout: attribute 'rate': expected a value in [0, 1] but found");
  expect_throws_with<DTypeError>([&] { ops::dropout(x, Tensor::zeros({}, DType::kS32), 0.5, 0); },
                                 "dropout: argument 'step': expected dtype s64 but found s32[]");
  expect_throws_with<ShapeError>([&] { ops::dropout(x, Tensor::zeros({1}, DType::kS64), 0.5, 0); },
                                 "argument 'step': expected a scalar (shape []) but found [1]");
  expect_throws_with<DTypeError>([&] { drop(x.to(DType::kS32), 0, 0.5, 0); },
                                 "argument 'x': expected dtype f32");
  expect_throws_with<ShapeError>(
      [&] { drop(x, 0, 0.5, 0, {2}); },
      "attribute 'noise_shape': expected 2 dims each 1, -1 or equal to x's "
      "dim (x is [2,3]) but found [2]");
  expect_throws_with<ShapeError>([&] { drop(x, 0, 0.5, 0, {2, 2}); }, "attribute 'noise_shape'");
}

}  // namespace
}  // namespace lowbit
