#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "lowbit/threads.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::expect_gradients_match;
using testing::expect_throws_with;
using testing::note_reference_tested;
using testing::tensors_equal;
using testing::tensors_near;

Tensor f32(std::vector<float> v, Shape s) { return Tensor::from_vector<float>(v, s); }

// [[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]], [[12, ...], ...]]
Tensor iota_234() {
  std::vector<float> v(24);
  for (int i = 0; i < 24; ++i) v[i] = static_cast<float>(i);
  return f32(v, {2, 3, 4});
}

TEST(Reduce, SumGolden) {
  note_reference_tested("sum");
  Tensor x = f32({1, 5, 3, 4, 2, 6}, {2, 3});
  EXPECT_TRUE(tensors_equal(ops::sum(x), Tensor::full({}, 21)));
  EXPECT_TRUE(tensors_equal(ops::sum(x, {1}), f32({9, 12}, {2})));
  EXPECT_TRUE(tensors_equal(ops::sum(x, {-2}, true), f32({5, 7, 9}, {1, 3})));
  EXPECT_TRUE(tensors_equal(ops::sum(x, {}, true), f32({21}, {1, 1})));
  Tensor t = iota_234();
  // axes {0, 2}: for each middle index j, sum over i, k of 12i + 4j + k = 2*(0+..+3) + 8*4j + 48.
  EXPECT_TRUE(tensors_equal(ops::sum(t, {2, 0}), f32({60, 92, 124}, {3})));
  EXPECT_TRUE(tensors_equal(ops::sum(t, {0, 1}), f32({60, 66, 72, 78}, {4})));
  EXPECT_TRUE(
      tensors_equal(ops::sum(t, {1}, true), f32({12, 15, 18, 21, 48, 51, 54, 57}, {2, 1, 4})));
  // A scalar reduces to itself.
  EXPECT_TRUE(tensors_equal(ops::sum(Tensor::scalar(2.5f)), Tensor::scalar(2.5f)));
}

TEST(Reduce, SumAccumulatesInDouble) {
  // 2^24 + 1 + 1 + ... is exact in double; a float accumulator would drop every +1.
  std::vector<float> v(1001, 1.0f);
  v[0] = 16777216.0f;
  Tensor s = ops::sum(f32(v, {1001}));
  EXPECT_EQ(s.item<double>(), 16777216.0 + 1000.0);
}

TEST(Reduce, IntegerSumAndMean) {
  Tensor a = Tensor::from_vector<int32_t>({1, -2, 3, -3, 0, 4}, {2, 3});
  EXPECT_TRUE(tensors_equal(ops::sum(a, {1}), Tensor::from_vector<int32_t>({2, 1}, {2})));
  // The integer mean truncates toward zero: 2/3 -> 0, 1/3 -> 0, (1-3)/2 = -1, (-2+0)/2 = -1.
  EXPECT_TRUE(tensors_equal(ops::mean(a, {1}), Tensor::from_vector<int32_t>({0, 0}, {2})));
  EXPECT_TRUE(tensors_equal(ops::mean(a, {0}), Tensor::from_vector<int32_t>({-1, -1, 3}, {3})));
  Tensor m = Tensor::from_vector<int32_t>({-3, 0}, {2});
  EXPECT_EQ(ops::mean(m).item<int64_t>(), -1);
  // u8 sums wrap to the output dtype (accumulated in int64 first).
  Tensor u = Tensor::from_vector<uint8_t>({200, 100}, {2});
  EXPECT_EQ(ops::sum(u).item<int64_t>(), (200 + 100) % 256);
  Tensor s8 = Tensor::from_vector<int8_t>({-128, 127, 5}, {3});
  EXPECT_EQ(ops::max(s8).item<int64_t>(), 127);
  EXPECT_EQ(ops::min(s8).item<int64_t>(), -128);
  Tensor s64 = Tensor::from_vector<int64_t>({int64_t{1} << 40, int64_t{1} << 40}, {2});
  EXPECT_EQ(ops::sum(s64).item<double>(), std::ldexp(1.0, 41));
}

TEST(Reduce, MeanGolden) {
  note_reference_tested("mean");
  Tensor x = f32({1, 5, 3, 4, 2, 6}, {2, 3});
  EXPECT_TRUE(tensors_equal(ops::mean(x), Tensor::full({}, 3.5)));
  EXPECT_TRUE(tensors_equal(ops::mean(x, {0}, true), f32({2.5f, 3.5f, 4.5f}, {1, 3})));
  EXPECT_TRUE(tensors_equal(ops::mean(x, {1}), f32({3, 4}, {2})));
}

