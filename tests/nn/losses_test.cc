// Keras 3 losses: the golden vectors dev_loss_masked_sparse_categorical_crossentropy and
// dev_loss_masked_cce_bce_mse (layer-semantics.md 4.1, 7.6), Keras docstring examples
// (K3:losses/losses.py), and per-sample references recomputed here in double from the Keras
// formulas.
#include "lowbit/nn/losses.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "lowbit/ops.h"
#include "testing/op_testing.h"

namespace lowbit::nn {
namespace {

using testing::expect_throws_with;
using testing::tensors_near;
using Vec = std::vector<double>;

// The golden files' tolerance (schema section 0).
constexpr double kGoldenAtol = 2e-5;
constexpr double kGoldenRtol = 1e-4;
// f32 graph vs double reference on values of order 1-20: a few ulps of the largest term.
constexpr double kAtol = 1e-5;
constexpr double kRtol = 1e-5;
// Keras docstrings print 3-4 significant digits.
constexpr double kDocAtol = 1e-3;

Tensor json_tensor(const Json& j) {
  Shape s(j["shape"].get<std::vector<int64_t>>());
  const std::string dt = j["dtype"];
  const auto& d = j["data"];
  if (dt == "float32") {
    std::vector<float> v;
    for (const auto& x : d) v.push_back(static_cast<float>(x.get<double>()));
    return Tensor::from_vector<float>(v, s);
  }
  if (dt == "int32") return Tensor::from_vector<int32_t>(d.get<std::vector<int32_t>>(), s);
  if (dt == "bool") {
    std::vector<bool> v;
    for (const auto& x : d) v.push_back(x.get<int>() != 0);
    return Tensor::from_vector<bool>(v, s);
  }
  ADD_FAILURE() << "unexpected dtype " << dt;
  return Tensor();
}

Json load_case(const std::string& name) {
  std::ifstream f(testing::shared_dir() + "/testdata/keras/" + name + ".json");
  EXPECT_TRUE(f.good()) << name;
  return Json::parse(f);
}

Tensor f32(const Vec& v, const Shape& s) {
  return Tensor::from_vector<float>(std::vector<float>(v.begin(), v.end()), s);
}
Tensor s64(const std::vector<int64_t>& v, const Shape& s) {
  return Tensor::from_vector<int64_t>(v, s);
}

void expect_vec_near(const Tensor& got, const Vec& want, double atol, double rtol,
                     const std::string& what) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size())) << what;
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(got.get_as_double(static_cast<int64_t>(i)), want[i],
                atol + rtol * std::abs(want[i]))
        << what << " element " << i;
}

double scalar(const Tensor& t) {
  EXPECT_EQ(t.numel(), 1);
  return t.get_as_double(0);
}

// Loss and d loss / d y_pred from one graph (the autodiff of the whole Keras reduction).
std::pair<Tensor, Tensor> loss_and_grad(const Loss& loss, const Tensor& yt, const Tensor& yp,
                                        const Tensor& sw = Tensor(),
                                        const Tensor& mask = Tensor()) {
  Graph g;
  Value t = g.placeholder("y_true", yt.dtype(), yt.shape());
  Value p = g.placeholder("y_pred", yp.dtype(), yp.shape());
  std::vector<std::pair<Value, Tensor>> feeds = {{t, yt}, {p, yp}};
  Value w, m;
  if (sw.defined()) {
    w = g.placeholder("sample_weight", sw.dtype(), sw.shape());
    feeds.emplace_back(w, sw);
  }
  if (mask.defined()) {
    m = g.placeholder("mask", mask.dtype(), mask.shape());
    feeds.emplace_back(m, mask);
  }
  Value l = loss(t, p, w, m);
  Value d = gradients(l, {p})[0];
  Executor ex(g, {l, d});
  auto r = ex.run(feeds);
  return {r[0], r[1]};
}

// Central differences of loss.evaluate w.r.t. y_pred, compared with the autodiff gradient.
// f32 objective of order 1 with eps 1e-3: roundoff ~1e-7/1e-3 = 1e-4, truncation ~1e-6.
void expect_gradient_matches_fd(const Loss& loss, const Tensor& yt, const Tensor& yp,
                                const Tensor& sw = Tensor(), const Tensor& mask = Tensor()) {
  const double eps = 1e-3;
  Tensor grad = loss_and_grad(loss, yt, yp, sw, mask).second;
  for (int64_t i = 0; i < yp.numel(); ++i) {
    Tensor a = yp.clone(), b = yp.clone();
    a.set_from_double(i, yp.get_as_double(i) + eps);
    b.set_from_double(i, yp.get_as_double(i) - eps);
    const double fd =
        (scalar(loss.evaluate(yt, a, sw, mask)) - scalar(loss.evaluate(yt, b, sw, mask))) /
        (2 * eps);
    EXPECT_NEAR(grad.get_as_double(i), fd, 5e-4 + 1e-2 * std::abs(fd))
        << loss.class_name() << " d/dy_pred element " << i;
  }
}

// ---- references in double (Keras formulas, layer-semantics.md 7.6) ----

