// LlamaCudaModel (fp32 forward on the GPU) on the real stories260K model
// against golden.json (float64 reference) and against the CPU LlamaModel.
// SKIPS without a CUDA device or without ../shared/data.
//
// Tolerances: fp32 through 5 layers, only summation order differs from the
// CPU model, so the same 1e-4 bound as the CPU golden test holds for the
// float64 golden logits; GPU vs CPU on 4 x 256 tokens: 1e-3 (max abs).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include "core/io/text_file.h"
#include "core/kernels/cuda/llama_cuda.h"
#include "core/model/llama.h"
#include "core/pipeline/eval.h"
#include "core/tokenizer/tokenizer.h"
#include "cuda/cuda_test_util.h"
#include "nlohmann/json.hpp"
#include "test_data.h"

namespace shrinkray {
namespace {

class LlamaCudaTest : public cuda_test::CudaTest {
 protected:
  void SetUp() override {
    cuda_test::CudaTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    dir_ = testing::SharedDataDir() / "stories260K";
    valid_text_ = testing::SharedDataDir() / "text" / "tinystories_valid_prefix.txt";
    SHRINKRAY_REQUIRE_PATH(dir_ / "golden.json");
    SHRINKRAY_REQUIRE_PATH(dir_ / "model.safetensors");
    std::ifstream in(dir_ / "golden.json");
    std::stringstream text;
    text << in.rdbuf();
    golden_ = nlohmann::json::parse(text.str(), nullptr, false);
    ASSERT_TRUE(golden_.is_object());
    auto model = LlamaModel::Load(dir_);
    ASSERT_TRUE(model.ok()) << model.status();
    cpu_ = std::move(model).value();
    auto gpu = LlamaCudaModel::FromCpu(*cpu_);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = std::move(gpu).value();
    V_ = cpu_->config().vocab_size;
  }

