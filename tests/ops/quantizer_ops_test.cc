// Tests of the PyTorch-style fake-quant ops and the learned / binary / ternary / DoReFa
// quantizers (include/lowbit/ops/quantizer_ops.h). Golden values come from
// ../shared/testdata/fakequant_examples.json (torch 1.13 for the torch_* kinds), the rest are
// worked out by hand from quantization-semantics.md sections 4 and 5.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lowbit/graph.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "lowbit/threads.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using json = nlohmann::json;
using testing::expect_gradients_match;
using testing::expect_throws_with;
using testing::note_reference_tested;
using testing::random_tensor;
using testing::tensors_equal;
using testing::tensors_near;

Tensor f32(std::vector<float> v, Shape s) { return Tensor::from_vector<float>(v, s); }
Tensor f32(std::vector<float> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return Tensor::from_vector<float>(v, {n});
}
Tensor scalar(float v) { return Tensor::scalar(v); }

// ---- golden file ----------------------------------------------------------------------------

const json& golden() {
  static const json j = [] {
    std::ifstream f(testing::shared_dir() + "/testdata/fakequant_examples.json");
    EXPECT_TRUE(f.good()) << "cannot open the golden vectors under " << testing::shared_dir();
    return json::parse(f);
  }();
  return j;
}

std::vector<json> cases_of(const std::string& kind) {
  std::vector<json> out;
  for (const json& c : golden()["cases"])
    if (c["kind"] == kind) out.push_back(c);
  return out;
}

// A float as the schema writes it: a number, or "nan" / "inf" / "-inf".
float num(const json& v) {
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "nan") return std::numeric_limits<float>::quiet_NaN();
    if (s == "inf") return INFINITY;
    if (s == "-inf") return -INFINITY;
    ADD_FAILURE() << "unexpected float string " << s;
    return 0;
  }
  return static_cast<float>(v.get<double>());
}

void flatten(const json& v, std::vector<float>& out, std::vector<int64_t>& shape, size_t depth) {
  if (!v.is_array()) {
    out.push_back(num(v));
    return;
  }
  if (shape.size() == depth) shape.push_back(static_cast<int64_t>(v.size()));
  for (const json& e : v) flatten(e, out, shape, depth + 1);
}

// A nested list (or a number) as an f32 tensor.
Tensor tensor_of(const json& v) {
  std::vector<float> data;
  std::vector<int64_t> shape;
  flatten(v, data, shape, 0);
  return Tensor::from_vector<float>(data, Shape(shape));
}

// got == want elementwise (so -0 == 0; NaN must be NaN), or within `tol`.
::testing::AssertionResult matches(const Tensor& got, const Tensor& want, double tol = 0) {
  if (got.numel() != want.numel())
    return ::testing::AssertionFailure() << "size " << got.numel() << " vs " << want.numel();
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = got.get_as_double(i), w = want.get_as_double(i);
    const bool ok = std::isnan(w) ? std::isnan(g) : (tol == 0 ? g == w : std::abs(g - w) <= tol);
    if (!ok)
      return ::testing::AssertionFailure()
             << "element " << i << ": got " << got.str(12) << "\nwant " << want.str(12);
  }
  return ::testing::AssertionSuccess();
}

// Both kernel choices of an op.
std::vector<Tensor> run_both(const std::string& op, const std::vector<Tensor>& in,
                             const Attrs& attrs, std::vector<Tensor>* fast_out) {
  *fast_out = run_op(find_op(op), in, attrs, KernelChoice::kFastest);
  return run_op(find_op(op), in, attrs, KernelChoice::kReference);
}

// dx of y = f(x) for the cotangent dy, through a graph and autodiff.
template <class F>
Tensor grad_through_graph(F f, const Tensor& x, const Tensor& dy) {
  Graph g;
  Value xv = g.placeholder("x", DType::kF32, x.shape());
  Value y = f(xv);
  Value dx = gradients({y}, {xv}, {g.constant(dy)})[0];
  Executor ex(g, {dx});
  return ex.run({{xv, x}})[0];
}

Attrs qrange(const json& p) {
  return {{"quant_min", p["quant_min"].get<int64_t>()},
          {"quant_max", p["quant_max"].get<int64_t>()}};
}

TEST(TorchFakeQuantGolden, PerTensor) {
  const auto cases = cases_of("torch_fake_quant_per_tensor");
  ASSERT_FALSE(cases.empty());
  for (const json& c : cases) {
    SCOPED_TRACE(c["id"].get<std::string>());
    const json& p = c["params"];
    const Tensor x = tensor_of(c["inputs"]["x"]), dy = tensor_of(c["inputs"]["dy"]);
    const Tensor s = scalar(num(p["scale"])), zp = scalar(num(p["zero_point"]));
    const Attrs a = qrange(p);
    std::vector<Tensor> fast;
    auto ref = run_both("fake_quantize_per_tensor_affine", {x, s, zp}, a, &fast);
    EXPECT_TRUE(matches(ref[0], tensor_of(c["expected"]["y"])));
    EXPECT_TRUE(matches(fast[0], tensor_of(c["expected"]["y"])));
    ref = run_both("fake_quantize_per_tensor_affine_backward", {dy, x, s, zp}, a, &fast);
    EXPECT_TRUE(matches(ref[0], tensor_of(c["expected"]["dx"])));
    EXPECT_TRUE(matches(fast[0], tensor_of(c["expected"]["dx"])));
    // The public function and the gradient rule give the same.
    const int64_t lo = a.i("quant_min"), hi = a.i("quant_max");
    EXPECT_TRUE(matches(ops::fake_quantize_per_tensor_affine(x, s, zp, lo, hi),
                        tensor_of(c["expected"]["y"])));
    EXPECT_TRUE(matches(grad_through_graph(
                            [&](const Value& v) {
                              return ops::fake_quantize_per_tensor_affine(
                                  v, v.graph().constant(s), v.graph().constant(zp), lo, hi);
                            },
                            x, dy),
                        tensor_of(c["expected"]["dx"])));
  }
  note_reference_tested("fake_quantize_per_tensor_affine");
  note_reference_tested("fake_quantize_per_tensor_affine_backward");
}

