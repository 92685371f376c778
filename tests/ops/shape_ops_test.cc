#include <gtest/gtest.h>

#include <numeric>

#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "lowbit/threads.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using ops::kSliceMax;
using ops::kSliceMin;
using testing::expect_gradients_match;
using testing::expect_throws_with;
using testing::note_reference_tested;
using testing::tensors_equal;
using testing::tensors_near;

Tensor f32(std::vector<float> v, Shape s) { return Tensor::from_vector<float>(v, s); }
Tensor s64(std::vector<int64_t> v, Shape s) { return Tensor::from_vector<int64_t>(v, s); }

// 0, 1, 2, ... in the given shape and dtype.
Tensor iota(const Shape& s, DType dt = DType::kF32) {
  Tensor t(s, dt);
  for (int64_t i = 0; i < t.numel(); ++i) t.set_from_double(i, static_cast<double>(i % 101));
  return t;
}

// Multi-index helpers for the naive oracles below.
std::vector<int64_t> unravel(int64_t i, const Shape& s) {
  std::vector<int64_t> idx(s.rank());
  for (int d = s.rank() - 1; d >= 0; --d) {
    idx[d] = i % s[d];
    i /= s[d];
  }
  return idx;
}
int64_t ravel(const std::vector<int64_t>& idx, const Shape& s) {
  int64_t o = 0;
  for (int d = 0; d < s.rank(); ++d) o = o * s[d] + idx[d];
  return o;
}

TEST(ShapeOps, ReshapeGolden) {
  note_reference_tested("reshape");
  Tensor x = iota({2, 3});
  Tensor y = ops::reshape(x, {3, -1});
  EXPECT_EQ(y.shape(), Shape({3, 2}));
  EXPECT_TRUE(y.same_storage(x));  // a view
  EXPECT_EQ(y.to_vector<float>(), x.to_vector<float>());
  EXPECT_EQ(ops::reshape(x, {6}).shape(), Shape({6}));
  EXPECT_EQ(ops::reshape(Tensor::scalar(1), {1, 1}).shape(), Shape({1, 1}));
  // Through the reference kernel directly (what a non-view backend would run).
  auto ref = run_op(find_op("reshape"), {x}, {{"shape", std::vector<int64_t>{-1}}},
                    KernelChoice::kReference);
  EXPECT_EQ(ref[0].to_vector<float>(), x.to_vector<float>());
}

TEST(ShapeOps, ReshapeWithUnknownDims) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 7, 7, 64});
  EXPECT_EQ(ops::reshape(x, {-1, 3136}).shape(), Shape({kUnknown, 3136}));
  EXPECT_EQ(ops::reshape(x, {-1, 7, 448}).shape(), Shape({kUnknown, 7, 448}));
  EXPECT_EQ(ops::flatten(x).shape(), Shape({kUnknown, 3136}));
  EXPECT_EQ(ops::flatten(x, 2).shape(), Shape({kUnknown, 448}));
  EXPECT_EQ(ops::flatten(x, 0).shape(), Shape({1, kUnknown}));
  Value f = ops::flatten(x);
  Executor ex(g, {f});
  Tensor tx = iota({3, 7, 7, 64});
  Tensor out = ex.run({{x, tx}})[0];
  EXPECT_EQ(out.shape(), Shape({3, 3136}));
  EXPECT_EQ(out.to_vector<float>(), tx.to_vector<float>());
}

TEST(ShapeOps, ExpandSqueezeFlattenGolden) {
  note_reference_tested("expand_dims");
  note_reference_tested("squeeze");
  note_reference_tested("flatten");
  Tensor x = iota({2, 3});
  EXPECT_EQ(ops::expand_dims(x, 0).shape(), Shape({1, 2, 3}));
  EXPECT_EQ(ops::expand_dims(x, 1).shape(), Shape({2, 1, 3}));
  EXPECT_EQ(ops::expand_dims(x, -1).shape(), Shape({2, 3, 1}));
  EXPECT_EQ(ops::expand_dims(x, -3).shape(), Shape({1, 2, 3}));
  Tensor y = iota({1, 2, 1, 3, 1});
  EXPECT_EQ(ops::squeeze(y).shape(), Shape({2, 3}));
  EXPECT_EQ(ops::squeeze(y, {0, -1}).shape(), Shape({2, 1, 3}));
  EXPECT_EQ(ops::squeeze(y).to_vector<float>(), y.to_vector<float>());
  EXPECT_EQ(ops::flatten(iota({2, 3, 4})).shape(), Shape({2, 12}));
  EXPECT_EQ(ops::flatten(iota({5})).shape(), Shape({5, 1}));
  EXPECT_EQ(ops::flatten(iota({2, 3, 4}), -1).shape(), Shape({6, 4}));
  EXPECT_TRUE(ops::flatten(x).same_storage(x));
}

