// Internal: raw launcher behind activation_norm_cuda.cc (no abseil in .cu files).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace shrinkray::kernels {

// Rows per chunk of the column sums of squares.
constexpr long kActNormChunkRows = 256;

// partial [chunks, cols] = Σ over each chunk of rows of x², in double; then
// scaler[j] = scaler[j]·shrink + (float)(Σ_chunks partial[·, j] / n).
cudaError_t LaunchActivationNorm(float* scaler, int cols, const float* x, long rows, float shrink,
                                 double n, double* partial, cudaStream_t stream);
cudaError_t LaunchActivationNorm(float* scaler, int cols, const __nv_bfloat16* x, long rows, float shrink,
                                 double n, double* partial, cudaStream_t stream);

}  // namespace shrinkray::kernels
