// Central finite differences in float64 for the core/train gradient checks.
//
// Tolerance: the checked functions are smooth, with O(1) inputs, values and
// derivatives. With h = 1e-6 the central difference's truncation error is
// about h^2/6 |f'''| ~ 1e-12 and its rounding error about eps * |f| / h ~
// 2e-16 * 10 / 1e-6 = 2e-9, so |analytic - numeric| <= 1e-7 + 1e-6 |numeric|
// leaves ~50x headroom, while any wrong term (a missing factor, a dropped
// branch) moves a gradient by far more than that.
#pragma once

#include <cmath>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace shrinkray::testing {

inline constexpr double kFdStep = 1e-6;
inline constexpr double kFdAbsTol = 1e-7;
inline constexpr double kFdRelTol = 1e-6;

// Checks grad[i] == d loss / d x[i] for every i by central differences;
// `loss` reads x (which is perturbed in place and restored). Also asserts the
// gradient is not trivially zero, so a check cannot pass vacuously.
inline void ExpectGradientMatchesFd(std::span<double> x, std::span<const double> grad,
                                    const std::function<double()>& loss,
                                    const std::string& what) {
  ASSERT_EQ(x.size(), grad.size()) << what;
  int failures = 0;
  double max_abs = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + kFdStep;
    const double plus = loss();
    x[i] = saved - kFdStep;
    const double minus = loss();
    x[i] = saved;
    const double numeric = (plus - minus) / (2 * kFdStep);
    max_abs = std::max(max_abs, std::abs(grad[i]));
    if (std::abs(grad[i] - numeric) > kFdAbsTol + kFdRelTol * std::abs(numeric)) {
      if (++failures <= 5) {
        ADD_FAILURE() << what << "[" << i << "]: analytic " << grad[i] << " vs numeric "
                      << numeric;
      }
    }
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << x.size() << " entries differ";
  EXPECT_GT(max_abs, 1e-3) << what << ": the gradient is (almost) zero everywhere";
}

inline std::vector<double> RandomVector(size_t n, std::mt19937& rng, double mean = 0.0,
                                        double sd = 1.0) {
  std::normal_distribution<double> dist(mean, sd);
  std::vector<double> v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

// sum_i out[i] * r[i]: a scalar whose gradient w.r.t. out is r, so that a
// backward fed dout = r must return the gradient of this scalar.
inline double Project(const std::vector<double>& out, const std::vector<double>& r) {
  double s = 0.0;
  for (size_t i = 0; i < out.size(); ++i) s += out[i] * r[i];
  return s;
}

}  // namespace shrinkray::testing
