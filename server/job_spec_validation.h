// Checks a submitted JobSpec field by field and fills in its defaults, before
// the coordinator stores or schedules it. Only the spec itself is checked
// here (values, paths against the allowed roots, the recipe's syntax); whether
// the files exist and the model loads is the dry run's job.
#pragma once

#include "absl/status/statusor.h"
#include "server/path_policy.h"
#include "shrinkray/v1/compression.pb.h"

namespace shrinkray {

struct JobLimits {
  int max_workers_per_job = 8;
};

// Limits on free-form fields, so one request cannot bloat the job store.
inline constexpr int kMaxLabels = 32;
inline constexpr size_t kMaxLabelValueBytes = 256;
inline constexpr size_t kMaxRecipeBytes = 1 << 20;

// A copy of `spec` with defaults filled in: calibration.num_samples 128,
// calibration.seqlen 2048, evaluation.seqlen 256 (when evaluation.path is
// set), num_workers 1, output_format DENSE, device ANY.
//
// Returns the first problem found, in field order:
//   INVALID_ARGUMENT naming the field, e.g. "spec.calibration.num_samples must
//     be in 1..1000000, got -1"; recipe errors come from ParseRecipe with the
//     source "spec.recipe_yaml"; output_path equal to, inside, or containing
//     model_path is refused (an overwrite would destroy the model);
//   PERMISSION_DENIED (or INVALID_ARGUMENT for relative paths, "..") from
//     `paths` for model_path, calibration.path, evaluation.path, output_path;
//   RESOURCE_EXHAUSTED when num_workers > limits.max_workers_per_job.
absl::StatusOr<v1::JobSpec> ValidateJobSpec(const v1::JobSpec& spec, const PathPolicy& paths,
                                            const JobLimits& limits);

}  // namespace shrinkray