TEST(ShapeOps, ViewGradients) {
  Rng rng(1);
  auto r = [&](Shape s) { return testing::random_tensor(s, rng); };
  expect_gradients_match("reshape", {r({2, 3, 2})}, {{"shape", std::vector<int64_t>{3, -1}}});
  expect_gradients_match("expand_dims", {r({2, 3})}, {{"axis", 1}});
  expect_gradients_match("squeeze", {r({2, 1, 3})}, {{"axes", std::vector<int64_t>{1}}});
  expect_gradients_match("flatten", {r({2, 3, 2})});
}

// Naive transpose: out[i] = x[idx with out dim k = in dim perm[k]].
Tensor naive_transpose(const Tensor& x, const std::vector<int64_t>& perm) {
  std::vector<int64_t> od(perm.size());
  for (size_t k = 0; k < perm.size(); ++k) od[k] = x.dim(static_cast<int>(perm[k]));
  Tensor out(Shape(od), x.dtype());
  for (int64_t o = 0; o < out.numel(); ++o) {
    auto oi = unravel(o, out.shape());
    std::vector<int64_t> ii(perm.size());
    for (size_t k = 0; k < perm.size(); ++k) ii[perm[k]] = oi[k];
    out.set_from_double(o, x.get_as_double(ravel(ii, x.shape())));
  }
  return out;
}

TEST(ShapeOps, TransposeGolden) {
  note_reference_tested("transpose");
  Tensor x = iota({2, 3});
  EXPECT_TRUE(tensors_equal(ops::transpose(x), f32({0, 3, 1, 4, 2, 5}, {3, 2})));
  Tensor t = iota({2, 3, 4});
  Tensor y = ops::transpose(t, {1, 2, 0});
  EXPECT_EQ(y.shape(), Shape({3, 4, 2}));
  EXPECT_EQ(y.at<float>({2, 1, 1}), t.at<float>({1, 2, 1}));
  EXPECT_TRUE(tensors_equal(ops::transpose(t, {-1, 0, 1}), naive_transpose(t, {2, 0, 1})));
}

TEST(ShapeOps, TransposeMatchesNaiveOnEdgeShapes) {
  // Sizes around the 32-element tile, size-1 dims (dropped) and neighbours that merge.
  const std::vector<std::pair<Shape, std::vector<int64_t>>> cases = {
      {{1, 1}, {1, 0}},
      {{31, 33}, {1, 0}},
      {{32, 32}, {1, 0}},
      {{65, 7}, {1, 0}},
      {{3, 1, 5}, {2, 1, 0}},
      {{2, 3, 4, 5}, {0, 2, 1, 3}},
      {{2, 3, 4, 5}, {3, 2, 1, 0}},
      {{2, 3, 4, 5}, {1, 0, 2, 3}},
      {{4, 1, 3, 37}, {3, 0, 2, 1}},
      {{6, 5, 4}, {0, 1, 2}},
      {{7, 11, 13}, {2, 0, 1}},
      {{2, 0, 3}, {2, 1, 0}},
      {{97, 130}, {1, 0}},
      {{3, 40, 50}, {0, 2, 1}},
      {{5}, {0}},
  };
  for (const auto& [shape, perm] : cases)
    for (DType dt : {DType::kF32, DType::kS8, DType::kS64, DType::kBool}) {
      Tensor x = iota(shape, dt);
      if (dt == DType::kBool)
        for (int64_t i = 0; i < x.numel(); ++i) x.set_from_double(i, i % 3 == 0);
      EXPECT_TRUE(tensors_equal(ops::transpose(x, perm), naive_transpose(x, perm)))
          << shape.str() << " " << dtype_name(dt);
    }
  // Large enough to run in parallel; equal at 1 and 2 threads.
  Tensor big = iota({3, 300, 257});
  const int saved = num_threads();
  set_num_threads(2);
  Tensor a = ops::transpose(big, {2, 0, 1});
  set_num_threads(1);
  Tensor b = ops::transpose(big, {2, 0, 1});
  set_num_threads(saved);
  EXPECT_TRUE(tensors_equal(a, b));
  EXPECT_TRUE(tensors_equal(a, naive_transpose(big, {2, 0, 1})));
}

TEST(ShapeOps, TransposeGradient) {
  Rng rng(2);
  expect_gradients_match("transpose", {testing::random_tensor({2, 3, 4}, rng)},
                         {{"perm", std::vector<int64_t>{1, 2, 0}}});
  expect_gradients_match("transpose", {testing::random_tensor({3, 2}, rng)});
}

TEST(ShapeOps, ConcatGolden) {
  note_reference_tested("concat");
  Tensor a = f32({1, 2, 3, 4}, {2, 2});
  Tensor b = f32({5, 6}, {2, 1});
  EXPECT_TRUE(
      tensors_equal(ops::concat(std::vector<Tensor>{a, b}, 1), f32({1, 2, 5, 3, 4, 6}, {2, 3})));
  EXPECT_TRUE(tensors_equal(ops::concat(std::vector<Tensor>{a, f32({7, 8}, {1, 2})}),
                            f32({1, 2, 3, 4, 7, 8}, {3, 2})));
  EXPECT_TRUE(tensors_equal(ops::concat(std::vector<Tensor>{a}, -1), a));
  Tensor i = Tensor::from_vector<int8_t>({1, 2}, {2});
  EXPECT_TRUE(tensors_equal(ops::concat(std::vector<Tensor>{i, i, i}),
                            Tensor::from_vector<int8_t>({1, 2, 1, 2, 1, 2}, {6})));
  // Empty pieces are fine.
  EXPECT_TRUE(tensors_equal(ops::concat(std::vector<Tensor>{Tensor::zeros({2, 0}), a}, 1), a));
}

