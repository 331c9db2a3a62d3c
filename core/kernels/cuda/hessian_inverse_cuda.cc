#include "core/kernels/cuda/hessian_inverse_cuda.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/kernels/cuda/blas.h"
#include "core/kernels/cuda/hessian_inverse_cuda_launch.h"

namespace shrinkray {

using cuda_internal::Grow;

absl::StatusOr<std::unique_ptr<HessianInverseCuda>> HessianInverseCuda::Create(cudaStream_t stream) {
  std::unique_ptr<HessianInverseCuda> p(new HessianInverseCuda(stream));
  // Create the handle now so that a missing library fails here, early.
  SR_CUDA_ASSIGN_OR_RETURN(cusolverDnHandle_t solver, CusolverHandleFor(stream));
  (void)solver;
  SR_STATUS_RETURN_IF_ERROR(Grow(p->info_, 4));
  return p;
}

absl::Status HessianInverseCuda::Prepare(const float* h, int cols, bool act_order, double damp,
                                         double increment, InverseFactorMethod method) {
  if (cols <= 0 || h == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("PrepareHessian: bad cols ", cols));
  }
  cols_ = 0;  // not prepared until this succeeds
  method_ = method;
  const size_t n2 = static_cast<size_t>(cols) * cols;
  SR_STATUS_RETURN_IF_ERROR(Grow(hbase_, n2));
  SR_STATUS_RETURN_IF_ERROR(Grow(hinv_, n2));
  SR_STATUS_RETURN_IF_ERROR(Grow(perm_, static_cast<size_t>(cols)));
  SR_STATUS_RETURN_IF_ERROR(Grow(dead_, static_cast<size_t>(cols)));

  // Dead columns and act_order on the host from diag(H): cols floats.
  std::vector<float> diag(cols);
  SR_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(diag.data(), sizeof(float), h,
                                            (static_cast<size_t>(cols) + 1) * sizeof(float),
                                            sizeof(float), cols, cudaMemcpyDeviceToHost,
                                            stream_));
  SR_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  std::vector<uint8_t> dead(cols, 0);
  dead_count_ = 0;
  for (int j = 0; j < cols; ++j) {
    // A Gram matrix with a non-finite entry has one on its diagonal (x_i or
    // x_j is), so this catches a NaN or inf in a Hessian that only the
    // device holds (the host checks the whole matrix when it has it).
    if (!std::isfinite(diag[j])) {
      return absl::InvalidArgumentError(absl::StrCat("h: non-finite value ", static_cast<double>(diag[j]), " at [",
                                                     j, ", ", j, "]"));
    }
    if (diag[j] == 0.0f) {
      dead[j] = 1;
      diag[j] = 1.0f;
      ++dead_count_;
    }
  }
  perm_host_.resize(cols);
  std::iota(perm_host_.begin(), perm_host_.end(), 0);
  if (act_order) {
    // Stable, descending: the CPU solver's order (ties keep column order).
    std::stable_sort(perm_host_.begin(), perm_host_.end(),
                     [&](int a, int b) { return diag[a] > diag[b]; });
  }
  SR_STATUS_RETURN_IF_ERROR(dead_.CopyFromHost(dead, stream_));
  SR_STATUS_RETURN_IF_ERROR(perm_.CopyFromHost(perm_host_, stream_));
  SR_CUDA_RETURN_IF_ERROR(
      kernels::LaunchHessianPermute(hbase_.data(), h, cols, perm_.data(), dead_.data(),
                                    method_ == InverseFactorMethod::kFlippedCholesky, stream_));

  SR_CUDA_ASSIGN_OR_RETURN(cusolverDnHandle_t solver, CusolverHandleFor(stream_));
  const double damp0 = damp;
  int tries = 0;
  std::string why;
  while (damp < 1.0) {
    SR_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(hinv_.data(), hbase_.data(), n2 * sizeof(float),
                                            cudaMemcpyDeviceToDevice, stream_));
    SR_STATUS_RETURN_IF_ERROR(info_.Memset(0, stream_));
    // Flipped, the diagonal is summed in reverse order: in double, then
    // rounded to fp32, so the mean may differ from the chain's by an ulp.
    SR_CUDA_RETURN_IF_ERROR(
        kernels::LaunchHessianDamp(hinv_.data(), cols, static_cast<float>(damp), stream_));
    SR_STATUS_RETURN_IF_ERROR(Factor(solver, cols));
    SR_CUDA_RETURN_IF_ERROR(
        kernels::LaunchHessianCheckFactor(hinv_.data(), cols, info_.data() + 3, stream_));
    int info[4] = {0, 0, 0, 0};
    SR_STATUS_RETURN_IF_ERROR(info_.CopyToHost(absl::MakeSpan(info, 4), stream_));
    if (info[0] == 0 && info[1] == 0 && info[2] == 0 && info[3] == 0) {
      damp_used_ = damp;
      damp_increments_ = tries;
      act_order_ = act_order;
      cols_ = cols;
      return absl::OkStatus();
    }
    why = Explain(info, cols);
    if (increment <= 0.0) break;
    damp += increment;
    ++tries;
  }
  return absl::FailedPreconditionError(absl::StrFormat(
      "Hessian is not positive definite: %s; damping raised %d time(s) from %g by %g up to %g "
      "without success",
      why, tries, damp0, increment, damp));
}

