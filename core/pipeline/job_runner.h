// The one pipeline runner behind `shrinkray compress` and the service's
// workers: compress a model with a recipe (RunCompression), then, when asked,
// evaluate the original and the output on held-out text, and report sizes and
// per-stage seconds. Progress and cancellation go through JobObserver so the
// worker can stream them and stop promptly.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/pipeline/compress.h"
#include "core/util/cancellation.h"

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
  std::optional<JobEvaluation> evaluation;
};

struct JobEvalRow {
  std::string model;  // "original", "compressed"
  double ppl = 0.0;
  double change_percent = 0.0;
  long scored_tokens = 0;
  double mean_kl = 0.0;
  double top1_agreement = 1.0;
};

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
  const CancellationToken* cancel = nullptr;
};

// Checks everything a job needs without compressing: the recipe parses and
// selects Linears of this model, config.json and every safetensors header
// read, the tokenizer loads (text calibration/eval), the data files exist
// and are non-empty, the output folder is absent (or overwrite).
absl::Status ValidateCompressionJob(const CompressionJob& job);

absl::StatusOr<CompressionJobResult> RunCompressionJob(const CompressionJob& job, const JobObserver& observer);

// Sum of the sizes of the *.safetensors files directly in `dir`.
int64_t SafetensorsBytes(const std::filesystem::path& dir);

}  // namespace shrinkray
