// Checkpoint and resume (core/pipeline/layer_checkpoint.h): a run cancelled
// after a few layers leaves them in OUT.partial, the next run with the same
// options resumes at the first unfinished layer and writes the bytes of an
// uninterrupted run. The cancellation stands in for a killed worker: both stop
// between layers, after the last finished layer was persisted.
#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/algo/rtn.h"
#include "core/io/model_writer.h"
#include "core/io/safetensors.h"
#include "core/model/synthetic.h"
#include "core/pipeline/compress.h"
#include "core/pipeline/job_runner.h"
#include "core/pipeline/layer_checkpoint.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "compress_test_util.h"
#include "test_data.h"

namespace shrinkray {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr int kLayers = 4;
const char* const kGptqActOrder = "[{gptq: {bits: 4, group_size: 32, act_order: true}}]";
const char* const kSparseThenGptq = "[{sparsegpt: {sparsity: 0.5}}, {gptq: {bits: 4, group_size: 32}}]";

Recipe MustParse(const std::string& yaml) { return testing::MustParseRecipe(yaml); }

std::string ReadBytes(const fs::path& path) { return testing::ReadFileBytes(path); }

// Every file the same bytes; report.json but timings, output path and where it resumed.
void ExpectSameOutput(const fs::path& a, const fs::path& b) {
  testing::ExpectSameFiles(a, b, {"resumed_from_layer"});
}

class CompressResumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("compress-resume");
    model_dir_ = dir_ / "model";
    ASSERT_TRUE(WriteSyntheticModel(model_dir_, MakeLlamaConfig(32, 64, kLayers, 4, 2, 64, 64, true), 7).ok());
    calib_ = dir_ / "calib.safetensors";
    std::vector<int32_t> ids(8 * 32);
    SplitMix64 rng(11);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng.Next() % 64);
    std::vector<std::byte> bytes(ids.size() * 4);
    std::memcpy(bytes.data(), ids.data(), bytes.size());
    std::vector<TensorToWrite> t = {{"input_ids", DType::kI32, {8, 32}, bytes}};
    ASSERT_TRUE(WriteSafetensors(calib_, t).ok());
  }

  CompressOptions Options(const std::string& out, OutputFormat format = OutputFormat::kDense) {
    CompressOptions o;
    o.model_dir = model_dir_;
    o.calib_path = calib_;
    o.out_dir = dir_ / out;
    o.calibration = {8, 32, 0};
    o.format = format;
    o.layerwise.compare_rtn = true;
    o.layerwise.batch_windows = 3;  // batches that do not divide the windows
    return o;
  }

  // Runs into `out` and cancels once layer `cancel_after` is done: the layers
  // up to it are persisted, the run returns CancelledError and leaves no `out`.
  void RunCancelled(const std::string& yaml, const std::string& out, OutputFormat format, int cancel_after) {
    CancellationToken cancel;
    CompressOptions o = Options(out, format);
    o.layerwise.cancel = &cancel;
    o.layerwise.on_layer_done = [&](const LayerDone& done) {
      if (done.layer == cancel_after) cancel.Cancel();
    };
    bool resumed = false;
    o.layerwise.on_resume = [&](int, int) { resumed = true; };
    auto report = RunCompression(MustParse(yaml), o);
    ASSERT_FALSE(report.ok());
    EXPECT_EQ(report.status().code(), absl::StatusCode::kCancelled) << report.status();
    EXPECT_FALSE(resumed);
    EXPECT_FALSE(fs::exists(dir_ / out));
    const fs::path layers = dir_ / (out + ".partial") / "layers";
    for (int l = 0; l < kLayers; ++l) {
      const std::string stem = absl::StrFormat("layer-%05d", l);
      EXPECT_EQ(fs::exists(layers / (stem + ".json")), l <= cancel_after) << stem;
      EXPECT_EQ(fs::exists(layers / (stem + ".safetensors")), l <= cancel_after) << stem;
    }
    // Only the checkpoint remains of the writer's folder (no scratch, no shards).
    std::vector<std::string> left;
    for (const auto& item : fs::directory_iterator(dir_ / (out + ".partial"))) {
      left.push_back(item.path().filename().string());
    }
    std::sort(left.begin(), left.end());
    EXPECT_EQ(left, (std::vector<std::string>{"job.json", "layers"}));
  }

  struct Resumed {
    absl::StatusOr<CompressReport> report;
    std::vector<std::pair<int, int>> on_resume;
    std::vector<int> layers_done;
    std::vector<std::string> log;
  };
  Resumed RunAgain(const std::string& yaml, const std::string& out, OutputFormat format) {
    Resumed r{absl::UnknownError("not run"), {}, {}, {}};
    CompressOptions o = Options(out, format);
    o.layerwise.on_resume = [&](int first, int n) { r.on_resume.emplace_back(first, n); };
    o.layerwise.on_layer_done = [&](const LayerDone& done) { r.layers_done.push_back(done.layer); };
    o.layerwise.progress = [&](const std::string& line) { r.log.push_back(line); };
    r.report = RunCompression(MustParse(yaml), o);
    return r;
  }

  fs::path dir_, model_dir_, calib_;
};

