// matmul: golden values, an independent naive product for every batch/transpose layout,
// gradient checks (including shared rank-2 operands and sum_batch), fast kernels vs the
// reference, symbolic use with unknown batch dims, and the error messages.
#include <gtest/gtest.h>

#include "kernels/reference/matmul.h"
#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "lowbit/threads.h"
#include "ops/linalg_common.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::expect_throws_with;
using testing::tensors_near;

// f32 products of order-1 inputs summed in double then rounded once: only the final rounding
// and the f32 inputs matter.
constexpr double kAtol = 1e-5, kRtol = 1e-5;

Attrs mm_attrs(bool ta, bool tb) { return {{"transpose_a", ta}, {"transpose_b", tb}}; }

// The definition, written independently of the kernel: element by element, with the batch
// of a rank-2 operand broadcast. Batch dims are flattened.
Tensor naive_matmul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  const int64_t m = ta ? a.dim(-1) : a.dim(-2), k = ta ? a.dim(-2) : a.dim(-1);
  const int64_t n = tb ? b.dim(-2) : b.dim(-1);
  const Shape& batched = a.rank() > 2 ? a.shape() : b.shape();
  std::vector<int64_t> out_dims(batched.dims().begin(), batched.dims().end() - 2);
  int64_t batch = 1;
  for (int64_t d : out_dims) batch *= d;
  out_dims.push_back(m);
  out_dims.push_back(n);
  Tensor c(Shape(out_dims), DType::kF32);
  const float *pa = a.data<float>(), *pb = b.data<float>();
  float* pc = c.data<float>();
  for (int64_t bi = 0; bi < batch; ++bi) {
    const float* A = pa + (a.rank() > 2 ? bi * m * k : 0);
    const float* B = pb + (b.rank() > 2 ? bi * k * n : 0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t kk = 0; kk < k; ++kk)
          s += double{ta ? A[kk * m + i] : A[i * k + kk]} * (tb ? B[j * k + kk] : B[kk * n + j]);
        pc[(bi * m + i) * n + j] = static_cast<float>(s);
      }
  }
  return c;
}

TEST(MatMul, GoldenByHand) {
  testing::note_reference_tested("matmul");
  Tensor a = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = Tensor::from_vector<float>({7, 8, 9, 10, 11, 12}, {3, 2});
  // [1 2 3; 4 5 6] x [7 8; 9 10; 11 12] = [58 64; 139 154]
  Tensor want = Tensor::from_vector<float>({58, 64, 139, 154}, {2, 2});
  EXPECT_TRUE(tensors_near(ops::matmul(a, b), want, 0, 0));
  // Stored transposed: a^T is [3,2] = [1 4; 2 5; 3 6], b^T is [2,3] = [7 9 11; 8 10 12].
  Tensor at = Tensor::from_vector<float>({1, 4, 2, 5, 3, 6}, {3, 2});
  Tensor bt = Tensor::from_vector<float>({7, 9, 11, 8, 10, 12}, {2, 3});
  EXPECT_TRUE(tensors_near(ops::matmul(at, b, true, false), want, 0, 0));
  EXPECT_TRUE(tensors_near(ops::matmul(a, bt, false, true), want, 0, 0));
  EXPECT_TRUE(tensors_near(ops::matmul(at, bt, true, true), want, 0, 0));
  // Batched: second entry is the first times 2 on a -> doubled result.
  Tensor a2 = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6, 2, 4, 6, 8, 10, 12}, {2, 2, 3});
  Tensor b2 = Tensor::from_vector<float>({7, 8, 9, 10, 11, 12, 7, 8, 9, 10, 11, 12}, {2, 3, 2});
  EXPECT_TRUE(tensors_near(
      ops::matmul(a2, b2),
      Tensor::from_vector<float>({58, 64, 139, 154, 116, 128, 278, 308}, {2, 2, 2}), 0, 0));
  // Shared b (Dense on [B,T,D]).
  EXPECT_TRUE(tensors_near(
      ops::matmul(a2, b),
      Tensor::from_vector<float>({58, 64, 139, 154, 116, 128, 278, 308}, {2, 2, 2}), 0, 0));
}

TEST(MatMul, SumBatchGolden) {
  // sum_b a[b]^T b[b]: a [2,1,2] = {[1 2], [3 4]}, b [2,1,1] = {[10], [100]}:
  // [1;2]*10 + [3;4]*100 = [310; 420].
  Tensor a = Tensor::from_vector<float>({1, 2, 3, 4}, {2, 1, 2});
  Tensor b = Tensor::from_vector<float>({10, 100}, {2, 1, 1});
  Tensor c = ops::apply1("matmul", {a, b}, {{"transpose_a", true}, {"sum_batch", true}});
  EXPECT_TRUE(tensors_near(c, Tensor::from_vector<float>({310, 420}, {2, 1}), 0, 0));
}

struct Layout {
  Shape a, b;
  bool ta, tb;
};

