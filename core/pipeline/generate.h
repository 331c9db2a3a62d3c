// Greedy decoding (argmax at every step), stopping at EOS, at max_new_tokens,
// or at the model's max_position_embeddings.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/llama.h"

namespace shrinkray {

// Returns prompt + generated ids. The prompt must be non-empty.
absl::StatusOr<std::vector<int32_t>> GreedyGenerate(const LlamaModel& model, std::vector<int32_t> prompt,
                                                    int max_new_tokens, std::optional<int32_t> eos_id);

}  // namespace shrinkray
