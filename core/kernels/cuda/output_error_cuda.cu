#include "core/kernels/cuda/output_error_cuda_launch.h"

namespace shrinkray::kernels {
namespace {

constexpr int kThreads = 256;

// Σ over rows [r0, r1) and columns [0, width) of (double)a[r·lda + j] ·
// c[r·ldc + j], grid-stride over the rows·width products, then the same
// fixed tree: deterministic.
__global__ void TileDotPartialsKernel(double* partial, const float* a, long lda, const float* c, long ldc, long r0,
                                      long r1, int width) {
  __shared__ double sums[kThreads];
  double acc = 0.0;
  const long n = (r1 - r0) * width;
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    const long r = r0 + i / width, j = i % width;
    acc += static_cast<double>(a[r * lda + j]) * static_cast<double>(c[r * ldc + j]);
  }
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) sums[threadIdx.x] += sums[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = sums[0];
}

// a [2·rows, cols]: rows of w − q, then the rows of w.
__global__ void StackKernel(float* a, const float* w, const float* q, long n) {
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    a[i] = w[i] - q[i];
    a[n + i] = w[i];
  }
}

}  // namespace

cudaError_t LaunchStackDifference(float* a, const float* w, const float* q, long n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const long blocks = (n + kThreads - 1) / kThreads;
  StackKernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), kThreads, 0, stream>>>(a, w, q, n);
  return cudaGetLastError();
}

cudaError_t LaunchTileDotPartials(double* partial, const float* a, long lda, const float* c, long ldc, long r0,
                                  long r1, int width, cudaStream_t stream) {
  TileDotPartialsKernel<<<kDotBlocks, kThreads, 0, stream>>>(partial, a, lda, c, ldc, r0, r1, width);
  return cudaGetLastError();
}

}  // namespace shrinkray::kernels
