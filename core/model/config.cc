#include "core/model/config.h"

#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

using json = nlohmann::json;

constexpr const char* kSupported =
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM";

absl::Status Invalid(const std::string& source, const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", message));
}

// Reads an optional integer field (absent or null -> nullopt). Floats are
// rejected rather than truncated: a size written as 64.5 is a broken config.
absl::StatusOr<std::optional<int64_t>> OptionalInt(const json& obj, const char* key,
                                                   const std::string& source,
                                                   const std::string& prefix = "") {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<int64_t>();
  if (!it->is_number_integer()) {
    return Invalid(source, absl::StrCat(prefix, key, " must be an integer, got ", it->dump()));
  }
  return std::optional<int64_t>(it->get<int64_t>());
}

// A required size: present, integer, in (0, INT_MAX].
absl::StatusOr<int> RequiredPositiveInt(const json& obj, const char* key,
                                        const std::string& source) {
  SR_ASSIGN_OR_RETURN(std::optional<int64_t> value, OptionalInt(obj, key, source));
  if (!value.has_value()) return Invalid(source, absl::StrCat("missing required field ", key));
  if (*value <= 0 || *value > std::numeric_limits<int>::max()) {
    return Invalid(source, absl::StrCat(key, " must be positive, got ", *value));
  }
  return static_cast<int>(*value);
}

absl::StatusOr<std::optional<double>> OptionalNumber(const json& obj, const char* key,
                                                     const std::string& source,
                                                     const std::string& prefix = "") {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<double>();
  if (!it->is_number()) {
    return Invalid(source, absl::StrCat(prefix, key, " must be a number, got ", it->dump()));
  }
  return std::optional<double>(it->get<double>());
}

absl::StatusOr<std::optional<bool>> OptionalBool(const json& obj, const char* key,
                                                 const std::string& source) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<bool>();
  if (!it->is_boolean()) {
    return Invalid(source, absl::StrCat(key, " must be a boolean, got ", it->dump()));
  }
  return std::optional<bool>(it->get<bool>());
}

absl::StatusOr<std::optional<std::string>> OptionalString(const json& obj, const char* key,
                                                          const std::string& source) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<std::string>();
  if (!it->is_string()) {
    return Invalid(source, absl::StrCat(key, " must be a string, got ", it->dump()));
  }
  return std::optional<std::string>(it->get<std::string>());
}

// bos/eos ids: an int, a list of ints (Llama 3 instruct lists several eos ids;
// the first one is kept), or null.
absl::StatusOr<std::optional<int>> OptionalTokenId(const json& obj, const char* key,
                                                   const std::string& source) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<int>();
  const json* value = &*it;
  if (value->is_array()) {
    if (value->empty()) return std::optional<int>();
    value = &(*value)[0];
  }
  if (!value->is_number_integer()) {
    return Invalid(source, absl::StrCat(key, " must be an integer token id, got ", it->dump()));
  }
  return std::optional<int>(static_cast<int>(value->get<int64_t>()));
}

absl::StatusOr<Architecture> ParseArchitecture(const json& config, const std::string& source,
                                               std::string* name) {
  auto it = config.find("architectures");
  if (it != config.end() && !it->is_null()) {
    if (!it->is_array() || it->empty() || !(*it)[0].is_string()) {
      return Invalid(source, "architectures must be a non-empty list of strings");
    }
    *name = (*it)[0].get<std::string>();
  } else {
    // Some hand-written configs carry only model_type; map it like AutoConfig.
    SR_ASSIGN_OR_RETURN(std::optional<std::string> model_type,
                        OptionalString(config, "model_type", source));
    static const std::pair<const char*, const char*> kByType[] = {{"llama", "LlamaForCausalLM"},
                                                                  {"mistral", "MistralForCausalLM"},
                                                                  {"qwen2", "Qwen2ForCausalLM"},
                                                                  {"qwen3", "Qwen3ForCausalLM"}};
    for (const auto& [type, arch] : kByType) {
      if (model_type.has_value() && *model_type == type) *name = arch;
    }
    if (name->empty()) {
      return Invalid(source, absl::StrCat("missing architectures (supported: ", kSupported, ")"));
    }
  }
  if (*name == "LlamaForCausalLM") return Architecture::kLlama;
  if (*name == "MistralForCausalLM") return Architecture::kMistral;
  if (*name == "Qwen2ForCausalLM") return Architecture::kQwen2;
  if (*name == "Qwen3ForCausalLM") return Architecture::kQwen3;
  return Invalid(source,
                 absl::StrCat("unknown architecture '", *name, "' (supported: ", kSupported, ")"));
}

