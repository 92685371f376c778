// compile / fit / evaluate / predict, callbacks, saving and exact resume.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "lowbit/io/safetensors.h"
#include "lowbit/nn/layers.h"
#include "lowbit/nn/model.h"
#include "lowbit/ops.h"
#include "lowbit/threads.h"
#include "testing/op_testing.h"

namespace lowbit::nn {
namespace {

using testing::expect_throws_with;

// Two Gaussian blobs per class in 4-D, 3 classes: learnable in a few epochs.
struct Blobs {
  Tensor x, y;
  explicit Blobs(int64_t n, uint64_t seed = 3) : x({n, 4}, DType::kF32), y({n}, DType::kS64) {
    Rng rng(seed);
    for (int64_t i = 0; i < n; ++i) {
      int64_t c = i % 3;
      y.data<int64_t>()[i] = c;
      for (int d = 0; d < 4; ++d)
        x.data<float>()[i * 4 + d] = (d == c ? 2.0f : 0.0f) + 0.5f * rng.normal();
    }
  }
};

ModelPtr small_model(uint64_t seed = 1, bool with_dropout = true) {
  reset_layer_names();
  set_random_seed(seed);
  std::vector<LayerPtr> layers{InputSpec({4}), Dense(16), BatchNormalization(), ReLU()};
  if (with_dropout) layers.push_back(Dropout(0.2));
  layers.push_back(Dense(3));
  return Sequential::create(layers, "small");
}

void compile_adam(const ModelPtr& m, double lr = 0.01) {
  m->compile({.optimizer = Adam({.learning_rate = lr}),
              .loss = SparseCategoricalCrossentropy({.from_logits = true}),
              .metrics = {"accuracy"}});
}

std::string tmp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("lowbit_test_" + name)).string();
}

TEST(Training, FitLearnsAndReportsHistory) {
  set_num_threads(1);
  Blobs d(300);
  auto m = small_model();
  compile_adam(m);
  std::ostringstream out;
  History h =
      m->fit(d.x, d.y, {.epochs = 8, .batch_size = 32, .validation_split = 0.2, .out = &out});
  ASSERT_EQ(h.epochs.size(), 8u);
  for (const char* k : {"loss", "accuracy", "val_loss", "val_accuracy"})
    EXPECT_EQ(h.history[k].size(), 8u) << k;
  EXPECT_LT(h.history["loss"].back(), h.history["loss"].front() * 0.6);
  EXPECT_GT(h.history["val_accuracy"].back(), 0.85);
  // The progress output is plain lines here (not a terminal), with the Keras pieces.
  EXPECT_NE(out.str().find("Epoch 8/8"), std::string::npos);
  EXPECT_NE(out.str().find("8/8 [=============================="), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("val_accuracy:"), std::string::npos);
  Logs e = m->evaluate(d.x, d.y);
  EXPECT_GT(e["accuracy"], 0.85);
  Tensor p = m->predict(d.x, 64);
  EXPECT_EQ(p.shape(), Shape({300, 3}));
}

TEST(Training, TrainingFlagChangesDropoutAndBatchNormOnly) {
  auto m = small_model();
  Blobs d(8);
  Tensor a = (*m)(d.x), b = (*m)(d.x);
  EXPECT_TRUE(testing::tensors_equal(a, b));  // inference: deterministic, moving statistics
  Tensor t1 = (*m)(d.x, {.training = true});
  EXPECT_FALSE(testing::tensors_near(a, t1, 1e-4, 0));  // batch statistics + dropout
}

TEST(Training, SaveLoadPredictIsIdentical) {
  set_num_threads(1);
  Blobs d(96);
  auto m = small_model();
  compile_adam(m);
  m->fit(d.x, d.y, {.epochs = 2, .batch_size = 16, .verbose = 0});
  const std::string path = tmp_path("save.lbm");
  m->save(path);
  auto r = load_model(path);
  EXPECT_TRUE(testing::tensors_equal(m->predict(d.x), r->predict(d.x)));
  EXPECT_EQ(r->summary(), m->summary());
  EXPECT_TRUE(r->compiled());
  EXPECT_EQ(r->optimizer()->iterations(), m->optimizer()->iterations());
  std::filesystem::remove(path);
}

