// The coordinator's core, free of gRPC: jobs (in memory, written through to
// the SQLite JobStore), their event streams and watchers, the worker registry
// with heartbeats, and the gang scheduler. The gRPC services are thin
// adapters over it (compression_service.h, worker_service.h); every method
// returns absl::Status with the exact code the API documents.
//
// Threading: one mutex guards everything. Watcher and worker sinks are called
// with it held, so they must only enqueue (the gRPC reactors do) and never
// call back into the Coordinator.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/coordinator_metrics.h"
#include "server/job_spec_validation.h"
#include "server/job_store.h"
#include "server/path_policy.h"
#include "shrinkray/v1/compression.pb.h"
#include "shrinkray/v1/worker.pb.h"

namespace shrinkray {

struct CoordinatorOptions {
  int max_queued_jobs = 1000;
  JobLimits limits;
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // A worker silent this long is declared lost and its job re-queued.
  absl::Duration heartbeat_timeout = absl::Seconds(10);
  // Attempts before a job fails: lost workers, coordinator restarts and
  // transient errors (UNAVAILABLE, INTERNAL, ...) re-queue it until then.
  int max_attempts = 3;
  // How often the background thread checks heartbeats and schedules.
  absl::Duration tick_interval = absl::Milliseconds(200);
};

// Receives one WatchJob subscription, in this order: the snapshot, the stored
// events after the requested sequence, every new event, then OnFinished once
// the job is in a final state (at once if it already was). Called with the
// coordinator's lock held: implementations only enqueue.
class JobWatcher {
 public:
  virtual ~JobWatcher() = default;
  virtual void OnSnapshot(const v1::Job& job) = 0;
  virtual void OnEvent(const v1::JobEvent& event) = 0;
  virtual void OnFinished() = 0;
};

// Receives what the coordinator sends to one worker.
using WorkerSink = std::function<void(const v1::ConnectResponse&)>;

class Coordinator {
 public:
  // Loads every job from `store`: jobs that were RUNNING when the previous
  // coordinator stopped are re-queued (an event says so); QUEUED stay queued.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(std::unique_ptr<JobStore> store, PathPolicy paths,
                                                             CoordinatorOptions options,
                                                             CoordinatorMetrics* metrics);
  ~Coordinator();

  // Starts the heartbeat/scheduling thread.
  void Start();
  void Stop();

  // --- public API -------------------------------------------------------------
  // InvalidArgument (field named), PermissionDenied (path outside the roots),
  // ResourceExhausted (queue full, too many workers). A dry-run job is
  // validated at once and returned SUCCEEDED or FAILED (with the reason).
  absl::StatusOr<v1::Job> SubmitJob(const v1::JobSpec& spec);
  absl::StatusOr<v1::Job> GetJob(const std::string& id);
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& request);
  // FailedPrecondition for a job already in a final state.
  absl::StatusOr<v1::Job> CancelJob(const std::string& id, const std::string& reason);
  // Subscribes `watcher` (see JobWatcher for the order of calls); NotFound
  // for an unknown id. Unwatch when the client goes away.
  // `replay_history`: every stored event, as if after_sequence were 0 and
  // 0 meant "from the start".
  absl::Status WatchJob(const std::string& id, int64_t after_sequence, std::shared_ptr<JobWatcher> watcher,
                        bool replay_history = false);
  void Unwatch(const std::string& id, const JobWatcher* watcher);

  // --- workers ----------------------------------------------------------------
  absl::StatusOr<v1::WorkerRegistered> RegisterWorker(const v1::WorkerHello& hello, WorkerSink sink);
  absl::Status HandleWorkerMessage(const std::string& worker_id, const v1::ConnectRequest& message);
  // The worker's stream ended: treated as lost (its job is re-queued).
  void WorkerDisconnected(const std::string& worker_id, const std::string& reason);

  // The rendezvous store of a running job attempt: NotFound for an unknown
  // job or (Get) a key not set yet; FailedPrecondition when that attempt is
  // not running (its keys are gone).
  absl::Status StoreSet(const std::string& job_id, int attempt, const std::string& key, const std::string& value);
  absl::StatusOr<std::string> StoreGet(const std::string& job_id, int attempt, const std::string& key);

  // One scheduling/heartbeat round (the thread calls it; tests may too).
  void Tick();

  // Counts for tests and metrics.
  std::map<std::string, int> WorkerCounts();

 private:
  struct Worker {
    std::string id;
    v1::WorkerHello hello;
    WorkerSink sink;
    absl::Time last_heartbeat;
    std::string job_id;  // empty when idle
    int attempt = 0;
    int64_t resident_memory_bytes = 0;
  };
  struct JobEntry {
    v1::Job job;
    uint64_t order = 0;  // creation order, for listing and FIFO scheduling
    int64_t last_sequence = 0;
    std::vector<std::shared_ptr<JobWatcher>> watchers;
    absl::Time queued_at;
  };

  Coordinator(std::unique_ptr<JobStore> store, PathPolicy paths, CoordinatorOptions options,
              CoordinatorMetrics* metrics);
  absl::Status Recover();

  JobEntry* FindLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Every change of a stored job's state goes through here (counts, queue).
  void TrackStateLocked(JobEntry& entry, v1::JobState state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PersistLocked(JobEntry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stamps sequence and time, stores and fans out the event.
  void EmitLocked(JobEntry& entry, v1::JobEvent event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetStateLocked(JobEntry& entry, v1::JobState state, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LogLocked(JobEntry& entry, const std::string& level, const std::string& text)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Releases the job's workers (cancelling the others of the gang) and
  // re-queues it, or fails it after max_attempts (with `last_error`'s code
  // when given: the job ends FAILED with its last error).
  void RequeueLocked(JobEntry& entry, const std::string& reason, const v1::JobError* last_error = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CancelGangLocked(JobEntry& entry, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ScheduleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LoseWorkerLocked(const std::string& worker_id, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishLocked(Worker& worker, const v1::WorkerJobFinished& finished) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::unique_ptr<JobStore> store_;
  const PathPolicy paths_;
  const CoordinatorOptions options_;
  CoordinatorMetrics* const metrics_;  // may be null

  absl::Mutex mu_;
  std::map<std::string, JobEntry> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::string> order_ ABSL_GUARDED_BY(mu_);  // order -> id
  // Kept up to date by TrackStateLocked so that gauges, the queue limit and
  // the scheduler never walk every stored job.
  std::map<v1::JobState, int> state_counts_ ABSL_GUARDED_BY(mu_);
  std::set<uint64_t> queued_ ABSL_GUARDED_BY(mu_);  // orders of QUEUED jobs
  uint64_t next_order_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, Worker> workers_ ABSL_GUARDED_BY(mu_);
  // Rendezvous keys per (job id, attempt), dropped when the attempt ends.
  std::map<std::pair<std::string, int>, std::map<std::string, std::string>> stores_ ABSL_GUARDED_BY(mu_);
  absl::Status CheckStoreAccessLocked(const std::string& job_id, int attempt) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::map<std::string, std::string> worker_ids_by_name_ ABSL_GUARDED_BY(mu_);
  uint64_t next_worker_ ABSL_GUARDED_BY(mu_) = 1;

  absl::Mutex stop_mu_;
  bool stopping_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread ticker_;
};

// "queued", "running", ... (metric labels, CLI text).
std::string JobStateName(v1::JobState state);
bool IsFinalState(v1::JobState state);

}  // namespace shrinkray
