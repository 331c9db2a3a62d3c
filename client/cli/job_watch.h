// Following a job to its end for `shrinkray watch` and `shrinkray submit
// --wait`: WatchJob, reconnecting when the stream breaks early, then the result.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "client/cli/job_printer.h"
#include "client/cli/rpc_client.h"

namespace shrinkray::cli {

// Prints the job's state changes, log lines and progress (through `printer`)
// to stdout until it reaches a final state, then its result. Returns OK when
// it SUCCEEDED and JobOutcome's error when it FAILED or was CANCELLED.
//
// A stream that ends before a final state (a coordinator restart, a dropped
// connection) is reopened with after_sequence = the last event seen, with
// backoff, for up to about a minute without news. `reconnect_at_once` also
// applies that to the very first WatchJob call (submit --wait, where the
// coordinator just answered); otherwise a first call that fails is an error.
// `history`: the first stream replays the job's whole event history.
absl::Status WatchUntilFinished(CompressionClient& client, const std::string& job_id, WatchPrinter& printer,
                                bool reconnect_at_once, bool history = false);

}  // namespace shrinkray::cli
