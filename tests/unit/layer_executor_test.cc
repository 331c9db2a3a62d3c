// The CPU LayerExecutor (core/pipeline/layer_executor.h): passes that resume
// from kept block outputs give bit for bit the statistics and hidden states of
// passes that recompute the layer from its input, in a true-sequential job's
// order with each group's weights changed between passes (a stale kept output
// would show); and the KeptBlocks bookkeeping both executors share.
#include "core/pipeline/layer_executor.h"

#include <memory>
#include <vector>

#include "core/calib/layer_statistics.h"
#include "core/model/llama.h"
#include "core/model/synthetic.h"
#include "compress_test_util.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray {
namespace {

constexpr LinearGroup kGroups[] = {LinearGroup::kQkv, LinearGroup::kO, LinearGroup::kGateUp, LinearGroup::kDown};


// Every Hessian and Wanda norm of every pass, in order, and the Hessian of a
// last statistics pass over the final hidden states.
std::vector<std::vector<float>> RunJob(const std::filesystem::path& dir, int kept, bool true_sequential) {
  auto model = LlamaModel::Load(dir);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return {};
  const ModelConfig& c = (*model)->config();
  const int windows = 5, seqlen = 12;
  std::vector<int32_t> tokens(windows * seqlen);
  SplitMix64 rng(9);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng.Next() % c.vocab_size);
  LayerExecutorSpec spec;
  spec.config = &c;
  spec.windows = windows;
  spec.seqlen = seqlen;
  spec.batch_windows = 2;  // the last batch is short
  spec.max_kept_blocks = kept;
  std::unique_ptr<LayerExecutor> executor = MakeCpuLayerExecutor(spec);
  EXPECT_TRUE(executor->Embed(**model, tokens).ok());
  std::vector<std::vector<float>> seen;
  std::vector<std::vector<LinearGroup>> passes;
  if (true_sequential) {
    for (LinearGroup g : kGroups) passes.push_back({g});
  } else {
    passes.push_back({std::begin(kGroups), std::end(kGroups)});
  }
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    for (const std::vector<LinearGroup>& pass : passes) {
      LayerStatistics stats(c, seqlen, HessianPrecision::kFloat32);
      for (LinearGroup g : pass) stats.Request(g, true, true);
      const absl::Status s = executor->RunLayer(**model, l, /*output=*/false, &stats, nullptr);
      EXPECT_TRUE(s.ok()) << s;
      for (LinearGroup g : pass) {
        seen.push_back(stats.hessian(g)->HessianF32().value());
        seen.push_back(stats.act_norm(g)->scaler_row());
        testing::PerturbGroup(**model, l, g);
        executor->WeightsChanged(l, g);
      }
    }
    EXPECT_TRUE(executor->RunLayer(**model, l, /*output=*/true, nullptr, nullptr).ok());
  }
  // The final hidden states, seen through the last layer's qkv statistics.
  LayerStatistics last(c, seqlen, HessianPrecision::kFloat32);
  last.Request(LinearGroup::kQkv, true, false);
  EXPECT_TRUE(executor->RunLayer(**model, c.num_hidden_layers - 1, false, &last, nullptr).ok());
  seen.push_back(last.hessian(LinearGroup::kQkv)->HessianF32().value());
  return seen;
}

class CpuLayerExecutorTest : public ::testing::TestWithParam<bool> {};

TEST_P(CpuLayerExecutorTest, KeptBlockOutputsGiveTheValuesOfRecomputing) {
  const std::filesystem::path dir = testing::MakeTempDir("cpu-executor");
  ModelConfig config = MakeLlamaConfig(32, 48, 3, 4, 2, 64, 64, true);
  ASSERT_TRUE(WriteSyntheticModel(dir, config, 21).ok());
  const std::vector<std::vector<float>> recomputed = RunJob(dir, 0, GetParam());
  ASSERT_FALSE(recomputed.empty());
  for (int kept : {1, 2, 3}) {
    SCOPED_TRACE(kept);
    const std::vector<std::vector<float>> resumed = RunJob(dir, kept, GetParam());
    ASSERT_EQ(resumed.size(), recomputed.size());
    for (size_t i = 0; i < resumed.size(); ++i) EXPECT_EQ(resumed[i], recomputed[i]) << "statistic " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Order, CpuLayerExecutorTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "TrueSequential" : "AllGroupsInOnePass";
                         });

TEST(KeptBlocksTest, PassesResumeFromTheLatestCurrentOutput) {
  KeptBlocks kept(3);
  EXPECT_EQ(kept.Start(0, 0), 0);  // qkv pass: from the input
  kept.PassDone(false, LinearGroup::kQkv);
  kept.WeightsChanged(0, LinearGroup::kQkv);
  EXPECT_EQ(kept.Start(0, 1), 0);  // o pass: attention must be recomputed
  kept.PassDone(false, LinearGroup::kO);
  kept.WeightsChanged(0, LinearGroup::kO);
  EXPECT_EQ(kept.Start(0, 2), 1);  // gate_up pass: from the kept attention
  kept.PassDone(false, LinearGroup::kGateUp);
  kept.WeightsChanged(0, LinearGroup::kGateUp);
  EXPECT_EQ(kept.Start(0, 3), 2);  // down pass: from the kept middle
  kept.PassDone(false, LinearGroup::kDown);
  kept.WeightsChanged(0, LinearGroup::kDown);
  EXPECT_EQ(kept.Start(0, 4), 3);  // output pass: down_proj alone
  kept.PassDone(true, std::nullopt);
  EXPECT_EQ(kept.Start(0, 4), 0);  // the hidden states moved on
  // Another layer starts over; a change to another layer's weights is not ours.
  kept.PassDone(false, LinearGroup::kDown);
  EXPECT_EQ(kept.Start(1, 4), 0);
  kept.PassDone(false, LinearGroup::kDown);
  kept.WeightsChanged(0, LinearGroup::kQkv);
  EXPECT_EQ(kept.Start(1, 4), 3);
  // Fewer kept outputs cap how far a pass can resume.
  KeptBlocks one(1);
  EXPECT_EQ(one.Start(0, 4), 0);
  one.PassDone(false, LinearGroup::kDown);
  EXPECT_EQ(one.Start(0, 4), 1);
}

}  // namespace
}  // namespace shrinkray
