// Distillation on the GPU (core/distill/distill_device.h, the cuda:0 runner in
// core/kernels/cuda/distill_cuda.cc) against the CPU DistillTrainer on the
// real stories260K: the 5-layer teacher into a depth-pruned student keeping
// layers {0, 2, 4}, 30 steps of 8 windows of 128 tokens (micro-batches of 4,
// so gradients accumulate over two backward passes), the same options and
// seed on both devices. SKIPS without a CUDA device or without the shared data
// (SHRINKRAY_SHARED_DATA or ../shared/data).
//
// Tolerances. Both runs see the same windows in the same order and start from
// the same weights; the GPU computes the teacher and the student with bf16
// weights and activations (fp32 accumulation, softmax, loss and optimizer),
// the CPU in fp32. So:
//  * step 1's loss (identical weights, no update yet) differs only by the
//    bf16 forward: each logit carries a relative rounding of ~2^-9 and the
//    loss is a mean over 1024 rows of log-softmax terms, so the relative
//    difference is of order 1e-3; bound 1%.
//  * after 30 steps the trajectories drift apart a little more: AdamW
//    normalises each gradient entry, so the bf16 noise in the gradients moves
//    the update of small-gradient entries by up to ~lr, but these are random
//    in sign and the loss is flat in them to first order. The final training
//    loss and the trained student's perplexity (evaluated on the CPU in fp32
//    for both students, on the first 20,000 characters of the TinyStories
//    validation text) agree within 3% (the lead's budget for bf16
//    activations); a wrong gradient (layout, scaling, accumulation) moves them
//    by far more in 30 steps at lr 1e-3.
//  * the GPU run trains: its loss over the last 5 steps is below 90% of its
//    first step's.
//
// Checkpoints (the CPU trainer's files, core/distill/distill_checkpoint.h): a
// GPU run destroyed after step 10 of 20 (as a killed worker) and made again
// resumes at step 10 and ends where an uninterrupted GPU run ends; a CPU
// checkpoint goes on on the GPU and the GPU's goes back to the CPU. And the
// service's distill stage (RunCompressionJob with the cuda:0 runners) trains
// on the GPU.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/distill/distill_device.h"
#include "core/distill/distill_trainer.h"
#include "core/distill/student_init.h"
#include "core/distill/train_data.h"
#include "core/io/safetensors.h"
#include "core/io/text_file.h"
#include "core/model/llama.h"
#include "core/pipeline/device_factories.h"
#include "core/pipeline/eval.h"
#include "core/pipeline/job_runner.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/compute_device.h"
#include "core/util/status_macros.h"
#include "cuda/cuda_test_util.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray {
namespace {

namespace fs = std::filesystem;

constexpr double kFirstLossRelTol = 0.01;
constexpr double kFinalLossRelTol = 0.03;
constexpr double kPplRelTol = 0.03;
// A resumed GPU run against an uninterrupted one: the same weights, moments,
// data position and step count, so the runs differ only by the fp32 atomics
// of the embedding gradient (train_ops.h), whose order varies run to run:
// not bit for bit, but last-bit noise (H100: every loss equal, the step-20
// weights within 6e-8), far below what a lost moment or a wrong data position
// makes.
constexpr double kResumeLossRelTol = 1e-6;
constexpr double kResumeParamAbsTol = 1e-5;

class DistillCudaTest : public cuda_test::CudaTest {
 protected:
  void SetUp() override {
    CudaTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    const fs::path data = testing::SharedDataDir();
    model_dir_ = data / "stories260K";
    train_ = data / "text" / "tinystories_train_prefix.txt";
    valid_ = data / "text" / "tinystories_valid_prefix.txt";
    SHRINKRAY_REQUIRE_PATH(model_dir_ / "model.safetensors");
    SHRINKRAY_REQUIRE_PATH(train_);
    SHRINKRAY_REQUIRE_PATH(valid_);
    auto teacher = LlamaModel::Load(model_dir_);
    ASSERT_TRUE(teacher.ok()) << teacher.status();
    teacher_ = std::move(*teacher);
    auto tokenizer = Tokenizer::FromFile(model_dir_ / "tokenizer.json");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(*tokenizer);
    auto data_or = distill::TrainData::FromText(train_, *tokenizer_, 128, /*seed=*/0);
    ASSERT_TRUE(data_or.ok()) << data_or.status();
    data_ = std::make_unique<distill::TrainData>(std::move(*data_or));
  }

