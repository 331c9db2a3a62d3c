#include "core/pipeline/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "core/model/synthetic.h"
#include "core/util/status_macros.h"

namespace shrinkray {

absl::StatusOr<std::vector<int32_t>> GreedyGenerate(const LlamaModel& model, std::vector<int32_t> ids,
                                                    int max_new_tokens, std::optional<int32_t> eos_id) {
  if (ids.empty()) return absl::InvalidArgumentError("generation needs at least one prompt token");
  const int vocab = model.config().vocab_size;
  const int max_len = model.config().max_position_embeddings;
  if (static_cast<int>(ids.size()) > max_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt has ", ids.size(), " tokens; the model's max_position_embeddings is ", max_len));
  }
  std::vector<float> logits;
  // Full recompute per step: simple and exact; a KV cache replaces it when
  // generation becomes a hot path.
  for (int step = 0; step < max_new_tokens && static_cast<int>(ids.size()) < max_len; ++step) {
    const int seqlen = static_cast<int>(ids.size());
    logits.resize(static_cast<size_t>(seqlen) * vocab);
    SR_RETURN_IF_ERROR(model.Forward(ids, 1, seqlen, logits));
    const float* last = logits.data() + static_cast<size_t>(seqlen - 1) * vocab;
    const int32_t next = static_cast<int32_t>(std::max_element(last, last + vocab) - last);
    ids.push_back(next);
    if (eos_id.has_value() && next == *eos_id) break;
  }
  return ids;
}

absl::Status ValidateSamplingOptions(const SamplingOptions& options) {
  if (!(options.temperature > 0) || !std::isfinite(options.temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature ", options.temperature, " must be positive (sampling; 0 would be greedy)"));
  }
  if (options.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k ", options.top_k, " must be >= 0 (0: all tokens)"));
  }
  if (!(options.top_p > 0 && options.top_p <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p ", options.top_p, " must be in (0, 1]"));
  }
  return absl::OkStatus();
}

int32_t SampleFromLogits(std::span<const float> logits, const SamplingOptions& options, uint64_t random) {
  const int vocab = static_cast<int>(logits.size());
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  // Descending logit, ties by lower id: a total order, so the same on every machine.
  auto before = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  const int k = options.top_k > 0 ? std::min(options.top_k, vocab) : vocab;
  std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
  order.resize(k);
  const double max_logit = logits[order[0]];
  std::vector<double> p(k);
  double total = 0;
  for (int i = 0; i < k; ++i) {
    p[i] = std::exp((static_cast<double>(logits[order[i]]) - max_logit) / options.temperature);
    total += p[i];
  }
  int n = k;
  if (options.top_p < 1) {
    double mass = 0;
    for (int i = 0; i < k; ++i) {
      mass += p[i] / total;
      if (mass >= options.top_p) {
        n = i + 1;
        break;
      }
    }
    total = std::accumulate(p.begin(), p.begin() + n, 0.0);
  }
  // 53 random bits: u uniform in [0, 1) on a grid of 2^-53.
  const double u = static_cast<double>(random >> 11) * 0x1p-53 * total;
  double c = 0;
  for (int i = 0; i < n; ++i) {
    c += p[i];
    if (u < c) return order[i];
  }
  return order[n - 1];
}

absl::StatusOr<std::vector<std::vector<int32_t>>> SampleGenerate(const LlamaModel& model,
                                                                 std::vector<std::vector<int32_t>> prompts,
                                                                 int max_new_tokens, const SamplingOptions& options,
                                                                 std::span<const uint64_t> seeds) {
  SR_RETURN_IF_ERROR(ValidateSamplingOptions(options));
  if (prompts.empty()) return prompts;
  if (seeds.size() != prompts.size()) {
    return absl::InvalidArgumentError(absl::StrCat(prompts.size(), " prompts but ", seeds.size(), " seeds"));
  }
  const size_t len = prompts[0].size();
  for (const auto& p : prompts) {
    if (p.empty()) return absl::InvalidArgumentError("generation needs at least one prompt token");
    if (p.size() != len) return absl::InvalidArgumentError("sampled prompts must all have the same length");
  }
  const int vocab = model.config().vocab_size;
  const int max_len = model.config().max_position_embeddings;
  if (max_new_tokens < 0 || static_cast<int64_t>(len) + max_new_tokens > max_len) {
    return absl::InvalidArgumentError(absl::StrCat("prompt of ", len, " tokens + ", max_new_tokens,
                                                   " new tokens exceeds the model's max_position_embeddings ",
                                                   max_len));
  }
  const int batch = static_cast<int>(prompts.size());
  std::vector<SplitMix64> rngs;
  rngs.reserve(batch);
  for (const uint64_t s : seeds) rngs.emplace_back(s);
  std::vector<int32_t> ids;
  std::vector<float> logits;
  for (int step = 0; step < max_new_tokens; ++step) {
    const int seqlen = static_cast<int>(len) + step;
    ids.clear();
    for (const auto& p : prompts) ids.insert(ids.end(), p.begin(), p.end());
    logits.resize(static_cast<size_t>(batch) * seqlen * vocab);
    SR_RETURN_IF_ERROR(model.Forward(ids, batch, seqlen, logits));
    for (int b = 0; b < batch; ++b) {
      const float* last = logits.data() + (static_cast<size_t>(b) * seqlen + seqlen - 1) * vocab;
      prompts[b].push_back(SampleFromLogits(std::span<const float>(last, vocab), options, rngs[b].Next()));
    }
  }
  return prompts;
}

}  // namespace shrinkray
