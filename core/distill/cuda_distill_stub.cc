// CheckCudaDistillDevice / MakeCudaDistillRunner for builds without CUDA. core/CMakeLists.txt compiles
// this file only when SHRINKRAY_HAVE_CUDA is off; CUDA builds define the real
// one in core/kernels/cuda/distill_cuda.cc (library shrinkray_cuda).
#include "core/distill/distill_device.h"

namespace shrinkray::distill {

absl::Status CheckCudaDistillDevice() {
  return absl::UnimplementedError(
      "device cuda: shrinkray was built without CUDA (configure with -DSHRINKRAY_CUDA=ON); use "
      "device cpu");
}

absl::StatusOr<std::unique_ptr<DistillRunner>> MakeCudaDistillRunner(
    const DistillTrainerOptions&, const LlamaModel&, const TrainData&, train::ParameterStore) {
  return CheckCudaDistillDevice();
}

}  // namespace shrinkray::distill
