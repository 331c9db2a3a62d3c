// The coordinator's core without gRPC: codes of every API error, gang
// scheduling with ranks, lost workers, restarts with the SQLite store,
// watchers, paging, cancellation and dry runs.
#include "server/coordinator.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "test_data.h"

namespace shrinkray {
namespace {

using testing::MakeTempDir;
using testing::SharedDataDir;

const char* kRecipe = "[{gptq: {bits: 4, group_size: 32}}]";

// Records what the coordinator sends to one worker.
struct FakeWorker {
  std::vector<v1::ConnectResponse> received;
  std::string id;
  WorkerSink Sink() {
    return [this](const v1::ConnectResponse& m) { received.push_back(m); };
  }
  std::vector<v1::JobAssignment> Assignments() const {
    std::vector<v1::JobAssignment> out;
    for (const auto& m : received) {
      if (m.has_assignment()) out.push_back(m.assignment());
    }
    return out;
  }
  int Cancellations() const {
    int n = 0;
    for (const auto& m : received) n += m.has_cancellation();
    return n;
  }
};

struct RecordingWatcher : JobWatcher {
  std::vector<v1::Job> snapshots;
  std::vector<v1::JobEvent> events;
  int finished = 0;
  void OnSnapshot(const v1::Job& job) override { snapshots.push_back(job); }
  void OnEvent(const v1::JobEvent& event) override { events.push_back(event); }
  void OnFinished() override { ++finished; }
};

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = MakeTempDir("coordinator");
    db_ = root_ / "jobs.sqlite";
    Open();
  }

  void Open() {
    coordinator_.reset();
    auto store = JobStore::Open(db_);
    ASSERT_TRUE(store.ok()) << store.status();
    auto paths = PathPolicy::Create({root_});
    ASSERT_TRUE(paths.ok()) << paths.status();
    auto c = Coordinator::Create(std::move(*store), std::move(*paths), options_, nullptr);
    ASSERT_TRUE(c.ok()) << c.status();
    coordinator_ = std::move(*c);
  }

  v1::JobSpec Spec(int workers = 1) const {
    v1::JobSpec spec;
    spec.set_model_path((root_ / "model").string());
    spec.set_recipe_yaml(kRecipe);
    spec.mutable_calibration()->set_path((root_ / "calib.txt").string());
    spec.set_output_path((root_ / "out").string());
    spec.set_num_workers(workers);
    return spec;
  }

  std::string Register(FakeWorker& w, const std::string& name, const std::string& device = "cpu") {
    v1::WorkerHello hello;
    hello.set_name(name);
    hello.mutable_capabilities()->set_device(device);
    auto r = coordinator_->RegisterWorker(hello, w.Sink());
    EXPECT_TRUE(r.ok()) << r.status();
    w.id = r.ok() ? r->worker_id() : "";
    return w.id;
  }

  void Finish(const FakeWorker& w, const v1::JobAssignment& a, bool ok, int code = 13) {
    v1::ConnectRequest m;
    v1::WorkerJobFinished* f = m.mutable_job_finished();
    f->set_job_id(a.job_id());
    f->set_attempt(a.attempt());
    if (ok) {
      f->mutable_result()->set_output_path("/somewhere");
    } else {
      f->mutable_error()->set_code(code);
      f->mutable_error()->set_message("boom");
    }
    ASSERT_TRUE(coordinator_->HandleWorkerMessage(w.id, m).ok());
  }

  std::filesystem::path root_, db_;
  CoordinatorOptions options_;
  std::unique_ptr<Coordinator> coordinator_;
};

TEST_F(CoordinatorTest, SubmitErrorsHaveExactCodes) {
  v1::JobSpec spec = Spec();
  spec.mutable_calibration()->set_num_samples(-1);
  auto r = coordinator_->SubmitJob(spec);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("spec.calibration.num_samples"), std::string::npos) << r.status();

  spec = Spec();
  spec.set_model_path("/etc");
  r = coordinator_->SubmitJob(spec);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();

  spec = Spec(options_.limits.max_workers_per_job + 1);
  r = coordinator_->SubmitJob(spec);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();

  EXPECT_EQ(coordinator_->GetJob("job-nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(coordinator_->CancelJob("job-nope", "").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CoordinatorTest, QueueFullIsResourceExhausted) {
  options_.max_queued_jobs = 2;
  Open();
  ASSERT_TRUE(coordinator_->SubmitJob(Spec()).ok());
  ASSERT_TRUE(coordinator_->SubmitJob(Spec()).ok());
  auto r = coordinator_->SubmitJob(Spec());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("--max-queued-jobs 2"), std::string::npos) << r.status();
}