TEST(TorchFakeQuantGolden, PerChannel) {
  const auto cases = cases_of("torch_fake_quant_per_channel");
  ASSERT_FALSE(cases.empty());
  for (const json& c : cases) {
    SCOPED_TRACE(c["id"].get<std::string>());
    const json& p = c["params"];
    const Tensor x = tensor_of(c["inputs"]["x"]), dy = tensor_of(c["inputs"]["dy"]);
    const Tensor s = tensor_of(p["scale"]), zp = tensor_of(p["zero_point"]);
    Attrs a = qrange(p);
    a.set("axis", p["axis"].get<int64_t>());
    std::vector<Tensor> fast;
    auto ref = run_both("fake_quantize_per_channel_affine", {x, s, zp}, a, &fast);
    EXPECT_TRUE(matches(ref[0], tensor_of(c["expected"]["y"])));
    EXPECT_TRUE(matches(fast[0], tensor_of(c["expected"]["y"])));
    ref = run_both("fake_quantize_per_channel_affine_backward", {dy, x, s, zp}, a, &fast);
    EXPECT_TRUE(matches(ref[0], tensor_of(c["expected"]["dx"])));
    EXPECT_TRUE(matches(fast[0], tensor_of(c["expected"]["dx"])));
    const int axis = static_cast<int>(a.i("axis"));
    EXPECT_TRUE(matches(grad_through_graph(
                            [&](const Value& v) {
                              return ops::fake_quantize_per_channel_affine(
                                  v, v.graph().constant(s), v.graph().constant(zp), axis,
                                  a.i("quant_min"), a.i("quant_max"));
                            },
                            x, dy),
                        tensor_of(c["expected"]["dx"])));
  }
  note_reference_tested("fake_quantize_per_channel_affine");
  note_reference_tested("fake_quantize_per_channel_affine_backward");
}

TEST(TorchFakeQuantGolden, Learnable) {
  const auto cases = cases_of("torch_learnable_fake_quant");
  ASSERT_FALSE(cases.empty());
  for (const json& c : cases) {
    SCOPED_TRACE(c["id"].get<std::string>());
    const json& p = c["params"];
    const Tensor x = tensor_of(c["inputs"]["x"]), dy = tensor_of(c["inputs"]["dy"]);
    const Tensor s = scalar(num(p["scale"])), zp = scalar(num(p["zero_point"]));
    Attrs a = qrange(p);
    a.set("grad_factor", p["grad_factor"].get<double>());
    const json& e = c["expected"];
    std::vector<Tensor> fast;
    auto ref = run_both("fake_quantize_learnable_per_tensor_affine", {x, s, zp}, a, &fast);
    EXPECT_TRUE(matches(ref[0], tensor_of(e["y"])));
    EXPECT_TRUE(matches(fast[0], tensor_of(e["y"])));
    ref = run_both("fake_quantize_learnable_per_tensor_affine_backward", {dy, x, s, zp}, a, &fast);
    for (const auto* out : {&ref, &fast}) {
      EXPECT_TRUE(matches((*out)[0], tensor_of(e["dx"])));
      EXPECT_TRUE(matches((*out)[1], tensor_of(e["dscale"])));
      EXPECT_TRUE(matches((*out)[2], tensor_of(e["dzero_point"])));
    }
    // The per-channel op with one channel computes the same (its zero point 0 is rounded the
    // same way in both directions).
    Attrs pc = a;
    pc.set("axis", 1);
    const Tensor s1 = s.reshape({1}), z1 = zp.reshape({1});
    const Shape col{x.numel(), 1};
    auto ch = run_both("fake_quantize_learnable_per_channel_affine_backward",
                       {dy.reshape(col), x.reshape(col), s1, z1}, pc, &fast);
    EXPECT_TRUE(matches(ch[0], tensor_of(e["dx"])));
    EXPECT_TRUE(matches(ch[1], tensor_of(e["dscale"])));
    EXPECT_TRUE(matches(fast[1], tensor_of(e["dscale"])));
    EXPECT_TRUE(matches(ch[2], tensor_of(e["dzero_point"])));
  }
  note_reference_tested("fake_quantize_learnable_per_tensor_affine");
  note_reference_tested("fake_quantize_learnable_per_tensor_affine_backward");
  note_reference_tested("fake_quantize_learnable_per_channel_affine_backward");
}

TEST(TorchFakeQuantGolden, LowbitQuantizers) {
  const auto cases = cases_of("lowbit_quantizer");
  ASSERT_FALSE(cases.empty());
  for (const json& c : cases) {
    SCOPED_TRACE(c["id"].get<std::string>());
    const std::string method = c["params"]["method"];
    const int k = c["params"]["k"].is_null() ? 0 : c["params"]["k"].get<int>();
    auto quantize = [&](const auto& x) {
      if (method == "dorefa_weight") return ops::dorefa_weight(x, k);
      if (method == "dorefa_activation") return ops::dorefa_activation(x, k);
      if (method == "bwn") return ops::binary_quantize(x, /*per_channel=*/false);
      ADD_FAILURE() << "unknown method " << method;
      return x;
    };
    const json& e = c["expected"];
    const double tol = e.value("tolerance", 0.0);
    const Tensor x = tensor_of(c["inputs"]["x"]);
    EXPECT_TRUE(matches(quantize(x), tensor_of(e["y"]), tol));
    if (e.contains("dx_for_ones")) {
      EXPECT_TRUE(matches(grad_through_graph(quantize, x, ops::ones_like(x)),
                          tensor_of(e["dx_for_ones"]), tol));
    }
  }
  note_reference_tested("dorefa_quantize");
  note_reference_tested("dorefa_activation");
  note_reference_tested("binary_quantize");
}

// ---- hand cases -----------------------------------------------------------------------------

// Spec section 6, row 13 (and 4.5: -2.5 -> -2, 2.5 -> 2 at scale 1).
TEST(TorchFakeQuant, SpecRow13TiesToEvenAndMaskAfterRounding) {
  const Tensor x = f32({-2.5f, 2.5f, 3.5f, 127.5f, 200.0f, 0.49999997f, -128.5f, -128.6f});
  const Tensor s = scalar(1), zp = scalar(0);
  const Tensor y = ops::fake_quantize_per_tensor_affine(x, s, zp, -128, 127);
  EXPECT_TRUE(matches(y, f32({-2, 2, 4, 127, 127, 0, -128, -128})));
  // 127.5 rounds to 128: outside, no gradient (TF's mask would pass it); -128.5 rounds to -128
  // (even): inside, half a step beyond the last grid point.
  const Tensor dx =
      ops::fake_quantize_per_tensor_affine_backward(ops::ones_like(x), x, s, zp, -128, 127);
  EXPECT_TRUE(matches(dx, f32({1, 1, 1, 0, 0, 1, 1, 0})));
}

