// Shared by the GPU benchmark programs (plain main()s): status checks that
// print and return 1 from the enclosing function, and a flag cursor.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/status/status.h"

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

}  // namespace shrinkray::bench
