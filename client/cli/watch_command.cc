// `shrinkray watch <job-id>`: follows a job until it finishes (state changes,
// log lines, a progress line per stage), then prints its result. Exits non-zero
// when the job failed or was cancelled.
#include <unistd.h>

#include <cstdio>

#include "client/cli/commands.h"
#include "client/cli/job_flags.h"
#include "client/cli/job_printer.h"
#include "client/cli/job_watch.h"
#include "client/cli/rpc_client.h"
#include "core/util/status_macros.h"

namespace shrinkray::cli {

absl::Status RunWatch(const Args& args) {
  const PositionalArgs split = SplitPositional(args);
  SR_ASSIGN_OR_RETURN(Flags flags, Flags::Parse(split.rest, WithConnectionFlags({"job"}), {"metrics", "history"}));
  SR_ASSIGN_OR_RETURN(std::string job_id, JobIdFrom(split, flags));
  SR_ASSIGN_OR_RETURN(ConnectionOptions options, ConnectionOptionsFromFlags(flags));
  CompressionClient client(options);
  // On a terminal the progress line redraws in place; in a pipe or a log file
  // each update is its own line.
  WatchPrinter printer(isatty(fileno(stdout)) == 1, flags.Has("metrics"));
  return WatchUntilFinished(client, job_id, printer, /*reconnect_at_once=*/false, flags.Has("history"));
}

}  // namespace shrinkray::cli