constexpr double kEps = 1e-7;
// clip to [eps, 1 - eps] with the bounds rounded to f32, as the graph's clip attribute is.
double clip_p(double p) {
  const double lo = static_cast<float>(kEps), hi = static_cast<float>(1 - kEps);
  return std::min(std::max(p, lo), hi);
}
double logsumexp(const Vec& z) {
  double m = -INFINITY;
  for (double x : z) m = std::max(m, x);
  double s = 0;
  for (double x : z) s += std::exp(x - m);
  return m + std::log(s);
}
Vec smooth_categorical(Vec t, double ls) {
  for (double& x : t) x = x * (1 - ls) + ls / static_cast<double>(t.size());
  return t;
}
double ref_cce_logits(const Vec& t, const Vec& z) {
  const double lse = logsumexp(z);
  double l = 0;
  for (size_t j = 0; j < z.size(); ++j) l -= t[j] * (z[j] - lse);
  return l;
}
double ref_cce_probs(const Vec& t, const Vec& p) {
  double s = 0;
  for (double x : p) s += x;
  double l = 0;
  for (size_t j = 0; j < p.size(); ++j) l -= t[j] * std::log(clip_p(p[j] / s));
  return l;
}
double ref_scce_probs(int64_t y, const Vec& p) {
  Vec q;
  for (double x : p) q.push_back(std::log(clip_p(x)));
  return logsumexp(q) - q[y];
}
double ref_bce_probs(const Vec& t, const Vec& p) {
  double l = 0;
  for (size_t j = 0; j < p.size(); ++j) {
    const double q = clip_p(p[j]);
    l -= t[j] * std::log(q) + (1 - t[j]) * std::log(1 - q);
  }
  return l / static_cast<double>(p.size());
}
double ref_bce_logits(const Vec& t, const Vec& x) {
  double l = 0;
  for (size_t j = 0; j < x.size(); ++j)
    l += std::max(x[j], 0.0) - x[j] * t[j] + std::log1p(std::exp(-std::abs(x[j])));
  return l / static_cast<double>(x.size());
}
Vec as_vec(const Tensor& t) {
  Vec v;
  for (int64_t i = 0; i < t.numel(); ++i) v.push_back(t.get_as_double(i));
  return v;
}
Vec row(const Vec& v, size_t r, size_t c) {
  return Vec(v.begin() + r * c, v.begin() + (r + 1) * c);
}

// ---- golden vectors ----

TEST(LossesGolden, MaskedSparseCategoricalCrossentropyAllReductions) {
  const Json j = load_case("dev_loss_masked_sparse_categorical_crossentropy");
  const Json& in = j["inputs"];
  const Json& out = j["outputs"];
  const Tensor y = json_tensor(in["y_true"]);
  const Tensor logits = json_tensor(in["y_pred_logits"]);
  const Tensor probs = json_tensor(in["y_pred_probs"]);
  const Tensor mask = json_tensor(in["y_pred_mask"]);
  const Tensor sw = json_tensor(in["sample_weight"]);
  auto near = [&](const Tensor& got, const char* key) {
    EXPECT_TRUE(tensors_near(got.reshape(json_tensor(out[key]).shape()), json_tensor(out[key]),
                             kGoldenAtol, kGoldenRtol))
        << key;
  };
  auto scce = [](std::string reduction, bool logits = true) {
    return SparseCategoricalCrossentropy(
        {.from_logits = logits, .reduction = std::move(reduction)});
  };
  near(scce("none")->evaluate(y, logits), "per_element_loss_from_logits");
  near(scce("none", false)->evaluate(y, probs), "per_element_loss_from_probs");
  near(scce("sum_over_batch_size")->evaluate(y, logits, sw, mask),
       "keras3_sum_over_batch_size_masked_weighted");
  near(scce("sum_over_batch_size")->evaluate(y, logits, sw),
       "keras3_sum_over_batch_size_weighted_no_mask");
  near(scce("sum_over_batch_size")->evaluate(y, logits, Tensor(), mask),
       "keras3_sum_over_batch_size_masked_no_weights");
  near(scce("sum")->evaluate(y, logits, sw, mask), "keras3_sum_masked_weighted");
  near(scce("mean_with_sample_weight")->evaluate(y, logits, sw, mask),
       "keras3_mean_with_sample_weight_masked");
  // "mean" is Keras' alias of sum_over_batch_size.
  near(scce("mean")->evaluate(y, logits, sw, mask), "keras3_sum_over_batch_size_masked_weighted");
  // We implement Keras 3: the pre-2.10 value (divided by all B*T elements) must not come out.
  EXPECT_GT(std::abs(scalar(scce("sum_over_batch_size")->evaluate(y, logits, sw, mask)) -
                     out["tf_keras_before_2_10_masked_weighted"]["data"][0].get<double>()),
            0.1);

  // d L / d logits = (softmax - onehot) * w * m / count(m).
  auto [l, d] = loss_and_grad(*scce("sum_over_batch_size"), y, logits, sw, mask);
  near(l, "keras3_sum_over_batch_size_masked_weighted");
  EXPECT_TRUE(tensors_near(d, json_tensor(j["grad"]["d_inputs"]["y_pred_logits"]), kGoldenAtol,
                           kGoldenRtol));
}

