#include "core/train/grad_clip.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace shrinkray::train {

template <typename T>
double GlobalGradNorm(std::span<const T> grads) {
  double sum_sq = 0.0;
  for (const T g : grads) sum_sq += static_cast<double>(g) * g;
  return std::sqrt(sum_sq);
}

template <typename T>
absl::StatusOr<double> ClipGradNorm(std::span<T> grads, double max_norm) {
  if (!(max_norm > 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClipGradNorm: max_norm = ", max_norm, " must be > 0"));
  }
  const double norm = GlobalGradNorm<T>(grads);
  if (!std::isfinite(norm)) return norm;
  // The 1e-6 as in PyTorch, so a norm at max_norm is left (almost) as is.
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    for (T& g : grads) g = static_cast<T>(g * coef);
  }
  return norm;
}

template double GlobalGradNorm<float>(std::span<const float>);
template double GlobalGradNorm<double>(std::span<const double>);
template absl::StatusOr<double> ClipGradNorm<float>(std::span<float>, double);
template absl::StatusOr<double> ClipGradNorm<double>(std::span<double>, double);

}  // namespace shrinkray::train
