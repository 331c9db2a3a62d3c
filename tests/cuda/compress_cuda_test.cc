// The layerwise CPU pipeline with its GPU pieces, on stories260K:
//  - NCCL under the pipeline (issue "distributed": a 1-rank NCCL job gives the
//    CPU job's results): the host-staged NCCL communicator
//    (core/kernels/cuda/host_staged_communicator.cc) on host buffers, and a
//    job whose collectives (the Hessian all-reduces, the resume layer; one
//    rank broadcasts no solved matrix) all go through NCCL, against the same
//    job with no communicator; then the same with everything on the GPU,
//    whose Hessians are all-reduced on the device. One rank, so the
//    reductions are identities and the outputs must be the same bytes; a
//    counting wrapper proves the collectives ran, and where.
//  - GPU solvers (core/kernels/cuda/cuda_solver_backend.cc): the same job with
//    GPTQ/SparseGPT solved on the GPU against the CPU job: every matrix solved
//    there (GPTQ after pruning with its keep mask too), and perplexity within
//    0.5%.
// Without a CUDA device every test SKIPS; without ../shared/data the job tests SKIP.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "core/comm/communicator.h"
#include "core/comm/store.h"
#include "core/pipeline/compress.h"
#include "core/algo/gptq.h"
#include "core/algo/sparsegpt.h"
#include "core/pipeline/layer_executor.h"
#include "core/pipeline/device_factories.h"
#include "core/pipeline/solver_backend.h"
#include "core/io/text_file.h"
#include "core/tokenizer/tokenizer.h"
#include "compress_test_util.h"
#include "cuda_test_util.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray {
namespace {

namespace fs = std::filesystem;
using cuda_test::CudaTest;
using testing::CountingCommunicator;

std::unique_ptr<Communicator> MakeStagedOneRank() {
  CommOptions options;
  options.timeout = absl::Seconds(60);
  absl::StatusOr<std::unique_ptr<Communicator>> comm = MakeHostCommunicator("nccl", MakeInProcessStore(), options);
  EXPECT_TRUE(comm.ok()) << comm.status();
  return comm.ok() ? std::move(*comm) : nullptr;
}

class HostStagedNcclTest : public CudaTest {};

TEST_F(HostStagedNcclTest, CollectivesOnHostBuffersOneRank) {
  std::unique_ptr<Communicator> comm = MakeStagedOneRank();
  ASSERT_NE(comm, nullptr);
  EXPECT_EQ(comm->backend(), "nccl");
  EXPECT_EQ(comm->size(), 1);

  std::vector<double> f64 = {1.5, -2.25, 1e300, 0.0};
  const std::vector<double> f64_before = f64;
  ASSERT_TRUE(comm->AllReduce(f64.data(), f64.size(), CommDType::kF64, ReduceOp::kSum).ok());
  EXPECT_EQ(f64, f64_before);
  std::vector<float> f32(1000);
  for (size_t i = 0; i < f32.size(); ++i) f32[i] = 0.5f * static_cast<float>(i) - 7.0f;
  const std::vector<float> f32_before = f32;
  ASSERT_TRUE(comm->AllReduce(f32.data(), f32.size(), CommDType::kF32, ReduceOp::kMax).ok());
  EXPECT_EQ(f32, f32_before);
  // A larger buffer after a smaller one (the staging buffer grows), then bytes.
  std::vector<uint8_t> bytes(3 << 20);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 31 + 7);
  const std::vector<uint8_t> bytes_before = bytes;
  ASSERT_TRUE(comm->Broadcast(bytes.data(), bytes.size(), CommDType::kU8, 0).ok());
  EXPECT_TRUE(bytes == bytes_before);

  std::vector<int32_t> in = {4, 5, 6}, out(3, -1);
  ASSERT_TRUE(comm->AllGather(in.data(), out.data(), in.size(), CommDType::kI32).ok());
  EXPECT_EQ(out, in);
  std::vector<int32_t> outv(3, -1);
  ASSERT_TRUE(comm->AllGatherV(in.data(), outv.data(), {3}, CommDType::kI32).ok());
  EXPECT_EQ(outv, in);
  ASSERT_TRUE(comm->Barrier().ok());

