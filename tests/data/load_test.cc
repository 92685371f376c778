// data::load_data (lowbit/data/load.h): every format `lowbit --data` takes, MNIST scaling,
// limit, and the errors.
#include "lowbit/data/load.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "lowbit/data/idx.h"
#include "lowbit/data/npy.h"
#include "testing/op_testing.h"

namespace lowbit::data {
namespace {

namespace fs = std::filesystem;
using lowbit::testing::expect_throws_with;
using lowbit::testing::tensors_equal;

class LoadData : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("lowbit_load_" + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

Tensor features() { return Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {3, 2}); }
Tensor classes() { return Tensor::from_vector<int64_t>({2, 0, 1}, {3}); }

TEST_F(LoadData, NpyPairKeepsValuesAndMakesIntegerLabelsS64) {
  write_npy(path("x.npy"), features());
  write_npy(path("y.npy"), Tensor::from_vector<int32_t>({2, 0, 1}, {3}));
  const LoadedData d = load_data({.data = path("x.npy"), .labels = path("y.npy")});
  EXPECT_TRUE(tensors_equal(d.x, features()));
  EXPECT_TRUE(tensors_equal(d.y, classes()));
  EXPECT_NE(d.description.find("x f32 [3,2], y s64 [3]"), std::string::npos) << d.description;
}

TEST_F(LoadData, NpzUsesTheKeys) {
  write_npz(path("d.npz"), {{"images", features()}, {"digits", classes()}});
  const LoadedData d = load_data({.data = path("d.npz"), .x_key = "images", .y_key = "digits"});
  EXPECT_TRUE(tensors_equal(d.x, features()));
  EXPECT_TRUE(tensors_equal(d.y, classes()));
  expect_throws_with<IoError>([&] { load_data({.data = path("d.npz")}); },
                              "no array 'x'; available: 'digits', 'images'");
}

TEST_F(LoadData, CsvTakesTheLabelColumn) {
  std::ofstream(path("d.csv")) << "a,label,b\n1,2,2\n3,0,4\n5,1,6\n";
  const LoadedData d = load_data({.data = path("d.csv")});
  EXPECT_TRUE(tensors_equal(d.x, features()));
  EXPECT_TRUE(tensors_equal(d.y, classes()));
  expect_throws_with<ValueError>([&] { load_data({.data = path("d.csv"), .label_column = "y"}); },
                                 "'y'");
}

TEST_F(LoadData, IdxU8ImagesAreScaledLikeLoadMnist) {
  Tensor images = Tensor::from_vector<uint8_t>({0, 51, 255, 102, 0, 0, 0, 255}, {2, 2, 2});
  write_idx(path("images.idx"), images);
  write_idx(path("labels.idx"), Tensor::from_vector<uint8_t>({7, 3}, {2}));
  const LoadedData d = load_data({.data = path("images.idx"), .labels = path("labels.idx")});
  ASSERT_EQ(d.x.shape(), Shape({2, 2, 2, 1}));
  EXPECT_FLOAT_EQ(d.x.data<float>()[1], 51.0f / 255.0f);
  EXPECT_FLOAT_EQ(d.x.data<float>()[2], 1.0f);
  EXPECT_TRUE(tensors_equal(d.y, Tensor::from_vector<int64_t>({7, 3}, {2})));
}

TEST_F(LoadData, MnistDirectoryAndLimitAgreeWithLoadMnist) {
  const std::string dir = lowbit::testing::shared_dir() + "/data";
  const MnistSplit test = load_mnist(dir, false);
  const LoadedData d = load_data({.data = dir, .split = "test", .limit = 10});
  ASSERT_EQ(d.x.shape(), Shape({10, 28, 28, 1}));
  EXPECT_TRUE(tensors_equal(d.x, take_rows(test.images, 10)));
  EXPECT_TRUE(tensors_equal(d.y, take_rows(test.labels, 10)));
  EXPECT_EQ(load_data({.data = dir, .limit = 5}).y.dim(0), 5);  // train split by default
  expect_throws_with<ValueError>([&] { load_data({.data = dir, .split = "val"}); },
                                 "split must be 'train' or 'test'");
}

TEST_F(LoadData, ErrorsNameTheFileAndFlag) {
  expect_throws_with<ValueError>([&] { load_data({}); }, "--data");
  write_npy(path("x.npy"), features());
  expect_throws_with<ValueError>([&] { load_data({.data = path("x.npy")}); }, "--labels");
  write_npy(path("y4.npy"), Tensor::from_vector<int64_t>({0, 1, 2, 3}, {4}));
  expect_throws_with<ValueError>(
      [&] { load_data({.data = path("x.npy"), .labels = path("y4.npy")}); },
      "do not have the same number of samples");
  expect_throws_with<IoError>(
      [&] { load_data({.data = path("missing.idx"), .labels = path("labels.idx")}); },
      "missing.idx");
  expect_throws_with<ValueError>(
      [&] { load_data({.data = path("x.npy"), .labels = path("y4.npy"), .limit = 0}); },
      "limit must be positive");
}

}  // namespace
}  // namespace lowbit::data