TEST(ShapeOps, ConcatGradient) {
  Rng rng(3);
  auto r = [&](Shape s) { return testing::random_tensor(s, rng); };
  expect_gradients_match("concat", {r({2, 3}), r({2, 1}), r({2, 2})}, {{"axis", 1}});
  expect_gradients_match("concat", {r({1, 3}), r({2, 3})}, {{"axis", -2}});
}

TEST(ShapeOps, ConcatWithUnknownBatch) {
  Graph g;
  Value a = g.placeholder("a", DType::kF32, {kUnknown, 3});
  Value b = g.placeholder("b", DType::kF32, {kUnknown, 2});
  Value c = g.placeholder("c", DType::kF32, {2, 3});
  Value along1 = ops::concat(std::vector<Value>{a, b}, 1);
  Value along0 = ops::concat(std::vector<Value>{a, c}, 0);
  EXPECT_EQ(along1.shape(), Shape({kUnknown, 5}));
  EXPECT_EQ(along0.shape(), Shape({kUnknown, 3}));
  // Gradients split dy by the run-time sizes.
  Value w = g.placeholder("w", DType::kF32, {kUnknown, 3});
  Value loss = ops::sum(along1 * along1) + ops::sum(along0 * w);
  auto grads = gradients(loss, {a, b, c});
  Executor ex(g, grads);
  Rng rng(4);
  for (int64_t batch : {1, 4}) {
    Tensor ta = testing::random_tensor({batch, 3}, rng),
           tb = testing::random_tensor({batch, 2}, rng);
    Tensor tc = testing::random_tensor({2, 3}, rng),
           tw = testing::random_tensor({batch + 2, 3}, rng);
    auto out = ex.run({{a, ta}, {b, tb}, {c, tc}, {w, tw}});
    auto wparts = ops::split(tw, {batch, 2});
    EXPECT_TRUE(tensors_near(out[0], 2.0 * ta + wparts[0], 1e-6, 1e-6));
    EXPECT_TRUE(tensors_near(out[1], 2.0 * tb, 1e-6, 1e-6));
    EXPECT_TRUE(tensors_near(out[2], wparts[1], 0, 0));
  }
}

TEST(ShapeOps, SplitGolden) {
  note_reference_tested("split");
  note_reference_tested("split_like");
  Tensor x = iota({2, 5});
  auto p = ops::split(x, {2, -1, 1}, 1);
  ASSERT_EQ(p.size(), 3u);
  EXPECT_TRUE(tensors_equal(p[0], f32({0, 1, 5, 6}, {2, 2})));
  EXPECT_TRUE(tensors_equal(p[1], f32({2, 3, 7, 8}, {2, 2})));
  EXPECT_TRUE(tensors_equal(p[2], f32({4, 9}, {2, 1})));
  auto q = ops::split_equal(x, 2, 0);
  EXPECT_TRUE(tensors_equal(q[1], f32({5, 6, 7, 8, 9}, {1, 5})));
  auto z = ops::split(x, {0, 5}, -1);
  EXPECT_EQ(z[0].shape(), Shape({2, 0}));
  EXPECT_TRUE(tensors_equal(z[1], x));
  auto l = ops::split_like(x, {Tensor::zeros({7, 3}), Tensor::zeros({1, 2}, DType::kS8)}, 1);
  EXPECT_TRUE(tensors_equal(l[0], f32({0, 1, 2, 5, 6, 7}, {2, 3})));
  EXPECT_TRUE(tensors_equal(l[1], f32({3, 4, 8, 9}, {2, 2})));
}

TEST(ShapeOps, SplitGradients) {
  Rng rng(5);
  auto r = [&](Shape s) { return testing::random_tensor(s, rng); };
  expect_gradients_match("split", {r({3, 4})},
                         {{"sizes", std::vector<int64_t>{1, 3}}, {"axis", 1}});
  expect_gradients_match("split", {r({4, 2})}, {{"num", 2}});
  expect_gradients_match("split_like", {r({2, 5}), r({2, 2}), r({2, 3})}, {{"axis", 1}},
                         {.wrt = {0}});
  // Outputs without a gradient contribute zeros.
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 4});
  auto parts = ops::split_equal(x, 2, 1);
  auto grads = gradients(ops::sum(parts[1] * parts[1]), {x});
  Executor ex(g, grads);
  Tensor tx = r({3, 4});
  Tensor want = 2.0 * tx * f32({0, 0, 1, 1}, {4});
  EXPECT_TRUE(tensors_near(ex.run({{x, tx}})[0], want, 1e-6, 0));
}

