// Choosing where a distillation trains (core/distill/distill_device.h), without
// a GPU: what the CUDA runner refuses (CheckCudaDistillOptions: exact codes
// and messages), the runner through an injected factory (empty: the CPU), and
// the service's distill stage (core/pipeline/staged_job.cc) training on the
// job's injected runners, or falling back to the CPU with one log line saying
// why. Fake factories stand in for the CUDA one (this binary links core alone).
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/comm/communicator.h"
#include "core/distill/distill_device.h"
#include "core/distill/train_data.h"
#include "core/model/demo_model.h"
#include "core/model/llama.h"
#include "core/pipeline/job_runner.h"
#include "core/train/parameter_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// A communicator of `size` ranks that is never called (the check reads its size).
class FakeCommunicator final : public Communicator {
 public:
  explicit FakeCommunicator(int size) : Communicator(absl::Seconds(1)), size_(size) {}
  int rank() const override { return 0; }
  int size() const override { return size_; }
  std::string backend() const override { return "fake"; }
  absl::Status AllReduce(void*, size_t, CommDType, ReduceOp) override { return Unused(); }
  absl::Status Broadcast(void*, size_t, CommDType, int) override { return Unused(); }
  absl::Status AllGather(const void*, void*, size_t, CommDType) override { return Unused(); }
  absl::Status AllGatherV(const void*, void*, const std::vector<size_t>&, CommDType) override {
    return Unused();
  }
  absl::Status Barrier() override { return Unused(); }

 private:
  static absl::Status Unused() { return absl::InternalError("FakeCommunicator is not for collectives"); }
  int size_;
};

// A tiny demo teacher (hidden 32, 4 heads) of `layers` layers in `dir`.
void WriteTeacher(const fs::path& dir, int layers) {
  DemoModelOptions m;
  m.hidden_size = 32;
  m.intermediate_size = 64;
  m.num_layers = layers;
  m.num_heads = 4;
  m.num_kv_heads = 2;
  m.max_positions = 64;
  ASSERT_TRUE(WriteDemoModel(dir, m).ok());
}

TEST(CheckCudaDistillOptions, AcceptsWhatTheGpuRunnerDoes) {
  distill::DistillTrainerOptions o;  // online full logits, forward KL, one rank
  EXPECT_TRUE(distill::CheckCudaDistillOptions(o).ok());
  o.checkpoint_every = 5;  // checkpoints are the CPU trainer's, on both devices
  o.checkpoint_dir = "/tmp/ckpt";
  o.loss.alpha = 0.0;
  o.loss.temperature = 2.0;
  o.micro_batch = 3;
  o.top_k = 7;  // unused without a top-k teacher mode
  EXPECT_TRUE(distill::CheckCudaDistillOptions(o).ok());
  std::unique_ptr<Communicator> one = MakeLocalCommunicator();
  o.comm = one.get();
  EXPECT_TRUE(distill::CheckCudaDistillOptions(o).ok());
}

TEST(CheckCudaDistillOptions, RefusesWhatOnlyTheCpuDoesNamingTheOption) {
  auto expect = [](const distill::DistillTrainerOptions& o, const std::string& message) {
    const absl::Status st = distill::CheckCudaDistillOptions(o);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_EQ(st.message(), message);
  };
  distill::DistillTrainerOptions o;
  o.teacher_mode = distill::TeacherMode::kOnlineTopK;
  expect(o, "top_k: device cuda distils from the online teacher's full logits only (no top-k)");
  o.teacher_mode = distill::TeacherMode::kCache;
  o.teacher_cache = "/tmp/cache";
  expect(o, "teacher_cache: device cuda distils from the online teacher's full logits only (no teacher cache)");

  o = {};
  o.loss.divergence = train::Divergence::kReverseKL;
  expect(o, "divergence: device cuda implements the forward KL loss only (loss kl)");
  o.loss.divergence = train::Divergence::kJSD;
  expect(o, "divergence: device cuda implements the forward KL loss only (loss kl)");

  o = {};
  FakeCommunicator two(2);
  o.comm = &two;
  expect(o, "comm: device cuda distils on one rank, got 2");
}

