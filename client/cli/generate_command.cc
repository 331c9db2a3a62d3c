#include <cstdio>

#include "client/cli/commands.h"
#include "core/util/flags.h"
#include "core/model/llama.h"
#include "core/pipeline/generate.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/status_macros.h"

namespace shrinkray::cli {

absl::Status RunGenerate(const Args& args) {
  SR_ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args, {"model", "prompt", "max-new-tokens"}));
  SR_ASSIGN_OR_RETURN(std::string model_dir, flags.Required("model"));
  const std::string prompt = flags.Get("prompt", "");
  SR_ASSIGN_OR_RETURN(long max_new_tokens, flags.GetInt("max-new-tokens", 48));
  if (max_new_tokens < 0) return absl::InvalidArgumentError("--max-new-tokens must be >= 0");

  SR_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::FromFile(std::filesystem::path(model_dir) / "tokenizer.json"));
  SR_ASSIGN_OR_RETURN(auto model, LlamaModel::Load(model_dir));
  SR_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(prompt, /*add_special_tokens=*/true));
  if (ids.empty()) {
    return absl::InvalidArgumentError("the prompt is empty and the tokenizer adds no BOS token");
  }
  std::optional<int32_t> eos = tokenizer->eos_id();
  if (!eos.has_value() && model->config().eos_token_id.has_value()) eos = *model->config().eos_token_id;
  SR_ASSIGN_OR_RETURN(std::vector<int32_t> out,
                      GreedyGenerate(*model, ids, static_cast<int>(max_new_tokens), eos));
  SR_ASSIGN_OR_RETURN(std::string text, tokenizer->Decode(out, /*skip_special_tokens=*/true));
  std::printf("%s\n", text.c_str());
  return absl::OkStatus();
}

}  // namespace shrinkray::cli