TEST(LossesGolden, CategoricalBinaryCrossentropyAndMse) {
  const Json j = load_case("dev_loss_masked_cce_bce_mse");
  const Json& in = j["inputs"];
  const Json& out = j["outputs"];
  auto near = [&](const Tensor& got, const char* key) {
    const Tensor want = json_tensor(out[key]);
    EXPECT_TRUE(tensors_near(got.reshape(want.shape()), want, kGoldenAtol, kGoldenRtol)) << key;
  };
  auto none = CrossentropyOptions{.reduction = "none"};
  // Integer one-hot targets are cast to f32, as Keras does.
  near(CategoricalCrossentropy(none)->evaluate(json_tensor(in["cce_y_true_onehot"]),
                                               json_tensor(in["cce_y_pred"])),
       "cce_per_sample_onehot");
  near(CategoricalCrossentropy()->evaluate(json_tensor(in["cce_y_true_onehot"]),
                                           json_tensor(in["cce_y_pred"])),
       "cce_reduced_onehot");
  near(CategoricalCrossentropy(none)->evaluate(json_tensor(in["cce_y_true_soft"]),
                                               json_tensor(in["cce_y_pred"])),
       "cce_per_sample_soft_targets");
  near(BinaryCrossentropy(none)->evaluate(json_tensor(in["bce_y_true"]),
                                          json_tensor(in["bce_y_pred"])),
       "bce_per_sample_from_probs");
  near(BinaryCrossentropy()->evaluate(json_tensor(in["bce_y_true"]), json_tensor(in["bce_y_pred"])),
       "bce_reduced_from_probs");
  near(BinaryCrossentropy({.from_logits = true, .reduction = "none"})
           ->evaluate(json_tensor(in["bce_y_true"]), json_tensor(in["bce_logits"])),
       "bce_per_sample_from_logits");

  const Tensor yt = json_tensor(in["mse_y_true"]), yp = json_tensor(in["mse_y_pred"]);
  near(MeanSquaredError("none")->evaluate(yt, yp), "mse_per_element_mean_over_last_axis");
  near(MeanSquaredError()->evaluate(yt, yp), "mse_reduced");
  near(MeanSquaredError()->evaluate(yt, yp, json_tensor(in["mse_sample_weight"]),
                                    json_tensor(in["mse_mask"])),
       "mse_reduced_masked_weighted_keras3");
  auto [l, d] = loss_and_grad(*MeanSquaredError(), yt, yp);
  near(l, "mse_reduced");
  EXPECT_TRUE(
      tensors_near(d, json_tensor(j["grad"]["d_inputs"]["mse_y_pred"]), kGoldenAtol, kGoldenRtol));
}

// ---- Keras docstring examples (K3:losses/losses.py) ----

TEST(Losses, KerasDocstringExamples) {
  const Tensor onehot = f32({0, 1, 0, 0, 0, 1}, {2, 3});
  const Tensor labels = s64({1, 2}, {2});
  const Tensor p = f32({0.05, 0.95, 0, 0.1, 0.8, 0.1}, {2, 3});
  const Tensor w = f32({0.3, 0.7}, {2});
  for (bool sparse : {false, true}) {
    SCOPED_TRACE(sparse ? "sparse" : "categorical");
    auto make = [&](std::string r) {
      CrossentropyOptions o{.reduction = std::move(r)};
      return sparse ? SparseCategoricalCrossentropy(o) : CategoricalCrossentropy(o);
    };
    const Tensor& t = sparse ? labels : onehot;
    EXPECT_NEAR(scalar(make("sum_over_batch_size")->evaluate(t, p)), 1.177, kDocAtol);
    EXPECT_NEAR(scalar(make("sum_over_batch_size")->evaluate(t, p, w)), 0.814, kDocAtol);
    EXPECT_NEAR(scalar(make("sum")->evaluate(t, p)), 2.354, kDocAtol);
    expect_vec_near(make("none")->evaluate(t, p), {0.0513, 2.303}, kDocAtol, 0, "none");
  }
  const Tensor bt = f32({0, 1, 0, 0}, {2, 2}), bp = f32({0.6, 0.4, 0.4, 0.6}, {2, 2});
  expect_vec_near(BinaryCrossentropy({.reduction = "none"})->evaluate(bt, bp), {0.916, 0.714},
                  kDocAtol, 0, "bce");
  EXPECT_NEAR(scalar(Huber()->evaluate(bt, bp)), 0.155, kDocAtol);
}

// ---- per-sample values against double references ----

TEST(Losses, CrossentropyFromLogitsAndProbabilitiesMatchReferences) {
  const size_t b = 4, c = 5;
  Rng rng(7);
  const Tensor z = testing::random_tensor({4, 5}, rng, -3, 3);
  const Tensor probs = ops::softmax(z);
  const std::vector<int64_t> y = {0, 3, 4, 1};
  Vec onehot(b * c, 0.0);
  for (size_t r = 0; r < b; ++r) onehot[r * c + y[r]] = 1;
  const Vec zv = as_vec(z), pv = as_vec(probs);
  const Tensor yl = s64(y, {4}), yoh = f32(onehot, {4, 5});
  for (double ls : {0.0, 0.1}) {
    SCOPED_TRACE(ls);
    Vec cce_l, cce_p, scce_l, scce_p;
    for (size_t r = 0; r < b; ++r) {
      const Vec t = smooth_categorical(row(onehot, r, c), ls);
      cce_l.push_back(ref_cce_logits(t, row(zv, r, c)));
      cce_p.push_back(ref_cce_probs(t, row(pv, r, c)));
      scce_l.push_back(ref_cce_logits(row(onehot, r, c), row(zv, r, c)));
      scce_p.push_back(ref_scce_probs(y[r], row(pv, r, c)));
    }
    auto o = [&](bool logits) {
      return CrossentropyOptions{.from_logits = logits, .label_smoothing = ls, .reduction = "none"};
    };
    expect_vec_near(CategoricalCrossentropy(o(true))->evaluate(yoh, z), cce_l, kAtol, kRtol,
                    "cce logits");
    expect_vec_near(CategoricalCrossentropy(o(false))->evaluate(yoh, probs), cce_p, kAtol, kRtol,
                    "cce probs");
    // The probability path on softmax(z) equals the logits path when nothing is clipped.
    expect_vec_near(CategoricalCrossentropy(o(false))->evaluate(yoh, probs), cce_l, 1e-5, 1e-5,
                    "cce probs vs logits");
    if (ls == 0) {
      expect_vec_near(SparseCategoricalCrossentropy(o(true))->evaluate(yl, z), scce_l, kAtol, kRtol,
                      "scce logits");
      expect_vec_near(SparseCategoricalCrossentropy(o(false))->evaluate(yl, probs), scce_p, kAtol,
                      kRtol, "scce probs");
    }
  }
}