  // The wrapped communicator's argument checks: InvalidArgument, still usable.
  EXPECT_TRUE(absl::IsInvalidArgument(comm->AllReduce(nullptr, 4, CommDType::kF32, ReduceOp::kSum)));
  EXPECT_TRUE(absl::IsInvalidArgument(comm->Broadcast(f32.data(), 4, CommDType::kF32, 1)));
  EXPECT_TRUE(absl::IsInvalidArgument(comm->AllGatherV(in.data(), outv.data(), {1, 2}, CommDType::kI32)));
  EXPECT_TRUE(comm->AllReduce(f32.data(), 0, CommDType::kF32, ReduceOp::kSum).ok());
  EXPECT_TRUE(comm->AllReduce(f64.data(), f64.size(), CommDType::kF64, ReduceOp::kSum).ok());
}

struct NcclJobCase {
  const char* name;
  const char* yaml;
};

// A stories260K job (16 windows of 128 tokens) run once on the CPU alone.
class CompressCudaJobTest : public CudaTest, public ::testing::WithParamInterface<NcclJobCase> {
 protected:
  void SetUp() override {
    CudaTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    const fs::path data = testing::SharedDataDir();
    model_dir_ = data / "stories260K";
    train_ = data / "text" / "tinystories_train_prefix.txt";
    SHRINKRAY_REQUIRE_PATH(model_dir_ / "model.safetensors");
    SHRINKRAY_REQUIRE_PATH(train_);
    root_ = testing::MakeTempDir("compress-cuda");
    recipe_ = testing::MustParseRecipe(GetParam().yaml);
    cpu_ = root_ / "cpu";
    auto cpu_report = RunCompression(recipe_, Options(cpu_));
    ASSERT_TRUE(cpu_report.ok()) << cpu_report.status();
  }

  CompressOptions Options(const fs::path& out) const {
    CompressOptions o;
    o.model_dir = model_dir_;
    o.calib_path = train_;
    o.out_dir = out;
    o.calibration = {16, 128, 0};
    o.format = OutputFormat::kDense;
    return o;
  }

