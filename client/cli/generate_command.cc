#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"

#include "client/cli/commands.h"
#include "core/util/flags.h"
#include "core/model/llama.h"
#include "core/pipeline/generate.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/status_macros.h"

namespace shrinkray::cli {

absl::Status RunGenerate(const Args& args) {
  SR_ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args, {"model", "prompt", "max-new-tokens", "temperature", "top-k",
                                                       "top-p", "seed"}));
  SR_ASSIGN_OR_RETURN(std::string model_dir, flags.Required("model"));
  const std::string prompt = flags.Get("prompt", "");
  SR_ASSIGN_OR_RETURN(long max_new_tokens, flags.GetInt("max-new-tokens", 48));
  if (max_new_tokens < 0) return absl::InvalidArgumentError("--max-new-tokens must be >= 0");
  // Sampling (core/pipeline/generate.h SampleGenerate) when any of its flags is given; greedy otherwise.
  const bool sample = flags.Has("temperature") || flags.Has("top-k") || flags.Has("top-p") || flags.Has("seed");
  SR_ASSIGN_OR_RETURN(double temperature, flags.GetDouble("temperature", 1.0));
  SR_ASSIGN_OR_RETURN(long top_k, flags.GetInt("top-k", 0));
  SR_ASSIGN_OR_RETURN(double top_p, flags.GetDouble("top-p", 1.0));
  SR_ASSIGN_OR_RETURN(long seed, flags.GetInt("seed", 0));
  const SamplingOptions sampling{.temperature = temperature, .top_k = static_cast<int>(top_k), .top_p = top_p};
  if (sample) {
    const absl::Status valid = ValidateSamplingOptions(sampling);
    if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat("--", valid.message()));
    if (seed < 0) return absl::InvalidArgumentError(absl::StrCat("--seed must be >= 0, got ", seed));
  }

  SR_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::FromFile(std::filesystem::path(model_dir) / "tokenizer.json"));
  SR_ASSIGN_OR_RETURN(auto model, LlamaModel::Load(model_dir));
  SR_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(prompt, /*add_special_tokens=*/true));
  if (ids.empty()) {
    return absl::InvalidArgumentError("the prompt is empty and the tokenizer adds no BOS token");
  }
  std::optional<int32_t> eos = tokenizer->eos_id();
  if (!eos.has_value() && model->config().eos_token_id.has_value()) eos = *model->config().eos_token_id;
  std::vector<int32_t> out;
  if (sample) {
    const long room = model->config().max_position_embeddings - static_cast<long>(ids.size());
    const uint64_t seeds[1] = {static_cast<uint64_t>(seed)};
    const int new_tokens = static_cast<int>(std::min(max_new_tokens, std::max(room, 0L)));
    SR_ASSIGN_OR_RETURN(auto sampled, SampleGenerate(*model, {ids}, new_tokens, sampling, seeds));
    out = std::move(sampled[0]);
    // Stop at the first EOS after the prompt, as greedy decoding does.
    if (eos.has_value()) {
      const auto it = std::find(out.begin() + static_cast<long>(ids.size()), out.end(), *eos);
      if (it != out.end()) out.erase(it + 1, out.end());
    }
  } else {
    SR_ASSIGN_OR_RETURN(out, GreedyGenerate(*model, ids, static_cast<int>(max_new_tokens), eos));
  }
  SR_ASSIGN_OR_RETURN(std::string text, tokenizer->Decode(out, /*skip_special_tokens=*/true));
  std::printf("%s\n", text.c_str());
  return absl::OkStatus();
}

}  // namespace shrinkray::cli
