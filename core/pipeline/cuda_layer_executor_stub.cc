// MakeCudaLayerExecutor for builds without CUDA. core/CMakeLists.txt compiles
// this file only when SHRINKRAY_HAVE_CUDA is off; CUDA builds define the real
// ones in core/kernels/cuda/cuda_layer_executor.cc (library shrinkray_cuda).
#include "core/pipeline/device_factories.h"
#include "core/pipeline/layer_executor.h"
#include "core/pipeline/solver_backend.h"
#include "core/util/compute_device.h"

namespace shrinkray {

absl::StatusOr<std::unique_ptr<LayerExecutor>> MakeCudaLayerExecutor(int device, const LayerExecutorSpec&) {
  return CudaNotBuiltError(ComputeDevice::Cuda(device));
}

}  // namespace shrinkray
