// The resident memory of this process, for the coordinator's and the workers'
// metrics, their heartbeats and the benchmarks; and how the process keeps
// memory it frees.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"

namespace shrinkray {

// Bytes of this process's memory resident in RAM now (RSS), read from
// /proc/self/statm. Unavailable where /proc is missing or unreadable.
absl::StatusOr<int64_t> ResidentMemoryBytes();

// Keeps freed memory in the process for its next allocations, for programs
// that run compression jobs (the CLI, the worker); call first thing in main.
// glibc hands every block above its mmap threshold (at most 32 MiB: every
// weight matrix of a large model) back to the kernel on free, and the next
// allocation of the same size is faulted in again page by page, which on
// the VMs measured ran at 0.15-0.4 GB/s against ~10 GB/s for a copy into
// touched memory. A layer of a Llama-3-8B-shaped job allocates several GB
// of such blocks, per layer. With mmap off for allocations and the heap
// trimmed only past 2 GiB of free top, they are reused from the heap: a
// CPU GPTQ job of 8 layers of Llama-3.2-1B shapes took 113 s instead of
// 165 s, its peak RSS 11% higher and flat from 4 to 8 layers
// (docs/benchmarks.md). Returns false where the allocator is not glibc's,
// or when SHRINKRAY_KEEP_FREED_MEMORY=0 asks for the default behaviour.
bool KeepFreedMemory();

}  // namespace shrinkray