  // The CPU job's and `out`'s perplexity on the validation prefix (20000 chars, windows of 256).
  void ValidPerplexities(const fs::path& out, double* ppl_cpu, double* ppl_out) const {
    const fs::path eval_path = testing::SharedDataDir() / "text" / "tinystories_valid_prefix.txt";
    ASSERT_TRUE(fs::exists(eval_path)) << eval_path;
    auto tokenizer = Tokenizer::FromFile(model_dir_ / "tokenizer.json");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    auto text = ReadTextFile(eval_path, 20000);
    ASSERT_TRUE(text.ok()) << text.status();
    auto ids = (*tokenizer)->Encode(*text, true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    *ppl_cpu = testing::PerplexityOf(cpu_, *ids, 256);
    *ppl_out = testing::PerplexityOf(out, *ids, 256);
  }

  fs::path model_dir_, train_, root_, cpu_;
  Recipe recipe_;
};

class CompressNcclJobTest : public CompressCudaJobTest {};

TEST_P(CompressNcclJobTest, OneRankNcclJobEqualsCpuJob) {

  std::unique_ptr<Communicator> nccl = MakeStagedOneRank();
  ASSERT_NE(nccl, nullptr);
  CountingCommunicator counting(nccl.get());
  const fs::path out = root_ / "nccl";
  CompressOptions o = Options(out);
  o.layerwise.comm = &counting;
  auto report = RunCompression(recipe_, o);
  ASSERT_TRUE(report.ok()) << report.status();

  // 5 layers: one Hessian all-reduce per true-sequential group (4 per layer),
  // on the host (the CPU executor holds them); the solved matrices are not
  // broadcast (one rank), only the resume point is.
  EXPECT_EQ(counting.all_reduces, 5 * 4);
  EXPECT_EQ(counting.broadcasts, 1);
  EXPECT_GT(counting.reduced_bytes, 0u);
  EXPECT_TRUE(counting.on_device() == nullptr || counting.on_device()->all_reduces == 0);
  testing::ExpectSameFiles(cpu_, out);
  std::printf("stories260K %s via NCCL: %ld all-reduces (%zu bytes), %ld broadcasts; outputs identical\n",
              GetParam().name, counting.all_reduces, counting.reduced_bytes, counting.broadcasts);
}

// The same 1-rank NCCL job with everything on the GPU (`--device cuda` on a
// GPU worker with --comm-backend nccl): the Hessians the executor holds are
// all-reduced where they are (HessianAccumulator::MergeAcrossRanks through
// the communicator's OnDevice one), none through the host; the output is the
// lone GPU job's, byte for byte.
TEST_P(CompressNcclJobTest, OneRankNcclGpuJobMergesOnTheDevice) {
  auto run = [&](const fs::path& out, Communicator* comm) {
    absl::StatusOr<std::unique_ptr<SolverBackend>> gpu = MakeSolverBackend(ComputeDevice::Cuda(0));
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    absl::StatusOr<LayerExecutorFactory> executors = MakeLayerExecutorFactory(ComputeDevice::Cuda(0));
    ASSERT_TRUE(executors.ok()) << executors.status();
    CompressOptions o = Options(out);
    o.layerwise.solvers = gpu->get();
    o.layerwise.executors = *executors;
    o.layerwise.comm = comm;
    auto report = RunCompression(recipe_, o);
    ASSERT_TRUE(report.ok()) << report.status();
  };
  const fs::path alone = root_ / "gpu-alone";
  ASSERT_NO_FATAL_FAILURE(run(alone, nullptr));
  std::unique_ptr<Communicator> nccl = MakeStagedOneRank();
  ASSERT_NE(nccl, nullptr);
  ASSERT_NE(nccl->OnDevice(0), nullptr);
  EXPECT_EQ(nccl->OnDevice(1), nullptr);
  CountingCommunicator counting(nccl.get());
  const fs::path out = root_ / "gpu-nccl";
  ASSERT_NO_FATAL_FAILURE(run(out, &counting));
  ASSERT_NE(counting.on_device(), nullptr);
  EXPECT_EQ(counting.on_device()->all_reduces, 5 * 4);
  EXPECT_EQ(counting.all_reduces, 0);
  EXPECT_EQ(counting.broadcasts, 1);
  testing::ExpectSameFiles(alone, out);
  std::printf("stories260K %s on the GPU via NCCL: %ld device all-reduces (%zu bytes); outputs identical\n",
              GetParam().name, counting.on_device()->all_reduces, counting.on_device()->reduced_bytes);
}

// Two ranks on two GPUs (skipped on fewer; NCCL takes one rank per GPU), as
// two GPU workers with --comm-backend nccl run a gang: each rank's executor,
// solvers and communicator on its own GPU and its half of the windows, the
// Hessians merged on the devices, each solved matrix broadcast once. Against
// the lone GPU job: the merge rounds H's sums differently (docs/distributed.md),
// so the same matrices with errors within 1% and perplexity within 0.5%; the
// SparseGPT -> GPTQ chain turns rounding into other codes and masks
// (CompressGpuSolverJobTest), so 10% there.
TEST_P(CompressNcclJobTest, TwoRanksOnTwoGpusMergeOnTheirDevices) {
  int devices = 0;
  ASSERT_EQ(cudaGetDeviceCount(&devices), cudaSuccess);
  if (devices < 2) GTEST_SKIP() << "needs 2 GPUs, found " << devices;
  auto options = [&](const fs::path& out, int device, SolverBackend** solvers_out,
                     std::unique_ptr<SolverBackend>* keep) {
    absl::StatusOr<std::unique_ptr<SolverBackend>> gpu = MakeSolverBackend(ComputeDevice::Cuda(device));
    EXPECT_TRUE(gpu.ok()) << gpu.status();
    absl::StatusOr<LayerExecutorFactory> executors = MakeLayerExecutorFactory(ComputeDevice::Cuda(device));
    EXPECT_TRUE(executors.ok()) << executors.status();
    CompressOptions o = Options(out);
    if (gpu.ok()) *keep = std::move(*gpu);
    o.layerwise.solvers = keep->get();
    if (executors.ok()) o.layerwise.executors = *executors;
    *solvers_out = keep->get();
    return o;
  };
  const fs::path alone = root_ / "gpu-alone";
  {
    SolverBackend* solvers = nullptr;
    std::unique_ptr<SolverBackend> keep;
    const CompressOptions o = options(alone, 0, &solvers, &keep);
    ASSERT_NE(solvers, nullptr);
    auto report = RunCompression(recipe_, o);
    ASSERT_TRUE(report.ok()) << report.status();
  }
  const fs::path two = root_ / "gpu-two";
  std::shared_ptr<Store> store = MakeInProcessStore();
  std::vector<absl::Status> results(2, absl::UnknownError("not run"));
  std::vector<long> device_all_reduces(2, -1), host_all_reduces(2, -1), broadcasts(2, -1);
  testing::OnRankThreads(2, [&](int rank) {
    CommOptions c;
    c.rank = rank;
    c.size = 2;
    c.timeout = absl::Seconds(120);
    c.device = rank;
    absl::StatusOr<std::unique_ptr<Communicator>> comm = MakeHostCommunicator("nccl", store, c);
    if (!comm.ok()) {
      results[rank] = comm.status();
      return;
    }
    CountingCommunicator counting(comm->get());
    SolverBackend* solvers = nullptr;
    std::unique_ptr<SolverBackend> keep;
    CompressOptions o = options(two, rank, &solvers, &keep);
    o.layerwise.comm = &counting;
    absl::StatusOr<CompressReport> report = RunCompression(recipe_, o);
    results[rank] = report.status();
    device_all_reduces[rank] = counting.on_device() != nullptr ? counting.on_device()->all_reduces : 0;
    host_all_reduces[rank] = counting.all_reduces;
    broadcasts[rank] = counting.broadcasts;
  });
  for (int rank = 0; rank < 2; ++rank) {
    ASSERT_TRUE(results[rank].ok()) << "rank " << rank << ": " << results[rank];
    EXPECT_EQ(device_all_reduces[rank], 5 * 4) << "rank " << rank;
    EXPECT_EQ(host_all_reduces[rank], 0) << "rank " << rank;
    // The resume point, then length and bytes for each of the 35 matrices.
    EXPECT_EQ(broadcasts[rank], 1 + 2 * 35) << "rank " << rank;
  }
  const bool chained = std::string(GetParam().name) == "sparsegpt_then_gptq";
  const double bound = chained ? 0.10 : 0.01;
  const nlohmann::json a = nlohmann::json::parse(testing::ReadFileBytes(alone / "report.json"));
  const nlohmann::json b = nlohmann::json::parse(testing::ReadFileBytes(two / "report.json"));
  EXPECT_EQ(b["workers"], 2);
  ASSERT_EQ(a["matrices"].size(), b["matrices"].size());
  for (size_t i = 0; i < a["matrices"].size(); ++i) {
    const double ea = a["matrices"][i]["error"], eb = b["matrices"][i]["error"];
    EXPECT_EQ(a["matrices"][i]["module"], b["matrices"][i]["module"]);
    EXPECT_NEAR(eb / std::max(ea, 1e-12), 1.0, bound) << a["matrices"][i]["module"];
  }
  double ppl_cpu = 0.0, ppl_alone = 0.0, ppl_two = 0.0;
  ASSERT_NO_FATAL_FAILURE(ValidPerplexities(alone, &ppl_cpu, &ppl_alone));
  ASSERT_NO_FATAL_FAILURE(ValidPerplexities(two, &ppl_cpu, &ppl_two));
  EXPECT_NEAR(ppl_two / ppl_alone, 1.0, chained ? 0.10 : 0.005) << "alone " << ppl_alone << " two GPUs " << ppl_two;
  std::printf("stories260K %s on two GPUs: ppl %.6f (one GPU %.6f, %+.4f%%)\n", GetParam().name, ppl_two,
              ppl_alone, 100.0 * (ppl_two / ppl_alone - 1.0));
}

// The GPU backend, with every solve it makes repeated by the CPU solver on
// the same inputs (the job's real weights and Hessians) and compared: masks,
// zero positions, weights, GPTQ codes. Returns the GPU's results, so the job
// runs as it would with the plain backend.
class CheckedBackend final : public SolverBackend {
 public:
  explicit CheckedBackend(std::unique_ptr<SolverBackend> gpu) : gpu_(std::move(gpu)) {}
  std::string name() const override { return gpu_->name(); }
  // Held as the job holds it: the GPU solves below use its held copy.
  void HoldHessian(absl::Span<const float> h, const DeviceHessian* device) override {
    gpu_->HoldHessian(h, device);
  }
  bool ReadsDevice(const DeviceHessian& h) const override { return gpu_->ReadsDevice(h); }
  void ReleaseHessian() override { gpu_->ReleaseHessian(); }

