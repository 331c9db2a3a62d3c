#include "server/coordinator_metrics.h"

#include <algorithm>

#include "core/util/process_memory.h"

namespace shrinkray {
namespace {

// Jobs take from seconds (dry runs) to a day (distillation of a large model).
prometheus::Histogram::BucketBoundaries JobSecondsBuckets() {
  return {1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400};
}

constexpr const char* kJobStates[] = {"queued", "running", "succeeded", "failed", "cancelled"};
constexpr const char* kFinalStates[] = {"succeeded", "failed", "cancelled"};
constexpr const char* kWorkerStates[] = {"idle", "busy"};

}  // namespace

CoordinatorMetrics::CoordinatorMetrics(prometheus::Registry& registry)
    : jobs_(prometheus::BuildGauge()
                .Name("shrinkray_jobs")
                .Help("Jobs in the job store, by state.")
                .Register(registry)),
      workers_(prometheus::BuildGauge()
                   .Name("shrinkray_workers")
                   .Help("Workers connected to the coordinator, by state.")
                   .Register(registry)),
      submitted_(prometheus::BuildCounter()
                     .Name("shrinkray_jobs_submitted_total")
                     .Help("Jobs accepted by SubmitJob.")
                     .Register(registry)
                     .Add({})),
      queue_wait_(prometheus::BuildHistogram()
                      .Name("shrinkray_job_queue_wait_seconds")
                      .Help("Time a job attempt waited in the queue before it started.")
                      .Register(registry)
                      .Add({}, JobSecondsBuckets())),
      finished_(prometheus::BuildCounter()
                    .Name("shrinkray_jobs_finished_total")
                    .Help("Jobs that reached a final state, by that state.")
                    .Register(registry)),
      duration_(prometheus::BuildHistogram()
                    .Name("shrinkray_job_duration_seconds")
                    .Help("Time from a job's start to its final state.")
                    .Register(registry)
                    .Add({}, JobSecondsBuckets())),
      requeued_(prometheus::BuildCounter()
                    .Name("shrinkray_jobs_requeued_total")
                    .Help("Job attempts put back in the queue after losing a worker.")
                    .Register(registry)
                    .Add({})),
      resident_memory_(prometheus::BuildGauge()
                           .Name("shrinkray_coordinator_resident_memory_bytes")
                           .Help("Resident memory (RSS) of the coordinator process.")
                           .Register(registry)
                           .Add({})) {
  // Series exist from the start so that rate() and absent() behave before
  // the first event.
  for (const char* state : kJobStates) jobs_by_state_[state] = &jobs_.Add({{"state", state}});
  for (const char* state : kFinalStates) finished_.Add({{"state", state}});
  for (const char* state : kWorkerStates) {
    workers_by_state_[state] = &workers_.Add({{"state", state}});
  }
  UpdateResidentMemory();
}

void CoordinatorMetrics::SetByState(prometheus::Family<prometheus::Gauge>& family,
                                    std::map<std::string, prometheus::Gauge*>& gauges,
                                    const std::map<std::string, int>& counts) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [state, count] : counts) {
    if (!gauges.contains(state)) gauges[state] = &family.Add({{"state", state}});
  }
  for (auto& [state, gauge] : gauges) {
    const auto it = counts.find(state);
    gauge->Set(it == counts.end() ? 0 : it->second);
  }
}

void CoordinatorMetrics::SetJobsByState(const std::map<std::string, int>& counts) {
  SetByState(jobs_, jobs_by_state_, counts);
}

void CoordinatorMetrics::SetWorkersByState(const std::map<std::string, int>& counts) {
  SetByState(workers_, workers_by_state_, counts);
}

void CoordinatorMetrics::JobSubmitted() { submitted_.Increment(); }

void CoordinatorMetrics::JobStarted(double queue_wait_seconds) {
  // A clock step backwards must not produce a negative observation.
  queue_wait_.Observe(std::max(0.0, queue_wait_seconds));
}

void CoordinatorMetrics::JobFinished(const std::string& state, double duration_seconds) {
  // Family::Add returns the existing series for known labels and is thread-safe.
  finished_.Add({{"state", state}}).Increment();
  duration_.Observe(std::max(0.0, duration_seconds));
}

void CoordinatorMetrics::JobRequeued() { requeued_.Increment(); }

void CoordinatorMetrics::UpdateResidentMemory() {
  const absl::StatusOr<int64_t> bytes = ResidentMemoryBytes();
  if (bytes.ok()) resident_memory_.Set(static_cast<double>(*bytes));
}

}  // namespace shrinkray