TEST(Losses, CategoricalCrossentropyRenormalisesProbabilities) {
  // Rows that do not sum to 1 are divided by their sum first (Keras), here 2x a distribution.
  const Tensor t = f32({0, 1, 0}, {1, 3});
  const Tensor p = f32({0.4, 1.2, 0.4}, {1, 3});
  EXPECT_NEAR(scalar(CategoricalCrossentropy()->evaluate(t, p)), -std::log(0.6), 1e-6);
}

TEST(Losses, BinaryCrossentropyBothWaysWithSmoothing) {
  Rng rng(3);
  const Tensor x = testing::random_tensor({3, 4}, rng, -4, 4);
  const Tensor p = ops::sigmoid(x);
  const Vec tv = {1, 0, 0, 1, 0, 1, 1, 0, 0.25, 0.5, 1, 0};  // soft targets allowed
  const Tensor t = f32(tv, {3, 4});
  const Vec xv = as_vec(x), pv = as_vec(p);
  for (double ls : {0.0, 0.2}) {
    SCOPED_TRACE(ls);
    Vec want_l, want_p;
    for (size_t r = 0; r < 3; ++r) {
      Vec tr = row(tv, r, 4);
      for (double& v : tr) v = v * (1 - ls) + 0.5 * ls;
      want_l.push_back(ref_bce_logits(tr, row(xv, r, 4)));
      want_p.push_back(ref_bce_probs(tr, row(pv, r, 4)));
    }
    expect_vec_near(
        BinaryCrossentropy({.from_logits = true, .label_smoothing = ls, .reduction = "none"})
            ->evaluate(t, x),
        want_l, kAtol, kRtol, "bce logits");
    expect_vec_near(
        BinaryCrossentropy({.label_smoothing = ls, .reduction = "none"})->evaluate(t, p), want_p,
        kAtol, kRtol, "bce probs");
    expect_vec_near(
        BinaryCrossentropy({.label_smoothing = ls, .reduction = "none"})->evaluate(t, p), want_l,
        1e-5, 1e-4, "bce probs vs logits");
  }
}

TEST(Losses, RegressionLossesMatchReferences) {
  const Vec tv = {0.5, -1, 2, 0, 3, -2};
  const Vec pv = {0.25, 1, 2.5, -0.5, 0, -2};
  const Tensor t = f32(tv, {2, 3}), p = f32(pv, {2, 3});
  Vec mse(2), mae(2), hub(2);
  for (size_t r = 0; r < 2; ++r)
    for (size_t j = 0; j < 3; ++j) {
      const double e = pv[r * 3 + j] - tv[r * 3 + j];
      mse[r] += e * e / 3;
      mae[r] += std::abs(e) / 3;
      const double delta = 1.5;
      hub[r] +=
          (std::abs(e) <= delta ? 0.5 * e * e : delta * std::abs(e) - 0.5 * delta * delta) / 3;
    }
  expect_vec_near(MeanSquaredError("none")->evaluate(t, p), mse, kAtol, kRtol, "mse");
  expect_vec_near(MeanAbsoluteError("none")->evaluate(t, p), mae, kAtol, kRtol, "mae");
  expect_vec_near(Huber(1.5, "none")->evaluate(t, p), hub, kAtol, kRtol, "huber");
  // [B] targets against a [B, 1] output are expanded to [B, 1] (Keras squeeze_or_expand).
  const Tensor col = f32({1, 2, 3}, {3, 1});
  expect_vec_near(MeanSquaredError("none")->evaluate(f32({0, 2, 5}, {3}), col), {1, 0, 4}, kAtol,
                  kRtol, "mse [B] vs [B,1]");
  // [B, 1] targets against a [B] output: the output is expanded, per-sample [B].
  expect_vec_near(MeanAbsoluteError("none")->evaluate(f32({0, 2, 5}, {3, 1}), f32({1, 2, 3}, {3})),
                  {1, 0, 2}, kAtol, kRtol, "mae [B,1] vs [B]");
}

// ---- reductions, weights, masks ----

