// The two routes to the solvers' inverse factor (core/algo/hessian_inverse.h):
// the reference's chain and the flipped Cholesky, each against the float64
// reference (algo_reference.h, which shares no code with core/algo), in float32
// and float64; how a failure is named; the damping retries.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/algo/hessian_inverse.h"
#include "algo_reference.h"

namespace shrinkray {
namespace {

using algo_internal::InvertHessian;

constexpr InverseFactorMethod kMethods[] = {InverseFactorMethod::kCholeskyInverseChain,
                                            InverseFactorMethod::kFlippedCholesky};

// max |U - ref| / max |ref| over the upper triangle; the strict lower
// triangle must be exactly zero.
double RelativeDeviation(const std::vector<float>& u, const std::vector<double>& ref, int n) {
  double worst = 0.0, scale = 0.0;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      const size_t k = static_cast<size_t>(i) * n + j;
      if (j < i) {
        EXPECT_EQ(u[k], 0.0f) << "lower triangle at [" << i << ", " << j << "]";
        continue;
      }
      scale = std::max(scale, std::fabs(ref[k]));
      worst = std::max(worst, std::fabs(static_cast<double>(u[k]) - ref[k]));
    }
  }
  return worst / scale;
}

struct Size {
  const char* name;
  int n;
  int tokens;
};

class InverseFactorTest : public ::testing::TestWithParam<Size> {};

// Correlated, unevenly scaled columns (MakeProblem's H): condition ~1e2-1e3
// after 1% damping. The float32 factors sit ~1e-6 from the float64 one; a
// wrong triangle, order or reversal would be O(1) off.
TEST_P(InverseFactorTest, BothMethodsMatchTheFloat64Reference) {
  const Size& s = GetParam();
  algo_test::Problem p = algo_test::MakeProblem(1, s.n, s.tokens, 77 + s.n);
  const std::vector<double> ref = algo_test::RefHinvUpper(algo_test::ToDouble(p.h), s.n, 0.01);
  ASSERT_FALSE(ref.empty());
  for (const InverseFactorMethod method : kMethods) {
    const std::string name(InverseFactorMethodName(method));
    auto f32 = InvertHessian(p.h, s.n, 0.01, 0.0, method);
    ASSERT_TRUE(f32.ok()) << name << ": " << f32.status();
    EXPECT_EQ(f32->damp_increments, 0);
    const double d32 = RelativeDeviation(f32->upper, ref, s.n);
    auto f64 = InvertHessian(algo_test::ToDouble(p.h), s.n, 0.01, 0.0, method);
    ASSERT_TRUE(f64.ok()) << name << ": " << f64.status();
    // float64 factors, stored as float32: only the final rounding.
    const double d64 = RelativeDeviation(f64->upper, ref, s.n);
    std::printf("[inverse factor %s n=%d] %s: float32 %.3g, float64 %.3g of max |U|\n", s.name, s.n, name.c_str(),
                d32, d64);
    EXPECT_LE(d32, 2e-5) << name;
    EXPECT_LE(d64, 1e-7) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, InverseFactorTest,
                         ::testing::Values(Size{"one", 1, 4}, Size{"two", 2, 8}, Size{"odd", 7, 28},
                                           Size{"rank_deficient", 160, 96}, Size{"blocked", 300, 1200}),
                         [](const ::testing::TestParamInfo<Size>& info) { return std::string(info.param.name); });

// H = I but for column 5, negative beyond the damping: each method names
// column 5 in its own words (the chain: the first column whose leading block
// is not positive definite; flipped: where the trailing block starts).
TEST(InverseFactorFailureTest, EachMethodNamesTheColumn) {
  const int n = 16, bad = 5;
  std::vector<float> h(static_cast<size_t>(n) * n, 0.0f);
  for (int j = 0; j < n; ++j) h[static_cast<size_t>(j) * n + j] = j == bad ? -1.0f : 1.0f;
  auto chain = InvertHessian(h, n, 0.01, 0.0, InverseFactorMethod::kCholeskyInverseChain);
  ASSERT_EQ(chain.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(chain.status().message()).find("cholesky(H) failed at column 5 (info 6)"), std::string::npos)
      << chain.status();
  auto flipped = InvertHessian(h, n, 0.01, 0.0, InverseFactorMethod::kFlippedCholesky);
  ASSERT_EQ(flipped.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(flipped.status().message())
                .find("cholesky(H) failed: the trailing block from column 5 is not positive definite "
                      "(flipped factorisation, info 11)"),
            std::string::npos)
      << flipped.status();
  EXPECT_EQ(InverseFactorFailure(InverseFactorMethod::kFlippedCholesky, n, 0, 0, 0), "");
  EXPECT_EQ(InverseFactorFailure(InverseFactorMethod::kFlippedCholesky, n, 0, 3, 0), "triangular inverse failed (info 3)");
  EXPECT_EQ(InverseFactorFailure(InverseFactorMethod::kCholeskyInverseChain, n, 0, 0, 2),
            "cholesky(H^-1) failed at column 1 (info 2)");
}

// Column 3's diagonal is -0.03: the damping (percdamp · mean diag, mean
// 0.87125) lifts it only at 0.04, after three increments of 0.01, by either
// method; the factor is then diag(1 / sqrt(H_jj + damp · mean)).
TEST(InverseFactorFailureTest, DampingRetriesCountTheSameForBothMethods) {
  const int n = 8;
  std::vector<float> h(static_cast<size_t>(n) * n, 0.0f);
  for (int j = 0; j < n; ++j) h[static_cast<size_t>(j) * n + j] = j == 3 ? -0.03f : 1.0f;
  for (const InverseFactorMethod method : kMethods) {
    auto f = InvertHessian(h, n, 0.01, 0.01, method);
    ASSERT_TRUE(f.ok()) << InverseFactorMethodName(method) << ": " << f.status();
    EXPECT_EQ(f->damp_increments, 3);
    EXPECT_NEAR(f->damp_used, 0.04, 1e-12);
    const float damp_value = static_cast<float>(f->damp_used) * 0.87125f;
    for (int i = 0; i < n; ++i) {
      for (int j = i; j < n; ++j) {
        const float want = i == j ? 1.0f / std::sqrt(h[static_cast<size_t>(i) * n + i] + damp_value) : 0.0f;
        EXPECT_NEAR(f->upper[static_cast<size_t>(i) * n + j], want, 1e-5f * std::fabs(want) + 1e-30f)
            << InverseFactorMethodName(method) << " [" << i << ", " << j << "]";
      }
    }
  }
}

}  // namespace
}  // namespace shrinkray
