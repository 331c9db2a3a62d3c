// JobSpec (the wire) -> CompressionJob (core's pipeline runner), and the
// runner's result -> JobResult. Used by the coordinator's dry run and by
// workers, so both read a spec the same way. Expects a spec already passed
// through ValidateJobSpec (defaults filled).
#pragma once

#include "absl/status/statusor.h"
#include "core/pipeline/job_runner.h"
#include "shrinkray/v1/compression.pb.h"

namespace shrinkray {

absl::StatusOr<CompressionJob> CompressionJobFromSpec(const v1::JobSpec& spec);

v1::JobResult JobResultFromRun(const CompressionJobResult& run, const std::string& report_json);

}  // namespace shrinkray