TEST(Losses, ReductionsWithWeightsAndMasks) {
  // Per-sample MAE on [2, 3, 1] -> l [2, 3] = |t - p|.
  const Vec lv = {1, 2, 3, 4, 5, 6};
  const Tensor p = f32(lv, {2, 3, 1}), t = Tensor::zeros({2, 3, 1});
  const Tensor w = f32({2, 0.5}, {2});  // per sample, broadcast over the 3 steps
  const Tensor m = Tensor::from_vector<bool>({true, false, true, true, true, false}, {2, 3});
  auto eval = [&](const std::string& r, const Tensor& sw, const Tensor& mk) {
    return scalar(MeanAbsoluteError(r)->evaluate(t, p, sw, mk));
  };
  // l*w = {2,4,6,2,2.5,3}; m keeps indices 0,2,3,4.
  EXPECT_NEAR(eval("sum_over_batch_size", Tensor(), Tensor()), 21.0 / 6, 1e-6);
  EXPECT_NEAR(eval("sum_over_batch_size", w, Tensor()), 19.5 / 6, 1e-6);
  EXPECT_NEAR(eval("sum_over_batch_size", Tensor(), m), (1 + 3 + 4 + 5) / 4.0, 1e-6);
  EXPECT_NEAR(eval("sum_over_batch_size", w, m), (2 + 6 + 2 + 2.5) / 4.0, 1e-6);
  EXPECT_NEAR(eval("sum", w, m), 12.5, 1e-6);
  EXPECT_NEAR(eval("sum", w, Tensor()), 19.5, 1e-6);
  EXPECT_NEAR(eval("mean_with_sample_weight", w, m), 12.5 / (2 + 2 + 0.5 + 0.5), 1e-6);
  EXPECT_NEAR(eval("mean_with_sample_weight", w, Tensor()), 19.5 / (3 * 2 + 3 * 0.5), 1e-6);
  EXPECT_NEAR(eval("mean_with_sample_weight", Tensor(), Tensor()), 21.0 / 6, 1e-6);
  expect_vec_near(MeanAbsoluteError("none")->evaluate(t, p, w, m), {2, 0, 6, 2, 2.5, 0}, 1e-6, 0,
                  "none");
  // f32 0/1 masks and [B, 1] weights behave as bool masks and [B] weights.
  EXPECT_NEAR(eval("sum_over_batch_size", f32({2, 0.5}, {2, 1}), m.to(DType::kF32)),
              (2 + 6 + 2 + 2.5) / 4.0, 1e-6);
  // Per-sample weights of l's full shape.
  EXPECT_NEAR(eval("sum", f32({1, 0, 0, 0, 0, 2}, {2, 3}), Tensor()), 13, 1e-6);
}

TEST(Losses, EmptyMasksAndZeroWeightsGiveZeroNotNan) {
  const Tensor t = f32({0, 1, 2, 3}, {2, 2}), p = f32({1, 1, 1, 1}, {2, 2});
  const Tensor none = Tensor::from_vector<bool>({false, false}, {2});
  const Tensor zero_w = f32({0, 0}, {2});
  for (const char* r : {"sum_over_batch_size", "mean_with_sample_weight", "sum"}) {
    SCOPED_TRACE(r);
    auto [l, d] = loss_and_grad(*MeanSquaredError(r), t, p, Tensor(), none);
    EXPECT_EQ(scalar(l), 0.0);
    for (int64_t i = 0; i < d.numel(); ++i) EXPECT_EQ(d.get_as_double(i), 0.0);
    auto [l2, d2] = loss_and_grad(*MeanSquaredError(r), t, p, zero_w);
    EXPECT_EQ(scalar(l2), 0.0);
    for (int64_t i = 0; i < d2.numel(); ++i) EXPECT_EQ(d2.get_as_double(i), 0.0);
  }
}

TEST(Losses, UnknownBatchDimDividesByRunTimeCount) {
  Graph g;
  auto loss = SparseCategoricalCrossentropy({.from_logits = true});
  Value z = g.placeholder("z", DType::kF32, {kUnknown, 3});
  const ValueType tt = loss->target_type({DType::kF32, z.shape()});
  EXPECT_EQ(tt.dtype, DType::kS64);
  EXPECT_EQ(tt.shape, Shape({kUnknown}));
  Value y = g.placeholder("y", tt.dtype, tt.shape);
  Value w = g.placeholder("w", DType::kF32, {kUnknown});
  Value l = (*loss)(y, z, w);
  EXPECT_EQ(l.shape(), Shape({}));
  Executor ex(g, {l});
  for (int64_t b : {1, 3, 6}) {
    SCOPED_TRACE(b);
    Tensor zt = Tensor::zeros({b, 3});  // uniform: each loss is log 3
    std::vector<int64_t> ys(b, 2);
    Vec ws(b, 0.0);
    ws[0] = 3;
    Tensor r = ex.run({{z, zt}, {y, s64(ys, {b})}, {w, f32(ws, {b})}})[0];
    EXPECT_NEAR(scalar(r), 3 * std::log(3.0) / static_cast<double>(b), 1e-6);
  }
}

TEST(Losses, IgnoreClassMasksThosePositions) {
  auto loss = SparseCategoricalCrossentropy({.from_logits = true, .ignore_class = -1});
  const Tensor z = f32({2, 0, 0, 0, 2, 0, 1, 1, 5}, {3, 3});
  const Tensor y = s64({0, -1, 2}, {3});
  const Vec zv = {2, 0, 0, 0, 2, 0, 1, 1, 5};
  const double l0 = logsumexp(row(zv, 0, 3)) - 2, l2 = logsumexp(row(zv, 2, 3)) - 5;
  expect_vec_near(
      SparseCategoricalCrossentropy({.from_logits = true, .reduction = "none", .ignore_class = -1})
          ->evaluate(y, z),
      {l0, 0, l2}, kAtol, kRtol, "none");
  // The ignored position leaves the mean: divided by 2 valid elements, not 3.
  EXPECT_NEAR(scalar(loss->evaluate(y, z)), (l0 + l2) / 2, 1e-6);
  // AND-ed with a caller's mask.
  const Tensor m = Tensor::from_vector<bool>({false, true, true}, {3});
  EXPECT_NEAR(scalar(loss->evaluate(y, z, Tensor(), m)), l2, 1e-6);
  auto [l, d] = loss_and_grad(*loss, y, z);
  for (int j = 0; j < 3; ++j) EXPECT_EQ(d.get_as_double(3 + j), 0.0) << "ignored row gradient";
  EXPECT_NO_THROW(loss->check_targets(y, {kUnknown, 3}));
  EXPECT_FALSE(SparseCategoricalCrossentropy()->evaluate_loss_mask(y.to(DType::kS64), z).defined());
}

