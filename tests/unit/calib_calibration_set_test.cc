// Calibration sampling: windows are seeded, portable slices of one token
// stream; short text is a clear error; the pre-tokenized layout round-trips.
#include "core/calib/calibration_set.h"

#include <cstring>
#include <fstream>
#include <map>
#include <numeric>
#include <vector>

#include "core/io/safetensors.h"
#include "absl/strings/str_cat.h"
#include "core/io/text_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray {
namespace {

using ::testing::HasSubstr;

std::vector<int32_t> Iota(int n) {
  std::vector<int32_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

TEST(CalibUniformTest, StaysInRangeAndIsRoughlyUniform) {
  SplitMix64 rng(7);
  std::map<uint64_t, int> counts;
  for (int i = 0; i < 60000; ++i) {
    const uint64_t v = UniformInclusive(5, rng);
    ASSERT_LE(v, 5u);
    ++counts[v];
  }
  ASSERT_EQ(counts.size(), 6u);
  for (const auto& [v, c] : counts) EXPECT_NEAR(c, 10000, 500) << v;
  SplitMix64 zero(1);
  EXPECT_EQ(UniformInclusive(0, zero), 0u);
}

TEST(CalibSamplingTest, WindowsAreSlicesOfTheStream) {
  std::vector<int32_t> ids(1000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7919) % 512);
  CalibrationOptions o{16, 100, 3};
  auto set = SampleCalibrationWindows(ids, o, "mem");
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->num_samples, 16);
  ASSERT_EQ(set->seqlen, 100);
  ASSERT_EQ(set->tokens.size(), 1600u);
  ASSERT_EQ(set->starts.size(), 16u);
  EXPECT_EQ(set->source_tokens, 1000);
  for (int i = 0; i < 16; ++i) {
    const int64_t s = set->starts[i];
    ASSERT_GE(s, 0);
    ASSERT_LE(s, 900);
    for (int t = 0; t < 100; ++t) ASSERT_EQ(set->Window(i)[t], ids[s + t]) << "window " << i;
  }
}

TEST(CalibSamplingTest, DeterministicForASeedAndPortable) {
  const std::vector<int32_t> ids = Iota(1000);
  auto a = SampleCalibrationWindows(ids, {8, 100, 0}, "mem");
  auto b = SampleCalibrationWindows(ids, {8, 100, 0}, "mem");
  auto c = SampleCalibrationWindows(ids, {8, 100, 1}, "mem");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->tokens, b->tokens);
  EXPECT_EQ(a->starts, b->starts);
  EXPECT_NE(a->starts, c->starts);
  // SplitMix64 + rejection draws are integer-only: pinned so a change of
  // sampler (or a platform difference) cannot slip through.
  const std::vector<int64_t> expected = {12, 777, 77, 614, 830, 466, 893, 469};
  EXPECT_EQ(a->starts, expected);
}

TEST(CalibSamplingTest, CoversBothEndsAndAllowsOverlap) {
  // n = L + 1: the only starts are 0 and 1; 64 draws see both.
  const std::vector<int32_t> ids = Iota(11);
  auto set = SampleCalibrationWindows(ids, {64, 10, 5}, "mem");
  ASSERT_TRUE(set.ok()) << set.status();
  bool saw0 = false, saw1 = false;
  for (int64_t s : set->starts) {
    saw0 |= s == 0;
    saw1 |= s == 1;
  }
  EXPECT_TRUE(saw0 && saw1);
}

TEST(CalibSamplingTest, ShortStreamNamesTokenCount) {
  const std::vector<int32_t> ids = Iota(10);
  auto set = SampleCalibrationWindows(ids, {4, 10, 0}, "tiny.txt");
  ASSERT_FALSE(set.ok());
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(set.status().message(), HasSubstr("calibration text tiny.txt has 10 tokens; need at least 11"));
  // Exactly L + 1 is enough.
  EXPECT_TRUE(SampleCalibrationWindows(Iota(11), {4, 10, 0}, "ok").ok());
}

TEST(CalibSamplingTest, RejectsNonPositiveSizes) {
  const std::vector<int32_t> ids = Iota(100);
  EXPECT_THAT(SampleCalibrationWindows(ids, {0, 10, 0}, "m").status().message(), HasSubstr("num_samples"));
  EXPECT_THAT(SampleCalibrationWindows(ids, {4, 0, 0}, "m").status().message(), HasSubstr("seqlen"));
}

