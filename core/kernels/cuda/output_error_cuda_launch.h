// Internal: raw launchers behind output_error_cuda.cc (no abseil in .cu files).
#pragma once

#include <cuda_runtime_api.h>

namespace shrinkray::kernels {

// Blocks of the dot-product reduction: partial must hold this many doubles.
constexpr int kDotBlocks = 1024;

// d[i] = w[i] - q[i] for i in [0, n).
cudaError_t LaunchDifference(float* d, const float* w, const float* q, long n, cudaStream_t stream);
// partial[b] = Σ over block b's share of i of (double)a[i] * b[i].
cudaError_t LaunchDotPartials(double* partial, const float* a, const float* b, long n, cudaStream_t stream);

}  // namespace shrinkray::kernels
