#include "worker/worker.h"

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/io/text_file.h"
#include "core/pipeline/job_runner.h"
#include "core/util/cancellation.h"
#include "core/util/process_memory.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "proto/job_spec_conversion.h"
#include "core/comm/communicator.h"
#include "worker/coordinator_store.h"
#include "shrinkray/v1/worker.grpc.pb.h"

namespace shrinkray {
namespace {

int64_t HostMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
}

void Log(const std::string& line) {
  std::fprintf(stderr, "shrinkray-worker: %s\n", line.c_str());
  std::fflush(stderr);
}

}  // namespace

// One connection to the coordinator: the reading loop runs on Run()'s thread,
// heartbeats and the job on their own threads; writes are serialised (gRPC
// allows one outstanding write per stream).
class Worker::Session {
 public:
  Session(const WorkerOptions& options, WorkerMetrics* metrics, std::shared_ptr<grpc::Channel> channel)
      : options_(options), metrics_(metrics), channel_(channel), stub_(v1::WorkerService::NewStub(channel)) {}

  ~Session() { Close(); }

  // Runs until the stream ends. True when it got as far as registering (the
  // caller then resets its backoff).
  bool Serve() {
    if (!options_.token.empty()) context_.AddMetadata("authorization", absl::StrCat("Bearer ", options_.token));
    stream_ = stub_->Connect(&context_);
    v1::ConnectRequest hello;
    v1::WorkerHello* h = hello.mutable_hello();
    h->set_name(options_.name);
    h->set_version("shrinkray 0.1.0");
    h->set_metrics_address(options_.metrics_address);
    v1::WorkerCapabilities* caps = h->mutable_capabilities();
    caps->set_device(options_.device.ToString());
    caps->set_memory_bytes(HostMemoryBytes());
    caps->set_cpu_cores(static_cast<int32_t>(std::thread::hardware_concurrency()));
    if (!Write(hello)) return false;
    v1::ConnectResponse response;
    if (!stream_->Read(&response) || !response.has_registered()) return false;
    worker_id_ = response.registered().worker_id();
    const int interval_ms = std::max(50, response.registered().heartbeat_interval_ms());
    Log(absl::StrCat("registered as ", worker_id_, " with ", options_.coordinator));
    heartbeat_ = std::thread([this, interval_ms] { HeartbeatLoop(interval_ms); });
    while (stream_->Read(&response)) {
      if (response.has_assignment()) {
        StartJob(response.assignment());
      } else if (response.has_cancellation()) {
        const v1::JobCancellation& c = response.cancellation();
        std::lock_guard<std::mutex> lock(job_mu_);
        if (job_cancel_ != nullptr && c.job_id() == job_id_ && c.attempt() == job_attempt_) {
          Log(absl::StrCat("cancelling ", c.job_id(), ": ", c.reason()));
          job_cancel_->Cancel();
        }
      }
    }
    return true;
  }

  // Ends the session: cancels the job (the coordinator re-queues it) and the
  // stream, and joins every thread.
  void Close() {
    {
      std::lock_guard<std::mutex> lock(job_mu_);
      if (job_cancel_ != nullptr) job_cancel_->Cancel();
    }
    {
      std::lock_guard<std::mutex> lock(heartbeat_mu_);
      closing_ = true;
    }
    heartbeat_cv_.notify_all();
    context_.TryCancel();
    if (heartbeat_.joinable()) heartbeat_.join();
    if (job_thread_.joinable()) job_thread_.join();
    if (stream_ != nullptr) {
      stream_->Finish();
      stream_.reset();
    }
  }

  void Cancel() { context_.TryCancel(); }

 private:
  bool Write(const v1::ConnectRequest& message) {
    std::lock_guard<std::mutex> lock(write_mu_);
    return stream_ != nullptr && stream_->Write(message);
  }

  void HeartbeatLoop(int interval_ms) {
    std::unique_lock<std::mutex> lock(heartbeat_mu_);
    while (!closing_) {
      heartbeat_cv_.wait_for(lock, std::chrono::milliseconds(interval_ms));
      if (closing_) break;
      v1::ConnectRequest m;
      auto rss = ResidentMemoryBytes();
      if (rss.ok()) m.mutable_heartbeat()->set_resident_memory_bytes(*rss);
      {
        std::lock_guard<std::mutex> job_lock(job_mu_);
        m.mutable_heartbeat()->set_job_id(job_id_);
        m.mutable_heartbeat()->set_attempt(job_attempt_);
      }
      if (metrics_ != nullptr) metrics_->UpdateResidentMemory();
      lock.unlock();
      const bool ok = Write(m);
      lock.lock();
      if (!ok) break;
    }
  }

