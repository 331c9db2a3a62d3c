#include "server/coordinator.h"

#include <algorithm>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/pipeline/job_runner.h"
#include "core/util/compute_device.h"
#include "core/util/status_macros.h"
#include "proto/job_spec_conversion.h"

namespace shrinkray {
namespace {

google::protobuf::Timestamp ToProto(absl::Time t) {
  google::protobuf::Timestamp ts;
  const int64_t nanos = absl::ToUnixNanos(t);
  ts.set_seconds(nanos / 1'000'000'000);
  ts.set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
  return ts;
}

absl::Time FromProto(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

std::string NewJobId() {
  static absl::Mutex mu(absl::kConstInit);
  static absl::BitGen* gen = new absl::BitGen();
  absl::MutexLock lock(&mu);
  return absl::StrFormat("job-%012x", absl::Uniform<uint64_t>(*gen, 0, uint64_t{1} << 48));
}

// Failures another attempt may not repeat. A bad spec, a missing file or a
// refused path fail the same way every time: those end the job at once.
bool IsRetryable(int32_t code) {
  switch (static_cast<absl::StatusCode>(code)) {
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDataLoss: return true;
    default: return false;
  }
}

// `device` is a registered worker's (checked by RegisterWorker): a job that
// asks for cuda runs on any cuda:N worker.
bool DeviceMatches(v1::DevicePreference preference, const std::string& device) {
  const absl::StatusOr<ComputeDevice> parsed = ParseComputeDevice(device);
  switch (preference) {
    case v1::DEVICE_PREFERENCE_CPU: return parsed.ok() && !parsed->is_cuda();
    case v1::DEVICE_PREFERENCE_CUDA: return parsed.ok() && parsed->is_cuda();
    default: return true;
  }
}

}  // namespace

std::string JobStateName(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  const std::string prefix = "JOB_STATE_";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  return absl::AsciiStrToLower(name);
}

bool IsFinalState(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED || state == v1::JOB_STATE_CANCELLED;
}

Coordinator::Coordinator(std::unique_ptr<JobStore> store, PathPolicy paths, CoordinatorOptions options,
                         CoordinatorMetrics* metrics)
    : store_(std::move(store)), paths_(std::move(paths)), options_(options), metrics_(metrics) {}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(std::unique_ptr<JobStore> store, PathPolicy paths,
                                                                 CoordinatorOptions options,
                                                                 CoordinatorMetrics* metrics) {
  if (store == nullptr) return absl::InvalidArgumentError("coordinator needs a job store");
  std::unique_ptr<Coordinator> c(new Coordinator(std::move(store), std::move(paths), options, metrics));
  SR_RETURN_IF_ERROR(c->Recover());
  return c;
}

Coordinator::~Coordinator() { Stop(); }

absl::Status Coordinator::Recover() {
  SR_ASSIGN_OR_RETURN(std::vector<v1::Job> jobs, store_->LoadAllJobs());
  absl::MutexLock lock(&mu_);
  for (v1::Job& job : jobs) {
    const std::string id = job.id();
    JobEntry& entry = jobs_[id];
    entry.job = std::move(job);
    entry.order = next_order_++;
    entry.queued_at = FromProto(entry.job.create_time());
    order_[entry.order] = id;
    const v1::JobState state = entry.job.state();
    entry.job.set_state(v1::JOB_STATE_UNSPECIFIED);
    TrackStateLocked(entry, state);
    SR_ASSIGN_OR_RETURN(entry.last_sequence, store_->LastEventSequence(id));
  }
  for (auto& [id, entry] : jobs_) {
    if (entry.job.state() == v1::JOB_STATE_RUNNING) {
      RequeueLocked(entry, "the coordinator restarted while the job ran");
    }
  }
  UpdateGaugesLocked();
  return absl::OkStatus();
}

void Coordinator::Start() {
  {
    absl::MutexLock lock(&stop_mu_);
    if (ticker_.joinable()) return;
    stopping_ = false;
  }
  ticker_ = std::thread([this] {
    while (true) {
      {
        absl::MutexLock lock(&stop_mu_);
        auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(stop_mu_) { return stopping_; };
        stop_mu_.AwaitWithTimeout(absl::Condition(&stop), options_.tick_interval);
        if (stopping_) return;
      }
      Tick();
    }
  });
}

void Coordinator::Stop() {
  {
    absl::MutexLock lock(&stop_mu_);
    stopping_ = true;
  }
  if (ticker_.joinable()) ticker_.join();
}

void Coordinator::TrackStateLocked(JobEntry& entry, v1::JobState state) {
  const v1::JobState old = entry.job.state();
  if (old != v1::JOB_STATE_UNSPECIFIED) --state_counts_[old];
  if (old == v1::JOB_STATE_QUEUED) queued_.erase(entry.order);
  entry.job.set_state(state);
  ++state_counts_[state];
  if (state == v1::JOB_STATE_QUEUED) queued_.insert(entry.order);
}

Coordinator::JobEntry* Coordinator::FindLocked(const std::string& id) {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : &it->second;
}

absl::Status Coordinator::PersistLocked(JobEntry& entry) { return store_->UpdateJob(entry.job); }

void Coordinator::EmitLocked(JobEntry& entry, v1::JobEvent event) {
  event.set_sequence(++entry.last_sequence);
  *event.mutable_time() = ToProto(absl::Now());
  // A lost event is a gap in the history, not a reason to stop the job.
  (void)store_->AppendEvent(entry.job.id(), event);
  for (const auto& watcher : entry.watchers) watcher->OnEvent(event);
}

void Coordinator::LogLocked(JobEntry& entry, const std::string& level, const std::string& text) {
  v1::JobEvent event;
  event.mutable_log()->set_level(level);
  event.mutable_log()->set_text(text);
  EmitLocked(entry, std::move(event));
}

void Coordinator::SetStateLocked(JobEntry& entry, v1::JobState state, const std::string& reason) {
  v1::Job& job = entry.job;
  const absl::Time now = absl::Now();
  if (job.state() == v1::JOB_STATE_RUNNING && state != v1::JOB_STATE_RUNNING) {
    stores_.erase({job.id(), job.attempt()});
  }
  TrackStateLocked(entry, state);
  if (state == v1::JOB_STATE_RUNNING) {
    *job.mutable_start_time() = ToProto(now);
    job.clear_end_time();
    if (metrics_ != nullptr) metrics_->JobStarted(absl::ToDoubleSeconds(now - entry.queued_at));
  } else if (state == v1::JOB_STATE_QUEUED) {
    entry.queued_at = now;
    job.clear_worker_ids();
  } else if (IsFinalState(state)) {
    *job.mutable_end_time() = ToProto(now);
    job.clear_worker_ids();
    if (metrics_ != nullptr) {
      const absl::Time begin = job.has_start_time() ? FromProto(job.start_time()) : now;
      metrics_->JobFinished(JobStateName(state), absl::ToDoubleSeconds(now - begin));
    }
  }
  (void)PersistLocked(entry);
  v1::JobEvent event;
  event.mutable_state_change()->set_state(state);
  event.mutable_state_change()->set_reason(reason);
  EmitLocked(entry, std::move(event));
  if (IsFinalState(state)) {
    for (const auto& watcher : entry.watchers) watcher->OnFinished();
    entry.watchers.clear();
  }
  UpdateGaugesLocked();
}

absl::StatusOr<v1::Job> Coordinator::SubmitJob(const v1::JobSpec& spec) {
  SR_ASSIGN_OR_RETURN(v1::JobSpec valid, ValidateJobSpec(spec, paths_, options_.limits));
  // A dry run reads the model's headers and the data files here, before the
  // lock, so many dry runs do not serialise the API.
  absl::Status dry_run;
  if (valid.dry_run()) {
    auto job = CompressionJobFromSpec(valid);
    dry_run = job.ok() ? ValidateCompressionJob(*job) : job.status();
  }
  absl::MutexLock lock(&mu_);
  if (!valid.dry_run()) {
    const int queued = static_cast<int>(queued_.size());
    if (queued >= options_.max_queued_jobs) {
      return absl::ResourceExhaustedError(absl::StrCat("queue full: ", queued, " jobs queued (--max-queued-jobs ",
                                                       options_.max_queued_jobs, ")"));
    }
  }
  std::string id = NewJobId();
  while (jobs_.count(id) > 0) id = NewJobId();
  v1::Job job;
  job.set_id(id);
  *job.mutable_spec() = valid;
  job.set_state(v1::JOB_STATE_QUEUED);
  *job.mutable_create_time() = ToProto(absl::Now());
  SR_RETURN_IF_ERROR(store_->InsertJob(job));
  JobEntry& entry = jobs_[id];
  entry.job = std::move(job);
  entry.order = next_order_++;
  entry.queued_at = absl::Now();
  order_[entry.order] = id;
  entry.job.set_state(v1::JOB_STATE_UNSPECIFIED);
  TrackStateLocked(entry, v1::JOB_STATE_QUEUED);
  if (metrics_ != nullptr) metrics_->JobSubmitted();
  {
    v1::JobEvent event;
    event.mutable_state_change()->set_state(v1::JOB_STATE_QUEUED);
    event.mutable_state_change()->set_reason(valid.dry_run() ? "submitted (dry run)" : "submitted");
    EmitLocked(entry, std::move(event));
  }
  if (valid.dry_run()) {
    if (dry_run.ok()) {
      SetStateLocked(entry, v1::JOB_STATE_SUCCEEDED, "dry run: spec, paths and model headers are valid");
    } else {
      entry.job.mutable_error()->set_code(static_cast<int32_t>(dry_run.code()));
      entry.job.mutable_error()->set_message(std::string(dry_run.message()));
      SetStateLocked(entry, v1::JOB_STATE_FAILED, absl::StrCat("dry run: ", dry_run.message()));
    }
  } else {
    UpdateGaugesLocked();
    ScheduleLocked();
  }
  return entry.job;
}

absl::StatusOr<v1::Job> Coordinator::GetJob(const std::string& id) {
  absl::MutexLock lock(&mu_);
  JobEntry* entry = FindLocked(id);
  if (entry == nullptr) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  return entry->job;
}

absl::StatusOr<v1::ListJobsResponse> Coordinator::ListJobs(const v1::ListJobsRequest& request) {
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("page_size must be >= 0, got ", request.page_size()));
  }
  const int page_size = request.page_size() == 0 ? 50 : std::min(request.page_size(), 1000);
  uint64_t before = UINT64_MAX;
  if (!request.page_token().empty() && !absl::SimpleAtoi(request.page_token(), &before)) {
    return absl::InvalidArgumentError(absl::StrCat("page_token '", request.page_token(), "' is not one we issued"));
  }
  absl::MutexLock lock(&mu_);
  v1::ListJobsResponse response;
  // Newest first: walk the creation order backwards from the token.
  auto it = order_.lower_bound(before);
  while (it != order_.begin()) {
    --it;
    const v1::Job& job = jobs_.at(it->second).job;
    if (request.state() != v1::JOB_STATE_UNSPECIFIED && job.state() != request.state()) continue;
    if (response.jobs_size() == page_size) {
      response.set_next_page_token(absl::StrCat(jobs_.at(response.jobs(page_size - 1).id()).order));
      break;
    }
    *response.add_jobs() = job;
  }
  return response;
}

absl::StatusOr<v1::Job> Coordinator::CancelJob(const std::string& id, const std::string& reason) {
  absl::MutexLock lock(&mu_);
  JobEntry* entry = FindLocked(id);
  if (entry == nullptr) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  if (IsFinalState(entry->job.state())) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " is already ", JobStateName(entry->job.state()), "; only queued or running jobs can be cancelled"));
  }
  const std::string why = reason.empty() ? "cancelled by the user" : absl::StrCat("cancelled: ", reason);
  if (entry->job.state() == v1::JOB_STATE_RUNNING) CancelGangLocked(*entry, why);
  entry->job.mutable_error()->set_code(static_cast<int32_t>(absl::StatusCode::kCancelled));
  entry->job.mutable_error()->set_message(why);
  SetStateLocked(*entry, v1::JOB_STATE_CANCELLED, why);
  return entry->job;
}

