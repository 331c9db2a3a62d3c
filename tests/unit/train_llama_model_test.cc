// core/train/parameter_store + llama_trainer_model: the store's views against
// LlamaModel's parameters, the trainer's logits against LlamaModel::Forward
// on the same weights, and the whole-model backward against float64 central
// differences for every parameter of tiny 2-layer GQA models (tied, untied,
// and with Qwen-style biases, q/k norms and a sliding window).
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/model/llama.h"
#include "core/model/synthetic.h"
#include "core/train/backward_ops.h"
#include "core/train/llama_trainer_model.h"
#include "core/train/parameter_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_data.h"
#include "train_grad_check.h"

namespace shrinkray::train {
namespace {

using ::shrinkray::testing::ExpectGradientMatchesFd;
using ::testing::HasSubstr;

std::unique_ptr<LlamaModel> WriteAndLoad(const ModelConfig& config, const std::string& tag) {
  const auto dir = ::shrinkray::testing::MakeTempDir(tag);
  const absl::Status written = WriteSyntheticModel(dir, config, /*seed=*/7);
  EXPECT_TRUE(written.ok()) << written;
  absl::StatusOr<std::unique_ptr<LlamaModel>> model = LlamaModel::Load(dir);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

std::vector<int32_t> Tokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = dist(rng);
  return t;
}

TEST(TrainParameterStoreTest, ViewsMatchLlamaModelParameters) {
  for (bool tied : {false, true}) {
    const ModelConfig config = MakeLlamaConfig(32, 48, 2, 4, 2, 40, 64, tied);
    std::unique_ptr<LlamaModel> model = WriteAndLoad(config, tied ? "store_tied" : "store_untied");
    ASSERT_NE(model, nullptr);
    absl::StatusOr<ParameterStore> store = ParameterStore::Create(config);
    ASSERT_TRUE(store.ok()) << store.status();
    const auto named = model->Parameters();
    ASSERT_EQ(store->views().size(), named.size());
    size_t offset = 0;
    for (size_t i = 0; i < named.size(); ++i) {
      EXPECT_EQ(store->views()[i].name, named[i].name);
      EXPECT_EQ(store->views()[i].shape, named[i].shape);
      EXPECT_EQ(store->views()[i].offset, offset) << "views are packed in order";
      offset += store->views()[i].numel;
    }
    EXPECT_EQ(static_cast<long>(store->size()), model->num_parameters());
    // The trainer's RoPE frequencies are the model's.
    EXPECT_EQ(RopeInverseFrequencies(config), model->rope_inv_freq());
    EXPECT_EQ(store->grads().size(), store->size());
    EXPECT_EQ(store->first_moment().size(), store->size());
    EXPECT_EQ(store->second_moment().size(), store->size());
    EXPECT_EQ(store->Find("lm_head.weight").ok(), !tied);
    EXPECT_EQ(store->Find("nope").status().code(), absl::StatusCode::kNotFound);

    // Load copies the values; Store writes changed values back into the model.
    ASSERT_TRUE(store->LoadFrom(*model).ok());
    absl::StatusOr<const ParameterView*> q = store->Find("model.layers.1.self_attn.q_proj.weight");
    ASSERT_TRUE(q.ok());
    EXPECT_EQ(store->param(**q)[5], model->layer(1).q_proj[5]);
    store->param(**q)[5] = 0.125f;
    ASSERT_TRUE(store->StoreTo(*model).ok());
    EXPECT_EQ(model->layer(1).q_proj[5], 0.125f);
  }
}

TEST(TrainParameterStoreTest, RejectsAModelOfAnotherShape) {
  const ModelConfig config = MakeLlamaConfig(32, 48, 2, 4, 2, 40, 64, false);
  std::unique_ptr<LlamaModel> model = WriteAndLoad(config, "store_mismatch");
  ASSERT_NE(model, nullptr);
  absl::StatusOr<ParameterStore> store =
      ParameterStore::Create(MakeLlamaConfig(32, 64, 2, 4, 2, 40, 64, false));
  ASSERT_TRUE(store.ok());
  const absl::Status status = store->LoadFrom(*model);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("mlp.gate_proj.weight"));
  ModelConfig bad = config;
  bad.num_key_value_heads = 3;
  EXPECT_EQ(ParameterStore::Create(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TrainParameterStoreTest, InitRandomIsSeeded) {
  const ModelConfig config = MakeLlamaConfig(16, 24, 1, 2, 1, 10, 16, false);
  absl::StatusOr<ParameterStore> a = ParameterStore::Create(config), b = ParameterStore::Create(config);
  ASSERT_TRUE(a.ok() && b.ok());
  a->InitRandom(42, 0.02);
  b->InitRandom(42, 0.02);
  EXPECT_TRUE(std::equal(a->params().begin(), a->params().end(), b->params().begin()));
  b->InitRandom(43, 0.02);
  EXPECT_FALSE(std::equal(a->params().begin(), a->params().end(), b->params().begin()));
  const ParameterView* norm = *a->Find("model.norm.weight");
  for (float x : a->param(*norm)) EXPECT_EQ(x, 1.0f);
  // Uniform with the requested standard deviation: |x| <= sqrt(3) * 0.02.
  const ParameterView* embed = *a->Find("model.embed_tokens.weight");
  double sum_sq = 0.0;
  for (float x : a->param(*embed)) {
    EXPECT_LE(std::abs(x), std::sqrt(3.0) * 0.02 + 1e-7);
    sum_sq += static_cast<double>(x) * x;
  }
  EXPECT_NEAR(std::sqrt(sum_sq / embed->numel), 0.02, 0.004);  // 160 samples
}

// The trainer's float forward is LlamaModel::Forward's arithmetic step for
// step (backward_ops_test checks each op against the inference kernel), so
// the logits agree to rounding (bit for bit with g++ 12 / OpenBLAS here):
// 1e-6 of the largest logit allows a few ULPs of libm or summation-order
// difference on other toolchains and nothing more.
TEST(TrainLlamaModelTest, ForwardLogitsEqualLlamaModelForward) {
  for (bool tied : {false, true}) {
    const ModelConfig config = MakeLlamaConfig(32, 48, 2, 4, 2, 40, 64, tied);
    std::unique_ptr<LlamaModel> model = WriteAndLoad(config, tied ? "fwd_tied" : "fwd_untied");
    ASSERT_NE(model, nullptr);
    const int batch = 2, seqlen = 7;
    const std::vector<int32_t> tokens = Tokens(batch * seqlen, 40, 3);
    std::vector<float> expected(batch * seqlen * 40), got(expected.size());
    ASSERT_TRUE(model->Forward(tokens, batch, seqlen, expected).ok());

    absl::StatusOr<ParameterStore> store = ParameterStore::Create(config);
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE(store->LoadFrom(*model).ok());
    absl::StatusOr<LlamaTrainerModel<float>> trainer = LlamaTrainerModel<float>::Create(config);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    ASSERT_TRUE(trainer->Forward(*store, tokens, batch, seqlen, got).ok());
    float scale = 0.0f;
    for (float x : expected) scale = std::max(scale, std::abs(x));
    ASSERT_GT(scale, 0.1f);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], expected[i], 1e-6f * scale) << (tied ? "tied " : "untied ") << i;
    }

