// GPTQ's quantizer (find_params / quantize) and RTN on top of it.
#include "core/algo/quantizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "algo_reference.h"
#include "core/algo/gptq.h"
#include "core/algo/rtn.h"
#include "core/algo/sparsegpt.h"

namespace shrinkray {
namespace {

using ::testing::HasSubstr;

TEST(QuantizerTest, SymmetricGrid) {
  const std::vector<float> x = {-1.0f, 0.5f, 0.25f};
  const QuantParams p = FitQuantParams(x.data(), 3, MaxQ(4), /*sym=*/true);
  EXPECT_EQ(p.scale, 2.0f / 15.0f);
  EXPECT_EQ(p.zero, 8.0f);
  EXPECT_EQ(QuantizeCode(0.5f, p, 15.0f), 12.0f);  // rint(3.75) + 8
  EXPECT_EQ(FakeQuantize(0.0f, p, 15.0f), 0.0f);
}

TEST(QuantizerTest, RoundsHalfToEven) {
  // Row [-7.5, 7.5] at 4 bits symmetric: scale exactly 1, zero 8.
  const std::vector<float> x = {-7.5f, 7.5f};
  const QuantParams p = FitQuantParams(x.data(), 2, MaxQ(4), true);
  ASSERT_EQ(p.scale, 1.0f);
  ASSERT_EQ(p.zero, 8.0f);
  EXPECT_EQ(QuantizeCode(2.5f, p, 15.0f), 10.0f);   // rint(2.5) = 2, std::round would give 3
  EXPECT_EQ(QuantizeCode(3.5f, p, 15.0f), 12.0f);   // rint(3.5) = 4
  EXPECT_EQ(QuantizeCode(-2.5f, p, 15.0f), 6.0f);   // rint(-2.5) = -2
  EXPECT_EQ(QuantizeCode(-7.5f, p, 15.0f), 0.0f);   // rint(-7.5) = -8 -> 0
  EXPECT_EQ(QuantizeCode(7.5f, p, 15.0f), 15.0f);   // rint(7.5) = 8 -> 16, clamped to 15
  EXPECT_EQ(FakeQuantize(2.5f, p, 15.0f), 2.0f);
}

TEST(QuantizerTest, SymmetricNonNegativeRowKeepsXminZero) {
  // Reference quirk: xmin = -xmax only where xmin < 0, so an all-positive row
  // gets scale = xmax / maxq with zero = 8 and loses its upper half.
  const std::vector<float> x = {0.0f, 1.5f, 3.0f};
  const QuantParams p = FitQuantParams(x.data(), 3, MaxQ(4), true);
  EXPECT_EQ(p.scale, 3.0f / 15.0f);
  EXPECT_EQ(p.zero, 8.0f);
  EXPECT_EQ(QuantizeCode(3.0f, p, 15.0f), 15.0f);  // 15 + 8 clamped
  EXPECT_FLOAT_EQ(FakeQuantize(3.0f, p, 15.0f), 7.0f * 0.2f);
}

TEST(QuantizerTest, AllZeroRowUsesUnitRange) {
  const std::vector<float> x(5, 0.0f);
  for (bool sym : {true, false}) {
    const QuantParams p = FitQuantParams(x.data(), 5, MaxQ(3), sym);
    EXPECT_EQ(p.scale, 2.0f / 7.0f);
    EXPECT_EQ(p.zero, sym ? 4.0f : std::rint(1.0f / (2.0f / 7.0f)));
    EXPECT_EQ(FakeQuantize(0.0f, p, 7.0f), 0.0f);
  }
}

TEST(QuantizerTest, AsymmetricZeroPoint) {
  const std::vector<float> x = {-0.3f, 1.2f, 0.7f};
  const QuantParams p = FitQuantParams(x.data(), 3, MaxQ(4), false);
  EXPECT_EQ(p.scale, (1.2f - -0.3f) / 15.0f);
  EXPECT_EQ(p.zero, std::rint(0.3f / p.scale));
  // Zero is on the grid: 0 maps to exactly 0.
  EXPECT_EQ(FakeQuantize(0.0f, p, 15.0f), 0.0f);
}

TEST(QuantizerTest, KeepMaskReadsPrunedAsZero) {
  const std::vector<float> x = {-5.0f, 1.0f, 2.0f};
  const std::vector<uint8_t> keep = {0, 1, 1};
  const QuantParams masked = FitQuantParams(x.data(), 3, MaxQ(4), false, keep.data());
  const std::vector<float> zeroed = {0.0f, 1.0f, 2.0f};
  const QuantParams plain = FitQuantParams(zeroed.data(), 3, MaxQ(4), false);
  EXPECT_EQ(masked.scale, plain.scale);
  EXPECT_EQ(masked.zero, plain.zero);
}

TEST(RtnTest, MatchesFloat64ReferenceWithPartialGroups) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int rows = 17, cols = 200, gs = 64;  // groups 64, 64, 64, 8
  std::vector<float> w(rows * cols);
  for (auto& v : w) v = normal(rng);
  for (bool sym : {true, false}) {
    RtnOptions o;
    o.bits = 4;
    o.group_size = gs;
    o.sym = sym;
    auto got = RtnQuantize(w, rows, cols, o);
    ASSERT_TRUE(got.ok());
    const QuantizedWeight& qw = got->quantized;
    EXPECT_EQ(qw.num_groups, 4);
    int64_t flips = 0;
    for (int r = 0; r < rows; ++r) {
      for (int g = 0; g < 4; ++g) {
        const int c0 = g * gs, n = std::min(gs, cols - c0);
        std::vector<double> seg(w.begin() + r * cols + c0, w.begin() + r * cols + c0 + n);
        const auto rp = algo_test::RefFit(seg.data(), n, 15.0, sym);
        EXPECT_NEAR(qw.scales[g * rows + r], rp.scale, 1e-6 * rp.scale);
        EXPECT_EQ(qw.zeros[g * rows + r], static_cast<int>(rp.zero));
        for (int k = 0; k < n; ++k) {
          if (qw.codes[r * cols + c0 + k] == algo_test::RefCode(seg[k], rp, 15.0)) continue;
          // fp32 and fp64 may only disagree where x / scale is a rounding
          // tie in exact arithmetic; with sym that is the group's max |x|,
          // which sits at exactly ±7.5 steps.
          ++flips;
          const double t = seg[k] / rp.scale;
          EXPECT_NEAR(std::fabs(t - std::trunc(t)), 0.5, 1e-5) << "flip off a tie at " << r << "," << c0 + k;
        }
      }
      for (int c = 0; c < cols; ++c) {
        ASSERT_EQ(qw.g_idx[c], c / gs);
        ASSERT_EQ(qw.Dequantize(r, c), got->weight[r * cols + c]);
      }
    }
    EXPECT_LE(flips, rows * 4);  // at most one tie per group
  }
}

// A group wider than the matrix (any positive group_size is valid, up to
// INT_MAX) is one group per row: the same grid as per row, one group, and no
// overflow in the group count (RTN, GPTQ and SparseGPT's joint grid).
TEST(RtnTest, AGroupWiderThanTheMatrixIsOneGroup) {
  const int rows = 3, cols = 10;
  std::vector<float> w(rows * cols);
  for (int i = 0; i < rows * cols; ++i) w[i] = 0.1f * static_cast<float>((i * 7) % 13) - 0.6f;
  RtnOptions per_row;
  RtnOptions huge;
  huge.group_size = std::numeric_limits<int>::max();
  auto a = RtnQuantize(w, rows, cols, per_row);
  auto b = RtnQuantize(w, rows, cols, huge);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(b->quantized.num_groups, 1);
  EXPECT_EQ(b->quantized.group_size, huge.group_size);
  EXPECT_EQ(b->quantized.g_idx, std::vector<int32_t>(cols, 0));
  EXPECT_EQ(b->weight, a->weight);
  EXPECT_EQ(b->quantized.scales, a->quantized.scales);
  std::vector<float> h(cols * cols, 0.0f);
  for (int j = 0; j < cols; ++j) h[j * cols + j] = 1.0f + 0.1f * j;
  GptqOptions g;
  g.group_size = std::numeric_limits<int>::max();
  auto q = GptqQuantize(w, rows, cols, h, g);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->quantized.num_groups, 1);
  SparseGptOptions s;
  s.sparsity = 0.5;
  s.bits = 4;
  s.group_size = std::numeric_limits<int>::max();
  auto p = SparseGptPrune(w, rows, cols, h, s);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE(p->quantized.has_value());
  EXPECT_EQ(p->quantized->num_groups, 1);
  EXPECT_EQ(p->quantized->scales.size(), static_cast<size_t>(rows));
}

