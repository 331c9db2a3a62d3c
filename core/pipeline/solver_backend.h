// Where the Hessian-based solvers (GPTQ, SparseGPT) of a layerwise job run.
// The executor (forward passes, statistics) stays on the CPU; a backend moves
// each matrix's solve to a device. Null (the default) is the CPU solvers of
// core/algo. A backend answers Unimplemented for options it does not support
// (e.g. float64 Hessians on the GPU): the
// caller then runs the CPU solver for that matrix, so every recipe works on
// every backend and only the speed differs.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/algo/gptq.h"
#include "core/algo/sparsegpt.h"
#include "core/calib/device_hessian.h"
#include "core/pipeline/device_matrix.h"

namespace shrinkray {

class SolverBackend {
 public:
  virtual ~SolverBackend() = default;
  virtual std::string name() const = 0;  // "cuda"
  // Same contracts as GptqQuantize / SparseGptPrune with a float32 Hessian.
  virtual absl::StatusOr<GptqResult> Gptq(absl::Span<const float> w, int rows, int cols, absl::Span<const float> h,
                                          const GptqOptions& options) = 0;
  virtual absl::StatusOr<SparseGptResult> SparseGpt(absl::Span<const float> w, int rows, int cols,
                                                    absl::Span<const float> h, const SparseGptOptions& options) = 0;
  // RelativeOutputError (core/pipeline/apply_stages.h) of a compressed
  // matrix, reported for every matrix; Unimplemented: the CPU computes it.
  virtual absl::StatusOr<double> OutputError(absl::Span<const float> w, absl::Span<const float> q, int rows,
                                             int cols, absl::Span<const float> h) {
    return absl::UnimplementedError("output error on the device");
  }
  // From HoldHessian until ReleaseHessian the caller keeps `h` (a float32
  // Hessian) unchanged at its address, and passes that same span to the
  // solves and errors of the matrices that share it (a group's q/k/v, gate/up).
  // A backend may then keep it on the device, and what it derived from it
  // (dead columns, permutation, inverse factor), instead of copying and
  // preparing it again for every matrix. Calls with any other span work as
  // before. Use HeldHessian, which releases on every path.
  // `device`: the same values where a device holds them (the GPU executor's
  // accumulator), given only to a backend that ReadsDevice them; `h` is then
  // empty when the host has not fetched them, and the solves and errors of
  // the hold are passed that empty span.
  virtual void HoldHessian(absl::Span<const float> h, const DeviceHessian* device) {}
  virtual void ReleaseHessian() {}
  // Whether this backend reads `h` where it is, with no host copy (a GPU
  // backend on the device that holds it).
  virtual bool ReadsDevice(const DeviceHessian& h) const { return false; }
  // From HoldWeight until ReleaseWeight the solves and errors given `w`
  // (the same span: a matrix's original weight, which its first stage reads)
  // may read its values at `device` instead (the same float32 values in
  // that device's memory: LayerExecutor::DeviceWeight), which stay as they
  // are until the release. A backend on that device then copies nothing up.
  // Use HeldWeight.
  virtual void HoldWeight(absl::Span<const float> w, const DeviceMatrix& device) {}
  virtual void ReleaseWeight() {}
  // Matrices solved on the device / handed back to the CPU (Unimplemented).
  long device_solves() const { return device_solves_; }
  long cpu_fallbacks() const { return cpu_fallbacks_; }
  // Solves (and errors) that read W where a HoldWeight said it was.
  long weights_read_on_device() const { return weights_read_on_device_; }
  void CountDeviceSolve() { ++device_solves_; }
  void CountCpuFallback() { ++cpu_fallbacks_; }
  void CountWeightReadOnDevice() { ++weights_read_on_device_; }

 private:
  long device_solves_ = 0;
  long cpu_fallbacks_ = 0;
  long weights_read_on_device_ = 0;
};

// Holds `h` (and its device copy, if any) in `backend` (may be null) for the
// scope's lifetime.
class HeldHessian {
 public:
  HeldHessian(SolverBackend* backend, absl::Span<const float> h, const DeviceHessian* device = nullptr)
      : backend_(backend) {
    if (backend_ != nullptr) backend_->HoldHessian(h, device);
  }
  ~HeldHessian() {
    if (backend_ != nullptr) backend_->ReleaseHessian();
  }
  HeldHessian(const HeldHessian&) = delete;
  HeldHessian& operator=(const HeldHessian&) = delete;

 private:
  SolverBackend* backend_;
};

// Holds `w` at `device` in `backend` (may be null; nothing is held when
// device.data is null) for the scope's lifetime.
class HeldWeight {
 public:
  HeldWeight(SolverBackend* backend, absl::Span<const float> w, const DeviceMatrix& device)
      : backend_(device.data != nullptr ? backend : nullptr) {
    if (backend_ != nullptr) backend_->HoldWeight(w, device);
  }
  ~HeldWeight() {
    if (backend_ != nullptr) backend_->ReleaseWeight();
  }
  HeldWeight(const HeldWeight&) = delete;
  HeldWeight& operator=(const HeldWeight&) = delete;

 private:
  SolverBackend* backend_;
};

// The GPU backend on CUDA device `device` (cuda:N; CUDA builds, elsewhere
// Unimplemented naming the build; FailedPrecondition when that device is not
// visible). Programs choosing the device at run time call MakeSolverBackend
// (device_factories.h).
absl::StatusOr<std::unique_ptr<SolverBackend>> MakeCudaSolverBackend(int device);

}  // namespace shrinkray