absl::Status Coordinator::WatchJob(const std::string& id, int64_t after_sequence,
                                   std::shared_ptr<JobWatcher> watcher, bool replay_history) {
  if (after_sequence < 0) return absl::InvalidArgumentError("after_sequence must be >= 0");
  absl::MutexLock lock(&mu_);
  JobEntry* entry = FindLocked(id);
  if (entry == nullptr) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  watcher->OnSnapshot(entry->job);
  if (replay_history) after_sequence = 0;
  if ((replay_history || after_sequence > 0) && after_sequence < entry->last_sequence) {
    SR_ASSIGN_OR_RETURN(std::vector<v1::JobEvent> events,
                        store_->EventsAfter(id, after_sequence, static_cast<int>(entry->last_sequence - after_sequence)));
    for (const v1::JobEvent& e : events) watcher->OnEvent(e);
  }
  if (IsFinalState(entry->job.state())) {
    watcher->OnFinished();
  } else {
    entry->watchers.push_back(std::move(watcher));
  }
  return absl::OkStatus();
}

void Coordinator::Unwatch(const std::string& id, const JobWatcher* watcher) {
  absl::MutexLock lock(&mu_);
  JobEntry* entry = FindLocked(id);
  if (entry == nullptr) return;
  auto& w = entry->watchers;
  w.erase(std::remove_if(w.begin(), w.end(), [&](const auto& p) { return p.get() == watcher; }), w.end());
}

