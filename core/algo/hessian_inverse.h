// The inverse-Hessian factor that GPTQ and SparseGPT sweep with:
//   H += damp · mean(diag H) · I;  Hinv = cholesky(cholesky_inverse(cholesky(H)), upper)
// in float32 (as the reference) or float64, by one of two routes to the same
// factor (InverseFactorMethod):
//  * chain: LAPACK potrf / potri / potrf, the reference's steps (4n³/3 FLOPs);
//  * flipped: with J the index reversal, J H J = R Rᵀ (R lower) gives
//    H = (J R J)(J R J)ᵀ with J R J upper, so H⁻¹ = (J R⁻¹ J)ᵀ (J R⁻¹ J), and
//    J R⁻¹ J, upper with a positive diagonal, is the unique cholesky(H⁻¹,
//    upper): potrf of the reversed H and trtri (2n³/3 FLOPs), no inverse to
//    factor again. In float32 its error against the float64 factor is
//    typically 1-2x the chain's, up to ~15x (4.5e-4 of max |U|) on a
//    rank-deficient H with the large-variance columns first (act_order with
//    fewer tokens than columns; docs/benchmarks.md), where GPTQ still flips
//    as many codes as by the chain. Not the reference's bits, nor always as
//    close, so the reference's route stays the default.
// When a factorisation fails (H not positive definite), the damping is raised
// by a fixed step and the factorisation retried, as GPTQModel's damp_auto_increment
// does (it retries while 0 < damp < 1; its QuantizeConfig default step is
// 0.0015).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace shrinkray {

enum class HessianPrecision {
  kFloat32,  // the reference's precision
  kFloat64,  // factorise in double; the sweep still runs in float32
};

enum class InverseFactorMethod {
  kCholeskyInverseChain,  // "chain": potrf, potri, potrf (the reference's; the default)
  kFlippedCholesky,       // "flipped": potrf of J H J, trtri, reversed back
};

// "chain", "flipped" (the recipe field inverse_factor's values).
std::string_view InverseFactorMethodName(InverseFactorMethod method);

// Why one try of `method` on an [n, n] H failed, from its LAPACK/cuSOLVER
// info words (chain: potrf, potri, potrf; flipped: potrf, trtri, unused),
// the first nonzero one explaining it; empty when all are zero. The CPU and
// GPU solvers report failures in these words.
std::string InverseFactorFailure(InverseFactorMethod method, int n, int info0, int info1, int info2);

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

// The damped inverse factor of h ([n, n], symmetric, dead columns already
// fixed) by `method`. percdamp in [0, 1); increment >= 0 (0: one try only).
// Returns FailedPrecondition when no damping below 1.0 gives a positive
// definite H.
absl::StatusOr<HessianInverse> InvertHessian(const std::vector<float>& h, int n, double percdamp, double increment,
                                             InverseFactorMethod method = InverseFactorMethod::kCholeskyInverseChain);
absl::StatusOr<HessianInverse> InvertHessian(const std::vector<double>& h, int n, double percdamp, double increment,
                                             InverseFactorMethod method = InverseFactorMethod::kCholeskyInverseChain);

}  // namespace algo_internal
}  // namespace shrinkray
