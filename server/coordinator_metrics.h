// The coordinator's Prometheus metrics: jobs by state, submissions, queue
// waits, durations, workers by state, re-queues, and its own memory.
// Labels stay low-cardinality (job and worker states only; never a job id).
#pragma once

#include <map>
#include <mutex>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace shrinkray {

class CoordinatorMetrics {
 public:
  // Registers every family in `registry`, which must outlive this object.
  explicit CoordinatorMetrics(prometheus::Registry& registry);

  // shrinkray_jobs{state}: jobs now in each state. The five states are always
  // exported; a state missing from `counts` reads 0.
  void SetJobsByState(const std::map<std::string, int>& counts);
  // shrinkray_jobs_submitted_total.
  void JobSubmitted();
  // shrinkray_job_queue_wait_seconds: from submit (or re-queue) to start.
  void JobStarted(double queue_wait_seconds);
  // shrinkray_jobs_finished_total{state} and shrinkray_job_duration_seconds
  // (start to end). `state` is "succeeded", "failed" or "cancelled".
  void JobFinished(const std::string& state, double duration_seconds);
  // shrinkray_workers{state}: connected workers, "idle" and "busy" always exported.
  void SetWorkersByState(const std::map<std::string, int>& counts);
  // shrinkray_jobs_requeued_total: attempts put back in the queue (lost worker).
  void JobRequeued();
  // shrinkray_coordinator_resident_memory_bytes from /proc; call it
  // periodically (e.g. on each scheduler tick). Left unchanged if /proc fails.
  void UpdateResidentMemory();

 private:
  // Sets every gauge of `family` seen so far from `counts` (0 when absent),
  // adding gauges for states not seen before.
  void SetByState(prometheus::Family<prometheus::Gauge>& family,
                  std::map<std::string, prometheus::Gauge*>& gauges,
                  const std::map<std::string, int>& counts);

  std::mutex mu_;  // guards the gauge maps (the gauges themselves are atomic)
  prometheus::Family<prometheus::Gauge>& jobs_;
  std::map<std::string, prometheus::Gauge*> jobs_by_state_;
  prometheus::Family<prometheus::Gauge>& workers_;
  std::map<std::string, prometheus::Gauge*> workers_by_state_;
  prometheus::Counter& submitted_;
  prometheus::Histogram& queue_wait_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Histogram& duration_;
  prometheus::Counter& requeued_;
  prometheus::Gauge& resident_memory_;
};

}  // namespace shrinkray