  absl::StatusOr<GptqResult> Gptq(absl::Span<const float> w, int rows, int cols, absl::Span<const float> h,
                                  const GptqOptions& options) override {
    absl::StatusOr<GptqResult> g = gpu_->Gptq(w, rows, cols, h, options);
    if (!g.ok()) return g;
    absl::StatusOr<GptqResult> c = GptqQuantize(w, rows, cols, h, options);
    EXPECT_TRUE(c.ok()) << c.status();
    if (c.ok()) {
      ++matrices;
      for (size_t i = 0; i < g->quantized.codes.size(); ++i) codes_differing += g->quantized.codes[i] != c->quantized.codes[i];
      codes += static_cast<long>(g->quantized.codes.size());
      // After pruning: a pruned weight stays exactly 0 (its code the zero point).
      for (size_t i = 0; i < options.keep_mask.size() && i < g->weight.size(); ++i) {
        masked_nonzero += options.keep_mask[i] == 0 && g->weight[i] != 0.0f;
      }
      masked += static_cast<long>(options.keep_mask.size());
      Weights(g->weight, c->weight);
    }
    return g;
  }

  absl::StatusOr<SparseGptResult> SparseGpt(absl::Span<const float> w, int rows, int cols, absl::Span<const float> h,
                                            const SparseGptOptions& options) override {
    absl::StatusOr<SparseGptResult> g = gpu_->SparseGpt(w, rows, cols, h, options);
    if (!g.ok()) return g;
    absl::StatusOr<SparseGptResult> c = SparseGptPrune(w, rows, cols, h, options);
    EXPECT_TRUE(c.ok()) << c.status();
    if (c.ok()) {
      ++matrices;
      EXPECT_EQ(g->keep.size(), c->keep.size());
      for (size_t i = 0; i < std::min(g->keep.size(), c->keep.size()); ++i) {
        keep_differing += g->keep[i] != c->keep[i];
        zero_differing += (g->weight[i] == 0.0f) != (c->weight[i] == 0.0f);
      }
      elements += static_cast<long>(g->keep.size());
      // Joint quantization: its codes as GPTQ's.
      EXPECT_EQ(g->quantized.has_value(), c->quantized.has_value());
      if (g->quantized.has_value() && c->quantized.has_value()) {
        const std::vector<uint8_t>& gc = g->quantized->codes;
        const std::vector<uint8_t>& cc = c->quantized->codes;
        for (size_t i = 0; i < std::min(gc.size(), cc.size()); ++i) codes_differing += gc[i] != cc[i];
        codes += static_cast<long>(gc.size());
      }
      Weights(g->weight, c->weight);
    }
    return g;
  }

