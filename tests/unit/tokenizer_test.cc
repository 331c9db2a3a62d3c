// Tokenizer tests on the real stories260K tokenizer.json (sentencepiece-style
// BPE with byte fallback) and the error paths of tokenizer.json parsing.
#include "core/tokenizer/tokenizer.h"

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "test_data.h"

namespace shrinkray {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string ReadAll(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::filesystem::path StoriesDir() { return testing::SharedDataDir() / "stories260K"; }

std::unique_ptr<Tokenizer> LoadStories() {
  auto tok = Tokenizer::FromFile(StoriesDir() / "tokenizer.json");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

TEST(StoriesTokenizerTest, Metadata) {
  SHRINKRAY_REQUIRE_PATH(StoriesDir() / "tokenizer.json");
  auto tok = LoadStories();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->TokenToId("<unk>"), 0);
  EXPECT_EQ(tok->TokenToId("<0x0A>"), 13);
  EXPECT_EQ(tok->IdToToken(1), "<s>");
  EXPECT_EQ(tok->IdToToken(3), "<0x00>");
  EXPECT_EQ(tok->IdToToken(512), "");
  EXPECT_EQ(tok->TokenToId("no such token"), std::nullopt);
}

TEST(StoriesTokenizerTest, EncodesGoldenPrompt) {
  SHRINKRAY_REQUIRE_PATH(StoriesDir() / "golden.json");
  auto tok = LoadStories();
  ASSERT_NE(tok, nullptr);
  const auto golden = nlohmann::json::parse(ReadAll(StoriesDir() / "golden.json"));
  const auto prompt = golden["prompt"].get<std::string>();
  const auto expected = golden["prompt_ids"].get<std::vector<int32_t>>();
  auto ids = tok->Encode(prompt);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, expected);
  // Without special tokens the BOS (id 1) is not added.
  auto plain = tok->Encode(prompt, /*add_special_tokens=*/false);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(*plain, std::vector<int32_t>(expected.begin() + 1, expected.end()));
}

TEST(StoriesTokenizerTest, DecodesGoldenGreedyIds) {
  SHRINKRAY_REQUIRE_PATH(StoriesDir() / "golden.json");
  auto tok = LoadStories();
  ASSERT_NE(tok, nullptr);
  const auto golden = nlohmann::json::parse(ReadAll(StoriesDir() / "golden.json"));
  const auto ids = golden["greedy_from_bos_ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(ids.front(), 1);  // starts at BOS, which decoding skips
  auto text = tok->Decode(ids);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, golden["greedy_from_bos_text"].get<std::string>());
  // Keeping special tokens shows the BOS; the Strip decoder then has no
  // leading space to remove, so the "▁" of "▁Once" stays a space.
  auto with_bos = tok->Decode(ids, /*skip_special_tokens=*/false);
  ASSERT_TRUE(with_bos.ok());
  EXPECT_EQ(*with_bos, "<s> " + golden["greedy_from_bos_text"].get<std::string>());
}

TEST(StoriesTokenizerTest, ByteFallbackForNewlinesAndUnknownCharacters) {
  SHRINKRAY_REQUIRE_PATH(StoriesDir() / "tokenizer.json");
  auto tok = LoadStories();
  ASSERT_NE(tok, nullptr);
  // "\n" is not a piece: it becomes <0x0A> (13). "ж" (D0 B6) is not a piece
  // either: <0xD0> <0xB6> (byte b is id 3 + b). "é" is a piece of its own.
  auto ids = tok->Encode("\n\xD0\xB6\xC3\xA9", /*add_special_tokens=*/false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  // The normalizer prepends "▁" (a piece of its own here) before the newline.
  ASSERT_EQ(ids->size(), 5u);
  EXPECT_EQ(tok->IdToToken((*ids)[0]), "\xE2\x96\x81");
  EXPECT_EQ(tok->IdToToken((*ids)[4]), "\xC3\xA9");
  EXPECT_THAT(std::vector<int32_t>(ids->begin() + 1, ids->end() - 1),
              ElementsAre(13, 3 + 0xD0, 3 + 0xB6));
  auto text = tok->Decode(*ids);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "\n\xD0\xB6\xC3\xA9");
  // A lone continuation byte cannot be decoded: one U+FFFD per byte.
  auto bad = tok->Decode(std::vector<int32_t>{3 + 0xA9, 3 + 0xA9});
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(*bad, "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(StoriesTokenizerTest, EmptyTextIsOnlySpecialTokens) {
  SHRINKRAY_REQUIRE_PATH(StoriesDir() / "tokenizer.json");
  auto tok = LoadStories();
  ASSERT_NE(tok, nullptr);
  auto with = tok->Encode("");
  ASSERT_TRUE(with.ok());
  EXPECT_THAT(*with, ElementsAre(1));
  auto without = tok->Encode("", false);
  ASSERT_TRUE(without.ok());
  EXPECT_TRUE(without->empty());
}

TEST(StoriesTokenizerTest, SpecialTokenInTextIsMatchedBeforeNormalization) {
  SHRINKRAY_REQUIRE_PATH(StoriesDir() / "tokenizer.json");
  auto tok = LoadStories();
  ASSERT_NE(tok, nullptr);
  auto ids = tok->Encode("Lily.</s>Lily.", false);
  ASSERT_TRUE(ids.ok());
  auto lily = tok->Encode("Lily.", false);
  ASSERT_TRUE(lily.ok());
  // Each side is normalized on its own, so both get the "▁" prefix.
  std::vector<int32_t> expected = *lily;
  expected.push_back(2);
  expected.insert(expected.end(), lily->begin(), lily->end());
  EXPECT_EQ(*ids, expected);
  auto kept = tok->Decode(*ids, /*skip_special_tokens=*/false);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, "Lily.</s> Lily.");
}

TEST(StoriesTokenizerTest, RoundTripsEveryTextFile) {
  const auto text_dir = testing::SharedDataDir() / "text";
  SHRINKRAY_REQUIRE_PATH(text_dir);
  SHRINKRAY_REQUIRE_PATH(StoriesDir() / "tokenizer.json");
  auto tok = LoadStories();
  ASSERT_NE(tok, nullptr);
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(text_dir)) {
    const auto name = entry.path().filename().string();
    if (entry.path().extension() != ".txt" && name != "wiki.test.raw") continue;
    const std::string text = ReadAll(entry.path());
    ASSERT_FALSE(text.empty()) << name;
    auto ids = tok->Encode(text, /*add_special_tokens=*/false);
    ASSERT_TRUE(ids.ok()) << name << ": " << ids.status();
    // BPE must compress: far fewer tokens than bytes.
    EXPECT_LT(ids->size(), text.size()) << name;
    auto decoded = tok->Decode(*ids);
    ASSERT_TRUE(decoded.ok()) << name << ": " << decoded.status();
    EXPECT_TRUE(*decoded == text) << name << " does not round-trip";
    ++files;
  }
  EXPECT_EQ(files, 4);
}

