// Bit-exact packing of GPTQ (qweight / qzeros) and compressed-tensors
// (weight_packed / weight_zero_point): round trips over bits x group_size x
// act_order x sym, known answers computed by hand from the published layouts,
// and an independent unpacker written from AutoGPTQ's reference code.
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/algo/quantized_weight.h"
#include "core/io/compressed_tensors_format.h"
#include "core/io/gptq_format.h"
#include "core/model/synthetic.h"
#include "core/tensor/convert.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

using ::testing::HasSubstr;

// A random quantized weight of the given scheme. Asymmetric weights get a zero
// point of 0 somewhere, since that is the case GPTQ v1 cannot store.
QuantizedWeight RandomQuantizedWeight(int rows, int cols, int bits, int group_size, bool act_order,
                                      bool sym, uint64_t seed) {
  SplitMix64 rng(seed);
  QuantizedWeight w;
  w.rows = rows;
  w.cols = cols;
  w.bits = bits;
  w.group_size = group_size;
  w.sym = sym;
  w.act_order = act_order;
  w.num_groups = group_size > 0 ? (cols + group_size - 1) / group_size : 1;
  const int32_t levels = 1 << bits;
  w.codes.resize(static_cast<size_t>(rows) * cols);
  for (uint8_t& c : w.codes) c = static_cast<uint8_t>(rng.Next() % levels);
  w.scales.resize(static_cast<size_t>(w.num_groups) * rows);
  for (float& s : w.scales) s = 0.001f + 0.01f * (rng.NextSymmetric() + 1.0f);
  w.zeros.assign(w.scales.size(), levels / 2);
  if (!sym) {
    for (int32_t& z : w.zeros) z = static_cast<int32_t>(rng.Next() % levels);
    w.zeros[0] = 0;
    w.zeros.back() = levels - 1;
  }
  std::vector<int> order(cols);
  std::iota(order.begin(), order.end(), 0);
  if (act_order) {
    for (int i = cols - 1; i > 0; --i) std::swap(order[i], order[rng.Next() % (i + 1)]);
  }
  w.g_idx.resize(cols);
  for (int k = 0; k < cols; ++k) w.g_idx[order[k]] = group_size > 0 ? k / group_size : 0;
  return w;
}

// ---- Independent GPTQ reference, written from AutoGPTQ's QuantLinear
// pack() loop and its torch unpacking (the "wf" shift table), not from ours.

// intweight[in][out] -> qweight[in*bits/32][out].
std::vector<uint32_t> ReferencePackQweight(const std::vector<std::vector<uint32_t>>& intweight,
                                           int bits) {
  const size_t in = intweight.size(), out = intweight[0].size();
  std::vector<std::vector<uint32_t>> q(in / 32 * bits, std::vector<uint32_t>(out, 0));
  size_t i = 0, row = 0;
  while (row < q.size()) {
    for (size_t col = 0; col < out; ++col) {
      size_t ii = i;
      size_t r = row;
      if (bits != 3) {
        for (size_t j = ii; j < ii + 32 / bits; ++j) q[r][col] |= intweight[j][col] << (bits * (j - ii));
        continue;
      }
      for (size_t j = ii; j < ii + 10; ++j) q[r][col] |= intweight[j][col] << (3 * (j - ii));
      ii += 10;
      q[r][col] |= intweight[ii][col] << 30;
      ++r;
      q[r][col] |= (intweight[ii][col] >> 2) & 1;
      ++ii;
      for (size_t j = ii; j < ii + 10; ++j) q[r][col] |= intweight[j][col] << (3 * (j - ii) + 1);
      ii += 10;
      q[r][col] |= intweight[ii][col] << 31;
      ++r;
      q[r][col] |= (intweight[ii][col] >> 1) & 0x3;
      ++ii;
      for (size_t j = ii; j < ii + 10; ++j) q[r][col] |= intweight[j][col] << (3 * (j - ii) + 2);
    }
    if (bits != 3) {
      i += 32 / bits;
      row += 1;
    } else {
      i += 32;
      row += 3;
    }
  }
  std::vector<uint32_t> flat;
  for (const auto& r : q) flat.insert(flat.end(), r.begin(), r.end());
  return flat;
}