  void StartJob(const v1::JobAssignment& assignment) {
    if (job_thread_.joinable()) job_thread_.join();  // the previous job has reported already
    {
      std::lock_guard<std::mutex> lock(job_mu_);
      job_id_ = assignment.job_id();
      job_attempt_ = assignment.attempt();
      job_cancel_ = std::make_unique<CancellationToken>();
    }
    Log(absl::StrCat("job ", assignment.job_id(), " attempt ", assignment.attempt(), ": rank ", assignment.rank(),
                     " of ", assignment.world_size()));
    job_thread_ = std::thread([this, assignment] { RunJob(assignment); });
  }

  std::string CommAddress() const {
    if (!options_.comm_address.empty()) return options_.comm_address;
    const std::string& c = options_.coordinator;
    if (c.rfind("127.", 0) == 0 || c.rfind("localhost", 0) == 0 || c.rfind("[::1]", 0) == 0) return "127.0.0.1";
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    return host;
  }

  void SendEvent(const v1::JobAssignment& a, v1::JobEvent event) {
    v1::ConnectRequest m;
    v1::WorkerJobEvent* e = m.mutable_job_event();
    e->set_job_id(a.job_id());
    e->set_attempt(a.attempt());
    *e->mutable_event() = std::move(event);
    Write(m);
  }

  void RunJob(const v1::JobAssignment& a) {
    if (metrics_ != nullptr) metrics_->SetBusy(true);
    const CancellationToken* cancel = nullptr;
    {
      std::lock_guard<std::mutex> lock(job_mu_);
      cancel = job_cancel_.get();
    }
    v1::ConnectRequest done;
    v1::WorkerJobFinished* finished = done.mutable_job_finished();
    finished->set_job_id(a.job_id());
    finished->set_attempt(a.attempt());
    absl::StatusOr<v1::JobResult> result = Execute(a, cancel);
    if (result.ok()) {
      *finished->mutable_result() = std::move(*result);
    } else {
      finished->mutable_error()->set_code(static_cast<int32_t>(result.status().code()));
      finished->mutable_error()->set_message(std::string(result.status().message()));
      Log(absl::StrCat("job ", a.job_id(), ": ", result.status().ToString()));
    }
    {
      std::lock_guard<std::mutex> lock(job_mu_);
      job_id_.clear();
      job_attempt_ = 0;
    }
    Write(done);
    if (metrics_ != nullptr) {
      metrics_->SetBusy(false);
      metrics_->SetProgress(0.0);
    }
  }

