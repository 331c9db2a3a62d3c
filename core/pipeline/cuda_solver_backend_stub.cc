// MakeCudaSolverBackend for builds without CUDA. core/CMakeLists.txt compiles
// this file only when SHRINKRAY_HAVE_CUDA is off; CUDA builds define the real
// one in core/kernels/cuda/cuda_solver_backend.cc (library shrinkray_cuda).
#include "core/pipeline/solver_backend.h"
#include "core/util/compute_device.h"

namespace shrinkray {

absl::StatusOr<std::unique_ptr<SolverBackend>> MakeCudaSolverBackend(int device) {
  return CudaNotBuiltError(ComputeDevice::Cuda(device));
}

}  // namespace shrinkray