// The same tokenizer expressed the other way Llama 2 / Mistral files do it: a
// Metaspace pre-tokenizer (prepend_scheme "first") and a Metaspace decoder
// instead of the Prepend/Replace normalizer and Replace/Strip decoder.
TEST(StoriesTokenizerTest, MetaspaceVariantMatches) {
  SHRINKRAY_REQUIRE_PATH(StoriesDir() / "golden.json");
  auto json = nlohmann::json::parse(ReadAll(StoriesDir() / "tokenizer.json"));
  json["normalizer"] = nullptr;
  json["pre_tokenizer"] = {{"type", "Metaspace"},
                           {"replacement", "\xE2\x96\x81"},
                           {"prepend_scheme", "first"},
                           {"split", false}};
  json["decoder"] = {{"type", "Sequence"},
                     {"decoders",
                      {{{"type", "Metaspace"},
                        {"replacement", "\xE2\x96\x81"},
                        {"prepend_scheme", "first"},
                        {"split", false}},
                       {{"type", "ByteFallback"}},
                       {{"type", "Fuse"}}}}};
  auto tok = Tokenizer::FromJson(json.dump(), "metaspace.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const auto golden = nlohmann::json::parse(ReadAll(StoriesDir() / "golden.json"));
  auto ids = (*tok)->Encode(golden["prompt"].get<std::string>());
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, golden["prompt_ids"].get<std::vector<int32_t>>());
  auto text = (*tok)->Decode(golden["greedy_from_bos_ids"].get<std::vector<int32_t>>());
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, golden["greedy_from_bos_text"].get<std::string>());
  // prepend_scheme "first": text after a leading special token gets no "▁".
  auto after_special = (*tok)->Encode("</s>Once", false);
  auto once = (*tok)->Encode("Once", false);
  ASSERT_TRUE(after_special.ok() && once.ok());
  EXPECT_EQ((*after_special)[0], 2);
  EXPECT_NE(std::vector<int32_t>(after_special->begin() + 1, after_special->end()), *once);
}

