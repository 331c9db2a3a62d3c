// MakeCudaSolverBackend for builds without CUDA. core/CMakeLists.txt compiles
// this file only when SHRINKRAY_HAVE_CUDA is off; CUDA builds define the real
// one in core/kernels/cuda/cuda_solver_backend.cc (library shrinkray_cuda).
#include "core/pipeline/solver_backend.h"

namespace shrinkray {

absl::StatusOr<std::unique_ptr<SolverBackend>> MakeCudaSolverBackend() {
  return absl::UnimplementedError(
      "device cuda: shrinkray was built without CUDA (configure with -DSHRINKRAY_CUDA=ON); use device cpu");
}

}  // namespace shrinkray