// A device runner that is the CPU's under another name: what the staged job
// does with an injected factory's runner, without a GPU.
class RenamedRunner final : public distill::DistillRunner {
 public:
  RenamedRunner(std::unique_ptr<distill::DistillRunner> inner, std::string device)
      : inner_(std::move(inner)), device_(std::move(device)) {}
  std::string device() const override { return device_; }
  absl::StatusOr<distill::StepMetrics> Step() override { return inner_->Step(); }
  int64_t step() const override { return inner_->step(); }
  int64_t total_steps() const override { return inner_->total_steps(); }
  const std::string& resume_note() const override { return inner_->resume_note(); }
  const std::string& fingerprint() const override { return inner_->fingerprint(); }
  absl::Status SaveStudent(const fs::path& out_dir, const fs::path& tokenizer_dir, bool overwrite) override {
    return inner_->SaveStudent(out_dir, tokenizer_dir, overwrite);
  }

 private:
  std::unique_ptr<distill::DistillRunner> inner_;
  std::string device_;
};

// Runners named `device`; counts its calls.
distill::DistillRunnerFactory RenamingFactory(const std::string& device, int* calls) {
  return [device, calls](const distill::DistillTrainerOptions& o, const LlamaModel& teacher,
                         const distill::TrainData& data,
                         train::ParameterStore student) -> absl::StatusOr<std::unique_ptr<distill::DistillRunner>> {
    ++*calls;
    auto cpu = distill::MakeDistillRunner({}, o, teacher, data, std::move(student));
    if (!cpu.ok()) return cpu.status();
    return std::unique_ptr<distill::DistillRunner>(new RenamedRunner(std::move(*cpu), device));
  };
}

TEST(MakeDistillRunner, EmptyFactoryIsTheCpuElseTheFactorys) {
  const fs::path dir = testing::MakeTempDir("distill-device");
  ASSERT_NO_FATAL_FAILURE(WriteTeacher(dir / "teacher", 1));
  auto teacher = LlamaModel::Load(dir / "teacher");
  ASSERT_TRUE(teacher.ok()) << teacher.status();
  std::vector<int32_t> ids(200);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i % 50);
  auto data = distill::TrainData::FromIds(ids, 16, 0, "ids");
  ASSERT_TRUE(data.ok()) << data.status();
  auto make = [&](const distill::DistillRunnerFactory& runners) {
    auto student = train::ParameterStore::Create((*teacher)->config());
    EXPECT_TRUE(student.ok()) << student.status();
    EXPECT_TRUE(student->LoadFrom(**teacher).ok());
    distill::DistillTrainerOptions o;
    o.steps = 1;
    o.global_batch = 2;
    o.micro_batch = 1;
    return distill::MakeDistillRunner(runners, o, **teacher, *data, std::move(*student));
  };
  auto cpu = make({});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ((*cpu)->device(), "cpu");
  int calls = 0;
  auto device = make(RenamingFactory("cuda:3", &calls));
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_EQ((*device)->device(), "cuda:3");
  EXPECT_EQ(calls, 1);
  auto refused = make([](const distill::DistillTrainerOptions&, const LlamaModel&, const distill::TrainData&,
                         train::ParameterStore) -> absl::StatusOr<std::unique_ptr<distill::DistillRunner>> {
    return absl::FailedPreconditionError("device cuda:3: 1 CUDA device(s) visible");
  });
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_EQ(refused.status().message(), "device cuda:3: 1 CUDA device(s) visible");
}

// The service's distill stage with the job's injected runners (as a GPU
// worker passes its device's): what the runner refuses, or a model it does
// not implement, trains on the CPU, with one log line saying why; the
// per-step metrics are the same either way.
class DistillStageDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("distill-stage-device");
    ASSERT_NO_FATAL_FAILURE(WriteTeacher(dir_ / "teacher", 2));
    std::ofstream(dir_ / "text.txt") << DemoText(3, 6000);
  }

  struct Ran {
    absl::StatusOr<CompressionJobResult> result = absl::UnknownError("not run");
    std::vector<std::string> cpu_lines;  // "distill on the CPU: ..."
    std::vector<std::string> summary;    // "distill: teacher ..."
    std::vector<int64_t> steps;
  };

  Ran Run(const std::string& out, const distill::DistillRunnerFactory& runners, const std::string& extra) {
    CompressionJob job;
    job.recipe_yaml = "[{distill: {student: {keep_layers: [0]}, steps: 3, batch: 2, seqlen: 16" + extra + "}}]";
    job.compress.model_dir = dir_ / "teacher";
    job.compress.calib_path = dir_ / "text.txt";
    job.compress.out_dir = dir_ / out;
    job.compress.calibration = {4, 16, 0};
    job.distill_runners = runners;
    Ran r;
    JobObserver observer;
    observer.log = [&](const std::string& line) {
      if (line.starts_with("distill on the CPU")) r.cpu_lines.push_back(line);
      if (line.starts_with("distill: teacher")) r.summary.push_back(line);
    };
    observer.on_train_step = [&](const distill::StepMetrics& m) { r.steps.push_back(m.step); };
    r.result = RunCompressionJob(job, observer);
    return r;
  }

  fs::path dir_;
};

