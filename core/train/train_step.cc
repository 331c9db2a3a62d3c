#include "core/train/train_step.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/train/backward_ops.h"
#include "core/train/grad_clip.h"
#include "core/util/status_macros.h"

namespace shrinkray::train {

template <typename T>
absl::StatusOr<double> AccumulateCrossEntropyGradients(LlamaTrainerModel<T>& model,
                                                       BasicParameterStore<T>& store,
                                                       std::span<const TokenBatch> micro_batches) {
  long total_labelled = 0;
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    const TokenBatch& mb = micro_batches[i];
    if (mb.targets.size() != mb.tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat("micro-batch ", i, ": ", mb.targets.size(),
                                                     " targets for ", mb.tokens.size(),
                                                     " tokens"));
    }
    for (const int32_t t : mb.targets) {
      if (t >= model.config().vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("micro-batch ", i, ": target ", t, " is outside the vocabulary"));
      }
      total_labelled += t >= 0 ? 1 : 0;
    }
  }
  store.ZeroGrads();
  if (total_labelled == 0) return 0.0;
  const int V = model.config().vocab_size;
  double loss = 0.0;
  std::vector<T> logits, probs, dlogits;
  for (const TokenBatch& mb : micro_batches) {
    const size_t rows = mb.tokens.size();
    logits.resize(rows * V);
    probs.resize(rows * V);
    SR_RETURN_IF_ERROR(model.Forward(store, mb.tokens, mb.batch, mb.seqlen, logits));
    long labelled = 0;
    for (const int32_t t : mb.targets) labelled += t >= 0 ? 1 : 0;
    const T ce = CrossEntropyForward(probs.data(), logits.data(), mb.targets.data(),
                                     static_cast<long>(rows), V);
    // This micro-batch's share of the mean over every labelled token.
    const double weight = static_cast<double>(labelled) / total_labelled;
    loss += weight * ce;
    dlogits.assign(rows * V, T(0));
    CrossEntropyBackward(dlogits.data(), probs.data(), mb.targets.data(), static_cast<long>(rows),
                         V, static_cast<T>(weight));
    SR_RETURN_IF_ERROR(model.Backward(store, dlogits));
  }
  return loss;
}

absl::StatusOr<TrainStepResult> TrainStep(LlamaTrainerModel<float>& model, ParameterStore& store,
                                          AdamW& optimizer, const LrSchedule& schedule,
                                          double max_grad_norm,
                                          std::span<const TokenBatch> micro_batches) {
  TrainStepResult result;
  SR_ASSIGN_OR_RETURN(result.loss, AccumulateCrossEntropyGradients(model, store, micro_batches));
  if (max_grad_norm > 0.0) {
    SR_ASSIGN_OR_RETURN(result.grad_norm, ClipGradNorm(store.grads(), max_grad_norm));
  } else {
    result.grad_norm = GlobalGradNorm<float>(store.grads());
  }
  if (!std::isfinite(result.grad_norm)) {
    return absl::InternalError(absl::StrCat("TrainStep: gradient norm is ", result.grad_norm,
                                            " at step ", optimizer.step() + 1));
  }
  result.lr = schedule.At(optimizer.step());
  SR_RETURN_IF_ERROR(optimizer.Step(store, result.lr));
  result.step = optimizer.step();
  return result;
}

template absl::StatusOr<double> AccumulateCrossEntropyGradients<float>(
    LlamaTrainerModel<float>&, BasicParameterStore<float>&, std::span<const TokenBatch>);
template absl::StatusOr<double> AccumulateCrossEntropyGradients<double>(
    LlamaTrainerModel<double>&, BasicParameterStore<double>&, std::span<const TokenBatch>);

}  // namespace shrinkray::train