TEST(Training, ResumeGivesTheIdenticalLossCurve) {
  set_num_threads(1);
  Blobs d(128);
  FitOptions o{.batch_size = 16, .seed = 5, .verbose = 0};
  // Uninterrupted: 4 epochs.
  auto a = small_model(7);
  compile_adam(a);
  o.epochs = 4;
  History ha = a->fit(d.x, d.y, o);
  // Interrupted after 2 epochs, saved, reloaded, resumed at epoch 2.
  auto b = small_model(7);
  compile_adam(b);
  o.epochs = 2;
  History hb1 = b->fit(d.x, d.y, o);
  const std::string path = tmp_path("resume.lbm");
  b->save(path);
  auto c = load_model(path);
  o.epochs = 4;
  o.initial_epoch = 2;
  History hb2 = c->fit(d.x, d.y, o);
  std::vector<double> resumed = hb1.history["loss"];
  resumed.insert(resumed.end(), hb2.history["loss"].begin(), hb2.history["loss"].end());
  ASSERT_EQ(resumed.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(resumed[i], ha.history["loss"][i]) << "epoch " << i;
  EXPECT_TRUE(testing::tensors_equal(a->predict(d.x), c->predict(d.x)));
  std::filesystem::remove(path);
}

TEST(Training, BadInputsGiveClearErrors) {
  Blobs d(32);
  auto m = small_model();
  compile_adam(m);
  expect_throws_with<ShapeError>(
      [&] {
        m->fit(Tensor::zeros({32, 5}), d.y, {.verbose = 0});
      },
      "expects [?,4]");
  expect_throws_with<DTypeError>([&] { m->fit(d.x.to(DType::kS32), d.y, {.verbose = 0}); },
                                 "dtype s32");
  expect_throws_with<ShapeError>([&] { m->predict(Tensor::zeros({2, 3})); }, "[?,4]");
  Tensor bad = d.y.clone();
  bad.data<int64_t>()[5] = 3;
  expect_throws_with<ValueError>([&] { m->fit(d.x, bad, {.verbose = 0}); },
                                 "is out of range [0, 3)");
  // Integral f32 labels are converted as Keras casts them; fractional ones are refused.
  Tensor frac = d.y.to(DType::kF32);
  frac.data<float>()[0] = 0.5f;
  expect_throws_with<ValueError>([&] { m->fit(d.x, frac, {.verbose = 0}); }, "not an integer");
  expect_throws_with<ValueError>(
      [&] {
        m->fit(Tensor::zeros({0, 4}), Tensor::zeros({0}, DType::kS64), {.verbose = 0});
      },
      "empty");
  expect_throws_with<ShapeError>(
      [&] { m->fit(d.x, Tensor::zeros({31}, DType::kS64), {.verbose = 0}); }, "32 samples");
  auto uncompiled = small_model();
  expect_throws_with<ValueError>([&] { uncompiled->fit(d.x, d.y, {.verbose = 0}); }, "compile()");
}

TEST(Training, NanLossStopsAndKeepsLastGoodWeightsAndCheckpoint) {
  set_num_threads(1);
  Blobs d(64);
  auto m = small_model(1, false);
  m->compile({.optimizer = SGD({.learning_rate = 1e30}),
              .loss = SparseCategoricalCrossentropy({.from_logits = true})});
  const std::string ckpt = tmp_path("nan_ckpt.lbm");
  std::filesystem::remove(ckpt);
  std::ostringstream out;
  History h = m->fit(d.x, d.y, {.epochs = 5, .batch_size = 16, .verbose = 0, .out = &out});
  EXPECT_NE(h.stop_reason.find("loss is"), std::string::npos) << h.stop_reason;
  EXPECT_NE(out.str().find("training stopped"), std::string::npos);
  for (auto& [name, w] : m->named_weights())
    for (float v : w->value.span<float>()) ASSERT_TRUE(std::isfinite(v)) << name;

  // With a checkpoint each epoch and a loss that diverges later, the file holds finite weights.
  auto m2 = small_model(1, false);
  m2->compile({.optimizer = SGD({.learning_rate = 0.05}),
               .loss = SparseCategoricalCrossentropy({.from_logits = true})});
  m2->fit(d.x, d.y,
          {.epochs = 1, .batch_size = 16, .verbose = 0, .callbacks = {ModelCheckpoint(ckpt)}});
  ASSERT_TRUE(std::filesystem::exists(ckpt));
  m2->optimizer()->set_learning_rate(1e30);
  History h2 = m2->fit(d.x, d.y,
                       {.epochs = 3,
                        .batch_size = 16,
                        .verbose = 0,
                        .initial_epoch = 1,
                        .callbacks = {ModelCheckpoint(ckpt)}});
  EXPECT_FALSE(h2.stop_reason.empty());
  auto restored = load_model(ckpt);
  for (auto& [name, w] : restored->named_weights())
    for (float v : w->value.span<float>()) ASSERT_TRUE(std::isfinite(v)) << name;
  std::filesystem::remove(ckpt);
}

TEST(Training, CorruptedFilesGiveIoErrors) {
  Blobs d(16);
  auto m = small_model();
  const std::string path = tmp_path("corrupt.lbm");
  m->save(path);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& b) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(b.data(), static_cast<std::streamsize>(b.size()));
  };
  write(bytes.substr(0, bytes.size() / 2));
  expect_throws_with<IoError>([&] { load_model(path); }, path);
  write(bytes.substr(0, 4));
  expect_throws_with<IoError>([&] { load_model(path); }, "truncated");
  std::string garbled = bytes;
  garbled[10] = '#';
  write(garbled);
  expect_throws_with<IoError>([&] { load_model(path); }, "corrupted");
  expect_throws_with<IoError>([&] { load_model(path + ".missing"); }, "cannot open");
  // A file of another model: mismatched weights.
  write(bytes);
  auto other = Sequential::create(
      {InputSpec({4}), Dense(5, {.name = "dense"}), Dense(3, {.name = "dense_1"})});
  expect_throws_with<IoError>([&] { other->load_weights(path); }, "weight");
  std::filesystem::remove(path);
}

