// nn::read_train_config / train_config_from_json (lowbit/nn/train_config.h).
#include "lowbit/nn/train_config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "lowbit/nn/layers.h"
#include "testing/op_testing.h"

namespace lowbit::nn {
namespace {

using lowbit::testing::expect_throws_with;

Json sequential_config() {
  auto m = Sequential::create(
      {InputSpec({4}), Dense(3, {.activation = "relu", .name = "d1"}), Dense(2, {.name = "d2"})},
      "mlp");
  return {{"class_name", "Sequential"}, {"config", m->get_config()}};
}

TEST(TrainConfig, BareModelConfigBuildsTheModel) {
  const TrainConfig t = train_config_from_json(sequential_config());
  EXPECT_EQ(t.model->name(), "mlp");
  EXPECT_EQ(t.model->count_params_total(true), 4 * 3 + 3 + 3 * 2 + 2);
  EXPECT_EQ(t.compile.loss, nullptr);
  EXPECT_EQ(t.fit.epochs, 1);
  // The bare get_config() (no class_name) is read as Sequential.
  EXPECT_EQ(train_config_from_json(sequential_config().at("config")).model->name(), "mlp");
}

TEST(TrainConfig, WrappedConfigSetsCompileAndFit) {
  const Json j = {{"model", sequential_config()},
                  {"compile",
                   {{"optimizer", "sgd"},
                    {"loss", "sparse_categorical_crossentropy"},
                    {"metrics", {"accuracy"}}}},
                  {"fit", {{"epochs", 3}, {"batch_size", 8}, {"validation_split", 0.25}}}};
  const TrainConfig t = train_config_from_json(j);
  ASSERT_NE(t.compile.optimizer, nullptr);
  EXPECT_EQ(t.compile.optimizer->name(), "SGD");
  ASSERT_NE(t.compile.loss, nullptr);
  EXPECT_EQ(t.compile.metrics, std::vector<std::string>{"accuracy"});
  EXPECT_EQ(t.fit.epochs, 3);
  EXPECT_EQ(t.fit.batch_size, 8);
  EXPECT_DOUBLE_EQ(t.fit.validation_split, 0.25);
  // It trains as configured.
  t.model->compile(t.compile);
  Tensor x = Tensor::full({8, 4}, 0.5);
  Tensor y = Tensor::from_vector<int64_t>({0, 1, 0, 1, 0, 1, 0, 1}, {8});
  const History h = t.model->fit(x, y, {.epochs = 1, .batch_size = 4, .verbose = 0});
  EXPECT_EQ(h.history.at("loss").size(), 1u);
}

TEST(TrainConfig, ErrorsNameTheKeyAndFile) {
  expect_throws_with<ValueError>(
      [] {
        train_config_from_json({{"model", sequential_config()}, {"fitt", Json::object()}});
      },
      "unknown key 'fitt'");
  expect_throws_with<ValueError>(
      [] {
        train_config_from_json({{"model", sequential_config()}, {"fit", {{"epoch", 2}}}});
      },
      "unknown key 'fit.epoch'");
  expect_throws_with<ValueError>(
      [] {
        train_config_from_json({{"model", sequential_config()}, {"fit", {{"epochs", "two"}}}});
      },
      "wrong type");
  const std::string dir =
      std::filesystem::temp_directory_path() / ("lowbit_train_config_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/bad.json") << "{\"model\": ";
  expect_throws_with<IoError>([&] { read_train_config(dir + "/bad.json"); },
                              "bad.json' is not valid JSON");
  std::ofstream(dir + "/nounits.json")
      << R"({"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {}}]}})";
  expect_throws_with<ValueError>([&] { read_train_config(dir + "/nounits.json"); },
                                 "nounits.json': layer_from_config: bad config for Dense");
  expect_throws_with<IoError>([&] { read_train_config(dir + "/missing.json"); }, "missing.json");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace lowbit::nn
