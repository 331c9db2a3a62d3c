// stories260K end to end: tokenizer + model + eval reproduce golden.json's
// perplexities, and the same weights stored as F16, BF16 and in 3 shards give
// the numbers the storage format allows.
#include <cmath>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/io/checkpoint.h"
#include "core/io/text_file.h"
#include "core/model/llama.h"
#include "core/pipeline/eval.h"
#include "core/tensor/convert.h"
#include "core/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "test_data.h"

namespace shrinkray {
namespace {

namespace fs = std::filesystem;

class Stories260KEvalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_dir_ = testing::SharedDataDir() / "stories260K";
    valid_text_ = testing::SharedDataDir() / "text" / "tinystories_valid_prefix.txt";
    SHRINKRAY_REQUIRE_PATH(model_dir_ / "golden.json");
    SHRINKRAY_REQUIRE_PATH(valid_text_);
    std::ifstream in(model_dir_ / "golden.json");
    golden_ = nlohmann::json::parse(in);
    auto tokenizer = Tokenizer::FromFile(model_dir_ / "tokenizer.json");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(*tokenizer);
    auto text = ReadTextFile(valid_text_, 20000);
    ASSERT_TRUE(text.ok()) << text.status();
    auto ids = tokenizer_->Encode(*text, /*add_special_tokens=*/true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    ids_ = std::move(*ids);
  }

  // Copies the model folder's weights into `dir` as `dtype` in `num_shards` files.
  void ConvertModel(const fs::path& dir, DType dtype, int num_shards) {
    auto checkpoint = Checkpoint::Open(model_dir_);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    std::vector<std::vector<std::byte>> storage;
    std::vector<TensorToWrite> tensors;
    for (const auto& name : (*checkpoint)->names()) {
      auto values = (*checkpoint)->ReadF32(name);
      ASSERT_TRUE(values.ok()) << values.status();
      storage.emplace_back(values->size() * DTypeSize(dtype));
      ASSERT_TRUE(ConvertFromF32(storage.back().data(), dtype, values->data(), values->size()).ok());
      tensors.push_back({name, dtype, (*(*checkpoint)->Find(name))->shape, {}});
    }
    for (size_t i = 0; i < tensors.size(); ++i) tensors[i].data = storage[i];
    ASSERT_TRUE(WriteCheckpoint(dir, tensors, num_shards).ok());
    fs::copy_file(model_dir_ / "config.json", dir / "config.json");
  }

  double Ppl(const LlamaModel& model, int seqlen) {
    EvalOptions options;
    options.seqlen = seqlen;
    auto result = EvaluatePerplexity(model, ids_, options);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? result->ppl : NAN;
  }