TEST(Training, CallbacksEarlyStoppingCsvAndScheduler) {
  set_num_threads(1);
  Blobs d(64);
  auto m = small_model();
  compile_adam(m, 0.0);  // nothing improves: early stopping after patience
  History h =
      m->fit(d.x, d.y,
             {.epochs = 20,
              .batch_size = 16,
              .verbose = 0,
              .callbacks = {EarlyStopping({.monitor = "loss", .min_delta = 1e-3, .patience = 2})}});
  EXPECT_LT(h.epochs.size(), 20u);
  EXPECT_GE(h.epochs.size(), 3u);

  auto m2 = small_model();
  compile_adam(m2);
  const std::string csv = tmp_path("log.csv");
  std::vector<double> seen;
  m2->fit(d.x, d.y,
          {.epochs = 3,
           .batch_size = 16,
           .verbose = 0,
           .callbacks = {CSVLogger(csv), LearningRateScheduler([&](int epoch, double) {
                           seen.push_back(0.1 / (epoch + 1));
                           return seen.back();
                         })}});
  EXPECT_DOUBLE_EQ(m2->optimizer()->learning_rate(), 0.1 / 3);
  std::ifstream in(csv);
  std::string header, line;
  std::getline(in, header);
  EXPECT_EQ(header, "epoch,accuracy,loss");
  int rows = 0;
  while (std::getline(in, line)) ++rows;
  EXPECT_EQ(rows, 3);
  std::filesystem::remove(csv);
}

TEST(Training, FrozenLayersDoNotTrain) {
  set_num_threads(1);
  Blobs d(32);
  auto m = small_model(1, false);
  auto first = m->layers()[1];  // the first Dense
  first->set_trainable(false);
  Tensor before = first->weights()[0].value.clone();
  compile_adam(m);
  m->fit(d.x, d.y, {.epochs = 2, .batch_size = 8, .verbose = 0});
  EXPECT_TRUE(testing::tensors_equal(first->weights()[0].value, before));
  EXPECT_EQ(m->count_params_total(false), 16 * 4 + 16 + 2 * 16);  // frozen dense + BN moving stats
}

}  // namespace
}  // namespace lowbit::nn
