// Synthetic Llama-family models with seeded random weights, for the demo
// command, benchmarks and tests. The bytes are the same on every machine: the
// generator uses only integer arithmetic (splitmix64) and exact conversions.
#pragma once

#include <cstdint>
#include <filesystem>

#include "absl/status/status.h"
#include "core/model/config.h"
#include "core/tensor/dtype.h"
#include "nlohmann/json.hpp"

namespace shrinkray {

// The config.json object Hugging Face writes for `config` (architectures,
// model_type, sizes, rope, tie_word_embeddings, torch_dtype ...).
nlohmann::json ModelConfigToJson(const ModelConfig& config);
// The size fields of config.json (hidden, intermediate, layers, heads, KV
// heads, head_dim, vocab) set from `config`; other keys are left as they are.
void SetModelSizeFields(nlohmann::json& j, const ModelConfig& config);

// A config of the given shape (Llama architecture unless `arch` says otherwise).
ModelConfig MakeLlamaConfig(int hidden_size, int intermediate_size, int num_layers, int num_heads,
                            int num_kv_heads, int vocab_size, int max_positions, bool tie_embeddings);

// Writes <dir>/config.json and <dir>/model.safetensors. Weights are uniform on
// [-a, a] with a = sqrt(3 / fan_in) (unit-variance outputs), norms are 1,
// biases 0.01-scale; stored as `dtype` (F32, F16 or BF16).
absl::Status WriteSyntheticModel(const std::filesystem::path& dir, const ModelConfig& config,
                                 uint64_t seed, DType dtype = DType::kF32);

// The deterministic generator behind WriteSyntheticModel, for tests and benches.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1) on a grid of 2^-23: exact in float on every machine.
  float NextSymmetric() {
    return static_cast<float>(static_cast<int32_t>(Next() >> 40) - (1 << 23)) * 0x1p-23f;
  }

 private:
  uint64_t state_;
};

}  // namespace shrinkray