TEST_F(CompressResumeTest, ResumedRunWritesTheBytesOfAnUninterruptedRun) {
  const std::vector<std::string> recipes = {kGptqActOrder, kSparseThenGptq};
  int variant = 0;
  for (size_t r = 0; r < recipes.size(); ++r) {
    for (OutputFormat format : {OutputFormat::kDense, OutputFormat::kGptq, OutputFormat::kCompressedTensors}) {
      const int cancel_after = 1 + (variant++ % 2);  // 2 or 3 layers persisted
      const std::string tag = absl::StrCat(r, "-", std::string(OutputFormatName(format)));
      SCOPED_TRACE(recipes[r] + " " + tag + " cancelled after layer " + std::to_string(cancel_after));
      auto reference = RunCompression(MustParse(recipes[r]), Options("ref-" + tag, format));
      ASSERT_TRUE(reference.ok()) << reference.status();
      EXPECT_FALSE(fs::exists(dir_ / ("ref-" + tag + ".partial")));

      ASSERT_NO_FATAL_FAILURE(RunCancelled(recipes[r], "out-" + tag, format, cancel_after));
      Resumed again = RunAgain(recipes[r], "out-" + tag, format);
      ASSERT_TRUE(again.report.ok()) << again.report.status();
      EXPECT_EQ(again.on_resume, (std::vector<std::pair<int, int>>{{cancel_after + 1, kLayers}}));
      std::vector<int> compressed;
      for (int l = cancel_after + 1; l < kLayers; ++l) compressed.push_back(l);
      EXPECT_EQ(again.layers_done, compressed);
      EXPECT_THAT(again.log.front(), HasSubstr(absl::StrCat("resuming at layer ", cancel_after + 2, "/4")));
      EXPECT_FALSE(fs::exists(dir_ / ("out-" + tag + ".partial")));
      EXPECT_FALSE(fs::exists(dir_ / ("out-" + tag) / "layers"));
      EXPECT_FALSE(fs::exists(dir_ / ("out-" + tag) / "job.json"));

      ASSERT_EQ(again.report->matrices.size(), reference->matrices.size());
      ASSERT_EQ(again.report->layer_seconds.size(), static_cast<size_t>(kLayers));
      for (size_t i = 0; i < reference->matrices.size(); ++i) {
        EXPECT_EQ(again.report->matrices[i].module, reference->matrices[i].module);
        EXPECT_EQ(again.report->matrices[i].error, reference->matrices[i].error);
      }
      const nlohmann::json j = nlohmann::json::parse(ReadBytes(dir_ / ("out-" + tag) / "report.json"));
      EXPECT_EQ(j["resumed_from_layer"], cancel_after + 1);
      EXPECT_GT(j["timings"]["resume_seconds"].get<double>(), 0.0);
      EXPECT_EQ(nlohmann::json::parse(ReadBytes(dir_ / ("ref-" + tag) / "report.json"))["resumed_from_layer"], 0);
      ExpectSameOutput(dir_ / ("out-" + tag), dir_ / ("ref-" + tag));
    }
  }
}

