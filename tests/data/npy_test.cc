#include "lowbit/data/npy.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "testing/op_testing.h"

namespace lowbit::data {
namespace {

namespace fs = std::filesystem;
using lowbit::testing::expect_throws_with;
using lowbit::testing::tensors_equal;

// The NumPy-made files (see fixtures/README.md), next to this source file.
std::string fixture(const std::string& name) {
  return (fs::path(__FILE__).parent_path() / "fixtures" / name).string();
}

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

class NpyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ =
        fs::temp_directory_path() / ("lowbit_npy_" + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

// x[i,j,k] = (6i + 2j + k) / 10 in f32, as make_fixtures.py computes it.
Tensor fixture_x() {
  Tensor x({4, 3, 2}, DType::kF32);
  for (int64_t i = 0; i < 24; ++i) x.data<float>()[i] = static_cast<float>(i) / 10.0f;
  return x;
}

// ---- NumPy-written files ----

TEST(NpyFixtures, EachDtype) {
  EXPECT_TRUE(tensors_equal(read_npy(fixture("f4_2x3.npy")),
                            Tensor::from_vector<float>({-1, -0.5, 0, 0.5, 1, 1.5}, {2, 3})));
  // '<f8' is converted to f32 (rounded to nearest).
  EXPECT_TRUE(
      tensors_equal(read_npy(fixture("f8_4.npy")),
                    Tensor::from_vector<float>(
                        {static_cast<float>(0.1), -2.5f, static_cast<float>(1e-3), 3.0f}, {4})));
  EXPECT_TRUE(tensors_equal(read_npy(fixture("i8_3.npy")),
                            Tensor::from_vector<int64_t>({-5, 0, int64_t{1} << 40}, {3})));
  EXPECT_TRUE(tensors_equal(read_npy(fixture("i4_2x2.npy")),
                            Tensor::from_vector<int32_t>({-1, 2, 3, INT32_MIN}, {2, 2})));
  EXPECT_TRUE(
      tensors_equal(read_npy(fixture("u1_2x2x2.npy")),
                    Tensor::from_vector<uint8_t>({0, 1, 127, 128, 200, 254, 255, 7}, {2, 2, 2})));
  EXPECT_TRUE(tensors_equal(read_npy(fixture("i1_4.npy")),
                            Tensor::from_vector<int8_t>({-128, -1, 0, 127}, {4})));
  EXPECT_TRUE(tensors_equal(read_npy(fixture("b1_3.npy")),
                            Tensor::from_vector<bool>({true, false, true}, {3})));
}

TEST(NpyFixtures, ScalarEmptyFortranAndVersion2) {
  Tensor s = read_npy(fixture("scalar_f4.npy"));
  EXPECT_EQ(s.shape(), Shape({}));
  EXPECT_EQ(s.item<float>(), 2.5f);
  Tensor e = read_npy(fixture("empty_f4_0x3.npy"));
  EXPECT_EQ(e.dtype(), DType::kF32);
  EXPECT_EQ(e.shape(), Shape({0, 3}));
  // Stored column-major; element [i,j,k] = 6i + 2j + k once transposed into row-major.
  Tensor f = read_npy(fixture("fortran_f4_2x3x2.npy"));
  ASSERT_EQ(f.shape(), Shape({2, 3, 2}));
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 2; ++k)
        EXPECT_EQ(f.at<float>({i, j, k}), static_cast<float>(6 * i + 2 * j + k)) << i << j << k;
  EXPECT_TRUE(tensors_equal(read_npy(fixture("v2_i4_5.npy")),
                            Tensor::from_vector<int32_t>({0, 1, 2, 3, 4}, {5})));
}

TEST(NpyFixtures, UnsupportedDtypes) {
  expect_throws_with<UnsupportedError>([] { read_npy(fixture("big_endian_f4.npy")); },
                                       "big-endian data ('>f4') is not supported");
  expect_throws_with<UnsupportedError>([] { read_npy(fixture("f2_2.npy")); },
                                       "dtype '<f2' is not supported");
}

// Our writer produces NumPy's bytes exactly (header text, 64-byte padding, data).
TEST(NpyFixtures, WriterMatchesNumpyBytes) {
  const char* names[] = {"f4_2x3.npy", "i8_3.npy", "i4_2x2.npy",    "u1_2x2x2.npy",
                         "i1_4.npy",   "b1_3.npy", "scalar_f4.npy", "empty_f4_0x3.npy"};
  for (const char* name : names) {
    const std::string out =
        (fs::temp_directory_path() / ("lowbit_npy_bytes_" + std::to_string(getpid()) + "_" + name))
            .string();
    write_npy(out, read_npy(fixture(name)));
    EXPECT_EQ(file_bytes(out), file_bytes(fixture(name))) << name;
    fs::remove(out);
  }
}

TEST(NpyFixtures, NpzStoredAndDeflated) {
  for (const char* name : {"xyw_stored.npz", "xyw_deflated.npz"}) {
    SCOPED_TRACE(name);
    auto arrays = read_npz(fixture(name));
    ASSERT_EQ(arrays.size(), 3u);
    EXPECT_TRUE(tensors_equal(arrays.at("x"), fixture_x()));
    EXPECT_TRUE(tensors_equal(arrays.at("y"), Tensor::from_vector<int64_t>({3, 1, 4, 1}, {4})));
    EXPECT_TRUE(tensors_equal(arrays.at("w"), Tensor::from_vector<float>({1, 0.5, 2, 1}, {4})));
  }
}

// ---- round trips through our writer ----

TEST_F(NpyTest, RoundTripEveryDtypeAndRank) {
  Rng rng(7);
  std::vector<Tensor> cases = {
      testing::random_tensor({3, 4}, rng),
      testing::random_tensor({2, 1, 3, 2}, rng),
      Tensor::scalar(-3.25f),
      Tensor({0}, DType::kF32),
      Tensor({5, 0, 2}, DType::kS32),
      testing::random_int_tensor({7}, rng, -1000, 1000, DType::kS64),
      testing::random_int_tensor({2, 3}, rng, INT32_MIN / 2, INT32_MAX / 2, DType::kS32),
      testing::random_int_tensor({4, 4}, rng, 0, 255, DType::kU8),
      testing::random_int_tensor({9}, rng, -128, 127, DType::kS8),
      Tensor::from_vector<bool>({true, true, false}, {3, 1}),
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].str());
    write_npy(path("a.npy"), cases[i]);
    EXPECT_TRUE(tensors_equal(read_npy(path("a.npy")), cases[i]));
  }
  std::map<std::string, Tensor> arrays;
  for (size_t i = 0; i < cases.size(); ++i) arrays["t" + std::to_string(i)] = cases[i];
  for (bool compressed : {false, true}) {
    SCOPED_TRACE(compressed ? "deflated" : "stored");
    write_npz(path("a.npz"), arrays, compressed);
    auto back = read_npz(path("a.npz"));
    ASSERT_EQ(back.size(), arrays.size());
    for (const auto& [k, t] : arrays) EXPECT_TRUE(tensors_equal(back.at(k), t)) << k;
  }
}