TEST(ShapeOps, SplitWithUnknownDim) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 3});
  auto parts = ops::split_equal(x, 2, 0);
  EXPECT_EQ(parts[0].shape(), Shape({kUnknown, 3}));
  auto sized = ops::split(x, {1, -1});
  EXPECT_EQ(sized[0].shape(), Shape({1, 3}));
  EXPECT_EQ(sized[1].shape(), Shape({kUnknown, 3}));
  Executor ex(g, {parts[1], sized[1]});
  auto out = ex.run({{x, iota({4, 3})}});
  EXPECT_TRUE(tensors_equal(out[0], f32({6, 7, 8, 9, 10, 11}, {2, 3})));
  EXPECT_EQ(out[1].shape(), Shape({3, 3}));
  // An odd batch cannot be split in two: the run-time shape check says so.
  expect_throws_with<GraphError>([&] { ex.run({{x, iota({3, 3})}}); }, "into 2 equal parts");
}

// Python's slice semantics per axis, as a naive oracle.
std::vector<int64_t> py_range(int64_t b, int64_t e, int64_t s, int64_t n) {
  auto norm = [&](int64_t i) {
    const int64_t lo = s > 0 ? 0 : -1, hi = s > 0 ? n : n - 1;
    if (i < 0) {
      i = i < -n ? lo : i + n;
      return std::max(i, lo);
    }
    return std::min(i, hi);
  };
  std::vector<int64_t> out;
  const int64_t start = norm(b), stop = norm(e);
  for (int64_t i = start; s > 0 ? i < stop : i > stop; i += s) out.push_back(i);
  return out;
}

Tensor naive_slice(const Tensor& x, std::vector<int64_t> b, std::vector<int64_t> e,
                   std::vector<int64_t> s) {
  std::vector<std::vector<int64_t>> rng(x.rank());
  std::vector<int64_t> od(x.rank());
  for (int d = 0; d < x.rank(); ++d) {
    const bool given = d < static_cast<int>(b.size());
    rng[d] = py_range(given ? b[d] : 0, given ? e[d] : kSliceMax, given && !s.empty() ? s[d] : 1,
                      x.dim(d));
    od[d] = static_cast<int64_t>(rng[d].size());
  }
  Tensor out(Shape(od), x.dtype());
  for (int64_t o = 0; o < out.numel(); ++o) {
    auto oi = unravel(o, out.shape());
    for (int d = 0; d < x.rank(); ++d) oi[d] = rng[d][oi[d]];
    out.set_from_double(o, x.get_as_double(ravel(oi, x.shape())));
  }
  return out;
}

Tensor slice_t(const Tensor& x, std::vector<int64_t> b, std::vector<int64_t> e,
               std::vector<int64_t> s = {}) {
  return ops::slice(x, b, e, s);
}

TEST(ShapeOps, SliceGolden) {
  note_reference_tested("slice");
  Tensor x = iota({3, 4});
  EXPECT_TRUE(tensors_equal(slice_t(x, {1}, {3}), f32({4, 5, 6, 7, 8, 9, 10, 11}, {2, 4})));
  EXPECT_TRUE(tensors_equal(slice_t(x, {0, 1}, {kSliceMax, kSliceMax}, {2, 2}),
                            f32({1, 3, 9, 11}, {2, 2})));
  // Negative indices count from the end; out-of-range ones clamp.
  EXPECT_TRUE(tensors_equal(slice_t(x, {-1, -3}, {100, -1}), f32({9, 10}, {1, 2})));
  EXPECT_TRUE(tensors_equal(slice_t(x, {-100, 0}, {1, 1}), f32({0}, {1, 1})));
  // Reversal, Python's x[::-1, ::-2].
  EXPECT_TRUE(tensors_equal(slice_t(x, {kSliceMax, kSliceMax}, {kSliceMin, kSliceMin}, {-1, -2}),
                            f32({11, 9, 7, 5, 3, 1}, {3, 2})));
  // x[2:0:-1, 3:-5:-3] = rows 2, 1; cols 3, 0.
  EXPECT_TRUE(tensors_equal(slice_t(x, {2, 3}, {0, -5}, {-1, -3}), f32({11, 8, 7, 4}, {2, 2})));
  // Empty results.
  EXPECT_EQ(slice_t(x, {2}, {1}).shape(), Shape({0, 4}));
  EXPECT_EQ(slice_t(x, {0}, {3}, {-1}).shape(), Shape({0, 4}));
}

TEST(ShapeOps, SliceMatchesPythonSemantics) {
  Rng rng(6);
  const int64_t picks[] = {kSliceMin, -9, -5, -4, -3, -1, 0, 1, 2, 3, 4, 5, 9, kSliceMax};
  auto pick = [&] { return picks[rng.next_u32() % 14]; };
  const int64_t steps[] = {-3, -2, -1, 1, 2, 3};
  for (int trial = 0; trial < 300; ++trial) {
    Tensor x = iota({5, 4, 3}, trial % 2 ? DType::kS32 : DType::kF32);
    const int n = 1 + static_cast<int>(rng.next_u32() % 3);
    std::vector<int64_t> b, e, s;
    for (int d = 0; d < n; ++d) {
      b.push_back(pick());
      e.push_back(pick());
      s.push_back(steps[rng.next_u32() % 6]);
    }
    EXPECT_TRUE(tensors_equal(slice_t(x, b, e, s), naive_slice(x, b, e, s)))
        << "begin " << Shape(b).str() << " end " << Shape(e).str() << " strides " << Shape(s).str();
  }
}