TEST(TorchFakeQuant, MultipliesByTheInverseScale) {
  // x * f32(1/s) = -294.50003 rounds to -295, whereas x / s = -294.5 would round to -294.
  const float s = 0.03f, x = (-295 + 0.5f) * s;
  ASSERT_EQ(std::nearbyint(x / s), -294.0f);
  ASSERT_EQ(std::nearbyint(x * (1.0f / s)), -295.0f);
  const Tensor y = ops::fake_quantize_per_tensor_affine(f32({x}), scalar(s), scalar(0), -512, 511);
  EXPECT_EQ(y.data<float>()[0], -295.0f * s);
}

TEST(TorchFakeQuant, ZeroPointIsAddedAfterRounding) {
  // PyTorch's forward: q = zp + round_even(x/s). x/s = 2.5 with zp 1 gives 1 + 2 = 3 (not
  // round_even(3.5) = 4).
  const Tensor y =
      ops::fake_quantize_per_tensor_affine(f32({2.5f, -0.5f}), scalar(1), scalar(1), 0, 255);
  EXPECT_TRUE(matches(y, f32({2, 0})));  // (3 - 1) * 1, (1 + -0 - 1) * 1 -> 0
}

TEST(TorchFakeQuant, NanAndInfinity) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor x = f32({nan, INFINITY, -INFINITY});
  const Tensor y = ops::fake_quantize_per_tensor_affine(x, scalar(0.5f), scalar(0), -8, 7);
  EXPECT_TRUE(std::isnan(y.data<float>()[0]));
  EXPECT_EQ(y.data<float>()[1], 3.5f);
  EXPECT_EQ(y.data<float>()[2], -4.0f);
  const Tensor dx = ops::fake_quantize_per_tensor_affine_backward(ops::ones_like(x), x,
                                                                  scalar(0.5f), scalar(0), -8, 7);
  EXPECT_TRUE(matches(dx, f32({0, 0, 0})));
}

TEST(TorchFakeQuant, PerChannelAlongEachAxis) {
  // x [2, 3, 2]; channel c of axis 1 uses scale[c], zero_point[c].
  Rng rng(3);
  const Tensor x = random_tensor({2, 3, 2}, rng, -2, 2);
  const Tensor s = f32({0.25f, 0.5f, 0.125f}), zp = f32({0, 3, -2});
  const Tensor y = ops::fake_quantize_per_channel_affine(x, s, zp, 1, -8, 7);
  const Tensor y_neg = ops::fake_quantize_per_channel_affine(x, s, zp, -2, -8, 7);
  EXPECT_TRUE(tensors_equal(y, y_neg));
  for (int64_t o = 0; o < 2; ++o)
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t i = 0; i < 2; ++i) {
        const float xv = x.at<float>({o, c, i});
        const Tensor one = ops::fake_quantize_per_tensor_affine(
            f32({xv}), scalar(s.data<float>()[c]), scalar(zp.data<float>()[c]), -8, 7);
        EXPECT_EQ(y.at<float>({o, c, i}), one.data<float>()[0]) << o << c << i;
      }
}

TEST(TorchFakeQuant, SymbolicPerChannelWithUnknownBatch) {
  // A Dense-like kernel use per output channel (last axis) and an activation per tensor, in one
  // graph whose batch dim is unknown until it runs.
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 3});
  Value s = g.constant(f32({0.25f, 0.5f, 0.125f})), z = g.constant(f32({0, 1, -2}));
  Value y = ops::fake_quantize_per_channel_affine(x, s, z, -1, -8, 7);
  EXPECT_EQ(y.shape(), Shape({kUnknown, 3}));
  Value dx = gradients(ops::sum(y * y), {x})[0];
  Executor ex(g, {y, dx});
  Rng rng(4);
  for (int64_t batch : {1, 5}) {
    const Tensor xt = random_tensor({batch, 3}, rng, -3, 3);
    auto r = ex.run({{x, xt}});
    const Tensor st = f32({0.25f, 0.5f, 0.125f}), zt = f32({0, 1, -2});
    const Tensor want = ops::fake_quantize_per_channel_affine(xt, st, zt, -1, -8, 7);
    EXPECT_TRUE(tensors_equal(r[0], want));
    EXPECT_TRUE(tensors_equal(
        r[1], ops::fake_quantize_per_channel_affine_backward(want * 2.0, xt, st, zt, -1, -8, 7)));
  }
}

// ---- learnable: hand-computed gradients -----------------------------------------------------

// scale 0.5, zero point 0, 3-bit signed [-4, 3] (LSQ: Q_N = 4, Q_P = 3), dy = 1:
//   x      x/s   q    in?  dscale / g              dzp / g
//   -3.0   -6    -6   no   qmin - zp = -4           -s = -0.5
//   -1.2   -2.4  -2   yes  (q s - x)/s = 0.4        0
//    0.3    0.6   1   yes  (0.5 - 0.3)/0.5 = 0.4    0
//    0.7    1.4   1   yes  -0.4                     0
//    1.6    3.2   3   yes  -0.2                     0
//    1.7    3.4   3   yes  -0.4 (PyTorch's mask; the LSQ paper would give Q_P = 3 here)
//    2.0    4     4   no   qmax - zp = 3            -0.5
// sum dscale = -1.2 g, sum dzp = -1.0 g.
const std::vector<float> kLsqX = {-3.0f, -1.2f, 0.3f, 0.7f, 1.6f, 1.7f, 2.0f};
constexpr double kHandTol = 1e-6;  // the table is in decimal; the ops round in f32

TEST(TorchLearnableFakeQuant, GradientsMatchTheHandTable) {
  const Tensor x = f32(kLsqX), dy = ops::ones_like(x);
  for (double g : {1.0, 0.25}) {
    SCOPED_TRACE(g);
    auto d = ops::fake_quantize_learnable_per_tensor_affine_backward(dy, x, scalar(0.5f), scalar(0),
                                                                     -4, 3, g);
    EXPECT_TRUE(matches(d[0], f32({0, 1, 1, 1, 1, 1, 0})));
    EXPECT_NEAR(d[1].item<float>(), -1.2 * g, kHandTol);
    EXPECT_NEAR(d[2].item<float>(), -1.0 * g, kHandTol);
  }
  const Tensor y =
      ops::fake_quantize_learnable_per_tensor_affine(x, scalar(0.5f), scalar(0), -4, 3);
  EXPECT_TRUE(matches(y, f32({-2, -1, 0.5f, 0.5f, 1.5f, 1.5f, 1.5f})));
}

