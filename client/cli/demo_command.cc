// `shrinkray demo`: makes a small Llama model, its tokenizer and a text
// deterministically (the same bytes on every machine; core/model/demo_model.h),
// converts the model to BF16, then runs inspect, eval (with the F32 model as
// the reference of the BF16 one) and generate on them. `--prepare-only` just
// writes the F32 model and the text (scripts/demo.sh and the service tests use
// it; --hidden/--intermediate/--layers make a bigger one).
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cli/commands.h"
#include "core/util/flags.h"
#include "core/io/text_file.h"
#include "core/model/demo_model.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace shrinkray::cli {
namespace {

std::filesystem::path DefaultWorkdir() {
  const char* tmp = std::getenv("TMPDIR");
  return std::filesystem::path(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") / "shrinkray-demo";
}

}  // namespace

absl::Status RunDemo(const Args& args) {
  SR_ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args, {"workdir", "hidden", "intermediate", "layers", "heads", "kv-heads",
                                                       "max-positions", "text-bytes"},
                                                {"prepare-only"}));
  const std::filesystem::path workdir = flags.Get("workdir", DefaultWorkdir().string());
  const std::filesystem::path model_f32 = workdir / "demo-model-f32";
  const std::filesystem::path model_bf16 = workdir / "demo-model-bf16";
  const std::filesystem::path text_path = workdir / "demo-text.txt";

  DemoModelOptions options;
  SR_ASSIGN_OR_RETURN(long hidden, flags.GetInt("hidden", options.hidden_size));
  SR_ASSIGN_OR_RETURN(long intermediate, flags.GetInt("intermediate", options.intermediate_size));
  SR_ASSIGN_OR_RETURN(long layers, flags.GetInt("layers", options.num_layers));
  SR_ASSIGN_OR_RETURN(long heads, flags.GetInt("heads", options.num_heads));
  SR_ASSIGN_OR_RETURN(long kv_heads, flags.GetInt("kv-heads", options.num_kv_heads));
  SR_ASSIGN_OR_RETURN(long max_positions, flags.GetInt("max-positions", options.max_positions));
  SR_ASSIGN_OR_RETURN(long text_bytes, flags.GetInt("text-bytes", 16000));
  if (heads < 1 || heads > 256 || kv_heads < 1 || heads % kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--heads (", heads, ") must be in 1..256 and a multiple of --kv-heads (",
                                                   kv_heads, ")"));
  }
  if (hidden < 8 || hidden > 16384 || hidden % heads != 0 || (hidden / heads) % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--hidden must be in 8..16384 and an even multiple of --heads (",
                                                   heads, "), got ", hidden));
  }
  if (max_positions < 16 || max_positions > 1'000'000) {
    return absl::InvalidArgumentError("--max-positions must be in 16..1000000");
  }
  if (intermediate < 1 || intermediate > 65536) return absl::InvalidArgumentError("--intermediate must be in 1..65536");
  if (layers < 1 || layers > 256) return absl::InvalidArgumentError("--layers must be in 1..256");
  if (text_bytes < 1000 || text_bytes > (1L << 30)) return absl::InvalidArgumentError("--text-bytes must be in 1000..2^30");
  options.hidden_size = static_cast<int>(hidden);
  options.intermediate_size = static_cast<int>(intermediate);
  options.num_layers = static_cast<int>(layers);
  options.num_heads = static_cast<int>(heads);
  options.num_kv_heads = static_cast<int>(kv_heads);
  options.max_positions = static_cast<int>(max_positions);
  SR_RETURN_IF_ERROR(WriteDemoModel(model_f32, options));
  SR_RETURN_IF_ERROR(WriteTextFile(text_path, DemoText(/*seed=*/7, static_cast<size_t>(text_bytes))));
  if (flags.Has("prepare-only")) {
    std::printf("demo: wrote %s and %s\n", model_f32.c_str(), text_path.c_str());
    return absl::OkStatus();
  }
  options.dtype = DType::kBF16;
  SR_RETURN_IF_ERROR(WriteDemoModel(model_bf16, options));
  std::printf("demo: wrote %s, %s and %s\n\n", model_f32.c_str(), model_bf16.c_str(), text_path.c_str());

  std::printf("$ shrinkray inspect --model %s\n", model_bf16.c_str());
  SR_RETURN_IF_ERROR(RunInspect({"--model", model_bf16.string()}));
  std::printf("\n$ shrinkray eval --model %s --data %s --seqlen 128 --reference %s\n", model_bf16.c_str(),
              text_path.c_str(), model_f32.c_str());
  SR_RETURN_IF_ERROR(RunEval({"--model", model_bf16.string(), "--data", text_path.string(), "--seqlen", "128",
                              "--reference", model_f32.string()}));
  std::printf("\n$ shrinkray generate --model %s --prompt \"once upon a time\" --max-new-tokens 16\n",
              model_f32.c_str());
  SR_RETURN_IF_ERROR(RunGenerate({"--model", model_f32.string(), "--prompt", "once upon a time",
                                  "--max-new-tokens", "16"}));
  std::printf("\ndemo: done (random weights: the text is not meant to read well)\n");
  return absl::OkStatus();
}

}  // namespace shrinkray::cli