void WriteIds(const std::filesystem::path& path, const std::vector<int32_t>& ids, std::vector<int64_t> shape,
              DType dtype = DType::kI32, const std::string& name = "input_ids") {
  std::vector<std::byte> bytes(ids.size() * 4);
  std::memcpy(bytes.data(), ids.data(), bytes.size());
  std::vector<TensorToWrite> t = {{name, dtype, std::move(shape), bytes}};
  ASSERT_TRUE(WriteSafetensors(path, t).ok());
}

TEST(CalibPretokenizedTest, ReadsRowsAndTruncates) {
  const auto dir = testing::MakeTempDir("calib-tok");
  const auto path = dir / "calib.safetensors";
  WriteIds(path, Iota(15), {3, 5});
  auto all = CalibrationSetFromTokens(path, {128, 2048, 0});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_TRUE(all->pretokenized);
  EXPECT_EQ(all->num_samples, 3);
  EXPECT_EQ(all->seqlen, 5);
  EXPECT_EQ(all->tokens, Iota(15));
  auto part = CalibrationSetFromTokens(path, {2, 3, 0});
  ASSERT_TRUE(part.ok()) << part.status();
  EXPECT_EQ(part->tokens, (std::vector<int32_t>{0, 1, 2, 5, 6, 7}));
}

TEST(CalibPretokenizedTest, BadFilesAreClearErrors) {
  const auto dir = testing::MakeTempDir("calib-tok-bad");
  WriteIds(dir / "f32.safetensors", Iota(6), {2, 3}, DType::kF32);
  auto r = CalibrationSetFromTokens(dir / "f32.safetensors", {});
  EXPECT_THAT(r.status().message(), HasSubstr("expected I32 [N, L]"));
  WriteIds(dir / "name.safetensors", Iota(6), {2, 3}, DType::kI32, "tokens");
  r = CalibrationSetFromTokens(dir / "name.safetensors", {});
  EXPECT_THAT(r.status().message(), HasSubstr("no tensor \"input_ids\""));
  WriteIds(dir / "rank.safetensors", Iota(6), {6});
  r = CalibrationSetFromTokens(dir / "rank.safetensors", {});
  EXPECT_THAT(r.status().message(), HasSubstr("I32 [6]"));
}

class CalibStoriesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_dir_ = testing::SharedDataDir() / "stories260K";
    train_ = testing::SharedDataDir() / "text" / "tinystories_train_prefix.txt";
    SHRINKRAY_REQUIRE_PATH(model_dir_ / "tokenizer.json");
    SHRINKRAY_REQUIRE_PATH(train_);
    auto tokenizer = Tokenizer::FromFile(model_dir_ / "tokenizer.json");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(*tokenizer);
  }
  std::filesystem::path model_dir_, train_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(CalibStoriesTest, TextWindowsAreSlicesOfTheEncodedFile) {
  auto set = LoadCalibrationSet(train_, *tokenizer_, {16, 128, 0});
  ASSERT_TRUE(set.ok()) << set.status();
  auto text = ReadTextFile(train_);
  ASSERT_TRUE(text.ok());
  auto ids = tokenizer_->Encode(*text, true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(set->source_tokens, static_cast<int64_t>(ids->size()));
  EXPECT_EQ((*ids)[0], 1);  // one BOS at the start of the stream only
  for (int i = 0; i < 16; ++i) {
    for (int t = 0; t < 128; ++t) ASSERT_EQ(set->Window(i)[t], (*ids)[set->starts[i] + t]);
  }
}

TEST_F(CalibStoriesTest, ShortTextNamesFileAndTokenCount) {
  const auto dir = testing::MakeTempDir("calib-short");
  const auto path = dir / "short.txt";
  {
    std::ofstream out(path);
    out << "Once upon a time there was a cat.";
  }
  auto ids = tokenizer_->Encode("Once upon a time there was a cat.", true);
  ASSERT_TRUE(ids.ok());
  auto set = LoadCalibrationSet(path, *tokenizer_, {4, 2048, 0});
  ASSERT_FALSE(set.ok());
  EXPECT_THAT(set.status().message(),
              HasSubstr(absl::StrCat("calibration text ", path.string(), " has ", ids->size(),
                                     " tokens; need at least 2049")));
}

}  // namespace
}  // namespace shrinkray
