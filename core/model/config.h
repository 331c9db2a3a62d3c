// Llama-family config.json: LlamaForCausalLM, MistralForCausalLM (sliding-window
// attention), Qwen2ForCausalLM (q/k/v bias), Qwen3ForCausalLM (q/k RMSNorm).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace shrinkray {

enum class Architecture { kLlama, kMistral, kQwen2, kQwen3 };

// rope_scaling of type "llama3" (Llama 3.1/3.2): frequencies below/above the
// wavelength band are scaled by 1/factor or kept, smoothly in between.
struct RopeScaling {
  std::string rope_type;  // "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Architecture arch = Architecture::kLlama;
  std::string architecture_name;  // as in config.json, e.g. "LlamaForCausalLM"
  std::string model_type;         // "llama", "mistral", "qwen2", "qwen3"
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int head_dim = 0;  // config's head_dim, else hidden_size / num_attention_heads
  int vocab_size = 0;
  int max_position_embeddings = 0;
  double rope_theta = 10000.0;
  float rms_norm_eps = 1e-6f;
  bool tie_word_embeddings = false;
  bool attention_bias = false;        // q/k/v bias (Qwen2: always true)
  bool o_proj_bias = false;           // o_proj bias (Llama/Qwen3 attention_bias)
  bool qk_norm = false;               // Qwen3
  std::optional<int> sliding_window;  // Mistral (and Qwen when use_sliding_window)
  // Per layer: whether `sliding_window` applies (all layers for Mistral; Qwen's
  // layer_types, else layers >= max_window_layers). Empty when no window.
  std::vector<bool> sliding_window_layers;
  std::optional<RopeScaling> rope_scaling;
  std::optional<int> bos_token_id;
  std::optional<int> eos_token_id;
  std::string torch_dtype;  // "float32", "bfloat16", ... (informational)
  nlohmann::json raw;       // the whole file, for writing derived configs

  int q_dim() const { return num_attention_heads * head_dim; }
  int kv_dim() const { return num_key_value_heads * head_dim; }
  // The attention window of `layer` (keys j with i - j < window), or nullopt.
  std::optional<int> LayerSlidingWindow(int layer) const {
    if (!sliding_window.has_value() || layer < 0 ||
        layer >= static_cast<int>(sliding_window_layers.size()) || !sliding_window_layers[layer]) {
      return std::nullopt;
    }
    return sliding_window;
  }
};

// Parses and validates. `source` names the file in errors. Unknown architecture,
// missing or non-positive sizes, heads not dividing hidden_size (when head_dim is
// absent), kv heads not dividing heads, unknown rope_scaling types: InvalidArgument
// naming the file and the field.
absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& json, std::string_view source);
// Reads `<dir>/config.json` (or the file itself when given a file).
absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& dir_or_file);

}  // namespace shrinkray
