#include "core/model/demo_model.h"

#include <cstdio>

#include "core/io/text_file.h"
#include "core/model/synthetic.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

constexpr const char* kWords[] = {"once", "upon",  "a",     "time", "there", "was",  "little", "girl",
                                  "boy",  "named", "lily",  "tom",  "she",   "he",   "loved",  "to",
                                  "play", "in",    "the",   "park", "saw",   "big",  "red",    "ball",
                                  "and",  "happy", "sun",   "with", "her",   "his",  "friend", "dog"};
constexpr const char* kMeta = "\xE2\x96\x81";  // "▁", sentencepiece's space

}  // namespace

// A sentencepiece-style tokenizer.json (the stories260K / Llama 2 layout):
// specials, 256 byte-fallback tokens, single characters, then word pieces
// built by left-to-right merges.
nlohmann::json DemoTokenizerJson() {
  nlohmann::ordered_json vocab;
  vocab["<unk>"] = 0;
  vocab["<s>"] = 1;
  vocab["</s>"] = 2;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  int next_id = 259;
  auto add_piece = [&](const std::string& piece) {
    if (!vocab.contains(piece)) vocab[piece] = next_id++;
  };
  add_piece(kMeta);
  for (char c = 'a'; c <= 'z'; ++c) add_piece(std::string(1, c));
  add_piece(".");
  add_piece(",");
  nlohmann::json merges = nlohmann::json::array();
  for (const char* word : kWords) {
    std::string piece = kMeta;
    for (const char* p = word; *p != '\0'; ++p) {
      const std::string merged = piece + *p;
      if (!vocab.contains(merged)) {
        merges.push_back(piece + " " + std::string(1, *p));
        add_piece(merged);
      }
      piece = merged;
    }
  }
  nlohmann::json added = nlohmann::json::array();
  const char* specials[] = {"<unk>", "<s>", "</s>"};
  for (int i = 0; i < 3; ++i) {
    added.push_back({{"id", i},          {"content", specials[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false},  {"normalized", false},    {"special", true}});
  }
  nlohmann::json tok;
  tok["version"] = "1.0";
  tok["truncation"] = nullptr;
  tok["padding"] = nullptr;
  tok["added_tokens"] = added;
  tok["normalizer"] = {{"type", "Sequence"},
                       {"normalizers",
                        {{{"type", "Prepend"}, {"prepend", kMeta}},
                         {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMeta}}}}};
  tok["pre_tokenizer"] = nullptr;
  tok["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"pair",
       {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
        {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
        {{"SpecialToken", {{"id", "<s>"}, {"type_id", 1}}}},
        {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  tok["decoder"] = {{"type", "Sequence"},
                    {"decoders",
                     {{{"type", "Replace"}, {"pattern", {{"String", kMeta}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  tok["model"] = {{"type", "BPE"},          {"dropout", nullptr},      {"unk_token", "<unk>"},
                  {"continuing_subword_prefix", nullptr},              {"end_of_word_suffix", nullptr},
                  {"fuse_unk", true},       {"byte_fallback", true},   {"ignore_merges", false},
                  {"vocab", vocab},         {"merges", merges}};
  return tok;
}

std::string DemoText(uint64_t seed, size_t min_bytes) {
  SplitMix64 rng(seed);
  std::string text;
  const size_t num_words = sizeof(kWords) / sizeof(kWords[0]);
  while (text.size() < min_bytes) {
    const int length = 4 + static_cast<int>(rng.Next() % 8);
    for (int w = 0; w < length; ++w) {
      if (w > 0) text += ' ';
      text += kWords[rng.Next() % num_words];
    }
    text += (rng.Next() % 4 == 0) ? ".\n" : ". ";
  }
  return text;
}

absl::Status WriteDemoModel(const std::filesystem::path& dir, const DemoModelOptions& o) {
  const nlohmann::json tokenizer = DemoTokenizerJson();
  const int vocab_size = static_cast<int>(tokenizer["model"]["vocab"].size());
  const ModelConfig config = MakeLlamaConfig(o.hidden_size, o.intermediate_size, o.num_layers, o.num_heads,
                                             o.num_kv_heads, vocab_size, o.max_positions, /*tie_embeddings=*/true);
  const nlohmann::json tokenizer_config = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"},
                                           {"add_bos_token", true}, {"add_eos_token", false}};
  SR_RETURN_IF_ERROR(WriteSyntheticModel(dir, config, o.seed, o.dtype));
  SR_RETURN_IF_ERROR(WriteTextFile(dir / "tokenizer.json", tokenizer.dump(2) + "\n"));
  return WriteTextFile(dir / "tokenizer_config.json", tokenizer_config.dump(2) + "\n");
}

}  // namespace shrinkray
