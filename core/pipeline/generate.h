// Text generation from a LlamaModel: greedy decoding (argmax at every step),
// stopping at EOS, at max_new_tokens, or at the model's
// max_position_embeddings; and seeded sampling (temperature, top-k, top-p) of
// a batch of equal-length prompts, which sequence-level distillation uses
// (core/distill/teacher_samples.h).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/llama.h"

namespace shrinkray {

// Returns prompt + generated ids. The prompt must be non-empty.
absl::StatusOr<std::vector<int32_t>> GreedyGenerate(const LlamaModel& model, std::vector<int32_t> prompt,
                                                    int max_new_tokens, std::optional<int32_t> eos_id);

// Sampling: p(i) ∝ exp(logit_i / temperature) over the top_k largest logits
// (0: all), then cut to the smallest prefix (by probability, ties by lower
// id) whose mass reaches top_p. Computed in double from the float logits.
struct SamplingOptions {
  double temperature = 1.0;  // > 0
  int top_k = 0;             // >= 0; 0: the whole vocabulary
  double top_p = 1.0;        // (0, 1]
};

// InvalidArgument naming the field ("temperature", "top_k", "top_p").
absl::Status ValidateSamplingOptions(const SamplingOptions& options);

// One draw from `logits` (one row of the vocabulary) with one value of the
// caller's uniform 64-bit stream (`random`): the same logits and `random`
// give the same id everywhere.
int32_t SampleFromLogits(std::span<const float> logits, const SamplingOptions& options, uint64_t random);

// Extends every prompt by exactly max_new_tokens sampled tokens (no stop at
// EOS: the caller truncates if it wants to). The prompts must be non-empty
// and of one length, prompt + max_new_tokens <= max_position_embeddings.
// Sequence i draws from its own SplitMix64 stream seeded by seeds[i], so a
// sequence's tokens do not depend on which others share its batch. The batch
// is one Forward call per step (full recompute, no KV cache).
absl::StatusOr<std::vector<std::vector<int32_t>>> SampleGenerate(const LlamaModel& model,
                                                                 std::vector<std::vector<int32_t>> prompts,
                                                                 int max_new_tokens, const SamplingOptions& options,
                                                                 std::span<const uint64_t> seeds);

}  // namespace shrinkray
