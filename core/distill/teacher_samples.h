// Sequence-level knowledge distillation (Kim & Rush 2016): training text
// sampled from the teacher, for when the user has little or no data. Each
// window is one sequence of seqlen + 1 tokens: a prompt (the BOS token, or
// the first `prompt_tokens` ids of the user's data windows, taken in order
// and cycled) extended by the teacher with core/pipeline/generate.h's
// SampleGenerate (temperature, top-k, top-p). Window i draws from its own
// SplitMix64 stream seeded from (seed, i), so the windows are a pure function
// of (teacher, options, prompts): the same seed gives the same windows
// whatever the batch size, and on every machine whose float32 forward pass
// gives the same logits (the sampler itself works in double on a total
// order). The windows are in TrainData::FromWindows's layout, so the
// DistillTrainer takes them like any other data.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "core/distill/train_data.h"
#include "core/model/llama.h"
#include "core/pipeline/generate.h"

namespace shrinkray::distill {

struct TeacherSampleOptions {
  int64_t num_windows = 0;   // > 0: how many windows to sample
  int seqlen = 256;          // each window is seqlen + 1 ids (<= max_position_embeddings)
  SamplingOptions sampling;  // temperature (default 1: the teacher's own distribution), top_k, top_p
  uint64_t seed = 0;
  int prompt_tokens = 0;     // 0: every window starts from BOS; else [1, seqlen] ids of the user's windows
  int batch = 8;             // sequences per forward pass (does not change the result)
};

// InvalidArgument naming the field (num_windows, seqlen, temperature, top_k,
// top_p, prompt_tokens, batch).
absl::Status ValidateTeacherSampleOptions(const TeacherSampleOptions& options);

// [num_windows, seqlen + 1] ids. `bos` is the prompt when prompt_tokens is 0
// (InvalidArgument if it is unset); `prompts` (the user's data) when it is
// not. `progress` (optional) is called with the windows done so far.
absl::StatusOr<std::vector<int32_t>> SampleTeacherWindows(const LlamaModel& teacher,
                                                          const TeacherSampleOptions& options,
                                                          std::optional<int32_t> bos, const TrainData* prompts,
                                                          const std::function<void(int64_t)>& progress = {});

}  // namespace shrinkray::distill
