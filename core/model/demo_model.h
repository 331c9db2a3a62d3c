// Deterministic demo assets: a sentencepiece-style tokenizer.json over a
// small word list, text drawn from those words, and a random Llama model
// folder (config, weights, tokenizer files) of any size. Used by
// `shrinkray demo`, the service demo script and the service tests, so that
// nothing outside the build is needed (the same bytes on every machine).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "absl/status/status.h"
#include "core/tensor/dtype.h"
#include "nlohmann/json.hpp"

namespace shrinkray {

nlohmann::json DemoTokenizerJson();

// Sentences of the demo words, seeded: about `min_bytes` of text.
std::string DemoText(uint64_t seed, size_t min_bytes = 16000);

struct DemoModelOptions {
  int hidden_size = 64;
  int intermediate_size = 172;
  int num_layers = 2;
  int num_heads = 8;
  int num_kv_heads = 4;
  int max_positions = 256;
  DType dtype = DType::kF32;
  uint64_t seed = 260;
};

// config.json, model.safetensors, tokenizer.json, tokenizer_config.json.
absl::Status WriteDemoModel(const std::filesystem::path& dir, const DemoModelOptions& options);

}  // namespace shrinkray
