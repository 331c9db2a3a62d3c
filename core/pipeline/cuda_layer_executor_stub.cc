// MakeCudaLayerExecutor for builds without CUDA. core/CMakeLists.txt compiles
// this file only when SHRINKRAY_HAVE_CUDA is off; CUDA builds define the real
// one in core/kernels/cuda/cuda_layer_executor.cc (library shrinkray_cuda).
#include "core/pipeline/layer_executor.h"

namespace shrinkray {

absl::StatusOr<std::unique_ptr<LayerExecutor>> MakeCudaLayerExecutor(const LayerExecutorSpec&) {
  return absl::UnimplementedError(
      "device cuda: shrinkray was built without CUDA (configure with -DSHRINKRAY_CUDA=ON); use device cpu");
}

}  // namespace shrinkray
