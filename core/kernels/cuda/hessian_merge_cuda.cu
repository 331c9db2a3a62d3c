#include "core/calib/hessian_merge_layout.h"
#include "core/kernels/cuda/hessian_merge_cuda_launch.h"

namespace shrinkray::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxRowBlocks = 65535;  // gridDim.y's limit; rows beyond it are strided

// Row i of the upper triangle per blockIdx.y (strided), its columns j >= i
// over blockIdx.x and the threads: coalesced reads of H and writes of sums.
__global__ void PackKernel(double* sums, const float* h, long dim, double n) {
  for (long i = blockIdx.y; i < dim; i += gridDim.y) {
    const size_t start = HessianMergeRowStart(static_cast<size_t>(i), static_cast<size_t>(dim));
    for (long j = i + static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; j < dim;
         j += static_cast<long>(gridDim.x) * blockDim.x) {
      // A product alone (nothing to contract into an FMA): the host's bits.
      sums[start + static_cast<size_t>(j - i)] = static_cast<double>(h[i * dim + j]) * n;
    }
  }
}

// The host's double division and rounding to float, written to both
// triangles (the host mirrors its upper triangle into the lower one).
__global__ void UnpackKernel(float* h, const double* sums, long dim, double total) {
  for (long i = blockIdx.y; i < dim; i += gridDim.y) {
    const size_t start = HessianMergeRowStart(static_cast<size_t>(i), static_cast<size_t>(dim));
    for (long j = i + static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; j < dim;
         j += static_cast<long>(gridDim.x) * blockDim.x) {
      const float v = static_cast<float>(sums[start + static_cast<size_t>(j - i)] / total);
      h[i * dim + j] = v;
      h[j * dim + i] = v;
    }
  }
}

dim3 Grid(int dim) {
  const unsigned column_blocks = static_cast<unsigned>((dim + kThreads - 1) / kThreads);
  return dim3(column_blocks, static_cast<unsigned>(dim < kMaxRowBlocks ? dim : kMaxRowBlocks));
}

}  // namespace

cudaError_t LaunchPackHessianSums(double* sums, const float* h, int dim, double n, cudaStream_t stream) {
  if (dim <= 0) return cudaSuccess;
  PackKernel<<<Grid(dim), kThreads, 0, stream>>>(sums, h, dim, n);
  return cudaGetLastError();
}

cudaError_t LaunchUnpackHessianMean(float* h, const double* sums, int dim, double total, cudaStream_t stream) {
  if (dim <= 0) return cudaSuccess;
  UnpackKernel<<<Grid(dim), kThreads, 0, stream>>>(h, sums, dim, total);
  return cudaGetLastError();
}

}  // namespace shrinkray::kernels
