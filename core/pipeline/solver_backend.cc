// MakeSolverBackend / MakeLayerExecutorFactory: the device by name. A file of
// its own so that only the programs that choose a device at run time (the
// CLI, the worker) reference the CUDA factories, which CUDA builds define in
// shrinkray_cuda (and compile this file into it too, for static link order:
// core/CMakeLists.txt).
#include "core/pipeline/solver_backend.h"

#include "absl/strings/str_cat.h"
#include "core/pipeline/layer_executor.h"

namespace shrinkray {
namespace {

absl::Status UnknownDevice(const std::string& device) {
  return absl::InvalidArgumentError(absl::StrCat("device must be cpu or cuda, got '", device, "'"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<SolverBackend>> MakeSolverBackend(const std::string& device) {
  if (device == "cpu") return std::unique_ptr<SolverBackend>();
  if (device == "cuda") return MakeCudaSolverBackend();
  return UnknownDevice(device);
}

absl::StatusOr<LayerExecutorFactory> MakeLayerExecutorFactory(const std::string& device) {
  if (device == "cpu") return LayerExecutorFactory();
  if (device == "cuda") return LayerExecutorFactory(MakeCudaLayerExecutor);
  return UnknownDevice(device);
}

}  // namespace shrinkray
