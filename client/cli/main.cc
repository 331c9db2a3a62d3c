// shrinkray: command-line entry point. Local one-process commands for now;
// the service commands (submit, watch, get, list, cancel) join them later.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cli/commands.h"

namespace {

constexpr char kUsage[] =
    "usage: shrinkray <command> [flags]\n"
    "\n"
    "commands:\n"
    "  compress  --model DIR --recipe FILE --calib FILE --out DIR [--num-samples 128] [--seqlen 2048]\n"
    "            [--seed 0] [--format dense|gptq|compressed-tensors] [--overwrite] [--compare-rtn]\n"
    "            [--print-matrices] [--eval FILE [--eval-max-chars N] [--eval-seqlen 256]]\n"
    "            layerwise GPTQ/SparseGPT/Wanda/magnitude/RTN with a YAML recipe (docs/recipes.md)\n"
    "  eval      --model DIR --data FILE [--seqlen 256] [--max-chars N] [--reference DIR]\n"
    "            perplexity (protocol in docs/eval.md); with --reference also KL and top-1 agreement\n"
    "  generate  --model DIR --prompt TEXT [--max-new-tokens 48]   greedy decoding\n"
    "  inspect   --model DIR   architecture, parameters, dtypes, bytes\n"
    "  demo      [--workdir DIR]   makes a small deterministic model, then runs eval and generate on it\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  absl::Status status;
  if (command == "compress") {
    status = shrinkray::cli::RunCompress(args);
  } else if (command == "eval") {
    status = shrinkray::cli::RunEval(args);
  } else if (command == "generate") {
    status = shrinkray::cli::RunGenerate(args);
  } else if (command == "inspect") {
    status = shrinkray::cli::RunInspect(args);
  } else if (command == "demo") {
    status = shrinkray::cli::RunDemo(args);
  } else {
    std::fprintf(stderr, "shrinkray: unknown command '%s'\n\n%s", command.c_str(), kUsage);
    return 2;
  }
  if (!status.ok()) {
    std::fprintf(stderr, "shrinkray %s: error: %s\n", command.c_str(), std::string(status.message()).c_str());
    return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}