TEST(ShapeOps, SliceGradients) {
  note_reference_tested("slice_grad");
  Rng rng(7);
  auto r = [&](Shape s) { return testing::random_tensor(s, rng); };
  Attrs a{{"begin", std::vector<int64_t>{1, -1}},
          {"end", std::vector<int64_t>{kSliceMax, kSliceMin}},
          {"strides", std::vector<int64_t>{2, -2}}};
  expect_gradients_match("slice", {r({4, 5})}, a);
  expect_gradients_match(
      "slice", {r({3, 4, 2})},
      {{"begin", std::vector<int64_t>{0, 1}}, {"end", std::vector<int64_t>{2, 3}}});
  expect_gradients_match("slice_grad", {r({2, 3}), r({4, 5})}, a, {.wrt = {0}});
  // slice_grad golden: dy scattered into zeros shaped like x.
  Tensor dy = f32({1, 2, 3, 4}, {2, 2});
  Tensor got = ops::slice_grad(dy, Tensor::zeros({3, 4}), {0, 3}, {kSliceMax, kSliceMin}, {2, -2});
  EXPECT_TRUE(tensors_equal(got, f32({0, 2, 0, 1, 0, 0, 0, 0, 0, 4, 0, 3}, {3, 4})));
}

TEST(ShapeOps, SliceWithUnknownBatch) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 6});
  Value s = ops::slice(x, {0, 1}, {kSliceMax, -1}, {1, 2});
  EXPECT_EQ(s.shape(), Shape({kUnknown, 2}));
  auto grads = gradients(ops::sum(s * s), {x});
  EXPECT_EQ(grads[0].shape(), Shape({kUnknown, 6}));
  Executor ex(g, {s, grads[0]});
  Tensor tx = iota({2, 6});
  auto out = ex.run({{x, tx}});
  EXPECT_TRUE(tensors_equal(out[0], f32({1, 3, 7, 9}, {2, 2})));
  EXPECT_TRUE(tensors_equal(out[1], f32({0, 2, 0, 6, 0, 0, 0, 14, 0, 18, 0, 0}, {2, 6})));
}

TEST(ShapeOps, PadGolden) {
  note_reference_tested("pad");
  Tensor x = f32({1, 2, 3, 4}, {2, 2});
  Tensor y = ops::pad(x, {1, 0, 0, 2}, -1.0);
  EXPECT_TRUE(tensors_equal(y, f32({-1, -1, -1, -1, 1, 2, -1, -1, 3, 4, -1, -1}, {3, 4})));
  EXPECT_TRUE(tensors_equal(ops::pad(x, {0, 0, 0, 0}), x));
  Tensor xi = Tensor::from_vector<uint8_t>({7}, {1});
  EXPECT_TRUE(
      tensors_equal(ops::pad(xi, {2, 1}, 3), Tensor::from_vector<uint8_t>({3, 3, 7, 3}, {4})));
  EXPECT_TRUE(tensors_equal(ops::pad(Tensor::scalar(5), {}), Tensor::scalar(5)));
}

TEST(ShapeOps, PadGradientAndUnknownBatch) {
  Rng rng(8);
  expect_gradients_match("pad", {testing::random_tensor({2, 3, 2}, rng)},
                         {{"paddings", std::vector<int64_t>{0, 1, 2, 0, 1, 1}}});
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 2});
  Value y = ops::pad(x, {1, 1, 0, 3});
  EXPECT_EQ(y.shape(), Shape({kUnknown, 5}));
  auto grads = gradients(ops::sum(y * y), {x});
  Executor ex(g, {y, grads[0]});
  Tensor tx = f32({1, 2, 3, 4, 5, 6}, {3, 2});
  auto out = ex.run({{x, tx}});
  EXPECT_EQ(out[0].shape(), Shape({5, 5}));
  EXPECT_TRUE(tensors_equal(out[1], 2.0 * tx));
}

TEST(ShapeOps, BroadcastTo) {
  note_reference_tested("broadcast_to");
  Tensor x = f32({1, 2}, {2, 1});
  EXPECT_TRUE(tensors_equal(ops::broadcast_to(x, {2, 2, 3}),
                            f32({1, 1, 1, 2, 2, 2, 1, 1, 1, 2, 2, 2}, {2, 2, 3})));
  EXPECT_TRUE(tensors_equal(ops::broadcast_to(Tensor::from_vector<int8_t>({4}, {}), {2}),
                            Tensor::from_vector<int8_t>({4, 4}, {2})));
  Rng rng(9);
  expect_gradients_match("broadcast_to", {testing::random_tensor({3, 1}, rng)},
                         {{"shape", std::vector<int64_t>{2, 3, 4}}});
}

