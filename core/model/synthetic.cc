#include "core/model/synthetic.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/io/checkpoint.h"
#include "core/io/text_file.h"
#include "core/tensor/convert.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

std::string_view ArchitectureName(Architecture arch) {
  switch (arch) {
    case Architecture::kLlama: return "LlamaForCausalLM";
    case Architecture::kMistral: return "MistralForCausalLM";
    case Architecture::kQwen2: return "Qwen2ForCausalLM";
    case Architecture::kQwen3: return "Qwen3ForCausalLM";
  }
  return "LlamaForCausalLM";
}

std::string_view ModelType(Architecture arch) {
  switch (arch) {
    case Architecture::kLlama: return "llama";
    case Architecture::kMistral: return "mistral";
    case Architecture::kQwen2: return "qwen2";
    case Architecture::kQwen3: return "qwen3";
  }
  return "llama";
}

std::string_view TorchDtype(DType dtype) {
  switch (dtype) {
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
    default: return "float32";
  }
}

struct PendingTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};

}  // namespace

void SetModelSizeFields(nlohmann::json& j, const ModelConfig& c) {
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  // Explicit: after head pruning hidden_size / heads is no longer head_dim.
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
}

nlohmann::json ModelConfigToJson(const ModelConfig& c) {
  nlohmann::json j;
  j["architectures"] = {std::string(ArchitectureName(c.arch))};
  j["model_type"] = std::string(ModelType(c.arch));
  SetModelSizeFields(j, c);
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.has_value()) {
    j["rope_scaling"] = {{"rope_type", c.rope_scaling->rope_type},
                         {"factor", c.rope_scaling->factor},
                         {"low_freq_factor", c.rope_scaling->low_freq_factor},
                         {"high_freq_factor", c.rope_scaling->high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling->original_max_position_embeddings}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_bias"] = c.attention_bias && c.arch == Architecture::kLlama;
  if (c.sliding_window.has_value()) {
    j["sliding_window"] = *c.sliding_window;
    if (c.arch == Architecture::kQwen2 || c.arch == Architecture::kQwen3) j["use_sliding_window"] = true;
  }
  if (c.bos_token_id.has_value()) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_id.has_value()) j["eos_token_id"] = *c.eos_token_id;
  j["torch_dtype"] = c.torch_dtype.empty() ? "float32" : c.torch_dtype;
  return j;
}

ModelConfig MakeLlamaConfig(int hidden_size, int intermediate_size, int num_layers, int num_heads,
                            int num_kv_heads, int vocab_size, int max_positions, bool tie_embeddings) {
  ModelConfig c;
  c.arch = Architecture::kLlama;
  c.architecture_name = "LlamaForCausalLM";
  c.model_type = "llama";
  c.hidden_size = hidden_size;
  c.intermediate_size = intermediate_size;
  c.num_hidden_layers = num_layers;
  c.num_attention_heads = num_heads;
  c.num_key_value_heads = num_kv_heads;
  c.head_dim = hidden_size / num_heads;
  c.vocab_size = vocab_size;
  c.max_position_embeddings = max_positions;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = tie_embeddings;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  c.torch_dtype = "float32";
  return c;
}

absl::Status WriteSyntheticModel(const std::filesystem::path& dir, const ModelConfig& config,
                                 uint64_t seed, DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("synthetic models are F32, F16 or BF16, not ", std::string(DTypeName(dtype))));
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir.string(), ": cannot create folder: ", ec.message()));

  SplitMix64 rng(seed);
  std::vector<PendingTensor> pending;
  auto add = [&](std::string name, std::vector<int64_t> shape, float scale, float offset) -> absl::Status {
    long numel = 1;
    for (int64_t d : shape) numel *= d;
    std::vector<float> values(numel);
    for (float& v : values) v = offset + scale * rng.NextSymmetric();
    PendingTensor t{std::move(name), std::move(shape), std::vector<std::byte>(numel * DTypeSize(dtype))};
    SR_RETURN_IF_ERROR(ConvertFromF32(t.bytes.data(), dtype, values.data(), values.size()));
    pending.push_back(std::move(t));
    return absl::OkStatus();
  };
  const int64_t C = config.hidden_size, I = config.intermediate_size, V = config.vocab_size;
  const int64_t Q = config.q_dim(), KV = config.kv_dim(), D = config.head_dim;
  auto fan_in_scale = [](int64_t fan_in) { return static_cast<float>(std::sqrt(3.0 / fan_in)); };
  SR_RETURN_IF_ERROR(add("model.embed_tokens.weight", {V, C}, fan_in_scale(C), 0.0f));
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    SR_RETURN_IF_ERROR(add(p + "input_layernorm.weight", {C}, 0.1f, 1.0f));
    SR_RETURN_IF_ERROR(add(p + "self_attn.q_proj.weight", {Q, C}, fan_in_scale(C), 0.0f));
    SR_RETURN_IF_ERROR(add(p + "self_attn.k_proj.weight", {KV, C}, fan_in_scale(C), 0.0f));
    SR_RETURN_IF_ERROR(add(p + "self_attn.v_proj.weight", {KV, C}, fan_in_scale(C), 0.0f));
    if (config.attention_bias || config.arch == Architecture::kQwen2) {
      SR_RETURN_IF_ERROR(add(p + "self_attn.q_proj.bias", {Q}, 0.01f, 0.0f));
      SR_RETURN_IF_ERROR(add(p + "self_attn.k_proj.bias", {KV}, 0.01f, 0.0f));
      SR_RETURN_IF_ERROR(add(p + "self_attn.v_proj.bias", {KV}, 0.01f, 0.0f));
    }
    if (config.qk_norm || config.arch == Architecture::kQwen3) {
      SR_RETURN_IF_ERROR(add(p + "self_attn.q_norm.weight", {D}, 0.1f, 1.0f));
      SR_RETURN_IF_ERROR(add(p + "self_attn.k_norm.weight", {D}, 0.1f, 1.0f));
    }
    SR_RETURN_IF_ERROR(add(p + "self_attn.o_proj.weight", {C, Q}, fan_in_scale(Q), 0.0f));
    SR_RETURN_IF_ERROR(add(p + "post_attention_layernorm.weight", {C}, 0.1f, 1.0f));
    SR_RETURN_IF_ERROR(add(p + "mlp.gate_proj.weight", {I, C}, fan_in_scale(C), 0.0f));
    SR_RETURN_IF_ERROR(add(p + "mlp.up_proj.weight", {I, C}, fan_in_scale(C), 0.0f));
    SR_RETURN_IF_ERROR(add(p + "mlp.down_proj.weight", {C, I}, fan_in_scale(I), 0.0f));
  }
  SR_RETURN_IF_ERROR(add("model.norm.weight", {C}, 0.1f, 1.0f));
  if (!config.tie_word_embeddings) {
    SR_RETURN_IF_ERROR(add("lm_head.weight", {V, C}, fan_in_scale(C), 0.0f));
  }

  std::vector<TensorToWrite> tensors;
  tensors.reserve(pending.size());
  for (const auto& t : pending) tensors.push_back({t.name, dtype, t.shape, t.bytes});
  SR_RETURN_IF_ERROR(WriteCheckpoint(dir, tensors, 1));

  ModelConfig written = config;
  written.torch_dtype = std::string(TorchDtype(dtype));
  return WriteTextFile(dir / "config.json", ModelConfigToJson(written).dump(2) + "\n");
}

}  // namespace shrinkray