TEST_F(CoordinatorTest, GangAssignsRanksAndSucceedsOnRankZero) {
  FakeWorker a, b, c;
  Register(a, "a");
  Register(b, "b");
  auto job = coordinator_->SubmitJob(Spec(3));
  ASSERT_TRUE(job.ok()) << job.status();
  // Two workers cannot run a 3-worker job: it waits.
  EXPECT_EQ(coordinator_->GetJob(job->id())->state(), v1::JOB_STATE_QUEUED);
  EXPECT_TRUE(a.Assignments().empty());
  Register(c, "c");
  auto running = coordinator_->GetJob(job->id());
  ASSERT_EQ(running->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(running->attempt(), 1);
  ASSERT_EQ(running->worker_ids_size(), 3);
  std::map<int, const FakeWorker*> by_rank;
  for (const FakeWorker* w : {&a, &b, &c}) {
    ASSERT_EQ(w->Assignments().size(), 1u);
    const v1::JobAssignment as = w->Assignments()[0];
    EXPECT_EQ(as.world_size(), 3);
    EXPECT_EQ(as.worker_ids(as.rank()), w->id);
    by_rank[as.rank()] = w;
  }
  ASSERT_EQ(by_rank.size(), 3u);
  EXPECT_EQ(coordinator_->WorkerCounts()["busy"], 3);
  // Rank 1 finishing first does not end the job; rank 0 does.
  Finish(*by_rank[1], by_rank[1]->Assignments()[0], true);
  EXPECT_EQ(coordinator_->GetJob(job->id())->state(), v1::JOB_STATE_RUNNING);
  Finish(*by_rank[0], by_rank[0]->Assignments()[0], true);
  auto done = coordinator_->GetJob(job->id());
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done->result().output_path(), "/somewhere");
  // Rank 2 was told to stop; once it reports, everyone is idle.
  EXPECT_EQ(by_rank[2]->Cancellations(), 1);
  Finish(*by_rank[2], by_rank[2]->Assignments()[0], false);
  EXPECT_EQ(coordinator_->GetJob(job->id())->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(coordinator_->WorkerCounts()["idle"], 3);
}

TEST_F(CoordinatorTest, DevicePreferenceIsRespected) {
  FakeWorker cpu;
  Register(cpu, "cpu0", "cpu");
  v1::JobSpec spec = Spec();
  spec.set_device(v1::DEVICE_PREFERENCE_CUDA);
  auto job = coordinator_->SubmitJob(spec);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(coordinator_->GetJob(job->id())->state(), v1::JOB_STATE_QUEUED);
  FakeWorker gpu;
  Register(gpu, "gpu0", "cuda");
  EXPECT_EQ(coordinator_->GetJob(job->id())->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(gpu.Assignments().size(), 1u);
  EXPECT_TRUE(cpu.Assignments().empty());
}

// A multi-GPU host runs one worker per GPU (--device cuda:N): a job asking
// for cuda runs on any of them, one asking for the CPU on none.
TEST_F(CoordinatorTest, CudaJobsRunOnCudaNWorkers) {
  v1::JobSpec spec = Spec();
  spec.set_device(v1::DEVICE_PREFERENCE_CUDA);
  auto job = coordinator_->SubmitJob(spec);
  ASSERT_TRUE(job.ok());
  FakeWorker gpu3;
  Register(gpu3, "gpu3", "cuda:3");
  EXPECT_EQ(coordinator_->GetJob(job->id())->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(gpu3.Assignments().size(), 1u);

  v1::JobSpec cpu_spec = Spec();
  cpu_spec.set_output_path((root_ / "out-cpu").string());
  cpu_spec.set_device(v1::DEVICE_PREFERENCE_CPU);
  auto cpu_job = coordinator_->SubmitJob(cpu_spec);
  ASSERT_TRUE(cpu_job.ok()) << cpu_job.status();
  FakeWorker gpu0;
  Register(gpu0, "gpu0", "cuda");
  EXPECT_EQ(coordinator_->GetJob(cpu_job->id())->state(), v1::JOB_STATE_QUEUED);
  EXPECT_TRUE(gpu0.Assignments().empty());
}

TEST_F(CoordinatorTest, UnknownWorkerDeviceIsRefusedNamingIt) {
  for (const std::string bad : {"tpu", "cuda:x", "cuda:-1", ""}) {
    FakeWorker w;
    v1::WorkerHello hello;
    hello.set_name("w");
    hello.mutable_capabilities()->set_device(bad);
    auto r = coordinator_->RegisterWorker(hello, w.Sink());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(r.status().message(),
              "worker hello: capabilities.device must be cpu, cuda or cuda:N, got '" + bad + "'");
  }
}

TEST_F(CoordinatorTest, PermanentErrorFailsTheJobAtOnce) {
  FakeWorker a;
  Register(a, "a");
  auto job = coordinator_->SubmitJob(Spec());
  ASSERT_EQ(a.Assignments().size(), 1u);
  Finish(a, a.Assignments()[0], false, /*INVALID_ARGUMENT*/ 3);
  auto failed = coordinator_->GetJob(job->id());
  EXPECT_EQ(failed->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed->attempt(), 1);
  EXPECT_EQ(failed->error().code(), 3);
  EXPECT_EQ(failed->error().message(), "boom");
  EXPECT_EQ(coordinator_->CancelJob(job->id(), "").status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(CoordinatorTest, TransientErrorRetriesUntilMaxAttemptsThenFailsWithTheLastError) {
  options_.max_attempts = 3;
  Open();
  FakeWorker a;
  Register(a, "a");
  auto job = coordinator_->SubmitJob(Spec());
  for (int attempt = 1; attempt <= 3; ++attempt) {
    const auto assignments = a.Assignments();
    ASSERT_EQ(assignments.size(), static_cast<size_t>(attempt));
    EXPECT_EQ(assignments.back().attempt(), attempt);
    Finish(a, assignments.back(), false, /*INTERNAL*/ 13);
  }
  auto failed = coordinator_->GetJob(job->id());
  EXPECT_EQ(failed->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed->attempt(), 3);
  EXPECT_EQ(failed->error().code(), 13);
  EXPECT_EQ(failed->error().message(), "gave up after 3 attempts; last: worker " + a.id + ": boom");
}

TEST_F(CoordinatorTest, CancelRunningJobFreesWorkerWhenItReports) {
  FakeWorker a;
  Register(a, "a");
  auto job = coordinator_->SubmitJob(Spec());
  ASSERT_EQ(a.Assignments().size(), 1u);
  auto cancelled = coordinator_->CancelJob(job->id(), "changed my mind");
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(a.Cancellations(), 1);
  EXPECT_EQ(coordinator_->WorkerCounts()["busy"], 1);
  Finish(a, a.Assignments()[0], false);  // the worker stops with CANCELLED
  EXPECT_EQ(coordinator_->GetJob(job->id())->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(coordinator_->WorkerCounts()["idle"], 1);
  // The worker is free for the next job.
  auto next = coordinator_->SubmitJob(Spec());
  EXPECT_EQ(coordinator_->GetJob(next->id())->state(), v1::JOB_STATE_RUNNING);
}

TEST_F(CoordinatorTest, LostWorkerRequeuesThenFailsAfterMaxAttempts) {
  options_.heartbeat_timeout = absl::Milliseconds(50);
  options_.max_attempts = 2;
  Open();
  auto job = coordinator_->SubmitJob(Spec());
  for (int attempt = 1; attempt <= 2; ++attempt) {
    FakeWorker w;
    Register(w, absl::StrCat("w", attempt));
    auto running = coordinator_->GetJob(job->id());
    ASSERT_EQ(running->state(), v1::JOB_STATE_RUNNING);
    EXPECT_EQ(running->attempt(), attempt);
    absl::SleepFor(absl::Milliseconds(120));
    coordinator_->Tick();
    if (attempt == 1) {
      EXPECT_EQ(coordinator_->GetJob(job->id())->state(), v1::JOB_STATE_QUEUED);
    }
  }
  auto failed = coordinator_->GetJob(job->id());
  EXPECT_EQ(failed->state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(failed->error().message().find("gave up after 2 attempts"), std::string::npos) << failed->error().message();
}

TEST_F(CoordinatorTest, RestartKeepsQueuedAndRequeuesRunning) {
  FakeWorker a;
  Register(a, "a");
  auto running = coordinator_->SubmitJob(Spec());
  auto queued = coordinator_->SubmitJob(Spec());
  ASSERT_EQ(coordinator_->GetJob(running->id())->state(), v1::JOB_STATE_RUNNING);
  ASSERT_EQ(coordinator_->GetJob(queued->id())->state(), v1::JOB_STATE_QUEUED);
  Open();  // a new coordinator on the same database
  auto r = coordinator_->GetJob(running->id());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(r->attempt(), 1);
  EXPECT_EQ(coordinator_->GetJob(queued->id())->state(), v1::JOB_STATE_QUEUED);
  // The re-queue is in the job's history, after the events of the first run.
  auto watcher = std::make_shared<RecordingWatcher>();
  ASSERT_TRUE(coordinator_->WatchJob(running->id(), 1, watcher).ok());
  ASSERT_FALSE(watcher->events.empty());
  const v1::JobEvent& last = watcher->events.back();
  ASSERT_TRUE(last.has_state_change());
  EXPECT_EQ(last.state_change().state(), v1::JOB_STATE_QUEUED);
  EXPECT_NE(last.state_change().reason().find("restarted"), std::string::npos);
  // The next worker picks up the oldest job first, as attempt 2.
  FakeWorker b;
  Register(b, "b");
  ASSERT_EQ(b.Assignments().size(), 1u);
  EXPECT_EQ(b.Assignments()[0].job_id(), running->id());
  EXPECT_EQ(b.Assignments()[0].attempt(), 2);
}

TEST_F(CoordinatorTest, WatcherGetsSnapshotEventsAndEnd) {
  auto job = coordinator_->SubmitJob(Spec());
  auto watcher = std::make_shared<RecordingWatcher>();
  ASSERT_TRUE(coordinator_->WatchJob(job->id(), 0, watcher).ok());
  ASSERT_EQ(watcher->snapshots.size(), 1u);
  EXPECT_EQ(watcher->snapshots[0].state(), v1::JOB_STATE_QUEUED);
  EXPECT_TRUE(watcher->events.empty());  // after_sequence 0: no replay
  FakeWorker a;
  Register(a, "a");
  v1::ConnectRequest progress;
  progress.mutable_job_event()->set_job_id(job->id());
  progress.mutable_job_event()->set_attempt(1);
  progress.mutable_job_event()->mutable_event()->mutable_progress()->set_stage("calibrate");
  progress.mutable_job_event()->mutable_event()->mutable_progress()->set_layer(2);
  progress.mutable_job_event()->mutable_event()->mutable_progress()->set_num_layers(5);
  ASSERT_TRUE(coordinator_->HandleWorkerMessage(a.id, progress).ok());
  EXPECT_EQ(coordinator_->GetJob(job->id())->progress().layer(), 2);
  Finish(a, a.Assignments()[0], true);
  ASSERT_EQ(watcher->finished, 1);
  ASSERT_EQ(watcher->events.size(), 3u);  // RUNNING, progress, SUCCEEDED
  EXPECT_EQ(watcher->events[0].state_change().state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(watcher->events[1].progress().layer(), 2);
  EXPECT_EQ(watcher->events[2].state_change().state(), v1::JOB_STATE_SUCCEEDED);
  for (size_t i = 1; i < watcher->events.size(); ++i) {
    EXPECT_EQ(watcher->events[i].sequence(), watcher->events[i - 1].sequence() + 1);
  }
  // A late watcher of a finished job: snapshot, full replay, end.
  auto late = std::make_shared<RecordingWatcher>();
  ASSERT_TRUE(coordinator_->WatchJob(job->id(), 1, late).ok());
  EXPECT_EQ(late->snapshots[0].state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(late->events.size(), 3u);
  EXPECT_EQ(late->finished, 1);
  EXPECT_EQ(coordinator_->WatchJob("job-nope", 0, late).code(), absl::StatusCode::kNotFound);
}

TEST_F(CoordinatorTest, ListPagesNewestFirstWithStateFilter) {
  std::vector<std::string> ids;
  for (int i = 0; i < 7; ++i) ids.push_back(coordinator_->SubmitJob(Spec())->id());
  ASSERT_TRUE(coordinator_->CancelJob(ids[3], "").ok());
  v1::ListJobsRequest request;
  request.set_page_size(3);
  std::vector<std::string> seen;
  for (int page = 0; page < 10; ++page) {
    auto r = coordinator_->ListJobs(request);
    ASSERT_TRUE(r.ok()) << r.status();
    for (const auto& j : r->jobs()) seen.push_back(j.id());
    if (r->next_page_token().empty()) break;
    request.set_page_token(r->next_page_token());
  }
  ASSERT_EQ(seen.size(), 7u);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(seen[i], ids[6 - i]);
  request.Clear();
  request.set_state(v1::JOB_STATE_CANCELLED);
  auto cancelled = coordinator_->ListJobs(request);
  ASSERT_EQ(cancelled->jobs_size(), 1);
  EXPECT_EQ(cancelled->jobs(0).id(), ids[3]);
  request.set_page_token("garbage");
  EXPECT_EQ(coordinator_->ListJobs(request).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CoordinatorTest, DryRunChecksModelHeadersWithoutRunning) {
  const std::filesystem::path data = SharedDataDir();
  SHRINKRAY_REQUIRE_PATH(data / "stories260K");
  auto paths = PathPolicy::Create({});
  auto store = JobStore::Open(db_.string() + ".dry");
  auto c = Coordinator::Create(std::move(*store), std::move(*paths), options_, nullptr);
  ASSERT_TRUE(c.ok());
  v1::JobSpec spec;
  spec.set_model_path((data / "stories260K").string());
  spec.set_recipe_yaml(kRecipe);
  spec.mutable_calibration()->set_path((data / "text/tinystories_train_prefix.txt").string());
  spec.set_output_path((root_ / "dry-out").string());
  spec.set_dry_run(true);
  auto ok = (*c)->SubmitJob(spec);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_FALSE(std::filesystem::exists(root_ / "dry-out"));

  spec.mutable_calibration()->set_path((data / "text/no_such_file.txt").string());
  auto bad = (*c)->SubmitJob(spec);
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ(bad->state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(bad->error().message().find("no_such_file.txt"), std::string::npos) << bad->error().message();

  spec.mutable_calibration()->set_path((data / "text/tinystories_train_prefix.txt").string());
  spec.set_recipe_yaml("[{gptq: {bits: 4, targets: ['model\\.layers\\.99\\..*']}}]");
  auto untargeted = (*c)->SubmitJob(spec);
  ASSERT_TRUE(untargeted.ok()) << untargeted.status();
  EXPECT_EQ(untargeted->state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(untargeted->error().message().find("select no decoder-layer Linear"), std::string::npos)
      << untargeted->error().message();
}

}  // namespace
}  // namespace shrinkray

namespace shrinkray {
namespace {

TEST_F(CoordinatorTest, RendezvousStoreLivesWithTheRunningAttempt) {
  auto job = coordinator_->SubmitJob(Spec());
  EXPECT_EQ(coordinator_->StoreSet(job->id(), 1, "rank0", "addr").code(), absl::StatusCode::kFailedPrecondition);
  FakeWorker a;
  Register(a, "a");
  ASSERT_EQ(coordinator_->GetJob(job->id())->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(coordinator_->StoreGet(job->id(), 1, "rank0").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(coordinator_->StoreSet(job->id(), 1, "rank0", std::string("a\0b", 3)).ok());
  EXPECT_EQ(*coordinator_->StoreGet(job->id(), 1, "rank0"), std::string("a\0b", 3));
  EXPECT_EQ(coordinator_->StoreGet(job->id(), 2, "rank0").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(coordinator_->StoreGet("job-nope", 1, "rank0").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(coordinator_->StoreSet(job->id(), 1, "", "x").code(), absl::StatusCode::kInvalidArgument);
  Finish(a, a.Assignments()[0], true);
  EXPECT_EQ(coordinator_->StoreGet(job->id(), 1, "rank0").status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace shrinkray