TEST_F(NpyTest, DeflatedArchiveIsSmallerForRepetitiveData) {
  Tensor z = Tensor::zeros({256, 256});
  write_npz(path("s.npz"), {{"z", z}}, false);
  write_npz(path("d.npz"), {{"z", z}}, true);
  EXPECT_GT(fs::file_size(path("s.npz")), 256u * 256 * 4);
  EXPECT_LT(fs::file_size(path("d.npz")), 4096u);
  EXPECT_TRUE(tensors_equal(read_npz(path("d.npz")).at("z"), z));
}

// ---- errors ----

TEST_F(NpyTest, NpyErrors) {
  expect_throws_with<IoError>([&] { read_npy(path("missing.npy")); }, "cannot open");
  write_bytes(path("text.npy"), {'h', 'e', 'l', 'l', 'o', '!', '!', '!'});
  expect_throws_with<IoError>(
      [&] { read_npy(path("text.npy")); },
      "bad magic: expected \"\\x93NUMPY\" (a .npy file) but found 68 65 6c");

  write_npy(path("a.npy"), Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3}));
  const std::vector<uint8_t> good = file_bytes(path("a.npy"));
  ASSERT_EQ(good.size(), 128u + 24);
  // Data cut short.
  std::vector<uint8_t> b(good.begin(), good.end() - 5);
  write_bytes(path("b.npy"), b);
  expect_throws_with<IoError>([&] { read_npy(path("b.npy")); },
                              "'" + path("b.npy") +
                                  "': truncated: expected 24 bytes of data for '<f4' [2,3] but "
                                  "found 19");
  // Header cut short.
  b.assign(good.begin(), good.begin() + 40);
  write_bytes(path("c.npy"), b);
  expect_throws_with<IoError>([&] { read_npy(path("c.npy")); },
                              "truncated header: expected 118 header bytes but found 30");
  // Trailing bytes.
  b = good;
  b.push_back(0);
  write_bytes(path("d.npy"), b);
  expect_throws_with<IoError>([&] { read_npy(path("d.npy")); },
                              "expected 24 bytes of data for '<f4' [2,3] but found 25");
  // A damaged header: 'shape' misspelt, then a non-integer dim.
  b = good;
  const std::string text(good.begin() + 10, good.begin() + 128);
  b[10 + text.find("shape") + 2] = 'o';
  write_bytes(path("e.npy"), b);
  expect_throws_with<IoError>([&] { read_npy(path("e.npy")); },
                              "bad header: unexpected key 'shope': {'descr'");
  b = good;
  b[10 + text.find("(2") + 1] = 'x';
  write_bytes(path("f.npy"), b);
  expect_throws_with<IoError>([&] { read_npy(path("f.npy")); },
                              "bad header: expected a non-negative integer in 'shape'");
  // An unknown format version.
  b = good;
  b[6] = 9;
  write_bytes(path("g.npy"), b);
  expect_throws_with<UnsupportedError>([&] { read_npy(path("g.npy")); },
                                       ".npy format version 9.0 is not supported");
  // A bool byte that is neither 0 nor 1.
  write_npy(path("h.npy"), Tensor::from_vector<bool>({true, false}, {2}));
  b = file_bytes(path("h.npy"));
  b.back() = 2;
  write_bytes(path("h.npy"), b);
  expect_throws_with<IoError>([&] { read_npy(path("h.npy")); },
                              "element 1: expected a bool byte 0 or 1 but found 2");
  expect_throws_with<ValueError>([&] { write_npy(path("u.npy"), Tensor()); },
                                 "expected a defined tensor");
  expect_throws_with<IoError>([&] { write_npy(path("no/such/dir/a.npy"), Tensor::scalar(1)); },
                              "cannot open");
}

