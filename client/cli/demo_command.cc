// `shrinkray demo`: the README's main command until the service lands. It makes
// a small Llama model, its tokenizer and a text deterministically (the same
// bytes on every machine), converts the model to BF16, then runs inspect, eval
// (with the F32 model as the reference of the BF16 one) and generate on them.
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cli/commands.h"
#include "core/util/flags.h"
#include "core/io/text_file.h"
#include "core/model/synthetic.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace shrinkray::cli {
namespace {

constexpr const char* kWords[] = {"once", "upon",  "a",     "time", "there", "was",  "little", "girl",
                                  "boy",  "named", "lily",  "tom",  "she",   "he",   "loved",  "to",
                                  "play", "in",    "the",   "park", "saw",   "big",  "red",    "ball",
                                  "and",  "happy", "sun",   "with", "her",   "his",  "friend", "dog"};
constexpr const char* kMeta = "\xE2\x96\x81";  // "▁", sentencepiece's space

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

// Sentences drawn from kWords with a seeded generator: ~16 KB of text.
std::string DemoText(uint64_t seed) {
  SplitMix64 rng(seed);
  std::string text;
  const size_t num_words = sizeof(kWords) / sizeof(kWords[0]);
  while (text.size() < 16000) {
    const int length = 4 + static_cast<int>(rng.Next() % 8);
    for (int w = 0; w < length; ++w) {
      if (w > 0) text += ' ';
      text += kWords[rng.Next() % num_words];
    }
    text += (rng.Next() % 4 == 0) ? ".\n" : ". ";
  }
  return text;
}

std::filesystem::path DefaultWorkdir() {
  const char* tmp = std::getenv("TMPDIR");
  return std::filesystem::path(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") / "shrinkray-demo";
}

}  // namespace

absl::Status RunDemo(const Args& args) {
  SR_ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args, {"workdir"}));
  const std::filesystem::path workdir = flags.Get("workdir", DefaultWorkdir().string());
  const std::filesystem::path model_f32 = workdir / "demo-model-f32";
  const std::filesystem::path model_bf16 = workdir / "demo-model-bf16";
  const std::filesystem::path text_path = workdir / "demo-text.txt";

  const nlohmann::json tokenizer = DemoTokenizerJson();
  const int vocab_size = static_cast<int>(tokenizer["model"]["vocab"].size());
  ModelConfig config = MakeLlamaConfig(/*hidden_size=*/64, /*intermediate_size=*/172, /*num_layers=*/2,
                                       /*num_heads=*/8, /*num_kv_heads=*/4, vocab_size,
                                       /*max_positions=*/256, /*tie_embeddings=*/true);
  const nlohmann::json tokenizer_config = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"},
                                           {"add_bos_token", true}, {"add_eos_token", false}};
  for (const auto& [dir, dtype] : {std::pair{model_f32, DType::kF32}, std::pair{model_bf16, DType::kBF16}}) {
    SR_RETURN_IF_ERROR(WriteSyntheticModel(dir, config, /*seed=*/260, dtype));
    SR_RETURN_IF_ERROR(WriteTextFile(dir / "tokenizer.json", tokenizer.dump(2) + "\n"));
    SR_RETURN_IF_ERROR(WriteTextFile(dir / "tokenizer_config.json", tokenizer_config.dump(2) + "\n"));
  }
  SR_RETURN_IF_ERROR(WriteTextFile(text_path, DemoText(/*seed=*/7)));
  std::printf("demo: wrote %s, %s and %s\n\n", model_f32.c_str(), model_bf16.c_str(), text_path.c_str());

  std::printf("$ shrinkray inspect --model %s\n", model_bf16.c_str());
  SR_RETURN_IF_ERROR(RunInspect({"--model", model_bf16.string()}));
  std::printf("\n$ shrinkray eval --model %s --data %s --seqlen 128 --reference %s\n", model_bf16.c_str(),
              text_path.c_str(), model_f32.c_str());
  SR_RETURN_IF_ERROR(RunEval({"--model", model_bf16.string(), "--data", text_path.string(), "--seqlen", "128",
                              "--reference", model_f32.string()}));
  std::printf("\n$ shrinkray generate --model %s --prompt \"once upon a time\" --max-new-tokens 16\n",
              model_f32.c_str());
  SR_RETURN_IF_ERROR(RunGenerate({"--model", model_f32.string(), "--prompt", "once upon a time",
                                  "--max-new-tokens", "16"}));
  std::printf("\ndemo: done (random weights: the text is not meant to read well)\n");
  return absl::OkStatus();
}

}  // namespace shrinkray::cli