// qweight[in*bits/32][out] -> value of input i, output o.
uint32_t ReferenceUnpack(const std::vector<int32_t>& qweight, int out, int bits, int i, int o) {
  auto word = [&](int r) { return static_cast<uint32_t>(qweight[static_cast<size_t>(r) * out + o]); };
  if (bits != 3) {
    const int pf = 32 / bits;
    return (word(i / pf) >> (bits * (i % pf))) & ((1u << bits) - 1);
  }
  const int block = i / 32, k = i % 32;
  const uint32_t w0 = word(3 * block), w1 = word(3 * block + 1), w2 = word(3 * block + 2);
  if (k < 10) return (w0 >> (3 * k)) & 7;
  if (k == 10) return ((w0 >> 30) & 0x3) | ((w1 << 2) & 0x4);
  if (k < 21) return (w1 >> (3 * (k - 11) + 1)) & 7;
  if (k == 21) return ((w1 >> 31) & 0x1) | ((w2 << 1) & 0x6);
  return (w2 >> (3 * (k - 22) + 2)) & 7;
}

// ---- Known answers.

TEST(GptqPackTest, FourBitKnownAnswer) {
  // One output, inputs 0..7 with codes 0..7: the first word reads 0x76543210.
  std::vector<uint8_t> codes(8);
  std::iota(codes.begin(), codes.end(), 0);
  auto q = PackGptqQweight(codes, /*rows=*/1, /*cols=*/8, /*bits=*/4);
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_EQ(q->size(), 1u);
  EXPECT_EQ(static_cast<uint32_t>((*q)[0]), 0x76543210u);
}

TEST(GptqPackTest, ThreeBitCrossWordKnownAnswer) {
  // 32 inputs in 3 words. Input 10 straddles words 0/1 (bits 30-31, then bit 0),
  // input 21 straddles words 1/2 (bit 31, then bits 0-1).
  std::vector<uint8_t> codes(32, 0);
  codes[0] = 1;   // word0 bit 0
  codes[10] = 7;  // word0 bits 30,31 = 11; word1 bit 0 = 1
  codes[11] = 1;  // word1 bit 1
  codes[21] = 5;  // 0b101: word1 bit 31 = 1; word2 bits 0,1 = 10
  codes[22] = 1;  // word2 bit 2
  codes[31] = 7;  // word2 bits 29..31
  auto q = PackGptqQweight(codes, 1, 32, 3);
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_EQ(q->size(), 3u);
  EXPECT_EQ(static_cast<uint32_t>((*q)[0]), 0xC0000001u);
  EXPECT_EQ(static_cast<uint32_t>((*q)[1]), 0x80000003u);
  EXPECT_EQ(static_cast<uint32_t>((*q)[2]), 0xE0000006u);
  auto back = UnpackGptqQweight(*q, 1, 32, 3);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, codes);
}

TEST(GptqPackTest, EightBitKnownAnswer) {
  const std::vector<uint8_t> codes = {0x01, 0x23, 0x45, 0xFF};
  auto q = PackGptqQweight(codes, 1, 4, 8);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(static_cast<uint32_t>((*q)[0]), 0xFF452301u);
}

TEST(GptqPackTest, QweightIsColumnMajorOverOutputs) {
  // Two outputs: qweight is [in*bits/32, out], so output 1's word is element 1.
  std::vector<uint8_t> codes(16);
  for (int c = 0; c < 8; ++c) {
    codes[c] = c;          // output 0
    codes[8 + c] = 7 - c;  // output 1
  }
  auto q = PackGptqQweight(codes, 2, 8, 4);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(static_cast<uint32_t>((*q)[0]), 0x76543210u);
  EXPECT_EQ(static_cast<uint32_t>((*q)[1]), 0x01234567u);
}