TEST(TorchLearnableFakeQuant, ForwardAndBackwardRoundTheZeroPointDifferently) {
  // zero point 2.5: the forward uses round_even(2.5) = 2, the backward trunc(2.5 + 0.5) = 3 and
  // rounds after adding it (PyTorch). Scale 1, range [0, 10].
  const Tensor x = f32({7.6f, 7.4f}), s = scalar(1), z = scalar(2.5f);
  const Tensor y = ops::fake_quantize_learnable_per_tensor_affine(x, s, z, 0, 10);
  EXPECT_TRUE(matches(y, f32({8, 7})));  // 2 + 8 = 10 -> (10 - 2) * 1; 2 + 7 = 9 -> 7
  auto d =
      ops::fake_quantize_learnable_per_tensor_affine_backward(ops::ones_like(x), x, s, z, 0, 10);
  // 7.6: round(3 + 7.6) = 11 > 10: dx 0, dscale 10 - 3 = 7, dzp -1.
  // 7.4: round(3 + 7.4) = 10: inside, dscale ((10 - 3) - 7.4) / 1 = -0.4, dzp 0.
  EXPECT_TRUE(matches(d[0], f32({0, 1})));
  EXPECT_NEAR(d[1].item<float>(), 7 - 0.4, kHandTol);
  EXPECT_EQ(d[2].item<float>(), -1.0f);
  // A zero point outside the range is clamped, not rejected.
  const Tensor yc = ops::fake_quantize_learnable_per_tensor_affine(x, s, scalar(40), 0, 10);
  EXPECT_TRUE(matches(yc, f32({0, 0})));
}

TEST(TorchLearnableFakeQuant, PerChannelUsesRoundedZeroPointsBothWays) {
  // Two channels on the last axis; channel 1 has zero point 2.5 -> round_even -> 2 in both
  // directions (PyTorch's per-channel op).
  const Tensor x = f32({7.6f, 7.6f, 7.4f, 7.4f}, {2, 2});
  const Tensor s = f32({1, 1}), z = f32({3, 2.5f});
  auto d = ops::fake_quantize_learnable_per_channel_affine_backward(ops::ones_like(x), x, s, z, -1,
                                                                    0, 10);
  // channel 0 (zp 3): as the per-tensor backward above: dx {0, 1}, dscale 7 - 0.4, dzp -1.
  // channel 1 (zp 2): round(2 + 7.6) = 10, round(2 + 7.4) = 9: both inside: dscale
  // (8 - 7.6) + (7 - 7.4) = 0, dzp 0.
  EXPECT_TRUE(matches(d[0], f32({0, 1, 1, 1}, {2, 2})));
  EXPECT_NEAR(d[1].data<float>()[0], 6.6, kHandTol);
  EXPECT_NEAR(d[1].data<float>()[1], 0.0, kHandTol);
  EXPECT_TRUE(matches(d[2], f32({-1, 0})));
  const Tensor y = ops::fake_quantize_learnable_per_channel_affine(x, s, z, -1, 0, 10);
  EXPECT_TRUE(matches(y, f32({7, 8, 7, 7}, {2, 2})));
  note_reference_tested("fake_quantize_learnable_per_channel_affine");
}

// ---- LSQ ------------------------------------------------------------------------------------

TEST(Lsq, RangesAndGradFactor) {
  EXPECT_EQ(ops::lsq_range(4, true).min, -8);
  EXPECT_EQ(ops::lsq_range(4, true).max, 7);
  EXPECT_EQ(ops::lsq_range(2, true).min, -2);
  EXPECT_EQ(ops::lsq_range(2, false).max, 3);
  EXPECT_EQ(ops::lsq_range(1, false).max, 1);
  EXPECT_EQ(ops::lsq_range(16, true).min, -32768);
  EXPECT_DOUBLE_EQ(ops::lsq_grad_factor(8, 4, true), 1 / std::sqrt(56.0));
  // The golden learnable case uses exactly this factor (8 elements, quant_max 7).
  EXPECT_DOUBLE_EQ(
      ops::lsq_grad_factor(8, 4, true),
      cases_of("torch_learnable_fake_quant")[0]["params"]["grad_factor"].get<double>());
  expect_throws_with<ValueError>([] { ops::lsq_range(1, true); }, "bits");
  expect_throws_with<ValueError>([] { ops::lsq_range(17, false); }, "[1, 16]");
  expect_throws_with<ValueError>([] { ops::lsq_grad_factor(0, 4, true); }, "'n'");
}

TEST(Lsq, StepGradientIncludesTheGradScale) {
  // kLsqX through lsq_quantize(3 bits signed): g = 1/sqrt(N Q_P) with N = numel = 7, Q_P = 3.
  const Tensor x = f32(kLsqX);
  const Tensor step = scalar(0.5f);
  Graph g;
  Value xv = g.placeholder("x", DType::kF32, x.shape());
  Value sv = g.variable("step", step);
  Value y = ops::lsq_quantize(xv, sv, 3);
  auto d = gradients({y}, {xv, sv}, {g.constant(ops::ones_like(x))});
  Executor ex(g, {y, d[0], d[1]});
  auto r = ex.run({{xv, x}});
  EXPECT_TRUE(matches(r[0], f32({-2, -1, 0.5f, 0.5f, 1.5f, 1.5f, 1.5f})));
  EXPECT_TRUE(matches(r[1], f32({0, 1, 1, 1, 1, 1, 0})));
  EXPECT_NEAR(r[2].item<float>(), -1.2 / std::sqrt(7.0 * 3.0), kHandTol);
  // An explicit N (features per example) replaces numel.
  const Tensor y2 = ops::lsq_quantize(x, step, 3, true, std::nullopt, 100);
  EXPECT_TRUE(matches(y2, r[0]));
  Value y3 = ops::lsq_quantize(xv, sv, 3, true, std::nullopt, 100);
  Value d3 = gradients({y3}, {sv}, {g.constant(ops::ones_like(x))})[0];
  Executor ex3(g, {d3});
  EXPECT_NEAR(ex3.run({{xv, x}})[0].item<float>(), -1.2 / std::sqrt(100.0 * 3.0), kHandTol);
}

