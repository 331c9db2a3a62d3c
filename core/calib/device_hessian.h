// A float32 Hessian that lives in a device's memory: what the GPU executor
// accumulated, handed to the pipeline without a download
// (HessianAccumulator::AssignOnDevice). A solver backend on the same device
// reads it where it is (SolverBackend::ReadsDevice); anything on the host
// (a CPU solve or error, a merge across ranks) copies it down once.
// Core code sees only this interface; the CUDA executor implements it.
#pragma once

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace shrinkray {

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
};

}  // namespace shrinkray
