// nn::save_history / load_history / history_to_json (lowbit/nn/history.h): JSON and CSV round
// trips, the JSON layout `lowbit train` writes, and the errors.
#include "lowbit/nn/history.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "testing/op_testing.h"

namespace lowbit::nn {
namespace {

namespace fs = std::filesystem;
using lowbit::testing::expect_throws_with;

class HistoryIo : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("lowbit_history_" + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path(name), std::ios::binary) << text;
  }
  fs::path dir_;
};

History two_epochs() {
  History h;
  h.epochs = {0, 1};
  h.history["loss"] = {2.302585092994046, 0.1 + 0.2};  // 17 digits needed to read back exactly
  h.history["val_accuracy"] = {0.5, 0.75};
  h.stop_reason = "EarlyStopping after epoch 2";
  return h;
}

TEST_F(HistoryIo, JsonHasTheDocumentedLayout) {
  const Json j = history_to_json(two_epochs(), "qat");
  EXPECT_EQ(j.at("phase"), "qat");
  EXPECT_EQ(j.at("epochs"), Json::array({0, 1}));
  EXPECT_EQ(j.at("history").at("val_accuracy"), Json::array({0.5, 0.75}));
  EXPECT_EQ(j.at("stop_reason"), "EarlyStopping after epoch 2");
  EXPECT_EQ(j.at("last_epoch_partial"), false);
}

TEST_F(HistoryIo, JsonRoundTripIsExact) {
  save_history(path("h.json"), two_epochs(), "float");
  const PhaseHistory back = load_history(path("h.json"));
  EXPECT_EQ(back.phase, "float");
  EXPECT_EQ(back.history.epochs, (std::vector<int>{0, 1}));
  EXPECT_EQ(back.history.history, two_epochs().history);
  EXPECT_EQ(back.history.stop_reason, "EarlyStopping after epoch 2");
}

TEST_F(HistoryIo, CsvHasAnEpochColumnThenOnePerMetric) {
  save_history(path("h.csv"), two_epochs(), "float");
  std::ifstream f(path("h.csv"));
  std::string header, row0;
  std::getline(f, header);
  std::getline(f, row0);
  EXPECT_EQ(header, "epoch,loss,val_accuracy");
  EXPECT_EQ(row0, "0,2.3025850929940459,0.5");
  const PhaseHistory back = load_history(path("h.csv"));
  EXPECT_EQ(back.phase, "");
  EXPECT_EQ(back.history.epochs, (std::vector<int>{0, 1}));
  EXPECT_EQ(back.history.history, two_epochs().history);
}

TEST_F(HistoryIo, NonFiniteLossIsNullInJson) {
  History h;
  h.epochs = {0};
  h.history["loss"] = {std::nan("")};
  EXPECT_TRUE(history_to_json(h, "float").at("history").at("loss").at(0).is_null());
  save_history(path("h.json"), h, "float");
  EXPECT_TRUE(std::isnan(load_history(path("h.json")).history.history.at("loss").at(0)));
}

TEST_F(HistoryIo, ErrorsNameTheFileAndField) {
  History bad = two_epochs();
  bad.history["loss"].push_back(1);
  expect_throws_with<ValueError>([&] { history_to_json(bad, "float"); },
                                 "metric 'loss' has 3 values but there are 2 epochs");
  expect_throws_with<IoError>([&] { load_history(path("missing.json")); }, "missing.json");
  write("broken.json", "{\"history\": ");
  expect_throws_with<IoError>([&] { load_history(path("broken.json")); },
                              "broken.json' is not valid JSON");
  write("nohistory.json", "{\"phase\": \"float\"}");
  expect_throws_with<ValueError>([&] { load_history(path("nohistory.json")); },
                                 "field 'history' is missing");
  write("text.json", "{\"history\": {\"loss\": [\"a\"]}}");
  expect_throws_with<ValueError>([&] { load_history(path("text.json")); },
                                 "field 'history.loss' holds \"a\"");
  write("short.csv", "epoch,loss\n0,1.5\n1\n");
  expect_throws_with<IoError>([&] { load_history(path("short.csv")); },
                              "short.csv': line 3 has 1 fields but the header has 2");
  write("words.csv", "epoch,loss\n0,abc\n");
  expect_throws_with<IoError>([&] { load_history(path("words.csv")); }, "line 2");
  write("noepoch.csv", "loss\n1\n");
  expect_throws_with<IoError>([&] { load_history(path("noepoch.csv")); }, "start with 'epoch'");
  expect_throws_with<IoError>(
      [&] { save_history(path("no-such-dir/h.json"), two_epochs(), "float"); }, "cannot write");
}

}  // namespace
}  // namespace lowbit::nn