// Every supported layout, with odd and prime sizes and size-1 edges.
std::vector<Layout> layouts() {
  std::vector<Layout> v;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      auto A = [&](std::vector<int64_t> batch, int64_t m, int64_t k) {
        batch.push_back(ta ? k : m);
        batch.push_back(ta ? m : k);
        return Shape(batch);
      };
      auto B = [&](std::vector<int64_t> batch, int64_t k, int64_t n) {
        batch.push_back(tb ? n : k);
        batch.push_back(tb ? k : n);
        return Shape(batch);
      };
      v.push_back({A({}, 3, 5), B({}, 5, 2), ta, tb});
      v.push_back({A({}, 1, 1), B({}, 1, 1), ta, tb});
      v.push_back({A({}, 1, 7), B({}, 7, 1), ta, tb});
      v.push_back({A({2}, 3, 4), B({2}, 4, 5), ta, tb});
      v.push_back({A({2, 3}, 1, 4), B({2, 3}, 4, 3), ta, tb});
      v.push_back({A({3}, 2, 4), B({}, 4, 5), ta, tb});     // shared b
      v.push_back({A({2, 2}, 3, 2), B({}, 2, 3), ta, tb});  // shared b, two batch dims
      v.push_back({A({}, 2, 4), B({3}, 4, 5), ta, tb});     // shared a
    }
  return v;
}

TEST(MatMul, MatchesNaiveProductOnEveryLayout) {
  Rng rng(1);
  for (const Layout& l : layouts()) {
    SCOPED_TRACE(l.a.str() + " x " + l.b.str() + " ta=" + std::to_string(l.ta) +
                 " tb=" + std::to_string(l.tb));
    Tensor a = testing::random_tensor(l.a, rng), b = testing::random_tensor(l.b, rng);
    Tensor got = ops::matmul(a, b, l.ta, l.tb);
    EXPECT_TRUE(tensors_near(got, naive_matmul(a, b, l.ta, l.tb), kAtol, kRtol));
  }
}

TEST(MatMul, Gradients) {
  Rng rng(2);
  for (const Layout& l : layouts()) {
    testing::expect_gradients_match(
        "matmul", {testing::random_tensor(l.a, rng), testing::random_tensor(l.b, rng)},
        mm_attrs(l.ta, l.tb));
  }
  testing::expect_gradients_match(
      "matmul", {testing::random_tensor({3, 2, 4}, rng), testing::random_tensor({3, 2, 5}, rng)},
      {{"transpose_a", true}, {"sum_batch", true}});
}

TEST(MatMul, ParamsFoldSharedWeightsIntoOneGemm) {
  kernels::MatMulParams p = detail::matmul_params({4, 3, 5}, {5, 7}, {});
  EXPECT_EQ(p.batch, 1);
  EXPECT_EQ(p.m, 12);
  EXPECT_EQ(p.k, 5);
  EXPECT_EQ(p.n, 7);
  p = detail::matmul_params({4, 5, 3}, {5, 7}, mm_attrs(true, false));  // no fold: a transposed
  EXPECT_EQ(p.batch, 4);
  EXPECT_EQ(p.m, 3);
  EXPECT_EQ(p.a_batch_stride, 15);
  EXPECT_EQ(p.b_batch_stride, 0);
  p = detail::matmul_params({5, 3}, {2, 2, 7, 5}, mm_attrs(true, true));
  EXPECT_EQ(p.batch, 4);
  EXPECT_EQ(p.a_batch_stride, 0);
  EXPECT_EQ(p.b_batch_stride, 35);
  p = detail::matmul_params({4, 5, 3}, {4, 5, 7}, {{"transpose_a", true}, {"sum_batch", true}});
  EXPECT_EQ(p.batch, 1);
  EXPECT_EQ(p.k, 20);
}

TEST(MatMul, FastKernelsMatchReference) {
  Rng rng(3);
  std::vector<Layout> cases = layouts();
  for (int64_t s : {1, 2, 7, 16, 17, 31, 64, 65, 127}) {
    cases.push_back({{s, s + 2}, {s + 2, 3}, false, false});
    cases.push_back({{2, s, 9}, {9, s}, false, false});
    cases.push_back({{3, s, 5}, {3, 7, 5}, false, true});
  }
  cases.push_back({{256, 300}, {300, 129}, false, false});
  cases.push_back({{8, 50, 64}, {64, 256}, false, false});
  for (const Layout& l : cases) {
    Tensor a = testing::random_tensor(l.a, rng), b = testing::random_tensor(l.b, rng);
    // oneDNN accumulates in f32 in a blocked order: allow roundoff growing with sqrt(K).
    testing::expect_fast_matches_reference("matmul", {a, b}, mm_attrs(l.ta, l.tb), 1e-4, 1e-4);
  }
  Tensor a = testing::random_tensor({6, 5, 4}, rng), b = testing::random_tensor({6, 5, 3}, rng);
  testing::expect_fast_matches_reference("matmul", {a, b},
                                         {{"transpose_a", true}, {"sum_batch", true}}, 1e-4, 1e-4);
}

