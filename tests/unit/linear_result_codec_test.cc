// The record a rank broadcasts for each matrix it solved
// (core/pipeline/linear_result_codec.h): decoded, it is the encoded state bit
// for bit; a quantized weight that is exactly its dequantized codes travels
// as the codes alone (two to a byte up to 4 bits), any other weight as its
// float32 values; damaged records are DataLoss.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/algo/quantized_codes.h"
#include "core/model/synthetic.h"
#include "core/pipeline/linear_result_codec.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

// A quantized [rows, cols] matrix (groups of `group`, act_order-like g_idx
// when `shuffled`) and its dequantized weight.
LinearState Quantized(int rows, int cols, int bits, int group, bool shuffled, uint64_t seed) {
  SplitMix64 rng(seed);
  QuantizedWeight q = QuantizedWeight::InColumnGroups(rows, cols, bits, group, /*sym=*/false);
  if (shuffled) {
    q.act_order = true;
    for (int c = 0; c < cols; ++c) q.g_idx[c] = static_cast<int32_t>(rng.Next() % q.num_groups);
  }
  const uint32_t levels = 1u << bits;
  q.codes.resize(static_cast<size_t>(rows) * cols);
  for (uint8_t& c : q.codes) c = static_cast<uint8_t>(rng.Next() % levels);
  for (float& s : q.scales) s = 1e-3f * (1.0f + std::abs(rng.NextSymmetric()));
  for (int32_t& z : q.zeros) z = static_cast<int32_t>(rng.Next() % levels);
  LinearState state;
  state.weight = DequantizeAll(q);
  state.quantized = std::move(q);
  return state;
}

MatrixReport Report(const LinearState& s) {
  MatrixReport r;
  r.module = "model.layers.0.mlp.down_proj";
  r.layer = 0;
  r.rows = s.quantized.has_value() ? s.quantized->rows : 3;
  r.cols = s.quantized.has_value() ? s.quantized->cols : 4;
  r.error = 0.125;
  return r;
}

void ExpectSame(const LinearState& a, const LinearState& b) {
  ASSERT_EQ(a.weight.size(), b.weight.size());
  EXPECT_EQ(std::memcmp(a.weight.data(), b.weight.data(), a.weight.size() * sizeof(float)), 0);
  EXPECT_EQ(a.keep, b.keep);
  EXPECT_EQ(a.pattern, b.pattern);
  ASSERT_EQ(a.quantized.has_value(), b.quantized.has_value());
  if (!a.quantized.has_value()) return;
  const QuantizedWeight &p = *a.quantized, &q = *b.quantized;
  EXPECT_EQ(p.rows, q.rows);
  EXPECT_EQ(p.cols, q.cols);
  EXPECT_EQ(p.bits, q.bits);
  EXPECT_EQ(p.group_size, q.group_size);
  EXPECT_EQ(p.sym, q.sym);
  EXPECT_EQ(p.act_order, q.act_order);
  EXPECT_EQ(p.num_groups, q.num_groups);
  EXPECT_EQ(p.codes, q.codes);
  EXPECT_EQ(p.scales, q.scales);
  EXPECT_EQ(p.zeros, q.zeros);
  EXPECT_EQ(p.g_idx, q.g_idx);
}

TEST(LinearResultCodecTest, DequantizedWeightsTravelAsTheirCodes) {
  struct Case {
    int rows, cols, bits, group;
    bool shuffled;
    size_t max_bytes;  // the codes, scales, zeros and g_idx, plus the record's overhead
  };
  // 4 bits: (rows·cols + 1) / 2 code bytes; 8 bits: rows·cols; 3 bits packs as 4.
  const Case cases[] = {{64, 96, 4, 32, false, 64 * 96 / 2 + 3 * 64 * 8 + 96 * 4 + 600},
                        {33, 37, 3, 8, true, (33 * 37 + 1) / 2 + 5 * 33 * 8 + 37 * 4 + 600},
                        {16, 24, 8, -1, false, 16 * 24 + 16 * 8 + 24 * 4 + 600}};
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << c.rows << "x" << c.cols << " w" << c.bits);
    const LinearState state = Quantized(c.rows, c.cols, c.bits, c.group, c.shuffled, 11);
    const MatrixReport report = Report(state);
    const std::vector<uint8_t> bytes = EncodeLinearResult(state, report);
    EXPECT_LE(bytes.size(), c.max_bytes);
    EXPECT_LT(bytes.size(), state.weight.size() * sizeof(float));
    LinearState back;
    MatrixReport back_report;
    ASSERT_TRUE(DecodeLinearResult(bytes, &back, &back_report).ok());
    ExpectSame(state, back);
    EXPECT_EQ(back_report.module, report.module);
    EXPECT_EQ(back_report.error, report.error);
  }
}

TEST(LinearResultCodecTest, OtherWeightsTravelAsTheirValues) {
  // One value off its code (as no solver leaves it, but the record must not
  // assume): the float32 values go too, and come back exactly.
  LinearState state = Quantized(20, 30, 4, 10, false, 5);
  state.weight[7] = std::nextafter(state.weight[7], 1.0f);
  state.keep.assign(state.weight.size(), 1);
  state.keep[3] = 0;
  state.pattern = "2:4";
  const std::vector<uint8_t> bytes = EncodeLinearResult(state, Report(state));
  EXPECT_GT(bytes.size(), state.weight.size() * sizeof(float));
  LinearState back;
  MatrixReport report;
  ASSERT_TRUE(DecodeLinearResult(bytes, &back, &report).ok());
  ExpectSame(state, back);

  // Not quantized (a pruned matrix): values and mask.
  LinearState pruned;
  pruned.weight = {0.5f, 0.0f, -1.25f, 0.0f, 2.0f, -0.0f, 3.0f, 0.0f, 1.0f, 0.0f, 4.0f, 0.0f};
  pruned.keep = {1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0};
  pruned.pattern = "";
  const std::vector<uint8_t> pruned_bytes = EncodeLinearResult(pruned, Report(pruned));
  LinearState pruned_back;
  ASSERT_TRUE(DecodeLinearResult(pruned_bytes, &pruned_back, &report).ok());
  ExpectSame(pruned, pruned_back);
}

TEST(LinearResultCodecTest, DamagedRecordsAreDataLoss) {
  const LinearState state = Quantized(64, 64, 4, 16, false, 3);
  std::vector<uint8_t> bytes = EncodeLinearResult(state, Report(state));
  ASSERT_LT(bytes.size(), state.weight.size() * sizeof(float));  // sent as codes
  LinearState back;
  MatrixReport report;
  // Cut short.
  const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<long>(bytes.size() / 2));
  EXPECT_EQ(DecodeLinearResult(cut, &back, &report).code(), absl::StatusCode::kDataLoss);
  // A group index out of range in a record sent as codes: refused before the
  // weight is rebuilt from it (g_idx's bytes are unique in the record).
  std::vector<uint8_t> needle(state.quantized->g_idx.size() * sizeof(int32_t));
  std::memcpy(needle.data(), state.quantized->g_idx.data(), needle.size());
  auto at = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
  ASSERT_NE(at, bytes.end());
  const int32_t big = 99;
  std::memcpy(&*(at + 5 * static_cast<long>(sizeof(int32_t))), &big, sizeof(big));
  const absl::Status st = DecodeLinearResult(bytes, &back, &report);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_NE(st.message().find("down_proj"), std::string::npos) << st;
}

}  // namespace
}  // namespace shrinkray