  fs::path model_dir_;
  fs::path valid_text_;
  nlohmann::json golden_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<int32_t> ids_;
};

TEST_F(Stories260KEvalTest, PerplexityMatchesGoldenForWindowsOf128And256) {
  const auto& g = golden_["eval_first_20000_chars"];
  EXPECT_EQ(static_cast<long>(ids_.size()), g["num_tokens_with_bos"].get<long>());
  auto model = LlamaModel::Load(model_dir_);
  ASSERT_TRUE(model.ok()) << model.status();
  for (int seqlen : {128, 256}) {
    EvalOptions options;
    options.seqlen = seqlen;
    auto result = EvaluatePerplexity(**model, ids_, options);
    ASSERT_TRUE(result.ok()) << result.status();
    const std::string suffix = "_window_" + std::to_string(seqlen);
    const double golden_ppl = g["ppl" + suffix].get<double>();
    EXPECT_EQ(result->scored_tokens, g["scored_tokens" + suffix].get<long>());
    // 0.1% is the bound; float32 logits are ~1e-5 from float64.
    EXPECT_NEAR(result->ppl / golden_ppl, 1.0, 1e-3) << "ppl " << result->ppl << " golden " << golden_ppl;
  }
}

TEST_F(Stories260KEvalTest, ReferenceAgainstItselfHasZeroKlAndFullAgreement) {
  auto model = LlamaModel::Load(model_dir_);
  ASSERT_TRUE(model.ok()) << model.status();
  EvalOptions options;
  options.seqlen = 256;
  auto result = EvaluatePerplexity(**model, ids_, options, model->get());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_NEAR(*result->mean_kl, 0.0, 1e-12);
  EXPECT_DOUBLE_EQ(*result->top1_agreement, 1.0);
}

TEST_F(Stories260KEvalTest, ShardedF16AndBF16CopiesGiveExpectedNumbers) {
  auto reference = LlamaModel::Load(model_dir_);
  ASSERT_TRUE(reference.ok()) << reference.status();
  const fs::path tmp = testing::MakeTempDir("convert");
  const fs::path sharded = tmp / "sharded", f16 = tmp / "f16", bf16 = tmp / "bf16";
  ASSERT_NO_FATAL_FAILURE(ConvertModel(sharded, DType::kF32, 3));
  ASSERT_NO_FATAL_FAILURE(ConvertModel(f16, DType::kF16, 1));
  ASSERT_NO_FATAL_FAILURE(ConvertModel(bf16, DType::kBF16, 1));
  ASSERT_TRUE(fs::exists(sharded / "model.safetensors.index.json"));
  ASSERT_TRUE(fs::exists(sharded / "model-00003-of-00003.safetensors"));

  const std::vector<int32_t> prompt = golden_["prompt_ids"].get<std::vector<int32_t>>();
  const int T = static_cast<int>(prompt.size()), V = (*reference)->config().vocab_size;
  std::vector<float> want(static_cast<size_t>(T) * V), got(want.size());
  ASSERT_TRUE((*reference)->Forward(prompt, 1, T, want).ok());

  // Sharding changes only where the bytes live: logits are identical.
  auto sharded_model = LlamaModel::Load(sharded);
  ASSERT_TRUE(sharded_model.ok()) << sharded_model.status();
  ASSERT_TRUE((*sharded_model)->Forward(prompt, 1, T, got).ok());
  EXPECT_EQ(got, want);

  const double ppl32 = Ppl(**reference, 256);
  // F16 keeps 11 significant bits: weights move by <= 2^-12 relative, logits by
  // ~1e-3 on this model (|logit| < 20); ppl within 0.1%.
  auto f16_model = LlamaModel::Load(f16);
  ASSERT_TRUE(f16_model.ok()) << f16_model.status();
  ASSERT_TRUE((*f16_model)->Forward(prompt, 1, T, got).ok());
  float max_err = 0;
  for (size_t i = 0; i < got.size(); ++i) max_err = std::max(max_err, std::fabs(got[i] - want[i]));
  EXPECT_LT(max_err, 2e-2f) << "F16 max |logit error|";
  EXPECT_NEAR(Ppl(**f16_model, 256) / ppl32, 1.0, 1e-3);

  // BF16 keeps 8 significant bits (relative error up to 2^-9): logits move by
  // ~0.1 on this model; ppl within 1%.
  auto bf16_model = LlamaModel::Load(bf16);
  ASSERT_TRUE(bf16_model.ok()) << bf16_model.status();
  ASSERT_TRUE((*bf16_model)->Forward(prompt, 1, T, got).ok());
  max_err = 0;
  for (size_t i = 0; i < got.size(); ++i) max_err = std::max(max_err, std::fabs(got[i] - want[i]));
  EXPECT_LT(max_err, 2e-1f) << "BF16 max |logit error|";
  EXPECT_NEAR(Ppl(**bf16_model, 256) / ppl32, 1.0, 1e-2);
}

TEST(EvalErrorsTest, TooFewTokensForOneWindowIsAnError) {
  const fs::path dir = testing::SharedDataDir() / "stories260K";
  SHRINKRAY_REQUIRE_PATH(dir);
  auto model = LlamaModel::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  std::vector<int32_t> ids(100, 5);
  EvalOptions options;
  options.seqlen = 128;
  auto result = EvaluatePerplexity(**model, ids, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("100 tokens"), std::string_view::npos) << result.status();
  options.seqlen = 1024;  // beyond max_position_embeddings 512
  ids.assign(2048, 5);
  result = EvaluatePerplexity(**model, ids, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("max_position_embeddings"), std::string_view::npos);
}

}  // namespace
}  // namespace shrinkray
