// The relative output error of a compressed weight on the GPU, as the CPU's
// RelativeOutputError (core/pipeline/apply_stages.h) defines it:
//   tr((W - Q) H (W - Q)ᵀ) / tr(W H Wᵀ)    (0 when the denominator is not > 0)
// The products D·H are fp32 GEMMs (CUBLAS_COMPUTE_32F, never TF32) and the
// elementwise sums Σ D ∘ (D H) are taken in double, in a fixed order (the same
// value on every run). The layerwise pipeline reports it for every matrix; on
// the CPU it costs two rows·cols² products per matrix.
#pragma once

#include <cuda_runtime_api.h>

#include "absl/status/statusor.h"

namespace shrinkray {

// w, q: device [rows, cols]; h: device [cols, cols] symmetric. Synchronous.
absl::StatusOr<double> relative_output_error(const float* w, const float* q, int rows, int cols, const float* h,
                                             cudaStream_t stream);

}  // namespace shrinkray
