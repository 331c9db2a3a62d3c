#include "core/tensor/convert.h"

#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace shrinkray {
namespace {

float FromBits(uint32_t bits) { return std::bit_cast<float>(bits); }
uint32_t Bits(float value) { return std::bit_cast<uint32_t>(value); }

// Nearest value of a binary format with `mantissa_bits` stored bits, minimum
// normal exponent `emin` and maximum exponent `emax`, ties to even, computed
// in double (exact for every float input). Returns the encoded bits.
uint16_t ReferenceRound(float input, int mantissa_bits, int emin, int emax) {
  const int bias = emax;
  const uint16_t sign = std::signbit(input) ? 0x8000 : 0;  // bit 15 in both formats
  const uint16_t inf = static_cast<uint16_t>(((2 * emax + 1) << mantissa_bits));
  const double x = std::fabs(static_cast<double>(input));
  if (std::isinf(x)) return sign | inf;
  if (x == 0) return sign;
  const int e = std::max(std::ilogb(x), emin);  // subnormals share emin's ulp
  const double ulp = std::ldexp(1.0, e - mantissa_bits);
  const double rounded = std::nearbyint(x / ulp) * ulp;  // default mode: ties to even
  if (rounded >= std::ldexp(1.0, emax + 1)) return sign | inf;
  if (rounded == 0) return sign;
  if (rounded < std::ldexp(1.0, emin)) {
    return sign | static_cast<uint16_t>(rounded / std::ldexp(1.0, emin - mantissa_bits));
  }
  const int re = std::ilogb(rounded);
  const double mantissa = (rounded / std::ldexp(1.0, re) - 1.0) * std::ldexp(1.0, mantissa_bits);
  return sign | static_cast<uint16_t>(((re + bias) << mantissa_bits) | static_cast<int>(mantissa));
}

uint16_t ReferenceF16(float x) { return ReferenceRound(x, 10, -14, 15); }
uint16_t ReferenceBF16(float x) { return ReferenceRound(x, 7, -126, 127); }

struct Case {
  float input;
  uint16_t expected;
};

TEST(ConvertF16Test, KnownValues) {
  const float two_m24 = std::ldexp(1.0f, -24);
  const Case cases[] = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3C00},
      {-2.0f, 0xC000},
      {0.5f, 0x3800},
      {65504.0f, 0x7BFF},   // largest finite
      {65519.99f, 0x7BFF},  // just under the Inf midpoint
      {65520.0f, 0x7C00},   // midpoint ties to even: Inf
      {1e10f, 0x7C00},
      {-1e10f, 0xFC00},
      {std::numeric_limits<float>::infinity(), 0x7C00},
      {-std::numeric_limits<float>::infinity(), 0xFC00},
      {std::ldexp(1.0f, -14), 0x0400},  // smallest normal
      {two_m24, 0x0001},                // smallest subnormal
      {-two_m24, 0x8001},
      {std::ldexp(1.0f, -25), 0x0000},             // tie between 0 and 2^-24: even (0)
      {std::ldexp(1.0f, -25) * 1.0001f, 0x0001},   // just above the tie
      {3 * std::ldexp(1.0f, -25), 0x0002},         // tie between 1 and 2 units: even (2)
      {5 * std::ldexp(1.0f, -25), 0x0002},         // tie between 2 and 3 units: even (2)
      {1023 * two_m24, 0x03FF},                    // largest subnormal
      {1023.5f * two_m24, 0x0400},                 // tie rounds up into the normal range
      {1.0f + std::ldexp(1.0f, -11), 0x3C00},      // tie: even mantissa 0
      {1.0f + 3 * std::ldexp(1.0f, -11), 0x3C02},  // tie: even mantissa 2
      {1.0f + std::ldexp(1.0f, -10), 0x3C01},
      {2047.0f, 0x67FF},
      {2049.0f, 0x6800},  // tie at 2048 + 1: even (2048)
      {2051.0f, 0x6802},  // tie at 2048 + 3: even (2052)
      {FLT_MIN, 0x0000},
      {FromBits(0x00000001), 0x0000},  // float subnormal underflows
      {0.1f, 0x2E66},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << c.input << " (0x" << std::hex << Bits(c.input) << ")");
    EXPECT_EQ(F32ToF16(c.input), c.expected);
  }
}