TEST(ShapeOps, GatherGolden) {
  note_reference_tested("gather");
  Tensor table = iota({4, 3});
  Tensor ids = s64({3, 0, 3, 1}, {2, 2});
  EXPECT_TRUE(tensors_equal(ops::gather(table, ids),
                            f32({9, 10, 11, 0, 1, 2, 9, 10, 11, 3, 4, 5}, {2, 2, 3})));
  Tensor ids32 = Tensor::from_vector<int32_t>({2, 0}, {2});
  EXPECT_TRUE(tensors_equal(ops::gather(table, ids32, 1), f32({2, 0, 5, 3, 8, 6, 11, 9}, {4, 2})));
  EXPECT_TRUE(tensors_equal(ops::gather(table, s64({1}, {}), -2), f32({3, 4, 5}, {3})));
  Tensor ti = iota({3}, DType::kS8);
  EXPECT_TRUE(
      tensors_equal(ops::gather(ti, s64({2, 2}, {2})), Tensor::from_vector<int8_t>({2, 2}, {2})));
}

TEST(ShapeOps, GatherGradients) {
  note_reference_tested("gather_grad");
  Rng rng(10);
  Tensor table = testing::random_tensor({5, 3}, rng);
  // Repeated ids accumulate.
  expect_gradients_match("gather", {table, s64({4, 1, 4, 4, 0, 2}, {2, 3})});
  expect_gradients_match(
      "gather",
      {testing::random_tensor({2, 4, 3}, rng), Tensor::from_vector<int32_t>({3, 3, 0}, {3})},
      {{"axis", 1}});
  Tensor dy = f32({1, 2, 10, 20, 100, 200}, {3, 2});
  Tensor got = ops::gather_grad(dy, s64({2, 0, 2}, {3}), Tensor::zeros({4, 2}));
  EXPECT_TRUE(tensors_equal(got, f32({10, 20, 0, 0, 101, 202, 0, 0}, {4, 2})));
  expect_gradients_match(
      "gather_grad",
      {testing::random_tensor({3, 2}, rng), s64({2, 0, 2}, {3}), Tensor::zeros({4, 2})}, {},
      {.wrt = {0}});
  // Many rows and threads: same result at 1 and 2 threads, and equal to a serial loop.
  Tensor big_dy = testing::random_tensor({5000, 16}, rng);
  Tensor big_ids = testing::random_int_tensor({5000}, rng, 0, 99);
  const int saved = num_threads();
  set_num_threads(2);
  Tensor g2 = ops::gather_grad(big_dy, big_ids, Tensor::zeros({100, 16}));
  set_num_threads(1);
  Tensor g1 = ops::gather_grad(big_dy, big_ids, Tensor::zeros({100, 16}));
  set_num_threads(saved);
  EXPECT_TRUE(tensors_equal(g1, g2));
  Tensor want = Tensor::zeros({100, 16});
  for (int64_t j = 0; j < 5000; ++j)
    for (int64_t d = 0; d < 16; ++d)
      want.data<float>()[big_ids.data<int64_t>()[j] * 16 + d] += big_dy.data<float>()[j * 16 + d];
  EXPECT_TRUE(tensors_equal(g1, want));
}

TEST(ShapeOps, GatherWithUnknownBatch) {
  Graph g;
  Value table = g.variable("table", iota({10, 4}));
  Value ids = g.placeholder("ids", DType::kS32, {kUnknown, 3});
  Value e = ops::gather(table, ids);
  EXPECT_EQ(e.shape(), Shape({kUnknown, 3, 4}));
  auto grads = gradients(ops::sum(e), {table});
  Executor ex(g, {e, grads[0]});
  auto out = ex.run({{ids, Tensor::from_vector<int32_t>({1, 1, 9, 0, 2, 3}, {2, 3})}});
  EXPECT_EQ(out[0].shape(), Shape({2, 3, 4}));
  std::vector<float> counts = {1, 2, 1, 1, 0, 0, 0, 0, 0, 1};
  for (int64_t r = 0; r < 10; ++r) EXPECT_EQ(out[1].at<float>({r, 0}), counts[r]) << r;
}

TEST(ShapeOpsDeathTest, GatherOutOfRangeAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Tensor table = iota({4, 2});
  EXPECT_DEATH(ops::gather(table, s64({1, 4}, {2})),
               "gather: index 4 at position 1 of 'indices' is out of range \\[0, 4\\)");
  EXPECT_DEATH(ops::gather(table, s64({-1}, {1})), "index -1 at position 0");
  EXPECT_DEATH(ops::gather_grad(Tensor::zeros({1, 2}), s64({7}, {1}), table),
               "gather_grad: index 7");
}

