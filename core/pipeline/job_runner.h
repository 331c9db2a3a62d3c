// The one pipeline runner behind `shrinkray compress` and the service's
// workers: compress a model with a recipe (RunCompression), then, when asked,
// evaluate the original and the output on held-out text, and report sizes and
// per-stage seconds. Progress and cancellation go through JobObserver so the
// worker can stream them and stop promptly.
//
// A recipe led by a `distill` stage runs as a chain (staged_job.cc): the
// student is made from the job's model and trained (DistillTrainer, data
// parallel over the job's ranks, checkpoints in OUT.work/distill-checkpoints
// so a re-run attempt resumes at the step reached), then every later stage
// runs in a pass of its own on the previous stage's model (intermediate dense
// folders in OUT.work, removed at the end), the last one writing OUT in the
// job's format. The result has one row per stage (original, distill, then
// each later stage): bytes, bits per parameter, compression ratio, and with
// an evaluation ppl, retention, KL to the original and top-1 agreement; the
// table is also written as OUT/results.json and OUT/results.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/distill/distill_device.h"
#include "core/distill/distill_trainer.h"
#include "core/pipeline/compress.h"
#include "core/pipeline/recipe.h"
#include "core/util/cancellation.h"
#include "nlohmann/json.hpp"

namespace shrinkray {

struct JobEvaluation {
  std::filesystem::path text_path;
  int seqlen = 256;
  long max_chars = -1;  // -1: the whole file
};

struct CompressionJob {
  std::string recipe_yaml;
  std::string recipe_source = "recipe";  // named in recipe errors
  CompressOptions compress;  // layerwise.progress/on_layer_done/on_resume/cancel are set by the runner
  // The job's ranks (null: one worker). Rank 0 writes and evaluates the output.
  Communicator* comm = nullptr;
  // Where a distill stage trains: a device's runners (MakeDistillRunnerFactory,
  // core/pipeline/device_factories.h), as compress.layerwise.executors are
  // its layer forwards'; empty: the CPU. Options or a model the device's
  // runner does not serve train on the CPU, with a log line saying why.
  distill::DistillRunnerFactory distill_runners;
  std::optional<JobEvaluation> evaluation;
};

// One row of the results table: a model of the job (the original, or the
// model after a stage) with its size and, when the job evaluates, its quality.
struct JobEvalRow {
  // "original", "compressed"; a distill chain: "original", "distill", then
  // each later stage's method ("sparsegpt", "gptq", ...).
  std::string model;
  double ppl = 0.0;  // 0: not evaluated
  double change_percent = 0.0;
  long scored_tokens = 0;
  double mean_kl = 0.0;  // KL(original || this) per token
  double top1_agreement = 1.0;
  int64_t bytes = 0;        // its *.safetensors
  long parameters = 0;      // its parameters (dense count: a pruned or quantized weight still counts)
  double bits_per_parameter = 0.0;  // 8 * bytes / parameters
  double compression_ratio = 0.0;   // original bytes / bytes
  double retention = 0.0;           // ppl_original / ppl (0: not evaluated)
  double seconds = 0.0;             // the stage's own time (0 for the original)
};

// The table as text (one line per row; "-" where a value is not measured)
// and as JSON (an array of objects), as GetJob, the event stream and
// OUT/results.{md,json} show it.
std::string FormatResultsTable(const std::vector<JobEvalRow>& rows);
std::string FormatResultsMarkdown(const std::vector<JobEvalRow>& rows);
nlohmann::json ResultsJson(const std::vector<JobEvalRow>& rows);

struct CompressionJobResult {
  CompressReport report;
  std::vector<JobEvalRow> eval;
  int64_t input_bytes = 0;   // *.safetensors of the model folder
  int64_t output_bytes = 0;  // *.safetensors of the output folder
  std::vector<std::pair<std::string, double>> stage_seconds;  // in order
};

struct JobObserver {
  // stage: "load", "calibrate", "evaluate", "done"; layer i of n for
  // "calibrate" (0/0 for the others); fraction of the whole job.
  std::function<void(const std::string& stage, int layer, int num_layers, double fraction)> progress;
  LayerDoneFn on_layer_done;
  // Once, when the job resumes an interrupted attempt at `first_layer` (its
  // earlier layers restored from OUT.partial); the runner also reports
  // progress "calibrate" first_layer/num_layers then.
  std::function<void(int first_layer, int num_layers)> on_resume;
  ProgressFn log;
  // After each optimizer step of a distill stage (every rank).
  std::function<void(const distill::StepMetrics&)> on_train_step;
  const CancellationToken* cancel = nullptr;
};

// Checks everything a job needs without compressing: the recipe parses and
// selects Linears of this model (of the student's shape after a distill
// stage, whose student must be no larger than the teacher), config.json and
// every safetensors header read, the tokenizer loads (text calibration/eval),
// the data files exist and are non-empty, the output folder is absent (or
// overwrite).
absl::Status ValidateCompressionJob(const CompressionJob& job);

absl::StatusOr<CompressionJobResult> RunCompressionJob(const CompressionJob& job, const JobObserver& observer);

// Sum of the sizes of the *.safetensors files directly in `dir`.
int64_t SafetensorsBytes(const std::filesystem::path& dir);

// Parameters of the model in `dir` (config and checkpoint headers only).
absl::StatusOr<long> ModelParameters(const std::filesystem::path& dir);

// The config the distill stage's student will have (checks that it is no
// larger than the teacher's: InvalidArgument naming the recipe, the stage and
// the student field). Used to check the later stages' targets before training.
absl::StatusOr<ModelConfig> DistillStudentConfig(const ModelConfig& teacher, const DistillStage& stage,
                                                 const std::string& recipe_source);

// The chain of a recipe with a distill stage (staged_job.cc).
absl::Status ValidateStagedJob(const CompressionJob& job, const Recipe& recipe);
absl::StatusOr<CompressionJobResult> RunStagedJob(const CompressionJob& job, const Recipe& recipe,
                                                  const JobObserver& observer);

}  // namespace shrinkray
