// The `shrinkray` subcommands. Each returns a Status; main() prints errors and
// turns them into the exit code.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace shrinkray::cli {

using Args = std::vector<std::string>;

absl::Status RunCompress(const Args& args);
absl::Status RunEval(const Args& args);
absl::Status RunGenerate(const Args& args);
absl::Status RunInspect(const Args& args);
absl::Status RunDemo(const Args& args);
absl::Status RunDistill(const Args& args);

// Service commands: talk to a coordinator over gRPC (CompressionService).
absl::Status RunSubmit(const Args& args);
absl::Status RunWatch(const Args& args);
absl::Status RunGet(const Args& args);
absl::Status RunList(const Args& args);
absl::Status RunCancel(const Args& args);

}  // namespace shrinkray::cli
