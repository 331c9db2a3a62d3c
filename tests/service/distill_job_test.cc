// The combined pipeline as a service job: a distill -> sparsegpt -> gptq
// recipe on a coordinator over real gRPC with 2 in-process workers (data
// parallel training over Gloo, then the sharded passes), on the deterministic
// demo model. Checks the results table (GetJob, the event stream, the output
// folder), the per-step training events and the workers' training metrics
// (promtool-linted when promtool is installed). In CUDA builds on a machine
// with a GPU, the same job's distill stage on GPU workers (device "cuda"):
// one worker trains on the GPU, two fall back to the CPU saying why.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/distill/distill_device.h"
#include "core/pipeline/device_factories.h"
#include "core/util/compute_device.h"
#include "core/model/demo_model.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/server_builder.h"
#include "nlohmann/json.hpp"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "server/compression_service.h"
#include "server/coordinator.h"
#include "server/worker_service.h"
#include "test_data.h"
#include "worker/worker.h"
#include "worker/worker_metrics.h"

namespace shrinkray {
namespace {

using ::testing::HasSubstr;

std::string ReadAll(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The value of an unlabelled series in the text format, or -1.
double SeriesValue(const std::string& text, const std::string& name) {
  size_t at = 0;
  while ((at = text.find(name + " ", at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == '\n') return std::strtod(text.c_str() + at + name.size() + 1, nullptr);
    at += name.size();
  }
  return -1;
}

std::string FindPromtool() {
  for (const char* p : {"/usr/bin/promtool", "/usr/local/bin/promtool"}) {
    if (access(p, X_OK) == 0) return p;
  }
  return "";
}

struct LocalWorker {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<WorkerMetrics> metrics;
  std::unique_ptr<Worker> worker;
  std::thread thread;
};

class DistillJobTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = testing::MakeTempDir("distill_job");
    DemoModelOptions model;
    model.hidden_size = 64;
    model.intermediate_size = 192;
    model.num_layers = 3;
    model.max_positions = 128;
    ASSERT_TRUE(WriteDemoModel(root_ / "teacher", model).ok());
    std::ofstream(root_ / "text.txt") << DemoText(7, 40000);

    auto store = JobStore::Open(root_ / "jobs.sqlite");
    ASSERT_TRUE(store.ok()) << store.status();
    auto paths = PathPolicy::Create({root_});
    ASSERT_TRUE(paths.ok());
    CoordinatorOptions options;
    options.limits.max_workers_per_job = 2;
    auto c = Coordinator::Create(std::move(*store), std::move(*paths), options, nullptr);
    ASSERT_TRUE(c.ok()) << c.status();
    coordinator_ = std::move(*c);
    compression_ = std::make_unique<CompressionServiceImpl>(coordinator_.get(), "");
    worker_service_ = std::make_unique<WorkerServiceImpl>(coordinator_.get(), "");
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(compression_.get());
    builder.RegisterService(worker_service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    address_ = "127.0.0.1:" + std::to_string(port);
    stub_ = v1::CompressionService::NewStub(grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
    for (int i = 0; i < 2; ++i) {
      auto w = std::make_unique<LocalWorker>();
      w->metrics = std::make_unique<WorkerMetrics>(*w->registry);
      WorkerOptions o;
      o.coordinator = address_;
      o.name = "distill-worker-" + std::to_string(i);
      o.device = worker_device_;
      // As shrinkray-worker does: the device's distill runners go with it.
      absl::StatusOr<distill::DistillRunnerFactory> runners = MakeDistillRunnerFactory(worker_device_);
      ASSERT_TRUE(runners.ok()) << runners.status();
      o.distill_runners = *runners;
      o.comm_timeout = absl::Seconds(120);
      w->worker = std::make_unique<Worker>(o, w->metrics.get());
      Worker* raw = w->worker.get();
      w->thread = std::thread([raw] { raw->Run(); });
      workers_.push_back(std::move(w));
    }
  }

  void TearDown() override {
    for (auto& w : workers_) w->worker->Shutdown();
    for (auto& w : workers_) {
      if (w->thread.joinable()) w->thread.join();
    }
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }

  struct Watched {
    v1::Job job;
    std::map<std::string, std::vector<int64_t>> metric_steps;  // per metric name
    std::string log;  // the log events, one line each
    bool saw_distill_progress = false;
  };

  // Submits `spec` and follows its event stream to the end.
  void SubmitAndWatch(const v1::JobSpec& spec, Watched* out) {
    v1::SubmitJobRequest submit;
    *submit.mutable_spec() = spec;
    v1::SubmitJobResponse submitted;
    {
      grpc::ClientContext context;
      const grpc::Status s = stub_->SubmitJob(&context, submit, &submitted);
      ASSERT_TRUE(s.ok()) << s.error_message();
    }
    const std::string id = submitted.job().id();
    grpc::ClientContext watch_context;
    watch_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(240));
    v1::WatchJobRequest watch;
    watch.set_job_id(id);
    watch.set_replay_history(true);
    auto reader = stub_->WatchJob(&watch_context, watch);
    v1::WatchJobResponse response;
    while (reader->Read(&response)) {
      if (!response.has_event()) continue;
      const v1::JobEvent& e = response.event();
      if (e.has_metric()) out->metric_steps[e.metric().name()].push_back(e.metric().step());
      if (e.has_log()) out->log += e.log().text() + "\n";
      if (e.has_progress() && e.progress().stage() == "distill") out->saw_distill_progress = true;
    }
    reader->Finish();
    v1::GetJobRequest get;
    get.set_job_id(id);
    v1::GetJobResponse got;
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->GetJob(&context, get, &got).ok());
    out->job = got.job();
  }

  ComputeDevice worker_device_;  // the CPU unless set before SetUp
  std::filesystem::path root_;
  std::string address_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<CompressionServiceImpl> compression_;
  std::unique_ptr<WorkerServiceImpl> worker_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::CompressionService::Stub> stub_;
  std::vector<std::unique_ptr<LocalWorker>> workers_;
};

TEST_F(DistillJobTest, DistillSparseGptGptqOnTwoWorkersEndsWithOneTable) {
  v1::JobSpec spec;
  spec.set_model_path((root_ / "teacher").string());
  spec.set_recipe_yaml(
      "- distill: {student: {keep_layers: [0, 2]}, steps: 6, batch: 4, seqlen: 32, alpha: 1, temperature: 2,\n"
      "            lr: 3e-3, checkpoint_every: 3}\n"
      "- sparsegpt: {sparsity: 0.3}\n"
      "- gptq: {bits: 4, group_size: 32}\n");
  spec.mutable_calibration()->set_path((root_ / "text.txt").string());
  spec.mutable_calibration()->set_num_samples(8);
  spec.mutable_calibration()->set_seqlen(32);
  spec.mutable_evaluation()->set_path((root_ / "text.txt").string());
  spec.mutable_evaluation()->set_seqlen(32);
  spec.mutable_evaluation()->set_max_chars(6000);
  spec.set_output_path((root_ / "out").string());
  spec.set_output_format(v1::OUTPUT_FORMAT_GPTQ);
  spec.set_num_workers(2);
  Watched watched;
  ASSERT_NO_FATAL_FAILURE(SubmitAndWatch(spec, &watched));
  const v1::Job& job = watched.job;
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error().message();

  // One row per stage, in order.
  const auto& rows = job.result().eval();
  ASSERT_EQ(rows.size(), 4);
  const char* names[] = {"original", "distill", "sparsegpt", "gptq"};
  for (int i = 0; i < 4; ++i) {
    const v1::EvalRow& r = rows[i];
    EXPECT_EQ(r.model(), names[i]);
    EXPECT_GT(r.bytes(), 0) << names[i];
    EXPECT_GT(r.parameters(), 0) << names[i];
    EXPECT_NEAR(r.bits_per_parameter(), 8.0 * r.bytes() / r.parameters(), 1e-9) << names[i];
    EXPECT_NEAR(r.compression_ratio(), static_cast<double>(rows[0].bytes()) / r.bytes(), 1e-9) << names[i];
    EXPECT_GT(r.perplexity(), 1.0) << names[i];
    EXPECT_NEAR(r.retention(), rows[0].perplexity() / r.perplexity(), 1e-9) << names[i];
    EXPECT_GT(r.top1_agreement(), 0.0) << names[i];
    EXPECT_LE(r.top1_agreement(), 1.0) << names[i];
    if (i == 0) {
      EXPECT_EQ(r.mean_kl(), 0.0);
      EXPECT_EQ(r.seconds(), 0.0);
      EXPECT_DOUBLE_EQ(r.compression_ratio(), 1.0);
    } else {
      EXPECT_GT(r.mean_kl(), 0.0) << names[i];
      EXPECT_GT(r.seconds(), 0.0) << names[i];
    }
  }
  // Two of three layers; then pruned (same dense bytes); then 4-bit.
  EXPECT_GT(rows[1].compression_ratio(), 1.0);
  EXPECT_LT(rows[1].parameters(), rows[0].parameters());
  EXPECT_EQ(rows[2].parameters(), rows[1].parameters());
  EXPECT_GT(rows[3].compression_ratio(), 2.0 * rows[1].compression_ratio());
  EXPECT_EQ(job.result().input_bytes(), rows[0].bytes());
  EXPECT_EQ(job.result().output_bytes(), rows[3].bytes());
  EXPECT_TRUE(job.result().stage_seconds().contains("distill"));
  EXPECT_TRUE(job.result().stage_seconds().contains("sparsegpt"));
  EXPECT_TRUE(job.result().stage_seconds().contains("gptq"));

  // Per-step training events: every step once (rank 0 speaks).
  for (const char* name : {"train_loss", "train_kl", "train_ce", "train_lr", "train_grad_norm", "train_tokens_per_s"}) {
    EXPECT_EQ(watched.metric_steps[name], (std::vector<int64_t>{1, 2, 3, 4, 5, 6})) << name;
  }
  EXPECT_TRUE(watched.saw_distill_progress);
  EXPECT_THAT(watched.log, HasSubstr("distill step 6/6"));
  EXPECT_THAT(watched.log, HasSubstr("results"));
  EXPECT_THAT(watched.log, HasSubstr("sparsegpt"));
  EXPECT_THAT(watched.log, ::testing::Not(HasSubstr("distill on the CPU")));  // CPU workers: nothing to say

  // The output folder: the model, report.json of the last pass, the table.
  const std::filesystem::path out = root_ / "out";
  EXPECT_TRUE(std::filesystem::exists(out / "report.json"));
  const nlohmann::json results = nlohmann::json::parse(ReadAll(out / "results.json"));
  ASSERT_EQ(results["rows"].size(), 4u);
  EXPECT_EQ(results["rows"][3]["stage"], "gptq");
  EXPECT_EQ(results["rows"][3]["bytes"].get<int64_t>(), rows[3].bytes());
  EXPECT_NEAR(results["rows"][2]["ppl"].get<double>(), rows[2].perplexity(), 1e-9);
  EXPECT_THAT(ReadAll(out / "results.md"), HasSubstr("| sparsegpt |"));
  // The work folder (checkpoints, intermediate models) is gone.
  EXPECT_FALSE(std::filesystem::exists(root_ / "out.work"));
  // The pruned zeros survived the GPTQ pass: report.json's matrices are sparse.
  const nlohmann::json report = nlohmann::json::parse(ReadAll(out / "report.json"));
  for (const auto& m : report["matrices"]) EXPECT_GE(m["sparsity"].get<double>(), 0.29) << m["module"];

  // Both workers took every step and export the training metrics.
  for (const auto& w : workers_) {
    const std::string text = prometheus::TextSerializer().Serialize(w->registry->Collect());
    EXPECT_EQ(SeriesValue(text, "shrinkray_worker_train_steps_total"), 6.0) << text;
    EXPECT_GT(SeriesValue(text, "shrinkray_worker_train_loss"), 0.0) << text;
    EXPECT_GT(SeriesValue(text, "shrinkray_worker_train_kl"), 0.0) << text;
    EXPECT_GT(SeriesValue(text, "shrinkray_worker_train_tokens_per_second"), 0.0) << text;
    const std::string promtool = FindPromtool();
    if (promtool.empty()) continue;
    const std::filesystem::path file = root_ / "metrics.txt";
    std::ofstream(file) << text;
    const std::string command = promtool + " check metrics < '" + file.string() + "' 2>&1";
    FILE* pipe = popen(command.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    std::string lint;
    char buf[512];
    for (size_t n; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) lint.append(buf, n);
    const int status = pclose(pipe);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << lint << "\n" << text;
  }
}

TEST_F(DistillJobTest, StudentLargerThanTeacherFailsTheJobNamingTheField) {
  v1::JobSpec spec;
  spec.set_model_path((root_ / "teacher").string());
  spec.set_recipe_yaml("- distill: {student: {keep_layers: [0, 1, 2, 3]}, steps: 2, batch: 2, seqlen: 16}\n"
                       "- gptq: {bits: 4}\n");
  spec.mutable_calibration()->set_path((root_ / "text.txt").string());
  spec.mutable_calibration()->set_num_samples(4);
  spec.mutable_calibration()->set_seqlen(16);
  spec.set_output_path((root_ / "out-bad").string());
  v1::SubmitJobRequest submit;
  *submit.mutable_spec() = spec;
  v1::SubmitJobResponse submitted;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->SubmitJob(&context, submit, &submitted).ok());
  }
  v1::Job job;
  for (int i = 0; i < 600; ++i) {
    v1::GetJobRequest get;
    get.set_job_id(submitted.job().id());
    v1::GetJobResponse got;
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->GetJob(&context, get, &got).ok());
    job = got.job();
    if (job.state() == v1::JOB_STATE_FAILED || job.state() == v1::JOB_STATE_SUCCEEDED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(job.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.error().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(job.error().message(), HasSubstr("recipe spec.recipe_yaml: stage 0 (distill): field 'student.keep_layers'"));
  EXPECT_THAT(job.error().message(), HasSubstr("cannot be deeper"));
}

// GPU workers (device cuda:0; CUDA builds on a machine with a GPU, else
// skipped): a one-worker job's distill stage trains on the GPU, a two-worker
// job's on the CPU, saying why on the job's log; the per-step events are the
// same either way.
class DistillJobCudaTest : public DistillJobTest {
 protected:
  void SetUp() override {
    const absl::Status device = CheckComputeDevice(ComputeDevice::Cuda(0));
    if (!device.ok()) GTEST_SKIP() << "no CUDA device: " << device.message();
    worker_device_ = ComputeDevice::Cuda(0);
    DistillJobTest::SetUp();
  }

  v1::JobSpec Spec(const std::string& out, int workers) {
    v1::JobSpec spec;
    spec.set_model_path((root_ / "teacher").string());
    spec.set_recipe_yaml("- distill: {student: {keep_layers: [0, 2]}, steps: 4, batch: 4, seqlen: 32, alpha: 1,\n"
                         "            temperature: 2, lr: 3e-3, checkpoint_every: 2}\n");
    spec.mutable_calibration()->set_path((root_ / "text.txt").string());
    spec.mutable_calibration()->set_num_samples(8);
    spec.mutable_calibration()->set_seqlen(32);
    spec.set_output_path((root_ / out).string());
    spec.set_num_workers(workers);
    return spec;
  }
};

TEST_F(DistillJobCudaTest, OneWorkerTrainsOnTheGpuTwoOnTheCpu) {
  Watched one;
  ASSERT_NO_FATAL_FAILURE(SubmitAndWatch(Spec("out-one", 1), &one));
  ASSERT_EQ(one.job.state(), v1::JOB_STATE_SUCCEEDED) << one.job.error().message();
  EXPECT_THAT(one.log, HasSubstr("rank(s), on cuda"));
  EXPECT_THAT(one.log, ::testing::Not(HasSubstr("distill on the CPU")));
  EXPECT_EQ(one.metric_steps["train_loss"], (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_TRUE(std::filesystem::exists(root_ / "out-one" / "model.safetensors"));

  Watched two;
  ASSERT_NO_FATAL_FAILURE(SubmitAndWatch(Spec("out-two", 2), &two));
  ASSERT_EQ(two.job.state(), v1::JOB_STATE_SUCCEEDED) << two.job.error().message();
  EXPECT_THAT(two.log, HasSubstr("distill on the CPU: comm: device cuda distils on one rank, got 2"));
  EXPECT_THAT(two.log, ::testing::Not(HasSubstr("on cuda")));
  EXPECT_EQ(two.metric_steps["train_loss"], (std::vector<int64_t>{1, 2, 3, 4}));
}

}  // namespace
}  // namespace shrinkray
