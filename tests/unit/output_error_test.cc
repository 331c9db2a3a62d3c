// RelativeOutputError (core/pipeline/apply_stages.h), which every compressed
// matrix's reported error comes from, against a direct double-precision
// tr((W−Q) H (W−Q)ᵀ) / tr(W H Wᵀ): widths under one column tile, exactly
// tiles, and tiles with a short last one (the trace multiplies only the
// tiles on and right of H's diagonal).
#include <random>
#include <utility>
#include <vector>

#include "core/pipeline/apply_stages.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

double DirectTrace(const std::vector<double>& a, int rows, int cols, const std::vector<double>& h) {
  double sum = 0.0;
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < cols; ++i) {
      double ah = 0.0;
      for (int j = 0; j < cols; ++j) ah += h[static_cast<size_t>(i) * cols + j] * a[static_cast<size_t>(r) * cols + j];
      sum += a[static_cast<size_t>(r) * cols + i] * ah;
    }
  }
  return sum;
}

TEST(OutputErrorTest, MatchesTheDirectQuadraticForms) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const auto& [rows, cols] : std::vector<std::pair<int, int>>{{5, 3}, {37, 512}, {9, 1024}, {23, 1300}}) {
    std::vector<float> w(static_cast<size_t>(rows) * cols), q(w.size());
    for (size_t i = 0; i < w.size(); ++i) {
      w[i] = normal(rng);
      q[i] = w[i] + 0.05f * normal(rng);
    }
    // H = XᵀX / n with correlated channels (a shared low-rank part).
    const int n = 64;
    std::vector<float> x(static_cast<size_t>(n) * cols);
    for (int t = 0; t < n; ++t) {
      const float shared = normal(rng);
      for (int c = 0; c < cols; ++c) x[static_cast<size_t>(t) * cols + c] = normal(rng) + shared * (1.0f + c % 3);
    }
    std::vector<float> h(static_cast<size_t>(cols) * cols);
    std::vector<double> hd(h.size());
    for (int i = 0; i < cols; ++i) {
      for (int j = i; j < cols; ++j) {
        double s = 0.0;
        for (int t = 0; t < n; ++t) s += static_cast<double>(x[t * cols + i]) * x[t * cols + j];
        const float v = static_cast<float>(s / n);
        h[static_cast<size_t>(i) * cols + j] = h[static_cast<size_t>(j) * cols + i] = v;
        hd[static_cast<size_t>(i) * cols + j] = hd[static_cast<size_t>(j) * cols + i] = v;
      }
    }
    std::vector<double> wd(w.begin(), w.end()), dd(w.size());
    for (size_t i = 0; i < w.size(); ++i) dd[i] = static_cast<double>(w[i] - q[i]);
    const double expected = DirectTrace(dd, rows, cols, hd) / DirectTrace(wd, rows, cols, hd);
    const double got = RelativeOutputError(w, q, rows, cols, h);
    EXPECT_GT(expected, 1e-4) << rows << "x" << cols;
    EXPECT_NEAR(got / expected, 1.0, 1e-5) << rows << "x" << cols << ": " << got << " vs " << expected;
  }
}

TEST(OutputErrorTest, ExactWeightsAndZeroFormsGiveZero) {
  const int rows = 3, cols = 700;
  std::vector<float> w(static_cast<size_t>(rows) * cols), h(static_cast<size_t>(cols) * cols, 0.0f);
  for (size_t i = 0; i < w.size(); ++i) w[i] = 0.001f * static_cast<float>(i % 97) - 0.04f;
  for (int i = 0; i < cols; ++i) h[static_cast<size_t>(i) * cols + i] = 1.0f + 0.01f * i;
  EXPECT_EQ(RelativeOutputError(w, w, rows, cols, h), 0.0);
  // W H Wᵀ = 0 (H zero): 0, not a division by zero.
  std::vector<float> zero_h(h.size(), 0.0f), q(w.size(), 0.0f);
  EXPECT_EQ(RelativeOutputError(w, q, rows, cols, zero_h), 0.0);
  // H diagonal: the weighted squared differences, here W against 0 → 1.
  EXPECT_NEAR(RelativeOutputError(w, q, rows, cols, h), 1.0, 1e-12);
}

}  // namespace
}  // namespace shrinkray
