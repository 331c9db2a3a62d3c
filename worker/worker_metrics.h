// A worker's Prometheus metrics: layers compressed per stage and their
// duration, calibration tokens, progress of the current job, busy flag and
// resident memory. No job id labels: a worker runs one job at a time.
#pragma once

#include <cstdint>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace shrinkray {

class WorkerMetrics {
 public:
  // Registers every family in `registry`, which must outlive this object.
  explicit WorkerMetrics(prometheus::Registry& registry);

  // shrinkray_worker_layers_completed_total{stage} and
  // shrinkray_worker_layer_duration_seconds{stage}.
  void LayerCompleted(const std::string& stage, double seconds);
  // shrinkray_worker_calibration_tokens_total: tokens run through the model
  // while calibrating (negative counts are ignored).
  void CalibrationTokens(int64_t tokens);
  // shrinkray_worker_job_progress_ratio, clamped to 0..1.
  void SetProgress(double ratio);
  // shrinkray_worker_busy: 1 while running a job; going idle resets progress to 0.
  void SetBusy(bool busy);
  // shrinkray_worker_job_resumes_total and shrinkray_worker_resumed_at_layer
  // (the first layer the current job had to compress itself; 0 otherwise).
  void JobResumed(int first_layer);
  // After each optimizer step of a distill stage: the gauges
  // shrinkray_worker_train_loss, _train_kl (the distillation divergence,
  // KL(teacher || student) for loss kl), _train_cross_entropy,
  // _train_learning_rate, _train_grad_norm, _train_tokens_per_second (their
  // series appear with the first step and keep the last step's values), and
  // the counter shrinkray_worker_train_steps_total.
  void TrainStep(double loss, double kl, double cross_entropy, double lr, double grad_norm, double tokens_per_s);
  // shrinkray_worker_resident_memory_bytes from /proc; call it periodically
  // (e.g. with each heartbeat). Left unchanged if /proc cannot be read.
  void UpdateResidentMemory();

 private:
  prometheus::Family<prometheus::Counter>& layers_completed_;
  prometheus::Family<prometheus::Histogram>& layer_duration_;
  prometheus::Counter& calibration_tokens_;
  prometheus::Gauge& progress_;
  prometheus::Gauge& busy_;
  prometheus::Counter& resumes_;
  prometheus::Gauge& resumed_at_layer_;
  prometheus::Gauge& resident_memory_;
  prometheus::Family<prometheus::Gauge>& train_loss_;
  prometheus::Family<prometheus::Gauge>& train_kl_;
  prometheus::Family<prometheus::Gauge>& train_ce_;
  prometheus::Family<prometheus::Gauge>& train_lr_;
  prometheus::Family<prometheus::Gauge>& train_grad_norm_;
  prometheus::Family<prometheus::Gauge>& train_tokens_per_s_;
  prometheus::Counter& train_steps_;
};

}  // namespace shrinkray
