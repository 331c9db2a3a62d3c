// A float32 Hessian that lives in a device's memory: what the GPU executor
// accumulated, handed to the pipeline without a download
// (HessianAccumulator::AssignOnDevice). A solver backend on the same device
// reads it where it is (SolverBackend::ReadsDevice); anything on the host
// (a CPU solve or error) copies it down once; a merge across ranks runs on
// the device when the job's communicator reaches it (NCCL).
// Core code sees only this interface; the CUDA executor implements it.
#pragma once

#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace shrinkray {

class Communicator;

class DeviceHessian {
 public:
  virtual ~DeviceHessian() = default;
  virtual int device() const = 0;  // the CUDA device index that holds it
  virtual int dim() const = 0;
  // Device pointer to the full symmetric [dim, dim] values, ready to read
  // (the producer synchronised its work before handing it over).
  virtual const float* data() const = 0;
  // Copies the dim² values to `out` (host); synchronous.
  virtual absl::Status CopyToHost(absl::Span<float> out) const = 0;
  // HessianAccumulator::MergeAcrossRanks where the values are, through
  // `comm`, a communicator of buffers in this device's memory
  // (Communicator::OnDevice): the same all-reduce (HessianMergeCount's
  // layout) and arithmetic as the host merge, so ranks merging on the host
  // meet it; the values become the merged H (still full symmetric) unless
  // the total is this rank's own n_samples. Returns the total samples, or
  // nullopt when this holder cannot merge where the values are (nothing
  // exchanged: the caller fetches them and merges on the host), as this
  // default does.
  virtual absl::StatusOr<std::optional<long>> MergeAcrossRanks(Communicator& comm, long n_samples) {
    return std::optional<long>();
  }
};

}  // namespace shrinkray