TEST(MatMul, ReferenceKernelIsThreadCountIndependent) {
  Rng rng(4);
  Tensor a = testing::random_tensor({4, 67, 129}, rng), b = testing::random_tensor({129, 65}, rng);
  const int saved = num_threads();
  set_num_threads(1);
  Tensor one = run_op(find_op("matmul"), {a, b}, {}, KernelChoice::kReference)[0];
  set_num_threads(2);
  Tensor two = run_op(find_op("matmul"), {a, b}, {}, KernelChoice::kReference)[0];
  set_num_threads(saved);
  EXPECT_TRUE(testing::tensors_equal(one, two));
  EXPECT_TRUE(tensors_near(one, naive_matmul(a, b, false, false), kAtol, kRtol));
}

TEST(MatMul, SymbolicWithUnknownBatchAndTime) {
  // Dense on [?, ?, D]: y = x @ w, L = sum(y * c) -> dL/dw = sum_{b,t} x[b,t]^T c[b,t].
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, kUnknown, 4});
  Value c = g.placeholder("c", DType::kF32, {kUnknown, kUnknown, 3});
  Value w = g.variable("w", Tensor::zeros({4, 3}));
  Value y = ops::matmul(x, w);
  EXPECT_EQ(y.shape(), Shape({kUnknown, kUnknown, 3}));
  auto grads = gradients({y}, {x, w}, {c});
  EXPECT_EQ(grads[0].shape(), Shape({kUnknown, kUnknown, 4}));
  EXPECT_EQ(grads[1].shape(), Shape({4, 3}));
  Rng rng(5);
  Tensor wv = testing::random_tensor({4, 3}, rng);
  g.variable_tensor(w).copy_from(wv);
  Executor ex(g, {y, grads[0], grads[1]});
  for (Shape xs : {Shape{2, 5, 4}, Shape{1, 1, 4}, Shape{3, 2, 4}}) {
    Tensor xv = testing::random_tensor(xs, rng);
    Tensor cv = testing::random_tensor({xs[0], xs[1], 3}, rng);
    auto out = ex.run({{x, xv}, {c, cv}});
    EXPECT_TRUE(tensors_near(out[0], naive_matmul(xv, wv, false, false), kAtol, kRtol));
    EXPECT_TRUE(tensors_near(out[1], naive_matmul(cv, wv, false, true), kAtol, kRtol));
    Tensor x2 = xv.reshape({xs[0] * xs[1], 4}), c2 = cv.reshape({xs[0] * xs[1], 3});
    EXPECT_TRUE(tensors_near(out[2], naive_matmul(x2, c2, true, false), kAtol, kRtol));
  }
}

TEST(MatMul, Errors) {
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({4, 5});
  expect_throws_with<ShapeError>([&] { ops::matmul(a, b); }, "inner dimensions differ");
  expect_throws_with<ShapeError>([&] { ops::matmul(a, b); }, "but found [4,5]");
  expect_throws_with<ShapeError>([&] { ops::matmul(Tensor::zeros({3}), b); },
                                 "argument 'a': expected rank >= 2");
  expect_throws_with<ShapeError>([&] { ops::matmul(b, Tensor::zeros({5})); },
                                 "argument 'b': expected rank >= 2");
  expect_throws_with<ShapeError>(
      [&] {
        ops::matmul(Tensor::zeros({2, 2, 3}), Tensor::zeros({3, 3, 4}));
      },
      "batch dimensions differ");
  expect_throws_with<ShapeError>(
      [&] {
        ops::matmul(Tensor::zeros({2, 2, 2, 3}), Tensor::zeros({2, 3, 4}));
      },
      "batch dimensions differ");
  expect_throws_with<DTypeError>(
      [&] {
        ops::matmul(Tensor::zeros({2, 3}, DType::kS32), Tensor::zeros({3, 2}));
      },
      "expected dtype f32");
  expect_throws_with<ValueError>(
      [&] {
        ops::apply1("matmul", {Tensor::zeros({2, 3, 4}), Tensor::zeros({2, 4, 5})},
                    {{"sum_batch", true}});
      },
      "sum_batch");
  // Unknown dims are accepted at graph-build time and checked again at run time.
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, kUnknown});
  Value w = g.placeholder("w", DType::kF32, {3, 2});
  Value y = ops::matmul(x, w);
  EXPECT_EQ(y.shape(), Shape({kUnknown, 2}));
  Executor ex(g, {y});
  // The executor re-runs the shape rule with the fed shapes and reports it as a GraphError.
  expect_throws_with<GraphError>(
      [&] {
        ex.run({{x, Tensor::zeros({2, 4})}, {w, Tensor::zeros({3, 2})}});
      },
      "inner dimensions differ");
}

}  // namespace
}  // namespace lowbit
