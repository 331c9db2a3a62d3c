// The CUDA LayerExecutor (core/kernels/cuda/cuda_layer_executor.cc) against
// the CPU one on the same model and windows, layer after layer, in a
// true-sequential job's order: every group's Hessian and Wanda norm of each
// statistics pass (fp32 on both, so they differ by summation order only),
// the group's weights changed between passes (so a pass resuming from stale
// kept block outputs would show), then the output pass that feeds the next
// layer (its differences show in the next layer's statistics). With 3, 1 and
// 0 kept block outputs. On
// stories260K (GQA, tied embeddings) and on synthetic Qwen2 (q/k/v biases)
// and Qwen3 (q/k norms) models.
// Without a CUDA device every test SKIPS; stories260K needs ../shared/data.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/calib/calibration_set.h"
#include "core/calib/layer_statistics.h"
#include "core/model/llama.h"
#include "core/model/synthetic.h"
#include "core/pipeline/device_factories.h"
#include "core/pipeline/layer_executor.h"
#include "core/tokenizer/tokenizer.h"
#include "cuda_test_util.h"
#include "compress_test_util.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray {
namespace {

namespace fs = std::filesystem;
using cuda_test::CudaTest;

constexpr LinearGroup kGroups[] = {LinearGroup::kQkv, LinearGroup::kO, LinearGroup::kGateUp, LinearGroup::kDown};

// max |a - b| / max |b|.
double RelativeMaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double scale = 0.0, diff = 0.0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  return scale > 0 ? diff / scale : diff;
}


class CudaLayerExecutorTest : public CudaTest {
 public:
  // Runs both executors over every layer of `model` as a true-sequential
  // job does: per group a statistics pass (Hessian and Wanda norm compared
  // within the bounds, max diff over max value), then the group's weights
  // change (testing::PerturbGroup) and both executors are told; then the output pass.
  // Once more with every group observed in one pass. `kept`: the GPU
  // executor's max_kept_blocks (3: passes resume from kept block outputs).
  // `prefetch`: the GPU executor is handed layer l+1 after layer l's first
  // pass (LayerExecutor::Prefetch, as the pipeline does) and copies it ahead.
  void CompareOn(LlamaModel& model, const std::vector<int32_t>& tokens, int windows, int seqlen,
                 int batch_windows, int kept, double h_bound, double norm_bound,
                 ForwardDtype dtype = ForwardDtype::kFloat32, bool prefetch = false) {
    LayerExecutorSpec spec;
    spec.forward_dtype = dtype;
    spec.config = &model.config();
    spec.windows = windows;
    spec.seqlen = seqlen;
    spec.batch_windows = batch_windows;
    spec.max_kept_blocks = kept;
    std::unique_ptr<LayerExecutor> cpu = MakeCpuLayerExecutor(spec);
    SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LayerExecutor> gpu, MakeCudaLayerExecutor(0, spec));
    EXPECT_EQ(gpu->device(), "cuda");
    SR_ASSERT_OK(cpu->Embed(model, tokens));
    SR_ASSERT_OK(gpu->Embed(model, tokens));
    double worst_h = 0.0, worst_norm = 0.0;
    const int layers = model.config().num_hidden_layers;
    for (int l = 0; l < layers; ++l) {
      // The last layer observes every group at once (not true-sequential).
      std::vector<std::vector<LinearGroup>> passes;
      if (l + 1 < layers) {
        for (LinearGroup g : kGroups) passes.push_back({g});
      } else {
        passes.push_back({std::begin(kGroups), std::end(kGroups)});
      }
      for (const std::vector<LinearGroup>& pass : passes) {
        LayerStatistics cpu_stats(model.config(), seqlen, HessianPrecision::kFloat32);
        LayerStatistics gpu_stats(model.config(), seqlen, HessianPrecision::kFloat32);
        for (LinearGroup g : pass) {
          cpu_stats.Request(g, true, true);
          gpu_stats.Request(g, true, true);
        }
        SR_ASSERT_OK(cpu->RunLayer(model, l, /*output=*/false, &cpu_stats, nullptr));
        SR_ASSERT_OK(gpu->RunLayer(model, l, /*output=*/false, &gpu_stats, nullptr));
        if (prefetch && l + 1 < layers) gpu->Prefetch(model, l + 1);  // repeated: a no-op
        for (LinearGroup g : pass) {
          const HessianAccumulator* hc = cpu_stats.hessian(g);
          const HessianAccumulator* hg = gpu_stats.hessian(g);
          ASSERT_EQ(hg->num_samples(), windows);
          ASSERT_EQ(hc->num_samples(), windows);
          const std::vector<float> h_gpu = hg->HessianF32().value();
          const double dh = RelativeMaxDiff(h_gpu, hc->HessianF32().value());
          const double dn =
              RelativeMaxDiff(gpu_stats.act_norm(g)->scaler_row(), cpu_stats.act_norm(g)->scaler_row());
          EXPECT_EQ(gpu_stats.act_norm(g)->num_samples(), windows);
          EXPECT_LE(dh, h_bound) << "layer " << l << " group " << LinearGroupName(g);
          EXPECT_LE(dn, norm_bound) << "layer " << l << " group " << LinearGroupName(g);
          // Symmetric: fp32 exactly (mirrored, not recomputed); bf16 tensor
          // cores may order a tile's sums differently, within fp32 rounding.
          const int d = LinearGroupInputDim(model.config(), g);
          const float h_max = *std::max_element(h_gpu.begin(), h_gpu.end());
          for (int i = 0; i < d; ++i) {
            for (int j = 0; j < i; ++j) {
              if (dtype == ForwardDtype::kFloat32) {
                ASSERT_EQ(h_gpu[i * d + j], h_gpu[j * d + i]) << i << "," << j;
              } else {
                ASSERT_NEAR(h_gpu[i * d + j], h_gpu[j * d + i], 1e-6f * h_max) << i << "," << j;
              }
            }
          }
          worst_h = std::max(worst_h, dh);
          worst_norm = std::max(worst_norm, dn);
        }
        for (LinearGroup g : pass) {
          testing::PerturbGroup(model, l, g);
          cpu->WeightsChanged(l, g);
          gpu->WeightsChanged(l, g);
        }
      }
      SR_ASSERT_OK(cpu->RunLayer(model, l, /*output=*/true, nullptr, nullptr));
      SR_ASSERT_OK(gpu->RunLayer(model, l, /*output=*/true, nullptr, nullptr));
    }
    // Every layer after the first ran from its copy ahead (a test model
    // leaves the memory margin free), none without prefetching.
    EXPECT_EQ(gpu->layers_prefetched(), prefetch ? layers - 1 : 0);
    EXPECT_EQ(cpu->layers_prefetched(), 0);
    std::printf("%s, %d layers, %d windows x %d, kept blocks %d%s: worst H diff %.3g, worst norm diff %.3g "
                "(relative to max)\n",
                std::string(ForwardDtypeName(dtype)).c_str(), layers, windows, seqlen, kept,
                prefetch ? ", prefetched" : "", worst_h, worst_norm);
  }
};