// ---- gradients ----

TEST(Losses, GradientsMatchFiniteDifferences) {
  Rng rng(11);
  const Tensor w = f32({1.5, 0.5, 2}, {3});
  const Tensor m = Tensor::from_vector<bool>({true, false, true}, {3});
  const Tensor z = testing::random_tensor({3, 4}, rng, -2, 2);
  const Tensor probs = ops::softmax(z);
  const Tensor y = s64({1, 0, 3}, {3});
  const Tensor oh = ops::one_hot(y, 4);
  SCOPED_TRACE("scce logits");
  expect_gradient_matches_fd(*SparseCategoricalCrossentropy({.from_logits = true}), y, z, w, m);
  SCOPED_TRACE("scce probs");
  expect_gradient_matches_fd(*SparseCategoricalCrossentropy(), y, probs, w, m);
  SCOPED_TRACE("cce logits smoothed");
  expect_gradient_matches_fd(
      *CategoricalCrossentropy({.from_logits = true, .label_smoothing = 0.1}), oh, z, w, m);
  SCOPED_TRACE("cce probs");
  expect_gradient_matches_fd(*CategoricalCrossentropy({.reduction = "sum"}), oh, probs, w);
  SCOPED_TRACE("bce logits");
  const Tensor bt = f32({1, 0, 1, 1, 0, 0, 1, 0, 0.5, 1, 0, 1}, {3, 4});
  expect_gradient_matches_fd(*BinaryCrossentropy({.from_logits = true}), bt, z, w, m);
  SCOPED_TRACE("bce probs");
  expect_gradient_matches_fd(*BinaryCrossentropy({.reduction = "mean_with_sample_weight"}), bt,
                             ops::sigmoid(z), w, m);
  SCOPED_TRACE("huber");
  expect_gradient_matches_fd(*Huber(0.7), bt, z, w);
  SCOPED_TRACE("mae");
  expect_gradient_matches_fd(*MeanAbsoluteError(), bt, z, Tensor(), m);
}

TEST(Losses, SparseLogitsGradientIsSoftmaxMinusOneHotOverN) {
  Rng rng(5);
  const Tensor z = testing::random_tensor({4, 3}, rng, -2, 2);
  const Tensor y = s64({2, 0, 1, 1}, {4});
  const Tensor want = (ops::softmax(z) - ops::one_hot(y, 3)) / 4.0;
  EXPECT_TRUE(tensors_near(
      loss_and_grad(*SparseCategoricalCrossentropy({.from_logits = true}), y, z).second, want, 1e-6,
      1e-5));
}

// ---- numerically extreme inputs ----

TEST(Losses, ExtremeInputsStayFinite) {
  const double cap = -std::log(static_cast<float>(kEps));  // 16.118: the clip bounds the loss
  auto finite = [](const Tensor& t) {
    for (int64_t i = 0; i < t.numel(); ++i)
      if (!std::isfinite(t.get_as_double(i))) return false;
    return true;
  };
  // Probabilities exactly 0 and 1.
  const Tensor p01 = f32({0, 1, 0, 1, 0, 0}, {2, 3});
  const Tensor wrong = s64({0, 1}, {2}), wrong_oh = ops::one_hot(wrong, 3);
  for (bool sparse : {true, false}) {
    SCOPED_TRACE(sparse ? "sparse" : "categorical");
    auto make = [&](std::string r) {
      CrossentropyOptions o{.reduction = std::move(r)};
      return sparse ? SparseCategoricalCrossentropy(o) : CategoricalCrossentropy(o);
    };
    const Tensor& t = sparse ? wrong : wrong_oh;
    Tensor v = make("none")->evaluate(t, p01);
    ASSERT_TRUE(finite(v)) << v;
    EXPECT_NEAR(v.get_as_double(0), cap, 1e-3);
    EXPECT_NEAR(v.get_as_double(1), cap, 1e-3);
    auto [s, d] = loss_and_grad(*make("sum_over_batch_size"), t, p01);
    EXPECT_TRUE(finite(s) && finite(d)) << d;
  }
  {
    const Tensor bp = f32({0, 1}, {1, 2}), bt = f32({1, 0}, {1, 2});
    Tensor v = BinaryCrossentropy()->evaluate(bt, bp);
    ASSERT_TRUE(finite(v));
    // -log(1e-7) for p = 0, t = 1; -log(1 - f32(1 - 1e-7)) = -log(1.19e-7) for p = 1, t = 0.
    EXPECT_NEAR(scalar(v),
                (cap - std::log(1 - static_cast<double>(static_cast<float>(1 - kEps)))) / 2, 1e-3);
    auto [s, d] = loss_and_grad(*BinaryCrossentropy(), bt, bp);
    EXPECT_TRUE(finite(d));
  }
  // Logits of +-100.
  const Tensor big = f32({100, -100, -100, 100}, {2, 2});
  const Tensor lab = s64({1, 1}, {2});
  Tensor v =
      SparseCategoricalCrossentropy({.from_logits = true, .reduction = "none"})->evaluate(lab, big);
  expect_vec_near(v, {200, 0}, 1e-3, 1e-6, "scce +-100");
  v = CategoricalCrossentropy({.from_logits = true, .reduction = "none"})
          ->evaluate(ops::one_hot(lab, 2), big);
  expect_vec_near(v, {200, 0}, 1e-3, 1e-6, "cce +-100");
  v = BinaryCrossentropy({.from_logits = true, .reduction = "none"})
          ->evaluate(f32({0, 1, 1, 1}, {2, 2}), big);
  expect_vec_near(v, {100, 50}, 1e-3, 1e-6, "bce +-100");  // (100 + 100)/2, (100 + 0)/2
  for (const LossPtr& l : {SparseCategoricalCrossentropy({.from_logits = true}),
                           BinaryCrossentropy({.from_logits = true})}) {
    const Tensor& t = l->class_name() == "BinaryCrossentropy" ? f32({0, 1, 1, 1}, {2, 2}) : lab;
    auto [s, d] = loss_and_grad(*l, t, big);
    EXPECT_TRUE(finite(s) && finite(d)) << l->class_name();
  }
}