TEST(GptqPackTest, QzerosV1StoresZeroMinusOne) {
  std::vector<int32_t> zeros(8);
  std::iota(zeros.begin(), zeros.end(), 1);  // 1..8 -> stored 0..7
  auto v1 = PackGptqQzeros(zeros, 1, 8, 4, GptqZeroFormat::kV1);
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ(static_cast<uint32_t>((*v1)[0]), 0x76543210u);
  auto v2 = PackGptqQzeros(zeros, 1, 8, 4, GptqZeroFormat::kV2);
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(static_cast<uint32_t>((*v2)[0]), 0x87654321u);
  auto back = UnpackGptqQzeros(*v1, 1, 8, 4, GptqZeroFormat::kV1);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, zeros);
}

TEST(GptqPackTest, V1RefusesZeroPointZeroAndV2HoldsIt) {
  std::vector<int32_t> zeros(8, 8);
  zeros[3] = 0;
  auto v1 = PackGptqQzeros(zeros, 1, 8, 4, GptqZeroFormat::kV1);
  ASSERT_EQ(v1.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(v1.status().message(), HasSubstr("zero point 0"));
  EXPECT_THAT(v1.status().message(), HasSubstr("gptq_v2"));
  auto v2 = PackGptqQzeros(zeros, 1, 8, 4, GptqZeroFormat::kV2);
  ASSERT_TRUE(v2.ok());
  auto back = UnpackGptqQzeros(*v2, 1, 8, 4, GptqZeroFormat::kV2);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, zeros);
}

TEST(GptqPackTest, V1ReadsAllOnesFieldAsTwoToTheBits) {
  // A third-party v1 file whose writer underflowed: field 0xF reads as 16, as
  // vLLM's gptq_gemm computes it.
  const std::vector<int32_t> qzeros = {static_cast<int32_t>(0x7777777Fu)};
  auto zeros = UnpackGptqQzeros(qzeros, 1, 8, 4, GptqZeroFormat::kV1);
  ASSERT_TRUE(zeros.ok());
  EXPECT_EQ((*zeros)[0], 16);
  EXPECT_EQ((*zeros)[1], 8);
}

TEST(GptqPackTest, UnsupportedBitsAreInvalidArgument) {
  for (int bits : {1, 5, 6, 7, 16}) {
    std::vector<uint8_t> codes(64, 0);
    auto q = PackGptqQweight(codes, 1, 64, bits);
    ASSERT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument) << bits;
    EXPECT_THAT(q.status().message(),
                HasSubstr("bits " + std::to_string(bits) +
                          " cannot be packed in gptq; use --format dense"));
  }
}

TEST(GptqPackTest, UnpackableLengthsAreInvalidArgument) {
  std::vector<uint8_t> codes(172, 0);
  auto q = PackGptqQweight(codes, 1, 172, 4);  // 172 * 4 = 688 bits
  ASSERT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(q.status().message(), HasSubstr("not a multiple of 32"));
  EXPECT_THAT(GptqShapeProblem(172, 64, 4, 32), HasSubstr("out_features 172"));
  EXPECT_THAT(GptqShapeProblem(64, 172, 4, 32), HasSubstr("in_features 172"));
  EXPECT_THAT(GptqShapeProblem(64, 96, 4, 64), HasSubstr("group_size 64"));
  EXPECT_EQ(GptqShapeProblem(64, 128, 3, 32), "");
  EXPECT_THAT(GptqShapeProblem(64, 48, 3, -1), HasSubstr("in_features 48"));
}

// ---- Round trips.