absl::Status HessianInverseCuda::Factor(cusolverDnHandle_t solver, int cols) {
  // cuSOLVER is column-major: a row-major symmetric buffer is the same matrix,
  // and its column-major lower triangle is our (row-major) upper one.
  if (method_ == InverseFactorMethod::kCholeskyInverseChain) {
    // As core/algo/hessian_inverse.cc: potri fills only the triangle the
    // second potrf reads, and that factor read row-major is
    // U = cholesky(H^-1, upper). The strict lower triangle (row-major) keeps
    // stale values: nothing reads it.
    int lwork_potrf = 0;
    int lwork_potri = 0;
    SR_CUSOLVER_RETURN_IF_ERROR(cusolverDnSpotrf_bufferSize(solver, CUBLAS_FILL_MODE_LOWER, cols,
                                                            hinv_.data(), cols, &lwork_potrf));
    SR_CUSOLVER_RETURN_IF_ERROR(cusolverDnSpotri_bufferSize(solver, CUBLAS_FILL_MODE_LOWER, cols,
                                                            hinv_.data(), cols, &lwork_potri));
    SR_STATUS_RETURN_IF_ERROR(
        Grow(solver_work_, static_cast<size_t>(std::max({lwork_potrf, lwork_potri, 1}))));
    const int lwork = static_cast<int>(std::min<size_t>(solver_work_.size(), 0x7fffffff));
    SR_CUSOLVER_RETURN_IF_ERROR(cusolverDnSpotrf(solver, CUBLAS_FILL_MODE_LOWER, cols,
                                                 hinv_.data(), cols, solver_work_.data(), lwork,
                                                 info_.data()));
    SR_CUSOLVER_RETURN_IF_ERROR(cusolverDnSpotri(solver, CUBLAS_FILL_MODE_LOWER, cols,
                                                 hinv_.data(), cols, solver_work_.data(), lwork,
                                                 info_.data() + 1));
    SR_CUSOLVER_RETURN_IF_ERROR(cusolverDnSpotrf(solver, CUBLAS_FILL_MODE_LOWER, cols,
                                                 hinv_.data(), cols, solver_work_.data(), lwork,
                                                 info_.data() + 2));
    return absl::OkStatus();
  }
  // Flipped (see the header): hinv_ holds A = J H J. potrf with the
  // column-major upper triangle gives A = S^T S (S upper), which the
  // row-major lower triangle holds as R = S^T (A = R R^T); trtri on the same
  // triangle leaves S^-1 there, read row-major R^-1. Reversing the whole
  // buffer (a[i][j] <- a[n-1-i][n-1-j]) turns it into J R^-1 J = U in the
  // row-major upper triangle; the strict lower triangle gets the stale half
  // of A, which nothing reads.
  int lwork_potrf = 0;
  SR_CUSOLVER_RETURN_IF_ERROR(cusolverDnSpotrf_bufferSize(solver, CUBLAS_FILL_MODE_UPPER, cols,
                                                          hinv_.data(), cols, &lwork_potrf));
  size_t trtri_device_bytes = 0;
  size_t trtri_host_bytes = 0;
  SR_CUSOLVER_RETURN_IF_ERROR(cusolverDnXtrtri_bufferSize(
      solver, CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT, cols, CUDA_R_32F, hinv_.data(), cols,
      &trtri_device_bytes, &trtri_host_bytes));
  const size_t trtri_floats = (trtri_device_bytes + sizeof(float) - 1) / sizeof(float);
  SR_STATUS_RETURN_IF_ERROR(
      Grow(solver_work_, std::max({static_cast<size_t>(std::max(lwork_potrf, 1)), trtri_floats})));
  if (solver_host_work_.size() < trtri_host_bytes) solver_host_work_.resize(trtri_host_bytes);
  const int lwork = static_cast<int>(std::min<size_t>(solver_work_.size(), 0x7fffffff));
  SR_CUSOLVER_RETURN_IF_ERROR(cusolverDnSpotrf(solver, CUBLAS_FILL_MODE_UPPER, cols, hinv_.data(),
                                               cols, solver_work_.data(), lwork, info_.data()));
  SR_CUSOLVER_RETURN_IF_ERROR(cusolverDnXtrtri(
      solver, CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT, cols, CUDA_R_32F, hinv_.data(), cols,
      solver_work_.data(), solver_work_.size() * sizeof(float),
      solver_host_work_.empty() ? nullptr : solver_host_work_.data(), trtri_host_bytes,
      info_.data() + 1));
  SR_CUDA_RETURN_IF_ERROR(
      kernels::LaunchReverseInPlace(hinv_.data(), static_cast<long>(cols) * cols, stream_));
  return absl::OkStatus();
}

std::string HessianInverseCuda::Explain(const int info[4], int cols) const {
  std::string why = InverseFactorFailure(method_, cols, info[0], info[1], info[2]);
  return why.empty() ? "non-finite or non-positive entry in the inverse factor" : why;
}

}  // namespace shrinkray
