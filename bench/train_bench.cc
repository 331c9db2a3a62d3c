// Training throughput on the CPU (core/train): one optimizer step (forward,
// cross-entropy, backward, global-norm clip, AdamW) per iteration, in tokens/s
// and achieved GFLOP/s, next to this machine's sgemm rate measured in the same
// run (the ceiling every GEMM-bound op shares). Models: stories260K (real
// weights) and a 2-layer model with Llama-3.2-1B shapes (hidden 2048, MLP
// 8192, 32 heads / 8 KV heads, head_dim 64, vocab 128256, tied embeddings;
// random weights).
//
// Model FLOPs per step: 6 · (matrix parameters, lm_head included, embedding
// gather excluded) · tokens for the Linears (forward 2, backward 4), plus the
// causal attention's useful half, 3 · 2 · S² · head_dim · heads · batch per
// layer (QKᵀ and PV forward; the backward twice that). The trainer computes
// the full S×S scores, so the attention runs below this count's rate.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/model/llama.h"
#include "core/model/synthetic.h"
#include "core/train/adamw.h"
#include "core/train/llama_trainer_model.h"
#include "core/train/lr_schedule.h"
#include "core/train/parameter_store.h"
#include "core/train/train_step.h"

namespace shrinkray {
namespace {

std::filesystem::path SharedData() {
  if (const char* env = std::getenv("SHRINKRAY_SHARED_DATA"); env != nullptr && *env != '\0') return env;
  return std::filesystem::path(SHRINKRAY_SOURCE_DIR).parent_path() / "shared" / "data";
}

void BM_SgemmRate(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  std::vector<float> a(static_cast<size_t>(n) * n, 0.5f), b(a.size(), 0.25f), c(a.size());
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f,
                c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * n * static_cast<double>(n) / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_SgemmRate)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();

// Everything one training step needs, built once per model.
struct TrainSetup {
  std::optional<train::LlamaTrainerModel<float>> model;
  std::optional<train::ParameterStore> store;
  std::optional<train::AdamW> optimizer;
  std::optional<train::LrSchedule> schedule;
  double matrix_params = 0.0;
};

absl::StatusOr<std::unique_ptr<TrainSetup>> MakeSetup(const ModelConfig& config, const LlamaModel* weights) {
  auto setup = std::make_unique<TrainSetup>();
  auto model = train::LlamaTrainerModel<float>::Create(config);
  if (!model.ok()) return model.status();
  setup->model.emplace(std::move(*model));
  auto store = train::ParameterStore::Create(config);
  if (!store.ok()) return store.status();
  setup->store.emplace(std::move(*store));
  if (weights != nullptr) {
    absl::Status st = setup->store->LoadFrom(*weights);
    if (!st.ok()) return st;
  } else {
    setup->store->InitRandom(/*seed=*/1, /*stddev=*/0.02);
  }
  auto optimizer = train::AdamW::Create(train::AdamWOptions{});
  if (!optimizer.ok()) return optimizer.status();
  setup->optimizer.emplace(std::move(*optimizer));
  train::LrScheduleOptions lr;
  lr.max_lr = 1e-4;
  lr.total_steps = 1'000'000;
  auto schedule = train::LrSchedule::Create(lr);
  if (!schedule.ok()) return schedule.status();
  setup->schedule.emplace(std::move(*schedule));
  const double C = config.hidden_size, I = config.intermediate_size, HD = config.head_dim;
  const double q = config.num_attention_heads * HD, kv = config.num_key_value_heads * HD;
  setup->matrix_params = config.num_hidden_layers * (C * (q + 2 * kv) + q * C + 3 * C * I) +
                         C * static_cast<double>(config.vocab_size);
  return setup;
}

void RunTrainSteps(benchmark::State& state, TrainSetup& s, int batch, int seqlen) {
  const ModelConfig& config = s.model->config();
  SplitMix64 rng(7);
  std::vector<int32_t> ids(static_cast<size_t>(batch) * (seqlen + 1));
  for (auto& id : ids) id = static_cast<int32_t>(rng.Next() % config.vocab_size);
  std::vector<int32_t> tokens, targets;
  for (int b = 0; b < batch; ++b) {
    const int32_t* row = ids.data() + static_cast<size_t>(b) * (seqlen + 1);
    tokens.insert(tokens.end(), row, row + seqlen);
    targets.insert(targets.end(), row + 1, row + seqlen + 1);
  }
  const train::TokenBatch micro{tokens, targets, batch, seqlen};
  for (auto _ : state) {
    auto r = train::TrainStep(*s.model, *s.store, *s.optimizer, *s.schedule, /*max_grad_norm=*/1.0, {&micro, 1});
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(r->loss);
  }
  const double tokens_per_step = static_cast<double>(batch) * seqlen;
  const double attention = 3.0 * 2.0 * seqlen * static_cast<double>(seqlen) * config.head_dim *
                           config.num_attention_heads * batch * config.num_hidden_layers;
  const double flops = 6.0 * s.matrix_params * tokens_per_step + attention;
  state.counters["tokens/s"] = benchmark::Counter(tokens_per_step, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_TrainStepStories260K(benchmark::State& state) {
  static std::unique_ptr<TrainSetup> setup = []() -> std::unique_ptr<TrainSetup> {
    auto m = LlamaModel::Load(SharedData() / "stories260K");
    if (!m.ok()) return nullptr;
    auto s = MakeSetup((*m)->config(), m->get());
    return s.ok() ? std::move(*s) : nullptr;
  }();
  if (setup == nullptr) {
    state.SkipWithError("stories260K not found under the shared data folder");
    return;
  }
  RunTrainSteps(state, *setup, /*batch=*/16, static_cast<int>(state.range(0)));
}
BENCHMARK(BM_TrainStepStories260K)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_TrainStepLlama32_1B_2Layers(benchmark::State& state) {
  static std::unique_ptr<TrainSetup> setup = []() -> std::unique_ptr<TrainSetup> {
    ModelConfig config = MakeLlamaConfig(2048, 8192, 2, 32, 8, 128256, 131072, /*tie_embeddings=*/true);
    config.rope_theta = 500000.0;
    auto s = MakeSetup(config, nullptr);
    return s.ok() ? std::move(*s) : nullptr;
  }();
  if (setup == nullptr) {
    state.SkipWithError("could not build the 2-layer Llama-3.2-1B-shaped trainer");
    return;
  }
  RunTrainSteps(state, *setup, /*batch=*/1, static_cast<int>(state.range(0)));
}
BENCHMARK(BM_TrainStepLlama32_1B_2Layers)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

}  // namespace
}  // namespace shrinkray

BENCHMARK_MAIN();
