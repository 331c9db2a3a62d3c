#include "core/tensor/dtype.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

using ::testing::HasSubstr;

struct DTypeCase {
  DType dtype;
  const char* name;
  size_t size;
  bool is_float;
  bool is_signed;
};

constexpr DTypeCase kCases[] = {
    {DType::kF64, "F64", 8, true, true},  {DType::kF32, "F32", 4, true, true},
    {DType::kF16, "F16", 2, true, true},  {DType::kBF16, "BF16", 2, true, true},
    {DType::kI64, "I64", 8, false, true}, {DType::kI32, "I32", 4, false, true},
    {DType::kI16, "I16", 2, false, true}, {DType::kI8, "I8", 1, false, true},
    {DType::kU8, "U8", 1, false, false},  {DType::kBool, "BOOL", 1, false, false},
};

TEST(DTypeTest, TraitsMatchSafetensorsSpelling) {
  ASSERT_EQ(std::size(kCases), static_cast<size_t>(DType::kCount));
  for (const DTypeCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const DTypeTraits& traits = GetDTypeTraits(c.dtype);
    EXPECT_EQ(traits.dtype, c.dtype);
    EXPECT_EQ(traits.name, c.name);
    EXPECT_EQ(traits.size, c.size);
    EXPECT_EQ(traits.is_float, c.is_float);
    EXPECT_EQ(traits.is_signed, c.is_signed);
    EXPECT_EQ(DTypeSize(c.dtype), c.size);
    EXPECT_EQ(DTypeName(c.dtype), c.name);
  }
}

TEST(DTypeTest, ParseEveryName) {
  for (const DTypeCase& c : kCases) {
    absl::StatusOr<DType> parsed = ParseDType(c.name);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, c.dtype) << c.name;
  }
}

TEST(DTypeTest, ParseUnknownNamesTheString) {
  for (const char* bad : {"F8", "f32", "", "FLOAT32", "F32 "}) {
    absl::StatusOr<DType> parsed = ParseDType(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(parsed.status().message()),
                HasSubstr(std::string("unknown dtype '") + bad + "'"));
  }
}

TEST(DTypeTest, OutOfRangeDTypeDoesNotReadPastTable) {
  EXPECT_EQ(GetDTypeTraits(DType::kCount).name, "INVALID");
}

}  // namespace
}  // namespace shrinkray
