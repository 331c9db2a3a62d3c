// Internal: raw launchers behind output_error_cuda.cc (no abseil in .cu files).
#pragma once

#include <cuda_runtime_api.h>

namespace shrinkray::kernels {

// Blocks of the dot-product reduction: partial must hold this many doubles.
constexpr int kDotBlocks = 1024;

// a[0, n) = w − q, a[n, 2n) = w.
cudaError_t LaunchStackDifference(float* a, const float* w, const float* q, long n, cudaStream_t stream);
// partial[b] = block b's share of Σ_{r in [r0, r1), j < width} (double)a[r·lda + j] · c[r·ldc + j].
cudaError_t LaunchTileDotPartials(double* partial, const float* a, long lda, const float* c, long ldc, long r0,
                                  long r1, int width, cudaStream_t stream);

}  // namespace shrinkray::kernels
