// `shrinkray submit`: sends a compression job to the coordinator (the flags of
// `shrinkray compress`, plus where and how it runs) and prints "job <id> <state>";
// with --wait it then follows the job like `shrinkray watch`.
#include <unistd.h>

#include <cstdio>

#include "client/cli/commands.h"
#include "client/cli/job_flags.h"
#include "client/cli/job_printer.h"
#include "client/cli/job_watch.h"
#include "client/cli/rpc_client.h"
#include "core/util/status_macros.h"

namespace shrinkray::cli {

absl::Status RunSubmit(const Args& args) {
  std::set<std::string> bool_flags = kJobSpecBoolFlags;
  bool_flags.insert({"wait", "metrics"});
  SR_ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args, WithConnectionFlags(kJobSpecValueFlags), bool_flags,
                                                kJobSpecRepeatedFlags));
  SR_ASSIGN_OR_RETURN(v1::JobSpec spec, JobSpecFromFlags(flags));
  SR_ASSIGN_OR_RETURN(ConnectionOptions options, ConnectionOptionsFromFlags(flags));
  CompressionClient client(options);
  SR_ASSIGN_OR_RETURN(v1::Job job, client.SubmitJob(spec));
  // The first line is "job <id> <state>" whatever follows: scripts parse it.
  std::printf("job %s %s%s\n", job.id().c_str(), JobStateName(job.state()).c_str(),
              spec.dry_run() ? " (dry run)" : "");
  std::fflush(stdout);
  if (flags.Has("wait") && !IsFinalState(job.state())) {
    WatchPrinter printer(isatty(fileno(stdout)) == 1, flags.Has("metrics"));
    printer.SetShownState(job.id(), job.state());
    return WatchUntilFinished(client, job.id(), printer, /*reconnect_at_once=*/true);
  }
  if (IsFinalState(job.state())) {
    // A dry run finishes at once: show what it found.
    if (job.state() == v1::JOB_STATE_SUCCEEDED && job.has_result()) std::fputs(FormatResult(job.result()).c_str(), stdout);
    return JobOutcome(job);
  }
  return absl::OkStatus();
}

}  // namespace shrinkray::cli