absl::StatusOr<v1::WorkerRegistered> Coordinator::RegisterWorker(const v1::WorkerHello& hello, WorkerSink sink) {
  if (hello.name().empty()) return absl::InvalidArgumentError("worker hello: name is empty");
  const absl::StatusOr<ComputeDevice> device =
      ParseComputeDevice(hello.capabilities().device(), "worker hello: capabilities.device");
  if (!device.ok()) return device.status();
  absl::MutexLock lock(&mu_);
  // The same worker reconnecting before its old stream was noticed dead.
  if (auto it = worker_ids_by_name_.find(hello.name()); it != worker_ids_by_name_.end()) {
    LoseWorkerLocked(it->second, "it reconnected");
  }
  Worker worker;
  worker.id = absl::StrCat(hello.name(), "-", next_worker_++);
  worker.hello = hello;
  worker.sink = std::move(sink);
  worker.last_heartbeat = absl::Now();
  v1::WorkerRegistered registered;
  registered.set_worker_id(worker.id);
  registered.set_heartbeat_interval_ms(static_cast<int32_t>(absl::ToInt64Milliseconds(options_.heartbeat_interval)));
  v1::ConnectResponse response;
  *response.mutable_registered() = registered;
  worker.sink(response);  // before any assignment
  worker_ids_by_name_[hello.name()] = worker.id;
  workers_[worker.id] = std::move(worker);
  ScheduleLocked();
  UpdateGaugesLocked();
  return registered;
}