TEST(Lsq, PerChannelStepsAndInit) {
  // w [3, 2]: channel 0 step 0.5, channel 1 step 0.25, 4-bit signed [-8, 7].
  const Tensor w = f32({0.3f, -0.3f, 1.0f, 2.5f, -5.0f, 0.1f}, {3, 2});
  const Tensor step = f32({0.5f, 0.25f});
  const Tensor y = ops::lsq_quantize(w, step, 4, true, -1);
  EXPECT_TRUE(matches(y, f32({0.5f, -0.25f, 1.0f, 1.75f, -4.0f, 0.0f}, {3, 2})));
  // init: 2 mean|w| / sqrt(Q_P) per tensor and per channel (Q_P = 7).
  const Tensor s0 = ops::lsq_init_step(w, 4);
  EXPECT_NEAR(s0.item<float>(), 2 * (9.2 / 6) / std::sqrt(7.0), 1e-6);
  const Tensor s1 = ops::lsq_init_step(w, 4, true, -1);
  EXPECT_NEAR(s1.data<float>()[0], 2 * (6.3 / 3) / std::sqrt(7.0), 1e-6);
  EXPECT_NEAR(s1.data<float>()[1], 2 * (2.9 / 3) / std::sqrt(7.0), 1e-6);
  const Tensor s2 = ops::lsq_init_step(f32({-1, 3}), 2, false, 0);  // rank 1: |x| per channel
  EXPECT_NEAR(s2.data<float>()[1], 6 / std::sqrt(3.0), 1e-6);
  expect_throws_with<ValueError>(
      [&] {
        ops::lsq_quantize(w, f32({0.5f, 0}), 4, true, -1);
      },
      "step");
}

TEST(Lsq, SymbolicWithUnknownBatch) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 5});
  Value step = g.variable("step", scalar(0.1f));
  Value w = g.variable("w", f32({0.2f, -0.4f, 0.05f, 0.3f, -0.15f}));
  Value wstep = g.variable("wstep", scalar(0.05f));
  Value y =
      ops::lsq_quantize(x, step, 4, false) * ops::lsq_quantize(w, wstep, 2, true, std::nullopt, 5);
  EXPECT_EQ(y.shape(), Shape({kUnknown, 5}));
  auto d = gradients(ops::sum(y), {x, step, w, wstep});
  Executor ex(g, {y, d[0], d[1], d[2], d[3]});
  Rng rng(5);
  for (int64_t batch : {3, 7}) {
    SCOPED_TRACE(batch);
    const Tensor xt = random_tensor({batch, 5}, rng, -0.5f, 2.0f);
    auto r = ex.run({{x, xt}});
    // Eager equivalent, with the run-time grad factor 1/sqrt(numel * 15) for x.
    const Tensor wq =
        ops::lsq_quantize(g.variable_tensor(w), scalar(0.05f), 2, true, std::nullopt, 5);
    const Tensor xq = ops::lsq_quantize(xt, scalar(0.1f), 4, false);
    EXPECT_TRUE(tensors_equal(r[0], xq * wq));
    const Tensor dyx = ops::ones_like(xt) * wq;
    auto dx = ops::fake_quantize_learnable_per_tensor_affine_backward(
        dyx, xt, scalar(0.1f), scalar(0), 0, 15, 1 / std::sqrt(batch * 5 * 15.0));
    EXPECT_TRUE(tensors_equal(r[1], dx[0]));
    EXPECT_TRUE(tensors_equal(r[2], dx[1]));
  }
}

// ---- PACT -----------------------------------------------------------------------------------

TEST(Pact, ForwardAndGradients) {
  // alpha 3, 2 bits: s = 1, grid {0, 1, 2, 3}.
  const Tensor x = f32({-1.0f, 0.0f, 0.5f, 1.5f, 2.4f, 3.0f, 4.0f});
  const Tensor a = scalar(3);
  const Tensor y = ops::pact_quantize(x, a, 2);
  EXPECT_TRUE(matches(y, f32({0, 0, 0, 2, 2, 3, 3})));  // 0.5 -> 0, 1.5 -> 2 (even)
  const Tensor dy = f32({1, 2, 3, 4, 5, 6, 7});
  auto d = ops::pact_quantize_backward(dy, x, a, 2);
  EXPECT_TRUE(matches(d[0], f32({0, 2, 3, 4, 5, 0, 0})));  // 0 <= x < alpha
  EXPECT_EQ(d[1].item<float>(), 13.0f);                    // x >= alpha: 6 + 7
  // Through autodiff.
  Graph g;
  Value xv = g.placeholder("x", DType::kF32, {kUnknown});
  Value av = g.variable("alpha", a);
  auto grads = gradients({ops::pact_quantize(xv, av, 2)}, {xv, av},
                         {g.constant(dy)});  // dy's shape fixes the batch at run time
  Executor ex(g, grads);
  auto r = ex.run({{xv, x}});
  EXPECT_TRUE(matches(r[0], d[0]));
  EXPECT_TRUE(matches(r[1], d[1]));
  // alpha 1, 4 bits: s = 1/15; the grid point of 0.5 is round_even(7.5) = 8 -> 8/15.
  const Tensor y4 = ops::pact_quantize(f32({0.5f, 0.2f}), scalar(1), 4);
  const float s = 1.0f / 15.0f;
  EXPECT_EQ(y4.data<float>()[0], std::nearbyint(0.5f / s) * s);
  EXPECT_EQ(y4.data<float>()[1], std::nearbyint(0.2f / s) * s);
  note_reference_tested("pact_quantize");
  note_reference_tested("pact_quantize_backward");
}

// ---- binary / ternary / DoReFa --------------------------------------------------------------

TEST(BinaryQuantizers, SignSte) {
  const Tensor x = f32({-2.0f, -1.0f, -0.5f, 0.0f, -0.0f, 0.5f, 1.0f, 1.5f});
  EXPECT_TRUE(matches(ops::sign_ste(x), f32({-1, -1, -1, 1, 1, 1, 1, 1})));
  EXPECT_TRUE(matches(
      grad_through_graph([](const Value& v) { return ops::sign_ste(v); }, x, ops::ones_like(x)),
      f32({0, 1, 1, 1, 1, 1, 1, 0})));  // |x| <= 1
  EXPECT_TRUE(matches(grad_through_graph([](const Value& v) { return ops::sign_ste(v, INFINITY); },
                                         x, ops::ones_like(x)),
                      ops::ones_like(x)));
  EXPECT_TRUE(matches(ops::ste_range_backward(f32({2, 3, 4}), f32({-1, 0.5f, 1.01f}), -1, 1),
                      f32({2, 3, 0})));
  note_reference_tested("sign_ste");
  note_reference_tested("ste_range_backward");
}

