// ParseModelConfig / LoadModelConfig on hand-written config.json texts.
#include <fstream>
#include <string>

#include "core/model/config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

absl::StatusOr<ModelConfig> Parse(const std::string& text) {
  nlohmann::json json = nlohmann::json::parse(text, nullptr, false);
  EXPECT_FALSE(json.is_discarded()) << text;
  return ParseModelConfig(json, "test/config.json");
}

// A minimal valid Llama config with `extra` fields spliced in (later keys win
// in nlohmann's parser, so extra may override the defaults).
std::string LlamaJson(const std::string& extra = "") {
  return R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 5,
    "num_attention_heads": 8, "vocab_size": 512)" +
         (extra.empty() ? std::string() : ", " + extra) + "}";
}

void ExpectInvalid(const absl::StatusOr<ModelConfig>& result,
                   const std::vector<std::string>& substrings) {
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("test/config.json"));
  for (const std::string& s : substrings) {
    EXPECT_THAT(std::string(result.status().message()), HasSubstr(s));
  }
}

TEST(ModelConfigTest, LlamaDefaults) {
  auto config = Parse(LlamaJson());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->arch, Architecture::kLlama);
  EXPECT_EQ(config->architecture_name, "LlamaForCausalLM");
  EXPECT_EQ(config->model_type, "llama");
  EXPECT_EQ(config->hidden_size, 64);
  EXPECT_EQ(config->intermediate_size, 172);
  EXPECT_EQ(config->num_hidden_layers, 5);
  EXPECT_EQ(config->num_attention_heads, 8);
  EXPECT_EQ(config->num_key_value_heads, 8);  // defaults to num_attention_heads
  EXPECT_EQ(config->head_dim, 8);             // hidden_size / heads
  EXPECT_EQ(config->vocab_size, 512);
  EXPECT_DOUBLE_EQ(config->rope_theta, 10000.0);
  EXPECT_FALSE(config->tie_word_embeddings);  // LlamaConfig's default
  EXPECT_FALSE(config->attention_bias);
  EXPECT_FALSE(config->o_proj_bias);
  EXPECT_FALSE(config->qk_norm);
  EXPECT_FALSE(config->sliding_window.has_value());
  EXPECT_FALSE(config->rope_scaling.has_value());
  EXPECT_FALSE(config->LayerSlidingWindow(0).has_value());
  EXPECT_EQ(config->q_dim(), 64);
  EXPECT_EQ(config->kv_dim(), 64);
  EXPECT_EQ(config->raw["vocab_size"], 512);
}

