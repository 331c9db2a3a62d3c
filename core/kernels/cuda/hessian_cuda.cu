#include "core/kernels/cuda/hessian_cuda_launch.h"

#include <algorithm>
#include <cstdint>

#include "core/kernels/tf32_round.h"

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

// One 32 x 32 tile on or above the diagonal per CTA: every element strictly
// above the diagonal (row < column, column-major h[row + col * cols]) takes
// the value of its mirror below it. The whole source tile is read into
// shared memory before any write, so a diagonal tile (source and
// destination the same) only ever reads lower elements, which no thread
// writes.
__global__ void MirrorLowerTriangleKernel(float* h, int cols) {
  __shared__ float tile[kTile][kTile + 1];
  const int tr = blockIdx.y * kTile;  // destination rows
  const int tc = blockIdx.x * kTile;  // destination columns
  if (tr > tc) return;                // wholly below the diagonal
  for (int j = threadIdx.y; j < kTile; j += blockDim.y) {
    const int row = tc + threadIdx.x, col = tr + j;  // source (the transposed position)
    if (row < cols && col < cols) tile[j][threadIdx.x] = h[static_cast<long>(row) + static_cast<long>(col) * cols];
  }
  __syncthreads();
  for (int j = threadIdx.y; j < kTile; j += blockDim.y) {
    const int row = tr + threadIdx.x, col = tc + j;
    if (row < col && col < cols) h[static_cast<long>(row) + static_cast<long>(col) * cols] = tile[threadIdx.x][j];
  }
}

__global__ void SplitTf32Kernel(float* __restrict__ big, float* __restrict__ small, const float* __restrict__ x,
                                long n) {
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    const float v = x[i];
    const float b = __uint_as_float(RoundTf32Bits(__float_as_uint(v)));
    big[i] = b;
    small[i] = v - b;
  }
}

}  // namespace

cudaError_t LaunchMirrorLowerTriangle(float* h, int cols, cudaStream_t stream) {
  const int tiles = (cols + kTile - 1) / kTile;
  MirrorLowerTriangleKernel<<<dim3(tiles, tiles), dim3(kTile, 8), 0, stream>>>(h, cols);
  return cudaGetLastError();
}

cudaError_t LaunchSplitTf32(float* big, float* small, const float* x, long n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const long threads = 256;
  const long blocks = std::min<long>((n + threads - 1) / threads, 65536);
  SplitTf32Kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(big, small, x, n);
  return cudaGetLastError();
}

cudaError_t LaunchMirrorLowerBlocks(float* h, int cols, int block, cudaStream_t stream) {
  const dim3 grid(cols / kTile, cols / kTile);
  MirrorLowerBlocksKernel<<<grid, dim3(kTile, 8), 0, stream>>>(h, cols, block);
  return cudaGetLastError();
}

}  // namespace shrinkray::kernels