// stories260K on 16 windows of 128 tokens in batches of 3 (the last one
// short), a fresh model for each number of kept blocks (the passes perturb
// its weights). The caller checks that the data is there.
void CompareOnStories(CudaLayerExecutorTest& test, std::initializer_list<int> kepts, double bound,
                      ForwardDtype dtype, bool prefetch = false) {
  const fs::path model_dir = testing::SharedDataDir() / "stories260K";
  SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::FromFile(model_dir / "tokenizer.json"));
  SR_ASSERT_OK_AND_ASSIGN(CalibrationSet calibration,
                          CalibrationSetFromText(testing::SharedDataDir() / "text" / "tinystories_train_prefix.txt",
                                                 *tokenizer, {16, 128, 0}));
  for (int kept : kepts) {
    SCOPED_TRACE(kept);
    SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LlamaModel> model, LlamaModel::Load(model_dir));
    test.CompareOn(*model, calibration.tokens, 16, 128, 3, kept, bound, bound, dtype, prefetch);
  }
}

// Qwen2 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm), MLP width 88.
void CompareOnQwen(CudaLayerExecutorTest& test, double bound, ForwardDtype dtype, bool prefetch = false) {
  for (const Architecture arch : {Architecture::kQwen2, Architecture::kQwen3}) {
    ModelConfig config = MakeLlamaConfig(64, 88, 2, 4, 2, 96, 64, false);
    config.arch = arch;
    config.architecture_name = arch == Architecture::kQwen2 ? "Qwen2ForCausalLM" : "Qwen3ForCausalLM";
    config.model_type = arch == Architecture::kQwen2 ? "qwen2" : "qwen3";
    const fs::path dir = testing::MakeTempDir(absl::StrCat("cuda-executor-", config.model_type, "-",
                                                           std::string(ForwardDtypeName(dtype))));
    SR_ASSERT_OK(WriteSyntheticModel(dir, config, 17));
    SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LlamaModel> model, LlamaModel::Load(dir));
    if (arch == Architecture::kQwen2) {
      ASSERT_NE(model->layer(0).q_bias, nullptr);
    } else {
      ASSERT_NE(model->layer(0).q_norm, nullptr);
    }
    std::vector<int32_t> tokens(6 * 48);
    SplitMix64 rng(3);
    for (int32_t& t : tokens) t = static_cast<int32_t>(rng.Next() % 96);
    SCOPED_TRACE(config.model_type);
    test.CompareOn(*model, tokens, 6, 48, 4, 3, bound, bound, dtype, prefetch);
  }
}

