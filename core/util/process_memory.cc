#include "core/util/process_memory.h"

#include <unistd.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <climits>
#include <cstdlib>
#include <cstring>
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

bool KeepFreedMemory() {
  const char* env = std::getenv("SHRINKRAY_KEEP_FREED_MEMORY");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
#if defined(__GLIBC__)
  // mallopt returns 1 on success. M_MMAP_MAX 0: large blocks come from the
  // heap too (where the heap cannot grow, glibc still maps more for it).
  return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;
#else
  return false;
#endif
}

}  // namespace shrinkray