TEST(Reduce, MaxMinGolden) {
  note_reference_tested("max");
  note_reference_tested("min");
  Tensor x = f32({1, 5, 3, 4, -2, 6}, {2, 3});
  EXPECT_TRUE(tensors_equal(ops::max(x), Tensor::full({}, 6)));
  EXPECT_TRUE(tensors_equal(ops::max(x, {-1}), f32({5, 6}, {2})));
  EXPECT_TRUE(tensors_equal(ops::min(x, {0}, true), f32({1, -2, 3}, {1, 3})));
  EXPECT_TRUE(tensors_equal(ops::min(x), Tensor::full({}, -2)));
  Tensor t = iota_234();
  EXPECT_TRUE(tensors_equal(ops::max(t, {0, 2}), f32({15, 19, 23}, {3})));
  EXPECT_TRUE(tensors_equal(ops::min(t, {1}), f32({0, 1, 2, 3, 12, 13, 14, 15}, {2, 4})));
}

TEST(Reduce, NanPropagatesThroughMaxAndMin) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor x = f32({1, nan, 3, 4, 5, 6}, {2, 3});
  Tensor mx = ops::max(x, {1}), mn = ops::min(x, {1});
  EXPECT_TRUE(std::isnan(mx.data<float>()[0]));
  EXPECT_EQ(mx.data<float>()[1], 6.0f);
  EXPECT_TRUE(std::isnan(mn.data<float>()[0]));
  EXPECT_EQ(mn.data<float>()[1], 4.0f);
}

TEST(Reduce, EmptyReductionsGiveTheIdentity) {
  Tensor e = Tensor::zeros({0, 3});
  EXPECT_TRUE(tensors_equal(ops::sum(e, {0}), Tensor::zeros({3})));
  // (Compared as vectors: tensors_near treats inf - inf as a mismatch.)
  EXPECT_EQ(ops::max(e, {0}).to_vector<float>(), std::vector<float>(3, -INFINITY));
  EXPECT_EQ(ops::min(e, {0}).to_vector<float>(), std::vector<float>(3, INFINITY));
  EXPECT_TRUE(std::isnan(ops::mean(e).item<float>()));
  EXPECT_EQ(ops::sum(e, {1}).shape(), Shape({0}));
  Tensor ei = Tensor::zeros({0}, DType::kS32);
  EXPECT_EQ(ops::mean(ei).item<int64_t>(), 0);
  EXPECT_EQ(ops::max(ei).item<int64_t>(), std::numeric_limits<int32_t>::lowest());
}

TEST(Reduce, ArgmaxArgminGolden) {
  note_reference_tested("argmax");
  note_reference_tested("argmin");
  // Ties give the first index.
  Tensor x = f32({1, 5, 5, 4, 2, 4}, {2, 3});
  EXPECT_TRUE(tensors_equal(ops::argmax(x), Tensor::from_vector<int64_t>({1, 0}, {2})));
  EXPECT_TRUE(tensors_equal(ops::argmin(x), Tensor::from_vector<int64_t>({0, 1}, {2})));
  EXPECT_TRUE(
      tensors_equal(ops::argmax(x, 0, true), Tensor::from_vector<int64_t>({1, 0, 0}, {1, 3})));
  EXPECT_TRUE(tensors_equal(ops::argmin(x, -2), Tensor::from_vector<int64_t>({0, 1, 1}, {3})));
  Tensor t = iota_234();
  EXPECT_TRUE(tensors_equal(ops::argmax(t, 1),
                            Tensor::from_vector<int64_t>({2, 2, 2, 2, 2, 2, 2, 2}, {2, 4})));
  Tensor xi = Tensor::from_vector<int8_t>({-5, 7, 7, -9}, {4});
  EXPECT_EQ(ops::argmax(xi).item<int64_t>(), 1);
  EXPECT_EQ(ops::argmin(xi).item<int64_t>(), 3);
  // NaN wins argmax and argmin (its first occurrence), as NumPy.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor xn = f32({1, nan, 9, nan}, {4});
  EXPECT_EQ(ops::argmax(xn).item<int64_t>(), 1);
  EXPECT_EQ(ops::argmin(xn).item<int64_t>(), 1);
  EXPECT_EQ(ops::argmax(x).dtype(), DType::kS64);
}

// Distinct values at least 0.1 apart in random order: max/min have no ties, even within the
// finite-difference step, so they are differentiable at these points.
Tensor spaced_values(const Shape& s, Rng& rng) {
  Tensor t(s, DType::kF32);
  std::vector<float> v(t.numel());
  for (size_t i = 0; i < v.size(); ++i) v[i] = 0.1f * static_cast<float>(i) - 1.0f;
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.next_u32() % i]);
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}