    // In float64 on the same (float) weights: agreement to float rounding
    // through two layers, 1e-4 of the largest logit.
    absl::StatusOr<BasicParameterStore<double>> store64 =
        BasicParameterStore<double>::Create(config);
    ASSERT_TRUE(store64.ok());
    ASSERT_TRUE(store64->LoadFrom(*model).ok());
    absl::StatusOr<LlamaTrainerModel<double>> trainer64 = LlamaTrainerModel<double>::Create(config);
    ASSERT_TRUE(trainer64.ok());
    std::vector<double> got64(expected.size());
    ASSERT_TRUE(trainer64->Forward(*store64, tokens, batch, seqlen, got64).ok());
    for (size_t i = 0; i < got64.size(); ++i) {
      ASSERT_NEAR(got64[i], expected[i], 1e-4 * scale) << i;
    }

    // New weights written back with StoreTo give the trainer's new logits.
    for (float& x : store->params()) x *= 0.9f;
    ASSERT_TRUE(store->StoreTo(*model).ok());
    ASSERT_TRUE(model->Forward(tokens, batch, seqlen, expected).ok());
    ASSERT_TRUE(trainer->Forward(*store, tokens, batch, seqlen, got).ok());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], expected[i], 1e-6f * scale);
  }
}

TEST(TrainLlamaModelTest, ForwardRejectsBadInputs) {
  const ModelConfig config = MakeLlamaConfig(16, 24, 1, 2, 1, 10, 16, false);
  absl::StatusOr<ParameterStore> store = ParameterStore::Create(config);
  absl::StatusOr<LlamaTrainerModel<float>> trainer = LlamaTrainerModel<float>::Create(config);
  ASSERT_TRUE(store.ok() && trainer.ok());
  std::vector<float> logits(2 * 10);
  const std::vector<int32_t> bad = {1, 10};
  absl::Status s = trainer->Forward(*store, bad, 1, 2, logits);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("token id 10"));
  const std::vector<int32_t> ok = {1, 2};
  std::vector<float> short_logits(5);
  EXPECT_EQ(trainer->Forward(*store, ok, 1, 2, short_logits).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> dlogits(2 * 10);
  EXPECT_EQ(trainer->Backward(*store, dlogits).code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<ParameterStore> other =
      ParameterStore::Create(MakeLlamaConfig(16, 24, 1, 2, 1, 10, 16, true));
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(trainer->Forward(*other, ok, 1, 2, logits).code(), absl::StatusCode::kInvalidArgument);
}

// Random float64 parameters: matrices from InitRandom, then norm weights
// near 1 and biases near 0 perturbed so that no gradient is degenerate.
void RandomParameters(BasicParameterStore<double>& store, uint64_t seed) {
  store.InitRandom(seed, 0.3);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<double> noise(0.0, 0.2);
  for (const ParameterView& v : store.views()) {
    if (v.shape.size() == 1) {
      for (double& x : store.param(v)) x += noise(rng);
    }
  }
}

// Mean cross-entropy of next tokens (one target ignored) through the whole
// model; every parameter's gradient against central differences.
void CheckWholeModelGradient(const ModelConfig& config, const std::string& what) {
  absl::StatusOr<BasicParameterStore<double>> store = BasicParameterStore<double>::Create(config);
  absl::StatusOr<LlamaTrainerModel<double>> model = LlamaTrainerModel<double>::Create(config);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE(model.ok()) << model.status();
  RandomParameters(*store, 5);
  const int batch = 2, seqlen = 4, V = config.vocab_size;
  const std::vector<int32_t> tokens = Tokens(batch * seqlen, V, 11);
  std::vector<int32_t> targets = Tokens(batch * seqlen, V, 12);
  targets[3] = -100;
  std::vector<double> logits(batch * seqlen * V), probs(logits.size());
  auto loss = [&] {
    EXPECT_TRUE(model->Forward(*store, tokens, batch, seqlen, logits).ok());
    return CrossEntropyForward(probs.data(), logits.data(), targets.data(), batch * seqlen, V);
  };
  loss();
  std::vector<double> dlogits(logits.size(), 0.0);
  CrossEntropyBackward(dlogits.data(), probs.data(), targets.data(), batch * seqlen, V, 1.0);
  store->ZeroGrads();
  ASSERT_TRUE(model->Backward(*store, dlogits).ok());
  const std::vector<double> grads(store->grads().begin(), store->grads().end());
  // Parameter by parameter, so a failure names the tensor.
  for (const ParameterView& v : store->views()) {
    ExpectGradientMatchesFd(store->param(v),
                            std::span<const double>(grads).subspan(v.offset, v.numel), loss,
                            what + " " + v.name);
  }
}

// The float instantiation (sgemm, float accumulators) against the float64 one
// that the finite differences check, on the same float weights: the
// gradients agree to float rounding through two layers, 1e-4 of the largest.
TEST(TrainLlamaModelTest, FloatGradientsAgreeWithFloat64) {
  for (bool tied : {false, true}) {
    const ModelConfig config = MakeLlamaConfig(32, 48, 2, 4, 2, 40, 64, tied);
    absl::StatusOr<ParameterStore> s32 = ParameterStore::Create(config);
    absl::StatusOr<BasicParameterStore<double>> s64 = BasicParameterStore<double>::Create(config);
    absl::StatusOr<LlamaTrainerModel<float>> m32 = LlamaTrainerModel<float>::Create(config);
    absl::StatusOr<LlamaTrainerModel<double>> m64 = LlamaTrainerModel<double>::Create(config);
    ASSERT_TRUE(s32.ok() && s64.ok() && m32.ok() && m64.ok());
    s32->InitRandom(21, 0.2);
    std::copy(s32->params().begin(), s32->params().end(), s64->params().begin());
    const int batch = 2, seqlen = 6, V = 40;
    const std::vector<int32_t> tokens = Tokens(batch * seqlen, V, 4);
    const std::vector<int32_t> targets = Tokens(batch * seqlen, V, 5);
    std::vector<float> l32(batch * seqlen * V), p32(l32.size()), d32(l32.size(), 0.0f);
    std::vector<double> l64(l32.size()), p64(l32.size()), d64(l32.size(), 0.0);
    ASSERT_TRUE(m32->Forward(*s32, tokens, batch, seqlen, l32).ok());
    ASSERT_TRUE(m64->Forward(*s64, tokens, batch, seqlen, l64).ok());
    CrossEntropyForward(p32.data(), l32.data(), targets.data(), batch * seqlen, V);
    CrossEntropyForward(p64.data(), l64.data(), targets.data(), batch * seqlen, V);
    CrossEntropyBackward(d32.data(), p32.data(), targets.data(), batch * seqlen, V, 1.0f);
    CrossEntropyBackward(d64.data(), p64.data(), targets.data(), batch * seqlen, V, 1.0);
    ASSERT_TRUE(m32->Backward(*s32, d32).ok());
    ASSERT_TRUE(m64->Backward(*s64, d64).ok());
    double scale = 0.0;
    for (double g : s64->grads()) scale = std::max(scale, std::abs(g));
    ASSERT_GT(scale, 1e-3);
    for (size_t i = 0; i < s64->size(); ++i) {
      ASSERT_NEAR(s32->grads()[i], s64->grads()[i], 1e-4 * scale) << (tied ? "tied " : "") << i;
    }
  }
}

TEST(TrainLlamaModelTest, WholeModelGradientMatchesFiniteDifferencesUntied) {
  // 2 layers, 4 heads sharing 2 kv heads (head_dim 4).
  CheckWholeModelGradient(MakeLlamaConfig(16, 24, 2, 4, 2, 20, 16, false), "untied");
}

TEST(TrainLlamaModelTest, WholeModelGradientMatchesFiniteDifferencesTied) {
  CheckWholeModelGradient(MakeLlamaConfig(16, 24, 2, 4, 2, 20, 16, true), "tied");
}

TEST(TrainLlamaModelTest, WholeModelGradientWithBiasesQkNormAndWindow) {
  ModelConfig config = MakeLlamaConfig(16, 24, 2, 4, 2, 20, 16, false);
  config.attention_bias = true;  // Qwen2's q/k/v biases
  config.o_proj_bias = true;
  config.qk_norm = true;  // Qwen3
  config.sliding_window = 2;
  config.sliding_window_layers = {false, true};  // Mistral-style window on layer 1 only
  CheckWholeModelGradient(config, "qwen-style");
}

}  // namespace
}  // namespace shrinkray::train
