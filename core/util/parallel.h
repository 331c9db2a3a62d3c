// A minimal fork-join loop over std::thread, for work that is coarse per index
// (one attention head of one sequence, say). Threads are started per call:
// the calls it serves run for milliseconds, so a pool would buy little.
#pragma once

#include <cstdint>
#include <functional>

namespace shrinkray {

// Threads to use: $SHRINKRAY_NUM_THREADS when a positive integer, else
// std::thread::hardware_concurrency() (at least 1).
int NumThreads();

// Calls fn(i) for every i in [0, n), spread over up to NumThreads() threads
// (the caller is one of them). Indices are handed out dynamically, so uneven
// work per index balances. fn must be safe to call concurrently for distinct i.
void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn);

}  // namespace shrinkray
