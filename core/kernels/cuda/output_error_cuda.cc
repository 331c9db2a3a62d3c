#include "core/kernels/cuda/output_error_cuda.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/ops.h"
#include "core/kernels/cuda/output_error_cuda_launch.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

// Σ a ∘ (a H) in double; a [rows, cols] device, ah a scratch of the same size.
absl::StatusOr<double> QuadraticTrace(const float* a, float* ah, int rows, int cols, const float* h,
                                      DeviceBuffer<double>& partial, cudaStream_t stream) {
  // matmul_forward computes a·Hᵀ; H is symmetric.
  SR_RETURN_IF_ERROR(matmul_forward(ah, a, h, nullptr, rows, cols, cols, stream));
  const long n = static_cast<long>(rows) * cols;
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchDotPartials(partial.data(), a, ah, n, stream));
  std::vector<double> host(kernels::kDotBlocks);
  SR_RETURN_IF_ERROR(partial.CopyToHost(absl::MakeSpan(host), stream));
  double sum = 0.0;
  for (double p : host) sum += p;
  return sum;
}

}  // namespace

absl::StatusOr<double> relative_output_error(const float* w, const float* q, int rows, int cols, const float* h,
                                             cudaStream_t stream) {
  if (rows <= 0 || cols <= 0 || w == nullptr || q == nullptr || h == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("relative_output_error: bad matrix [", rows, ", ", cols, "]"));
  }
  const size_t n = static_cast<size_t>(rows) * cols;
  SR_ASSIGN_OR_RETURN(DeviceBuffer<float> d, DeviceBuffer<float>::Create(n));
  SR_ASSIGN_OR_RETURN(DeviceBuffer<float> dh, DeviceBuffer<float>::Create(n));
  SR_ASSIGN_OR_RETURN(DeviceBuffer<double> partial, DeviceBuffer<double>::Create(kernels::kDotBlocks));
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchDifference(d.data(), w, q, static_cast<long>(n), stream));
  SR_ASSIGN_OR_RETURN(const double num, QuadraticTrace(d.data(), dh.data(), rows, cols, h, partial, stream));
  SR_ASSIGN_OR_RETURN(const double den, QuadraticTrace(w, dh.data(), rows, cols, h, partial, stream));
  if (den <= 0.0) return 0.0;
  return num / den;
}

}  // namespace shrinkray