  std::string Summary() const {
    return absl::StrCat(matrices, " matrices re-solved on the CPU: max |w_gpu - w_cpu| / max|w| ", max_rel_diff,
                        "; sparsegpt keep differing ", keep_differing, "/", elements, ", zero positions differing ",
                        zero_differing, "; gptq codes differing ", codes_differing, "/", codes,
                        "; pruned weights not 0 after gptq ", masked_nonzero, " (mask of ", masked, ")");
  }

  long matrices = 0, keep_differing = 0, zero_differing = 0, elements = 0;
  long codes_differing = 0, codes = 0;
  long masked = 0, masked_nonzero = 0;  // GPTQ after pruning: keep-mask entries, pruned ones not 0
  double max_rel_diff = 0.0;

 private:
  void Weights(const std::vector<float>& g, const std::vector<float>& c) {
    double scale = 0.0, diff = 0.0;
    for (size_t i = 0; i < std::min(g.size(), c.size()); ++i) {
      scale = std::max(scale, std::fabs(static_cast<double>(c[i])));
      diff = std::max(diff, std::fabs(static_cast<double>(g[i]) - c[i]));
    }
    if (scale > 0) max_rel_diff = std::max(max_rel_diff, diff / scale);
  }

  std::unique_ptr<SolverBackend> gpu_;
};

class CompressGpuSolverJobTest : public CompressCudaJobTest {};

TEST_P(CompressGpuSolverJobTest, GpuSolvesMatchCpuJob) {
  absl::StatusOr<std::unique_ptr<SolverBackend>> gpu = MakeSolverBackend(ComputeDevice::Cuda(0));
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  CheckedBackend solvers(std::move(*gpu));
  const fs::path out = root_ / "gpu";
  CompressOptions o = Options(out);
  o.layerwise.solvers = &solvers;
  auto report = RunCompression(recipe_, o);
  ASSERT_TRUE(report.ok()) << report.status();

  // 35 Linears, each solved on the GPU by every stage (GPTQ after SparseGPT
  // with its keep mask too).
  const bool chained = std::string(GetParam().name) == "sparsegpt_then_gptq";
  EXPECT_EQ(solvers.device_solves(), chained ? 70 : 35);
  EXPECT_EQ(solvers.cpu_fallbacks(), 0);
  // On the job's own matrices the GPU solvers are the CPU's: the same masks
  // (SparseGPT's threshold is exact) but where a score lies within float32
  // rounding noise of its block's threshold, weights within that noise, GPTQ
  // codes flipped only where w/scale sits on a rounding boundary. Both run
  // the recipe's inverse factor (the chain by default), cuSOLVER's and
  // LAPACK's ~1e-7 of max |U| apart: 0 of 226,560 mask positions differed
  // (H200, 2026-11-27).
  std::printf("stories260K %s: %s\n", GetParam().name, solvers.Summary().c_str());
  EXPECT_EQ(solvers.matrices, chained ? 70 : 35);
  EXPECT_EQ(solvers.masked, chained ? solvers.elements : 0);
  EXPECT_EQ(solvers.masked_nonzero, 0);
  EXPECT_LE(solvers.keep_differing, solvers.elements / 10000);
  EXPECT_LE(solvers.zero_differing, solvers.elements / 10000);
  EXPECT_LE(solvers.codes_differing, solvers.codes / 1000);

  double ppl_cpu = 0.0, ppl_gpu = 0.0;
  ASSERT_NO_FATAL_FAILURE(ValidPerplexities(out, &ppl_cpu, &ppl_gpu));
  // Single-stage recipes: within 0.5%. The chain is chaotic at this size: GPTQ
  // after 50% pruning turns float32-rounding differences in its input into
  // other codes and, through the next layers' Hessians, other masks. Measured
  // on the CPU alone (SparseGPT's kept weights scaled by 1 + U(-e, e) before
  // the GPTQ stage, 8 seeds each): e = 1e-7 gives ppl 20.31..21.27 and e = 3e-6
  // 20.28..20.80 around the unperturbed 20.58 (-1.5% .. +3.3%); so the
  // chain's bound is 10%, and the per-matrix comparison above is the check.
  EXPECT_NEAR(ppl_gpu / ppl_cpu, 1.0, chained ? 0.10 : 0.005) << "cpu " << ppl_cpu << " gpu " << ppl_gpu;
  // Same quality, not the same bits: report the matrix errors side by side.
  const nlohmann::json a = nlohmann::json::parse(testing::ReadFileBytes(cpu_ / "report.json"));
  const nlohmann::json b = nlohmann::json::parse(testing::ReadFileBytes(out / "report.json"));
  ASSERT_EQ(a["matrices"].size(), b["matrices"].size());
  double worst = 0.0;
  for (size_t i = 0; i < a["matrices"].size(); ++i) {
    const double ea = a["matrices"][i]["error"], eb = b["matrices"][i]["error"];
    worst = std::max(worst, std::fabs(eb - ea) / std::max(ea, 1e-12));
  }
  if (!chained) EXPECT_LT(worst, 0.05) << "a matrix's output error moved by more than 5% relative";
  std::printf("stories260K %s with GPU solves: ppl %.6f (CPU %.6f, %+.4f%%), worst matrix error change %.3g%%\n",
              GetParam().name, ppl_gpu, ppl_cpu, 100.0 * (ppl_gpu / ppl_cpu - 1.0), 100.0 * worst);
}

// The whole job on the GPU as `--device cuda` runs it: layer forwards and
// statistics on the device, then the GPU solvers. fp32 forwards (the
// reference): perplexity within 0.5% of the CPU job's. forward_dtype
// bfloat16 (bf16 activations and weights, tensor cores): the statistics
// carry bf16 rounding, the solves and the evaluation do not, so within 2%.
// Wanda covers the device activation norms.
class CompressGpuForwardJobTest : public CompressCudaJobTest {
 protected:
  void RunOnTheGpu(ForwardDtype dtype, double ppl_bound) {
    absl::StatusOr<std::unique_ptr<SolverBackend>> gpu = MakeSolverBackend(ComputeDevice::Cuda(0));
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    absl::StatusOr<LayerExecutorFactory> executors = MakeLayerExecutorFactory(ComputeDevice::Cuda(0));
    ASSERT_TRUE(executors.ok()) << executors.status();
    const std::string name(ForwardDtypeName(dtype));
    const fs::path out = root_ / ("gpu-forward-" + name);
    Recipe recipe = recipe_;
    for (RecipeStage& stage : recipe.stages) stage.forward_dtype = dtype;
    CompressOptions o = Options(out);
    o.layerwise.solvers = gpu->get();
    o.layerwise.executors = *executors;
    std::vector<std::string> lines;
    o.layerwise.progress = [&](const std::string& line) { lines.push_back(line); };
    auto report = RunCompression(recipe, o);
    ASSERT_TRUE(report.ok()) << report.status();
    for (const std::string& line : lines) {
      EXPECT_EQ(line.find("layer forwards"), std::string::npos) << line;
    }
    const bool wanda = std::string(GetParam().name) == "wanda";
    EXPECT_EQ((*gpu)->device_solves(), wanda ? 0 : 35);
    // Every matrix's W read where the executor holds it (LayerExecutor::
    // DeviceWeight), none copied up: by the solve (which reports its own
    // error), or for Wanda by the output error.
    EXPECT_EQ((*gpu)->weights_read_on_device(), 35);

    double ppl_cpu = 0.0, ppl_gpu = 0.0;
    ASSERT_NO_FATAL_FAILURE(ValidPerplexities(out, &ppl_cpu, &ppl_gpu));
    EXPECT_NEAR(ppl_gpu / ppl_cpu, 1.0, ppl_bound) << name << ": cpu " << ppl_cpu << " gpu " << ppl_gpu;
    std::printf("stories260K %s, %s forwards + statistics + solves on the GPU: ppl %.6f (CPU %.6f, %+.4f%%)\n",
                GetParam().name, name.c_str(), ppl_gpu, ppl_cpu, 100.0 * (ppl_gpu / ppl_cpu - 1.0));
  }
};

TEST_P(CompressGpuForwardJobTest, DeviceForwardsMatchCpuJobPerplexity) {
  RunOnTheGpu(ForwardDtype::kFloat32, 0.005);
}

TEST_P(CompressGpuForwardJobTest, Bf16DeviceForwardsStayNearCpuJobPerplexity) {
  RunOnTheGpu(ForwardDtype::kBfloat16, 0.02);
}

INSTANTIATE_TEST_SUITE_P(Recipes, CompressGpuForwardJobTest,
                         ::testing::Values(NcclJobCase{"gptq", "[{gptq: {bits: 4, group_size: 32}}]"},
                                           NcclJobCase{"sparsegpt", "[{sparsegpt: {sparsity: 0.5}}]"},
                                           NcclJobCase{"wanda", "[{wanda: {sparsity: 0.5}}]"}),
                         [](const ::testing::TestParamInfo<NcclJobCase>& info) { return info.param.name; });

INSTANTIATE_TEST_SUITE_P(Recipes, CompressGpuSolverJobTest,
                         ::testing::Values(NcclJobCase{"gptq", "[{gptq: {bits: 4, group_size: 32}}]"},
                                           NcclJobCase{"sparsegpt", "[{sparsegpt: {sparsity: 0.5}}]"},
                                           NcclJobCase{"sparsegpt_joint_w4", "[{sparsegpt: {sparsity: 0.5, bits: 4}}]"},
                                           NcclJobCase{"sparsegpt_then_gptq",
                                                       "[{sparsegpt: {sparsity: 0.5}}, {gptq: {bits: 4, "
                                                       "group_size: 32}}]"}),
                         [](const ::testing::TestParamInfo<NcclJobCase>& info) { return info.param.name; });

INSTANTIATE_TEST_SUITE_P(Recipes, CompressNcclJobTest,
                         ::testing::Values(NcclJobCase{"gptq", "[{gptq: {bits: 4, group_size: 32}}]"},
                                           NcclJobCase{"sparsegpt_then_gptq",
                                                       "[{sparsegpt: {sparsity: 0.5}}, {gptq: {bits: 4, "
                                                       "group_size: 32}}]"}),
                         [](const ::testing::TestParamInfo<NcclJobCase>& info) { return info.param.name; });

}  // namespace
}  // namespace shrinkray
