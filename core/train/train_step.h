// One optimizer step of next-token training with gradient accumulation: the
// gradients of several micro-batches are summed (each weighted by its share
// of the labelled tokens, so the sum is the gradient of the mean loss over
// all of them as one batch), then clipped by global norm, then AdamW at the
// schedule's learning rate. The distillation trainer reuses the same pieces
// with DistillLoss in place of cross-entropy.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/statusor.h"
#include "core/train/adamw.h"
#include "core/train/llama_trainer_model.h"
#include "core/train/lr_schedule.h"
#include "core/train/parameter_store.h"

namespace shrinkray::train {

struct TokenBatch {
  std::span<const int32_t> tokens;   // [batch, seqlen]
  std::span<const int32_t> targets;  // [batch, seqlen]; < 0 ignored
  int batch = 0;
  int seqlen = 0;
};

// Zeroes the store's gradients and accumulates the mean cross-entropy's
// gradient over all `micro_batches`; returns that mean (0 with no labels).
template <typename T>
absl::StatusOr<double> AccumulateCrossEntropyGradients(LlamaTrainerModel<T>& model,
                                                       BasicParameterStore<T>& store,
                                                       std::span<const TokenBatch> micro_batches);

struct TrainStepResult {
  double loss = 0;       // mean CE before the update
  double grad_norm = 0;  // global norm before clipping
  double lr = 0;         // the learning rate used
  int64_t step = 0;      // the optimizer step just taken (1-based)
};

// Accumulate, clip to max_grad_norm (<= 0: no clipping), AdamW at
// schedule.At(optimizer.step()). A non-finite gradient norm is an Internal
// error and leaves the parameters unchanged.
absl::StatusOr<TrainStepResult> TrainStep(LlamaTrainerModel<float>& model, ParameterStore& store,
                                          AdamW& optimizer, const LrSchedule& schedule,
                                          double max_grad_norm,
                                          std::span<const TokenBatch> micro_batches);

}  // namespace shrinkray::train
