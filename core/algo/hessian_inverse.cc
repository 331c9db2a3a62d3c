#include "core/algo/hessian_inverse.h"

#include <lapacke.h>

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace shrinkray::algo_internal {
namespace {

template <typename T>
std::vector<uint8_t> FixDeadImpl(std::vector<T>& h, int n) {
  std::vector<uint8_t> dead(n, 0);
  for (int j = 0; j < n; ++j) {
    T& d = h[static_cast<size_t>(j) * n + j];
    if (d == T(0)) {
      dead[j] = 1;
      d = T(1);
    }
  }
  return dead;
}

template <typename T>
std::vector<T> PermuteImpl(const std::vector<T>& h, int n, const std::vector<int>& perm) {
  std::vector<T> out(static_cast<size_t>(n) * n);
  for (int i = 0; i < n; ++i) {
    const T* src = h.data() + static_cast<size_t>(perm[i]) * n;
    T* dst = out.data() + static_cast<size_t>(i) * n;
    for (int j = 0; j < n; ++j) dst[j] = src[perm[j]];
  }
  return out;
}

lapack_int Potrf(float* a, int n) { return LAPACKE_spotrf(LAPACK_COL_MAJOR, 'L', n, a, n); }
lapack_int Potrf(double* a, int n) { return LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', n, a, n); }
lapack_int Potri(float* a, int n) { return LAPACKE_spotri(LAPACK_COL_MAJOR, 'L', n, a, n); }
lapack_int Potri(double* a, int n) { return LAPACKE_dpotri(LAPACK_COL_MAJOR, 'L', n, a, n); }

// One try of the chain at a given damping. The buffer is row-major and
// symmetric, so LAPACK's column-major lower triangle is our upper triangle.
// potri fills only that triangle, which is all the second potrf reads; its
// factor L2 (H⁻¹ = L2 L2ᵀ) read row-major is U = L2ᵀ = cholesky(H⁻¹, upper).
template <typename T>
bool TryChain(const std::vector<T>& h, int n, T damp_value, std::vector<T>& work, std::string* why) {
  work = h;
  for (int j = 0; j < n; ++j) work[static_cast<size_t>(j) * n + j] += damp_value;
  lapack_int info = Potrf(work.data(), n);
  if (info != 0) {
    *why = absl::StrCat("cholesky(H) failed at column ", info - 1, " (info ", info, ")");
    return false;
  }
  info = Potri(work.data(), n);
  if (info != 0) {
    *why = absl::StrCat("cholesky_inverse failed (info ", info, ")");
    return false;
  }
  info = Potrf(work.data(), n);
  if (info != 0) {
    *why = absl::StrCat("cholesky(H^-1) failed at column ", info - 1, " (info ", info, ")");
    return false;
  }
  for (int i = 0; i < n; ++i) {
    const T* row = work.data() + static_cast<size_t>(i) * n;
    for (int j = i; j < n; ++j) {
      if (!std::isfinite(row[j]) || (j == i && !(row[j] > T(0)))) {
        *why = absl::StrCat("non-finite or non-positive entry in the inverse factor at [", i, ", ", j, "]");
        return false;
      }
    }
  }
  return true;
}

template <typename T>
absl::StatusOr<HessianInverse> InvertImpl(const std::vector<T>& h, int n, double percdamp, double increment) {
  // mean(diag H) in T, then damp · mean in T: a Python float times a float32
  // tensor is computed in float32 by torch.
  double diag_sum = 0.0;
  for (int j = 0; j < n; ++j) diag_sum += static_cast<double>(h[static_cast<size_t>(j) * n + j]);
  const T mean = static_cast<T>(diag_sum / n);
  std::vector<T> work;
  std::string why;
  HessianInverse result;
  double damp = percdamp;
  int tries = 0;
  // GPTQModel's loop: retry while damp < 1 (the damp itself accumulates in
  // double, as Python's float does).
  while (damp < 1.0) {
    if (TryChain(h, n, static_cast<T>(damp) * mean, work, &why)) {
      result.upper.assign(static_cast<size_t>(n) * n, 0.0f);
      for (int i = 0; i < n; ++i) {
        const T* src = work.data() + static_cast<size_t>(i) * n;
        float* dst = result.upper.data() + static_cast<size_t>(i) * n;
        for (int j = i; j < n; ++j) dst[j] = static_cast<float>(src[j]);
      }
      result.damp_used = damp;
      result.damp_increments = tries;
      return result;
    }
    if (increment <= 0.0) break;
    damp += increment;
    ++tries;
  }
  return absl::FailedPreconditionError(absl::StrFormat(
      "Hessian is not positive definite: %s; damping raised %d time(s) from %g by %g up to %g without success "
      "(more or more varied calibration samples, or a larger damp, are needed)",
      why, tries, percdamp, increment, damp));
}

}  // namespace

std::vector<uint8_t> FixDeadColumns(std::vector<float>& h, int n) { return FixDeadImpl(h, n); }
std::vector<uint8_t> FixDeadColumns(std::vector<double>& h, int n) { return FixDeadImpl(h, n); }

std::vector<float> PermuteSymmetric(const std::vector<float>& h, int n, const std::vector<int>& perm) {
  return PermuteImpl(h, n, perm);
}
std::vector<double> PermuteSymmetric(const std::vector<double>& h, int n, const std::vector<int>& perm) {
  return PermuteImpl(h, n, perm);
}

absl::StatusOr<HessianInverse> InvertHessian(const std::vector<float>& h, int n, double percdamp, double increment) {
  return InvertImpl(h, n, percdamp, increment);
}
absl::StatusOr<HessianInverse> InvertHessian(const std::vector<double>& h, int n, double percdamp, double increment) {
  return InvertImpl(h, n, percdamp, increment);
}

}  // namespace shrinkray::algo_internal