// A wider Llama (hidden 256, 4 heads of 64, MLP 2048): head size 64 takes the
// bf16 tensor-core flash-attention kernel, and the 2048-wide down_proj input
// the block-triangular Hessian (two 1024 tiles), which the small models above
// never reach.
void CompareOnWideLlama(CudaLayerExecutorTest& test, double bound, ForwardDtype dtype) {
  const ModelConfig config = MakeLlamaConfig(256, 2048, 2, 4, 2, 96, 64, false);
  ASSERT_EQ(config.head_dim, 64);
  const fs::path dir =
      testing::MakeTempDir(absl::StrCat("cuda-executor-wide-", std::string(ForwardDtypeName(dtype))));
  SR_ASSERT_OK(WriteSyntheticModel(dir, config, 23));
  SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LlamaModel> model, LlamaModel::Load(dir));
  std::vector<int32_t> tokens(6 * 48);
  SplitMix64 rng(4);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng.Next() % 96);
  test.CompareOn(*model, tokens, 6, 48, 4, 3, bound, bound, dtype);
}

TEST_F(CudaLayerExecutorTest, Stories260KStatisticsMatchTheCpuLayerByLayer) {
  SHRINKRAY_REQUIRE_PATH(testing::SharedDataDir() / "stories260K" / "model.safetensors");
  SHRINKRAY_REQUIRE_PATH(testing::SharedDataDir() / "text" / "tinystories_train_prefix.txt");
  CompareOnStories(*this, {3, 1, 0}, 2e-5, ForwardDtype::kFloat32);
}

TEST_F(CudaLayerExecutorTest, QwenModelsStatisticsMatchTheCpu) { CompareOnQwen(*this, 2e-5, ForwardDtype::kFloat32); }

TEST_F(CudaLayerExecutorTest, WideLlamaStatisticsMatchTheCpu) { CompareOnWideLlama(*this, 2e-5, ForwardDtype::kFloat32); }

// forward_dtype bfloat16: the GPU runs bf16 activations and weights (tensor
// cores, fp32 accumulation) against the CPU's fp32, so the statistics differ
// by bf16 rounding (2^-9 relative per value) carried through the layers, not
// by summation order: a bound of a few percent of the largest value, where a
// wrong block, offset or conversion shows as O(1).
TEST_F(CudaLayerExecutorTest, Bf16ForwardStatisticsFollowTheCpuWithinBf16Rounding) {
  CompareOnQwen(*this, 5e-2, ForwardDtype::kBfloat16);
  CompareOnWideLlama(*this, 5e-2, ForwardDtype::kBfloat16);
  SHRINKRAY_REQUIRE_PATH(testing::SharedDataDir() / "stories260K" / "model.safetensors");
  SHRINKRAY_REQUIRE_PATH(testing::SharedDataDir() / "text" / "tinystories_train_prefix.txt");
  CompareOnStories(*this, {3, 0}, 5e-2, ForwardDtype::kBfloat16);
}

// Layers copied ahead (Prefetch after each layer's first pass, through the
// page-locked staging buffer and the copy stream; bf16 rounded there): the
// same statistics within the same bounds, so each layer ran with its own
// weights, and the groups changed during the layer were copied on top.
TEST_F(CudaLayerExecutorTest, PrefetchedLayersGiveTheSameStatistics) {
  CompareOnQwen(*this, 2e-5, ForwardDtype::kFloat32, /*prefetch=*/true);
  CompareOnQwen(*this, 5e-2, ForwardDtype::kBfloat16, /*prefetch=*/true);
  SHRINKRAY_REQUIRE_PATH(testing::SharedDataDir() / "stories260K" / "model.safetensors");
  SHRINKRAY_REQUIRE_PATH(testing::SharedDataDir() / "text" / "tinystories_train_prefix.txt");
  CompareOnStories(*this, {3, 0}, 2e-5, ForwardDtype::kFloat32, /*prefetch=*/true);
}

