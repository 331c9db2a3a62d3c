#include <cstdio>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/cli/commands.h"
#include "core/util/flags.h"
#include "core/io/text_file.h"
#include "core/model/llama.h"
#include "core/pipeline/eval.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/status_macros.h"

namespace shrinkray::cli {

absl::Status RunEval(const Args& args) {
  SR_ASSIGN_OR_RETURN(Flags flags,
                      Flags::Parse(args, {"model", "data", "seqlen", "max-chars", "reference", "batch"}));
  SR_ASSIGN_OR_RETURN(std::string model_dir, flags.Required("model"));
  SR_ASSIGN_OR_RETURN(std::string data_path, flags.Required("data"));
  SR_ASSIGN_OR_RETURN(long seqlen, flags.GetInt("seqlen", 256));
  SR_ASSIGN_OR_RETURN(long max_chars, flags.GetInt("max-chars", -1));
  SR_ASSIGN_OR_RETURN(long batch, flags.GetInt("batch", 0));

  SR_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::FromFile(std::filesystem::path(model_dir) / "tokenizer.json"));
  SR_ASSIGN_OR_RETURN(auto model, LlamaModel::Load(model_dir));
  std::unique_ptr<LlamaModel> reference;
  if (flags.Has("reference")) {
    SR_ASSIGN_OR_RETURN(reference, LlamaModel::Load(flags.Get("reference", "")));
  }
  SR_ASSIGN_OR_RETURN(std::string text, ReadTextFile(data_path, max_chars));
  SR_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(text, /*add_special_tokens=*/true));

  EvalOptions options;
  options.seqlen = static_cast<int>(seqlen);
  options.batch = static_cast<int>(batch);
  auto result = EvaluatePerplexity(*model, ids, options, reference.get());
  if (!result.ok()) {
    return absl::Status(result.status().code(), absl::StrCat(data_path, ": ", result.status().message()));
  }
  std::printf("model           %s\n", model_dir.c_str());
  std::printf("data            %s (%zu bytes, %ld tokens with BOS)\n", data_path.c_str(), text.size(),
              result->num_tokens);
  std::printf("windows         %ld x %ld tokens (%ld scored)\n", result->num_windows, seqlen,
              result->scored_tokens);
  std::printf("ppl             %.6f\n", result->ppl);
  if (result->mean_kl.has_value()) {
    std::printf("reference       %s\n", flags.Get("reference", "").c_str());
    std::printf("mean_kl         %.6g\n", *result->mean_kl);
    std::printf("top1_agreement  %.6f\n", *result->top1_agreement);
  }
  std::printf("seconds         %.3f (%.0f tokens/s)\n", result->seconds, result->tokens_per_second);
  return absl::OkStatus();
}

}  // namespace shrinkray::cli