TEST(StoriesTokenizerTest, ConfigAddBosFalseOverridesTemplate) {
  SHRINKRAY_REQUIRE_PATH(StoriesDir() / "tokenizer.json");
  const std::string json = ReadAll(StoriesDir() / "tokenizer.json");
  auto tok =
      Tokenizer::FromJson(json, "stories", R"({"add_bos_token": false, "bos_token": "<s>"})");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("Once");
  ASSERT_TRUE(ids.ok());
  EXPECT_NE(ids->front(), 1);
  EXPECT_EQ((*tok)->bos_id(), 1);
}

TEST(TokenizerErrorsTest, UnknownModelTypeNamesTypeAndSource) {
  auto tok = Tokenizer::FromJson(R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})",
                                 "my/tokenizer.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tok.status().message(), HasSubstr("WordPiece"));
  EXPECT_THAT(tok.status().message(), HasSubstr("my/tokenizer.json"));

  auto unigram = Tokenizer::FromJson(R"({"model": {"type": "Unigram", "vocab": []}})", "u.json");
  ASSERT_FALSE(unigram.ok());
  EXPECT_THAT(unigram.status().message(), HasSubstr("Unigram"));
}

TEST(TokenizerErrorsTest, InvalidJson) {
  auto tok = Tokenizer::FromJson("{\"model\": {", "broken.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tok.status().message(), HasSubstr("broken.json"));

  // Valid JSON with wrong types is an error too, not an exception.
  auto wrong = Tokenizer::FromJson(R"({"model": {"type": "BPE", "vocab": {"a": "x"}}})", "w.json");
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  auto bad_merge = Tokenizer::FromJson(
      R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})", "m.json");
  ASSERT_FALSE(bad_merge.ok());
  EXPECT_THAT(bad_merge.status().message(), HasSubstr("not in the vocab"));
  auto bad_pre = Tokenizer::FromJson(
      R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "pre_tokenizer": {"type": "Nope"}})",
      "p.json");
  ASSERT_FALSE(bad_pre.ok());
  EXPECT_THAT(bad_pre.status().message(), HasSubstr("Nope"));
  auto bad_regex = Tokenizer::FromJson(
      R"({"model": {"type": "BPE", "vocab": {"a": 0}},
          "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"},
                            "behavior": "Isolated", "invert": false}})",
      "r.json");
  ASSERT_FALSE(bad_regex.ok());
  EXPECT_THAT(bad_regex.status().message(), HasSubstr("regex"));
}

TEST(TokenizerErrorsTest, MissingFile) {
  auto tok = Tokenizer::FromFile("/nonexistent/dir/tokenizer.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
}

TEST(TokenizerErrorsTest, NonUtf8TextAndOutOfRangeIds) {
  auto tok = Tokenizer::FromJson(
      R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}})",
      "tiny.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ok = (*tok)->Encode("abab");
  ASSERT_TRUE(ok.ok());
  EXPECT_THAT(*ok, ElementsAre(2, 2));

  auto bad = (*tok)->Encode("ab\xff\xfe");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("text is not valid UTF-8 at byte 2"));
  // Overlong encodings and surrogates are not valid UTF-8 either.
  EXPECT_FALSE((*tok)->Encode("\xC0\xAF").ok());
  EXPECT_FALSE((*tok)->Encode("\xED\xA0\x80").ok());

  auto dec = (*tok)->Decode(std::vector<int32_t>{0, 3});
  ASSERT_FALSE(dec.ok());
  EXPECT_EQ(dec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(dec.status().message(), HasSubstr("3"));
  EXPECT_FALSE((*tok)->Decode(std::vector<int32_t>{-1}).ok());

  // No unk_token and no byte fallback: an unknown character is an error.
  auto unknown = (*tok)->Encode("c");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenizerErrorsTest, UnknownCharactersFuseIntoOneUnk) {
  auto tok = Tokenizer::FromJson(
      R"({"model": {"type": "BPE", "vocab": {"<unk>": 0, "a": 1}, "merges": [],
                    "unk_token": "<unk>", "fuse_unk": true}})",
      "unk.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("axyza");
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, ElementsAre(1, 0, 1));
}

}  // namespace
}  // namespace shrinkray
