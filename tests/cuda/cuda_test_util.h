// Shared helpers for the CUDA tests: a fixture that SKIPS without a device,
// nmse-style comparisons and seeded random inputs.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "core/kernels/cuda/cuda_check.h"
#include "gtest/gtest.h"

namespace shrinkray::cuda_test {

// Unwraps a StatusOr in a test body (fails the test on error).
#define SR_ASSERT_OK_AND_ASSIGN(lhs, expr)                  \
  auto SR_T_CONCAT(sor_, __LINE__) = (expr);                \
  ASSERT_TRUE(SR_T_CONCAT(sor_, __LINE__).ok())             \
      << SR_T_CONCAT(sor_, __LINE__).status();              \
  lhs = std::move(SR_T_CONCAT(sor_, __LINE__)).value()
#define SR_T_CONCAT_INNER(a, b) a##b
#define SR_T_CONCAT(a, b) SR_T_CONCAT_INNER(a, b)
#define SR_ASSERT_OK(expr)                \
  do {                                    \
    const absl::Status st_ = (expr);      \
    ASSERT_TRUE(st_.ok()) << st_;         \
  } while (0)

// Skips (never passes) when the machine has no usable CUDA device.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const absl::StatusOr<int> count = CudaDeviceCount();
    ASSERT_TRUE(count.ok()) << count.status();
    if (*count == 0) GTEST_SKIP() << "no CUDA device";
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
  }
  void TearDown() override {
    if (stream_ != nullptr) {
      EXPECT_EQ(cudaStreamDestroy(stream_), cudaSuccess);
    }
  }
  cudaStream_t stream_ = nullptr;
};

struct Errors {
  double nmse = 0.0;     // sum (a-b)^2 / sum b^2
  double max_abs = 0.0;  // max |a - b|
  long worst = -1;
  bool finite = true;
};

// a: under test, b: reference.
inline Errors Compare(absl::Span<const float> a, absl::Span<const float> b) {
  Errors e;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
    if (std::abs(d) > e.max_abs || e.worst < 0) {
      e.max_abs = std::max(e.max_abs, std::abs(d));
      e.worst = static_cast<long>(i);
    }
    if (!std::isfinite(a[i])) e.finite = false;
  }
  e.nmse = den > 0.0 ? num / den : num;
  return e;
}

inline std::string Describe(const Errors& e) {
  return absl::StrFormat("nmse=%.3g max_abs=%.3g at %d finite=%d", e.nmse, e.max_abs, e.worst,
                         e.finite ? 1 : 0);
}

inline std::vector<float> RandomNormal(size_t n, float stddev, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

inline std::vector<float> RoundToBf16(absl::Span<const float> x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = __bfloat162float(__float2bfloat16_rn(x[i]));
  return r;
}

inline std::vector<__nv_bfloat16> ToBf16(absl::Span<const float> x) {
  std::vector<__nv_bfloat16> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = __float2bfloat16_rn(x[i]);
  return r;
}

inline std::vector<float> FromBf16(absl::Span<const __nv_bfloat16> x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = __bfloat162float(x[i]);
  return r;
}

// RoPE cos/sin tables [T, HD/2] for theta 10000 (angle t / 10000^(2i/HD)).
inline void RopeTables(int T, int HD, std::vector<float>* cos_t, std::vector<float>* sin_t) {
  const int half = HD / 2;
  cos_t->assign(static_cast<size_t>(T) * half, 0.0f);
  sin_t->assign(cos_t->size(), 0.0f);
  for (int t = 0; t < T; ++t) {
    for (int i = 0; i < half; ++i) {
      const double angle = t / std::pow(10000.0, 2.0 * i / HD);
      (*cos_t)[static_cast<size_t>(t) * half + i] = static_cast<float>(std::cos(angle));
      (*sin_t)[static_cast<size_t>(t) * half + i] = static_cast<float>(std::sin(angle));
    }
  }
}

}  // namespace shrinkray::cuda_test
