// Host-side Keras metrics: the Keras docstring examples (K3:metrics/accuracy_metrics.py,
// reduction_metrics.py, confusion_metrics.py), and weighted / masked / multi-batch values
// computed by hand (layer-semantics.md 4.1).
#include "lowbit/nn/metrics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "lowbit/ops.h"
#include "testing/op_testing.h"

namespace lowbit::nn {
namespace {

using testing::expect_throws_with;
using Vec = std::vector<double>;

// Results are accumulated in double from f32 inputs: a few f32 ulps.
constexpr double kTol = 1e-6;

Tensor f32(const Vec& v, const Shape& s) {
  return Tensor::from_vector<float>(std::vector<float>(v.begin(), v.end()), s);
}
Tensor s64(const std::vector<int64_t>& v, const Shape& s) {
  return Tensor::from_vector<int64_t>(v, s);
}
Tensor mask(const std::vector<bool>& v, const Shape& s) { return Tensor::from_vector<bool>(v, s); }

TEST(Metrics, KerasDocstringExamples) {
  {
    auto m = SparseCategoricalAccuracy();
    EXPECT_EQ(m->name(), "sparse_categorical_accuracy");
    const Tensor y = f32({2, 1}, {2, 1}), p = f32({0.1, 0.6, 0.3, 0.05, 0.95, 0}, {2, 3});
    m->update(y, p);
    EXPECT_NEAR(m->result(), 0.5, kTol);
    m->reset();
    m->update(y, p, f32({0.7, 0.3}, {2}));
    EXPECT_NEAR(m->result(), 0.3, kTol);
  }
  {
    auto m = CategoricalAccuracy();
    const Tensor y = f32({0, 0, 1, 0, 1, 0}, {2, 3}),
                 p = f32({0.1, 0.9, 0.8, 0.05, 0.95, 0}, {2, 3});
    m->update(y, p);
    EXPECT_NEAR(m->result(), 0.5, kTol);
    m->reset();
    m->update(y, p, f32({0.7, 0.3}, {2}));
    EXPECT_NEAR(m->result(), 0.3, kTol);
  }
  {
    auto m = BinaryAccuracy();
    const Tensor y = f32({1, 1, 0, 0}, {4, 1}), p = f32({0.98, 1, 0, 0.6}, {4, 1});
    m->update(y, p);
    EXPECT_NEAR(m->result(), 0.75, kTol);
    m->reset();
    m->update(y, p, f32({1, 0, 0, 1}, {4}));
    EXPECT_NEAR(m->result(), 0.5, kTol);
  }
  {
    auto m = Accuracy();
    const Tensor y = f32({1, 2, 3, 4}, {4, 1}), p = f32({0, 2, 3, 4}, {4, 1});
    m->update(y, p);
    EXPECT_NEAR(m->result(), 0.75, kTol);
    m->reset();
    m->update(y, p, f32({1, 1, 0, 0}, {4}));
    EXPECT_NEAR(m->result(), 0.5, kTol);
  }
  {
    auto m = Mean("mean");
    m->update(Tensor(), f32({1, 3, 5, 7}, {4}));
    EXPECT_NEAR(m->result(), 4, kTol);
    m->reset();
    m->update(Tensor(), f32({1, 3, 5, 7}, {4}), f32({1, 1, 0, 0}, {4}));
    EXPECT_NEAR(m->result(), 2, kTol);
  }
  {
    auto m = AUC(3);
    const Tensor y = f32({0, 0, 1, 1}, {4}), p = f32({0, 0.5, 0.3, 0.9}, {4});
    m->update(y, p);
    EXPECT_NEAR(m->result(), 0.75, kTol);
    m->reset();
    m->update(y, p, f32({1, 0, 0, 1}, {4}));
    EXPECT_NEAR(m->result(), 1.0, kTol);
  }
}

TEST(Metrics, AccumulatesOverBatchesAndResets) {
  auto m = SparseCategoricalAccuracy();
  EXPECT_EQ(m->result(), 0.0);  // nothing seen yet: 0, not NaN
  // Batch 1: matches [1, 0]; batch 2: matches [1, 1, 0]; batch 3: [0].
  m->update(s64({0, 1}, {2}), f32({0.9, 0.1, 0.8, 0.2}, {2, 2}));
  m->update(s64({1, 0, 0}, {3}), f32({0.3, 0.7, 0.6, 0.4, 0.1, 0.9}, {3, 2}));
  m->update(s64({1}, {1}), f32({0.5, 0.5}, {1, 2}));  // tie: the first index wins
  EXPECT_NEAR(m->result(), 3.0 / 6, kTol);
  // Weighted batches accumulate sum(v w) / sum(w) over everything seen.
  m->reset();
  EXPECT_EQ(m->result(), 0.0);
  m->update(s64({0, 1}, {2}), f32({0.9, 0.1, 0.8, 0.2}, {2, 2}), f32({3, 1}, {2}));
  m->update(s64({1, 0, 0}, {3}), f32({0.3, 0.7, 0.6, 0.4, 0.1, 0.9}, {3, 2}),
            f32({0.5, 0.5, 2}, {3}));
  EXPECT_NEAR(m->result(), (3 + 0.5 + 0.5) / (3 + 1 + 0.5 + 0.5 + 2), kTol);
}

TEST(Metrics, MaskedSequencesWeightValidSteps) {
  // y_pred [2, 3, 2]: argmax = [[0, 1, 0], [1, 1, 0]]; labels [[0, 0, 0], [0, 1, 0]]
  // -> matches [[1, 0, 1], [0, 1, 1]].
  const Tensor y = s64({0, 0, 0, 0, 1, 0}, {2, 3});
  const Tensor p = f32({0.9, 0.1, 0.2, 0.8, 0.7, 0.3, 0.4, 0.6, 0.1, 0.9, 0.8, 0.2}, {2, 3, 2});
  const Tensor m = mask({true, true, false, true, true, true}, {2, 3});
  const Tensor w = f32({2, 1}, {2});
  auto acc = SparseCategoricalAccuracy();
  acc->update(y, p);
  EXPECT_NEAR(acc->result(), 4.0 / 6, kTol);
  acc->reset();
  acc->update(y, p, Tensor(), m);  // valid steps: matches 1, 0, 0, 1, 1
  EXPECT_NEAR(acc->result(), 3.0 / 5, kTol);
  acc->reset();
  acc->update(y, p, w, m);  // W = [[2, 2, 0], [1, 1, 1]]: (2 + 0 + 0 + 1 + 1) / 7
  EXPECT_NEAR(acc->result(), 4.0 / 7, kTol);
  // An f32 0/1 mask is the same; a second batch accumulates (one valid, matching, step).
  acc->reset();
  acc->update(y, p, w, m.to(DType::kF32));
  acc->update(s64({1, 1}, {1, 2}), f32({0, 1, 1, 0}, {1, 2, 2}), Tensor(),
              mask({true, false}, {1, 2}));
  // Batch 1 per sample: mean_t(v W) = [2/3, 2/3], mean_t(W) = [4/3, 1]; batch 2: 1/2 and 1/2.
  EXPECT_NEAR(acc->result(), (4.0 / 3 + 0.5) / (7.0 / 3 + 0.5), kTol);
}

TEST(Metrics, ScalarWeightWeighsTheBatchOnceAndUpdateValue) {
  auto m = Mean("loss");
  auto* mean = dynamic_cast<MeanMetric*>(m.get());
  ASSERT_NE(mean, nullptr);
  EXPECT_EQ(m->name(), "loss");
  mean->update_values(f32({1, 3}, {2}), Tensor::scalar(2));  // total += 2 * 2, count += 2
  mean->update_value(10, 2);
  EXPECT_NEAR(m->result(), (4.0 + 20) / 4, kTol);
  EXPECT_NEAR(mean->total(), 24, kTol);
  EXPECT_NEAR(mean->count(), 4, kTol);
  mean->update_values(Tensor::scalar(6));  // a scalar value counts once
  EXPECT_NEAR(m->result(), 30.0 / 5, kTol);
  m->reset();
  EXPECT_EQ(mean->count(), 0.0);
  mean->update_value(1.5, 0);  // only zero weights: result 0, not NaN
  EXPECT_EQ(m->result(), 0.0);
}

TEST(Metrics, RegressionMetrics) {
  const Tensor y = f32({1, 2, 3, 4}, {2, 2}), p = f32({1, 1, 1, 1}, {2, 2});
  auto mse = MeanSquaredErrorMetric(), mae = MeanAbsoluteErrorMetric();
  mse->update(y, p);
  mae->update(y, p);
  EXPECT_NEAR(mse->result(), (0.5 + 6.5) / 2, kTol);  // per sample [0.5, 6.5]
  EXPECT_NEAR(mae->result(), (0.5 + 2.5) / 2, kTol);
  mse->update(y, p, f32({0, 1}, {2}));  // adds 6.5 with weight 1
  EXPECT_NEAR(mse->result(), (0.5 + 6.5 + 6.5) / 3, kTol);
  // [B] targets against a [B, 1] output.
  auto m2 = MeanSquaredErrorMetric();
  m2->update(f32({0, 2}, {2}), f32({1, 4}, {2, 1}));
  EXPECT_NEAR(m2->result(), 2.5, kTol);
}

TEST(Metrics, LossMetricAveragesPerSampleLosses) {
  auto loss = SparseCategoricalCrossentropy({.from_logits = true, .reduction = "none"});
  const Tensor z1 = f32({1, 2, 0, 0.5, -1, 3}, {2, 3}), y1 = s64({1, 2}, {2});
  const Tensor z2 = f32({0, 0, 2}, {1, 3}), y2 = s64({0}, {1});
  const Tensor l1 = loss->evaluate(y1, z1), l2 = loss->evaluate(y2, z2);
  auto m = LossMetric(SparseCategoricalCrossentropy({.from_logits = true}), "ce");
  m->update(y1, z1);
  m->update(y2, z2);
  EXPECT_NEAR(m->result(), (l1.get_as_double(0) + l1.get_as_double(1) + l2.get_as_double(0)) / 3,
              1e-6);
  // The loss's own mask (ignore_class) leaves the mean.
  auto ig =
      LossMetric(SparseCategoricalCrossentropy({.from_logits = true, .ignore_class = -1}), "ce");
  ig->update(s64({1, -1}, {2}), z1);
  EXPECT_NEAR(ig->result(), l1.get_as_double(0), 1e-6);
  // By name: Keras' function defaults (probabilities).
  auto byname =
      metric_by_name("sparse_categorical_crossentropy", nullptr, {DType::kF32, {kUnknown, 3}});
  EXPECT_EQ(byname->name(), "sparse_categorical_crossentropy");
  byname->update(s64({0, 2}, {2}), f32({0.5, 0.25, 0.25, 0.25, 0.25, 0.5}, {2, 3}));
  EXPECT_NEAR(byname->result(), -std::log(0.5), 1e-6);
}

TEST(Metrics, AucMatchesRankStatisticAndAccumulates) {
  Rng rng(9);
  const int n = 400;
  Vec y(n), p(n);
  for (int i = 0; i < n; ++i) {
    y[i] = rng.uniform() < 0.4 ? 1 : 0;
    // Rounded to f32 first, so that the exact AUC sees the values the metric sees.
    p[i] = static_cast<float>(std::clamp(0.3 * y[i] + 0.7 * rng.uniform(), 0.0, 1.0));
  }
  // Exact ROC AUC: the fraction of (positive, negative) pairs ranked correctly (ties 1/2).
  double good = 0, pairs = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      if (y[i] == 1 && y[j] == 0) {
        pairs += 1;
        good += p[i] > p[j] ? 1 : (p[i] == p[j] ? 0.5 : 0);
      }
  auto auc = AUC(2000);
  // In two batches: the confusion counts add up.
  auto half = [&](const Vec& v, int a, int b) {
    return f32(Vec(v.begin() + a, v.begin() + b), {b - a});
  };
  auc->update(half(y, 0, 150), half(p, 0, 150));
  auc->update(half(y, 150, n), half(p, 150, n));
  EXPECT_NEAR(auc->result(), good / pairs, 2e-3);
  EXPECT_EQ(auc->name(), "auc");

  auto perfect = AUC();
  perfect->update(f32({0, 0, 1, 1}, {4, 1}), f32({0.1, 0.2, 0.8, 0.9}, {4, 1}));
  EXPECT_NEAR(perfect->result(), 1.0, kTol);
  auto inverse = AUC();
  inverse->update(f32({1, 1, 0, 0}, {4}), f32({0.1, 0.2, 0.8, 0.9}, {4}));
  EXPECT_NEAR(inverse->result(), 0.0, kTol);
  // from_logits applies a sigmoid first: same result on logits.
  auto logits = AUC(3, "auc", true);
  logits->update(f32({0, 0, 1, 1}, {4}), f32({-20, 0, -0.8473, 2.1972}, {4}));  // ~ 0, .5, .3, .9
  EXPECT_NEAR(logits->result(), 0.75, kTol);
  // A mask excludes entries like zero weights.
  auto masked = AUC(3);
  masked->update(f32({0, 0, 1, 1}, {4}), f32({0, 0.5, 0.3, 0.9}, {4}), Tensor(),
                 mask({true, false, false, true}, {4}));
  EXPECT_NEAR(masked->result(), 1.0, kTol);
}

TEST(Metrics, MetricByNameResolvesAccuracyLikeKerasCompile) {
  const ValueType probs{DType::kF32, {kUnknown, 10}};
  auto scce = SparseCategoricalCrossentropy(), cce = CategoricalCrossentropy();
  auto bce = BinaryCrossentropy();
  const Tensor p = f32({0.1, 0.7, 0.2}, {1, 3});

  auto sparse = metric_by_name("accuracy", scce.get(), {DType::kF32, {kUnknown, 3}});
  EXPECT_EQ(sparse->name(), "accuracy");
  sparse->update(s64({1}, {1}), p);  // labels: sparse accuracy
  EXPECT_NEAR(sparse->result(), 1.0, kTol);

  auto cat = metric_by_name("acc", cce.get(), {DType::kF32, {kUnknown, 3}});
  EXPECT_EQ(cat->name(), "acc");  // reported under the identifier given, as Keras
  cat->update(f32({0, 1, 0}, {1, 3}), p);
  EXPECT_NEAR(cat->result(), 1.0, kTol);
  EXPECT_THROW(cat->update(s64({1}, {1}), p), ShapeError);  // categorical needs one-hot

  auto bin = metric_by_name("accuracy", bce.get(), {DType::kF32, {kUnknown, 1}});
  bin->update(f32({1, 0}, {2}), f32({0.7, 0.6}, {2, 1}));  // thresholds at 0.5
  EXPECT_NEAR(bin->result(), 0.5, kTol);

  // Sequence labels [?, T] against [?, T, C]: sparse.
  auto seq = metric_by_name("accuracy", scce.get(), {DType::kF32, {kUnknown, 4, 3}});
  seq->update(s64({1, 1, 0, 0}, {1, 4}), f32(Vec(12, 0.0), {1, 4, 3}));
  EXPECT_NEAR(seq->result(), 0.5, kTol);
  // No loss: targets are taken to be of y_pred's shape -> categorical.
  auto none = metric_by_name("accuracy", nullptr, probs);
  EXPECT_THROW(none->update(s64({1}, {1}), f32(Vec(10, 0.1), {1, 10})), ShapeError);
  // A regression loss on a [?, 1] output picks binary accuracy (Keras looks at the shapes only).
  auto mse_bin = metric_by_name("accuracy", MeanSquaredError().get(), {DType::kF32, {kUnknown, 1}});
  mse_bin->update(f32({1}, {1, 1}), f32({0.9}, {1, 1}));
  EXPECT_NEAR(mse_bin->result(), 1.0, kTol);

  EXPECT_EQ(metric_by_name("mse", nullptr, probs)->name(), "mse");
  EXPECT_EQ(metric_by_name("mae", nullptr, probs)->name(), "mae");
  EXPECT_EQ(metric_by_name("auc", nullptr, probs)->name(), "auc");
  EXPECT_EQ(metric_by_name("sparse_categorical_accuracy", nullptr, probs)->name(),
            "sparse_categorical_accuracy");
  expect_throws_with<ValueError>([&] { metric_by_name("f1", nullptr, probs); },
                                 "unknown metric 'f1'");
}

TEST(Metrics, ErrorsNameTheMetric) {
  auto acc = SparseCategoricalAccuracy();
  expect_throws_with<ShapeError>(
      [&] {
        acc->update(s64({1, 2, 3}, {3}), f32(Vec(6, 0.0), {2, 3}));
      },
      "sparse_categorical_accuracy: y_true of shape [3]");
  expect_throws_with<ShapeError>(
      [&] {
        acc->update(s64({1, 2}, {2}), f32(Vec(6, 0.0), {2, 3}), f32({1, 1, 1}, {3}));
      },
      "sparse_categorical_accuracy: sample_weight of shape [3]");
  expect_throws_with<ShapeError>(
      [&] {
        acc->update(s64({1, 2}, {2}), f32(Vec(6, 0.0), {2, 3}), Tensor(), mask({true}, {1, 1, 1}));
      },
      "mask of shape [1,1,1]");
  expect_throws_with<ShapeError>(
      [] {
        MeanSquaredErrorMetric()->update(f32({1, 2, 3}, {1, 3}), f32({1, 2}, {1, 2}));
      },
      "mean_squared_error: y_true of shape [1,3] does not match y_pred of shape [1,2]");
  EXPECT_THROW(BinaryAccuracy(1.5), ValueError);
  EXPECT_THROW(AUC(1), ValueError);
  // A failed update leaves the state alone.
  EXPECT_EQ(acc->result(), 0.0);
}

}  // namespace
}  // namespace lowbit::nn
