#include "core/pipeline/job_runner.h"

#include <chrono>
#include <memory>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "core/io/checkpoint.h"
#include "core/io/text_file.h"
#include "core/model/config.h"
#include "core/model/llama.h"
#include "core/pipeline/eval.h"
#include "core/pipeline/recipe.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

// Share of the whole job per phase, for the progress fraction.
constexpr double kLoadShare = 0.05;
constexpr double kCalibrateShare = 0.80;

absl::Status CheckDataFile(const std::string& what, const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat(what, " ", path.string(), " does not exist or is not a file"));
  }
  if (std::filesystem::file_size(path, ec) == 0 || ec) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path.string(), " is empty"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<JobEvalRow>> Evaluate(const CompressionJob& job, const JobEvaluation& e,
                                                 const JobObserver& observer) {
  const std::filesystem::path& model_dir = job.compress.model_dir;
  SR_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::FromFile(model_dir / "tokenizer.json"));
  SR_ASSIGN_OR_RETURN(std::string text, ReadTextFile(e.text_path, e.max_chars));
  SR_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(text, /*add_special_tokens=*/true));
  SR_ASSIGN_OR_RETURN(auto original, LlamaModel::Load(model_dir));
  SR_RETURN_IF_ERROR(CheckCancelled(observer.cancel, "evaluation"));
  EvalOptions options;
  options.seqlen = e.seqlen;
  auto base = EvaluatePerplexity(*original, ids, options);
  if (!base.ok()) {
    return absl::Status(base.status().code(),
                        absl::StrCat("evaluation text ", e.text_path.string(), ": ", base.status().message()));
  }
  if (observer.progress) observer.progress("evaluate", 0, 0, kLoadShare + kCalibrateShare + 0.5 * (1 - kLoadShare - kCalibrateShare));
  SR_RETURN_IF_ERROR(CheckCancelled(observer.cancel, "evaluation"));
  SR_ASSIGN_OR_RETURN(auto compressed, LlamaModel::Load(job.compress.out_dir));
  SR_ASSIGN_OR_RETURN(EvalResult out, EvaluatePerplexity(*compressed, ids, options, original.get()));
  std::vector<JobEvalRow> rows(2);
  rows[0].model = "original";
  rows[0].ppl = base->ppl;
  rows[0].scored_tokens = base->scored_tokens;
  rows[1].model = "compressed";
  rows[1].ppl = out.ppl;
  rows[1].change_percent = 100.0 * (out.ppl / base->ppl - 1.0);
  rows[1].scored_tokens = out.scored_tokens;
  rows[1].mean_kl = out.mean_kl.value_or(0.0);
  rows[1].top1_agreement = out.top1_agreement.value_or(0.0);
  return rows;
}

}  // namespace

int64_t SafetensorsBytes(const std::filesystem::path& dir) {
  int64_t total = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.is_regular_file(ec) && entry.path().extension() == ".safetensors") {
      total += static_cast<int64_t>(entry.file_size(ec));
    }
  }
  return total;
}

