// MakeCudaDistillRunner for builds without CUDA. core/CMakeLists.txt compiles
// this file only when SHRINKRAY_HAVE_CUDA is off; CUDA builds define the real
// one in core/kernels/cuda/distill_cuda.cc (library shrinkray_cuda).
#include "core/distill/distill_device.h"
#include "core/util/compute_device.h"

namespace shrinkray::distill {

absl::StatusOr<std::unique_ptr<DistillRunner>> MakeCudaDistillRunner(int device, const DistillTrainerOptions&,
                                                                     const LlamaModel&, const TrainData&,
                                                                     train::ParameterStore) {
  return CudaNotBuiltError(ComputeDevice::Cuda(device));
}

}  // namespace shrinkray::distill
