#include "core/kernels/cuda/hessian_cuda_launch.h"

namespace shrinkray::kernels {
namespace {

constexpr int kTile = 32;

// One 32 x 32 tile of the upper block triangle per CTA (32 x 8 threads): reads
// the mirrored tile from the lower triangle coalesced, transposes it through
// shared memory, writes it coalesced. Tiles never straddle a block edge
// (block % 32 == 0), so a tile is wholly upper, lower or diagonal-block.
__global__ void MirrorLowerBlocksKernel(float* h, int cols, int block) {
  __shared__ float tile[kTile][kTile + 1];
  const int tr = blockIdx.y * kTile;  // destination rows (column-major: h[r + c * cols])
  const int tc = blockIdx.x * kTile;  // destination columns
  if (tr / block >= tc / block) return;  // not in the upper block triangle
  // Source: rows tc.., columns tr.. (the transposed position).
  for (int j = threadIdx.y; j < kTile; j += blockDim.y) {
    tile[j][threadIdx.x] = h[static_cast<long>(tc + threadIdx.x) + static_cast<long>(tr + j) * cols];
  }
  __syncthreads();
  for (int j = threadIdx.y; j < kTile; j += blockDim.y) {
    h[static_cast<long>(tr + threadIdx.x) + static_cast<long>(tc + j) * cols] = tile[threadIdx.x][j];
  }
}

}  // namespace

cudaError_t LaunchMirrorLowerBlocks(float* h, int cols, int block, cudaStream_t stream) {
  const dim3 grid(cols / kTile, cols / kTile);
  MirrorLowerBlocksKernel<<<grid, dim3(kTile, 8), 0, stream>>>(h, cols, block);
  return cudaGetLastError();
}

}  // namespace shrinkray::kernels