TEST(BinaryQuantizers, BwnPerOutputChannel) {
  // w [2, 3] (Dense [in, out]): alpha_c = mean over the column.
  const Tensor w = f32({0.5f, -0.2f, 0.0f, -1.5f, 0.6f, -0.4f}, {2, 3});
  const Tensor y = ops::binary_quantize(w);
  EXPECT_TRUE(matches(y, f32({1, -0.4f, 0.2f, -1, 0.4f, -0.2f}, {2, 3})));
  const Tensor yt = ops::binary_quantize(w, false);
  EXPECT_NEAR(yt.data<float>()[0], 3.2 / 6, 1e-7);
  // clip 1: XNOR-Net's mask |w| <= 1.
  EXPECT_TRUE(
      matches(grad_through_graph([](const Value& v) { return ops::binary_quantize(v, true, 1); }, w,
                                 ops::ones_like(w)),
              f32({1, 1, 1, 0, 1, 1}, {2, 3})));
}

TEST(BinaryQuantizers, TernaryTwn) {
  // Per tensor: mean|w| = 0.45, delta = 0.315; |w| > delta: {0.9, -0.6, 0.4, -1.1} -> alpha 0.75.
  const Tensor w = f32({0.9f, -0.6f, 0.4f, 0.3f, -0.1f, -1.1f, 0.0f, 0.2f}, {4, 2});
  const Tensor y = ops::ternary_quantize(w, false);
  EXPECT_TRUE(matches(y, f32({0.75f, -0.75f, 0.75f, 0, 0, -0.75f, 0, 0}, {4, 2})));
  // Per channel (columns): c0 = {0.9, 0.4, -0.1, 0.0}: mean 0.35, delta 0.245 -> alpha 0.65;
  // c1 = {-0.6, 0.3, -1.1, 0.2}: mean 0.55, delta 0.385 -> {-0.6, -1.1} -> alpha 0.85.
  const Tensor yc = ops::ternary_quantize(w);
  EXPECT_TRUE(matches(yc, f32({0.65f, -0.85f, 0.65f, 0, 0, -0.85f, 0, 0}, {4, 2}), 1e-7));
  EXPECT_TRUE(matches(ops::ternary_quantize(Tensor::zeros({3, 2})), Tensor::zeros({3, 2})));
  EXPECT_TRUE(matches(grad_through_graph([](const Value& v) { return ops::ternary_quantize(v); }, w,
                                         ops::ones_like(w)),
                      ops::ones_like(w)));
  note_reference_tested("ternary_quantize");
}

TEST(BinaryQuantizers, DoReFa) {
  // quantize_k(r) = round_even(r (2^k - 1)) / (2^k - 1): k = 2: 0.5 * 3 = 1.5 -> 2 -> 2/3.
  EXPECT_TRUE(matches(ops::dorefa_quantize(f32({0.5f, 1.0f / 6, 0.0f, 1.0f}), 2),
                      f32({2.0f / 3, 0.0f, 0.0f, 1.0f})));
  // Activations: clamp to [0, 1] first; gradient on [0, 1] including both ends.
  const Tensor x = f32({-0.5f, 0.0f, 0.4f, 1.0f, 1.5f});
  EXPECT_TRUE(matches(ops::dorefa_activation(x, 1), f32({0, 0, 0, 1, 1})));
  EXPECT_TRUE(
      matches(grad_through_graph([](const Value& v) { return ops::dorefa_activation(v, 3); }, x,
                                 ops::ones_like(x)),
              f32({0, 1, 1, 1, 0})));
  // Weights, k = 1: E sign(w) with identity gradient.
  const Tensor w = f32({-0.5f, 0.25f, 0.0f, 1.25f});
  EXPECT_TRUE(matches(ops::dorefa_weight(w, 1), f32({-0.5f, 0.5f, 0.5f, 0.5f})));
  // k = 2: t = tanh(w), u = t / (2 max|t|) + 0.5 in {0, 1/3, 2/3, 1} after quantize_k.
  const Tensor y2 = ops::dorefa_weight(w, 2);
  const double m = std::tanh(1.25);
  for (int i = 0; i < 4; ++i) {
    const double u = std::tanh(w.data<float>()[i]) / (2 * m) + 0.5;
    EXPECT_NEAR(y2.data<float>()[i], 2 * std::nearbyint(u * 3) / 3 - 1, 1e-6) << i;
  }
  expect_throws_with<ValueError>([&] { ops::dorefa_weight(w, 0); }, "bits");
}

// ---- finite-difference gradient checks ------------------------------------------------------
//
// The quantizers are step functions; their gradients are straight-through estimators. A
// central difference agrees with the STE where the op is locally the identity or constant:
// on a grid much finer than the difference step (scale 1e-4 vs eps 1e-2, error <= s/eps ~ 1%)
// and outside the clamping range (both 0). That checks the wiring of every gradient rule; the
// exact STE values are checked by the hand and golden cases above.

Tensor fine_grid_inputs(Rng& rng, Shape s) {
  Tensor x = random_tensor(s, rng, -1, 1);
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); i += 3) p[i] = (i % 2 ? 5.0f : -5.0f) + 0.1f * p[i];
  return x;  // every third element far outside [-3.2768, 3.2767]
}

TEST(TorchFakeQuantGradients, FiniteDifferencesOnAFineGrid) {
  Rng rng(7);
  const Attrs r16{{"quant_min", -32768}, {"quant_max", 32767}};
  const Tensor x = fine_grid_inputs(rng, {4, 3});
  expect_gradients_match("fake_quantize_per_tensor_affine", {x, scalar(1e-4f), scalar(0)}, r16,
                         {.wrt = {0}});
  Attrs pc = r16;
  pc.set("axis", 1);
  const Tensor sc = f32({1e-4f, 1e-4f, 1e-4f}), zc = f32({0, 10, -7});
  expect_gradients_match("fake_quantize_per_channel_affine", {x, sc, zc}, pc, {.wrt = {0}});
  expect_gradients_match("fake_quantize_learnable_per_tensor_affine",
                         {x, scalar(1e-4f), scalar(0.2f)}, r16, {.wrt = {0}});
  expect_gradients_match("fake_quantize_learnable_per_channel_affine", {x, sc, zc}, pc,
                         {.wrt = {0}});
}

