#include "core/pipeline/eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

// log-sum-exp of one row, in double so that long vocabularies do not lose the
// small terms that the golden float64 numbers keep.
double LogSumExp(const float* row, int n) {
  float max_value = row[0];
  for (int i = 1; i < n; ++i) max_value = std::max(max_value, row[i]);
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += std::exp(static_cast<double>(row[i]) - max_value);
  return max_value + std::log(sum);
}

int ArgMax(const float* row, int n) {
  return static_cast<int>(std::max_element(row, row + n) - row);
}

// KL(p || q) for p = softmax(ref), q = softmax(model), given both log-normalisers.
double KlDivergence(const float* ref, double ref_lse, const float* model, double model_lse, int n) {
  double kl = 0.0;
  for (int i = 0; i < n; ++i) {
    const double log_p = ref[i] - ref_lse;
    const double log_q = model[i] - model_lse;
    kl += std::exp(log_p) * (log_p - log_q);
  }
  return kl;
}

}  // namespace

absl::StatusOr<EvalResult> EvaluatePerplexity(const LlamaModel& model, std::span<const int32_t> ids,
                                              const EvalOptions& options,
                                              const LlamaModel* reference) {
  const int seqlen = options.seqlen;
  const int vocab = model.config().vocab_size;
  if (seqlen < 2) {
    return absl::InvalidArgumentError(absl::StrCat("seqlen must be at least 2, got ", seqlen));
  }
  if (seqlen > model.config().max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("seqlen ", seqlen, " exceeds the model's max_position_embeddings ",
                                                   model.config().max_position_embeddings));
  }
  if (reference != nullptr && reference->config().vocab_size != vocab) {
    return absl::InvalidArgumentError(absl::StrCat("reference vocab_size ", reference->config().vocab_size,
                                                   " differs from the model's ", vocab));
  }
  const long num_windows = static_cast<long>(ids.size()) / seqlen;
  if (num_windows == 0) {
    return absl::InvalidArgumentError(absl::StrCat("text has ", ids.size(), " tokens, fewer than one window of ",
                                                   seqlen));
  }
  int batch = options.batch;
  if (batch <= 0) {
    const long budget_floats = 64L << 20;  // 256 MiB of logits per model
    batch = static_cast<int>(std::clamp<long>(budget_floats / (static_cast<long>(seqlen) * vocab), 1, 64));
  }

  const auto start = std::chrono::steady_clock::now();
  EvalResult result;
  result.num_tokens = static_cast<long>(ids.size());
  result.num_windows = num_windows;
  double kl_sum = 0.0;
  long agree = 0;
  std::vector<float> logits;
  std::vector<float> ref_logits;
  for (long w0 = 0; w0 < num_windows; w0 += batch) {
    const int b = static_cast<int>(std::min<long>(batch, num_windows - w0));
    auto window_ids = ids.subspan(w0 * seqlen, static_cast<size_t>(b) * seqlen);
    logits.resize(static_cast<size_t>(b) * seqlen * vocab);
    SR_RETURN_IF_ERROR(model.Forward(window_ids, b, seqlen, logits));
    if (reference != nullptr) {
      ref_logits.resize(logits.size());
      SR_RETURN_IF_ERROR(reference->Forward(window_ids, b, seqlen, ref_logits));
    }
    for (int w = 0; w < b; ++w) {
      // Position t predicts token t+1: scores tokens 1..L-1 of the window.
      for (int t = 0; t + 1 < seqlen; ++t) {
        const long row = static_cast<long>(w) * seqlen + t;
        const float* z = logits.data() + row * vocab;
        const int target = window_ids[row + 1];
        if (target < 0 || target >= vocab) {
          return absl::InvalidArgumentError(absl::StrCat("token id ", target, " is outside the vocabulary of ", vocab));
        }
        const double lse = LogSumExp(z, vocab);
        result.nll += lse - z[target];
        if (reference != nullptr) {
          const float* r = ref_logits.data() + row * vocab;
          kl_sum += KlDivergence(r, LogSumExp(r, vocab), z, lse, vocab);
          agree += ArgMax(r, vocab) == ArgMax(z, vocab) ? 1 : 0;
        }
        ++result.scored_tokens;
      }
    }
  }
  result.ppl = std::exp(result.nll / result.scored_tokens);
  if (reference != nullptr) {
    result.mean_kl = kl_sum / result.scored_tokens;
    result.top1_agreement = static_cast<double>(agree) / result.scored_tokens;
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.tokens_per_second = result.seconds > 0 ? num_windows * seqlen / result.seconds : 0.0;
  return result;
}

}  // namespace shrinkray
