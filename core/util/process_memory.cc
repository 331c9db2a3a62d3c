#include "core/util/process_memory.h"

#include <unistd.h>

#include <fstream>

#include "absl/status/status.h"

namespace shrinkray {

absl::StatusOr<int64_t> ResidentMemoryBytes() {
  // statm is one line of page counts: "size resident shared text lib data dt".
  // It is cheaper to parse than /proc/self/status and has no locale issues.
  std::ifstream statm("/proc/self/statm");
  if (!statm) {
    return absl::UnavailableError("cannot open /proc/self/statm (no procfs?)");
  }
  int64_t size_pages = 0;
  int64_t resident_pages = 0;
  if (!(statm >> size_pages >> resident_pages) || resident_pages < 0) {
    return absl::UnavailableError("cannot parse /proc/self/statm");
  }
  const long page_size = sysconf(_SC_PAGESIZE);
  if (page_size <= 0) {
    return absl::UnavailableError("sysconf(_SC_PAGESIZE) failed");
  }
  return resident_pages * static_cast<int64_t>(page_size);
}

}  // namespace shrinkray