TEST(GptqPackTest, RoundTripEveryScheme) {
  const int rows = 64, cols = 192;  // 3-bit needs multiples of 32 on both dims
  uint64_t seed = 1;
  for (int bits : {2, 3, 4, 8}) {
    for (int group_size : {-1, 32, 128, 48}) {
      for (bool act_order : {false, true}) {
        for (bool sym : {true, false}) {
          SCOPED_TRACE(::testing::Message() << "bits " << bits << " group_size " << group_size
                                          << " act_order " << act_order << " sym " << sym);
          const QuantizedWeight w =
              RandomQuantizedWeight(rows, cols, bits, group_size, act_order, sym, ++seed);
          const GptqZeroFormat format = sym ? GptqZeroFormat::kV1 : GptqZeroFormat::kV2;
          auto packed = PackGptq(w, format);
          ASSERT_TRUE(packed.ok()) << packed.status();
          EXPECT_EQ(packed->qweight.size(), static_cast<size_t>(cols) * bits / 32 * rows);
          EXPECT_EQ(packed->qzeros.size(), static_cast<size_t>(w.num_groups) * rows * bits / 32);
          auto back = UnpackGptq(*packed, format, group_size, sym);
          ASSERT_TRUE(back.ok()) << back.status();
          EXPECT_EQ(back->codes, w.codes);
          EXPECT_EQ(back->zeros, w.zeros);
          EXPECT_EQ(back->g_idx, w.g_idx);
          // With one group per row a permutation leaves no trace in g_idx.
          EXPECT_EQ(back->act_order, act_order && group_size > 0);
          for (size_t i = 0; i < w.scales.size(); ++i) {
            ASSERT_EQ(back->scales[i], F16ToF32(F32ToF16(w.scales[i]))) << i;
          }
          // Independent reader: every code through the reference's shifts.
          for (int o = 0; o < rows; ++o) {
            for (int i = 0; i < cols; ++i) {
              ASSERT_EQ(ReferenceUnpack(packed->qweight, rows, bits, i, o),
                        static_cast<uint32_t>(w.codes[static_cast<size_t>(o) * cols + i]))
                  << "input " << i << " output " << o;
            }
          }
        }
      }
    }
  }
}

TEST(GptqPackTest, MatchesReferencePackLoop) {
  for (int bits : {2, 3, 4, 8}) {
    SCOPED_TRACE(bits);
    const int rows = 32, cols = 96;
    const QuantizedWeight w = RandomQuantizedWeight(rows, cols, bits, -1, false, true, 77 + bits);
    std::vector<std::vector<uint32_t>> intweight(cols, std::vector<uint32_t>(rows));
    for (int o = 0; o < rows; ++o) {
      for (int i = 0; i < cols; ++i) intweight[i][o] = w.codes[static_cast<size_t>(o) * cols + i];
    }
    const std::vector<uint32_t> reference = ReferencePackQweight(intweight, bits);
    auto ours = PackGptqQweight(w.codes, rows, cols, bits);
    ASSERT_TRUE(ours.ok());
    ASSERT_EQ(ours->size(), reference.size());
    for (size_t k = 0; k < reference.size(); ++k) {
      ASSERT_EQ(static_cast<uint32_t>((*ours)[k]), reference[k]) << "word " << k;
    }
  }
}

TEST(CompressedTensorsPackTest, KnownAnswersAndPadding) {
  std::vector<int32_t> codes(9);
  std::iota(codes.begin(), codes.end(), 0);  // 0..8: 4-bit pads to 2 words
  auto p = PackCtRows(std::vector<uint8_t>(codes.begin(), codes.end()), 1, 9, 4);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 2u);
  EXPECT_EQ(static_cast<uint32_t>((*p)[0]), 0x76543210u);
  EXPECT_EQ(static_cast<uint32_t>((*p)[1]), 0x00000008u);  // padding is 0

  // 3 bits: 10 values per word, top 2 bits unused, no straddling.
  std::vector<uint8_t> three(11, 0);
  three[9] = 7;
  three[10] = 5;
  auto p3 = PackCtRows(three, 1, 11, 3);
  ASSERT_TRUE(p3.ok());
  ASSERT_EQ(p3->size(), 2u);
  EXPECT_EQ(static_cast<uint32_t>((*p3)[0]), 7u << 27);
  EXPECT_EQ(static_cast<uint32_t>((*p3)[1]), 5u);

  // Zero points pack along dim 0: [rows=9, cols=1] -> [2, 1].
  auto z = PackCtColumns(codes, 9, 1, 4);
  ASSERT_TRUE(z.ok());
  EXPECT_EQ(static_cast<uint32_t>((*z)[0]), 0x76543210u);
  EXPECT_EQ(static_cast<uint32_t>((*z)[1]), 8u);

  auto p8 = PackCtRows(std::vector<uint8_t>{0x01, 0x23, 0x45, 0xFF}, 1, 4, 8);
  ASSERT_TRUE(p8.ok());
  EXPECT_EQ(static_cast<uint32_t>((*p8)[0]), 0xFF452301u);
}