// Cancelled after the last layer: everything is restored, nothing recomputed.
TEST_F(CompressResumeTest, EveryLayerDoneOnlyWritesTheOutput) {
  ASSERT_TRUE(RunCompression(MustParse(kGptqActOrder), Options("ref", OutputFormat::kGptq)).ok());
  ASSERT_NO_FATAL_FAILURE(RunCancelled(kGptqActOrder, "out", OutputFormat::kGptq, kLayers - 1));
  Resumed again = RunAgain(kGptqActOrder, "out", OutputFormat::kGptq);
  ASSERT_TRUE(again.report.ok()) << again.report.status();
  EXPECT_EQ(again.on_resume, (std::vector<std::pair<int, int>>{{kLayers, kLayers}}));
  EXPECT_TRUE(again.layers_done.empty());
  EXPECT_EQ(again.report->embed_seconds, 0.0);  // not even the embedding
  ExpectSameOutput(dir_ / "out", dir_ / "ref");
}

// A damaged or incomplete layer ends the usable prefix: the run resumes before
// it, and the later layers' files are discarded.
TEST_F(CompressResumeTest, DamagedOrIncompleteLayerIsRecomputed) {
  ASSERT_TRUE(RunCompression(MustParse(kSparseThenGptq), Options("ref", OutputFormat::kCompressedTensors)).ok());
  struct Damage {
    std::string tag;
    int resumes_at;
    std::function<void(const fs::path& layers)> apply;
  };
  const std::vector<Damage> damages = {
      {"flipped-byte", 2,
       [](const fs::path& layers) {
         const fs::path f = layers / "layer-00002.safetensors";
         std::string bytes = ReadBytes(f);
         bytes[bytes.size() / 2] ^= 0x40;
         std::ofstream(f, std::ios::binary | std::ios::trunc) << bytes;
       }},
      {"truncated", 2,
       [](const fs::path& layers) {
         fs::resize_file(layers / "layer-00002.safetensors", fs::file_size(layers / "layer-00002.safetensors") / 2);
       }},
      // Killed between the two files of layer 1: layer 2 is an orphan.
      {"no-json", 1,
       [](const fs::path& layers) {
         fs::remove(layers / "layer-00001.json");
         std::ofstream(layers / "layer-00001.json.tmp.123") << "{\"ver";
       }},
      {"bad-json", 1, [](const fs::path& layers) { std::ofstream(layers / "layer-00001.json") << "{\"ver"; }},
  };
  for (const Damage& d : damages) {
    SCOPED_TRACE(d.tag);
    const std::string out = "out-" + d.tag;
    ASSERT_NO_FATAL_FAILURE(RunCancelled(kSparseThenGptq, out, OutputFormat::kCompressedTensors, 2));
    d.apply(dir_ / (out + ".partial") / "layers");
    // What a resume keeps: only the intact prefix.
    {
      auto point = PrepareLayerCheckpoint(
          dir_ / (out + ".partial"), nlohmann::json::parse(ReadBytes(dir_ / (out + ".partial") / "job.json")),
          kLayers, true);
      ASSERT_TRUE(point.ok()) << point.status();
      EXPECT_EQ(point->first_layer, d.resumes_at);
      size_t files = 0;
      for ([[maybe_unused]] const auto& item : fs::directory_iterator(dir_ / (out + ".partial") / "layers")) ++files;
      EXPECT_EQ(files, 2u * d.resumes_at);
    }
    Resumed again = RunAgain(kSparseThenGptq, out, OutputFormat::kCompressedTensors);
    ASSERT_TRUE(again.report.ok()) << again.report.status();
    EXPECT_EQ(again.on_resume, (std::vector<std::pair<int, int>>{{d.resumes_at, kLayers}}));
    ExpectSameOutput(dir_ / out, dir_ / "ref");
  }
}

