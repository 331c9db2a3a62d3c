#include "worker/worker_metrics.h"

#include <algorithm>

#include "core/util/process_memory.h"

namespace shrinkray {
namespace {

// One decoder layer takes from milliseconds (tiny models, RTN) to tens of
// minutes (GPTQ on a 70B layer with a large calibration set on CPU).
const prometheus::Histogram::BucketBoundaries& LayerSecondsBuckets() {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800};
  return kBuckets;
}

}  // namespace

WorkerMetrics::WorkerMetrics(prometheus::Registry& registry)
    : layers_completed_(prometheus::BuildCounter()
                            .Name("shrinkray_worker_layers_completed_total")
                            .Help("Decoder layers this worker finished, by pipeline stage.")
                            .Register(registry)),
      layer_duration_(prometheus::BuildHistogram()
                          .Name("shrinkray_worker_layer_duration_seconds")
                          .Help("Time this worker spent on one decoder layer, by pipeline stage.")
                          .Register(registry)),
      calibration_tokens_(prometheus::BuildCounter()
                              .Name("shrinkray_worker_calibration_tokens_total")
                              .Help("Calibration tokens this worker ran through the model.")
                              .Register(registry)
                              .Add({})),
      progress_(prometheus::BuildGauge()
                    .Name("shrinkray_worker_job_progress_ratio")
                    .Help("Fraction of the current job done, 0 to 1; 0 when idle.")
                    .Register(registry)
                    .Add({})),
      busy_(prometheus::BuildGauge()
                .Name("shrinkray_worker_busy")
                .Help("1 while the worker runs a job, 0 when idle.")
                .Register(registry)
                .Add({})),
      resumes_(prometheus::BuildCounter()
                   .Name("shrinkray_worker_job_resumes_total")
                   .Help("Jobs this worker resumed from a checkpoint of an interrupted attempt.")
                   .Register(registry)
                   .Add({})),
      resumed_at_layer_(prometheus::BuildGauge()
                            .Name("shrinkray_worker_resumed_at_layer")
                            .Help("Layer at which the current job resumed (layers before it were restored); 0 otherwise.")
                            .Register(registry)
                            .Add({})),
      resident_memory_(prometheus::BuildGauge()
                           .Name("shrinkray_worker_resident_memory_bytes")
                           .Help("Resident memory (RSS) of the worker process.")
                           .Register(registry)
                           .Add({})),
      train_loss_(prometheus::BuildGauge()
                      .Name("shrinkray_worker_train_loss")
                      .Help("Distillation: the mixed loss of the last optimizer step (global batch).")
                      .Register(registry)),
      train_kl_(prometheus::BuildGauge()
                    .Name("shrinkray_worker_train_kl")
                    .Help("Distillation: the divergence of the last step, KL(teacher || student) for loss kl.")
                    .Register(registry)),
      train_ce_(prometheus::BuildGauge()
                    .Name("shrinkray_worker_train_cross_entropy")
                    .Help("Distillation: the student's cross-entropy on the labels at the last step.")
                    .Register(registry)),
      train_lr_(prometheus::BuildGauge()
                    .Name("shrinkray_worker_train_learning_rate")
                    .Help("Distillation: the learning rate of the last step.")
                    .Register(registry)),
      train_grad_norm_(prometheus::BuildGauge()
                           .Name("shrinkray_worker_train_grad_norm")
                           .Help("Distillation: the global gradient norm of the last step, before clipping.")
                           .Register(registry)),
      train_tokens_per_s_(prometheus::BuildGauge()
                              .Name("shrinkray_worker_train_tokens_per_second")
                              .Help("Distillation: training tokens per second of the last step (global batch).")
                              .Register(registry)),
      train_steps_(prometheus::BuildCounter()
                       .Name("shrinkray_worker_train_steps_total")
                       .Help("Distillation optimizer steps this worker took part in.")
                       .Register(registry)
                       .Add({})) {
  UpdateResidentMemory();
}

void WorkerMetrics::LayerCompleted(const std::string& stage, double seconds) {
  // Family::Add is thread-safe and returns the existing series for a known
  // stage (the buckets argument is then ignored).
  layers_completed_.Add({{"stage", stage}}).Increment();
  layer_duration_.Add({{"stage", stage}}, LayerSecondsBuckets()).Observe(std::max(0.0, seconds));
}

void WorkerMetrics::CalibrationTokens(int64_t tokens) {
  if (tokens > 0) calibration_tokens_.Increment(static_cast<double>(tokens));
}

void WorkerMetrics::SetProgress(double ratio) {
  // NaN fails both comparisons and lands on 0.
  progress_.Set(ratio >= 1.0 ? 1.0 : (ratio > 0.0 ? ratio : 0.0));
}

void WorkerMetrics::SetBusy(bool busy) {
  busy_.Set(busy ? 1.0 : 0.0);
  if (!busy) progress_.Set(0.0);
  if (busy) resumed_at_layer_.Set(0.0);
}

void WorkerMetrics::JobResumed(int first_layer) {
  resumes_.Increment();
  resumed_at_layer_.Set(static_cast<double>(std::max(0, first_layer)));
}

void WorkerMetrics::TrainStep(double loss, double kl, double cross_entropy, double lr, double grad_norm,
                              double tokens_per_s) {
  // Family::Add returns the one unlabelled series (created on the first step).
  train_loss_.Add({}).Set(loss);
  train_kl_.Add({}).Set(kl);
  train_ce_.Add({}).Set(cross_entropy);
  train_lr_.Add({}).Set(lr);
  train_grad_norm_.Add({}).Set(grad_norm);
  train_tokens_per_s_.Add({}).Set(tokens_per_s);
  train_steps_.Increment();
}

void WorkerMetrics::UpdateResidentMemory() {
  const absl::StatusOr<int64_t> bytes = ResidentMemoryBytes();
  if (bytes.ok()) resident_memory_.Set(static_cast<double>(*bytes));
}

}  // namespace shrinkray