// rope_scaling (or transformers v5 rope_parameters): null, "default", or "llama3".
absl::Status ParseRopeScaling(const json& rope, const std::string& field, const std::string& source,
                              ModelConfig* config) {
  if (rope.is_null()) return absl::OkStatus();
  if (!rope.is_object()) {
    return Invalid(source, absl::StrCat(field, " must be an object or null, got ", rope.dump()));
  }
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    auto it = rope.find(key);
    if (it == rope.end() || it->is_null()) continue;
    if (!it->is_string()) {
      return Invalid(source, absl::StrCat(field, ".", key, " must be a string"));
    }
    type = it->get<std::string>();
    break;
  }
  if (type.empty() || type == "default") return absl::OkStatus();
  if (type != "llama3") {
    return Invalid(source, absl::StrCat("unsupported ", field, " type '", type,
                                        "' (supported: null, default, llama3)"));
  }
  RopeScaling scaling;
  scaling.rope_type = type;
  const std::string prefix = absl::StrCat(field, ".");
  struct Field {
    const char* key;
    double* out;
  };
  for (const Field& f :
       {Field{"factor", &scaling.factor}, Field{"low_freq_factor", &scaling.low_freq_factor},
        Field{"high_freq_factor", &scaling.high_freq_factor}}) {
    SR_ASSIGN_OR_RETURN(std::optional<double> value, OptionalNumber(rope, f.key, source, prefix));
    if (!value.has_value()) {
      return Invalid(source, absl::StrCat("missing ", prefix, f.key, " for llama3 rope scaling"));
    }
    if (!(*value > 0.0)) {
      return Invalid(source, absl::StrCat(prefix, f.key, " must be positive, got ", *value));
    }
    *f.out = *value;
  }
  // Equal factors would divide by zero in the smoothing ramp.
  if (!(scaling.high_freq_factor > scaling.low_freq_factor)) {
    return Invalid(source,
                   absl::StrCat(prefix, "high_freq_factor (", scaling.high_freq_factor,
                                ") must exceed low_freq_factor (", scaling.low_freq_factor, ")"));
  }
  SR_ASSIGN_OR_RETURN(std::optional<int64_t> original,
                      OptionalInt(rope, "original_max_position_embeddings", source, prefix));
  if (!original.has_value()) {
    return Invalid(source,
                   absl::StrCat("missing ", prefix,
                                "original_max_position_embeddings for llama3 rope scaling"));
  }
  if (*original <= 0 || *original > std::numeric_limits<int>::max()) {
    return Invalid(source, absl::StrCat(prefix,
                                        "original_max_position_embeddings must be "
                                        "positive, got ",
                                        *original));
  }
  scaling.original_max_position_embeddings = static_cast<int>(*original);
  config->rope_scaling = scaling;
  return absl::OkStatus();
}