TEST(ConvertF16Test, DecodesKnownBits) {
  EXPECT_EQ(F16ToF32(0x3C00), 1.0f);
  EXPECT_EQ(F16ToF32(0x7BFF), 65504.0f);
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToF32(0x03FF), 1023 * std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToF32(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(Bits(F16ToF32(0x8000)), 0x80000000u);
  EXPECT_EQ(F16ToF32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16ToF32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16ToF32(0xC000), -2.0f);
}

void ExpectQuietF16NaN(uint16_t h, bool negative) {
  EXPECT_EQ(h & 0x7C00, 0x7C00) << std::hex << h;
  EXPECT_NE(h & 0x03FF, 0) << std::hex << h;
  EXPECT_NE(h & 0x0200, 0) << "quiet bit, got 0x" << std::hex << h;
  EXPECT_EQ((h & 0x8000) != 0, negative) << std::hex << h;
}

TEST(ConvertF16Test, NaNStaysQuietNaNWithSign) {
  ExpectQuietF16NaN(F32ToF16(std::numeric_limits<float>::quiet_NaN()), false);
  ExpectQuietF16NaN(F32ToF16(FromBits(0xFFC00000)), true);
  // Signalling NaNs, including one whose payload sits only in dropped bits.
  ExpectQuietF16NaN(F32ToF16(FromBits(0x7F800001)), false);
  ExpectQuietF16NaN(F32ToF16(FromBits(0xFFA00000)), true);
  // Top payload bits survive: 0x7FE00000 has payload 0b11 at the top.
  EXPECT_EQ(F32ToF16(FromBits(0x7FE00000)), 0x7F00);
  // And back: F16 NaNs decode to quiet F32 NaNs with payload and sign.
  EXPECT_EQ(Bits(F16ToF32(0x7E00)), 0x7FC00000u);
  EXPECT_EQ(Bits(F16ToF32(0xFD01)), 0xFFE02000u);  // signalling input gets the quiet bit
  EXPECT_TRUE(std::isnan(F16ToF32(0x7C01)));
}

TEST(ConvertF16Test, ExhaustiveRoundTrip) {
  int checked = 0;
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const uint16_t h = static_cast<uint16_t>(b);
    if ((h & 0x7C00) == 0x7C00 && (h & 0x03FF) != 0) continue;  // NaN
    ASSERT_EQ(F32ToF16(F16ToF32(h)), h) << std::hex << b;
    ++checked;
  }
  EXPECT_EQ(checked, 65536 - 2 * 1023);
}

TEST(ConvertF16Test, MatchesDoubleReferenceOnRandomFloats) {
  std::mt19937 rng(12345);
  std::uniform_int_distribution<uint32_t> any_bits;
  // Half fully random patterns, half concentrated around F16's range
  // (exponents 2^-27 .. 2^17) where the interesting rounding happens.
  std::uniform_int_distribution<uint32_t> exponent(100, 144);
  for (int i = 0; i < 4'000'000; ++i) {
    uint32_t bits = any_bits(rng);
    if (i % 2 == 1) bits = (bits & 0x807FFFFFu) | (exponent(rng) << 23);
    const float x = FromBits(bits);
    if (std::isnan(x)) continue;
    ASSERT_EQ(F32ToF16(x), ReferenceF16(x)) << "input 0x" << std::hex << bits;
  }
}

TEST(ConvertBF16Test, KnownValues) {
  const Case cases[] = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3F80},
      {-2.0f, 0xC000},
      {1.0f + std::ldexp(1.0f, -8), 0x3F80},      // tie: even
      {1.0f + 3 * std::ldexp(1.0f, -8), 0x3F82},  // tie: even
      {1.0f + std::ldexp(1.0f, -7), 0x3F81},
      {1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20), 0x3F81},  // above the tie
      {FLT_MAX, 0x7F80},                                              // rounds up to Inf
      {FromBits(0x7F7F7FFF), 0x7F7F},                                 // just under the midpoint
      {std::numeric_limits<float>::infinity(), 0x7F80},
      {-std::numeric_limits<float>::infinity(), 0xFF80},
      {FLT_MIN, 0x0080},
      {FromBits(0x00010000), 0x0001},  // float subnormal kept
      {FromBits(0x00018000), 0x0002},  // subnormal tie: even
      {FromBits(0x00008000), 0x0000},  // subnormal tie: even (0)
      {FromBits(0x80008001), 0x8001},  // negative subnormal above tie
      {3.140625f, 0x4049},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << c.input << " (0x" << std::hex << Bits(c.input) << ")");
    EXPECT_EQ(F32ToBF16(c.input), c.expected);
  }
  EXPECT_EQ(BF16ToF32(0x3F80), 1.0f);
  EXPECT_EQ(Bits(BF16ToF32(0x0001)), 0x00010000u);
  EXPECT_EQ(BF16ToF32(0xFF80), -std::numeric_limits<float>::infinity());
}

