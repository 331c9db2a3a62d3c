// CheckComputeDevice for builds without CUDA. core/CMakeLists.txt compiles
// this file only when SHRINKRAY_HAVE_CUDA is off; CUDA builds define the real
// one in core/kernels/cuda/cuda_check.cc (library shrinkray_cuda).
#include "core/util/compute_device.h"

namespace shrinkray {

absl::Status CheckComputeDevice(const ComputeDevice& device) {
  if (!device.is_cuda()) return absl::OkStatus();
  return CudaNotBuiltError(device);
}

}  // namespace shrinkray
