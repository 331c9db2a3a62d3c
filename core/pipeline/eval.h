// Evaluation of a causal LM on text, the project's perplexity protocol
// (../shared/data/README.md): encode the text once with one BOS, cut the ids
// into non-overlapping windows of L tokens (a last partial window is dropped),
// score tokens 1..L-1 of each window from the tokens before them in the same
// window; ppl = exp(total NLL / scored tokens).
// With a reference model, also the mean per-token KL(reference || model) of the
// next-token distributions on the same positions (llama.cpp --kl-divergence)
// and the top-1 agreement (fraction of positions where both argmaxes agree).
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "absl/status/statusor.h"
#include "core/model/llama.h"

namespace shrinkray {

struct EvalOptions {
  int seqlen = 256;
  // Windows per forward call; 0 picks one that keeps the logits under ~256 MiB.
  int batch = 0;
};

struct EvalResult {
  long num_tokens = 0;      // ids in the encoded text (with BOS)
  long num_windows = 0;
  long scored_tokens = 0;
  double nll = 0.0;         // total negative log-likelihood (nats)
  double ppl = 0.0;
  std::optional<double> mean_kl;         // with a reference model
  std::optional<double> top1_agreement;  // with a reference model
  double seconds = 0.0;
  double tokens_per_second = 0.0;        // window tokens forwarded per second
};

// `reference` may be null. Fails (InvalidArgument) when the ids do not fill one
// window, when seqlen < 2 or exceeds the model's max positions, or when the
// reference's vocabulary differs.
absl::StatusOr<EvalResult> EvaluatePerplexity(const LlamaModel& model, std::span<const int32_t> ids,
                                              const EvalOptions& options,
                                              const LlamaModel* reference = nullptr);

}  // namespace shrinkray