TEST(TorchFakeQuantGradients, ScaleGradientOutsideTheRange) {
  // All inputs clamped: y = (q_end - zp) * scale, so dy/dscale = q_end - zp exactly (LSQ's
  // outside terms with grad_factor 1). eps 1e-3 keeps scale 0.01 positive and every input
  // clamped.
  const Tensor x = f32({5, -5, 6, -7, 8, -4.5f}, {2, 3});
  const Attrs a{{"quant_min", -8}, {"quant_max", 7}};
  expect_gradients_match("fake_quantize_learnable_per_tensor_affine", {x, scalar(0.01f), scalar(1)},
                         a, {.eps = 1e-3, .wrt = {1}});
  Attrs pc = a;
  pc.set("axis", -1);
  expect_gradients_match("fake_quantize_learnable_per_channel_affine",
                         {x, f32({0.01f, 0.02f, 0.015f}), f32({0, 2, -1})}, pc,
                         {.eps = 1e-3, .wrt = {1}});
}

TEST(TorchFakeQuantGradients, OtherQuantizers) {
  Rng rng(8);
  // PACT, 16 bits (s = alpha / 65535): inside y ~ x, above y ~ alpha, below 0.
  Tensor x = random_tensor({10}, rng, 0.05f, 0.95f);
  x.data<float>()[0] = -0.5f;
  x.data<float>()[1] = 1.3f;
  x.data<float>()[2] = 1.6f;
  expect_gradients_match("pact_quantize", {x, scalar(1)}, {{"bits", 16}});
  expect_gradients_match("dorefa_quantize", {x}, {{"bits", 16}});
  expect_gradients_match("dorefa_activation", {x}, {{"bits", 16}});
  // sign: only the region outside the clip, where both are 0.
  expect_gradients_match("sign_ste", {f32({-3, -1.5f, 1.2f, 2})}, {{"clip", 1.0}});
  // One element per channel: alpha = |w|, so y = w and the identity STE is the derivative.
  const Tensor w = f32({0.3f, -0.7f, 1.5f, -0.2f}, {1, 4});
  const double inf = std::numeric_limits<double>::infinity();
  expect_gradients_match("binary_quantize", {w}, {{"per_channel", true}, {"clip", inf}});
  expect_gradients_match("ternary_quantize", {w}, {{"per_channel", true}});
}

// ---- fast kernels ---------------------------------------------------------------------------

// Inputs with exact ties (multiples of half a step for scale 0.25), values beyond the range and
// random ones.
Tensor mixed_inputs(const Shape& s, Rng& rng) {
  Tensor x = random_tensor(s, rng, -20, 20);
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i)
    if (i % 3 == 0) p[i] = std::nearbyint(p[i] * 8) / 8;  // on the grid or on a tie
  return x;
}

struct Layout {
  Shape shape;
  int axis;
};

TEST(TorchFakeQuantFast, BitIdenticalToReference) {
  Rng rng(11);
  const std::vector<Layout> layouts = {
      {{1}, 0},      {{7}, 0},        {{13}, -1},       {{16, 1}, -1},      {{17, 3}, -1},
      {{5, 127}, 1}, {{2, 3, 17}, 1}, {{33, 64}, -1},   {{64, 3, 3, 8}, 0}, {{3, 3, 8, 67}, -1},
      {{16385}, 0},  {{2, 40000}, 0}, {{300, 130}, -1}, {{1031, 64}, 0}};
  for (const Layout& l : layouts) {
    SCOPED_TRACE(l.shape.str() + " axis " + std::to_string(l.axis));
    const int64_t ch = l.shape[l.axis];
    const Tensor x = mixed_inputs(l.shape, rng), dy = random_tensor(l.shape, rng, -2, 2);
    Tensor sc = random_tensor({ch}, rng, 0.05f, 0.4f), zc(Shape{ch}, DType::kF32),
           zf = random_tensor({ch}, rng, -10, 10);
    for (int64_t c = 0; c < ch; ++c) {
      if (c % 2 == 0) sc.data<float>()[c] = 0.25f;
      zc.data<float>()[c] = static_cast<float>(c % 11 - 5);
    }
    const Attrs a{{"quant_min", -20}, {"quant_max", 20}};
    Attrs pc = a;
    pc.set("axis", l.axis);
    Attrs ag = a;
    ag.set("grad_factor", 0.3);
    Attrs pcg = pc;
    pcg.set("grad_factor", 0.3);
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      // Every listed build this CPU has (avx512, avx2, portable).
      auto check = [](const std::string& op, const std::vector<Tensor>& in, const Attrs& at) {
        int builds = 0;
        for (const FastKernel& fk : find_op(op).fast) builds += cpu_has(fk.isa);
        EXPECT_EQ(testing::expect_fast_matches_reference(op, in, at, 0, 0), builds) << op;
        EXPECT_GE(builds, 1) << op;
      };
      check("fake_quantize_per_tensor_affine", {x, scalar(0.25f), scalar(3)}, a);
      check("fake_quantize_per_tensor_affine_backward", {dy, x, scalar(0.25f), scalar(3)}, a);
      check("fake_quantize_per_channel_affine", {x, sc, zc}, pc);
      check("fake_quantize_per_channel_affine_backward", {dy, x, sc, zc}, pc);
      check("fake_quantize_learnable_per_tensor_affine", {x, scalar(0.3f), scalar(2.5f)}, ag);
      check("fake_quantize_learnable_per_tensor_affine_backward",
            {dy, x, scalar(0.25f), scalar(-2.5f)}, ag);
      check("fake_quantize_learnable_per_channel_affine", {x, sc, zf}, pcg);
      check("fake_quantize_learnable_per_channel_affine_backward", {dy, x, sc, zf}, pcg);
      check("pact_quantize", {x, scalar(7.5f)}, {{"bits", 4}});
      check("pact_quantize_backward", {dy, x, scalar(7.5f)}, {{"bits", 4}});
    }
    set_num_threads(1);
  }
}

