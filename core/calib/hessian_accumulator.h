// H = (2/n)·Σ x xᵀ over the inputs of one Linear, n counting *samples*
// (calibration windows), in the reference's running-average form
// (IST-DASLab gptq.py add_batch): for each batch of b samples
//   H *= n/(n+b);  n += b;  x *= sqrt(2/n);  H += x·xᵀ
// so that H is usable (and numerically tame) at every point. float32 as the
// reference, or float64. Only the upper triangle is accumulated (syrk); the
// getters return the full symmetric matrix.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/algo/hessian_inverse.h"
#include "core/calib/device_hessian.h"
#include "core/calib/hessian_merge_layout.h"

namespace shrinkray {

class Communicator;

class HessianAccumulator {
 public:
  HessianAccumulator(int dim, HessianPrecision precision);

  // x: [rows, dim] row-major, one row per token, from `samples` samples
  // (rows = samples · seqlen for full windows). samples > 0. Values that
  // only a device holds are fetched first.
  absl::Status Add(const float* x, long rows, int samples);

  int dim() const { return dim_; }
  long num_samples() const { return n_; }
  HessianPrecision precision() const { return precision_; }

  // Combines the accumulators of every rank (each saw its own samples) into
  // the H of all samples: Σ_r H_r·n_r / Σ_r n_r, summed in float64 across
  // ranks. Differs from one rank seeing every sample only by rounding (the
  // order of the sums). When only this rank saw samples (size 1) H is left as
  // it is, after the all-reduce ran. Values that only a device holds are
  // merged there when `comm` reaches that device (Communicator::OnDevice:
  // NCCL) and the device can (DeviceHessian::MergeAcrossRanks), with the
  // same all-reduce and the same arithmetic; else they are fetched first.
  absl::Status MergeAcrossRanks(Communicator& comm);

  // Replaces the accumulated state with H (full symmetric [dim, dim]) of
  // n_samples samples accumulated elsewhere (the GPU executor). float32
  // accumulators only: a float64 one would silently hold float32 values.
  absl::Status Assign(std::vector<float> h, long n_samples);
  // The same, with the values left where they are (a device's memory): the
  // host copies them down only when it reads them (FetchToHost, the getters
  // below). float32 accumulators only.
  absl::Status AssignOnDevice(std::shared_ptr<DeviceHessian> h, long n_samples);
  // The device copy, when the values came from AssignOnDevice (until the
  // accumulator next changes; a merge on the device changes both); else null.
  const std::shared_ptr<DeviceHessian>& on_device() const { return device_; }
  // True while only the device holds the values (nothing fetched yet).
  bool host_pending() const { return device_ != nullptr && h32_.empty(); }
  // Copies device-held values to the host, once; a no-op otherwise.
  absl::Status FetchToHost();

  // Full symmetric [dim, dim] in float32 (converted when accumulated in
  // double). Device-held values are copied down (into the result; the
  // accumulator stays as it is).
  absl::StatusOr<std::vector<float>> HessianF32() const;
  // The same values without a copy, float32 accumulators only: the lower
  // triangle is mirrored in place (once; a later Add or merge undoes it) and
  // the view stays valid until the accumulator next changes. Device-held
  // values are fetched (FetchToHost) first.
  absl::StatusOr<absl::Span<const float>> SymmetricF32();
  // Full symmetric [dim, dim] in float64 (widened when accumulated in float).
  absl::StatusOr<std::vector<double>> HessianF64() const;

 private:
  int dim_;
  HessianPrecision precision_;
  long n_ = 0;
  // Allocated (zeroed) by the first Add or merge: an H that the GPU hands
  // over whole (Assign) never pays for a zeroed d² buffer first.
  void Allocate();

  std::vector<float> h32_;  // upper triangle valid; all of it when symmetric_
  bool symmetric_ = false;  // set by Assign
  // AssignOnDevice's values; h32_ stays empty until they are fetched.
  std::shared_ptr<DeviceHessian> device_;
  std::vector<double> h64_;
  std::vector<float> scratch32_;
  std::vector<double> scratch64_;
};

}  // namespace shrinkray