absl::Status Coordinator::HandleWorkerMessage(const std::string& worker_id, const v1::ConnectRequest& message) {
  absl::MutexLock lock(&mu_);
  auto wit = workers_.find(worker_id);
  if (wit == workers_.end()) {
    return absl::NotFoundError(absl::StrCat("worker ", worker_id, " is not registered (declared lost?)"));
  }
  Worker& worker = wit->second;
  worker.last_heartbeat = absl::Now();
  switch (message.kind_case()) {
    case v1::ConnectRequest::kHeartbeat:
      worker.resident_memory_bytes = message.heartbeat().resident_memory_bytes();
      return absl::OkStatus();
    case v1::ConnectRequest::kJobEvent: {
      const v1::WorkerJobEvent& e = message.job_event();
      JobEntry* entry = FindLocked(e.job_id());
      if (entry == nullptr || worker.job_id != e.job_id() || entry->job.attempt() != e.attempt() ||
          entry->job.state() != v1::JOB_STATE_RUNNING) {
        return absl::OkStatus();  // late event of a cancelled or re-queued attempt
      }
      v1::JobEvent event = e.event();
      if (event.has_progress()) {
        *entry->job.mutable_progress() = event.progress();
        (void)PersistLocked(*entry);
      }
      if (event.has_log()) event.mutable_log()->set_worker_id(worker.id);
      EmitLocked(*entry, std::move(event));
      return absl::OkStatus();
    }
    case v1::ConnectRequest::kJobFinished:
      FinishLocked(worker, message.job_finished());
      ScheduleLocked();
      UpdateGaugesLocked();
      return absl::OkStatus();
    case v1::ConnectRequest::kHello:
      return absl::FailedPreconditionError("worker sent a second hello on one stream");
    default:
      return absl::InvalidArgumentError("worker message without content");
  }
}

