// The Hessian preparation shared by the GPU GPTQ and SparseGPT solvers, as
// core/algo/hessian_inverse.{h,cc} computes it on the CPU: dead columns
// (diag(H) == 0: H_jj = 1, the solver zeroes W[:, j]), an optional act_order
// permutation (stable, descending diag), damping H += damp · mean(diag H) · I
// raised by `increment` until the factorisation succeeds, and the inverse
// factor Hinv = chol(chol_inverse(chol(H)), upper) in fp32, checked for
// non-finite entries and a non-positive diagonal.
//
// Two ways to the same factor (InverseFactorMethod, core/algo/hessian_inverse.h,
// which the CPU solvers share): the reference's chain (potrf, potri, potrf,
// 4n³/3 FLOPs) and the flipped Cholesky (potrf of the index-reversed H and
// trtri, 2n³/3 FLOPs), the same cuSOLVER calls as the CPU's LAPACK ones. In
// fp32 both are as close to the float64 factor (1e-7 to 4e-7 of max |U| on
// the tests' matrices) and differ from the CPU's in the last bits, as
// cuSOLVER's chain already does. Never factoring H^-1, the flipped one cannot
// fail where the chain's second potrf does: on a nearly singular H it may
// need fewer damping increments than the chain.
#pragma once

#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/algo/hessian_inverse.h"
#include "core/kernels/cuda/cuda_check.h"

namespace shrinkray {

class HessianInverseCuda {
 public:
  // Handles and workspaces are bound to `stream` (the current device).
  static absl::StatusOr<std::unique_ptr<HessianInverseCuda>> Create(cudaStream_t stream);
  HessianInverseCuda(const HessianInverseCuda&) = delete;
  HessianInverseCuda& operator=(const HessianInverseCuda&) = delete;

  // h: device [cols, cols] fp32 (not modified). damp and increment are the
  // caller's validated options (damp in [0, 1), increment >= 0; 0 = no
  // retries). Synchronises the stream (the diagonal and cuSOLVER's info are
  // needed on the host). On failure nothing is prepared (cols() == 0).
  absl::Status Prepare(const float* h, int cols, bool act_order, double damp, double increment,
                       InverseFactorMethod method);

  int cols() const { return cols_; }
  InverseFactorMethod method() const { return method_; }  // the last Prepare's
  bool act_order() const { return act_order_; }
  double damp_used() const { return damp_used_; }
  int damp_increments() const { return damp_increments_; }
  int dead_count() const { return dead_count_; }
  // perm[k] = original column processed k-th (identity without act_order).
  const std::vector<int32_t>& perm_host() const { return perm_host_; }
  const int32_t* perm() const { return perm_.data(); }
  // [cols] 1 for dead columns (original order).
  const uint8_t* dead() const { return dead_.data(); }
  // [cols, cols] row-major; the upper triangle holds U (the strict lower
  // triangle is stale: nothing may read it).
  const float* upper() const { return hinv_.data(); }

 private:
  explicit HessianInverseCuda(cudaStream_t stream) : stream_(stream) {}

  // One attempt at `damp` on hinv_ (a damped copy of hbase_): the factor in
  // hinv_ and the four info words (see info_) in info_.
  absl::Status Factor(cusolverDnHandle_t solver, int cols);
  // What the first nonzero info word says went wrong.
  std::string Explain(const int info[4], int cols) const;

  cudaStream_t stream_;
  InverseFactorMethod method_ = InverseFactorMethod::kCholeskyInverseChain;
  int cols_ = 0;
  bool act_order_ = false;
  double damp_used_ = 0.0;
  int damp_increments_ = 0;
  int dead_count_ = 0;
  std::vector<int32_t> perm_host_;

  DeviceBuffer<float> hbase_;  // permuted, dead-fixed H (index-reversed when flipped)
  DeviceBuffer<float> hinv_;   // the upper factor
  DeviceBuffer<float> solver_work_;
  std::vector<char> solver_host_work_;  // trtri's host workspace
  // chain: potrf, potri, potrf, check flag; flipped: potrf, trtri, 0, check flag
  DeviceBuffer<int> info_;
  DeviceBuffer<int32_t> perm_;
  DeviceBuffer<uint8_t> dead_;
};

namespace cuda_internal {

// Grows `buf` to at least `count` elements (contents are not kept).
template <typename T>
absl::Status Grow(DeviceBuffer<T>& buf, size_t count) {
  if (buf.size() >= count) return absl::OkStatus();
  buf.Reset();
  absl::StatusOr<DeviceBuffer<T>> b = DeviceBuffer<T>::Create(count);
  if (!b.ok()) return b.status();
  buf = std::move(b).value();
  return absl::OkStatus();
}

}  // namespace cuda_internal
}  // namespace shrinkray