absl::Status ValidateCompressionJob(const CompressionJob& job) {
  const CompressOptions& c = job.compress;
  SR_ASSIGN_OR_RETURN(Recipe recipe, ParseRecipe(job.recipe_yaml, job.recipe_source));
  SR_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(c.model_dir));
  SR_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(c.model_dir));
  if (recipe.distill.has_value()) {
    // The later stages target the student; the teacher must load whole.
    SR_RETURN_IF_ERROR(ValidateStagedJob(job, recipe));
  } else {
    SR_RETURN_IF_ERROR(CheckRecipeTargets(config, recipe));
  }
  for (const std::string& name : {std::string("model.embed_tokens.weight"), std::string("model.norm.weight")}) {
    SR_RETURN_IF_ERROR(checkpoint->Find(name).status());
  }
  SR_RETURN_IF_ERROR(CheckDataFile("calibration data", c.calib_path));
  const bool needs_tokenizer = c.calib_path.extension() != ".safetensors" || job.evaluation.has_value();
  if (needs_tokenizer) SR_RETURN_IF_ERROR(Tokenizer::FromFile(c.model_dir / "tokenizer.json").status());
  if (job.evaluation.has_value()) SR_RETURN_IF_ERROR(CheckDataFile("evaluation text", job.evaluation->text_path));
  std::error_code ec;
  if (!c.overwrite && std::filesystem::exists(c.out_dir, ec)) {
    return absl::AlreadyExistsError(absl::StrCat("output folder ", c.out_dir.string(), " exists; set overwrite"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CompressionJobResult> RunCompressionJob(const CompressionJob& job, const JobObserver& observer) {
  SR_ASSIGN_OR_RETURN(Recipe recipe, ParseRecipe(job.recipe_yaml, job.recipe_source));
  if (recipe.distill.has_value()) return RunStagedJob(job, recipe, observer);
  if (observer.progress) observer.progress("load", 0, 0, 0.0);
  CompressOptions options = job.compress;
  options.layerwise.cancel = observer.cancel;
  options.layerwise.progress = observer.log;
  options.layerwise.on_layer_done = [&observer](const LayerDone& done) {
    if (observer.on_layer_done) observer.on_layer_done(done);
    if (observer.progress) {
      const double f = kLoadShare + kCalibrateShare * (done.layer + 1) / std::max(1, done.num_layers);
      observer.progress("calibrate", done.layer + 1, done.num_layers, f);
    }
  };
  options.layerwise.on_resume = [&observer](int first_layer, int num_layers) {
    if (observer.on_resume) observer.on_resume(first_layer, num_layers);
    if (observer.progress) {
      const double f = kLoadShare + kCalibrateShare * first_layer / std::max(1, num_layers);
      observer.progress("calibrate", first_layer, num_layers, f);
    }
  };
  CompressionJobResult result;
  options.layerwise.comm = job.comm;
  const bool leader = job.comm == nullptr || job.comm->rank() == 0;
  SR_ASSIGN_OR_RETURN(result.report, RunCompression(recipe, options));
  if (!leader) return result;  // rank 0 evaluates and reports
  const CompressReport& r = result.report;
  double layers = r.embed_seconds;
  for (double s : r.layer_seconds) layers += s;
  result.stage_seconds = {{"load", r.load_seconds},
                          {"calibration_data", r.calibration_seconds},
                          {"compress", layers},
                          {"write", r.write_seconds}};
  if (job.evaluation.has_value()) {
    if (observer.progress) observer.progress("evaluate", 0, 0, kLoadShare + kCalibrateShare);
    const auto start = std::chrono::steady_clock::now();
    SR_ASSIGN_OR_RETURN(result.eval, Evaluate(job, *job.evaluation, observer));
    result.stage_seconds.emplace_back(
        "evaluate", std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  result.input_bytes = SafetensorsBytes(job.compress.model_dir);
  result.output_bytes = SafetensorsBytes(job.compress.out_dir);
  if (result.eval.size() == 2) {  // the results table's size columns
    const std::filesystem::path dirs[2] = {job.compress.model_dir, job.compress.out_dir};
    const int64_t bytes[2] = {result.input_bytes, result.output_bytes};
    for (int i = 0; i < 2; ++i) {
      JobEvalRow& row = result.eval[i];
      row.bytes = bytes[i];
      auto params = ModelParameters(dirs[i]);
      row.parameters = params.ok() ? *params : 0;
      row.bits_per_parameter = row.parameters > 0 ? 8.0 * row.bytes / row.parameters : 0.0;
      row.compression_ratio = row.bytes > 0 ? static_cast<double>(bytes[0]) / row.bytes : 0.0;
      row.retention = row.ppl > 0 ? result.eval[0].ppl / row.ppl : 0.0;
    }
    result.eval[1].seconds = r.total_seconds;
  }
  if (observer.progress) observer.progress("done", 0, 0, 1.0);
  return result;
}

}  // namespace shrinkray