// ---- target checks ----

TEST(Losses, CheckTargetsErrors) {
  auto scce = SparseCategoricalCrossentropy();
  const Shape p{kUnknown, 10};
  EXPECT_NO_THROW(scce->check_targets(s64({0, 9, 3}, {3}), p));
  EXPECT_NO_THROW(scce->check_targets(Tensor::from_vector<int32_t>({0, 9, 3}, {3, 1}), p));
  EXPECT_NO_THROW(scce->check_targets(f32({0, 9, 3}, {3}), p));
  expect_throws_with<ValueError>(
      [&] {
        scce->check_targets(s64({0, 10, 3}, {3}), p);
      },
      "label 10 at index [1]");
  expect_throws_with<ValueError>(
      [&] {
        scce->check_targets(s64({0, 10, 3}, {3}), p);
      },
      "which is out of range [0, 10) for y_pred's 10 classes");
  expect_throws_with<ValueError>(
      [&] {
        scce->check_targets(s64({0, -1}, {2}), p);
      },
      "SparseCategoricalCrossentropy: y_true holds label -1");
  expect_throws_with<ValueError>(
      [&] {
        scce->check_targets(f32({0, 2.5}, {2}), p);
      },
      "not an integer");
  expect_throws_with<ShapeError>(
      [&] {
        scce->check_targets(s64({0, 1, 2, 3}, {2, 2}), p);
      },
      "SparseCategoricalCrossentropy: y_true of shape [2,2]");
  expect_throws_with<ShapeError>(
      [&] {
        scce->check_targets(s64({0, 1, 2, 3}, {4}), Shape{2, 10});
      },
      "expected labels of shape [2]");
  expect_throws_with<DTypeError>(
      [&] { scce->check_targets(Tensor::from_vector<bool>({true}, {1}), p); }, "bool");
  // Sequence labels: index of the bad label in two dims.
  expect_throws_with<ValueError>(
      [&] {
        scce->check_targets(s64({1, 2, 3, 7}, {2, 2}), Shape{kUnknown, 2, 5});
      },
      "label 7 at index [1,1]");

  auto cce = CategoricalCrossentropy();
  EXPECT_NO_THROW(
      cce->check_targets(Tensor::from_vector<int32_t>({0, 1, 1, 0}, {2, 2}), {kUnknown, 2}));
  expect_throws_with<ShapeError>(
      [&] {
        cce->check_targets(f32({0, 1, 0}, {1, 3}), {kUnknown, 2});
      },
      "CategoricalCrossentropy: y_true of shape [1,3] does not match "
      "y_pred of shape [?,2]");
  auto bce = BinaryCrossentropy();
  EXPECT_NO_THROW(bce->check_targets(f32({0, 1, 1}, {3}), {kUnknown, 1}));
  expect_throws_with<ShapeError>(
      [&] {
        bce->check_targets(f32({0, 1, 1}, {3}), {4, 1});
      },
      "BinaryCrossentropy");
  expect_throws_with<ShapeError>(
      [&] {
        MeanSquaredError()->check_targets(f32({0, 1}, {2}), {kUnknown, 3});
      },
      "MeanSquaredError");
}

TEST(Losses, PrepareTargetsConvertsToThePlaceholderType) {
  Tensor y = SparseCategoricalCrossentropy()->prepare_targets(
      Tensor::from_vector<int32_t>({3, 1}, {2, 1}), {kUnknown, 5});
  EXPECT_EQ(y.dtype(), DType::kS64);
  EXPECT_EQ(y.shape(), Shape({2}));
  EXPECT_EQ(y.to_vector<int64_t>(), (std::vector<int64_t>{3, 1}));
  Tensor b = BinaryCrossentropy()->prepare_targets(Tensor::from_vector<int32_t>({1, 0, 1}, {3}),
                                                   {kUnknown, 1});
  EXPECT_EQ(b.dtype(), DType::kF32);
  EXPECT_EQ(b.shape(), Shape({3, 1}));
  EXPECT_EQ(CategoricalCrossentropy()->target_type({DType::kF32, {kUnknown, 4}}).shape,
            Shape({kUnknown, 4}));
  expect_throws_with<ValueError>(
      [] {
        SparseCategoricalCrossentropy()->prepare_targets(s64({5}, {1}), {kUnknown, 5});
      },
      "[0, 5)");
}

