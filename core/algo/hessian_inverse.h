// The inverse-Hessian factor that GPTQ and SparseGPT sweep with:
//   H += damp · mean(diag H) · I;  Hinv = cholesky(cholesky_inverse(cholesky(H)), upper)
// via LAPACK potrf / potri / potrf, in float32 (as the reference) or float64.
// When a factorisation fails (H not positive definite), the damping is raised
// by a fixed step and the chain retried, as GPTQModel's damp_auto_increment
// does (it retries while 0 < damp < 1; its QuantizeConfig default step is
// 0.0015).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace shrinkray {

enum class HessianPrecision {
  kFloat32,  // the reference's precision
  kFloat64,  // factorise in double; the sweep still runs in float32
};

struct HessianInverse {
  // [n, n] row-major upper-triangular U with H⁻¹ = Uᵀ U; the strict lower
  // triangle is zero. Always float32: the column sweep runs in float32.
  std::vector<float> upper;
  double damp_used = 0.0;  // the percdamp that succeeded
  int damp_increments = 0;
};

namespace algo_internal {

// Marks columns with diag(H) == 0 as dead and sets their H_jj = 1 (reference
// step 2). Returns the dead flags [n].
std::vector<uint8_t> FixDeadColumns(std::vector<float>& h, int n);
std::vector<uint8_t> FixDeadColumns(std::vector<double>& h, int n);

// Symmetric permutation H[perm][:, perm].
std::vector<float> PermuteSymmetric(const std::vector<float>& h, int n, const std::vector<int>& perm);
std::vector<double> PermuteSymmetric(const std::vector<double>& h, int n, const std::vector<int>& perm);

// The damped Cholesky chain on h ([n, n], symmetric, dead columns already
// fixed). percdamp in [0, 1); increment >= 0 (0: one try only). Returns
// FailedPrecondition when no damping below 1.0 gives a positive definite H.
absl::StatusOr<HessianInverse> InvertHessian(const std::vector<float>& h, int n, double percdamp, double increment);
absl::StatusOr<HessianInverse> InvertHessian(const std::vector<double>& h, int n, double percdamp, double increment);

}  // namespace algo_internal
}  // namespace shrinkray