TEST(Reduce, Gradients) {
  Rng rng(7);
  auto r = [&](Shape s) { return spaced_values(s, rng); };
  for (const char* op : {"sum", "mean", "max", "min"}) {
    expect_gradients_match(op, {r({2, 3, 4})});
    expect_gradients_match(op, {r({2, 3, 4})}, {{"axes", std::vector<int64_t>{1}}});
    expect_gradients_match(op, {r({2, 3, 4})},
                           {{"axes", std::vector<int64_t>{0, -1}}, {"keepdims", true}});
    expect_gradients_match(op, {r({3, 5})}, {{"axes", std::vector<int64_t>{0}}});
    expect_gradients_match(op, {r({5})}, {{"keepdims", true}});
  }
}

TEST(Reduce, MaxGradientIsSharedAmongTies) {
  // TensorFlow's _MinOrMaxGrad: dy / (number of maxima) to each maximum.
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {2, 3});
  Value y = ops::max(x, {1});
  Value z = ops::min(x, {1}, true);
  auto gy = gradients({y}, {x}, {g.constant(f32({2, 3}, {2}))});
  auto gz = gradients({z}, {x}, {g.constant(f32({1, 1}, {2, 1}))});
  Executor ex(g, {gy[0], gz[0]});
  auto out = ex.run({{x, f32({1, 3, 3, 7, 7, 7}, {2, 3})}});
  EXPECT_TRUE(tensors_near(out[0], f32({0, 1, 1, 1, 1, 1}, {2, 3}), 1e-6, 0));
  EXPECT_TRUE(tensors_near(out[1], f32({1, 0, 0, 1.f / 3, 1.f / 3, 1.f / 3}, {2, 3}), 1e-6, 0));
}

TEST(Reduce, GradientsWithUnknownBatchThroughAnExecutor) {
  // The mean over the unknown batch axis divides by the run-time count (reduce_count).
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 3});
  Value loss = ops::sum(ops::mean(x, {0}) * ops::max(x, {1}, true));
  EXPECT_EQ(ops::mean(x, {0}).shape(), Shape({3}));
  EXPECT_EQ(ops::max(x, {1}, true).shape(), Shape({kUnknown, 1}));
  EXPECT_EQ(ops::argmax(x, 0, true).shape(), Shape({1, 3}));
  auto grads = gradients(loss, {x});
  EXPECT_EQ(grads[0].shape(), Shape({kUnknown, 3}));
  Executor ex(g, {loss, grads[0]});
  for (int64_t batch : {2, 5}) {
    Rng rng(static_cast<uint64_t>(batch));
    Tensor tx = testing::random_tensor({batch, 3}, rng, -1, 1);
    auto out = ex.run({{x, tx}});
    // d/dx[b,j] of sum_{b',j'} m[j'] * M[b'] where m = mean over b, M = max over j:
    //   = (1/B) * sum_b' M[b'] + [j == argmax_j x[b,:]] * sum_j' m[j'].
    Tensor m = ops::mean(tx, {0}), mx = ops::max(tx, {1});
    const double sum_m = ops::sum(m).item<double>(), sum_mx = ops::sum(mx).item<double>();
    Tensor am = ops::argmax(tx, 1);
    Tensor want({batch, 3}, DType::kF32);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t j = 0; j < 3; ++j)
        want.at<float>({b, j}) =
            static_cast<float>(sum_mx / batch + (am.data<int64_t>()[b] == j ? sum_m : 0.0));
    EXPECT_TRUE(tensors_near(out[1], want, 1e-5, 1e-5)) << "batch " << batch;
  }
}

TEST(Reduce, HelperOps) {
  note_reference_tested("reduce_count");
  note_reference_tested("equal_indicator");
  Tensor x = Tensor::zeros({2, 3, 5}, DType::kS8);
  EXPECT_TRUE(tensors_equal(ops::reduce_count(x), Tensor::scalar(30)));
  EXPECT_TRUE(tensors_equal(ops::reduce_count(x, {0, -1}), Tensor::scalar(10)));
  Tensor a = f32({1, 2, 3, 2}, {2, 2});
  EXPECT_TRUE(
      tensors_equal(ops::equal_indicator(a, f32({2, 2}, {2, 1})), f32({0, 1, 0, 1}, {2, 2})));
  // Both are piecewise constant in x: their gradient is zero (checked against differences at
  // points away from ties).
  Rng rng(5);
  expect_gradients_match("reduce_count", {testing::random_tensor({2, 3}, rng)},
                         {{"axes", std::vector<int64_t>{1}}});
  expect_gradients_match("equal_indicator", {f32({1, 2, 3, 4}, {2, 2}), f32({1.5f, 3.5f}, {2, 1})});
  Tensor ai = Tensor::from_vector<int32_t>({4, 5}, {2});
  EXPECT_TRUE(tensors_equal(ops::equal_indicator(ai, Tensor::from_vector<int32_t>({5}, {1})),
                            f32({0, 1}, {2})));
}