// Another recipe (or calibration, or format) than the interrupted run's: its
// layers are of no use, the folder is discarded and the run starts over.
TEST_F(CompressResumeTest, ChangedJobDiscardsThePartialFolder) {
  ASSERT_TRUE(RunCompression(MustParse(kGptqActOrder), Options("ref")).ok());
  ASSERT_NO_FATAL_FAILURE(RunCancelled(kSparseThenGptq, "out", OutputFormat::kDense, 1));
  Resumed again = RunAgain(kGptqActOrder, "out", OutputFormat::kDense);
  ASSERT_TRUE(again.report.ok()) << again.report.status();
  EXPECT_TRUE(again.on_resume.empty());
  EXPECT_EQ(again.layers_done, (std::vector<int>{0, 1, 2, 3}));
  ASSERT_FALSE(again.log.empty());
  EXPECT_THAT(again.log.front(), HasSubstr("discarded"));
  EXPECT_THAT(again.log.front(), HasSubstr("recipe"));
  EXPECT_THAT(again.log.front(), HasSubstr("starting at layer 1/4"));
  ExpectSameOutput(dir_ / "out", dir_ / "ref");

  // A different calibration seed changes the tokens.
  ASSERT_NO_FATAL_FAILURE(RunCancelled(kGptqActOrder, "seed", OutputFormat::kDense, 1));
  CompressOptions o = Options("seed");
  o.calibration.seed = 1;
  std::vector<std::string> log;
  o.layerwise.progress = [&](const std::string& line) { log.push_back(line); };
  bool resumed = false;
  o.layerwise.on_resume = [&](int, int) { resumed = true; };
  ASSERT_TRUE(RunCompression(MustParse(kGptqActOrder), o).ok());
  EXPECT_FALSE(resumed);
  EXPECT_THAT(log.front(), HasSubstr("calibration"));

  // Without resume the folder is discarded even when it matches.
  ASSERT_NO_FATAL_FAILURE(RunCancelled(kGptqActOrder, "off", OutputFormat::kDense, 1));
  o = Options("off");
  o.resume = false;
  o.layerwise.on_resume = [&](int, int) { resumed = true; };
  ASSERT_TRUE(RunCompression(MustParse(kGptqActOrder), o).ok());
  EXPECT_FALSE(resumed);
  ExpectSameOutput(dir_ / "off", dir_ / "ref");
}

// The service's runner: the observer hears of the resume, with progress.
TEST_F(CompressResumeTest, JobRunnerReportsTheResume) {
  ASSERT_NO_FATAL_FAILURE(RunCancelled(kGptqActOrder, "job", OutputFormat::kGptq, 1));
  CompressionJob job;
  job.recipe_yaml = kGptqActOrder;
  job.compress = Options("job", OutputFormat::kGptq);
  std::vector<std::pair<int, int>> resumed;
  std::vector<std::string> stages;
  JobObserver observer;
  observer.on_resume = [&](int first, int n) { resumed.emplace_back(first, n); };
  observer.progress = [&](const std::string& stage, int layer, int n, double) {
    stages.push_back(absl::StrCat(stage, " ", layer, "/", n));
  };
  auto result = RunCompressionJob(job, observer);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(resumed, (std::vector<std::pair<int, int>>{{2, kLayers}}));
  EXPECT_THAT(stages, ::testing::ElementsAre("load 0/0", "calibrate 2/4", "calibrate 3/4", "calibrate 4/4", "done 0/0"));
}

// Writing and checkpointing on the writer thread (and reading the next layer
// ahead) changes nothing in the output, and the in-line run reports its I/O
// as waited for.
TEST_F(CompressResumeTest, OverlappedAndInLineIoWriteTheSameBytes) {
  for (OutputFormat format : {OutputFormat::kGptq, OutputFormat::kCompressedTensors}) {
    const std::string tag(OutputFormatName(format));
    SCOPED_TRACE(tag);
    CompressOptions overlapped = Options("overlapped-" + tag, format);
    ASSERT_TRUE(overlapped.overlap_io);  // the default
    CompressOptions in_line = Options("in-line-" + tag, format);
    in_line.overlap_io = false;
    auto a = RunCompression(MustParse(kSparseThenGptq), overlapped);
    auto b = RunCompression(MustParse(kSparseThenGptq), in_line);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    ExpectSameOutput(overlapped.out_dir, in_line.out_dir);
    EXPECT_GT(b->io_wait_seconds, 0.0);
    const nlohmann::json j = nlohmann::json::parse(ReadBytes(in_line.out_dir / "report.json"));
    EXPECT_EQ(j["timings"]["io_wait_seconds"].get<double>(), b->io_wait_seconds);
  }
}

