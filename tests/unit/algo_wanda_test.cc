// Wanda: exact per-row counts, metric order, stable ties, N:M patterns.
#include "core/algo/wanda.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace shrinkray {
namespace {

using ::testing::HasSubstr;

struct Data {
  int rows, cols;
  std::vector<float> w, scaler;
};

Data MakeData(int rows, int cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uni(0.01f, 4.0f);
  Data d{rows, cols, std::vector<float>(static_cast<size_t>(rows) * cols), std::vector<float>(cols)};
  for (auto& v : d.w) v = normal(rng);
  for (auto& v : d.scaler) v = uni(rng);
  return d;
}

TEST(WandaTest, PrunesExactlyFloorColsTimesSparsityPerRow) {
  const Data d = MakeData(23, 100, 1);
  for (double sp : {0.0, 0.333, 0.5, 0.55, 0.99}) {
    PruneOptions o;
    o.sparsity = sp;
    auto got = WandaPrune(d.w, d.rows, d.cols, d.scaler, o);
    ASSERT_TRUE(got.ok());
    const int expect = static_cast<int>(d.cols * sp);
    for (int r = 0; r < d.rows; ++r) {
      int pruned = 0;
      float max_pruned = -1, min_kept = 1e30f;
      for (int c = 0; c < d.cols; ++c) {
        const size_t i = static_cast<size_t>(r) * d.cols + c;
        const float metric = std::fabs(d.w[i]) * std::sqrt(d.scaler[c]);
        if (got->keep[i] == 0) {
          ++pruned;
          ASSERT_EQ(got->weight[i], 0.0f);
          max_pruned = std::max(max_pruned, metric);
        } else {
          ASSERT_EQ(got->weight[i], d.w[i]);
          min_kept = std::min(min_kept, metric);
        }
      }
      ASSERT_EQ(pruned, expect) << "sparsity " << sp << " row " << r;
      if (pruned > 0 && pruned < d.cols) ASSERT_LE(max_pruned, min_kept);
    }
    EXPECT_EQ(got->pruned, static_cast<int64_t>(expect) * d.rows);
  }
}

TEST(WandaTest, TiesPruneLowerColumnsFirst) {
  const std::vector<float> w(10, 1.0f), scaler(10, 1.0f);
  PruneOptions o;
  o.sparsity = 0.4;
  auto got = WandaPrune(w, 1, 10, scaler, o);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->keep, (std::vector<uint8_t>{0, 0, 0, 0, 1, 1, 1, 1, 1, 1}));
  o.sparsity = 0;
  o.prune_n = 2;
  o.prune_m = 4;
  got = WandaPrune(std::vector<float>(8, 1.0f), 1, 8, std::vector<float>(8, 1.0f), o);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->keep, (std::vector<uint8_t>{0, 0, 1, 1, 0, 0, 1, 1}));
}

TEST(WandaTest, NmPatternIsExact) {
  const Data d = MakeData(31, 64, 2);
  for (auto [n, m] : {std::pair{2, 4}, std::pair{4, 8}, std::pair{1, 2}}) {
    PruneOptions o;
    o.prune_n = n;
    o.prune_m = m;
    auto got = WandaPrune(d.w, d.rows, d.cols, d.scaler, o);
    ASSERT_TRUE(got.ok());
    for (int r = 0; r < d.rows; ++r)
      for (int c0 = 0; c0 < d.cols; c0 += m) {
        int zeros = 0;
        float max_pruned = -1, min_kept = 1e30f;
        for (int k = 0; k < m; ++k) {
          const size_t i = static_cast<size_t>(r) * d.cols + c0 + k;
          const float metric = std::fabs(d.w[i]) * std::sqrt(d.scaler[c0 + k]);
          if (got->weight[i] == 0.0f) {
            ++zeros;
            max_pruned = std::max(max_pruned, metric);
          } else {
            min_kept = std::min(min_kept, metric);
          }
        }
        ASSERT_EQ(zeros, n);
        ASSERT_LE(max_pruned, min_kept);
      }
  }
}

TEST(WandaTest, ValidationNamesTheField) {
  const Data d = MakeData(4, 16, 3);
  PruneOptions o;
  auto msg = [&](const std::vector<float>& w, const std::vector<float>& s, const PruneOptions& opt) {
    auto got = WandaPrune(w, 4, 16, s, opt);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(got.status().message());
  };
  o.sparsity = 1.0;
  EXPECT_THAT(msg(d.w, d.scaler, o), HasSubstr("sparsity"));
  o = PruneOptions();
  o.prune_n = 3;
  o.prune_m = 2;
  EXPECT_THAT(msg(d.w, d.scaler, o), HasSubstr("prune_n"));
  o.prune_n = 2;
  o.prune_m = 3;
  EXPECT_THAT(msg(d.w, d.scaler, o), HasSubstr("prune_m"));
  o = PruneOptions();
  std::vector<float> s = d.scaler;
  s[2] = -1.0f;
  EXPECT_THAT(msg(d.w, s, o), HasSubstr("scaler_row"));
  EXPECT_THAT(msg(d.w, std::vector<float>(15, 1.0f), o), HasSubstr("scaler_row"));
  std::vector<float> w = d.w;
  w[0] = INFINITY;
  EXPECT_THAT(msg(w, d.scaler, o), HasSubstr("w"));
}

}  // namespace
}  // namespace shrinkray
