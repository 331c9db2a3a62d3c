#include "core/pipeline/generate.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
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

}  // namespace shrinkray
