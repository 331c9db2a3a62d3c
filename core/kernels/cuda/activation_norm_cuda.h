// Wanda's activation norm on the GPU, the same running form as
// ActivationNormAccumulator::Add (core/calib/activation_norm_accumulator.h):
// for a batch of b samples whose tokens are the rows of x [rows, cols],
//   scaler *= n/(n+b);  n += b;  scaler += (Σ_rows x_j², summed in double) / n
// with the running value kept in fp32. The column sums are taken in chunks of
// rows and the chunks added in order: deterministic, the same value on every
// run (the CPU sums row by row, so the two differ by double rounding only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace shrinkray {

// scaler: device [cols] fp32 (ignored when *n_samples is 0); x: device
// [rows, cols] fp32 or bf16 (each value widened exactly); workspace: device
// doubles, at least activation_norm_workspace_size(rows, cols).
absl::Status activation_norm_accumulate(float* scaler, int cols, long* n_samples, const float* x,
                                        long rows, int batch_samples, double* workspace,
                                        cudaStream_t stream);
absl::Status activation_norm_accumulate(float* scaler, int cols, long* n_samples, const __nv_bfloat16* x,
                                        long rows, int batch_samples, double* workspace,
                                        cudaStream_t stream);
size_t activation_norm_workspace_size(long rows, int cols);

}  // namespace shrinkray