void Coordinator::FinishLocked(Worker& worker, const v1::WorkerJobFinished& finished) {
  if (worker.job_id != finished.job_id() || worker.attempt != finished.attempt()) return;
  worker.job_id.clear();
  worker.attempt = 0;
  JobEntry* entry = FindLocked(finished.job_id());
  if (entry == nullptr || entry->job.state() != v1::JOB_STATE_RUNNING || entry->job.attempt() != finished.attempt()) {
    return;  // cancelled or re-queued meanwhile: the worker is simply free again
  }
  const auto& ids = entry->job.worker_ids();
  const bool rank0 = !ids.empty() && ids[0] == worker.id;
  if (finished.has_error()) {
    const v1::JobError& error = finished.error();
    const std::string reason = absl::StrCat("worker ", worker.id, ": ", error.message());
    if (IsRetryable(error.code())) {
      // Transient (a peer died, I/O, resources): another attempt resumes from
      // the checkpoint; RequeueLocked gives up after max_attempts.
      RequeueLocked(*entry, reason, &error);
      return;
    }
    *entry->job.mutable_error() = error;
    CancelGangLocked(*entry, absl::StrCat("worker ", worker.id, " failed"));
    SetStateLocked(*entry, v1::JOB_STATE_FAILED, reason);
  } else if (rank0) {
    *entry->job.mutable_result() = finished.result();
    entry->job.clear_error();
    if (entry->job.progress().fraction() < 1.0) entry->job.mutable_progress()->set_fraction(1.0);
    CancelGangLocked(*entry, "rank 0 finished");
    SetStateLocked(*entry, v1::JOB_STATE_SUCCEEDED, "finished");
  }
}

void Coordinator::CancelGangLocked(JobEntry& entry, const std::string& reason) {
  for (const std::string& id : entry.job.worker_ids()) {
    auto it = workers_.find(id);
    if (it == workers_.end() || it->second.job_id != entry.job.id()) continue;
    v1::ConnectResponse response;
    v1::JobCancellation* c = response.mutable_cancellation();
    c->set_job_id(entry.job.id());
    c->set_attempt(entry.job.attempt());
    c->set_reason(reason);
    it->second.sink(response);
    // The worker stays busy until it reports the job finished (it may still
    // be between two cancellation checks).
  }
}

void Coordinator::RequeueLocked(JobEntry& entry, const std::string& reason, const v1::JobError* last_error) {
  CancelGangLocked(entry, reason);
  if (entry.job.attempt() >= options_.max_attempts) {
    entry.job.mutable_error()->set_code(last_error != nullptr ? last_error->code()
                                                              : static_cast<int32_t>(absl::StatusCode::kAborted));
    entry.job.mutable_error()->set_message(
        absl::StrCat("gave up after ", entry.job.attempt(), " attempts; last: ", reason));
    SetStateLocked(entry, v1::JOB_STATE_FAILED, entry.job.error().message());
    return;
  }
  if (metrics_ != nullptr) metrics_->JobRequeued();
  SetStateLocked(entry, v1::JOB_STATE_QUEUED, absl::StrCat("re-queued: ", reason));
}

void Coordinator::LoseWorkerLocked(const std::string& worker_id, const std::string& reason) {
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return;
  Worker worker = std::move(it->second);
  workers_.erase(it);
  if (auto n = worker_ids_by_name_.find(worker.hello.name()); n != worker_ids_by_name_.end() && n->second == worker_id) {
    worker_ids_by_name_.erase(n);
  }
  if (worker.job_id.empty()) return;
  JobEntry* entry = FindLocked(worker.job_id);
  if (entry == nullptr || entry->job.state() != v1::JOB_STATE_RUNNING || entry->job.attempt() != worker.attempt) return;
  RequeueLocked(*entry, absl::StrCat("worker ", worker_id, " lost: ", reason));
}

void Coordinator::WorkerDisconnected(const std::string& worker_id, const std::string& reason) {
  absl::MutexLock lock(&mu_);
  LoseWorkerLocked(worker_id, absl::StrCat("its stream ended (", reason, ")"));
  ScheduleLocked();
  UpdateGaugesLocked();
}

void Coordinator::ScheduleLocked() {
  if (queued_.empty() || workers_.empty()) return;
  // A copy: assigning a job takes it out of queued_.
  const std::vector<uint64_t> queued(queued_.begin(), queued_.end());
  for (uint64_t order : queued) {
    JobEntry& entry = jobs_.at(order_.at(order));
    const std::string& id = entry.job.id();
    if (entry.job.state() != v1::JOB_STATE_QUEUED) continue;
    const v1::JobSpec& spec = entry.job.spec();
    const int wanted = std::max(1, spec.num_workers());
    std::vector<Worker*> gang;
    for (auto& [wid, worker] : workers_) {
      if (!worker.job_id.empty() || !DeviceMatches(spec.device(), worker.hello.capabilities().device())) continue;
      gang.push_back(&worker);
      if (static_cast<int>(gang.size()) == wanted) break;
    }
    if (static_cast<int>(gang.size()) < wanted) continue;  // later, smaller jobs may still fit
    entry.job.set_attempt(entry.job.attempt() + 1);
    entry.job.clear_worker_ids();
    entry.job.clear_progress();
    entry.job.clear_error();
    for (Worker* w : gang) entry.job.add_worker_ids(w->id);
    for (int rank = 0; rank < wanted; ++rank) {
      Worker& w = *gang[rank];
      w.job_id = id;
      w.attempt = entry.job.attempt();
      v1::ConnectResponse response;
      v1::JobAssignment* a = response.mutable_assignment();
      a->set_job_id(id);
      a->set_attempt(entry.job.attempt());
      *a->mutable_spec() = spec;
      a->set_rank(rank);
      a->set_world_size(wanted);
      for (Worker* g : gang) a->add_worker_ids(g->id);
      w.sink(response);
    }
    std::vector<std::string> names;
    for (Worker* w : gang) names.push_back(w->id);
    SetStateLocked(entry, v1::JOB_STATE_RUNNING,
                   absl::StrCat("attempt ", entry.job.attempt(), " on ", absl::StrJoin(names, ", ")));
  }
}