// Which layers use the window. Mistral: all. Qwen2/3: `layer_types` when
// given, else layers >= max_window_layers (the HF default 28 when absent).
absl::Status ParseSlidingWindow(const json& obj, const std::string& source, ModelConfig* config) {
  const bool is_qwen = config->arch == Architecture::kQwen2 || config->arch == Architecture::kQwen3;
  if (config->arch == Architecture::kLlama) return absl::OkStatus();
  if (is_qwen) {
    SR_ASSIGN_OR_RETURN(std::optional<bool> use, OptionalBool(obj, "use_sliding_window", source));
    if (!use.value_or(false)) return absl::OkStatus();
  }
  // MistralConfig and Qwen2Config both default sliding_window to 4096 when the
  // key is absent; an explicit null means full attention.
  std::optional<int64_t> window = 4096;
  if (obj.contains("sliding_window")) {
    SR_ASSIGN_OR_RETURN(window, OptionalInt(obj, "sliding_window", source));
  }
  if (!window.has_value()) return absl::OkStatus();
  if (*window <= 0 || *window > std::numeric_limits<int>::max()) {
    return Invalid(source, absl::StrCat("sliding_window must be positive or null, got ", *window));
  }
  config->sliding_window = static_cast<int>(*window);
  const int layers = config->num_hidden_layers;
  config->sliding_window_layers.assign(layers, true);
  if (!is_qwen) return absl::OkStatus();
  auto types = obj.find("layer_types");
  if (types != obj.end() && !types->is_null()) {
    if (!types->is_array() || static_cast<int>(types->size()) != layers) {
      return Invalid(source, absl::StrCat("layer_types must be a list of num_hidden_layers (",
                                          layers, ") strings"));
    }
    for (int i = 0; i < layers; ++i) {
      const json& t = (*types)[i];
      if (!t.is_string()) return Invalid(source, "layer_types must be a list of strings");
      config->sliding_window_layers[i] = t.get<std::string>() == "sliding_attention";
    }
    return absl::OkStatus();
  }
  SR_ASSIGN_OR_RETURN(std::optional<int64_t> max_window_layers,
                      OptionalInt(obj, "max_window_layers", source));
  const int64_t first = max_window_layers.value_or(28);
  for (int i = 0; i < layers; ++i) config->sliding_window_layers[i] = i >= first;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& json,
                                             std::string_view source_view) {
  // absl::StrCat here predates std::string_view interop: keep a std::string.
  const std::string source(source_view);
  if (!json.is_object()) return Invalid(source, "config must be a JSON object");
  ModelConfig config;
  config.raw = json;
  SR_ASSIGN_OR_RETURN(config.arch, ParseArchitecture(json, source, &config.architecture_name));
  SR_ASSIGN_OR_RETURN(std::optional<std::string> model_type,
                      OptionalString(json, "model_type", source));
  config.model_type = model_type.value_or("");

  SR_ASSIGN_OR_RETURN(config.hidden_size, RequiredPositiveInt(json, "hidden_size", source));
  SR_ASSIGN_OR_RETURN(config.intermediate_size,
                      RequiredPositiveInt(json, "intermediate_size", source));
  SR_ASSIGN_OR_RETURN(config.num_hidden_layers,
                      RequiredPositiveInt(json, "num_hidden_layers", source));
  SR_ASSIGN_OR_RETURN(config.num_attention_heads,
                      RequiredPositiveInt(json, "num_attention_heads", source));
  SR_ASSIGN_OR_RETURN(config.vocab_size, RequiredPositiveInt(json, "vocab_size", source));

  // num_key_value_heads: absent or null means multi-head attention (HF default).
  SR_ASSIGN_OR_RETURN(std::optional<int64_t> kv_heads,
                      OptionalInt(json, "num_key_value_heads", source));
  if (kv_heads.has_value()) {
    SR_ASSIGN_OR_RETURN(config.num_key_value_heads,
                        RequiredPositiveInt(json, "num_key_value_heads", source));
  } else {
    config.num_key_value_heads = config.num_attention_heads;
  }
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    return Invalid(
        source, absl::StrCat("num_key_value_heads ", config.num_key_value_heads,
                             " does not divide num_attention_heads ", config.num_attention_heads));
  }
  SR_ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, OptionalInt(json, "head_dim", source));
  if (head_dim.has_value()) {
    SR_ASSIGN_OR_RETURN(config.head_dim, RequiredPositiveInt(json, "head_dim", source));
  } else {
    if (config.hidden_size % config.num_attention_heads != 0) {
      return Invalid(source, absl::StrCat("hidden_size ", config.hidden_size,
                                          " is not divisible by num_attention_heads ",
                                          config.num_attention_heads));
    }
    config.head_dim = config.hidden_size / config.num_attention_heads;
  }
  // rotate_half splits each head in two halves.
  if (config.head_dim % 2 != 0) {
    return Invalid(source, absl::StrCat("head_dim ", config.head_dim, " must be even for RoPE"));
  }

  SR_ASSIGN_OR_RETURN(std::optional<int64_t> max_pos,
                      OptionalInt(json, "max_position_embeddings", source));
  config.max_position_embeddings = static_cast<int>(max_pos.value_or(0));

  SR_ASSIGN_OR_RETURN(std::optional<double> eps, OptionalNumber(json, "rms_norm_eps", source));
  if (eps.has_value()) {
    if (!(*eps > 0.0)) return Invalid(source, "rms_norm_eps must be positive");
    config.rms_norm_eps = static_cast<float>(*eps);
  }
  SR_ASSIGN_OR_RETURN(std::optional<bool> tie, OptionalBool(json, "tie_word_embeddings", source));
  config.tie_word_embeddings = tie.value_or(false);

  // Rope: rope_theta and rope_scaling, or (transformers v5) rope_parameters
  // holding both.
  SR_ASSIGN_OR_RETURN(std::optional<double> theta, OptionalNumber(json, "rope_theta", source));
  auto scaling_it = json.find("rope_scaling");
  auto params_it = json.find("rope_parameters");
  if (scaling_it != json.end() && !scaling_it->is_null()) {
    SR_RETURN_IF_ERROR(ParseRopeScaling(*scaling_it, "rope_scaling", source, &config));
  } else if (params_it != json.end() && !params_it->is_null()) {
    SR_RETURN_IF_ERROR(ParseRopeScaling(*params_it, "rope_parameters", source, &config));
    if (!theta.has_value()) {
      SR_ASSIGN_OR_RETURN(theta,
                          OptionalNumber(*params_it, "rope_theta", source, "rope_parameters."));
    }
  }
  if (theta.has_value()) {
    if (!(*theta > 0.0)) return Invalid(source, "rope_theta must be positive");
    config.rope_theta = *theta;
  }

  // Biases and norms per architecture, as the HF modeling files build them.
  SR_ASSIGN_OR_RETURN(std::optional<bool> attention_bias,
                      OptionalBool(json, "attention_bias", source));
  switch (config.arch) {
    case Architecture::kLlama:
    case Architecture::kQwen3:
      // LlamaAttention / Qwen3Attention: bias=config.attention_bias on q, k, v and o.
      config.attention_bias = attention_bias.value_or(false);
      config.o_proj_bias = config.attention_bias;
      break;
    case Architecture::kMistral:
      break;  // MistralAttention has no biases.
    case Architecture::kQwen2:
      config.attention_bias = true;  // q/k/v always biased, o never.
      break;
  }
  config.qk_norm = config.arch == Architecture::kQwen3;
  SR_ASSIGN_OR_RETURN(std::optional<bool> mlp_bias, OptionalBool(json, "mlp_bias", source));
  if (mlp_bias.value_or(false)) return Invalid(source, "mlp_bias true is not supported");
  SR_ASSIGN_OR_RETURN(std::optional<std::string> act, OptionalString(json, "hidden_act", source));
  if (act.has_value() && *act != "silu") {
    return Invalid(source, absl::StrCat("hidden_act '", *act, "' is not supported (silu only)"));
  }
  SR_RETURN_IF_ERROR(ParseSlidingWindow(json, source, &config));

  SR_ASSIGN_OR_RETURN(config.bos_token_id, OptionalTokenId(json, "bos_token_id", source));
  SR_ASSIGN_OR_RETURN(config.eos_token_id, OptionalTokenId(json, "eos_token_id", source));
  SR_ASSIGN_OR_RETURN(std::optional<std::string> dtype,
                      OptionalString(json, "torch_dtype", source));
  if (!dtype.has_value()) {
    SR_ASSIGN_OR_RETURN(dtype, OptionalString(json, "dtype", source));
  }
  config.torch_dtype = dtype.value_or("");
  return config;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& dir_or_file) {
  std::error_code ec;
  const std::filesystem::path path =
      std::filesystem::is_directory(dir_or_file, ec) ? dir_or_file / "config.json" : dir_or_file;
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path.string(), ": cannot open config"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path.string(), ": read failed"));
  nlohmann::json json = nlohmann::json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return Invalid(path.string(), "not valid JSON");
  return ParseModelConfig(json, path.string());
}

}  // namespace shrinkray
