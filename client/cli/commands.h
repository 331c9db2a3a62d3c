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

}  // namespace shrinkray::cli