TEST(TorchFakeQuantFast, SameResultAtAnyThreadCount) {
  Rng rng(12);
  const Tensor x = mixed_inputs({1 << 18}, rng), dy = random_tensor({1 << 18}, rng);
  const Attrs a{{"quant_min", -128}, {"quant_max", 127}, {"grad_factor", 0.01}};
  const std::vector<Tensor> in = {dy, x, scalar(0.1f), scalar(-3)};
  const OpDef& op = find_op("fake_quantize_learnable_per_tensor_affine_backward");
  set_num_threads(1);
  auto one = run_op(op, in, a, KernelChoice::kFastest);
  set_num_threads(2);
  auto two = run_op(op, in, a, KernelChoice::kFastest);
  set_num_threads(1);
  auto ref = run_op(op, in, a, KernelChoice::kReference);
  for (size_t i = 0; i < one.size(); ++i) {
    EXPECT_TRUE(tensors_equal(one[i], two[i])) << i;
    EXPECT_TRUE(tensors_equal(one[i], ref[i])) << i;
  }
}

// ---- errors ---------------------------------------------------------------------------------

TEST(TorchFakeQuantErrors, ValuesShapesDtypesAttributes) {
  const Tensor x = f32({0.5f, 1.0f});
  const Tensor s = scalar(0.1f), zp = scalar(128);
  // zero point outside the range / not an integer; scale <= 0 (eager checks).
  expect_throws_with<ValueError>(
      [&] { ops::fake_quantize_per_tensor_affine(x, s, scalar(300), 0, 255); }, "zero_point");
  expect_throws_with<ValueError>(
      [&] { ops::fake_quantize_per_tensor_affine(x, s, scalar(1.5f), 0, 255); }, "integer");
  expect_throws_with<ValueError>(
      [&] { ops::fake_quantize_per_tensor_affine(x, scalar(0), zp, 0, 255); }, "'scale'");
  expect_throws_with<ValueError>(
      [&] {
        ops::fake_quantize_per_channel_affine(x, f32({0.1f, -1}), f32({0, 0}), 0, 0, 255);
      },
      "'scale'");
  expect_throws_with<ValueError>(
      [&] { ops::fake_quantize_learnable_per_tensor_affine(x, scalar(-1), zp, 0, 255); },
      "'scale'");
  expect_throws_with<ValueError>([&] { ops::pact_quantize(x, scalar(0), 4); }, "'alpha'");
  // Attributes.
  expect_throws_with<ValueError>(
      [&] { ops::fake_quantize_per_tensor_affine(x, s, scalar(0), 5, 4); }, "quant_min");
  expect_throws_with<ValueError>(
      [&] { ops::fake_quantize_per_tensor_affine(x, s, scalar(0), 0, int64_t{1} << 24); }, "2^23");
  expect_throws_with<ValueError>([&] { ops::pact_quantize(x, scalar(1), 0); }, "'bits'");
  expect_throws_with<ValueError>([&] { ops::pact_quantize(x, scalar(1), 17); }, "[1, 16]");
  expect_throws_with<ValueError>([&] { ops::dorefa_activation(x, 17); }, "'bits'");
  expect_throws_with<ValueError>([&] { ops::dorefa_quantize(x, 0); }, "'bits'");
  expect_throws_with<ValueError>([&] { ops::sign_ste(x, -1); }, "'clip'");
  expect_throws_with<ValueError>([&] { ops::lsq_quantize(x, s, 1); }, "bits");
  // Shapes.
  expect_throws_with<ShapeError>(
      [&] {
        ops::fake_quantize_per_tensor_affine(x, f32({0.1f, 0.1f}), zp, 0, 255);
      },
      "expected a scalar");
  const Tensor m = Tensor::zeros({2, 4});
  expect_throws_with<ShapeError>(
      [&] {
        ops::fake_quantize_per_channel_affine(m, f32({1, 1, 1}), f32({0, 0, 0}), 1, 0, 255);
      },
      "expected shape [4]");
  expect_throws_with<ShapeError>(
      [&] {
        ops::fake_quantize_per_channel_affine(m, f32({1, 1}), f32({0, 0, 0, 0}), 0, 0, 255);
      },
      "'zero_point'");
  expect_throws_with<ShapeError>(
      [&] { ops::fake_quantize_per_channel_affine(scalar(1), scalar(1), scalar(0), 0, 0, 255); },
      "rank >= 1");
  expect_throws_with<ShapeError>(
      [&] {
        ops::fake_quantize_per_tensor_affine_backward(f32({1, 2, 3}), x, s, zp, 0, 255);
      },
      "'dy'");
  expect_throws_with<ShapeError>([&] { ops::binary_quantize(scalar(1)); }, "per_channel");
  expect_throws_with<ShapeError>([&] { ops::pact_quantize(x, f32({1}), 4); }, "'alpha'");
  // Axis.
  expect_throws_with<ValueError>(
      [&] {
        ops::fake_quantize_per_channel_affine(m, f32({1, 1}), f32({0, 0}), 2, 0, 255);
      },
      "axis");
  expect_throws_with<ValueError>(
      [&] {
        ops::fake_quantize_per_channel_affine(m, f32({1, 1}), f32({0, 0}), -3, 0, 255);
      },
      "axis");
  // Dtypes.
  const Tensor xi = Tensor::zeros({2}, DType::kS32);
  expect_throws_with<DTypeError>([&] { ops::fake_quantize_per_tensor_affine(xi, s, zp, 0, 255); },
                                 "'x'");
  expect_throws_with<DTypeError>(
      [&] { ops::fake_quantize_per_tensor_affine(x, s, Tensor::full({}, 1, DType::kS64), 0, 255); },
      "'zero_point'");
  expect_throws_with<DTypeError>([&] { ops::ternary_quantize(xi); }, "'w'");
}

TEST(TorchFakeQuantErrors, CaughtWhenTheGraphIsBuilt) {
  Graph g;
  Value x = g.placeholder("x", DType::kF32, {kUnknown, 4});
  Value s3 = g.constant(f32({1, 1, 1}));
  expect_throws_with<ShapeError>(
      [&] { ops::fake_quantize_per_channel_affine(x, s3, s3, -1, -8, 7); }, "expected shape [4]");
  // Values are not checked when building (they are only known at run time): a zero point of
  // 300 builds and runs the formulas.
  Value y = ops::fake_quantize_per_tensor_affine(x, g.scalar(1), g.scalar(300), 0, 255);
  Executor ex(g, {y});
  EXPECT_TRUE(matches(ex.run({{x, f32({0, 1, 2, 3}, {1, 4})}})[0],
                      f32({-45, -45, -45, -45}, {1, 4})));  // (clamp(300 + q) - 300) * 1
}

}  // namespace
}  // namespace lowbit
