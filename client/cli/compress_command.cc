// `shrinkray compress`: layerwise compression of a local model with a YAML
// recipe (docs/recipes.md), written as dense / gptq / compressed-tensors, with
// report.json beside the weights; optionally evaluates the output against the
// original on held-out text.
#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/cli/commands.h"
#include "core/util/flags.h"
#include "core/io/model_writer.h"
#include "core/io/text_file.h"
#include "core/model/llama.h"
#include "core/pipeline/compress.h"
#include "core/pipeline/device_factories.h"
#include "core/pipeline/job_runner.h"
#include "core/pipeline/recipe.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/compute_device.h"
#include "core/util/status_macros.h"

namespace shrinkray::cli {
namespace {

void PrintEval(const CompressionJobResult& result, const JobEvaluation& e) {
  const JobEvalRow& base = result.eval[0];
  const JobEvalRow& out = result.eval[1];
  std::printf("eval            %s (windows of %d, %ld scored tokens)\n", e.text_path.c_str(), e.seqlen,
              base.scored_tokens);
  std::printf("ppl original    %.4f\n", base.ppl);
  std::printf("ppl compressed  %.4f (%+.2f%%)\n", out.ppl, out.change_percent);
  std::printf("mean_kl         %.6g\n", out.mean_kl);
  std::printf("top1_agreement  %.4f\n", out.top1_agreement);
}

}  // namespace

absl::Status RunCompress(const Args& args) {
  SR_ASSIGN_OR_RETURN(
      Flags flags, Flags::Parse(args,
                                {"model", "recipe", "calib", "num-samples", "seqlen", "seed", "out", "format",
                                 "eval", "eval-max-chars", "eval-seqlen", "batch-windows", "device"},
                                {"overwrite", "compare-rtn", "print-matrices", "no-overlap-io"}));
  SR_ASSIGN_OR_RETURN(std::string model_dir, flags.Required("model"));
  SR_ASSIGN_OR_RETURN(std::string recipe_path, flags.Required("recipe"));
  SR_ASSIGN_OR_RETURN(std::string calib_path, flags.Required("calib"));
  SR_ASSIGN_OR_RETURN(std::string out_dir, flags.Required("out"));
  SR_ASSIGN_OR_RETURN(long num_samples, flags.GetInt("num-samples", 128));
  SR_ASSIGN_OR_RETURN(long seqlen, flags.GetInt("seqlen", 2048));
  SR_ASSIGN_OR_RETURN(long seed, flags.GetInt("seed", 0));
  SR_ASSIGN_OR_RETURN(long eval_max_chars, flags.GetInt("eval-max-chars", -1));
  SR_ASSIGN_OR_RETURN(long eval_seqlen, flags.GetInt("eval-seqlen", 256));
  SR_ASSIGN_OR_RETURN(long batch_windows, flags.GetInt("batch-windows", 0));
  if (num_samples <= 0 || num_samples > 1'000'000) {
    return absl::InvalidArgumentError(absl::StrCat("--num-samples must be in 1..1000000, got ", num_samples));
  }
  if (seqlen <= 0 || seqlen > 1'000'000) {
    return absl::InvalidArgumentError(absl::StrCat("--seqlen must be in 1..1000000, got ", seqlen));
  }
  if (seed < 0) return absl::InvalidArgumentError(absl::StrCat("--seed must be >= 0, got ", seed));
  if (batch_windows < 0) return absl::InvalidArgumentError("--batch-windows must be >= 0");
  SR_ASSIGN_OR_RETURN(OutputFormat format, ParseOutputFormat(flags.Get("format", "dense")));
  SR_ASSIGN_OR_RETURN(Recipe recipe, LoadRecipe(recipe_path));
  // --device cuda[:N]: the layer forwards, their statistics, the GPTQ/SparseGPT
  // solves and a recipe's distill stage on that GPU.
  SR_ASSIGN_OR_RETURN(const ComputeDevice device, ParseComputeDevice(flags.Get("device", "cpu"), "--device"));
  SR_ASSIGN_OR_RETURN(std::unique_ptr<SolverBackend> solvers, MakeSolverBackend(device));
  SR_ASSIGN_OR_RETURN(LayerExecutorFactory executors, MakeLayerExecutorFactory(device));
  SR_ASSIGN_OR_RETURN(distill::DistillRunnerFactory distill_runners, MakeDistillRunnerFactory(device));

  CompressOptions options;
  options.model_dir = model_dir;
  options.calib_path = calib_path;
  options.out_dir = out_dir;
  options.calibration.num_samples = static_cast<int>(num_samples);
  options.calibration.seqlen = static_cast<int>(seqlen);
  options.calibration.seed = static_cast<uint64_t>(seed);
  options.format = format;
  options.overwrite = flags.Has("overwrite");
  options.overlap_io = !flags.Has("no-overlap-io");
  options.layerwise.compare_rtn = flags.Has("compare-rtn");
  options.layerwise.batch_windows = static_cast<int>(batch_windows);
  options.layerwise.solvers = solvers.get();
  options.layerwise.executors = executors;
  options.layerwise.progress = [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  };
  std::printf("compress        %s with %s (%zu stages) -> %s [%s]\n", model_dir.c_str(), recipe_path.c_str(),
              recipe.stages.size() + (recipe.distill.has_value() ? 1 : 0), out_dir.c_str(), std::string(OutputFormatName(format)).c_str());
  std::fflush(stdout);
  CompressionJob job;
  SR_ASSIGN_OR_RETURN(job.recipe_yaml, ReadTextFile(recipe_path));
  job.recipe_source = recipe_path;
  job.compress = options;
  job.distill_runners = distill_runners;
  if (flags.Has("eval")) {
    job.evaluation = JobEvaluation{flags.Get("eval", ""), static_cast<int>(eval_seqlen), eval_max_chars};
  }
  JobObserver observer;
  observer.log = options.layerwise.progress;
  SR_ASSIGN_OR_RETURN(CompressionJobResult result, RunCompressionJob(job, observer));
  const CompressReport& report = result.report;

  if (flags.Has("print-matrices")) {
    std::printf("%-36s %-22s %5s %8s %12s %12s %8s\n", "module", "methods", "bits", "sparsity", "error",
                "rtn_error", "seconds");
    for (const MatrixReport& m : report.matrices) {
      std::string methods;
      for (const std::string& s : m.methods) absl::StrAppend(&methods, methods.empty() ? "" : "+", s);
      std::printf("%-36s %-22s %5d %8.4f %12.6g %12s %8.3f\n", m.module.c_str(), methods.c_str(), m.bits,
                  m.sparsity, m.error,
                  m.rtn_error.has_value() ? absl::StrFormat("%.6g", *m.rtn_error).c_str() : "-", m.seconds);
    }
  }
  long better = 0, compared = 0;
  for (const MatrixReport& m : report.matrices) {
    if (!m.rtn_error.has_value()) continue;
    ++compared;
    if (m.error <= *m.rtn_error) ++better;
  }
  std::printf("calibration     %s: %d x %d tokens (seed %ld%s)\n", report.calibration.source.c_str(),
              report.calibration.num_samples, report.calibration.seqlen, seed,
              report.calibration.pretokenized ? ", pre-tokenized" : "");
  std::printf("matrices        %zu, mean error %.6g\n", report.matrices.size(), report.MeanError());
  if (compared > 0) std::printf("vs rtn          error <= RTN's on %ld of %ld matrices\n", better, compared);
  if (!report.dense_fallbacks.empty()) {
    std::printf("kept dense      %zu matrices (see report.json)\n", report.dense_fallbacks.size());
  }
  if (solvers != nullptr) {
    std::printf("solves          %ld on %s, %ld on the CPU (options the device does not support)\n",
                solvers->device_solves(), solvers->name().c_str(), solvers->cpu_fallbacks());
  }
  std::printf("seconds         %.2f (load %.2f, calibration %.2f, write %.2f, waited for I/O %.2f)\n",
              report.total_seconds, report.load_seconds, report.calibration_seconds, report.write_seconds,
              report.io_wait_seconds);
  std::printf("output          %s (report.json inside)\n", out_dir.c_str());
  if (recipe.distill.has_value()) {
    // A distill chain: one row per stage (also OUT/results.md and results.json).
    std::printf("results         one row per stage (%s/results.md)\n%s", out_dir.c_str(),
                FormatResultsTable(result.eval).c_str());
  } else if (job.evaluation.has_value()) {
    PrintEval(result, *job.evaluation);
  }
  return absl::OkStatus();
}

}  // namespace shrinkray::cli
