#include "client/cli/job_flags.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "core/io/text_file.h"
#include "core/util/status_macros.h"

namespace shrinkray::cli {
namespace {

// Absolute and normalised, without touching the file system: the path is
// where the coordinator and workers will look, which may not be this machine.
absl::StatusOr<std::string> AbsolutePathFlag(const Flags& flags, const std::string& name) {
  SR_ASSIGN_OR_RETURN(std::string value, flags.Required(name));
  if (value.empty()) return absl::InvalidArgumentError(absl::StrCat("flag --", name, " must not be empty"));
  std::error_code error;
  std::filesystem::path path = std::filesystem::absolute(value, error);
  if (error) {
    return absl::InvalidArgumentError(absl::StrCat("flag --", name, ": cannot make '", value,
                                                   "' absolute: ", error.message()));
  }
  return path.lexically_normal().string();
}

// An optional integer flag in [min, max]; 0 (the coordinator's default) when absent.
absl::StatusOr<long> RangeFlag(const Flags& flags, const std::string& name, long min, long max) {
  if (!flags.Has(name)) return 0;
  SR_ASSIGN_OR_RETURN(long value, flags.GetInt(name, 0));
  if (value < min || value > max) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be in ", min, "..", max, ", got ", value));
  }
  return value;
}

}  // namespace

const std::set<std::string> kJobSpecValueFlags = {"model",  "recipe",         "calib",      "num-samples",
                                                  "seqlen", "seed",           "out",        "format",
                                                  "eval",   "eval-max-chars", "eval-seqlen", "workers",
                                                  "device"};
const std::set<std::string> kJobSpecBoolFlags = {"overwrite", "dry-run"};
const std::set<std::string> kJobSpecRepeatedFlags = {"label"};

absl::StatusOr<v1::OutputFormat> ParseFormatFlag(const std::string& value) {
  if (value == "dense") return v1::OUTPUT_FORMAT_DENSE;
  if (value == "gptq") return v1::OUTPUT_FORMAT_GPTQ;
  if (value == "compressed-tensors") return v1::OUTPUT_FORMAT_COMPRESSED_TENSORS;
  return absl::InvalidArgumentError(
      absl::StrCat("--format must be dense, gptq or compressed-tensors, got '", value, "'"));
}

absl::StatusOr<v1::DevicePreference> ParseDeviceFlag(const std::string& value) {
  if (value == "cpu") return v1::DEVICE_PREFERENCE_CPU;
  if (value == "cuda") return v1::DEVICE_PREFERENCE_CUDA;
  if (value == "any") return v1::DEVICE_PREFERENCE_ANY;
  return absl::InvalidArgumentError(absl::StrCat("--device must be cpu, cuda or any, got '", value, "'"));
}

absl::Status ParseLabelFlags(const std::vector<std::string>& values,
                             google::protobuf::Map<std::string, std::string>* labels) {
  for (const std::string& value : values) {
    const size_t eq = value.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat("--label must be key=value, got '", value, "'"));
    }
    const std::string key = value.substr(0, eq);
    if (!labels->insert({key, value.substr(eq + 1)}).second) {
      return absl::InvalidArgumentError(absl::StrCat("--label key '", key, "' given twice"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::JobSpec> JobSpecFromFlags(const Flags& flags) {
  v1::JobSpec spec;
  SR_ASSIGN_OR_RETURN(*spec.mutable_model_path(), AbsolutePathFlag(flags, "model"));
  SR_ASSIGN_OR_RETURN(std::string recipe_path, AbsolutePathFlag(flags, "recipe"));
  auto recipe = ReadTextFile(recipe_path);
  if (!recipe.ok()) {
    return absl::Status(recipe.status().code(), absl::StrCat("--recipe: ", recipe.status().message()));
  }
  spec.set_recipe_yaml(*std::move(recipe));

  v1::CalibrationData* calibration = spec.mutable_calibration();
  SR_ASSIGN_OR_RETURN(*calibration->mutable_path(), AbsolutePathFlag(flags, "calib"));
  SR_ASSIGN_OR_RETURN(long num_samples, RangeFlag(flags, "num-samples", 1, 1'000'000));
  SR_ASSIGN_OR_RETURN(long seqlen, RangeFlag(flags, "seqlen", 1, 1'000'000));
  SR_ASSIGN_OR_RETURN(long seed, flags.GetInt("seed", 0));
  if (seed < 0) return absl::InvalidArgumentError(absl::StrCat("--seed must be >= 0, got ", seed));
  calibration->set_num_samples(static_cast<int32_t>(num_samples));
  calibration->set_seqlen(static_cast<int32_t>(seqlen));
  calibration->set_seed(static_cast<uint64_t>(seed));

  if (flags.Has("eval")) {
    v1::EvaluationData* evaluation = spec.mutable_evaluation();
    SR_ASSIGN_OR_RETURN(*evaluation->mutable_path(), AbsolutePathFlag(flags, "eval"));
    SR_ASSIGN_OR_RETURN(long eval_seqlen, RangeFlag(flags, "eval-seqlen", 1, 1'000'000));
    SR_ASSIGN_OR_RETURN(long max_chars, RangeFlag(flags, "eval-max-chars", 1, 1L << 40));
    evaluation->set_seqlen(static_cast<int32_t>(eval_seqlen));
    evaluation->set_max_chars(max_chars);
  } else {
    // Silently dropping them would let a typo'd command skip the evaluation.
    for (const char* name : {"eval-seqlen", "eval-max-chars"}) {
      if (flags.Has(name)) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs --eval"));
    }
  }

  SR_ASSIGN_OR_RETURN(*spec.mutable_output_path(), AbsolutePathFlag(flags, "out"));
  SR_ASSIGN_OR_RETURN(v1::OutputFormat format, ParseFormatFlag(flags.Get("format", "dense")));
  spec.set_output_format(format);
  SR_ASSIGN_OR_RETURN(long workers, RangeFlag(flags, "workers", 1, 1024));
  spec.set_num_workers(static_cast<int32_t>(workers));
  SR_ASSIGN_OR_RETURN(v1::DevicePreference device, ParseDeviceFlag(flags.Get("device", "any")));
  spec.set_device(device);
  SR_RETURN_IF_ERROR(ParseLabelFlags(flags.GetAll("label"), spec.mutable_labels()));
  spec.set_dry_run(flags.Has("dry-run"));
  spec.set_overwrite(flags.Has("overwrite"));
  return spec;
}

PositionalArgs SplitPositional(const std::vector<std::string>& args) {
  if (!args.empty() && args[0].rfind("--", 0) != 0) {
    return {args[0], std::vector<std::string>(args.begin() + 1, args.end())};
  }
  return {"", args};
}

absl::StatusOr<std::string> JobIdFrom(const PositionalArgs& args, const Flags& flags) {
  if (!args.positional.empty() && flags.Has("job")) {
    return absl::InvalidArgumentError("give the job id once: as the first argument or with --job");
  }
  std::string id = args.positional.empty() ? flags.Get("job", "") : args.positional;
  if (id.empty()) return absl::InvalidArgumentError("missing job id (first argument or --job)");
  return id;
}

}  // namespace shrinkray::cli
