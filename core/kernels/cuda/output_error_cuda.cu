#include "core/kernels/cuda/output_error_cuda_launch.h"

namespace shrinkray::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void DifferenceKernel(float* d, const float* w, const float* q, long n) {
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    d[i] = w[i] - q[i];
  }
}

// Grid-stride products summed per thread, then a fixed-shape tree in shared
// memory: deterministic.
__global__ void DotPartialsKernel(double* partial, const float* a, const float* b, long n) {
  __shared__ double sums[kThreads];
  double acc = 0.0;
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    acc += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  }
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) sums[threadIdx.x] += sums[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = sums[0];
}

}  // namespace

cudaError_t LaunchDifference(float* d, const float* w, const float* q, long n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const long blocks = (n + kThreads - 1) / kThreads;
  DifferenceKernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), kThreads, 0, stream>>>(d, w, q, n);
  return cudaGetLastError();
}

cudaError_t LaunchDotPartials(double* partial, const float* a, const float* b, long n, cudaStream_t stream) {
  DotPartialsKernel<<<kDotBlocks, kThreads, 0, stream>>>(partial, a, b, n);
  return cudaGetLastError();
}

}  // namespace shrinkray::kernels
