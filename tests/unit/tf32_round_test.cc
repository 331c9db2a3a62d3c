// The TF32 rounding of the GPU's 3xTF32 Hessian split (core/kernels/tf32_round.h),
// on the CPU: the split x = big + small it feeds must be exact for every
// finite x, big must be a TF32 value (its 13 low mantissa bits zero), and the
// rounding must be to nearest (ties away from zero).
#include "core/kernels/tf32_round.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace shrinkray {
namespace {

float FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
uint32_t Bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

// Every 127th bit pattern (34 million values, both signs, subnormals to the
// largest finite exponents).
TEST(Tf32RoundTest, SplitIsExactAndBigIsNearestTf32) {
  long checked = 0;
  for (uint64_t b = 0; b <= 0xffffffffull; b += 127) {
    const float x = FromBits(static_cast<uint32_t>(b));
    if (!std::isfinite(x) || std::fabs(x) >= 0x1.ffep127f) continue;  // from here up, rounds to inf
    const float big = RoundToTf32(x);
    ASSERT_EQ(Bits(big) & 0x1fffu, 0u) << x;
    const float small = x - big;
    ASSERT_EQ(static_cast<double>(big) + static_cast<double>(small), static_cast<double>(x)) << x;
    // Nearest: the two TF32 neighbours of x are big and big -+ one TF32 unit,
    // so x is no farther from big than half a unit of x's binade (the next one
    // up when rounding carried into it).
    const int exponent = std::ilogb(x == 0.0f ? 1.0f : x);
    const double half_unit = std::ldexp(1.0, std::max(exponent, -126) - 11);
    ASSERT_LE(std::fabs(static_cast<double>(small)), half_unit) << x;
    if (big != 0.0f) ASSERT_EQ(std::signbit(big), std::signbit(x)) << x;
    ++checked;
  }
  EXPECT_GT(checked, 30000000);
}

TEST(Tf32RoundTest, TiesGoAwayFromZeroAndSpecialsPassThrough) {
  // 1 + 2^-11 is halfway between the TF32 values 1 and 1 + 2^-10.
  EXPECT_EQ(RoundToTf32(1.0f + 0x1p-11f), 1.0f + 0x1p-10f);
  EXPECT_EQ(RoundToTf32(-(1.0f + 0x1p-11f)), -(1.0f + 0x1p-10f));
  EXPECT_EQ(RoundToTf32(1.0f + 0x1p-12f), 1.0f);
  // The carry into the exponent: just below 2 rounds to 2.
  EXPECT_EQ(RoundToTf32(0x1.fffffep0f), 2.0f);
  EXPECT_EQ(RoundToTf32(std::numeric_limits<float>::infinity()), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(RoundToTf32(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(Bits(RoundToTf32(-0.0f)), Bits(-0.0f));
  // Past the last TF32 value's half unit, a finite value rounds to inf.
  EXPECT_EQ(RoundToTf32(0x1.ffep127f), std::numeric_limits<float>::infinity());
  EXPECT_EQ(RoundToTf32(0x1.ffcp127f), 0x1.ffcp127f);
}

}  // namespace
}  // namespace shrinkray
