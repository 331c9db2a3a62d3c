// Internal: raw launcher behind hessian_cuda.cc (no abseil in .cu files).
#pragma once

#include <cuda_runtime_api.h>

namespace shrinkray::kernels {

// h [cols, cols] holds valid values in every block (i, j) of block x block
// tiles with i >= j (block row >= block column); copies their transposes into
// the blocks with i < j, so that h is symmetric. block is a multiple of 32
// dividing cols.
cudaError_t LaunchMirrorLowerBlocks(float* h, int cols, int block, cudaStream_t stream);

// Every element of h [cols, cols] strictly above the diagonal takes the value
// of its mirror below it (any cols): h becomes exactly symmetric.
cudaError_t LaunchMirrorLowerTriangle(float* h, int cols, cudaStream_t stream);

// big[i] = x[i] rounded to TF32 (10-bit mantissa, to nearest, ties away from
// zero; exactly representable in TF32), small[i] = x[i] - big[i] (exact in
// fp32). Non-finite values pass through as big (small is then NaN).
cudaError_t LaunchSplitTf32(float* big, float* small, const float* x, long n, cudaStream_t stream);

}  // namespace shrinkray::kernels