TEST_F(DistillStageDeviceTest, TrainsOnTheInjectedRunnerNamingItsDevice) {
  int calls = 0;
  const Ran r = Run("out-device", RenamingFactory("cuda:2", &calls), "");
  ASSERT_TRUE(r.result.ok()) << r.result.status();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(r.steps, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_TRUE(r.cpu_lines.empty());
  ASSERT_EQ(r.summary.size(), 1u);
  EXPECT_THAT(r.summary[0], HasSubstr("on 1 rank(s), on cuda:2"));
  EXPECT_TRUE(fs::exists(dir_ / "out-device" / "model.safetensors"));
}

TEST_F(DistillStageDeviceTest, UnimplementedTrainsOnTheCpuSayingWhy) {
  const distill::DistillRunnerFactory unimplemented =
      [](const distill::DistillTrainerOptions&, const LlamaModel&, const distill::TrainData&,
         train::ParameterStore) -> absl::StatusOr<std::unique_ptr<distill::DistillRunner>> {
    return absl::UnimplementedError("device cuda:0: shrinkray was built without CUDA");
  };
  const Ran r = Run("out-cuda", unimplemented, "");
  ASSERT_TRUE(r.result.ok()) << r.result.status();
  EXPECT_EQ(r.steps, (std::vector<int64_t>{1, 2, 3}));
  ASSERT_EQ(r.cpu_lines.size(), 1u);
  EXPECT_EQ(r.cpu_lines[0], "distill on the CPU: device cuda:0: shrinkray was built without CUDA");
  ASSERT_EQ(r.summary.size(), 1u);
  EXPECT_THAT(r.summary[0], ::testing::Not(HasSubstr(", on ")));
  EXPECT_TRUE(fs::exists(dir_ / "out-cuda" / "model.safetensors"));
}

TEST_F(DistillStageDeviceTest, OptionTheGpuRefusesTrainsOnTheCpuNamingIt) {
  int calls = 0;
  const Ran r = Run("out-topk", RenamingFactory("cuda:0", &calls), ", top_k: 8");
  ASSERT_TRUE(r.result.ok()) << r.result.status();
  EXPECT_EQ(r.steps, (std::vector<int64_t>{1, 2, 3}));
  ASSERT_EQ(r.cpu_lines.size(), 1u);
  EXPECT_EQ(r.cpu_lines[0],
            "distill on the CPU: top_k: device cuda distils from the online teacher's full logits only (no top-k)");

  const Ran jsd = Run("out-jsd", RenamingFactory("cuda:0", &calls), ", loss: jsd");
  ASSERT_TRUE(jsd.result.ok()) << jsd.result.status();
  ASSERT_EQ(jsd.cpu_lines.size(), 1u);
  EXPECT_THAT(jsd.cpu_lines[0], HasSubstr("distill on the CPU: divergence: "));
  EXPECT_EQ(calls, 0);  // refused before the device's runner is made
}

TEST_F(DistillStageDeviceTest, CpuSaysNothing) {
  const Ran r = Run("out-cpu", {}, "");
  ASSERT_TRUE(r.result.ok()) << r.result.status();
  EXPECT_EQ(r.steps, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_TRUE(r.cpu_lines.empty());
  ASSERT_EQ(r.summary.size(), 1u);
  EXPECT_THAT(r.summary[0], ::testing::Not(HasSubstr(", on ")));
}

}  // namespace
}  // namespace shrinkray
