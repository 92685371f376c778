#include "lowbit/data/idx.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "testing/op_testing.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;
using testing::expect_throws_with;

// A fresh directory per test, removed afterwards.
class IdxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ =
        fs::temp_directory_path() / ("lowbit_idx_" + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

std::vector<uint8_t> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

void write_gzip(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile gz = gzopen(path.c_str(), "wb");
  ASSERT_NE(gz, nullptr) << path;
  ASSERT_EQ(gzwrite(gz, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(gz), Z_OK);
}

Tensor iota_u8(const Shape& shape) {
  Tensor t(shape, DType::kU8);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<uint8_t>()[i] = static_cast<uint8_t>(i * 7 % 256);
  return t;
}

// ---- the real split in ../shared/data (its README lists the class counts) ----

std::string shared_mnist() { return testing::shared_dir() + "/data"; }

std::array<int64_t, 10> histogram(const Tensor& labels) {
  std::array<int64_t, 10> h{};
  for (int64_t v : labels.span<int64_t>()) {
    EXPECT_TRUE(v >= 0 && v <= 9) << v;
    if (v >= 0 && v <= 9) ++h[v];
  }
  return h;
}

TEST(IdxShared, RawTrainImages) {
  Tensor t = read_idx(shared_mnist() + "/train-images-idx3-ubyte");
  EXPECT_EQ(t.dtype(), DType::kU8);
  EXPECT_EQ(t.shape(), Shape({8000, 28, 28}));
  // Ink spans the whole byte range; the border pixels of MNIST digits are background.
  uint8_t lo = 255, hi = 0;
  for (uint8_t v : t.span<uint8_t>()) lo = std::min(lo, v), hi = std::max(hi, v);
  EXPECT_EQ(lo, 0);
  EXPECT_EQ(hi, 255);
  for (int64_t n = 0; n < 8000; n += 997) EXPECT_EQ(t.at<uint8_t>({n, 0, 0}), 0) << n;
}

TEST(IdxShared, LoadMnistTrain) {
  MnistSplit s = load_mnist(shared_mnist(), /*train=*/true);
  EXPECT_EQ(s.images.dtype(), DType::kF32);
  EXPECT_EQ(s.images.shape(), Shape({8000, 28, 28, 1}));
  EXPECT_EQ(s.labels.dtype(), DType::kS64);
  EXPECT_EQ(s.labels.shape(), Shape({8000}));
  EXPECT_EQ(histogram(s.labels),
            (std::array<int64_t, 10>{820, 909, 808, 831, 769, 685, 799, 838, 764, 777}));
  // Images are the raw bytes / 255.
  Tensor raw = read_idx(shared_mnist() + "/train-images-idx3-ubyte");
  const uint8_t* px = raw.data<uint8_t>();
  const float* f = s.images.data<float>();
  for (int64_t i = 0; i < raw.numel(); i += 101) ASSERT_EQ(f[i], px[i] / 255.0f) << i;
  Tensor raw_labels = read_idx(shared_mnist() + "/train-labels-idx1-ubyte");
  EXPECT_EQ(s.labels.at<int64_t>({0}), raw_labels.at<uint8_t>({0}));
  EXPECT_EQ(s.labels.at<int64_t>({7999}), raw_labels.at<uint8_t>({7999}));
}

TEST(IdxShared, LoadMnistTest) {
  MnistSplit s = load_mnist(shared_mnist(), /*train=*/false);
  EXPECT_EQ(s.images.shape(), Shape({2000, 28, 28, 1}));
  EXPECT_EQ(s.labels.shape(), Shape({2000}));
  EXPECT_EQ(histogram(s.labels),
            (std::array<int64_t, 10>{181, 218, 183, 201, 211, 178, 215, 232, 180, 201}));
  float lo = 1, hi = 0;
  for (float v : s.images.span<float>()) lo = std::min(lo, v), hi = std::max(hi, v);
  EXPECT_EQ(lo, 0.0f);
  EXPECT_EQ(hi, 1.0f);
}

// ---- format ----

TEST_F(IdxTest, WritesBigEndianHeaderAndData) {
  // Hand-checked bytes: magic 00 00 08 02, dims 2 and 3, then the data row-major.
  write_idx(path("u8"), Tensor::from_vector<uint8_t>({1, 2, 3, 250, 251, 252}, {2, 3}));
  EXPECT_EQ(file_bytes(path("u8")),
            (std::vector<uint8_t>{0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 250, 251, 252}));
  // s32 0x01020304 and -2 (0xFFFFFFFE), big-endian.
  write_idx(path("s32"), Tensor::from_vector<int32_t>({0x01020304, -2}, {2}));
  EXPECT_EQ(file_bytes(path("s32")),
            (std::vector<uint8_t>{0, 0, 0x0C, 1, 0, 0, 0, 2, 1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFE}));
  // f32 1.0 is 0x3F800000.
  write_idx(path("f32"), Tensor::from_vector<float>({1.0f}, {1}));
  EXPECT_EQ(file_bytes(path("f32")),
            (std::vector<uint8_t>{0, 0, 0x0D, 1, 0, 0, 0, 1, 0x3F, 0x80, 0, 0}));
}

TEST_F(IdxTest, RoundTripsEveryDType) {
  std::vector<Tensor> tensors = {
      iota_u8({3, 5, 7}),
      Tensor::from_vector<int8_t>({-128, -1, 0, 1, 127}, {5}),
      Tensor::from_vector<int32_t>({INT32_MIN, -70000, 0, 65537, INT32_MAX, 3}, {2, 3}),
      Tensor::from_vector<float>({-1.5f, 0.0f, 3.25e-7f, 1e30f}, {2, 1, 2}),
      Tensor::from_vector<uint8_t>({42}, {}),  // rank 0
      Tensor(Shape({0, 4}), DType::kU8),       // empty
  };
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::string p = path("t" + std::to_string(i));
    write_idx(p, tensors[i]);
    Tensor back = read_idx(p);
    EXPECT_TRUE(testing::tensors_equal(back, tensors[i])) << "tensor " << i;
  }
}

TEST_F(IdxTest, ReadsGzipByExtensionAndByMagic) {
  Tensor t = iota_u8({4, 28, 28});
  write_idx(path("plain"), t);
  std::vector<uint8_t> bytes = file_bytes(path("plain"));
  write_gzip(path("images.gz"), bytes);
  write_gzip(path("images_without_suffix"), bytes);  // found by the 1f 8b magic
  EXPECT_NE(file_bytes(path("images.gz")), bytes);   // really compressed
  EXPECT_TRUE(testing::tensors_equal(read_idx(path("images.gz")), t));
  EXPECT_TRUE(testing::tensors_equal(read_idx(path("images_without_suffix")), t));
}

TEST_F(IdxTest, LoadMnistFindsGzAndT10kNames) {
  write_idx(path("t10k-images-idx3-ubyte"), iota_u8({3, 2, 2}));
  std::vector<uint8_t> labels = {0, 0, 8, 1, 0, 0, 0, 3, 9, 0, 4};
  write_gzip(path("t10k-labels-idx1-ubyte.gz"), labels);
  MnistSplit s = load_mnist(dir_.string(), /*train=*/false);
  EXPECT_EQ(s.images.shape(), Shape({3, 2, 2, 1}));
  EXPECT_EQ(s.images.at<float>({0, 0, 1, 0}), 7.0f / 255.0f);
  EXPECT_EQ(s.labels.to_vector<int64_t>(), (std::vector<int64_t>{9, 0, 4}));
  // No training files here.
  expect_throws_with<IoError>([&] { load_mnist(dir_.string(), true); },
                              "'train-images-idx3-ubyte.gz' but found none");
}

// ---- errors ----

TEST_F(IdxTest, MissingFile) {
  std::string p = path("no-such-file");
  expect_throws_with<IoError>([&] { read_idx(p); }, "'" + p + "': cannot open");
  expect_throws_with<IoError>([&] { read_idx(p + ".gz"); }, p + ".gz");
  expect_throws_with<IoError>([&] { load_mnist(path("no-such-dir"), true); }, "no-such-dir");
  expect_throws_with<IoError>([&] { read_idx(dir_.string()); }, "read error: Is a directory");
}

TEST_F(IdxTest, TruncatedData) {
  std::string p = path("train-images-idx3-ubyte");
  write_idx(p, iota_u8({10, 28, 28}));
  fs::resize_file(p, 16 + 7000);
  expect_throws_with<IoError>([&] { read_idx(p); }, p);
  expect_throws_with<IoError>([&] { read_idx(p); },
                              "truncated: expected 7840 bytes of data for u8 [10,28,28] but "
                              "found 7000");
  // The same through gzip.
  write_gzip(path("trunc.gz"), file_bytes(p));
  expect_throws_with<IoError>([&] { read_idx(path("trunc.gz")); },
                              "expected 7840 bytes of data for u8 [10,28,28] but found 7000");
}

TEST_F(IdxTest, TruncatedHeaderAndTrailingBytes) {
  write_bytes(path("short"), {0, 0, 8, 3, 0, 0, 0, 10, 0, 0});
  expect_throws_with<IoError>([&] { read_idx(path("short")); },
                              "truncated header: expected 16 bytes for 3 dims but found 10");
  write_bytes(path("empty"), {});
  expect_throws_with<IoError>([&] { read_idx(path("empty")); }, "truncated header");
  write_bytes(path("long"), {0, 0, 8, 1, 0, 0, 0, 2, 5, 6, 7});
  expect_throws_with<IoError>([&] { read_idx(path("long")); },
                              "expected 2 bytes of data for u8 [2] but found 3");
}

TEST_F(IdxTest, BadMagic) {
  std::string p = path("not-idx");
  write_bytes(p, {'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd'});
  expect_throws_with<IoError>([&] { read_idx(p); }, "'" + p + "': bad magic");
  expect_throws_with<IoError>([&] { read_idx(p); }, "but found 0x68656C6C");
  write_bytes(path("bad-type"), {0, 0, 0x07, 1, 0, 0, 0, 1, 0});
  expect_throws_with<IoError>([&] { read_idx(path("bad-type")); }, "but found 0x00000701");
  // Labels that are not digits.
  write_idx(path("train-images-idx3-ubyte"), iota_u8({2, 2, 2}));
  write_idx(path("train-labels-idx1-ubyte"), Tensor::from_vector<uint8_t>({3, 10}, {2}));
  expect_throws_with<IoError>([&] { load_mnist(dir_.string(), true); },
                              "label 1: expected a digit 0..9 but found 10");
  write_idx(path("train-labels-idx1-ubyte"), Tensor::from_vector<uint8_t>({3, 1, 2}, {3}));
  expect_throws_with<IoError>([&] { load_mnist(dir_.string(), true); },
                              "expected u8 labels [2] (one per image) but found u8 [3]");
}

TEST_F(IdxTest, CorruptGzip) {
  write_idx(path("p"), iota_u8({50, 28, 28}));
  std::vector<uint8_t> bytes = file_bytes(path("p"));
  write_gzip(path("full.gz"), bytes);
  std::vector<uint8_t> gz = file_bytes(path("full.gz"));
  gz.resize(gz.size() / 2);
  write_bytes(path("cut.gz"), gz);
  expect_throws_with<IoError>([&] { read_idx(path("cut.gz")); }, "cut.gz");
  expect_throws_with<IoError>([&] { read_idx(path("cut.gz")); },
                              "corrupt gzip stream: unexpected end of file");
  // A flipped byte in the middle: bad deflate data or a CRC mismatch, never silent.
  gz = file_bytes(path("full.gz"));
  gz[gz.size() / 2] ^= 0x5A;
  write_bytes(path("flipped.gz"), gz);
  expect_throws_with<IoError>([&] { read_idx(path("flipped.gz")); }, "corrupt gzip stream");
}

TEST_F(IdxTest, UnsupportedTypes) {
  write_bytes(path("s16"), {0, 0, 0x0B, 1, 0, 0, 0, 1, 0, 5});
  expect_throws_with<UnsupportedError>([&] { read_idx(path("s16")); }, "int16 (0x0B)");
  write_bytes(path("f64"), {0, 0, 0x0E, 0});
  expect_throws_with<UnsupportedError>([&] { read_idx(path("f64")); }, "float64 (0x0E)");
  expect_throws_with<UnsupportedError>(
      [&] { write_idx(path("s64"), Tensor::from_vector<int64_t>({1}, {1})); },
      "expected a tensor of dtype u8, s8, s32 or f32 but found s64");
}

}  // namespace
}  // namespace lowbit
