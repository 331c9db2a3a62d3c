// Eval throughput (tokens/s forwarded through the model, scoring included) on
// the real stories260K model and on a synthetic model with Llama-3.2-1B layer
// shapes (hidden 2048, MLP 8192, 32 heads / 8 KV heads, head_dim 64, vocab
// 128256, tied embeddings; 2 layers; random weights generated here).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <vector>

#include "core/model/llama.h"
#include "core/model/synthetic.h"
#include "core/pipeline/eval.h"

namespace shrinkray {
namespace {

std::filesystem::path SharedData() {
  if (const char* env = std::getenv("SHRINKRAY_SHARED_DATA"); env != nullptr && *env != '\0') return env;
  return std::filesystem::path(SHRINKRAY_SOURCE_DIR).parent_path() / "shared" / "data";
}

std::vector<int32_t> RandomIds(long n, int vocab, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = static_cast<int32_t>(rng.Next() % vocab);
  return ids;
}

void RunEval(benchmark::State& state, const LlamaModel& model, int seqlen, int windows) {
  const auto ids = RandomIds(static_cast<long>(seqlen) * windows, model.config().vocab_size, 1);
  EvalOptions options;
  options.seqlen = seqlen;
  for (auto _ : state) {
    auto result = EvaluatePerplexity(model, ids, options);
    if (!result.ok()) {
      state.SkipWithError(std::string(result.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(result->ppl);
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(seqlen) * windows, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_EvalStories260K(benchmark::State& state) {
  static std::unique_ptr<LlamaModel> model = [] {
    auto m = LlamaModel::Load(SharedData() / "stories260K");
    return m.ok() ? std::move(*m) : nullptr;
  }();
  if (model == nullptr) {
    state.SkipWithError("stories260K not found under the shared data folder");
    return;
  }
  RunEval(state, *model, static_cast<int>(state.range(0)), 16);
}
BENCHMARK(BM_EvalStories260K)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_EvalLlama32_1B_2Layers(benchmark::State& state) {
  static std::unique_ptr<LlamaModel> model = []() -> std::unique_ptr<LlamaModel> {
    ModelConfig config = MakeLlamaConfig(2048, 8192, 2, 32, 8, 128256, 131072, /*tie_embeddings=*/true);
    config.rope_theta = 500000.0;
    const auto dir = std::filesystem::temp_directory_path() / "shrinkray-bench-llama32-1b-2l";
    if (!WriteSyntheticModel(dir, config, /*seed=*/1).ok()) return nullptr;
    auto m = LlamaModel::Load(dir);
    std::filesystem::remove_all(dir);
    return m.ok() ? std::move(*m) : nullptr;
  }();
  if (model == nullptr) {
    state.SkipWithError("could not build the synthetic model");
    return;
  }
  RunEval(state, *model, static_cast<int>(state.range(0)), 2);
}
BENCHMARK(BM_EvalLlama32_1B_2Layers)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

}  // namespace
}  // namespace shrinkray

BENCHMARK_MAIN();
