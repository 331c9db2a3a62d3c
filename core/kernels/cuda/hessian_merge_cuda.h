// HessianAccumulator::MergeAcrossRanks (core/calib/hessian_accumulator.h) for
// a float32 Hessian in device memory, through a communicator of device
// buffers (NCCL; Communicator::OnDevice): the buffer of
// core/calib/hessian_merge_layout.h is built, all-reduced and read back on
// the device, so a rank merging here meets ranks merging on the host in the
// same collective and ends with the same bits. At 8B shapes the host merge
// copied a layer's Hessians down (1.02 GB), staged the float64 sums (as many
// bytes) up to the device and back, and the solvers copied H up again.
#pragma once

#include <cuda_runtime_api.h>


#include "absl/status/statusor.h"
#include "core/comm/communicator.h"

namespace shrinkray {

// h: [dim, dim] full symmetric on the current device, holding n_samples
// samples; replaced by the merged H (full symmetric) unless the total is
// n_samples. Returns the total. No room for the float64 sums
// (HessianMergeCount(dim) values, as many bytes as H) is ResourceExhausted
// naming them, before any collective: the host merge would need as much on
// this device for a host-staged NCCL all-reduce, so there is no fallback, and
// the peers' all-reduce ends at the communicator's timeout. An error of the
// all-reduce is comm's; no samples on any rank is Internal.
absl::StatusOr<long> MergeHessianAcrossRanksCuda(float* h, int dim, long n_samples, Communicator& comm,
                                                 cudaStream_t stream);

}  // namespace shrinkray