TEST_F(NpyTest, NpzErrors) {
  expect_throws_with<IoError>([&] { read_npz(path("missing.npz")); }, "cannot open");
  // A .npy is not an archive.
  expect_throws_with<IoError>([&] { read_npz(fixture("f4_2x3.npy")); },
                              "bad magic: expected a ZIP archive");
  write_npz(path("a.npz"), {{"x", Tensor::from_vector<float>({1, 2, 3}, {3})},
                            {"y", Tensor::from_vector<int64_t>({4, 5, 6}, {3})}});
  const std::vector<uint8_t> good = file_bytes(path("a.npz"));
  // Cut off: the end of central directory record is gone.
  write_bytes(path("b.npz"), std::vector<uint8_t>(good.begin(), good.begin() + 100));
  expect_throws_with<IoError>([&] { read_npz(path("b.npz")); }, "found none (truncated?)");
  // One data byte flipped in the stored member "x.npy" (its data starts after the 30-byte local
  // header, the 5-byte name and the 128-byte .npy header).
  std::vector<uint8_t> b = good;
  b[30 + 5 + 128] ^= 0x40;
  write_bytes(path("c.npz"), b);
  expect_throws_with<IoError>([&] { read_npz(path("c.npz")); }, "', member 'x.npy': CRC mismatch");
  // The deflate stream of a compressed member damaged.
  write_npz(path("d.npz"), {{"x", Tensor::zeros({64, 64})}}, true);
  b = file_bytes(path("d.npz"));
  for (size_t i = 30 + 5; i < 30 + 5 + 8; ++i) b[i] = 0xFF;
  write_bytes(path("d.npz"), b);
  expect_throws_with<IoError>([&] { read_npz(path("d.npz")); },
                              "', member 'x.npy': corrupt deflate stream");
  // A missing key lists the available ones.
  auto arrays = read_npz(path("a.npz"));
  expect_throws_with<IoError>([&] { npz_get(arrays, "z", path("a.npz")); },
                              "a.npz': no array 'z'; available: 'x', 'y'");
  EXPECT_EQ(npz_get(arrays, "y", path("a.npz")).at<int64_t>({2}), 6);
  expect_throws_with<ValueError>(
      [&] {
        write_npz(path("e.npz"), {{"x", Tensor()}});
      },
      "entry 'x': expected a non-empty key and a defined tensor");
}

}  // namespace
}  // namespace lowbit::data