void Coordinator::Tick() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  std::vector<std::string> lost;
  for (const auto& [id, worker] : workers_) {
    if (now - worker.last_heartbeat > options_.heartbeat_timeout) lost.push_back(id);
  }
  for (const std::string& id : lost) {
    LoseWorkerLocked(id, absl::StrCat("no heartbeat for ", absl::FormatDuration(options_.heartbeat_timeout)));
  }
  ScheduleLocked();
  UpdateGaugesLocked();
  if (metrics_ != nullptr) metrics_->UpdateResidentMemory();
}

absl::Status Coordinator::CheckStoreAccessLocked(const std::string& job_id, int attempt) {
  JobEntry* entry = FindLocked(job_id);
  if (entry == nullptr) return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
  if (entry->job.state() != v1::JOB_STATE_RUNNING || entry->job.attempt() != attempt) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job_id, " attempt ", attempt, " is not running; its rendezvous keys are gone"));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::StoreSet(const std::string& job_id, int attempt, const std::string& key,
                                   const std::string& value) {
  constexpr size_t kMaxValueBytes = 1 << 20, kMaxKeys = 4096;
  if (key.empty() || key.size() > 512) return absl::InvalidArgumentError("store key must be 1..512 bytes");
  if (value.size() > kMaxValueBytes) {
    return absl::InvalidArgumentError(absl::StrCat("store value of ", key, " exceeds 1 MiB"));
  }
  absl::MutexLock lock(&mu_);
  SR_RETURN_IF_ERROR(CheckStoreAccessLocked(job_id, attempt));
  auto& keys = stores_[{job_id, attempt}];
  if (keys.size() >= kMaxKeys && keys.count(key) == 0) {
    return absl::ResourceExhaustedError(absl::StrCat("job ", job_id, ": more than ", kMaxKeys, " store keys"));
  }
  keys[key] = value;
  return absl::OkStatus();
}

absl::StatusOr<std::string> Coordinator::StoreGet(const std::string& job_id, int attempt, const std::string& key) {
  absl::MutexLock lock(&mu_);
  SR_RETURN_IF_ERROR(CheckStoreAccessLocked(job_id, attempt));
  auto it = stores_.find({job_id, attempt});
  if (it == stores_.end() || it->second.count(key) == 0) {
    return absl::NotFoundError(absl::StrCat("store key ", key, " not set yet"));
  }
  return it->second.at(key);
}

std::map<std::string, int> Coordinator::WorkerCounts() {
  absl::MutexLock lock(&mu_);
  std::map<std::string, int> counts = {{"idle", 0}, {"busy", 0}};
  for (const auto& [id, worker] : workers_) ++counts[worker.job_id.empty() ? "idle" : "busy"];
  return counts;
}

void Coordinator::UpdateGaugesLocked() {
  if (metrics_ == nullptr) return;
  std::map<std::string, int> states;
  for (v1::JobState s : {v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED,
                         v1::JOB_STATE_CANCELLED}) {
    states[JobStateName(s)] = 0;
  }
  for (const auto& [state, count] : state_counts_) states[JobStateName(state)] = count;
  metrics_->SetJobsByState(states);
  std::map<std::string, int> workers = {{"idle", 0}, {"busy", 0}};
  for (const auto& [id, worker] : workers_) ++workers[worker.job_id.empty() ? "idle" : "busy"];
  metrics_->SetWorkersByState(workers);
}

}  // namespace shrinkray
