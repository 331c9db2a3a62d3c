// Internal: raw launchers behind hessian_inverse_cuda.h (the .cu side, no abseil).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace shrinkray::kernels {

// out = h[perm][:, perm] with dead diagonals set to 1; `reversed`: the same
// with the order of perm reversed (out[i][j] = h[perm[n-1-i]][perm[n-1-j]]).
cudaError_t LaunchHessianPermute(float* out, const float* h, int n, const int32_t* perm,
                                 const uint8_t* dead, bool reversed, cudaStream_t stream);
// a[k] <-> a[count-1-k]: for a row-major [n, n] matrix, a[i][j] becomes
// a[n-1-i][n-1-j] (J a J with J the exchange matrix).
cudaError_t LaunchReverseInPlace(float* a, long count, cudaStream_t stream);
// a += damp * mean(diag a) * I with the reference's rounding (mean in fp32).
cudaError_t LaunchHessianDamp(float* a, int n, float damp, cudaStream_t stream);
// *bad |= 1 when the row-major upper triangle of u has a non-finite entry or a
// non-positive diagonal.
cudaError_t LaunchHessianCheckFactor(const float* u, int n, int* bad, cudaStream_t stream);

}  // namespace shrinkray::kernels