// LayerExecutor::DeviceWeight: after a pass, each Linear of the layer is on
// the device as its host float32 values (also for a bf16 forward, which
// rounds a copy besides); WeightsChanged drops the group's matrices (and no
// other's) until the next pass copies the new values; another layer, or a
// pointer that is no Linear's view, has none.
TEST_F(CudaLayerExecutorTest, DeviceWeightIsTheLayersCurrentFloat32Copy) {
  for (const ForwardDtype dtype : {ForwardDtype::kFloat32, ForwardDtype::kBfloat16}) {
    SCOPED_TRACE(std::string(ForwardDtypeName(dtype)));
    ModelConfig config = MakeLlamaConfig(64, 88, 2, 4, 2, 96, 64, false);
    const fs::path dir = testing::MakeTempDir(absl::StrCat("cuda-executor-weights-", std::string(ForwardDtypeName(dtype))));
    SR_ASSERT_OK(WriteSyntheticModel(dir, config, 5));
    SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LlamaModel> model, LlamaModel::Load(dir));
    LayerExecutorSpec spec;
    spec.config = &model->config();
    spec.windows = 2;
    spec.seqlen = 16;
    spec.batch_windows = 2;
    spec.forward_dtype = dtype;
    SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LayerExecutor> gpu, MakeCudaLayerExecutor(0, spec));
    std::vector<int32_t> tokens(2 * 16);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7) % 96);
    SR_ASSERT_OK(gpu->Embed(*model, tokens));
    const ModelConfig& c = model->config();
    const size_t C = c.hidden_size, I = c.intermediate_size, QD = c.q_dim();
    auto on_device = [&](int layer, const float* host, size_t n) -> std::vector<float> {
      const DeviceMatrix m = gpu->DeviceWeight(layer, host);
      if (m.data == nullptr) return {};
      EXPECT_EQ(m.device, 0);
      std::vector<float> out(n);
      EXPECT_EQ(cudaMemcpy(out.data(), m.data, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
      return out;
    };
    LayerWeights& w = model->mutable_layer(0);
    auto host = [](const float* p, size_t n) { return std::vector<float>(p, p + n); };
    // A statistics pass (one without anything to observe does nothing).
    auto pass = [&](int layer) {
      LayerStatistics stats(c, spec.seqlen, HessianPrecision::kFloat32);
      stats.Request(LinearGroup::kQkv, /*hessian=*/true, /*act_norm=*/false);
      return gpu->RunLayer(*model, layer, /*output=*/false, &stats, nullptr);
    };
    EXPECT_EQ(gpu->DeviceWeight(0, w.q_proj).data, nullptr);  // nothing ran yet
    SR_ASSERT_OK(pass(0));
    EXPECT_EQ(on_device(0, w.q_proj, QD * C), host(w.q_proj, QD * C));
    EXPECT_EQ(on_device(0, w.down_proj, C * I), host(w.down_proj, C * I));
    EXPECT_EQ(gpu->DeviceWeight(1, w.q_proj).data, nullptr);
    EXPECT_EQ(gpu->DeviceWeight(0, w.input_layernorm).data, nullptr);
    // qkv compressed (here: scaled), and said so.
    testing::PerturbGroup(*model, 0, LinearGroup::kQkv);
    gpu->WeightsChanged(0, LinearGroup::kQkv);
    EXPECT_EQ(gpu->DeviceWeight(0, w.q_proj).data, nullptr);
    EXPECT_EQ(gpu->DeviceWeight(0, w.v_proj).data, nullptr);
    EXPECT_EQ(on_device(0, w.o_proj, C * QD), host(w.o_proj, C * QD));
    SR_ASSERT_OK(pass(0));
    EXPECT_EQ(on_device(0, w.q_proj, QD * C), host(w.q_proj, QD * C));
    // Layer 1 copied ahead into the other buffer: layer 0's copies stay.
    gpu->Prefetch(*model, 1);
    EXPECT_EQ(on_device(0, w.gate_proj, I * C), host(w.gate_proj, I * C));
    EXPECT_EQ(gpu->DeviceWeight(1, model->layer(1).gate_proj).data, nullptr);
    // The next layer's pass: layer 0's copies are gone, layer 1's are the
    // prefetched buffer.
    SR_ASSERT_OK(gpu->RunLayer(*model, 0, /*output=*/true, nullptr, nullptr));
    SR_ASSERT_OK(pass(1));
    EXPECT_EQ(gpu->layers_prefetched(), 1);
    EXPECT_EQ(gpu->DeviceWeight(0, w.q_proj).data, nullptr);
    const LayerWeights& w1 = model->layer(1);
    EXPECT_EQ(on_device(1, w1.gate_proj, I * C), host(w1.gate_proj, I * C));
    EXPECT_EQ(on_device(1, w1.down_proj, C * I), host(w1.down_proj, C * I));
  }
}

TEST_F(CudaLayerExecutorTest, Float64HessiansAreLeftToTheCpu) {
  ModelConfig config = MakeLlamaConfig(32, 64, 1, 4, 2, 64, 64, true);
  LayerExecutorSpec spec;
  spec.config = &config;
  spec.windows = 2;
  spec.seqlen = 8;
  spec.batch_windows = 1;
  spec.precision = HessianPrecision::kFloat64;
  absl::StatusOr<std::unique_ptr<LayerExecutor>> gpu = MakeCudaLayerExecutor(0, spec);
  EXPECT_EQ(gpu.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(gpu.status().message().find("float64 Hessians"), std::string::npos) << gpu.status();
}

}  // namespace
}  // namespace shrinkray
