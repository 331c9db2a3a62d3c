#include "server/job_spec_validation.h"

#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/pipeline/recipe.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

namespace fs = std::filesystem;

constexpr int kMaxCount = 1000000;

absl::Status Required(const std::string& field, const std::string& value) {
  if (value.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  return absl::OkStatus();
}

// 0 takes `fallback`; anything else must lie in lo..hi.
absl::Status DefaultOrRange(const std::string& field, int32_t* value, int32_t fallback, int32_t lo, int32_t hi) {
  if (*value == 0) {
    *value = fallback;
    return absl::OkStatus();
  }
  if (*value < lo || *value > hi) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be in ", lo, "..", hi, ", got ", *value));
  }
  return absl::OkStatus();
}

bool IsLabelKey(const std::string& key) {
  if (key.empty() || key.size() > 63) return false;
  for (char c : key) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// The path with symlinks resolved as far as it exists; lexical when that fails
// (PathPolicy has already refused what cannot be resolved under roots).
fs::path Resolved(const std::string& path) {
  std::error_code ec;
  fs::path resolved = fs::weakly_canonical(path, ec);
  return ec ? fs::path(path).lexically_normal() : resolved;
}

absl::Status CheckOutputAgainstModel(const std::string& output, const std::string& model) {
  const fs::path out_lex = fs::path(output).lexically_normal();
  const fs::path model_lex = fs::path(model).lexically_normal();
  const fs::path out_real = Resolved(output);
  const fs::path model_real = Resolved(model);
  // Both forms: a symlinked output folder can name the model under another path.
  const bool same = (PathIsWithin(out_lex, model_lex) && PathIsWithin(model_lex, out_lex)) ||
                    (PathIsWithin(out_real, model_real) && PathIsWithin(model_real, out_real));
  if (same) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.output_path '", output, "' must not be spec.model_path"));
  }
  if (PathIsWithin(out_lex, model_lex) || PathIsWithin(out_real, model_real)) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.output_path '", output, "' must not be inside spec.model_path '", model, "'"));
  }
  if (PathIsWithin(model_lex, out_lex) || PathIsWithin(model_real, out_real)) {
    return absl::InvalidArgumentError(absl::StrCat("spec.output_path '", output,
                                                   "' must not contain spec.model_path '", model, "'"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::JobSpec> ValidateJobSpec(const v1::JobSpec& spec, const PathPolicy& paths,
                                            const JobLimits& limits) {
  v1::JobSpec out = spec;

  SR_RETURN_IF_ERROR(Required("spec.model_path", out.model_path()));
  SR_RETURN_IF_ERROR(paths.Check("spec.model_path", out.model_path()));

  SR_RETURN_IF_ERROR(Required("spec.recipe_yaml", out.recipe_yaml()));
  if (out.recipe_yaml().size() > kMaxRecipeBytes) {
    return absl::InvalidArgumentError(absl::StrCat("spec.recipe_yaml is ", out.recipe_yaml().size(),
                                                   " bytes, at most ", kMaxRecipeBytes));
  }
  // The parser's message already names the source, the stage and the field.
  SR_ASSIGN_OR_RETURN(Recipe recipe, ParseRecipe(out.recipe_yaml(), "spec.recipe_yaml"));
  if (recipe.distill.has_value()) {
    // Paths inside the recipe obey the same roots as the spec's.
    if (!recipe.distill->data.empty()) {
      SR_RETURN_IF_ERROR(paths.Check("spec.recipe_yaml: stage 0 (distill): data", recipe.distill->data));
    }
    if (!recipe.distill->student_config.empty()) {
      SR_RETURN_IF_ERROR(
          paths.Check("spec.recipe_yaml: stage 0 (distill): student.config", recipe.distill->student_config));
    }
  }

  v1::CalibrationData* calib = out.mutable_calibration();
  SR_RETURN_IF_ERROR(Required("spec.calibration.path", calib->path()));
  SR_RETURN_IF_ERROR(paths.Check("spec.calibration.path", calib->path()));
  int32_t num_samples = calib->num_samples();
  SR_RETURN_IF_ERROR(DefaultOrRange("spec.calibration.num_samples", &num_samples, 128, 1, kMaxCount));
  calib->set_num_samples(num_samples);
  int32_t seqlen = calib->seqlen();
  SR_RETURN_IF_ERROR(DefaultOrRange("spec.calibration.seqlen", &seqlen, 2048, 1, kMaxCount));
  calib->set_seqlen(seqlen);

  if (out.has_evaluation() && !out.evaluation().path().empty()) {
    v1::EvaluationData* eval = out.mutable_evaluation();
    SR_RETURN_IF_ERROR(paths.Check("spec.evaluation.path", eval->path()));
    int32_t eval_seqlen = eval->seqlen();
    // A window needs at least two tokens: one to condition on, one to score.
    SR_RETURN_IF_ERROR(DefaultOrRange("spec.evaluation.seqlen", &eval_seqlen, 256, 2, kMaxCount));
    eval->set_seqlen(eval_seqlen);
    if (eval->max_chars() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.evaluation.max_chars must be >= 0 (0: the whole file), got ", eval->max_chars()));
    }
  }

  SR_RETURN_IF_ERROR(Required("spec.output_path", out.output_path()));
  SR_RETURN_IF_ERROR(paths.Check("spec.output_path", out.output_path()));
  SR_RETURN_IF_ERROR(CheckOutputAgainstModel(out.output_path(), out.model_path()));

  if (!v1::OutputFormat_IsValid(out.output_format())) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.output_format has the unknown value ", static_cast<int>(out.output_format())));
  }
  if (out.output_format() == v1::OUTPUT_FORMAT_UNSPECIFIED) out.set_output_format(v1::OUTPUT_FORMAT_DENSE);

  if (out.num_workers() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.num_workers must be >= 0 (0: 1), got ", out.num_workers()));
  }
  if (out.num_workers() == 0) out.set_num_workers(1);
  if (out.num_workers() > limits.max_workers_per_job) {
    return absl::ResourceExhaustedError(absl::StrCat("spec.num_workers is ", out.num_workers(),
                                                     ", more than this coordinator's limit of ",
                                                     limits.max_workers_per_job, " workers per job"));
  }

  if (!v1::DevicePreference_IsValid(out.device())) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.device has the unknown value ", static_cast<int>(out.device())));
  }
  if (out.device() == v1::DEVICE_PREFERENCE_UNSPECIFIED) out.set_device(v1::DEVICE_PREFERENCE_ANY);

  if (out.labels_size() > kMaxLabels) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.labels has ", out.labels_size(), " labels, at most ", kMaxLabels));
  }
  for (const auto& [key, value] : out.labels()) {
    if (!IsLabelKey(key)) {
      return absl::InvalidArgumentError(absl::StrCat("spec.labels key '", std::string(key),
                                                     "' must match [a-z0-9_.-]{1,63}"));
    }
    if (value.size() > kMaxLabelValueBytes) {
      return absl::InvalidArgumentError(absl::StrCat("spec.labels['", std::string(key), "'] is ", value.size(),
                                                     " bytes, at most ", kMaxLabelValueBytes));
    }
  }
  return out;
}

}  // namespace shrinkray
