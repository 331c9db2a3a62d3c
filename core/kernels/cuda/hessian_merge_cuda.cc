#include "core/kernels/cuda/hessian_merge_cuda.h"

#include "absl/strings/str_cat.h"
#include "core/calib/hessian_merge_layout.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/hessian_merge_cuda_launch.h"
#include "core/util/status_macros.h"

namespace shrinkray {

absl::StatusOr<long> MergeHessianAcrossRanksCuda(float* h, int dim, long n_samples, Communicator& comm,
                                                 cudaStream_t stream) {
  if (h == nullptr || dim <= 0 || n_samples < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MergeHessianAcrossRanksCuda: bad Hessian (dim ", dim, ", ", n_samples, " samples)"));
  }
  const size_t count = HessianMergeCount(static_cast<size_t>(dim));
  absl::StatusOr<DeviceBuffer<double>> sums = DeviceBuffer<double>::Create(count);
  if (!sums.ok()) {
    if (absl::IsResourceExhausted(sums.status())) (void)cudaGetLastError();  // not the next launch's error
    return absl::Status(sums.status().code(), absl::StrCat("the float64 sums (", count * sizeof(double),
                                                           " bytes) on the device: ", sums.status().message()));
  }
  const double n = static_cast<double>(n_samples);
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchPackHessianSums(sums->data(), h, dim, n, stream));
  SR_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(sums->data() + count - 1, &n, sizeof(double), cudaMemcpyHostToDevice, stream));
  // The collective runs on the communicator's own stream.
  SR_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  SR_RETURN_IF_ERROR(comm.AllReduce(sums->data(), count, CommDType::kF64, ReduceOp::kSum));
  double total = 0.0;
  SR_CUDA_RETURN_IF_ERROR(cudaMemcpy(&total, sums->data() + count - 1, sizeof(double), cudaMemcpyDeviceToHost));
  if (total <= 0) return absl::InternalError("no samples on any rank");
  // Only this rank's samples: H as it is (no H·n/n rounding), as on the host.
  if (total == n) return static_cast<long>(total);
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchUnpackHessianMean(h, sums->data(), dim, total, stream));
  SR_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return static_cast<long>(total);
}

}  // namespace shrinkray