// A layer the writer thread cannot persist fails the run with that error,
// within one layer of it, in both modes; the finished layers before it stay.
TEST_F(CompressResumeTest, FailedCheckpointWriteFailsTheRun) {
  for (bool overlap : {true, false}) {
    SCOPED_TRACE(overlap ? "overlapped" : "in line");
    const std::string out = overlap ? "broken-overlapped" : "broken-in-line";
    CompressOptions o = Options(out, OutputFormat::kGptq);
    o.overlap_io = overlap;
    std::vector<int> done;
    o.layerwise.on_layer_done = [&](const LayerDone& d) {
      done.push_back(d.layer);
      if (d.layer != 0) return;
      // Before layer 0 is handed to the writer: its checkpoint folder becomes a file.
      const fs::path layers = dir_ / (out + ".partial") / "layers";
      fs::remove_all(layers);
      std::ofstream(layers) << "not a folder";
    };
    auto report = RunCompression(MustParse(kGptqActOrder), o);
    ASSERT_FALSE(report.ok());
    EXPECT_THAT(std::string(report.status().message()), HasSubstr("layer-00000"));
    EXPECT_LE(done.size(), overlap ? 2u : 1u);
    EXPECT_FALSE(fs::exists(dir_ / out));
  }
}

TEST(LayerCheckpointTest, RoundTripsEveryKindOfEntry) {
  const fs::path partial = testing::MakeTempDir("layer-ckpt") / "out.partial";
  ASSERT_TRUE(StartLayerCheckpoint(partial, {{"x", 1}}).ok());
  PersistedLayer layer;
  layer.layer = 5;
  layer.seconds = 0.125;
  // Quantized with values equal to its codes (stored as codes only), with
  // values that differ (stored too), 8-bit codes (a byte each, not two), and
  // no values at all.
  auto quantized = [](int bits, bool act_order) {
    QuantizedWeight w;
    w.rows = 3;
    w.cols = 8;
    w.bits = bits;
    w.group_size = 4;
    w.sym = false;
    w.act_order = act_order;
    w.num_groups = 2;
    for (int i = 0; i < 24; ++i) w.codes.push_back((i * 37) % (1 << bits));
    for (int i = 0; i < 6; ++i) w.scales.push_back(0.01f * (i + 1));
    for (int i = 0; i < 6; ++i) w.zeros.push_back(i % (1 << bits));
    w.g_idx = act_order ? std::vector<int32_t>{1, 0, 1, 0, 0, 1, 1, 0} : std::vector<int32_t>{0, 0, 0, 0, 1, 1, 1, 1};
    return w;
  };
  for (int k = 0; k < 4; ++k) {
    CompressedTensorEntry e;
    e.name = absl::StrCat("model.layers.5.mlp.m", k, ".weight");
    e.shape = {3, 8};
    e.quantized = quantized(k == 2 ? 8 : 4, k == 1);
    if (k != 3) {
      for (int r = 0; r < 3; ++r) {
        for (int c = 0; c < 8; ++c) e.values.push_back(e.quantized->Dequantize(r, c));
      }
    }
    if (k == 1) e.values[5] = -0.0f;  // not what the codes give
    e.sparsity = 1.0 / 3.0;
    e.two_four = k == 0;
    layer.tensors.push_back(std::move(e));
  }
  CompressedTensorEntry norm;
  norm.name = "model.layers.5.input_layernorm.weight";
  norm.shape = {8};
  norm.values = {1, 2, 3, 4, 5, 6, 7, 0.1f};
  layer.tensors.push_back(norm);
  MatrixReport m;
  m.module = "model.layers.5.mlp.m0";
  m.layer = 5;
  m.methods = {"sparsegpt", "gptq"};
  m.error = 0.1 + 0.2;
  m.rtn_error = 1.0 / 3.0;
  m.solver_loss = std::numeric_limits<double>::quiet_NaN();
  layer.matrices = {m};
  ASSERT_TRUE(WriteLayerCheckpoint(partial, layer).ok());
  ASSERT_TRUE(VerifyLayerCheckpoint(partial, 5).ok());
  EXPECT_EQ(VerifyLayerCheckpoint(partial, 4).code(), absl::StatusCode::kNotFound);
  auto back = ReadLayerCheckpoint(partial, 5);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->seconds, 0.125);
  ASSERT_EQ(back->tensors.size(), layer.tensors.size());
  for (size_t i = 0; i < layer.tensors.size(); ++i) {
    const CompressedTensorEntry& a = layer.tensors[i];
    const CompressedTensorEntry& b = back->tensors[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.shape, b.shape);
    ASSERT_EQ(a.values.size(), b.values.size()) << a.name;
    // Bitwise (NaN payloads included); memcmp must not see the null data() of an empty vector.
    if (!a.values.empty()) {
      EXPECT_EQ(std::memcmp(a.values.data(), b.values.data(), a.values.size() * 4), 0) << a.name;
    }
    EXPECT_EQ(a.sparsity, b.sparsity);
    EXPECT_EQ(a.two_four, b.two_four);
    ASSERT_EQ(a.quantized.has_value(), b.quantized.has_value());
    if (!a.quantized.has_value()) continue;
    EXPECT_EQ(a.quantized->codes, b.quantized->codes);
    EXPECT_EQ(a.quantized->scales, b.quantized->scales);
    EXPECT_EQ(a.quantized->zeros, b.quantized->zeros);
    EXPECT_EQ(a.quantized->g_idx, b.quantized->g_idx);
    EXPECT_EQ(a.quantized->bits, b.quantized->bits);
    EXPECT_EQ(a.quantized->act_order, b.quantized->act_order);
    EXPECT_EQ(a.quantized->sym, b.quantized->sym);
  }
  ASSERT_EQ(back->matrices.size(), 1u);
  EXPECT_EQ(back->matrices[0].ToJson().dump(), m.ToJson().dump());
  EXPECT_EQ(back->matrices[0].error, m.error);
  EXPECT_EQ(back->matrices[0].rtn_error, m.rtn_error);
  // The 4-bit codes went to disk two to a byte, the 8-bit ones a byte each,
  // the quantized values as codes only.
  auto file = SafetensorsFile::Open(partial / "layers" / "layer-00005.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->Find("model.layers.5.mlp.m0.weight#codes")->dtype, DType::kU8);
  EXPECT_EQ((*file)->Find("model.layers.5.mlp.m0.weight#codes")->numel(), 12);
  EXPECT_EQ((*file)->Find("model.layers.5.mlp.m2.weight#codes")->dtype, DType::kU8);
  EXPECT_EQ((*file)->Find("model.layers.5.mlp.m2.weight#codes")->numel(), 24);
  EXPECT_EQ((*file)->Find("model.layers.5.mlp.m0.weight"), nullptr);
  EXPECT_NE((*file)->Find("model.layers.5.mlp.m1.weight"), nullptr);
}