TEST(ConvertBF16Test, NaNStaysQuietNaNWithSign) {
  for (uint32_t nan : {0x7FC00000u, 0x7F800001u, 0xFF800001u, 0x7FA00000u, 0xFFFFFFFFu}) {
    const uint16_t b = F32ToBF16(FromBits(nan));
    SCOPED_TRACE(::testing::Message() << std::hex << nan << " -> " << b);
    EXPECT_EQ(b & 0x7F80, 0x7F80);
    EXPECT_NE(b & 0x0040, 0);  // quiet bit
    EXPECT_EQ(b & 0x8000, (nan >> 16) & 0x8000);
    EXPECT_EQ(b & 0x003F, (nan >> 16) & 0x003F);  // top payload bits kept
  }
  EXPECT_EQ(Bits(BF16ToF32(0x7F81)), 0x7FC10000u);  // signalling -> quiet
  EXPECT_EQ(Bits(BF16ToF32(0xFFC0)), 0xFFC00000u);
}

TEST(ConvertBF16Test, ExhaustiveRoundTrip) {
  int checked = 0;
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const uint16_t h = static_cast<uint16_t>(b);
    if ((h & 0x7F80) == 0x7F80 && (h & 0x007F) != 0) continue;  // NaN
    ASSERT_EQ(F32ToBF16(BF16ToF32(h)), h) << std::hex << b;
    ++checked;
  }
  EXPECT_EQ(checked, 65536 - 2 * 127);
}

TEST(ConvertBF16Test, MatchesDoubleReferenceOnRandomFloats) {
  std::mt19937 rng(67890);
  std::uniform_int_distribution<uint32_t> any_bits;
  for (int i = 0; i < 2'000'000; ++i) {
    const uint32_t bits = any_bits(rng);
    const float x = FromBits(bits);
    if (std::isnan(x)) continue;
    ASSERT_EQ(F32ToBF16(x), ReferenceBF16(x)) << "input 0x" << std::hex << bits;
  }
}

// Copies `values` into a buffer at byte offset 1 so that every conversion
// reads misaligned data, as it may from an mmap'd file.
template <typename T>
std::vector<std::byte> Misaligned(const std::vector<T>& values) {
  std::vector<std::byte> buffer(1 + values.size() * sizeof(T));
  std::memcpy(buffer.data() + 1, values.data(), values.size() * sizeof(T));
  return buffer;
}

template <typename T>
std::vector<float> ToF32(const std::vector<T>& values, DType dtype) {
  const std::vector<std::byte> buffer = Misaligned(values);
  std::vector<float> out(values.size(), -999.0f);
  const absl::Status status = ConvertToF32(out.data(), buffer.data() + 1, dtype, values.size());
  EXPECT_TRUE(status.ok()) << status;
  return out;
}

// The array conversion (vectorized in blocks) gives BF16ToF32's bits for
// every pattern, NaNs quieted, in the blocks and in the tail.
TEST(ConvertArrayTest, BF16ArrayMatchesTheScalarConversionOnEveryPattern) {
  std::vector<uint16_t> patterns(65536 + 37);
  for (size_t i = 0; i < patterns.size(); ++i) patterns[i] = static_cast<uint16_t>(i * 40503u);
  for (size_t i = 0; i < 65536; ++i) patterns[i] = static_cast<uint16_t>(i);
  const std::vector<float> out = ToF32(patterns, DType::kBF16);
  for (size_t i = 0; i < patterns.size(); ++i) {
    ASSERT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(BF16ToF32(patterns[i])))
        << "pattern " << patterns[i] << " at " << i;
  }
}