TEST(Losses, GraphTypeErrorsNameTheLoss) {
  Graph g;
  Value p = g.placeholder("p", DType::kF32, {kUnknown, 4});
  Value bad = g.placeholder("t", DType::kF32, {kUnknown, 3});
  expect_throws_with<ShapeError>([&] { CategoricalCrossentropy()->per_sample(bad, p); },
                                 "CategoricalCrossentropy: y_true of shape [?,3]");
  Value lab2 = g.placeholder("l", DType::kS64, {kUnknown, 4});
  expect_throws_with<ShapeError>([&] { SparseCategoricalCrossentropy()->per_sample(lab2, p); },
                                 "SparseCategoricalCrossentropy");
  Value w = g.placeholder("w", DType::kF32, {kUnknown, 7});
  Value lab = g.placeholder("y", DType::kS64, {kUnknown});
  expect_throws_with<ShapeError>([&] { (*SparseCategoricalCrossentropy())(lab, p, w); },
                                 "sample_weight of shape [?,7]");
}

// ---- configuration ----

TEST(Losses, ConfigRoundTripsAndNames) {
  EXPECT_THROW(MeanSquaredError("average"), ValueError);
  EXPECT_THROW(Huber(0), ValueError);
  EXPECT_THROW(CategoricalCrossentropy({.label_smoothing = 1.5}), ValueError);
  EXPECT_THROW(SparseCategoricalCrossentropy({.label_smoothing = 0.1}), ValueError);
  const std::vector<LossPtr> losses = {
      SparseCategoricalCrossentropy({.from_logits = true, .ignore_class = 255}),
      CategoricalCrossentropy({.label_smoothing = 0.1, .reduction = "sum"}),
      BinaryCrossentropy({.from_logits = true, .reduction = "none"}),
      MeanSquaredError("mean_with_sample_weight"),
      MeanAbsoluteError(),
      Huber(2.5)};
  for (const LossPtr& l : losses) {
    SCOPED_TRACE(l->class_name());
    const Json j = {{"class_name", l->class_name()}, {"config", l->get_config()}};
    LossPtr back = loss_from_config(j);
    EXPECT_EQ(back->class_name(), l->class_name());
    EXPECT_EQ(back->get_config(), l->get_config());
    EXPECT_EQ(back->reduction(), l->reduction());
  }
  const Json c = losses[1]->get_config();
  EXPECT_EQ(c["name"], "categorical_crossentropy");
  EXPECT_EQ(c["label_smoothing"], 0.1);
  EXPECT_EQ(c["from_logits"], false);
  EXPECT_EQ(c["axis"], -1);
  EXPECT_TRUE(losses[2]->get_config()["reduction"].is_null());  // Keras reduction=None
  EXPECT_EQ(losses[0]->get_config()["ignore_class"], 255);
  EXPECT_EQ(losses[5]->get_config()["delta"], 2.5);
  // A Keras-written config (with module/registered_name, name and dtype).
  LossPtr k = loss_from_config(Json::parse(R"({"module": "keras.losses",
      "class_name": "SparseCategoricalCrossentropy", "registered_name": null,
      "config": {"name": "sparse_categorical_crossentropy", "reduction": "sum_over_batch_size",
                 "from_logits": true, "ignore_class": null, "dtype": "float32"}})"));
  EXPECT_EQ(k->get_config()["from_logits"], true);
  expect_throws_with<ValueError>(
      [] {
        loss_from_config({{"class_name", "Poisson"}, {"config", Json::object()}});
      },
      "unknown loss class 'Poisson'");
  expect_throws_with<ValueError>(
      [] {
        loss_from_config({{"class_name", "MeanSquaredError"}, {"config", {{"delta", 1}}}});
      },
      "no config key 'delta'");

  EXPECT_EQ(loss_by_name("mse")->class_name(), "MeanSquaredError");
  EXPECT_EQ(loss_by_name("mae")->class_name(), "MeanAbsoluteError");
  EXPECT_EQ(loss_by_name("sparse_categorical_crossentropy")->class_name(),
            "SparseCategoricalCrossentropy");
  EXPECT_EQ(loss_by_name("binary_crossentropy")->class_name(), "BinaryCrossentropy");
  EXPECT_EQ(loss_by_name("CategoricalCrossentropy")->class_name(), "CategoricalCrossentropy");
  EXPECT_EQ(loss_by_name("huber")->name(), "huber_loss");
  expect_throws_with<ValueError>([] { loss_by_name("hinge"); }, "unknown loss 'hinge'");
}

TEST(Losses, OpsLiveInTheLossNameScope) {
  Graph g;
  Value p = g.placeholder("p", DType::kF32, {kUnknown, 3});
  Value y = g.placeholder("y", DType::kS64, {kUnknown});
  Value l = (*SparseCategoricalCrossentropy({.from_logits = true}))(y, p);
  EXPECT_EQ(l.name().rfind("sparse_categorical_crossentropy/", 0), 0u) << l.name();
}

}  // namespace
}  // namespace lowbit::nn
