// Shared by the GPU benchmark programs (plain main()s): status checks that
// print and return 1 from the enclosing function, and a flag cursor.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/kernels/cuda/cuda_check.h"

#define BENCH_CHECK_OK(expr)                                                        \
  do {                                                                              \
    const absl::Status bench_st_ = (expr);                                          \
    if (!bench_st_.ok()) {                                                          \
      std::fprintf(stderr, "error at %s:%d: %s\n", __FILE__, __LINE__,              \
                   std::string(bench_st_.ToString()).c_str());                      \
      return 1;                                                                     \
    }                                                                               \
  } while (0)

#define BENCH_ASSIGN_OR_FAIL(lhs, expr) \
  BENCH_ASSIGN_OR_FAIL_IMPL(BENCH_CAT(bench_sor_, __LINE__), lhs, expr)
#define BENCH_ASSIGN_OR_FAIL_IMPL(tmp, lhs, expr)                                   \
  auto tmp = (expr);                                                                \
  if (!tmp.ok()) {                                                                  \
    std::fprintf(stderr, "error at %s:%d: %s\n", __FILE__, __LINE__,                \
                 std::string(tmp.status().ToString()).c_str());                     \
    return 1;                                                                       \
  }                                                                                 \
  lhs = std::move(tmp).value()
#define BENCH_CAT_INNER(a, b) a##b
#define BENCH_CAT(a, b) BENCH_CAT_INNER(a, b)

namespace shrinkray::bench {

// The H100 SXM's nominal dense bf16 tensor-core peak (the MFU denominator).
constexpr double kBf16PeakNominal = 989e12;

// Walks argv: `while (flags.Next())` then `flags.Is("--x")` and `flags.Int(&v)`
// / `flags.Double(&v)` / `flags.String(&v)` for the value that follows (false
// when it is missing).
class FlagCursor {
 public:
  FlagCursor(int argc, char** argv) : argc_(argc), argv_(argv) {}
  bool Next() { return ++i_ < argc_; }
  const char* name() const { return argv_[i_]; }
  bool Is(const char* flag) const { return std::string(argv_[i_]) == flag; }
  bool Int(int* out) { return Value([&](const char* v) { *out = std::atoi(v); }); }
  bool Double(double* out) { return Value([&](const char* v) { *out = std::atof(v); }); }
  bool Uint64(uint64_t* out) {
    return Value([&](const char* v) { *out = std::strtoull(v, nullptr, 10); });
  }
  bool String(std::string* out) { return Value([&](const char* v) { *out = v; }); }

 private:
  template <typename F>
  bool Value(F set) {
    if (i_ + 1 >= argc_) return false;
    set(argv_[++i_]);
    return true;
  }
  int argc_;
  char** argv_;
  int i_ = 0;
};

// Reads `--name value` pairs into the named ints; false, after a message
// naming `program` and the flag, on an unknown flag or a value missing or
// below 1.
inline bool PositiveIntFlags(int argc, char** argv, const char* program,
                             std::initializer_list<std::pair<const char*, int*>> named) {
  FlagCursor flags(argc, argv);
  while (flags.Next()) {
    const char* flag = flags.name();
    bool ok = false;
    for (const auto& [name, value] : named) {
      if (flags.Is(name)) {
        ok = flags.Int(value) && *value >= 1;
        break;
      }
    }
    if (!ok) {
      std::fprintf(stderr, "%s: bad or unknown flag %s\n", program, flag);
      return false;
    }
  }
  return true;
}

// Device 0 made current and a new stream on it (these benches run on one
// card); FailedPrecondition when the machine has no CUDA device.
inline absl::StatusOr<cudaStream_t> FirstDeviceStream() {
  absl::StatusOr<int> devices = CudaDeviceCount();
  if (!devices.ok()) return devices.status();
  if (*devices == 0) return absl::FailedPreconditionError("no CUDA device");
  absl::Status st = UseCudaDevice(0);
  if (!st.ok()) return st;
  cudaStream_t stream = nullptr;
  st = CudaStatus(cudaStreamCreate(&stream), "cudaStreamCreate", __FILE__, __LINE__);
  if (!st.ok()) return st;
  return stream;
}

// The best milliseconds (CUDA events on `stream`) of `reps` calls of `run`,
// after one warm-up call; the first failure of `run` or of a kernel instead.
inline absl::StatusOr<double> BestMs(const std::function<absl::Status()>& run, int reps, cudaStream_t stream) {
  cudaEvent_t start = nullptr, stop = nullptr;
  if (cudaEventCreate(&start) != cudaSuccess || cudaEventCreate(&stop) != cudaSuccess) {
    return absl::InternalError("BestMs: cudaEventCreate failed");
  }
  absl::Status status = run();
  double best = 1e30;
  for (int r = 0; status.ok() && r < reps; ++r) {
    (void)cudaEventRecord(start, stream);
    status = run();
    (void)cudaEventRecord(stop, stream);
    if (cudaEventSynchronize(stop) != cudaSuccess) status = absl::InternalError("BestMs: a kernel failed");
    float ms = 0.0f;
    (void)cudaEventElapsedTime(&ms, start, stop);
    best = std::min(best, static_cast<double>(ms));
  }
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  if (!status.ok()) return status;
  return best;
}

}  // namespace shrinkray::bench