// Naive oracle: walks x in row-major order and accumulates into the output element it maps
// to, in double (so sums see the same order as the kernel's and must match exactly).
Tensor naive_reduce(const std::string& op, const Tensor& x, const std::vector<int64_t>& axes) {
  const int r = x.rank();
  std::vector<bool> red(r, axes.empty());
  for (int64_t a : axes) red[a < 0 ? a + r : a] = true;
  std::vector<int64_t> od;
  for (int d = 0; d < r; ++d)
    if (!red[d]) od.push_back(x.dim(d));
  Tensor out(Shape(od), x.dtype());
  const bool is_max = op == "max", is_min = op == "min";
  std::vector<double> acc(out.numel(), is_max ? -INFINITY : is_min ? INFINITY : 0.0);
  std::vector<int64_t> count(out.numel(), 0);
  for (int64_t i = 0; i < x.numel(); ++i) {
    int64_t rest = i, o = 0, scale = 1;
    for (int d = r - 1; d >= 0; --d) {
      const int64_t idx = rest % x.dim(d);
      rest /= x.dim(d);
      if (!red[d]) {
        o += idx * scale;
        scale *= x.dim(d);
      }
    }
    const double v = x.get_as_double(i);
    if (is_max)
      acc[o] = std::max(acc[o], v);
    else if (is_min)
      acc[o] = std::min(acc[o], v);
    else
      acc[o] += v;
    ++count[o];
  }
  for (int64_t o = 0; o < out.numel(); ++o) {
    double v = acc[o];
    if (op == "mean") v = x.dtype() == DType::kF32 ? v / count[o] : std::trunc(v / count[o]);
    out.set_from_double(o, v);
  }
  return out;
}

TEST(Reduce, MatchesNaiveOnRandomShapesAndAxes) {
  Rng rng(21);
  const std::vector<Shape> shapes = {
      {1},          {7},       {3, 1},     {1, 5},          {2, 3, 4}, {5, 1, 9},
      {4, 3, 2, 5}, {129, 65}, {3, 67, 2}, {2, 1, 3, 1, 4}, {200, 3}};
  for (const Shape& s : shapes)
    for (int trial = 0; trial < 6; ++trial) {
      std::vector<int64_t> axes;
      for (int d = 0; d < s.rank(); ++d)
        if (rng.next_u32() % 2) axes.push_back(rng.next_u32() % 2 ? d : d - s.rank());
      const bool is_int = trial % 3 == 2;
      Tensor x = is_int ? testing::random_int_tensor(s, rng, -50, 50, DType::kS32)
                        : testing::random_tensor(s, rng);
      for (const char* op : {"sum", "mean", "max", "min"}) {
        Tensor got = ops::apply1(op, {x}, {{"axes", axes}});
        EXPECT_TRUE(tensors_equal(got, naive_reduce(op, x, axes)))
            << op << " of " << s.str() << " over " << Shape(axes).str();
      }
    }
}

TEST(Reduce, ResultsDoNotDependOnTheThreadCount) {
  Rng rng(11);
  Tensor x = testing::random_tensor({64, 300, 7}, rng);
  const int saved = num_threads();
  std::vector<Tensor> one, two;
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    auto& v = threads == 1 ? one : two;
    v = {ops::sum(x, {1}), ops::mean(x, {0, 2}), ops::max(x, {1}), ops::argmax(x, 1), ops::sum(x)};
  }
  set_num_threads(saved);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(tensors_equal(one[i], two[i])) << i;
  // And the sum matches a double loop.
  double want = 0;
  for (float v : x.span<float>()) want += v;
  EXPECT_NEAR(one[4].item<double>(), want, 1e-3);
}

TEST(Reduce, Errors) {
  Tensor x = Tensor::zeros({2, 3});
  expect_throws_with<ValueError>([&] { ops::sum(x, {2}); },
                                 "sum: attribute 'axes': expected an axis in [-2, 2) but found 2");
  expect_throws_with<ValueError>([&] { ops::mean(x, {1, -1}); }, "expected distinct axes");
  expect_throws_with<DTypeError>(
      [&] { ops::max(Tensor::zeros({2}, DType::kBool)); },
      "max: argument 'x': expected f32 or an integer dtype but found bool[2]");
  expect_throws_with<ShapeError>(
      [&] {
        ops::argmax(Tensor::zeros({2, 0}));
      },
      "argmax: argument 'x': expected a non-empty axis 1");
  expect_throws_with<ValueError>([&] { ops::argmin(x, 3); }, "argmin: attribute 'axis'");
  expect_throws_with<ShapeError>([&] { ops::argmax(Tensor::scalar(1)); }, "expected rank >= 1");
  expect_throws_with<DTypeError>(
      [&] {
        ops::equal_indicator(x, Tensor::zeros({2, 3}, DType::kS32));
      },
      "same dtype");
}

}  // namespace
}  // namespace lowbit