TEST(ConvertArrayTest, ToF32ByValue) {
  using V = std::vector<float>;
  EXPECT_EQ(ToF32(std::vector<double>{1.5, -2.25, 1e300}, DType::kF64),
            (V{1.5f, -2.25f, std::numeric_limits<float>::infinity()}));
  EXPECT_EQ(ToF32(std::vector<float>{3.5f, -0.0f}, DType::kF32), (V{3.5f, -0.0f}));
  EXPECT_EQ(ToF32(std::vector<uint16_t>{0x3C00, 0xC000, 0x0001}, DType::kF16),
            (V{1.0f, -2.0f, std::ldexp(1.0f, -24)}));
  EXPECT_EQ(ToF32(std::vector<uint16_t>{0x3F80, 0x4049}, DType::kBF16), (V{1.0f, 3.140625f}));
  EXPECT_EQ(ToF32(std::vector<int64_t>{-5, 1LL << 40}, DType::kI64), (V{-5.0f, 1099511627776.0f}));
  EXPECT_EQ(ToF32(std::vector<int32_t>{-3, 7}, DType::kI32), (V{-3.0f, 7.0f}));
  EXPECT_EQ(ToF32(std::vector<int16_t>{-32768, 32767}, DType::kI16), (V{-32768.0f, 32767.0f}));
  EXPECT_EQ(ToF32(std::vector<int8_t>{-128, 127}, DType::kI8), (V{-128.0f, 127.0f}));
  EXPECT_EQ(ToF32(std::vector<uint8_t>{0, 255}, DType::kU8), (V{0.0f, 255.0f}));
}

TEST(ConvertArrayTest, BoolToF32Fails) {
  const uint8_t src[2] = {0, 1};
  float dst[2];
  const absl::Status status = ConvertToF32(dst, src, DType::kBool, 2);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("BOOL"), absl::string_view::npos) << status;
}

TEST(ConvertArrayTest, FromF32) {
  const std::vector<float> src = {1.0f, -2.0f, 65520.0f, 1.0f + std::ldexp(1.0f, -8)};
  std::vector<std::byte> buffer(1 + src.size() * 8);
  void* dst = buffer.data() + 1;  // misaligned on purpose

  ASSERT_TRUE(ConvertFromF32(dst, DType::kF16, src.data(), src.size()).ok());
  uint16_t h[4];
  std::memcpy(h, dst, sizeof(h));
  EXPECT_EQ(h[0], 0x3C00);
  EXPECT_EQ(h[1], 0xC000);
  EXPECT_EQ(h[2], 0x7C00);
  EXPECT_EQ(h[3], 0x3C04);  // 1 + 2^-8 is exact in F16

  ASSERT_TRUE(ConvertFromF32(dst, DType::kBF16, src.data(), src.size()).ok());
  std::memcpy(h, dst, sizeof(h));
  EXPECT_EQ(h[0], 0x3F80);
  EXPECT_EQ(h[1], 0xC000);
  EXPECT_EQ(h[2], 0x4780);  // 65520 = 0x477FF000 rounds up to 65536
  EXPECT_EQ(h[3], 0x3F80);  // tie: even

  ASSERT_TRUE(ConvertFromF32(dst, DType::kF64, src.data(), src.size()).ok());
  double d[4];
  std::memcpy(d, dst, sizeof(d));
  EXPECT_EQ(d[2], 65520.0);

  ASSERT_TRUE(ConvertFromF32(dst, DType::kF32, src.data(), src.size()).ok());
  EXPECT_EQ(std::memcmp(dst, src.data(), src.size() * 4), 0);
}

TEST(ConvertArrayTest, FromF32RejectsNonFloatTargets) {
  const float src[1] = {1.0f};
  int32_t dst[1];
  for (DType dtype : {DType::kI32, DType::kI8, DType::kU8, DType::kBool, DType::kI64}) {
    const absl::Status status = ConvertFromF32(dst, dtype, src, 1);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << DTypeName(dtype);
  }
}

TEST(ConvertArrayTest, ZeroCountAcceptsNull) {
  EXPECT_TRUE(ConvertToF32(nullptr, nullptr, DType::kF32, 0).ok());
  EXPECT_TRUE(ConvertFromF32(nullptr, DType::kF32, nullptr, 0).ok());
}

}  // namespace
}  // namespace shrinkray
