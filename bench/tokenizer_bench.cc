// Tokenizer throughput: encode/decode 1 MB of real text with the stories260K
// sentencepiece-style tokenizer (one BPE "word" per text: no pre-tokenizer),
// and with a synthetic Llama-3-style byte-level tokenizer (regex + cache).
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "core/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace shrinkray {
namespace {

constexpr size_t kTextBytes = 1000000;

std::filesystem::path SharedDataDir() {
  if (const char* env = std::getenv("SHRINKRAY_SHARED_DATA"); env != nullptr && *env != '\0') {
    return env;
  }
  return std::filesystem::path(SHRINKRAY_SOURCE_DIR "/../shared/data");
}

// The first 1,000,000 bytes of Tiny Shakespeare (cut back to a UTF-8
// character boundary), or empty when the shared data is absent.
const std::string& BenchText() {
  static const std::string* text = [] {
    std::ifstream in(SharedDataDir() / "text" / "tinyshakespeare_input.txt", std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    std::string s = ss.str();
    if (s.size() > kTextBytes) {
      size_t cut = kTextBytes;
      while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
      s.resize(cut);
    }
    return new std::string(std::move(s));
  }();
  return *text;
}

const Tokenizer* StoriesTokenizer() {
  static const Tokenizer* tok = []() -> const Tokenizer* {
    auto t = Tokenizer::FromFile(SharedDataDir() / "stories260K" / "tokenizer.json");
    return t.ok() ? t->release() : nullptr;
  }();
  return tok;
}

// A Llama-3-style tokenizer: the 256 byte symbols plus merges of common English
// pairs, Split(Llama 3 regex) + ByteLevel pre-tokenizer.
const Tokenizer* ByteLevelTokenizer() {
  static const Tokenizer* tok = []() -> const Tokenizer* {
    auto printable = [](int x) {
      return (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
    };
    nlohmann::json vocab = nlohmann::json::object();
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      int cp = printable(b) ? b : 256 + extra++;
      std::string sym;
      if (cp < 0x80) {
        sym.push_back(static_cast<char>(cp));
      } else {
        sym.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        sym.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
      vocab[sym] = b;
    }
    const std::vector<std::pair<std::string, std::string>> merges = {
        {"Ġ", "t"}, {"h", "e"}, {"Ġt", "he"}, {"i", "n"}, {"e", "r"}, {"a", "n"}, {"o", "u"},
        {"Ġ", "a"}, {"Ġ", "s"}, {"r", "e"},   {"o", "n"}, {"Ġ", "w"}, {"n", "d"}, {"Ġa", "nd"},
        {"Ġ", "m"}, {"o", "r"}, {"e", "s"},   {"l", "l"}, {"Ġ", "I"}, {"i", "s"}, {"Ġ", "h"},
        {"o", "t"}, {"Ġ", "y"}, {"Ġy", "ou"}, {"Ġ", "b"}, {"i", "t"}, {"Ġ", "f"}, {"e", "n"}};
    nlohmann::json merge_list = nlohmann::json::array();
    int id = 256;
    for (const auto& [a, b] : merges) {
      if (!vocab.contains(a + b)) vocab[a + b] = id++;
      merge_list.push_back(a + " " + b);
    }
    nlohmann::json j;
    j["model"] = {
        {"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}, {"ignore_merges", true}};
    j["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern",
            {{"Regex",
              R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
    j["decoder"] = {{"type", "ByteLevel"}};
    auto t = Tokenizer::FromJson(j.dump(), "bench-byte-level");
    return t.ok() ? t->release() : nullptr;
  }();
  return tok;
}

void RunEncode(benchmark::State& state, const Tokenizer* tok) {
  const std::string& text = BenchText();
  if (tok == nullptr || text.empty()) {
    state.SkipWithError("shared data not found (set SHRINKRAY_SHARED_DATA)");
    return;
  }
  size_t tokens = 0;
  for (auto _ : state) {
    auto ids = tok->Encode(text);
    if (!ids.ok()) {
      state.SkipWithError(std::string(ids.status().message()).c_str());
      return;
    }
    tokens = ids->size();
    benchmark::DoNotOptimize(ids->data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(tokens * state.iterations()),
                                                  benchmark::Counter::kIsRate);
}

void BM_EncodeStories1MB(benchmark::State& state) { RunEncode(state, StoriesTokenizer()); }
BENCHMARK(BM_EncodeStories1MB)->Unit(benchmark::kMillisecond);

// Fresh word cache every iteration would need a new tokenizer; this measures
// the steady state (cache warm after the first iteration), as in serving.
void BM_EncodeByteLevel1MB(benchmark::State& state) { RunEncode(state, ByteLevelTokenizer()); }
BENCHMARK(BM_EncodeByteLevel1MB)->Unit(benchmark::kMillisecond);

void BM_DecodeStories1MB(benchmark::State& state) {
  const Tokenizer* tok = StoriesTokenizer();
  const std::string& text = BenchText();
  if (tok == nullptr || text.empty()) {
    state.SkipWithError("shared data not found (set SHRINKRAY_SHARED_DATA)");
    return;
  }
  auto ids = tok->Encode(text);
  if (!ids.ok()) {
    state.SkipWithError(std::string(ids.status().message()).c_str());
    return;
  }
  for (auto _ : state) {
    auto out = tok->Decode(*ids);
    benchmark::DoNotOptimize(out);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens"] = static_cast<double>(ids->size());
}
BENCHMARK(BM_DecodeStories1MB)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace shrinkray

BENCHMARK_MAIN();