  // The first 20,000 chars of the valid text, encoded with one BOS.
  void LoadValidIds() {
    SHRINKRAY_REQUIRE_PATH(valid_text_);
    auto tokenizer = Tokenizer::FromFile(dir_ / "tokenizer.json");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    auto text = ReadTextFile(valid_text_, 20000);
    ASSERT_TRUE(text.ok()) << text.status();
    auto ids = (*tokenizer)->Encode(*text, /*add_special_tokens=*/true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    ids_ = std::move(*ids);
  }

  std::filesystem::path dir_, valid_text_;
  nlohmann::json golden_;
  std::unique_ptr<LlamaModel> cpu_;
  std::unique_ptr<LlamaCudaModel> gpu_;
  std::vector<int32_t> ids_;
  int V_ = 0;
};

TEST_F(LlamaCudaTest, PromptLogitsMatchFloat64Golden) {
  const auto ids = golden_["prompt_ids"].get<std::vector<int32_t>>();
  const auto expected = golden_["prompt_logits"].get<std::vector<std::vector<double>>>();
  const int T = static_cast<int>(ids.size());
  ASSERT_EQ(static_cast<int>(expected.size()), T);
  std::vector<float> logits(static_cast<size_t>(T) * V_);
  SR_ASSERT_OK(gpu_->Forward(ids, 1, T, logits));
  double err = 0.0;
  bool finite = true;
  for (int t = 0; t < T; ++t) {
    ASSERT_EQ(static_cast<int>(expected[t].size()), V_);
    for (int v = 0; v < V_; ++v) {
      const float z = logits[static_cast<size_t>(t) * V_ + v];
      finite = finite && std::isfinite(z);
      err = std::max(err, std::abs(z - expected[t][v]));
    }
  }
  std::printf("stories260K GPU prompt logits: max |gpu fp32 - float64 golden| = %.3g over %d x %d\n",
              err, T, V_);
  EXPECT_TRUE(finite);
  EXPECT_LE(err, 1e-4);
}

TEST_F(LlamaCudaTest, BatchedWindowsMatchCpuForward) {
  ASSERT_NO_FATAL_FAILURE(LoadValidIds());
  if (IsSkipped()) return;
  const int B = 4, T = 256;
  ASSERT_GE(ids_.size(), static_cast<size_t>(B) * T);
  const std::span<const int32_t> window(ids_.data(), static_cast<size_t>(B) * T);
  std::vector<float> cpu(static_cast<size_t>(B) * T * V_), gpu(cpu.size());
  SR_ASSERT_OK(cpu_->Forward(window, B, T, cpu));
  SR_ASSERT_OK(gpu_->Forward(window, B, T, gpu));
  const cuda_test::Errors e = cuda_test::Compare(gpu, cpu);
  std::printf("stories260K GPU vs CPU logits, %d x %d tokens: %s\n", B, T,
              cuda_test::Describe(e).c_str());
  EXPECT_TRUE(e.finite);
  EXPECT_LE(e.max_abs, 1e-3);
}

TEST_F(LlamaCudaTest, GreedyDecodingFromBosMatchesGolden) {
  const auto expected = golden_["greedy_from_bos_ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(expected.size(), 49u);
  std::vector<int32_t> ids = {1};  // BOS
  // Full recompute per step.
  while (ids.size() < expected.size()) {
    const int T = static_cast<int>(ids.size());
    std::vector<float> logits(static_cast<size_t>(T) * V_);
    SR_ASSERT_OK(gpu_->Forward(ids, 1, T, logits));
    const float* last = logits.data() + static_cast<size_t>(T - 1) * V_;
    ids.push_back(static_cast<int32_t>(std::max_element(last, last + V_) - last));
  }
  EXPECT_EQ(ids, expected);
}

// The eval protocol of core/pipeline/eval.cc (non-overlapping windows, score
// tokens 1..L-1 of each window, log-sum-exp in double) on GPU logits.
TEST_F(LlamaCudaTest, PerplexityMatchesCpuEvalAndGolden) {
  ASSERT_NO_FATAL_FAILURE(LoadValidIds());
  if (IsSkipped()) return;
  const int T = 256;
  const auto& g = golden_["eval_first_20000_chars"];
  ASSERT_EQ(static_cast<long>(ids_.size()), g["num_tokens_with_bos"].get<long>());
  const long num_windows = static_cast<long>(ids_.size()) / T;
  ASSERT_GT(num_windows, 0);
  const int batch = 8;
  double nll = 0.0;
  long scored = 0;
  std::vector<float> logits;
  for (long w0 = 0; w0 < num_windows; w0 += batch) {
    const int b = static_cast<int>(std::min<long>(batch, num_windows - w0));
    const std::span<const int32_t> window(ids_.data() + w0 * T, static_cast<size_t>(b) * T);
    logits.resize(static_cast<size_t>(b) * T * V_);
    SR_ASSERT_OK(gpu_->Forward(window, b, T, logits));
    for (int w = 0; w < b; ++w) {
      for (int t = 0; t + 1 < T; ++t) {
        const long row = static_cast<long>(w) * T + t;
        const float* z = logits.data() + row * V_;
        const int target = window[row + 1];
        float max_value = z[0];
        for (int i = 1; i < V_; ++i) max_value = std::max(max_value, z[i]);
        double sum = 0.0;
        for (int i = 0; i < V_; ++i) sum += std::exp(static_cast<double>(z[i]) - max_value);
        nll += max_value + std::log(sum) - z[target];
        ++scored;
      }
    }
  }
  const double gpu_ppl = std::exp(nll / scored);

  EvalOptions options;
  options.seqlen = T;
  auto cpu_result = EvaluatePerplexity(*cpu_, ids_, options);
  ASSERT_TRUE(cpu_result.ok()) << cpu_result.status();
  const double golden_ppl = g["ppl_window_256"].get<double>();
  std::printf("stories260K ppl (window 256): gpu %.6f cpu %.6f golden %.6f (scored %ld)\n",
              gpu_ppl, cpu_result->ppl, golden_ppl, scored);
  EXPECT_EQ(scored, cpu_result->scored_tokens);
  EXPECT_EQ(scored, g["scored_tokens_window_256"].get<long>());
  EXPECT_NEAR(gpu_ppl / cpu_result->ppl, 1.0, 5e-3);
  EXPECT_NEAR(gpu_ppl / golden_ppl, 1.0, 1e-3);
}

}  // namespace
}  // namespace shrinkray
