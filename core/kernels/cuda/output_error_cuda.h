// The relative output error of a compressed weight on the GPU, as the CPU's
// RelativeOutputError (core/pipeline/apply_stages.h) defines it:
//   tr((W - Q) H (W - Q)ᵀ) / tr(W H Wᵀ)    (0 when the denominator is not > 0)
// W − Q and W are stacked into one [2·rows, cols] matrix A, and per column
// tile I of H only the tiles on and below its diagonal are multiplied:
// C = A_I H_II + 2 A_{>I} H_{>I,I} (fp32 GEMMs, CUBLAS_COMPUTE_32F, never
// TF32), then Σ A_I ∘ C over each half of the rows in double, in a fixed
// order (the same value on every run). That is (1 + tile/cols)/2 of the
// FLOPs of two full products, as the CPU's form (core/pipeline/
// apply_stages.cc). The layerwise pipeline reports it for every matrix.
#pragma once

#include <cuda_runtime_api.h>

#include <optional>

#include "absl/status/statusor.h"

namespace shrinkray {

// Column tile of H (a multiple of cuBLAS's preferred sizes; wide enough that
// the second GEMM of each tile keeps the device busy).
constexpr int kOutputErrorTileCols = 1024;

// w, q: device [rows, cols]; h: device [cols, cols] symmetric. Synchronous.
absl::StatusOr<double> relative_output_error(const float* w, const float* q, int rows, int cols, const float* h,
                                             cudaStream_t stream);

// The same as a solver's extra (SolveReport::output_error), from the copies
// of W and the result the solve made: `out` is set, or left unset when the
// error's workspace does not fit (CUDA's last error cleared: the solve's
// result stands and the caller computes the error its own way); any other
// failure is returned.
absl::Status report_output_error(const float* w, const float* q, int rows, int cols, const float* h,
                                 cudaStream_t stream, std::optional<double>* out);

}  // namespace shrinkray
