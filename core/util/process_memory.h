// The resident memory of this process, for the coordinator's and the workers'
// metrics, their heartbeats and the benchmarks.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"

namespace shrinkray {

// Bytes of this process's memory resident in RAM now (RSS), read from
// /proc/self/statm. Unavailable where /proc is missing or unreadable.
absl::StatusOr<int64_t> ResidentMemoryBytes();

}  // namespace shrinkray
