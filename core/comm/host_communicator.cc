// MakeHostCommunicator: the backend chosen by name. A file of its own so that
// only programs that pick a backend at run time (the worker, tests) reference
// MakeHostStagedNcclCommunicator, which CUDA builds define in shrinkray_cuda (and
// compile this file into it too, for static link order: core/CMakeLists.txt).
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/comm/communicator.h"

namespace shrinkray {

absl::StatusOr<std::unique_ptr<Communicator>> MakeHostCommunicator(const std::string& backend,
                                                                   std::shared_ptr<Store> store,
                                                                   const CommOptions& options) {
  if (backend == "gloo") return MakeGlooCommunicator(std::move(store), options);
  if (backend == "nccl") return MakeHostStagedNcclCommunicator(std::move(store), options);
  return absl::InvalidArgumentError(absl::StrCat("communicator backend must be gloo or nccl, got '", backend, "'"));
}

}  // namespace shrinkray
