// `shrinkray get <job-id> [--json]`: one job, human readable (state, progress,
// result or error) or as the proto's JSON.
#include <cstdio>

#include "client/cli/commands.h"
#include "client/cli/job_flags.h"
#include "client/cli/job_printer.h"
#include "client/cli/rpc_client.h"
#include "core/util/status_macros.h"

namespace shrinkray::cli {

absl::Status RunGet(const Args& args) {
  const PositionalArgs split = SplitPositional(args);
  SR_ASSIGN_OR_RETURN(Flags flags, Flags::Parse(split.rest, WithConnectionFlags({"job"}), {"json"}));
  SR_ASSIGN_OR_RETURN(std::string job_id, JobIdFrom(split, flags));
  SR_ASSIGN_OR_RETURN(ConnectionOptions options, ConnectionOptionsFromFlags(flags));
  CompressionClient client(options);
  SR_ASSIGN_OR_RETURN(v1::Job job, client.GetJob(job_id));
  if (flags.Has("json")) {
    SR_ASSIGN_OR_RETURN(std::string json, ToJson(job));
    std::fputs(json.c_str(), stdout);
  } else {
    std::fputs(FormatJob(job).c_str(), stdout);
  }
  return absl::OkStatus();
}

}  // namespace shrinkray::cli
