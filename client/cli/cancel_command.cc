// `shrinkray cancel <job-id> [--reason TEXT]`: cancels a queued or running job.
#include <cstdio>

#include "client/cli/commands.h"
#include "client/cli/job_flags.h"
#include "client/cli/job_printer.h"
#include "client/cli/rpc_client.h"
#include "core/util/status_macros.h"

namespace shrinkray::cli {

absl::Status RunCancel(const Args& args) {
  const PositionalArgs split = SplitPositional(args);
  SR_ASSIGN_OR_RETURN(Flags flags, Flags::Parse(split.rest, WithConnectionFlags({"job", "reason"})));
  SR_ASSIGN_OR_RETURN(std::string job_id, JobIdFrom(split, flags));
  SR_ASSIGN_OR_RETURN(ConnectionOptions options, ConnectionOptionsFromFlags(flags));
  CompressionClient client(options);
  SR_ASSIGN_OR_RETURN(v1::Job job, client.CancelJob(job_id, flags.Get("reason", "")));
  // Same first line as submit: "job <id> <state>". A running job may take a
  // moment to stop; the coordinator then answers with it still running.
  std::printf("job %s %s%s\n", job.id().c_str(), JobStateName(job.state()).c_str(),
              IsFinalState(job.state()) ? "" : " (cancellation requested)");
  return absl::OkStatus();
}

}  // namespace shrinkray::cli
