#include "core/util/value_range.h"

#include <cstdint>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace shrinkray {
namespace {

// Every position of a value outside the range is found, first one first: in
// the vectorized blocks of 64, on their edges and in the tail.
TEST(ValueRangeTest, FindsTheFirstValueOutsideAnywhere) {
  for (size_t n : {0, 1, 63, 64, 65, 200, 1000}) {
    const std::vector<int32_t> ok(n, 3);
    EXPECT_EQ(FirstOutOfRange(ok, 0, 15), std::nullopt) << n;
    for (size_t at : {size_t{0}, size_t{1}, size_t{63}, size_t{64}, size_t{127}, n / 2, n - 1}) {
      if (at >= n) continue;
      for (int32_t bad : {-1, 16, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()}) {
        std::vector<int32_t> v = ok;
        v[at] = bad;
        if (at + 5 < n) v[at + 5] = bad;  // a later one is not the first
        EXPECT_EQ(FirstOutOfRange(v, 0, 15), at) << "n " << n << " at " << at << " value " << bad;
      }
    }
  }
}

TEST(ValueRangeTest, BoundsAreInclusiveForAnyRange) {
  const std::vector<int32_t> v = {-5, 7, -5, 7};
  EXPECT_EQ(FirstOutOfRange(v, -5, 7), std::nullopt);
  EXPECT_EQ(FirstOutOfRange(v, -4, 7), 0u);
  EXPECT_EQ(FirstOutOfRange(v, -5, 6), 1u);
  const int32_t lo = std::numeric_limits<int32_t>::min(), hi = std::numeric_limits<int32_t>::max();
  const std::vector<int32_t> extremes = {lo, hi, 0};
  EXPECT_EQ(FirstOutOfRange(extremes, lo, hi), std::nullopt);
  EXPECT_EQ(FirstOutOfRange(extremes, lo + 1, hi), 0u);
}

}  // namespace
}  // namespace shrinkray