TEST(RtnTest, AsymZerosInRangeAndSixteenBitsNearlyLossless) {
  std::mt19937 rng(4);
  std::normal_distribution<float> normal(0.5f, 1.0f);
  const int rows = 8, cols = 96;
  std::vector<float> w(rows * cols);
  for (auto& v : w) v = normal(rng);
  RtnOptions o;
  o.sym = false;
  o.bits = 3;
  auto got = RtnQuantize(w, rows, cols, o);
  ASSERT_TRUE(got.ok());
  for (int32_t z : got->quantized.zeros) {
    EXPECT_GE(z, 0);
    EXPECT_LE(z, 7);
  }
  o.bits = 16;
  o.allow_wide_bits = true;
  got = RtnQuantize(w, rows, cols, o);
  ASSERT_TRUE(got.ok());
  for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(got->weight[i], w[i], 1e-4);
}

TEST(RtnTest, ValidationNamesTheField) {
  std::vector<float> w(8, 1.0f);
  RtnOptions o;
  o.bits = 1;
  EXPECT_THAT(std::string(RtnQuantize(w, 2, 4, o).status().message()), HasSubstr("bits"));
  o = RtnOptions();
  o.group_size = 0;
  EXPECT_THAT(std::string(RtnQuantize(w, 2, 4, o).status().message()), HasSubstr("group_size"));
  o = RtnOptions();
  EXPECT_THAT(std::string(RtnQuantize(w, 3, 4, o).status().message()), HasSubstr("shape"));
  w[3] = std::nanf("");
  EXPECT_EQ(RtnQuantize(w, 2, 4, o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shrinkray
