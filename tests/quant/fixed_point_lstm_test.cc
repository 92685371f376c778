// gemmlowp's int16 logistic and tanh (lowbit/fixed_point.h; quantization-semantics.md
// 3.7): fixed points of the functions, monotonicity, symmetry and closeness to the real
// functions over the whole int16 input range for every supported format.
//
// Measured accuracy (every int16 input, formats Q0.15 .. Q6.9): logistic within 6.7 units of
// 2^-15, tanh within 12.1. The reciprocal is computed in Q2.13 and shifted left by 1 (logistic)
// or 2 (tanh), so the outputs move in steps of 2 and 4 codes and neighbouring inputs can step
// back by a few codes (the functions are monotone up to that granularity, not code by code).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "lowbit/fixed_point.h"

namespace lowbit::quant {
namespace {

double real_of(int32_t code, int int_bits) { return std::ldexp(double(code), int_bits - 15); }

TEST(FixedPointLogistic, KnownPointsAndTheTopCode) {
  for (int m = 0; m <= 6; ++m) {
    EXPECT_EQ(logistic_int16(0, m), 16384) << m;  // sigma(0) = 1/2
    EXPECT_LT(logistic_int16(-32768, m), 16384) << m;
  }
  // Q3.12: sigma(8) = 0.99966 -> 32757 within a few units; 1.0 is not representable.
  EXPECT_NEAR(logistic_int16(32767, 3), 32757, 3);
  EXPECT_NEAR(logistic_int16(-32768, 3), 11, 3);
  EXPECT_NEAR(logistic_int16(4096, 3), 32768 / (1 + std::exp(-1.0)), 4);
}

TEST(FixedPointLogistic, MonotoneAndCloseToTheRealFunctionEverywhere) {
  for (int m = 0; m <= 6; ++m) {
    int32_t high = -1, worst = 0;
    for (int32_t x = -32768; x <= 32767; ++x) {
      const int32_t y = logistic_int16(static_cast<int16_t>(x), m);
      ASSERT_GE(y, high - 8) << "not monotone at " << x << " (m = " << m << ")";
      ASSERT_GE(y, 0);
      ASSERT_LE(y, 32767);
      high = std::max(high, y);
      const double want = 32768.0 / (1.0 + std::exp(-real_of(x, m)));
      worst = std::max<int32_t>(worst, static_cast<int32_t>(std::lround(std::fabs(y - want))));
      // sigma(-x) = 1 - sigma(x): mirrored codes add to 32767 (1 - 2^-15).
      if (x > -32768 && x != 0) {
        ASSERT_EQ(y + logistic_int16(static_cast<int16_t>(-x), m), 32767) << x;
      }
    }
    EXPECT_LE(worst, 7) << "m = " << m;
  }
}

TEST(FixedPointTanh, OddMonotoneAndCloseToTheRealFunctionEverywhere) {
  for (int m = 0; m <= 6; ++m) {
    EXPECT_EQ(tanh_int16(0, m), 0);
    int32_t high = -32768, worst = 0;
    for (int32_t x = -32768; x <= 32767; ++x) {
      const int32_t y = tanh_int16(static_cast<int16_t>(x), m);
      ASSERT_GE(y, high - 16) << "not monotone at " << x << " (m = " << m << ")";
      ASSERT_GE(y, -32767);
      ASSERT_LE(y, 32767);
      high = std::max(high, y);
      if (x > -32768) {
        ASSERT_EQ(tanh_int16(static_cast<int16_t>(-x), m), -y) << x;
      }
      const double want = 32768.0 * std::tanh(real_of(x, m));
      worst = std::max<int32_t>(worst, static_cast<int32_t>(std::lround(std::fabs(y - want))));
    }
    EXPECT_LE(worst, 13) << "m = " << m;
  }
  // Q6.9: tanh(64) saturates at the top code.
  EXPECT_EQ(tanh_int16(32767, 6), 32767);
  EXPECT_NEAR(tanh_int16(4096, 3), 32768 * std::tanh(1.0), 13);  // tanh(1) in Q3.12
}

}  // namespace
}  // namespace lowbit::quant
