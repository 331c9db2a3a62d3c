#include "core/kernels/cuda/cuda_check.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/util/compute_device.h"
#include "core/util/status_macros.h"

namespace shrinkray {

absl::Status CudaStatus(cudaError_t err, const char* expr, const char* file, int line) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg = absl::StrFormat("CUDA error %s (%d: %s) in %s at %s:%d",
                                          cudaGetErrorName(err), static_cast<int>(err),
                                          cudaGetErrorString(err), expr, file, line);
  switch (err) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(msg);
    case cudaErrorInvalidValue:
    case cudaErrorInvalidConfiguration:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorInvalidDevice:
      return absl::InvalidArgumentError(msg);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return absl::FailedPreconditionError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::StatusOr<int> CudaDeviceCount() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  // No GPU, or no driver at all (libcuda.so missing reports InsufficientDriver):
  // a normal situation on CPU-only machines, not an error.
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
    (void)cudaGetLastError();  // reset the last-error slot so a later launch check starts clean
    return 0;
  }
  if (err != cudaSuccess) return CudaStatus(err, "cudaGetDeviceCount", __FILE__, __LINE__);
  return count;
}

absl::Status CheckComputeDevice(const ComputeDevice& device) {
  if (!device.is_cuda()) return absl::OkStatus();
  const std::string name = device.ToString();
  if (device.index < 0) {
    return absl::InvalidArgumentError(absl::StrCat("device ", name, ": the index must be >= 0"));
  }
  SR_ASSIGN_OR_RETURN(const int devices, CudaDeviceCount());
  if (devices == 0) {
    return absl::FailedPreconditionError(absl::StrCat("device ", name, ": no CUDA device is visible to this process"));
  }
  if (device.index >= devices) {
    return absl::FailedPreconditionError(absl::StrCat("device ", name, ": ", devices, " CUDA device(s) visible"));
  }
  return absl::OkStatus();
}

absl::Status UseCudaDevice(int index) {
  SR_RETURN_IF_ERROR(CheckComputeDevice(ComputeDevice::Cuda(index)));
  SR_CUDA_RETURN_IF_ERROR(cudaSetDevice(index));
  return absl::OkStatus();
}

}  // namespace shrinkray