  absl::StatusOr<train::ParameterStore> Student() const {
    distill::StudentSpec spec;
    spec.kind = distill::StudentInitKind::kDepth;
    spec.keep_layers = {0, 2, 4};
    auto student = distill::InitStudent(*teacher_, spec);
    if (!student.ok()) return student.status();
    return std::move(student->weights);
  }

  // A runner of `device` ("cpu", "cuda:0") for the depth student, as the CLI
  // makes it.
  absl::StatusOr<std::unique_ptr<distill::DistillRunner>> MakeRunner(
      const std::string& device, const distill::DistillTrainerOptions& o) const {
    SR_ASSIGN_OR_RETURN(const distill::DistillRunnerFactory runners, Runners(device));
    auto student = Student();
    if (!student.ok()) return student.status();
    return distill::MakeDistillRunner(runners, o, *teacher_, *data_, std::move(*student));
  }

  static absl::StatusOr<distill::DistillRunnerFactory> Runners(const std::string& device) {
    SR_ASSIGN_OR_RETURN(const ComputeDevice parsed, ParseComputeDevice(device));
    return MakeDistillRunnerFactory(parsed);
  }

  // The CLI's defaults at --steps 30 --batch 8 --micro-batch 4 --seqlen 128.
  static distill::DistillTrainerOptions Options() {
    distill::DistillTrainerOptions o;
    o.steps = 30;
    o.global_batch = 8;
    o.micro_batch = 4;
    o.lr = {.max_lr = 1e-3, .min_lr = 1e-4, .warmup_steps = 0, .total_steps = 30};
    o.max_grad_norm = 1.0;
    o.loss = {.divergence = train::Divergence::kForwardKL, .alpha = 0.5, .temperature = 1.0};
    o.seed = 0;
    return o;
  }

  // Options() over 20 steps, a checkpoint every 10.
  static distill::DistillTrainerOptions CheckpointedOptions() {
    distill::DistillTrainerOptions o = Options();
    o.steps = 20;
    o.lr.total_steps = 20;
    o.checkpoint_every = 10;
    return o;
  }