  absl::StatusOr<v1::JobResult> Execute(const v1::JobAssignment& a, const CancellationToken* cancel) {
    absl::StatusOr<CompressionJob> job = CompressionJobFromSpec(a.spec());
    if (!job.ok()) return job.status();
    // A gang: the ranks meet through the coordinator's store of this attempt.
    std::unique_ptr<Communicator> comm;
    // NCCL also for one rank: the job then runs its collectives through
    // NCCL (the GPU check of that path); Gloo only where there are peers.
    if (a.world_size() > 1 || options_.comm_backend == "nccl") {
      CommOptions c;
      c.rank = a.rank();
      c.size = a.world_size();
      c.timeout = options_.comm_timeout;
      c.interface_address = CommAddress();
      c.device = options_.device.index;
      auto store = MakeCoordinatorStore(v1::WorkerService::NewStub(channel_), options_.token, a.job_id(), a.attempt());
      auto made = MakeHostCommunicator(options_.comm_backend, store, c);
      if (!made.ok()) return made.status();
      comm = std::move(*made);
      job->comm = comm.get();
    }
    job->compress.layerwise.solvers = options_.solvers;
    job->compress.layerwise.executors = options_.executors;
    job->distill_runners = options_.distill_runners;
    // Rank 0 speaks for the job; the others would repeat its events.
    const bool speaks = a.rank() == 0;
    const int64_t tokens_per_layer =
        static_cast<int64_t>(job->compress.calibration.num_samples) * job->compress.calibration.seqlen;
    JobObserver observer;
    observer.cancel = cancel;
    observer.progress = [&](const std::string& stage, int layer, int num_layers, double fraction) {
      if (metrics_ != nullptr) metrics_->SetProgress(fraction);
      if (!speaks) return;
      v1::JobEvent event;
      v1::JobProgress* p = event.mutable_progress();
      p->set_stage(stage);
      p->set_layer(layer);
      p->set_num_layers(num_layers);
      p->set_fraction(fraction);
      SendEvent(a, std::move(event));
    };
    observer.on_layer_done = [&](const LayerDone& done) {
      if (metrics_ != nullptr) {
        metrics_->LayerCompleted("calibrate", done.seconds);
        metrics_->CalibrationTokens(tokens_per_layer / a.world_size());
      }
      if (!speaks) return;
      for (const MatrixReport& m : done.matrices) {
        v1::JobEvent event;
        v1::MetricPoint* point = event.mutable_metric();
        point->set_name("matrix_error");
        point->set_value(m.error);
        point->set_step(done.layer);
        (*point->mutable_labels())["module"] = m.module;
        SendEvent(a, std::move(event));
      }
      v1::JobEvent event;
      v1::MetricPoint* point = event.mutable_metric();
      point->set_name("layer_seconds");
      point->set_value(done.seconds);
      point->set_step(done.layer);
      SendEvent(a, std::move(event));
    };
    observer.on_resume = [&](int first_layer, int num_layers) {
      if (metrics_ != nullptr) metrics_->JobResumed(first_layer);
      if (!speaks) return;
      v1::JobEvent event;
      event.mutable_log()->set_level("info");
      event.mutable_log()->set_text(absl::StrCat("resumed at layer ", first_layer + 1, "/", num_layers, ": layers 1-",
                                                 first_layer, " restored from the checkpoint of an earlier attempt"));
      SendEvent(a, std::move(event));
      v1::JobEvent metric;
      metric.mutable_metric()->set_name("resumed_at_layer");
      metric.mutable_metric()->set_value(first_layer);
      SendEvent(a, std::move(metric));
    };
    observer.log = [&](const std::string& line) {
      if (!speaks) return;
      v1::JobEvent event;
      event.mutable_log()->set_level("info");
      event.mutable_log()->set_text(line);
      SendEvent(a, std::move(event));
    };
    observer.on_train_step = [&](const distill::StepMetrics& m) {
      if (metrics_ != nullptr) {
        metrics_->TrainStep(m.loss, m.divergence, m.cross_entropy, m.lr, m.grad_norm, m.tokens_per_s);
      }
      if (!speaks) return;
      const std::pair<const char*, double> points[] = {
          {"train_loss", m.loss},           {"train_kl", m.divergence}, {"train_ce", m.cross_entropy},
          {"train_lr", m.lr},               {"train_grad_norm", m.grad_norm},
          {"train_tokens_per_s", m.tokens_per_s}};
      for (const auto& [name, value] : points) {
        v1::JobEvent event;
        v1::MetricPoint* point = event.mutable_metric();
        point->set_name(name);
        point->set_value(value);
        point->set_step(m.step);
        SendEvent(a, std::move(event));
      }
    };
    absl::StatusOr<CompressionJobResult> run = RunCompressionJob(*job, observer);
    if (!run.ok()) return run.status();
    if (!speaks) return v1::JobResult();
    std::string report_json;
    if (auto text = ReadTextFile(job->compress.out_dir / "report.json"); text.ok()) report_json = std::move(*text);
    return JobResultFromRun(*run, report_json);
  }

  const WorkerOptions& options_;
  WorkerMetrics* const metrics_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ConnectRequest, v1::ConnectResponse>> stream_;
  std::mutex write_mu_;
  std::string worker_id_;

  std::mutex heartbeat_mu_;
  std::condition_variable heartbeat_cv_;
  bool closing_ = false;
  std::thread heartbeat_;

  std::mutex job_mu_;
  std::string job_id_;
  int job_attempt_ = 0;
  std::unique_ptr<CancellationToken> job_cancel_;
  std::thread job_thread_;
};

Worker::Worker(WorkerOptions options, WorkerMetrics* metrics) : options_(std::move(options)), metrics_(metrics) {}

Worker::~Worker() { Shutdown(); }

void Worker::Run() {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!options_.tls_ca_pem.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options_.tls_ca_pem;
    credentials = grpc::SslCredentials(ssl);
  }
  absl::Duration backoff = options_.initial_backoff;
  while (!stopping_.load()) {
    auto channel = grpc::CreateChannel(options_.coordinator, credentials);
    auto session = std::make_unique<Session>(options_, metrics_, channel);
    {
      std::lock_guard<std::mutex> lock(session_mu_);
      session_ = session.get();
    }
    if (stopping_.load()) session->Cancel();
    const bool registered = session->Serve();
    {
      std::lock_guard<std::mutex> lock(session_mu_);
      session_ = nullptr;
    }
    session->Close();
    if (stopping_.load()) break;
    if (registered) backoff = options_.initial_backoff;
    Log(absl::StrCat("connection to ", options_.coordinator, " lost; retrying in ", absl::FormatDuration(backoff)));
    const absl::Time until = absl::Now() + backoff;
    while (!stopping_.load() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(50));
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

void Worker::Shutdown() {
  stopping_.store(true);
  std::lock_guard<std::mutex> lock(session_mu_);
  if (session_ != nullptr) session_->Cancel();
}

}  // namespace shrinkray
