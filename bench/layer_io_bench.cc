// The host's share of a compression job, per decoder layer of Llama-3-8B
// shapes (hidden 4096, MLP 14336, 32 heads / 8 KV heads; GPTQ w4 g128 codes,
// random, with the dequantized values the pipeline hands on): what the
// writer thread does for each finished layer (CompressedModelWriter::Add,
// WriteLayerCheckpoint, and the two together as RunCompression's writer
// thread runs them), what its reader thread does (LoadLayer) and what the
// end of the job pays (Finish). On a GPU
// a layer computes in ~0.75 s (docs/benchmarks-gpu.md), so this is the
// budget the writer must stay under not to become the job's bottleneck.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/io/checkpoint.h"
#include "core/io/model_writer.h"
#include "core/model/llama.h"
#include "core/model/synthetic.h"
#include "core/pipeline/layer_checkpoint.h"
#include "core/pipeline/linear_result_codec.h"
#include "nlohmann/json.hpp"

namespace shrinkray {
namespace {

constexpr int kHidden = 4096, kIntermediate = 14336, kKvDim = 1024, kGroup = 128;

QuantizedWeight RandomCodes(int rows, int cols, uint64_t seed) {
  QuantizedWeight w;
  w.rows = rows;
  w.cols = cols;
  w.bits = 4;
  w.group_size = kGroup;
  w.sym = true;
  w.num_groups = cols / kGroup;
  SplitMix64 rng(seed);
  w.codes.resize(static_cast<size_t>(rows) * cols);
  for (uint8_t& c : w.codes) c = static_cast<uint8_t>(rng.Next() & 15);
  w.scales.resize(static_cast<size_t>(w.num_groups) * rows);
  for (float& s : w.scales) s = 1e-3f * (1.0f + std::abs(rng.NextSymmetric()));
  w.zeros.assign(w.scales.size(), 8);
  w.g_idx.resize(cols);
  for (int c = 0; c < cols; ++c) w.g_idx[c] = c / kGroup;
  return w;
}

// One finished layer as RunCompression hands it to the writer.
std::vector<CompressedTensorEntry> Layer(int layer) {
  struct Linear {
    const char* name;
    int rows, cols;
  };
  const Linear linears[] = {{"self_attn.q_proj", kHidden, kHidden},     {"self_attn.k_proj", kKvDim, kHidden},
                            {"self_attn.v_proj", kKvDim, kHidden},      {"self_attn.o_proj", kHidden, kHidden},
                            {"mlp.gate_proj", kIntermediate, kHidden}, {"mlp.up_proj", kIntermediate, kHidden},
                            {"mlp.down_proj", kHidden, kIntermediate}};
  const std::string prefix = absl::StrCat("model.layers.", layer, ".");
  std::vector<CompressedTensorEntry> entries;
  for (const char* norm : {"input_layernorm", "post_attention_layernorm"}) {
    CompressedTensorEntry e;
    e.name = prefix + norm + ".weight";
    e.shape = {kHidden};
    e.values.assign(kHidden, 1.0f);
    entries.push_back(std::move(e));
  }
  uint64_t seed = 1000 * static_cast<uint64_t>(layer);
  for (const Linear& l : linears) {
    CompressedTensorEntry e;
    e.name = prefix + l.name + ".weight";
    e.shape = {l.rows, l.cols};
    QuantizedWeight w = RandomCodes(l.rows, l.cols, ++seed);
    e.values.resize(w.codes.size());
    for (int r = 0; r < w.rows; ++r) {
      for (int c = 0; c < w.cols; ++c) e.values[static_cast<size_t>(r) * w.cols + c] = w.Dequantize(r, c);
    }
    e.quantized = std::move(w);
    entries.push_back(std::move(e));
  }
  return entries;
}

const std::vector<CompressedTensorEntry>& CachedLayer() {
  static const std::vector<CompressedTensorEntry> layer = Layer(0);
  return layer;
}

std::filesystem::path ScratchDir(const char* name) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / absl::StrCat("shrinkray-", name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

CompressedModelSpec Header(const std::filesystem::path& source, DType dense_dtype = DType::kF32) {
  CompressedModelSpec header;
  header.source_dir = source;
  header.source_config = {{"architectures", {"LlamaForCausalLM"}},
                          {"model_type", "llama"},
                          {"hidden_size", kHidden},
                          {"intermediate_size", kIntermediate},
                          {"num_attention_heads", 32},
                          {"num_key_value_heads", 8},
                          {"num_hidden_layers", 1},
                          {"vocab_size", 128256},
                          {"torch_dtype", "float32"}};
  header.dense_dtype = dense_dtype;
  header.recipe_info = {{"bits", 4}, {"group_size", kGroup}, {"sym", true}, {"desc_act", false},
                        {"static_groups", false}, {"damp", 0.01}, {"true_sequential", true}};
  return header;
}

// The writer's per-layer Add (encoding the tensors and writing them into
// the shards), in a format and a dense dtype (what the dense format writes).
void BM_WriterAddLayer(benchmark::State& state) {
  const auto format = static_cast<OutputFormat>(state.range(0));
  const auto dense_dtype = static_cast<DType>(state.range(1));
  const std::vector<CompressedTensorEntry>& layer = CachedLayer();
  const std::filesystem::path dir = ScratchDir("layer-io-add");
  for (auto _ : state) {
    state.PauseTiming();
    auto writer = CompressedModelWriter::Open(dir / "out", Header(dir, dense_dtype), format, /*overwrite=*/true);
    if (!writer.ok()) return state.SkipWithError(std::string(writer.status().message()).c_str());
    state.ResumeTiming();
    const absl::Status s = (*writer)->Add(layer);
    if (!s.ok()) return state.SkipWithError(std::string(s.message()).c_str());
    state.PauseTiming();
    writer->reset();
    state.ResumeTiming();
  }
  state.SetLabel(std::string(OutputFormatName(format)) + " " + std::string(DTypeName(dense_dtype)));
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_WriterAddLayer)
    ->Args({static_cast<int>(OutputFormat::kGptq), static_cast<int>(DType::kF32)})
    ->Args({static_cast<int>(OutputFormat::kDense), static_cast<int>(DType::kF32)})
    ->Args({static_cast<int>(OutputFormat::kDense), static_cast<int>(DType::kBF16)})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(3);

// The records the ranks of a sharded job exchange for a layer's solved
// matrices (core/pipeline/linear_result_codec.h): encode on the owner,
// decode on a receiver, all 7 Linears. Counters: the records' bytes, and what
// the float32 weights and byte codes alone came to before the records sent a
// dequantized weight as its codes.
void BM_LinearResultRecords(benchmark::State& state) {
  std::vector<LinearState> states;
  for (const CompressedTensorEntry& e : CachedLayer()) {
    if (!e.quantized.has_value()) continue;
    LinearState s;
    s.weight = e.values;
    s.quantized = e.quantized;
    states.push_back(std::move(s));
  }
  double record_bytes = 0.0, float32_bytes = 0.0;
  for (auto _ : state) {
    record_bytes = float32_bytes = 0.0;
    for (const LinearState& s : states) {
      MatrixReport report;
      report.module = "model.layers.0.mlp.down_proj";
      report.rows = s.quantized->rows;
      report.cols = s.quantized->cols;
      const std::vector<uint8_t> bytes = EncodeLinearResult(s, report);
      LinearState back;
      MatrixReport back_report;
      const absl::Status st = DecodeLinearResult(bytes, &back, &back_report);
      if (!st.ok()) return state.SkipWithError(std::string(st.message()).c_str());
      record_bytes += static_cast<double>(bytes.size());
      float32_bytes += static_cast<double>(s.weight.size() * sizeof(float) + s.quantized->codes.size());
    }
  }
  state.counters["record_MB"] = record_bytes / 1e6;
  state.counters["float32_and_codes_MB"] = float32_bytes / 1e6;
}
BENCHMARK(BM_LinearResultRecords)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

// Layer 0 as the writer thread gets it, and a run's folder for its checkpoints.
PersistedLayer FinishedLayer() {
  PersistedLayer done;
  done.layer = 0;
  done.tensors = CachedLayer();
  return done;
}
std::filesystem::path CheckpointDir(const char* name) {
  const std::filesystem::path dir = ScratchDir(name);
  std::filesystem::create_directories(dir / "layers");
  return dir;
}

// The resume checkpoint of one layer (crash-safe: fsync, hash).
void BM_LayerCheckpoint(benchmark::State& state) {
  const PersistedLayer done = FinishedLayer();
  const std::filesystem::path dir = CheckpointDir("layer-io-checkpoint");
  for (auto _ : state) {
    const absl::Status s = WriteLayerCheckpoint(dir, done);
    if (!s.ok()) return state.SkipWithError(std::string(s.message()).c_str());
  }
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_LayerCheckpoint)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

// RunCompression's writer thread per layer: the Add with the checkpoint
// written beside it (WriteLayerCheckpoint's `alongside`).
void BM_WriterThreadLayer(benchmark::State& state) {
  const PersistedLayer done = FinishedLayer();
  const std::filesystem::path dir = CheckpointDir("layer-io-thread");
  for (auto _ : state) {
    state.PauseTiming();
    auto writer = CompressedModelWriter::Open(dir / "out", Header(dir), OutputFormat::kGptq, /*overwrite=*/true);
    if (!writer.ok()) return state.SkipWithError(std::string(writer.status().message()).c_str());
    state.ResumeTiming();
    const absl::Status s = WriteLayerCheckpoint(dir, done, [&] { return (*writer)->Add(done.tensors); });
    if (!s.ok()) return state.SkipWithError(std::string(s.message()).c_str());
    state.PauseTiming();
    writer->reset();
    state.ResumeTiming();
  }
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_WriterThreadLayer)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

// RunCompression's reader thread per layer: LoadLayer of a streaming model
// (the layer's Linears and norms read from the page cache into f32) and its
// release, from a bf16 (the usual Llama-3 checkpoint) or an f32 source with
// 2 layers of Llama-3-8B shapes (a small vocabulary: the embeddings are not
// what is measured).
void BM_ReaderLoadLayer(benchmark::State& state) {
  const auto dtype = static_cast<DType>(state.range(0));
  const std::filesystem::path dir = ScratchDir("layer-io-reader");
  const ModelConfig config = MakeLlamaConfig(kHidden, kIntermediate, 2, 32, 8, 1024, 2048, false);
  if (absl::Status s = WriteSyntheticModel(dir, config, 1, dtype); !s.ok()) {
    return state.SkipWithError(std::string(s.message()).c_str());
  }
  auto checkpoint = Checkpoint::Open(dir);
  if (!checkpoint.ok()) return state.SkipWithError(std::string(checkpoint.status().message()).c_str());
  auto model = LlamaModel::OpenStreaming(config, **checkpoint);
  if (!model.ok()) return state.SkipWithError(std::string(model.status().message()).c_str());
  int layer = 0;
  for (auto _ : state) {
    if (absl::Status s = (*model)->LoadLayer(layer); !s.ok()) return state.SkipWithError(std::string(s.message()).c_str());
    (*model)->ReleaseLayer(layer);
    layer = 1 - layer;
  }
  state.SetLabel(std::string(DTypeName(dtype)));
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_ReaderLoadLayer)
    ->Arg(static_cast<int>(DType::kBF16))
    ->Arg(static_cast<int>(DType::kF32))
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(4);

// The end of a job: the parked tensors of range(0) layers into the output
// shards (per layer: divide by the argument).
void BM_WriterFinish(benchmark::State& state) {
  const auto layers = static_cast<int>(state.range(0));
  const std::filesystem::path dir = ScratchDir("layer-io-finish");
  for (auto _ : state) {
    state.PauseTiming();
    CompressedModelSpec header = Header(dir);
    header.source_config["num_hidden_layers"] = layers;
    auto writer = CompressedModelWriter::Open(dir / "out", header, OutputFormat::kGptq, /*overwrite=*/true);
    if (!writer.ok()) return state.SkipWithError(std::string(writer.status().message()).c_str());
    for (int l = 0; l < layers; ++l) {
      std::vector<CompressedTensorEntry> layer = CachedLayer();
      for (CompressedTensorEntry& e : layer) e.name.replace(0, 15, absl::StrCat("model.layers.", l, "."));
      if (absl::Status s = (*writer)->Add(layer); !s.ok()) return state.SkipWithError(std::string(s.message()).c_str());
    }
    state.ResumeTiming();
    auto done = (*writer)->Finish();
    if (!done.ok()) return state.SkipWithError(std::string(done.status().message()).c_str());
  }
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_WriterFinish)->Arg(4)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);

}  // namespace
}  // namespace shrinkray

BENCHMARK_MAIN();
