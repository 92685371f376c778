#include "lowbit/tensor.h"

#include <gtest/gtest.h>

#include <cstdio>

#include "lowbit/fixed_point.h"
#include "lowbit/io/safetensors.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"

namespace lowbit {
namespace {

TEST(Tensor, AlignedAndShapes) {
  Tensor t = Tensor::zeros({3, 5}, DType::kF32);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u);
  EXPECT_EQ(t.numel(), 15);
  EXPECT_EQ(t.nbytes(), 60u);
  EXPECT_EQ(t.shape().str(), "[3,5]");
}

TEST(Tensor, ReshapeIsAView) {
  Tensor x = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor y = x.reshape({3, -1});
  EXPECT_EQ(y.shape(), Shape({3, 2}));
  y.data<float>()[0] = 42;
  EXPECT_EQ(x.at<float>({0, 0}), 42);
  EXPECT_THROW(x.reshape({4, 2}), ShapeError);
  EXPECT_THROW(x.reshape({-1, -1}), ShapeError);
}

TEST(Tensor, DTypeConversion) {
  Tensor x = Tensor::from_vector<float>({-1.7f, 0.0f, 2.9f, 300.0f}, {4});
  EXPECT_EQ(x.to(DType::kS32).to_vector<int32_t>(), (std::vector<int32_t>{-1, 0, 2, 300}));
  EXPECT_EQ(x.to(DType::kBool).to_vector<bool>(), (std::vector<bool>{true, false, true, true}));
  Tensor i = Tensor::from_vector<int64_t>({7, -3}, {2});
  EXPECT_EQ(i.to(DType::kF32).to_vector<float>(), (std::vector<float>{7, -3}));
  EXPECT_THROW(x.data<int32_t>(), DTypeError);
}

// 16-bit codes are a DType (issue 12, item 5): conversions, names, and the file formats.
TEST(Tensor, S16CodesRoundTrip) {
  EXPECT_EQ(dtype_size(DType::kS16), 2u);
  EXPECT_STREQ(dtype_name(DType::kS16), "s16");
  EXPECT_EQ(dtype_from_name("s16"), DType::kS16);
  EXPECT_TRUE(is_integer(DType::kS16));
  EXPECT_EQ(dtype_of<int16_t>(), DType::kS16);
  Tensor x = Tensor::from_vector<float>({-32768.0f, -1.6f, 0.0f, 2.9f, 32767.0f}, {5});
  Tensor q = x.to(DType::kS16);
  EXPECT_EQ(q.to_vector<int16_t>(), (std::vector<int16_t>{-32768, -1, 0, 2, 32767}));
  EXPECT_EQ(q.to(DType::kS32).to_vector<int32_t>(),
            (std::vector<int32_t>{-32768, -1, 0, 2, 32767}));
  EXPECT_EQ(q.str(), "Tensor(s16, [5]) [-32768, -1, 0, 2, 32767]");
  const std::string path = ::testing::TempDir() + "/s16.safetensors";
  io::write_safetensors(path, {{{"codes", q}}, {}});
  const io::SafetensorsFile f = io::read_safetensors(path);
  ASSERT_NE(f.find("codes"), nullptr);
  EXPECT_EQ(f.find("codes")->dtype(), DType::kS16);
  EXPECT_EQ(f.find("codes")->to_vector<int16_t>(), q.to_vector<int16_t>());
  std::remove(path.c_str());
  // The quantization vocabulary uses the same dtype for its code types.
  EXPECT_EQ(quant::quant_range(DType::kS16), (quant::QuantRange{-32768, 32767}));
  EXPECT_EQ(quant::quant_dtype_from_name("int16"), DType::kS16);
}

TEST(Tensor, Printing) {
  Tensor x = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(x.str(), "Tensor(f32, [2,3]) [[1, 2, 3], [4, 5, 6]]");
  Tensor b = Tensor::from_vector<bool>({true, false}, {2});
  EXPECT_EQ(b.str(), "Tensor(bool, [2]) [true, false]");
  Tensor big = Tensor::zeros({100}, DType::kS32);
  EXPECT_NE(big.str().find("..."), std::string::npos);
}

TEST(Tensor, ErrorsNameWhatIsWrong) {
  try {
    Tensor::from_vector<float>({1, 2, 3}, {2, 2});
    FAIL();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("expected 4 elements"), std::string::npos) << e.what();
  }
}

TEST(Rng, PhiloxKnownAnswer) {
  // Known-answer test from the Random123 distribution (kat_vectors: philox4x32_10, all zeros).
  auto r = philox4x32({0, 0}, {0, 0, 0, 0});
  EXPECT_EQ(r[0], 0x6627e8d5u);
  EXPECT_EQ(r[1], 0xe169c58du);
  EXPECT_EQ(r[2], 0xbc57ac4cu);
  EXPECT_EQ(r[3], 0x9b00dbd8u);
  auto r2 =
      philox4x32({0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu});
  EXPECT_EQ(r2[0], 0x408f276du);
  EXPECT_EQ(r2[1], 0x41c83b0eu);
  EXPECT_EQ(r2[2], 0xa20bc7c6u);
  EXPECT_EQ(r2[3], 0x6d5451fdu);
}

TEST(Rng, UniformRangeAndDeterminism) {
  Rng a(7), b(7);
  double sum = 0;
  for (int i = 0; i < 10000; ++i) {
    float u = a.uniform();
    EXPECT_EQ(u, b.uniform());
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.02);
}

TEST(Eager, AddBroadcast) {
  Tensor a = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = Tensor::from_vector<float>({10, 20, 30}, {3});
  Tensor c = a + b;
  EXPECT_EQ(c.to_vector<float>(), (std::vector<float>{11, 22, 33, 14, 25, 36}));
  Tensor col = Tensor::from_vector<float>({100, 200}, {2, 1});
  EXPECT_EQ((a * col).to_vector<float>(), (std::vector<float>{100, 200, 300, 800, 1000, 1200}));
  EXPECT_THROW(a + Tensor::zeros({2}), ShapeError);
  EXPECT_THROW(a + Tensor::zeros({3}, DType::kS32), DTypeError);
}

}  // namespace
}  // namespace lowbit