TEST(ModelConfigTest, LlamaGqaTiedAndFields) {
  auto config = Parse(LlamaJson(R"("num_key_value_heads": 2, "tie_word_embeddings": true,
      "rope_theta": 500000.0, "rms_norm_eps": 1e-05, "max_position_embeddings": 2048,
      "bos_token_id": 1, "eos_token_id": [128001, 128009], "torch_dtype": "bfloat16",
      "rope_scaling": null, "attention_bias": true)"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_key_value_heads, 2);
  EXPECT_EQ(config->kv_dim(), 16);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_DOUBLE_EQ(config->rope_theta, 500000.0);
  EXPECT_FLOAT_EQ(config->rms_norm_eps, 1e-5f);
  EXPECT_EQ(config->max_position_embeddings, 2048);
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_EQ(config->eos_token_id, 128001);  // the first of a list
  EXPECT_EQ(config->torch_dtype, "bfloat16");
  // Llama's attention_bias biases q, k, v and o.
  EXPECT_TRUE(config->attention_bias);
  EXPECT_TRUE(config->o_proj_bias);
}

TEST(ModelConfigTest, HeadDimOverride) {
  auto config = Parse(LlamaJson(R"("head_dim": 16)"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 16);
  EXPECT_EQ(config->q_dim(), 128);  // != hidden_size: o_proj is [64, 128]
  // head_dim given: hidden_size need not divide by heads.
  auto odd = Parse(LlamaJson(R"("hidden_size": 100, "num_attention_heads": 3, "head_dim": 32)"));
  ASSERT_TRUE(odd.ok()) << odd.status();
  EXPECT_EQ(odd->head_dim, 32);
}

TEST(ModelConfigTest, Llama3RopeScaling) {
  auto config = Parse(LlamaJson(R"("rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
      "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"})"));
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->rope_scaling.has_value());
  EXPECT_EQ(config->rope_scaling->rope_type, "llama3");
  EXPECT_DOUBLE_EQ(config->rope_scaling->factor, 32.0);
  EXPECT_DOUBLE_EQ(config->rope_scaling->low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(config->rope_scaling->high_freq_factor, 4.0);
  EXPECT_EQ(config->rope_scaling->original_max_position_embeddings, 8192);

  // The older "type" key works too, and "default" means no scaling.
  auto legacy = Parse(LlamaJson(R"("rope_scaling": {"type": "llama3", "factor": 8,
      "low_freq_factor": 2, "high_freq_factor": 3, "original_max_position_embeddings": 4096})"));
  ASSERT_TRUE(legacy.ok()) << legacy.status();
  ASSERT_TRUE(legacy->rope_scaling.has_value());
  EXPECT_DOUBLE_EQ(legacy->rope_scaling->factor, 8.0);
  EXPECT_EQ(legacy->rope_scaling->original_max_position_embeddings, 4096);
  auto plain = Parse(LlamaJson(R"("rope_scaling": {"rope_type": "default"})"));
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->rope_scaling.has_value());
}

TEST(ModelConfigTest, TransformersV5RopeParameters) {
  auto config = Parse(LlamaJson(R"("rope_parameters": {"rope_type": "default",
      "rope_theta": 1000000.0})"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_DOUBLE_EQ(config->rope_theta, 1e6);
  EXPECT_FALSE(config->rope_scaling.has_value());
}

TEST(ModelConfigTest, Mistral) {
  auto config = Parse(R"({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
      "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 3,
      "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
      "sliding_window": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-05})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->arch, Architecture::kMistral);
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_EQ(config->sliding_window, 4096);
  for (int layer = 0; layer < 3; ++layer) EXPECT_EQ(config->LayerSlidingWindow(layer), 4096);
  EXPECT_FALSE(config->attention_bias);

  auto no_window = Parse(R"({"architectures": ["MistralForCausalLM"], "hidden_size": 64,
      "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
      "vocab_size": 100, "sliding_window": null})");
  ASSERT_TRUE(no_window.ok()) << no_window.status();
  EXPECT_FALSE(no_window->sliding_window.has_value());
  EXPECT_FALSE(no_window->LayerSlidingWindow(0).has_value());
}

TEST(ModelConfigTest, Qwen2) {
  const std::string base = R"({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
      "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 4,
      "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
      "rope_theta": 1000000.0, "tie_word_embeddings": true, "sliding_window": 32768,
      "max_window_layers": 2)";
  auto config = Parse(base + R"(, "use_sliding_window": false})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->arch, Architecture::kQwen2);
  EXPECT_EQ(config->head_dim, 64);
  EXPECT_TRUE(config->attention_bias);  // q/k/v bias always
  EXPECT_FALSE(config->o_proj_bias);
  EXPECT_FALSE(config->qk_norm);
  EXPECT_TRUE(config->tie_word_embeddings);
  // use_sliding_window false: the sliding_window field is ignored.
  EXPECT_FALSE(config->sliding_window.has_value());

  auto windowed = Parse(base + R"(, "use_sliding_window": true})");
  ASSERT_TRUE(windowed.ok()) << windowed.status();
  EXPECT_EQ(windowed->sliding_window, 32768);
  // Layers below max_window_layers keep full attention.
  EXPECT_FALSE(windowed->LayerSlidingWindow(0).has_value());
  EXPECT_FALSE(windowed->LayerSlidingWindow(1).has_value());
  EXPECT_EQ(windowed->LayerSlidingWindow(2), 32768);
  EXPECT_EQ(windowed->LayerSlidingWindow(3), 32768);
}

TEST(ModelConfigTest, Qwen3) {
  auto config = Parse(R"({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
      "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 2,
      "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
      "vocab_size": 151936, "rope_theta": 1000000, "attention_bias": false,
      "use_sliding_window": false, "sliding_window": null, "rope_scaling": null})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->arch, Architecture::kQwen3);
  EXPECT_EQ(config->head_dim, 128);  // not 1024 / 16
  EXPECT_EQ(config->q_dim(), 2048);
  EXPECT_EQ(config->kv_dim(), 1024);
  EXPECT_TRUE(config->qk_norm);
  EXPECT_FALSE(config->attention_bias);
  EXPECT_DOUBLE_EQ(config->rope_theta, 1e6);  // an integer in JSON is fine
}

