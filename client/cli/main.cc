// shrinkray: command-line entry point. Local one-process commands, and the
// service commands (submit, watch, get, list, cancel) that talk to a coordinator.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/cli/commands.h"
#include "core/util/process_memory.h"

namespace {

constexpr char kUsage[] =
    "usage: shrinkray <command> [flags]\n"
    "\n"
    "commands:\n"
    "  compress  --model DIR --recipe FILE --calib FILE --out DIR [--num-samples 128] [--seqlen 2048]\n"
    "            [--seed 0] [--format dense|gptq|compressed-tensors] [--overwrite] [--compare-rtn] [--no-overlap-io]\n"
    "            [--print-matrices] [--eval FILE [--eval-max-chars N] [--eval-seqlen 256]]\n"
    "            [--device cpu|cuda|cuda:N (cuda = cuda:0)]\n"
    "            layerwise GPTQ/SparseGPT/Wanda/magnitude/RTN with a YAML recipe (docs/recipes.md)\n"
    "  eval      --model DIR --data FILE [--seqlen 256] [--max-chars N] [--reference DIR]\n"
    "            perplexity (protocol in docs/eval.md); with --reference also KL and top-1 agreement\n"
    "  distill   --teacher DIR --data FILE|--teacher-samples N --out DIR and a student: --keep-layers 0,2,4\n"
    "            | --mlp-width N [--heads N] [--importance-windows 16] | --student-config FILE;\n"
    "            [--steps 100] [--batch 8] [--micro-batch N]\n"
    "            [--seqlen 256] [--lr 1e-3] [--min-lr] [--warmup 0] [--weight-decay 0] [--clip 1] [--alpha 0.5]\n"
    "            [--temperature 1] [--loss kl|reverse_kl|jsd] [--beta 0.5] [--top-k K] [--top-k-mode renormalize|tail]\n"
    "            [--teacher-cache DIR] [--checkpoint-dir DIR] [--checkpoint-every K] [--no-resume] [--seed 0]\n"
    "            [--eval FILE [--eval-max-chars N] [--eval-seqlen 256]] [--log-every 10] [--overwrite]\n"
    "            [--device cpu|cuda|cuda:N] [--teacher-samples N [--teacher-sample-temperature 1] [--teacher-sample-top-k K]\n"
    "            [--teacher-sample-top-p P] [--teacher-sample-seed S] [--teacher-sample-prompt-tokens P]]\n"
    "            knowledge distillation of a pruned or random student on the CPU or one GPU (docs/distill.md)\n"
    "  generate  --model DIR --prompt TEXT [--max-new-tokens 48]   greedy decoding, or sampling with\n"
    "            [--temperature T] [--top-k K] [--top-p P] [--seed S]\n"
    "  inspect   --model DIR   architecture, parameters, dtypes, bytes\n"
    "  demo      [--workdir DIR]   makes a small deterministic model, then runs eval and generate on it\n"
    "\n"
    "service commands (talk to a coordinator; paths are sent absolute and must be valid there):\n"
    "  submit    the compress flags (--model --recipe --calib --out ... --eval ...) and\n"
    "            [--workers N] [--device cpu|cuda|any] [--label k=v]... [--dry-run] [--wait [--metrics]]\n"
    "            queues a job; prints 'job <id> <state>'; with --wait follows it like watch\n"
    "  watch     <job-id> [--metrics] [--history]   state changes, logs and progress until the job ends, then its\n"
    "            result; exits non-zero when it failed or was cancelled; reconnects if the stream breaks\n"
    "  get       <job-id> [--json]   one job: state, progress, result or error\n"
    "  list      [--state queued|running|succeeded|failed|cancelled] [--page-size N] [--page-token T]\n"
    "            [--all] [--json]   jobs, newest first\n"
    "  cancel    <job-id> [--reason TEXT]\n"
    "  every service command: [--server HOST:PORT (127.0.0.1:50051)] [--token-file FILE]\n"
    "            [--tls-ca FILE (TLS with this root certificate; plaintext without)] [--timeout SECONDS (30)]\n";

bool IsServiceCommand(const std::string& command) {
  return command == "submit" || command == "watch" || command == "get" || command == "list" ||
         command == "cancel";
}

}  // namespace

int main(int argc, char** argv) {
  shrinkray::KeepFreedMemory();  // before the first large allocation
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
  } else if (command == "distill") {
    status = shrinkray::cli::RunDistill(args);
  } else if (command == "generate") {
    status = shrinkray::cli::RunGenerate(args);
  } else if (command == "inspect") {
    status = shrinkray::cli::RunInspect(args);
  } else if (command == "demo") {
    status = shrinkray::cli::RunDemo(args);
  } else if (command == "submit") {
    status = shrinkray::cli::RunSubmit(args);
  } else if (command == "watch") {
    status = shrinkray::cli::RunWatch(args);
  } else if (command == "get") {
    status = shrinkray::cli::RunGet(args);
  } else if (command == "list") {
    status = shrinkray::cli::RunList(args);
  } else if (command == "cancel") {
    status = shrinkray::cli::RunCancel(args);
  } else {
    std::fprintf(stderr, "shrinkray: unknown command '%s'\n\n%s", command.c_str(), kUsage);
    return 2;
  }
  if (!status.ok()) {
    // Service errors come from the coordinator; their code (NOT_FOUND,
    // UNAVAILABLE, ...) says whose problem it is, so print it.
    const std::string code =
        IsServiceCommand(command) ? absl::StrCat(absl::StatusCodeToString(status.code()), ": ") : "";
    std::fprintf(stderr, "shrinkray %s: error: %s%s\n", command.c_str(), code.c_str(),
                 std::string(status.message()).c_str());
    return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}
