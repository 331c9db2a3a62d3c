// Magnitude pruning: the reference's global threshold with "<=", N:M rows.
#include "core/algo/magnitude.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace shrinkray {
namespace {

using ::testing::HasSubstr;

std::vector<float> RandomW(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> w(n);
  for (auto& v : w) v = normal(rng);
  return w;
}

TEST(MagnitudeTest, GlobalThresholdWithLessOrEqual) {
  const int rows = 37, cols = 61;
  const std::vector<float> w = RandomW(rows * cols, 1);
  std::vector<float> sorted(w.size());
  for (size_t i = 0; i < w.size(); ++i) sorted[i] = std::fabs(w[i]);
  std::sort(sorted.begin(), sorted.end());
  for (double sp : {0.0, 0.25, 0.5, 0.9}) {
    PruneOptions o;
    o.sparsity = sp;
    auto got = MagnitudePrune(w, rows, cols, o);
    ASSERT_TRUE(got.ok());
    const size_t k = static_cast<size_t>(w.size() * sp);
    const float thresh = sorted[k];
    for (size_t i = 0; i < w.size(); ++i) {
      ASSERT_EQ(got->keep[i] == 0, std::fabs(w[i]) <= thresh);
      ASSERT_EQ(got->weight[i], got->keep[i] ? w[i] : 0.0f);
    }
    // Distinct magnitudes: "<=" prunes int(numel * p) + 1.
    EXPECT_EQ(got->pruned, static_cast<int64_t>(k) + 1);
  }
}

TEST(MagnitudeTest, TiesAtThresholdAreAllPruned) {
  const std::vector<float> w = {1, -1, 1, 2, 3, 4, 1, 5};
  PruneOptions o;
  o.sparsity = 0.25;  // k = 2 -> thresh 1 -> all four |w| == 1 pruned
  auto got = MagnitudePrune(w, 2, 4, o);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->pruned, 4);
}

TEST(MagnitudeTest, NmPatternIsExact) {
  const int rows = 13, cols = 64;
  const std::vector<float> w = RandomW(rows * cols, 2);
  for (auto [n, m] : {std::pair{2, 4}, std::pair{4, 8}}) {
    PruneOptions o;
    o.prune_n = n;
    o.prune_m = m;
    auto got = MagnitudePrune(w, rows, cols, o);
    ASSERT_TRUE(got.ok());
    for (int r = 0; r < rows; ++r)
      for (int c0 = 0; c0 < cols; c0 += m) {
        int zeros = 0;
        float max_pruned = -1, min_kept = 1e30f;
        for (int k = 0; k < m; ++k) {
          const size_t i = static_cast<size_t>(r) * cols + c0 + k;
          if (got->weight[i] == 0.0f) {
            ++zeros;
            max_pruned = std::max(max_pruned, std::fabs(w[i]));
          } else {
            min_kept = std::min(min_kept, std::fabs(w[i]));
          }
        }
        ASSERT_EQ(zeros, n);
        ASSERT_LE(max_pruned, min_kept);
      }
    EXPECT_EQ(got->pruned, static_cast<int64_t>(rows) * cols / m * n);
  }
}

TEST(MagnitudeTest, ValidationNamesTheField) {
  const std::vector<float> w = RandomW(32, 3);
  PruneOptions o;
  o.sparsity = 1.5;
  EXPECT_THAT(std::string(MagnitudePrune(w, 4, 8, o).status().message()), HasSubstr("sparsity"));
  o = PruneOptions();
  o.prune_n = -1;
  o.prune_m = 4;
  EXPECT_THAT(std::string(MagnitudePrune(w, 4, 8, o).status().message()), HasSubstr("prune_n"));
  o.prune_n = 2;
  o.prune_m = 16;
  EXPECT_THAT(std::string(MagnitudePrune(w, 4, 8, o).status().message()), HasSubstr("prune_m"));
  o = PruneOptions();
  EXPECT_THAT(std::string(MagnitudePrune(w, 4, 9, o).status().message()), HasSubstr("w"));
}

}  // namespace
}  // namespace shrinkray