TEST(ModelConfigTest, UnknownArchitecture) {
  auto config = Parse(LlamaJson(R"("architectures": ["GPT2LMHeadModel"])"));
  ExpectInvalid(config,
                {"unknown architecture 'GPT2LMHeadModel'", "LlamaForCausalLM", "Qwen3ForCausalLM"});
}

TEST(ModelConfigTest, ZeroHeads) {
  ExpectInvalid(Parse(LlamaJson(R"("num_attention_heads": 0)")), {"num_attention_heads"});
  ExpectInvalid(Parse(LlamaJson(R"("num_key_value_heads": 0)")), {"num_key_value_heads"});
}

TEST(ModelConfigTest, HiddenNotDivisibleByHeads) {
  ExpectInvalid(Parse(LlamaJson(R"("hidden_size": 100, "num_attention_heads": 3)")),
                {"hidden_size 100 is not divisible by num_attention_heads 3"});
}

TEST(ModelConfigTest, KvHeadsMustDivideHeads) {
  ExpectInvalid(Parse(LlamaJson(R"("num_key_value_heads": 3)")),
                {"num_key_value_heads 3", "num_attention_heads 8"});
}

TEST(ModelConfigTest, MissingOrBadFields) {
  for (const char* field : {"hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "vocab_size"}) {
    nlohmann::json json = nlohmann::json::parse(LlamaJson());
    json.erase(field);
    auto config = ParseModelConfig(json, "test/config.json");
    ExpectInvalid(config, {"missing required field", field});
  }
  ExpectInvalid(Parse(LlamaJson(R"("vocab_size": -5)")), {"vocab_size", "-5"});
  ExpectInvalid(Parse(LlamaJson(R"("hidden_size": "64")")), {"hidden_size", "integer"});
  ExpectInvalid(Parse(LlamaJson(R"("hidden_size": 64.5)")), {"hidden_size", "integer"});
  ExpectInvalid(Parse(LlamaJson(R"("tie_word_embeddings": "yes")")), {"tie_word_embeddings"});
  ExpectInvalid(Parse(LlamaJson(R"("rope_theta": "big")")), {"rope_theta"});
  ExpectInvalid(Parse("[1, 2]"), {"object"});
}

TEST(ModelConfigTest, UnknownRopeType) {
  ExpectInvalid(Parse(LlamaJson(R"("rope_scaling": {"type": "linear", "factor": 2.0})")),
                {"rope_scaling", "'linear'"});
  ExpectInvalid(Parse(LlamaJson(R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0})")),
                {"'yarn'"});
  // llama3 without its fields names the missing one.
  ExpectInvalid(Parse(LlamaJson(R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0,
      "low_freq_factor": 1.0, "high_freq_factor": 4.0})")),
                {"rope_scaling.original_max_position_embeddings"});
  ExpectInvalid(Parse(LlamaJson(R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0,
      "low_freq_factor": 4.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8})")),
                {"high_freq_factor"});
}

TEST(ModelConfigTest, LoadFromDirAndFile) {
  const auto dir = testing::MakeTempDir("model-config");
  {
    std::ofstream out(dir / "config.json");
    out << LlamaJson(R"("num_key_value_heads": 4)");
  }
  auto from_dir = LoadModelConfig(dir);
  ASSERT_TRUE(from_dir.ok()) << from_dir.status();
  EXPECT_EQ(from_dir->num_key_value_heads, 4);
  auto from_file = LoadModelConfig(dir / "config.json");
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ(from_file->hidden_size, 64);

  auto missing = LoadModelConfig(dir / "nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  {
    std::ofstream out(dir / "broken.json");
    out << "{\"hidden_size\": 64,";
  }
  auto broken = LoadModelConfig(dir / "broken.json");
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(broken.status().message()),
              AllOf(HasSubstr("broken.json"), HasSubstr("JSON")));
}

TEST(ModelConfigTest, Stories260K) {
  const auto dir = testing::SharedDataDir() / "stories260K";
  SHRINKRAY_REQUIRE_PATH(dir / "config.json");
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->hidden_size, 64);
  EXPECT_EQ(config->num_key_value_heads, 4);
  EXPECT_EQ(config->head_dim, 8);
  EXPECT_FLOAT_EQ(config->rms_norm_eps, 1e-5f);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_EQ(config->eos_token_id, 2);
}

}  // namespace
}  // namespace shrinkray