TEST(CompressedTensorsPackTest, UnsupportedBitsAreInvalidArgument) {
  for (int bits : {5, 6, 7}) {
    auto p = PackCtRows(std::vector<uint8_t>(8, 0), 1, 8, bits);
    ASSERT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(p.status().message(),
                HasSubstr("bits " + std::to_string(bits) +
                          " cannot be packed in compressed-tensors; use --format dense"));
  }
}

TEST(CompressedTensorsPackTest, RoundTripEveryScheme) {
  const int rows = 70, cols = 100;  // neither a multiple of any pack factor
  uint64_t seed = 1000;
  for (int bits : {2, 3, 4, 8}) {
    for (int group_size : {-1, 32, 128, 48}) {
      for (bool act_order : {false, true}) {
        for (bool sym : {true, false}) {
          SCOPED_TRACE(::testing::Message() << "bits " << bits << " group_size " << group_size
                                          << " act_order " << act_order << " sym " << sym);
          const QuantizedWeight w =
              RandomQuantizedWeight(rows, cols, bits, group_size, act_order, sym, ++seed);
          auto packed = PackCompressedTensors(w, /*with_zero_point=*/!sym, /*with_g_idx=*/act_order);
          ASSERT_TRUE(packed.ok()) << packed.status();
          const size_t pf = 32 / bits;
          EXPECT_EQ(packed->weight_packed.size(), rows * ((cols + pf - 1) / pf));
          EXPECT_EQ(packed->weight_zero_point.size(),
                    sym ? 0u : ((rows + pf - 1) / pf) * w.num_groups);
          auto back = UnpackCompressedTensors(*packed, group_size);
          ASSERT_TRUE(back.ok()) << back.status();
          EXPECT_EQ(back->codes, w.codes);
          EXPECT_EQ(back->zeros, w.zeros);
          EXPECT_EQ(back->scales, w.scales);
          EXPECT_EQ(back->g_idx, w.g_idx);
          EXPECT_EQ(back->sym, sym);
        }
      }
    }
  }
}

TEST(CompressedTensorsPackTest, SymmetricNeedsMidZeroAndPermutedGroupsNeedGIdx) {
  const QuantizedWeight asym = RandomQuantizedWeight(8, 32, 4, 16, false, false, 5);
  EXPECT_EQ(PackCompressedTensors(asym, false, false).status().code(),
            absl::StatusCode::kInvalidArgument);
  const QuantizedWeight permuted = RandomQuantizedWeight(8, 32, 4, 16, true, true, 6);
  EXPECT_EQ(PackCompressedTensors(permuted, false, false).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CompressedTensorsPackTest, ShapeProblemsFollowVllm) {
  // stories260K's MLP: gate/up [172, 64], down [64, 172].
  EXPECT_EQ(CompressedTensorsShapeProblem(172, 64, 4, 32, /*sym=*/true), "");
  EXPECT_THAT(CompressedTensorsShapeProblem(172, 64, 4, 32, /*sym=*/false),
              HasSubstr("out_features 172"));
  EXPECT_THAT(CompressedTensorsShapeProblem(64, 172, 4, 32, true), HasSubstr("in_features 172"));
  EXPECT_THAT(CompressedTensorsShapeProblem(64, 64, 4, 48, true), HasSubstr("group_size 48"));
  // 2/3 bits have no vLLM kernel; compressed-tensors itself pads.
  EXPECT_EQ(CompressedTensorsShapeProblem(64, 70, 3, -1, true), "");
}

}  // namespace
}  // namespace shrinkray
