// MakeNcclCommunicator and MakeHostStagedNcclCommunicator for builds without CUDA. core/CMakeLists.txt compiles
// this file only when SHRINKRAY_HAVE_CUDA is off; CUDA builds define the real
// one in core/kernels/cuda/nccl_communicator.cc (library shrinkray_cuda), so
// exactly one definition exists in any build.
#include "core/comm/communicator.h"

namespace shrinkray {

absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(std::shared_ptr<Store> store,
                                                                   const CommOptions& options) {
  return absl::UnimplementedError(
      "NCCL communicator: shrinkray was built without CUDA (configure with -DSHRINKRAY_CUDA=ON); "
      "use the gloo backend on CPU");
}

absl::StatusOr<std::unique_ptr<Communicator>> MakeHostStagedNcclCommunicator(std::shared_ptr<Store> store,
                                                                             const CommOptions& options) {
  return MakeNcclCommunicator(std::move(store), options);
}

}  // namespace shrinkray
