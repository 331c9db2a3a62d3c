#include "core/algo/hessian_inverse.h"

#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace shrinkray {
namespace algo_internal {
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

lapack_int Potrf(float* a, int n, char uplo) { return LAPACKE_spotrf(LAPACK_COL_MAJOR, uplo, n, a, n); }
lapack_int Potrf(double* a, int n, char uplo) { return LAPACKE_dpotrf(LAPACK_COL_MAJOR, uplo, n, a, n); }
lapack_int Potri(float* a, int n) { return LAPACKE_spotri(LAPACK_COL_MAJOR, 'L', n, a, n); }
lapack_int Potri(double* a, int n) { return LAPACKE_dpotri(LAPACK_COL_MAJOR, 'L', n, a, n); }
lapack_int TrtriUpper(float* a, int n) { return LAPACKE_strtri(LAPACK_COL_MAJOR, 'U', 'N', n, a, n); }
lapack_int TrtriUpper(double* a, int n) { return LAPACKE_dtrtri(LAPACK_COL_MAJOR, 'U', 'N', n, a, n); }

// The factor of the damped H in the upper triangle of `work` (row-major), or
// the words of the step that failed in `why`. `work` holds H (chain) or
// J H J, H's buffer reversed (flipped).
//
// chain: LAPACK's column-major lower triangle is our upper triangle. potri
// fills only that triangle, which is all the second potrf reads; its factor
// L2 (H⁻¹ = L2 L2ᵀ) read row-major is U = L2ᵀ = cholesky(H⁻¹, upper).
//
// flipped: the reversed buffer (a[i][j] = h[n-1-i][n-1-j]) is
// A = J H J. potrf of LAPACK's upper triangle gives A = Sᵀ S (S upper), which
// our lower triangle holds as R = Sᵀ (A = R Rᵀ); trtri of the same triangle
// leaves S⁻¹ there, read row-major R⁻¹; reversing the buffer again puts
// J R⁻¹ J = U in our upper triangle (the header has why that is the factor).
// The GPU solver (hessian_inverse_cuda.cc) makes the same calls.
template <typename T>
bool TryFactor(InverseFactorMethod method, int n, std::vector<T>& work, std::string* why) {
  int info[3] = {0, 0, 0};
  if (method == InverseFactorMethod::kCholeskyInverseChain) {
    if ((info[0] = Potrf(work.data(), n, 'L')) == 0 && (info[1] = Potri(work.data(), n)) == 0) {
      info[2] = Potrf(work.data(), n, 'L');
    }
  } else {
    if ((info[0] = Potrf(work.data(), n, 'U')) == 0) info[1] = TrtriUpper(work.data(), n);
  }
  *why = InverseFactorFailure(method, n, info[0], info[1], info[2]);
  if (!why->empty()) return false;
  if (method == InverseFactorMethod::kFlippedCholesky) std::reverse(work.begin(), work.end());
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
absl::StatusOr<HessianInverse> InvertImpl(const std::vector<T>& h, int n, double percdamp, double increment,
                                           InverseFactorMethod method) {
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
    // The diagonal is where it was in the reversed buffer.
    if (method == InverseFactorMethod::kFlippedCholesky) {
      work.assign(h.rbegin(), h.rend());
    } else {
      work = h;
    }
    const T damp_value = static_cast<T>(damp) * mean;
    for (int j = 0; j < n; ++j) work[static_cast<size_t>(j) * n + j] += damp_value;
    if (TryFactor(method, n, work, &why)) {
      if constexpr (std::is_same_v<T, float>) {
        // The factor is already where it goes: no second n² buffer.
        for (int i = 1; i < n; ++i) std::fill_n(work.data() + static_cast<size_t>(i) * n, i, 0.0f);
        result.upper = std::move(work);
      } else {
        result.upper.assign(static_cast<size_t>(n) * n, 0.0f);
        for (int i = 0; i < n; ++i) {
          const T* src = work.data() + static_cast<size_t>(i) * n;
          float* dst = result.upper.data() + static_cast<size_t>(i) * n;
          for (int j = i; j < n; ++j) dst[j] = static_cast<float>(src[j]);
        }
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

absl::StatusOr<HessianInverse> InvertHessian(const std::vector<float>& h, int n, double percdamp, double increment,
                                             InverseFactorMethod method) {
  return InvertImpl(h, n, percdamp, increment, method);
}
absl::StatusOr<HessianInverse> InvertHessian(const std::vector<double>& h, int n, double percdamp, double increment,
                                             InverseFactorMethod method) {
  return InvertImpl(h, n, percdamp, increment, method);
}

}  // namespace algo_internal

std::string_view InverseFactorMethodName(InverseFactorMethod method) {
  return method == InverseFactorMethod::kFlippedCholesky ? "flipped" : "chain";
}

std::string InverseFactorFailure(InverseFactorMethod method, int n, int info0, int info1, int info2) {
  // A failed step leaves garbage for the later ones, so the first nonzero
  // info is the one that explains the failure.
  if (method == InverseFactorMethod::kCholeskyInverseChain) {
    if (info0 != 0) return absl::StrCat("cholesky(H) failed at column ", info0 - 1, " (info ", info0, ")");
    if (info1 != 0) return absl::StrCat("cholesky_inverse failed (info ", info1, ")");
    if (info2 != 0) return absl::StrCat("cholesky(H^-1) failed at column ", info2 - 1, " (info ", info2, ")");
    return "";
  }
  // potrf of J H J stops at its leading minor of order info: H's trailing
  // block from column n - info is not positive definite (where the chain
  // names the first column whose leading block is not; the same column when
  // one diagonal entry is the trouble).
  if (info0 != 0) {
    return absl::StrCat("cholesky(H) failed: the trailing block from column ", n - info0,
                        " is not positive definite (flipped factorisation, info ", info0, ")");
  }
  if (info1 != 0) return absl::StrCat("triangular inverse failed (info ", info1, ")");
  return "";
}

}  // namespace shrinkray
