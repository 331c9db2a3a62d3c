#include "core/distill/teacher_samples.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/model/synthetic.h"
#include "core/util/status_macros.h"

namespace shrinkray::distill {

absl::Status ValidateTeacherSampleOptions(const TeacherSampleOptions& options) {
  if (options.num_windows <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_windows ", options.num_windows, " must be positive"));
  }
  if (options.seqlen <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("seqlen ", options.seqlen, " must be positive"));
  }
  SR_RETURN_IF_ERROR(ValidateSamplingOptions(options.sampling));
  if (options.prompt_tokens < 0 || options.prompt_tokens > options.seqlen) {
    return absl::InvalidArgumentError(absl::StrCat("prompt_tokens ", options.prompt_tokens,
                                                   " must be in [0, seqlen = ", options.seqlen, "]"));
  }
  if (options.batch <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("batch ", options.batch, " must be positive"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> SampleTeacherWindows(const LlamaModel& teacher,
                                                          const TeacherSampleOptions& options,
                                                          std::optional<int32_t> bos, const TrainData* prompts,
                                                          const std::function<void(int64_t)>& progress) {
  SR_RETURN_IF_ERROR(ValidateTeacherSampleOptions(options));
  const ModelConfig& config = teacher.config();
  if (options.seqlen + 1 > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("seqlen ", options.seqlen, " + 1 exceeds the teacher's ",
                                                   "max_position_embeddings ", config.max_position_embeddings,
                                                   " (a sampled window is one sequence)"));
  }
  if (options.prompt_tokens == 0) {
    if (!bos.has_value()) {
      return absl::InvalidArgumentError(
          "prompt_tokens 0 samples from BOS, but the tokenizer has no BOS token; prompt from the data instead");
    }
    if (*bos < 0 || *bos >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("BOS id ", *bos, " is outside the teacher's vocabulary"));
    }
  } else {
    if (prompts == nullptr || prompts->num_windows() == 0) {
      return absl::InvalidArgumentError(absl::StrCat("prompt_tokens ", options.prompt_tokens,
                                                     " prompts from the user's data, but there is none"));
    }
    if (prompts->seqlen() < options.prompt_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("prompt_tokens ", options.prompt_tokens,
                                                     " is longer than the data's windows (", prompts->seqlen(), ")"));
    }
    if (prompts->max_token() >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("training data ", prompts->source(), " has token ",
                                                     prompts->max_token(), " outside the teacher's vocabulary (",
                                                     config.vocab_size, ")"));
    }
  }
  const int prompt_len = std::max(options.prompt_tokens, 1);
  const int new_tokens = options.seqlen + 1 - prompt_len;
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(options.num_windows) * (options.seqlen + 1));
  for (int64_t first = 0; first < options.num_windows; first += options.batch) {
    const int64_t end = std::min<int64_t>(options.num_windows, first + options.batch);
    std::vector<std::vector<int32_t>> batch;
    std::vector<uint64_t> seeds;
    for (int64_t i = first; i < end; ++i) {
      if (options.prompt_tokens == 0) {
        batch.push_back({*bos});
      } else {
        const auto w = prompts->Window(i % prompts->num_windows()).first(options.prompt_tokens);
        batch.emplace_back(w.begin(), w.end());
      }
      // Far-apart streams for neighbouring windows (SplitMix64's first mix).
      SplitMix64 mix(options.seed ^ (0xD1B54A32D192ED03ull * static_cast<uint64_t>(i + 1)));
      seeds.push_back(mix.Next());
    }
    SR_ASSIGN_OR_RETURN(auto sampled, SampleGenerate(teacher, std::move(batch), new_tokens, options.sampling, seeds));
    for (const auto& s : sampled) out.insert(out.end(), s.begin(), s.end());
    if (progress) progress(end);
  }
  return out;
}

}  // namespace shrinkray::distill
