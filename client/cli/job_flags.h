// Command-line flags -> CompressionService request fields for the service
// commands: the JobSpec that `shrinkray submit` sends, and the job id that
// watch/get/cancel take as their first argument. No RPCs here.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/util/flags.h"
#include "shrinkray/v1/compression.pb.h"

namespace shrinkray::cli {

// The JobSpec flags: those of `shrinkray compress` plus --workers, --device,
// --label k=v (repeatable), --dry-run.
extern const std::set<std::string> kJobSpecValueFlags;
extern const std::set<std::string> kJobSpecBoolFlags;
extern const std::set<std::string> kJobSpecRepeatedFlags;

// dense | gptq | compressed-tensors; InvalidArgument naming --format otherwise.
absl::StatusOr<v1::OutputFormat> ParseFormatFlag(const std::string& value);
// cpu | cuda | any; InvalidArgument naming --device otherwise.
absl::StatusOr<v1::DevicePreference> ParseDeviceFlag(const std::string& value);
// "key=value" strings -> labels. A value without '=', an empty key or a key
// given twice is InvalidArgument naming --label.
absl::Status ParseLabelFlags(const std::vector<std::string>& values,
                             google::protobuf::Map<std::string, std::string>* labels);

// The spec from parsed flags. Paths become absolute (against the current
// directory) because the coordinator only accepts absolute paths; the recipe
// file is read here and sent as text. Numbers left out stay 0, which the
// coordinator reads as the same defaults `shrinkray compress` uses.
absl::StatusOr<v1::JobSpec> JobSpecFromFlags(const Flags& flags);

// The first argument when it is not a flag (the positional job id), and the rest.
struct PositionalArgs {
  std::string positional;  // "" when the first argument is a flag
  std::vector<std::string> rest;
};
PositionalArgs SplitPositional(const std::vector<std::string>& args);

// The job id from the positional argument or --job (exactly one of them).
absl::StatusOr<std::string> JobIdFrom(const PositionalArgs& args, const Flags& flags);

}  // namespace shrinkray::cli