TEST(ShapeOps, OneHotGolden) {
  note_reference_tested("one_hot");
  Tensor ids = s64({0, 2, -1, 3}, {4});
  // Out-of-range and negative ids give rows of off_value.
  EXPECT_TRUE(
      tensors_equal(ops::one_hot(ids, 3), f32({1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}, {4, 3})));
  EXPECT_TRUE(tensors_equal(ops::one_hot(ids, 3, 5.0, -1.0, 0),
                            f32({5, -1, -1, -1, -1, -1, -1, -1, -1, 5, -1, -1}, {3, 4})));
  Tensor ids2 = Tensor::from_vector<uint8_t>({1, 0, 1, 1}, {2, 2});
  Tensor oh = ops::one_hot(ids2, 2, 1.0, 0.0, -1, DType::kS32);
  EXPECT_TRUE(tensors_equal(oh, Tensor::from_vector<int32_t>({0, 1, 1, 0, 0, 1, 0, 1}, {2, 2, 2})));
  Tensor oh1 = ops::one_hot(ids2, 2, 1.0, 0.0, 1);
  EXPECT_TRUE(tensors_equal(oh1, f32({0, 1, 1, 0, 0, 0, 1, 1}, {2, 2, 2})));
  Graph g;
  Value v = g.placeholder("ids", DType::kS64, {kUnknown});
  EXPECT_EQ(ops::one_hot(v, 10).shape(), Shape({kUnknown, 10}));
}

TEST(ShapeOps, StackAndUnstack) {
  Tensor a = f32({1, 2}, {2}), b = f32({3, 4}, {2});
  EXPECT_TRUE(tensors_equal(ops::stack(std::vector<Tensor>{a, b}), f32({1, 2, 3, 4}, {2, 2})));
  EXPECT_TRUE(tensors_equal(ops::stack(std::vector<Tensor>{a, b}, -1), f32({1, 3, 2, 4}, {2, 2})));
  auto parts = ops::unstack(f32({1, 3, 2, 4}, {2, 2}), 1);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_TRUE(tensors_equal(parts[0], a));
  EXPECT_TRUE(tensors_equal(parts[1], b));
  // Gradient of stack through a graph with an unknown batch: unstacked back.
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 3});
  Value y = g.placeholder("y", DType::kF32, {kUnknown, 3});
  Value s = ops::stack(std::vector<Value>{x, y}, 1);
  EXPECT_EQ(s.shape(), Shape({kUnknown, 2, 3}));
  Value w = g.constant(f32({1, 2, 3, 4, 5, 6}, {2, 3}));
  auto grads = gradients(ops::sum(s * w), {x, y});
  Executor ex(g, grads);
  auto out = ex.run({{x, Tensor::zeros({2, 3})}, {y, Tensor::zeros({2, 3})}});
  EXPECT_TRUE(tensors_equal(out[0], f32({1, 2, 3, 1, 2, 3}, {2, 3})));
  EXPECT_TRUE(tensors_equal(out[1], f32({4, 5, 6, 4, 5, 6}, {2, 3})));
  expect_throws_with<ShapeError>([&] { ops::unstack(x, 0); }, "unstack: expected a known dim");
}

// The acceptance test of the issue: reshape -> transpose -> concat -> slice, differentiated as one
// graph with an unknown batch dim and checked against central differences of the forward graph.
TEST(ShapeOps, GradcheckChainThroughReshapeTransposeConcatSlice) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 12});
  Value z = g.placeholder("z", DType::kF32, {kUnknown, 4, 2});
  Value r = ops::reshape(x, {-1, 3, 4});                                      // [?,3,4]
  Value t = ops::transpose(r, {0, 2, 1});                                     // [?,4,3]
  Value c = ops::concat(std::vector<Value>{t, z, t * t}, 2);                  // [?,4,8]
  Value s = ops::slice(c, {0, 3, 1}, {kSliceMax, kSliceMin, 8}, {1, -2, 3});  // [?,2,3]
  EXPECT_EQ(s.shape(), Shape({kUnknown, 2, 3}));
  Value w = g.placeholder("w", DType::kF32, {kUnknown, 2, 3});
  Value loss = ops::sum(s * w);
  auto grads = gradients(loss, {x, z});
  g.verify();
  Executor fwd(g, {loss});
  Executor bwd(g, grads);
  Rng rng(12);
  for (int64_t batch : {1, 3}) {
    Tensor tx = testing::random_tensor({batch, 12}, rng);
    Tensor tz = testing::random_tensor({batch, 4, 2}, rng);
    Tensor tw = testing::random_tensor({batch, 2, 3}, rng, 0.5f, 1.5f);
    auto analytic = bwd.run({{x, tx}, {z, tz}, {w, tw}});
    for (int which = 0; which < 2; ++which) {
      Tensor base = which == 0 ? tx : tz;
      Tensor numeric(base.shape(), DType::kF32);
      for (int64_t i = 0; i < base.numel(); ++i) {
        Tensor p = base.clone();
        const float eps = 1e-2f, v = p.data<float>()[i];
        auto loss_at = [&](float xi) {
          p.data<float>()[i] = xi;
          auto feeds = which == 0 ? std::vector<std::pair<Value, Tensor>>{{x, p}, {z, tz}, {w, tw}}
                                  : std::vector<std::pair<Value, Tensor>>{{x, tx}, {z, p}, {w, tw}};
          return static_cast<double>(fwd.run(feeds)[0].item<float>());
        };
        numeric.data<float>()[i] =
            static_cast<float>((loss_at(v + eps) - loss_at(v - eps)) / (2 * eps));
      }
      EXPECT_TRUE(tensors_near(analytic[which], numeric, 2e-3, 2e-2))
          << (which == 0 ? "x" : "z") << ", batch " << batch << "\nanalytic " << analytic[which]
          << "\nnumeric " << numeric;
      // Some gradient must actually flow (the slice keeps entries from every piece).
      EXPECT_GT(ops::sum(analytic[which] * analytic[which]).item<float>(), 0.0f);
    }
  }
}