  fs::path model_dir_, train_, valid_;
  std::unique_ptr<LlamaModel> teacher_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<distill::TrainData> data_;
};

struct RunResult {
  std::vector<distill::StepMetrics> steps;
  double ppl = 0;
};

TEST_F(DistillCudaTest, Stories260KDepthStudentMatchesCpu) {
  const fs::path root = testing::MakeTempDir("distill-cuda");
  auto text = ReadTextFile(valid_, 20000);
  ASSERT_TRUE(text.ok()) << text.status();
  auto ids = tokenizer_->Encode(*text, /*add_special_tokens=*/true);
  ASSERT_TRUE(ids.ok()) << ids.status();

  auto run = [&](const std::string& device, RunResult* out) {
    auto runner = MakeRunner(device, Options());
    ASSERT_TRUE(runner.ok()) << device << ": " << runner.status();
    EXPECT_EQ((*runner)->device(), device);
    const absl::Status ran =
        (*runner)->Run([&](const distill::StepMetrics& m) { out->steps.push_back(m); });
    ASSERT_TRUE(ran.ok()) << device << ": " << ran;
    EXPECT_EQ((*runner)->step(), 30);
    EXPECT_TRUE(absl::IsFailedPrecondition((*runner)->Step().status()));  // the run is complete
    const fs::path dir = root / device;
    const absl::Status saved = (*runner)->SaveStudent(dir, model_dir_, /*overwrite=*/true);
    ASSERT_TRUE(saved.ok()) << device << ": " << saved;
    auto model = LlamaModel::Load(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    EXPECT_EQ((*model)->config().num_hidden_layers, 3);
    EvalOptions eval;
    eval.seqlen = 128;
    auto result = EvaluatePerplexity(**model, *ids, eval);
    ASSERT_TRUE(result.ok()) << result.status();
    out->ppl = result->ppl;
  };
  RunResult cpu, gpu;
  run("cpu", &cpu);
  if (HasFatalFailure()) return;
  run("cuda:0", &gpu);
  if (HasFatalFailure()) return;
  ASSERT_EQ(cpu.steps.size(), 30u);
  ASSERT_EQ(gpu.steps.size(), 30u);

  for (size_t i = 0; i < gpu.steps.size(); ++i) {
    const auto& c = cpu.steps[i];
    const auto& g = gpu.steps[i];
    EXPECT_EQ(g.step, c.step);
    EXPECT_DOUBLE_EQ(g.lr, c.lr) << "step " << c.step;  // the same schedule
    EXPECT_TRUE(std::isfinite(g.loss) && std::isfinite(g.grad_norm)) << "step " << c.step;
    if (i == 0 || i + 1 == gpu.steps.size() || (i + 1) % 10 == 0) {
      std::printf("step %2ld  loss cpu %.4f gpu %.4f  kl %.4f / %.4f  ce %.4f / %.4f  grad %.3f / %.3f\n",
                  static_cast<long>(c.step), c.loss, g.loss, c.divergence, g.divergence,
                  c.cross_entropy, g.cross_entropy, c.grad_norm, g.grad_norm);
    }
  }
  auto rel = [](double a, double b) { return std::abs(a - b) / std::abs(b); };
  EXPECT_LE(rel(gpu.steps.front().loss, cpu.steps.front().loss), kFirstLossRelTol)
      << "step 1 loss: gpu " << gpu.steps.front().loss << " cpu " << cpu.steps.front().loss;
  EXPECT_LE(rel(gpu.steps.back().loss, cpu.steps.back().loss), kFinalLossRelTol)
      << "final loss: gpu " << gpu.steps.back().loss << " cpu " << cpu.steps.back().loss;
  EXPECT_LE(rel(gpu.ppl, cpu.ppl), kPplRelTol) << "ppl: gpu " << gpu.ppl << " cpu " << cpu.ppl;
  double tail = 0;
  for (size_t i = gpu.steps.size() - 5; i < gpu.steps.size(); ++i) tail += gpu.steps[i].loss / 5;
  EXPECT_LT(tail, 0.9 * gpu.steps.front().loss) << "the GPU run did not train";
  std::printf("stories260K -> {0,2,4}, 30 steps: ppl cpu %.4f gpu %.4f (%+.2f%%)\n", cpu.ppl, gpu.ppl,
              100.0 * (gpu.ppl - cpu.ppl) / cpu.ppl);
  std::error_code ec;
  fs::remove_all(root, ec);
}

// What the GPU path does not do is refused before any device work, naming
// the option.
TEST_F(DistillCudaTest, RejectsWhatOnlyTheCpuDoes) {
  auto make = [&](const distill::DistillTrainerOptions& o) { return MakeRunner("cuda:0", o).status(); };
  distill::DistillTrainerOptions o = Options();
  o.teacher_mode = distill::TeacherMode::kOnlineTopK;
  absl::Status st = make(o);
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_NE(st.message().find("top_k"), std::string::npos) << st;

  o = Options();
  o.loss.divergence = train::Divergence::kReverseKL;
  st = make(o);
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_NE(st.message().find("divergence"), std::string::npos) << st;

  o = Options();
  o.teacher_mode = distill::TeacherMode::kCache;
  o.teacher_cache = testing::MakeTempDir("distill-cuda-cache");
  st = make(o);
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_NE(st.message().find("teacher_cache"), std::string::npos) << st;

  o = Options();
  o.loss.alpha = 2.0;  // the CPU trainer's own checks come first, as on the CPU
  st = make(o);
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_NE(st.message().find("alpha"), std::string::npos) << st;
}

// The flat fp32 "params" of a checkpoint file.
std::vector<float> CheckpointParams(const fs::path& path) {
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return {};
  const TensorInfo* t = (*file)->Find("params");
  EXPECT_NE(t, nullptr);
  if (t == nullptr) return {};
  std::vector<float> out(t->nbytes / sizeof(float));
  std::memcpy(out.data(), t->data, t->nbytes);
  return out;
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return m;
}

// 20 GPU steps with a checkpoint every 10: destroyed after step 10 and made
// again, the run resumes at step 10 (params, AdamW moments, data position,
// step) and ends where an uninterrupted run ends.
TEST_F(DistillCudaTest, ResumedGpuRunEndsWhereAnUninterruptedOneEnds) {
  const fs::path root = testing::MakeTempDir("distill-cuda-resume");
  distill::DistillTrainerOptions o = CheckpointedOptions();
  auto make = [&] { return MakeRunner("cuda:0", o); };

  o.checkpoint_dir = root / "straight";
  std::vector<distill::StepMetrics> straight;
  {
    auto runner = make();
    ASSERT_TRUE(runner.ok()) << runner.status();
    EXPECT_TRUE((*runner)->resume_note().empty()) << (*runner)->resume_note();
    const absl::Status ran = (*runner)->Run([&](const distill::StepMetrics& m) { straight.push_back(m); });
    ASSERT_TRUE(ran.ok()) << ran;
  }
  ASSERT_EQ(straight.size(), 20u);
  EXPECT_TRUE(fs::exists(root / "straight" / "step-00000020.safetensors"));
  EXPECT_FALSE(fs::exists(root / "straight" / "step-00000010.safetensors"));  // only the newest kept

  o.checkpoint_dir = root / "killed";
  std::vector<distill::StepMetrics> killed;
  {
    auto runner = make();
    ASSERT_TRUE(runner.ok()) << runner.status();
    for (int i = 0; i < 10; ++i) {
      auto m = (*runner)->Step();
      ASSERT_TRUE(m.ok()) << m.status();
      killed.push_back(*m);
    }
  }  // destroyed after step 10, as a killed worker
  ASSERT_TRUE(fs::exists(root / "killed" / "step-00000010.safetensors"));
  auto resumed = make();
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  const std::string& note = (*resumed)->resume_note();
  EXPECT_NE(note.find("resumed from"), std::string::npos) << note;
  EXPECT_NE(note.find("step-00000010.safetensors at step 10"), std::string::npos) << note;
  EXPECT_EQ((*resumed)->step(), 10);
  const absl::Status ran = (*resumed)->Run([&](const distill::StepMetrics& m) { killed.push_back(m); });
  ASSERT_TRUE(ran.ok()) << ran;
  ASSERT_EQ(killed.size(), 20u);
  EXPECT_EQ((*resumed)->step(), 20);

  auto rel = [](double a, double b) { return std::abs(a - b) / std::abs(b); };
  double worst = 0;
  for (size_t i = 0; i < 20; ++i) {
    EXPECT_EQ(killed[i].step, straight[i].step);
    EXPECT_DOUBLE_EQ(killed[i].lr, straight[i].lr) << "step " << straight[i].step;
    EXPECT_LE(rel(killed[i].loss, straight[i].loss), kResumeLossRelTol)
        << "step " << straight[i].step << ": resumed " << killed[i].loss << " straight " << straight[i].loss;
    worst = std::max(worst, rel(killed[i].loss, straight[i].loss));
  }
  const double param_diff = MaxAbsDiff(CheckpointParams(root / "killed" / "step-00000020.safetensors"),
                                       CheckpointParams(root / "straight" / "step-00000020.safetensors"));
  EXPECT_LE(param_diff, kResumeParamAbsTol);
  std::printf("GPU resume at step 10 of 20: max rel loss diff %.3g, final loss %.6f vs %.6f, max |param diff| %.3g\n",
              worst, killed.back().loss, straight.back().loss, param_diff);
  std::error_code ec;
  fs::remove_all(root, ec);
}

// A CPU run's checkpoint goes on on the GPU (the fingerprint leaves the device
// out), and the GPU's last checkpoint goes back to the CPU.
TEST_F(DistillCudaTest, CheckpointsMoveBetweenTheCpuAndTheGpu) {
  const fs::path root = testing::MakeTempDir("distill-cuda-mixed");
  distill::DistillTrainerOptions o = CheckpointedOptions();
  o.checkpoint_dir = root / "ckpt";
  auto make = [&](const std::string& device) { return MakeRunner(device, o); };
  std::string cpu_fingerprint;
  distill::StepMetrics cpu_step11;
  {
    auto cpu = make("cpu");
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    cpu_fingerprint = (*cpu)->fingerprint();
    for (int i = 0; i < 11; ++i) {  // the checkpoint of step 10, then step 11's loss
      auto m = (*cpu)->Step();
      ASSERT_TRUE(m.ok()) << m.status();
      cpu_step11 = *m;
    }
  }
  ASSERT_TRUE(fs::exists(root / "ckpt" / "step-00000010.safetensors"));

  auto gpu = make("cuda:0");
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_EQ((*gpu)->fingerprint(), cpu_fingerprint);
  const std::string& gpu_note = (*gpu)->resume_note();
  EXPECT_NE(gpu_note.find("step-00000010.safetensors at step 10"), std::string::npos) << gpu_note;
  ASSERT_EQ((*gpu)->step(), 10);
  auto g11 = (*gpu)->Step();
  ASSERT_TRUE(g11.ok()) << g11.status();
  EXPECT_EQ(g11->step, 11);
  EXPECT_DOUBLE_EQ(g11->lr, cpu_step11.lr);
  // The CPU's weights after step 10 in a bf16 forward: step 1's tolerance.
  EXPECT_LE(std::abs(g11->loss - cpu_step11.loss) / cpu_step11.loss, kFirstLossRelTol)
      << "step 11: gpu " << g11->loss << " cpu " << cpu_step11.loss;
  const absl::Status ran = (*gpu)->Run();
  ASSERT_TRUE(ran.ok()) << ran;
  gpu->reset();
  ASSERT_TRUE(fs::exists(root / "ckpt" / "step-00000020.safetensors"));

  auto back = make("cpu");
  ASSERT_TRUE(back.ok()) << back.status();
  const std::string& back_note = (*back)->resume_note();
  EXPECT_NE(back_note.find("step-00000020.safetensors at step 20"), std::string::npos) << back_note;
  EXPECT_EQ((*back)->step(), 20);
  std::printf("CPU step 10 -> GPU: step 11 loss cpu %.6f gpu %.6f\n", cpu_step11.loss, g11->loss);
  std::error_code ec;
  fs::remove_all(root, ec);
}

// The service's distill stage with the job's cuda:0 runners (as a GPU worker
// passes them) trains on the GPU: no "distill on the CPU" line, the start line
// says so, every step's metrics arrive, and its first loss is the CPU job's
// within bf16 rounding.
TEST_F(DistillCudaTest, DistillStageOfAJobTrainsOnTheGpu) {
  const fs::path root = testing::MakeTempDir("distill-cuda-job");
  struct Ran {
    absl::StatusOr<CompressionJobResult> result = absl::UnknownError("not run");
    std::vector<std::string> log;
    std::vector<distill::StepMetrics> steps;
  };
  auto run = [&](const std::string& device) {
    CompressionJob job;
    job.recipe_yaml = "[{distill: {student: {keep_layers: [0, 2, 4]}, steps: 4, batch: 8, micro_batch: 4, "
                      "seqlen: 128, alpha: 0.5, checkpoint_every: 2}}]";
    job.compress.model_dir = model_dir_;
    job.compress.calib_path = train_;
    job.compress.out_dir = root / device;
    job.compress.calibration = {8, 128, 0};
    absl::StatusOr<distill::DistillRunnerFactory> runners = Runners(device);
    Ran r;
    if (!runners.ok()) {
      r.result = runners.status();
      return r;
    }
    job.distill_runners = *runners;
    JobObserver observer;
    observer.log = [&](const std::string& line) { r.log.push_back(line); };
    observer.on_train_step = [&](const distill::StepMetrics& m) { r.steps.push_back(m); };
    r.result = RunCompressionJob(job, observer);
    return r;
  };
  const Ran gpu = run("cuda:0");
  ASSERT_TRUE(gpu.result.ok()) << gpu.result.status();
  const Ran cpu = run("cpu");
  ASSERT_TRUE(cpu.result.ok()) << cpu.result.status();
  std::string gpu_log;
  for (const std::string& line : gpu.log) gpu_log += line + "\n";
  EXPECT_EQ(gpu_log.find("distill on the CPU"), std::string::npos) << gpu_log;
  EXPECT_NE(gpu_log.find("rank(s), on cuda:0"), std::string::npos) << gpu_log;
  ASSERT_EQ(gpu.steps.size(), 4u);
  ASSERT_EQ(cpu.steps.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(gpu.steps[i].step, static_cast<int64_t>(i + 1));
  EXPECT_LE(std::abs(gpu.steps[0].loss - cpu.steps[0].loss) / cpu.steps[0].loss, kFirstLossRelTol)
      << "step 1: gpu " << gpu.steps[0].loss << " cpu " << cpu.steps[0].loss;
  auto model = LlamaModel::Load(root / "cuda:0");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->config().num_hidden_layers, 3);
  std::error_code ec;
  fs::remove_all(root, ec);
}

}  // namespace
}  // namespace shrinkray
