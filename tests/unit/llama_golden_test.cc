// The real stories260K model (../shared/data/stories260K) against golden.json,
// whose logits and greedy ids were computed in float64 from the same files.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "core/model/llama.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "test_data.h"

namespace shrinkray {
namespace {

class LlamaGoldenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::SharedDataDir() / "stories260K";
    SHRINKRAY_REQUIRE_PATH(dir_ / "golden.json");
    SHRINKRAY_REQUIRE_PATH(dir_ / "model.safetensors");
    std::ifstream in(dir_ / "golden.json");
    std::stringstream text;
    text << in.rdbuf();
    golden_ = nlohmann::json::parse(text.str(), nullptr, false);
    ASSERT_TRUE(golden_.is_object());
    auto model = LlamaModel::Load(dir_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(model).value();
  }

  std::filesystem::path dir_;
  nlohmann::json golden_;
  std::unique_ptr<LlamaModel> model_;
};

TEST_F(LlamaGoldenTest, PromptLogitsMatchFloat64Reference) {
  const auto ids = golden_["prompt_ids"].get<std::vector<int32_t>>();
  const auto expected = golden_["prompt_logits"].get<std::vector<std::vector<double>>>();
  const int T = static_cast<int>(ids.size());
  const int V = model_->config().vocab_size;
  ASSERT_EQ(static_cast<int>(expected.size()), T);
  std::vector<float> logits(static_cast<size_t>(T) * V);
  ASSERT_TRUE(model_->Forward(ids, 1, T, logits).ok());
  double err = 0.0;
  for (int t = 0; t < T; ++t) {
    ASSERT_EQ(static_cast<int>(expected[t].size()), V);
    for (int v = 0; v < V; ++v) err = std::max(err, std::abs(logits[t * V + v] - expected[t][v]));
  }
  std::printf("stories260K prompt logits: max |float32 - float64 golden| = %.3g over %d x %d\n",
              err, T, V);
  // float32 through 5 layers: the README's expected error is ~1e-4 at most.
  EXPECT_LE(err, 1e-4);
}

TEST_F(LlamaGoldenTest, BatchRowsAreIndependentSequences) {
  // The prompt twice in one batch: each row restarts at position 0, so both
  // rows equal the single-sequence logits.
  const auto ids = golden_["prompt_ids"].get<std::vector<int32_t>>();
  const int T = static_cast<int>(ids.size());
  const int V = model_->config().vocab_size;
  std::vector<float> single(static_cast<size_t>(T) * V);
  ASSERT_TRUE(model_->Forward(ids, 1, T, single).ok());
  std::vector<int32_t> two = ids;
  two.insert(two.end(), ids.begin(), ids.end());
  std::vector<float> batched(2 * single.size());
  ASSERT_TRUE(model_->Forward(two, 2, T, batched).ok());
  double err = 0.0;
  for (size_t i = 0; i < batched.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(batched[i]) - single[i % single.size()]));
  }
  // Not bit-exact: OpenBLAS picks its blocking and thread split by the row
  // count, which reorders float sums; the rows agree to float32 rounding.
  EXPECT_LE(err, 1e-4);
}

TEST_F(LlamaGoldenTest, GreedyDecodingFromBos) {
  const auto expected = golden_["greedy_from_bos_ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(expected.size(), 49u);
  const int V = model_->config().vocab_size;
  std::vector<int32_t> ids = {1};  // BOS
  // Full recompute per step: 48 steps of at most 48 tokens on a 260K model.
  while (ids.size() < expected.size()) {
    const int T = static_cast<int>(ids.size());
    std::vector<float> logits(static_cast<size_t>(T) * V);
    ASSERT_TRUE(model_->Forward(ids, 1, T, logits).ok());
    const float* last = logits.data() + static_cast<size_t>(T - 1) * V;
    ids.push_back(static_cast<int32_t>(std::max_element(last, last + V) - last));
  }
  EXPECT_EQ(ids, expected);
}

}  // namespace
}  // namespace shrinkray