// Codes of up to 4 bits go two to a byte (an odd count leaves half a byte),
// up to 8 bits one to a byte, and come back exactly, at every width.
TEST(LayerCheckpointTest, CodesAreStoredInTheFewestWholeBytes) {
  const fs::path partial = testing::MakeTempDir("layer-ckpt-codes") / "out.partial";
  ASSERT_TRUE(StartLayerCheckpoint(partial, {{"x", 1}}).ok());
  PersistedLayer layer;
  layer.layer = 0;
  const std::vector<int> widths = {2, 3, 4, 5, 8};
  for (int bits : widths) {
    QuantizedWeight w;
    w.rows = 3;
    w.cols = 5;  // 15 codes: odd
    w.bits = bits;
    w.num_groups = 1;
    for (int i = 0; i < 15; ++i) w.codes.push_back((i * 11 + bits) % (1 << bits));
    w.codes[14] = (1 << bits) - 1;  // the top code in the last, lone half byte
    w.scales = {0.5f, 0.25f, 0.125f};
    w.zeros = {0, 1, (1 << bits) - 1};
    w.g_idx.assign(5, 0);
    CompressedTensorEntry e;
    e.name = absl::StrCat("model.layers.0.mlp.w", bits, ".weight");
    e.shape = {3, 5};
    e.quantized = std::move(w);
    layer.tensors.push_back(std::move(e));
  }
  ASSERT_TRUE(WriteLayerCheckpoint(partial, layer).ok());
  auto file = SafetensorsFile::Open(partial / "layers" / "layer-00000.safetensors");
  ASSERT_TRUE(file.ok());
  for (int bits : widths) {
    const TensorInfo* codes = (*file)->Find(absl::StrCat("model.layers.0.mlp.w", bits, ".weight#codes"));
    ASSERT_NE(codes, nullptr) << bits;
    EXPECT_EQ(codes->dtype, DType::kU8) << bits;
    EXPECT_EQ(codes->numel(), bits <= 4 ? 8 : 15) << bits;
  }
  auto back = ReadLayerCheckpoint(partial, 0);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->tensors.size(), widths.size());
  for (size_t i = 0; i < widths.size(); ++i) {
    ASSERT_TRUE(back->tensors[i].quantized.has_value());
    EXPECT_EQ(back->tensors[i].quantized->codes, layer.tensors[i].quantized->codes) << widths[i];
  }
}

