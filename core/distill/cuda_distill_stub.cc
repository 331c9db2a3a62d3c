// CheckCudaDistillDevice for builds without CUDA. core/CMakeLists.txt compiles
// this file only when SHRINKRAY_HAVE_CUDA is off; CUDA builds define the real
// one in core/kernels/cuda/distill_cuda.cc (library shrinkray_cuda). There is
// no MakeCudaDistillRunner here: MakeDistillRunner refers to it weakly and
// says the build lacks CUDA when it is absent (distill_device.cc).
#include "core/distill/distill_device.h"

namespace shrinkray::distill {

absl::Status CheckCudaDistillDevice() {
  return absl::UnimplementedError(
      "device cuda: shrinkray was built without CUDA (configure with -DSHRINKRAY_CUDA=ON); use "
      "device cpu");
}

}  // namespace shrinkray::distill
