// Scenarios shared by the in-process (threads) and multi-process comm tests:
// each rank runs the same function on its own communicator; the result is an
// empty string when every check passed, else a description of the failures.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "core/comm/communicator.h"
#include "core/comm/store.h"

namespace shrinkray::comm_test {

// Element counts: one, odd, and a large odd one (gloo splits it into segments).
inline const std::vector<size_t>& TestSizes() {
  static const std::vector<size_t> sizes = {1, 7, 1000003};
  return sizes;
}

// Every collective for every dtype and size with exact expected values:
// AllReduce sum and max (all dtypes), BF16 sums that need rounding (checked
// against the pairwise fp32 rule), Broadcast from each root, AllGather,
// AllGatherV with uneven and zero counts, zero-element calls, Barrier (with
// arrival keys in `store`), bad arguments (InvalidArgument, still usable).
std::string RunCollectives(Communicator& comm, Store& store);

// Environment variable that turns the test binary into one rank:
// "rank,size,store_dir,scenario" (comm_test_main.cc).
inline constexpr char kChildEnv[] = "SHRINKRAY_COMM_CHILD";

// Runs one rank of `scenario` in a child process; returns its exit code.
// Scenarios: "collectives"; "die_exit" / "die_kill" (the last rank leaves
// after a first Barrier by _exit(0) / SIGKILL, the others must get an error
// from their next collective within the timeout + slack, then
// FailedPrecondition); "hang" (the last rank stays alive but never joins the
// collective: the others must fail within the timeout + slack); "die_during"
// (the last rank _exits 30 ms into a loop of 16 MB all-reduces).
int RunChild(int rank, int size, const std::string& store_dir, const std::string& scenario);

// Timeout the failure scenarios use, and the bound they must meet.
inline constexpr int kFailureTimeoutSeconds = 3;
inline constexpr int kFailureBoundSeconds = 20;

}  // namespace shrinkray::comm_test