// Grids wider than 8 bits (allow_wide_bits, analysis only) carry no codes
// and cannot be checkpointed: an error naming the tensor, nothing committed.
TEST(LayerCheckpointTest, CodesWiderThanAByteAreRefused) {
  const fs::path partial = testing::MakeTempDir("layer-ckpt-wide") / "out.partial";
  ASSERT_TRUE(StartLayerCheckpoint(partial, {{"x", 1}}).ok());
  std::vector<float> w(4 * 8);
  for (size_t i = 0; i < w.size(); ++i) w[i] = 0.01f * static_cast<float>(i) - 0.1f;
  RtnOptions o;
  o.bits = 12;
  o.group_size = 4;
  o.allow_wide_bits = true;
  auto rtn = RtnQuantize(w, 4, 8, o);
  ASSERT_TRUE(rtn.ok()) << rtn.status();
  EXPECT_TRUE(rtn->quantized.codes.empty());
  PersistedLayer layer;
  layer.layer = 0;
  CompressedTensorEntry e;
  e.name = "model.layers.0.mlp.down_proj.weight";
  e.shape = {4, 8};
  e.quantized = std::move(rtn->quantized);
  layer.tensors.push_back(std::move(e));
  const absl::Status s = WriteLayerCheckpoint(partial, layer);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("model.layers.0.mlp.down_proj.weight"), HasSubstr("12-bit codes are not kept")));
  EXPECT_EQ(VerifyLayerCheckpoint(partial, 0).code(), absl::StatusCode::kNotFound);
}

// The output writer's Add runs beside the tensors file (another thread); the
// layer is committed only when the Add succeeded too, and its error is the
// one returned.
TEST(LayerCheckpointTest, CommitsOnlyWhenWhatRunsAlongsideSucceeds) {
  const fs::path partial = testing::MakeTempDir("layer-ckpt-alongside") / "out.partial";
  ASSERT_TRUE(StartLayerCheckpoint(partial, {{"x", 1}}).ok());
  PersistedLayer layer;
  layer.layer = 0;
  CompressedTensorEntry norm;
  norm.name = "model.layers.0.input_layernorm.weight";
  norm.shape = {4};
  norm.values = {1, 2, 3, 4};
  layer.tensors.push_back(norm);

  std::thread::id alongside_thread;
  const absl::Status refused = WriteLayerCheckpoint(partial, layer, [&] {
    alongside_thread = std::this_thread::get_id();
    return absl::InvalidArgumentError("the writer refuses layer 0");
  });
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_EQ(refused.message(), "the writer refuses layer 0");
  EXPECT_NE(alongside_thread, std::thread::id());
  EXPECT_NE(alongside_thread, std::this_thread::get_id());
  EXPECT_EQ(VerifyLayerCheckpoint(partial, 0).code(), absl::StatusCode::kNotFound);

  int calls = 0;
  ASSERT_TRUE(WriteLayerCheckpoint(partial, layer, [&] {
                ++calls;
                return absl::OkStatus();
              }).ok());
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(VerifyLayerCheckpoint(partial, 0).ok());
  auto resume = PrepareLayerCheckpoint(partial, {{"x", 1}}, 4, /*resume=*/true);
  ASSERT_TRUE(resume.ok()) << resume.status();
  EXPECT_EQ(resume->first_layer, 1);
}

TEST(StableHasherTest, PiecesDoNotMatter) {
  std::string text;
  for (int i = 0; i < 1000; ++i) text += static_cast<char>(i * 7);
  StableHasher whole;
  whole.Update(text);
  for (size_t step : {1, 3, 8, 13, 999}) {
    StableHasher pieces;
    for (size_t i = 0; i < text.size(); i += step) pieces.Update(std::string_view(text).substr(i, step));
    EXPECT_EQ(pieces.Digest(), whole.Digest()) << step;
  }
  StableHasher other;
  other.Update(text.substr(0, 999));
  EXPECT_NE(other.Digest(), whole.Digest());
  EXPECT_EQ(whole.HexDigest().size(), 16u);
}

}  // namespace
}  // namespace shrinkray