TEST(ShapeOps, Errors) {
  Tensor x = iota({2, 3});
  expect_throws_with<ShapeError>([&] { ops::reshape(x, {-1, -1}); }, "expected at most one -1");
  expect_throws_with<ShapeError>(
      [&] {
        ops::reshape(x, {4, -1});
      },
      "cannot reshape [2,3] (6 elements)");
  expect_throws_with<ShapeError>([&] { ops::reshape(x, {5}); }, "into [5] (5 elements)");
  expect_throws_with<ValueError>([&] { ops::expand_dims(x, 3); }, "expand_dims: attribute 'axis'");
  expect_throws_with<ShapeError>([&] { ops::squeeze(x, {0}); }, "expected dim 0 to be 1");
  {
    Graph g;
    Value v = g.placeholder("v", DType::kF32, {kUnknown, 1});
    expect_throws_with<ShapeError>([&] { ops::squeeze(v); }, "expected attribute 'axes'");
    EXPECT_EQ(ops::squeeze(v, {1}).shape(), Shape({kUnknown}));
  }
  expect_throws_with<ValueError>([&] { ops::transpose(x, {0, 0}); }, "expected a permutation");
  expect_throws_with<ShapeError>([&] { ops::transpose(x, {0, 1, 2}); }, "expected 2 axes");
  expect_throws_with<DTypeError>(
      [&] {
        ops::concat(std::vector<Tensor>{x, Tensor::zeros({2, 3}, DType::kS32)});
      },
      "concat: argument 'xs[1]': expected dtype f32");
  expect_throws_with<ShapeError>(
      [&] {
        ops::concat(std::vector<Tensor>{x, iota({2, 2})}, 0);
      },
      "expected dims equal to xs[0]'s [2,3] except along axis 0");
  expect_throws_with<ShapeError>(
      [&] {
        ops::concat(std::vector<Tensor>{x, iota({3})});
      },
      "expected rank 2");
  expect_throws_with<ShapeError>([&] { ops::split_equal(x, 2, 1); }, "into 2 equal parts");
  expect_throws_with<ShapeError>([&] { ops::split(x, {1, 1}, 1); }, "expected sizes adding up");
  expect_throws_with<ValueError>([&] { ops::apply("split", {x}, {}); }, "exactly one of");
  expect_throws_with<ShapeError>(
      [&] {
        ops::split_like(x, {Tensor::zeros({2, 1})}, 1);
      },
      "to add up to x's 3");
  expect_throws_with<ValueError>([&] { ops::slice(x, {0}, {1}, {0}); }, "expected nonzero strides");
  expect_throws_with<ShapeError>(
      [&] {
        ops::slice(x, {0, 0, 0}, {1, 1, 1});
      },
      "expected at most 2 entries");
  expect_throws_with<ValueError>([&] { ops::slice(x, {0, 0}, {1}); }, "expected the same length");
  expect_throws_with<ShapeError>(
      [&] {
        ops::slice_grad(Tensor::zeros({2, 2}), x, {0}, {1});
      },
      "slice_grad: argument 'dy': expected the sliced shape [1,3]");
  expect_throws_with<ShapeError>([&] { ops::pad(x, {1, 1}); }, "expected 4 entries");
  expect_throws_with<ValueError>([&] { ops::pad(x, {0, 0, -1, 0}); }, "expected paddings >= 0");
  expect_throws_with<ShapeError>(
      [&] {
        ops::broadcast_to(x, {3, 3});
      },
      "cannot broadcast argument 'x' [2,3]");
  expect_throws_with<ValueError>([&] { ops::broadcast_to(x, {-1, 3}); }, "expected known dims");
  expect_throws_with<DTypeError>([&] { ops::gather(x, f32({0}, {1})); },
                                 "gather: argument 'indices': expected dtype s32 or s64");
  expect_throws_with<ShapeError>(
      [&] {
        ops::gather_grad(Tensor::zeros({2, 2}), s64({0}, {1}), x);
      },
      "expected the gathered shape [1,3]");
  expect_throws_with<DTypeError>([&] { ops::one_hot(x, 3); }, "one_hot: argument 'indices'");
  expect_throws_with<ValueError>([&] { ops::one_hot(s64({1}, {1}), -2); }, "expected >= 0");
}

}  // namespace
}  // namespace lowbit
