// Byte-level BPE (GPT-2 / Llama 3 / Qwen2 style) on a small tokenizer.json
// built here, with ids worked out by hand from the merges below.
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "test_data.h"

namespace shrinkray {
namespace {

using ::testing::ElementsAre;
using Ids = std::vector<int32_t>;

// GPT-2's byte -> code point table, written out independently of the library:
// printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100.. in
// byte order (so ' ' -> U+0120 'Ġ', '\n' -> U+010A 'Ċ').
std::string ByteSymbol(int b) {
  auto printable = [](int x) {
    return (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
  };
  int cp = b;
  if (!printable(b)) {
    cp = 256;
    for (int x = 0; x < b; ++x) cp += printable(x) ? 0 : 1;
  }
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

constexpr char kLlama3Regex[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Vocabulary: ids 0..255 are the 256 byte symbols (id == byte value), then the
// merge results below (rank r makes id 256 + r), then "xyz" (273, no merge
// builds it: only reachable with ignore_merges), then added tokens 274..276.
//   rank  merge      id   rank  merge      id
//   0     Ġ w        256  9     d o        265
//   1     o r        257  10    do n       266
//   2     l l        258  11    ' t        267
//   3     h e        259  12    1 2        268
//   4     he ll      260  13    Ã ©        269   ("é" = C3 A9)
//   5     hell o     261  14    h Ã©       270   ("hé")
//   6     Ġw or      262  15    Ġ Ġ        271   (two spaces)
//   7     Ġwor l     263  16    3 4        272
//   8     Ġworl d    264
const std::vector<std::pair<std::string, std::string>>& Merges() {
  static const auto* merges = new std::vector<std::pair<std::string, std::string>>{
      {"Ġ", "w"},   {"o", "r"},    {"l", "l"},     {"h", "e"}, {"he", "ll"}, {"hell", "o"},
      {"Ġw", "or"}, {"Ġwor", "l"}, {"Ġworl", "d"}, {"d", "o"}, {"do", "n"},  {"'", "t"},
      {"1", "2"},   {"Ã", "©"},    {"h", "Ã©"},    {"Ġ", "Ġ"}, {"3", "4"}};
  return *merges;
}

enum class Style { kGpt2, kLlama3 };

struct Options {
  Style style = Style::kLlama3;
  bool nfc = false;
  bool add_prefix_space = false;
};

std::string MakeTokenizerJson(const Options& opt) {
  using nlohmann::json;
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteSymbol(b)] = b;
  json merges = json::array();
  int next_id = 256;
  for (const auto& [a, b] : Merges()) {
    vocab[a + b] = next_id++;
    // Llama 3 files use "a b" strings, newer files [a, b] pairs: test both.
    if (opt.style == Style::kLlama3) {
      merges.push_back(a + " " + b);
    } else {
      merges.push_back(json::array({a, b}));
    }
  }
  vocab["xyz"] = 273;

  auto added = [](int id, const std::string& content, bool special) {
    return json{{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
                {"rstrip", false}, {"normalized", false}, {"special", special}};
  };
  json j;
  j["version"] = "1.0";
  j["added_tokens"] =
      json::array({added(274, "<|endoftext|>", true), added(275, "<|begin_of_text|>", true),
                   added(276, "<tool>", false)});
  j["normalizer"] = opt.nfc ? json{{"type", "NFC"}} : json(nullptr);
  const json byte_level = {{"type", "ByteLevel"},
                           {"add_prefix_space", opt.add_prefix_space},
                           {"trim_offsets", true},
                           {"use_regex", opt.style == Style::kGpt2}};
  if (opt.style == Style::kGpt2) {
    j["pre_tokenizer"] = byte_level;
    j["post_processor"] = {{"type", "ByteLevel"},
                           {"add_prefix_space", true},
                           {"trim_offsets", false},
                           {"use_regex", true}};
  } else {
    j["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers",
                           {{{"type", "Split"},
                             {"pattern", {{"Regex", kLlama3Regex}}},
                             {"behavior", "Isolated"},
                             {"invert", false}},
                            byte_level}}};
    j["post_processor"] = {{"type", "Sequence"},
                           {"processors",
                            {{{"type", "ByteLevel"},
                              {"add_prefix_space", true},
                              {"trim_offsets", false},
                              {"use_regex", true}},
                             {{"type", "TemplateProcessing"},
                              {"single",
                               {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                              {"pair", json::array()},
                              {"special_tokens",
                               {{"<|begin_of_text|>",
                                 {{"id", "<|begin_of_text|>"},
                                  {"ids", {275}},
                                  {"tokens", {"<|begin_of_text|>"}}}}}}}}}};
  }
  j["decoder"] = {{"type", "ByteLevel"},
                  {"add_prefix_space", true},
                  {"trim_offsets", true},
                  {"use_regex", true}};
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", opt.style == Style::kLlama3},
                {"vocab", vocab},
                {"merges", merges}};
  return j.dump();
}

std::unique_ptr<Tokenizer> Make(const Options& opt) {
  auto tok = Tokenizer::FromJson(MakeTokenizerJson(opt), "synthetic-tokenizer.json");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

Ids Enc(const Tokenizer& tok, std::string_view text, bool special = false) {
  auto ids = tok.Encode(text, special);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : Ids{};
}

std::string Dec(const Tokenizer& tok, const Ids& ids, bool skip_special = true) {
  auto text = tok.Decode(ids, skip_special);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

class ByteLevelTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    llama3_ = Make({.style = Style::kLlama3});
    gpt2_ = Make({.style = Style::kGpt2});
    ASSERT_NE(llama3_, nullptr);
    ASSERT_NE(gpt2_, nullptr);
  }
  std::unique_ptr<Tokenizer> llama3_;
  std::unique_ptr<Tokenizer> gpt2_;
};

TEST_F(ByteLevelTokenizerTest, Metadata) {
  EXPECT_EQ(llama3_->vocab_size(), 277);
  EXPECT_EQ(llama3_->bos_id(), 275);  // from the template
  EXPECT_EQ(llama3_->eos_id(), 274);  // conventional name
  EXPECT_EQ(llama3_->TokenToId("Ġworld"), 264);
  EXPECT_EQ(llama3_->IdToToken(32), "\xC4\xA0");  // ' ' is written 'Ġ' (U+0120)
  EXPECT_EQ(llama3_->IdToToken(10), "\xC4\x8A");  // '\n' is written 'Ċ' (U+010A)
  EXPECT_EQ(llama3_->IdToToken(274), "<|endoftext|>");
  EXPECT_EQ(gpt2_->bos_id(), 275);  // no template: the conventional name
}

TEST_F(ByteLevelTokenizerTest, HelloWorld) {
  // "hello": l l(2) -> h e ll o; h e(3) -> he ll o; he ll(4); hell o(5) = 261.
  // " world" = Ġ w o r l d: Ġ w(0), o r(1), Ġw or(6), (7), (8) = 264.
  EXPECT_EQ(Enc(*llama3_, "hello world"), (Ids{261, 264}));
  EXPECT_EQ(Enc(*gpt2_, "hello world"), (Ids{261, 264}));
  // The template adds <|begin_of_text|>; GPT-2 style has no template.
  EXPECT_EQ(Enc(*llama3_, "hello world", true), (Ids{275, 261, 264}));
  EXPECT_EQ(Enc(*gpt2_, "hello world", true), (Ids{261, 264}));
  EXPECT_EQ(Dec(*llama3_, {275, 261, 264}), "hello world");
}

TEST_F(ByteLevelTokenizerTest, MultiByteUtf8) {
  // "héllo" = h C3 A9 l l o -> h Ã © l l o: l l(2), Ã ©(13), h Ã©(14) -> hÃ© ll o.
  // " wörld": ö = C3 B6 -> Ġ w Ã ¶ r l d: only Ġ w(0) applies.
  const Ids expected = {270, 258, 'o', 256, 0xC3, 0xB6, 'r', 'l', 'd'};
  EXPECT_EQ(Enc(*llama3_, "h\xC3\xA9llo w\xC3\xB6rld"), expected);
  EXPECT_EQ(Enc(*gpt2_, "h\xC3\xA9llo w\xC3\xB6rld"), expected);
  EXPECT_EQ(Dec(*llama3_, expected), "h\xC3\xA9llo w\xC3\xB6rld");
  // CJK "你好" (E4 BD A0 E5 A5 BD): one word of letters, no merges.
  EXPECT_EQ(Enc(*llama3_, "\xE4\xBD\xA0\xE5\xA5\xBD"), (Ids{0xE4, 0xBD, 0xA0, 0xE5, 0xA5, 0xBD}));
  // "hi 🙂": the emoji (F0 9F 99 82) is punctuation-like and keeps its space.
  EXPECT_EQ(Enc(*llama3_, "hi \xF0\x9F\x99\x82"), (Ids{'h', 'i', ' ', 0xF0, 0x9F, 0x99, 0x82}));
  // A byte sequence that is not UTF-8 decodes to U+FFFD.
  EXPECT_EQ(Dec(*llama3_, {0xC3}), "\xEF\xBF\xBD");
  EXPECT_EQ(Dec(*llama3_, {'a', 0xF0, 0x9F, 'b'}),
            "a\xEF\xBF\xBD"
            "b");
}

TEST_F(ByteLevelTokenizerTest, DigitsSplitIntoGroupsOfThree) {
  // Llama 3: \p{N}{1,3} -> "123" "45"; 1 2(12) -> [12, 3], [4, 5].
  EXPECT_EQ(Enc(*llama3_, "12345"), (Ids{268, '3', '4', '5'}));
  // "1234" -> "123" "4": the 3 4 merge cannot cross the group boundary ...
  EXPECT_EQ(Enc(*llama3_, "1234"), (Ids{268, '3', '4'}));
  // ... while GPT-2's \p{N}+ keeps one word, so 1 2(12) and 3 4(16) both apply.
  EXPECT_EQ(Enc(*gpt2_, "1234"), (Ids{268, 272}));
}

TEST_F(ByteLevelTokenizerTest, PunctuationAndContractions) {
  EXPECT_EQ(Enc(*llama3_, "hello, world!"), (Ids{261, ',', 264, '!'}));
  // "don't" -> "don" "'t": d o(9), do n(10) = 266; ' t(11) = 267.
  EXPECT_EQ(Enc(*llama3_, "don't"), (Ids{266, 267}));
  EXPECT_EQ(Enc(*gpt2_, "don't"), (Ids{266, 267}));
  // Llama 3's contractions are case-insensitive: "'T" is its own word.
  EXPECT_EQ(Enc(*llama3_, "DON'T"), (Ids{'D', 'O', 'N', '\'', 'T'}));
}

TEST_F(ByteLevelTokenizerTest, WhitespaceRuns) {
  // "a   b": \s+(?!\S) leaves the last space to join "b": "a" "  " " b".
  // "  " = Ġ Ġ(15) = 271; " b" has no merge.
  EXPECT_EQ(Enc(*llama3_, "a   b"), (Ids{'a', 271, ' ', 'b'}));
  EXPECT_EQ(Enc(*gpt2_, "a   b"), (Ids{'a', 271, ' ', 'b'}));
  // Trailing spaces are one word.
  EXPECT_EQ(Enc(*llama3_, "hello  "), (Ids{261, 271}));
  // Newlines map to 'Ċ' (id 10); "\n\n" is a word of its own in Llama 3.
  EXPECT_EQ(Enc(*llama3_, "a\n\nb"), (Ids{'a', '\n', '\n', 'b'}));
  // GPT-2's add_prefix_space: " hello" has no Ġ+hello merge.
  auto prefixed = Make({.style = Style::kGpt2, .add_prefix_space = true});
  ASSERT_NE(prefixed, nullptr);
  EXPECT_EQ(Enc(*prefixed, "hello world"), (Ids{' ', 261, 264}));
}

TEST_F(ByteLevelTokenizerTest, AddedTokensInText) {
  EXPECT_EQ(Enc(*llama3_, "hello<|endoftext|> world"), (Ids{261, 274, 264}));
  EXPECT_EQ(Dec(*llama3_, {261, 274, 264}), "hello world");
  EXPECT_EQ(Dec(*llama3_, {261, 274, 264}, /*skip_special=*/false), "hello<|endoftext|> world");
  // Non-special added tokens are matched too and survive skip_special_tokens.
  EXPECT_EQ(Enc(*gpt2_, "x<tool>y"), (Ids{'x', 276, 'y'}));
  EXPECT_EQ(Dec(*gpt2_, {'x', 276, 'y'}), "x<tool>y");
  // An incomplete token is plain text: words "<|" "endoftext" "|", where only
  // d o(9) = 265 applies.
  EXPECT_EQ(Enc(*llama3_, "<|endoftext|"),
            (Ids{'<', '|', 'e', 'n', 265, 'f', 't', 'e', 'x', 't', '|'}));
}

TEST_F(ByteLevelTokenizerTest, IgnoreMerges) {
  // Llama 3 sets ignore_merges: a word in the vocab is taken whole.
  EXPECT_EQ(Enc(*llama3_, "xyz"), (Ids{273}));
  EXPECT_EQ(Enc(*gpt2_, "xyz"), (Ids{'x', 'y', 'z'}));
}

TEST_F(ByteLevelTokenizerTest, NfcNormalizer) {
  // "he" U+0301 "llo": NFC composes e + combining acute into é (C3 A9).
  const std::string decomposed = "he\xCC\x81llo";
  auto nfc = Make({.style = Style::kLlama3, .nfc = true});
  ASSERT_NE(nfc, nullptr);
  EXPECT_EQ(Enc(*nfc, decomposed), (Ids{270, 258, 'o'}));
  EXPECT_EQ(Enc(*nfc, "h\xC3\xA9llo"), (Ids{270, 258, 'o'}));
  // Without NFC the combining mark (CC 81; 0x81 is id 0x81) starts the next
  // word: "he" "\u0301llo".
  EXPECT_EQ(Enc(*llama3_, decomposed), (Ids{259, 0xCC, 0x81, 258, 'o'}));
}

TEST_F(ByteLevelTokenizerTest, RoundTrips) {
  const std::vector<std::string> texts = {
      "",
      "hello world",
      "  leading and trailing  ",
      "tabs\tand\r\nCRLF\n\n\nlines",
      "h\xC3\xA9llo w\xC3\xB6rld, \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x99\x82!",
      "numbers 1234567890 and 3.14159",
      "They'll say we're 'quoted' don't",
      std::string("nul\0byte", 8),
  };
  for (const auto& text : texts) {
    EXPECT_EQ(Dec(*llama3_, Enc(*llama3_, text)), text);
    EXPECT_EQ(Dec(*gpt2_, Enc(*gpt2_, text)), text);
  }
  const auto shakespeare = testing::SharedDataDir() / "text" / "tinyshakespeare_input.txt";
  if (std::filesystem::exists(shakespeare)) {
    std::ifstream in(shakespeare, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str().substr(0, 200000);
    EXPECT_TRUE(Dec(*llama3_, Enc(*llama3_, text)) == text);
    EXPECT_TRUE(Dec(*gpt2_, Enc(*gpt2_, text)) == text);
  }
}

TEST_F(ByteLevelTokenizerTest, Errors) {
  auto bad = llama3_->Encode("ok \xff\xfe");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), ::testing::HasSubstr("at byte 3"));
  auto out_of_range = llama3_->Decode(Ids{261, 277});
  ASSERT_FALSE(out_of_range.ok());
  EXPECT_EQ(out_of_range.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(out_of_range.status().message()), ::testing::HasSubstr("277"));
}

}  // namespace
}  // namespace shrinkray
