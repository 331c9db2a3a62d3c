// Kernels of the shared Hessian preparation (hessian_inverse_cuda.h):
// permutation with the dead-column fix (optionally index-reversed), damping,
// the in-place reversal, and the factor check.
#include "core/kernels/cuda/hessian_inverse_cuda_launch.h"
#include "core/kernels/cuda/ops.cuh"

namespace shrinkray::kernels {
namespace {

constexpr int kThreads = kGridThreads;


__global__ void HessianPermuteKernel(float* __restrict__ out, const float* __restrict__ h,
                                     int n, const int32_t* __restrict__ perm,
                                     const uint8_t* __restrict__ dead, bool reversed) {
  const long total = static_cast<long>(n) * n;
  for (long idx = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<long>(gridDim.x) * blockDim.x) {
    const long i = idx / n;
    const int j = static_cast<int>(idx - i * n);
    const int pi = perm[reversed ? n - 1 - static_cast<int>(i) : static_cast<int>(i)];
    const int pj = perm[reversed ? n - 1 - j : j];
    out[idx] = (pi == pj && dead[pi] != 0) ? 1.0f : h[static_cast<long>(pi) * n + pj];
  }
}

__global__ void ReverseInPlaceKernel(float* __restrict__ a, long count) {
  const long half = count / 2;  // an odd count's middle element stays
  for (long k = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; k < half;
       k += static_cast<long>(gridDim.x) * blockDim.x) {
    const float x = a[k];
    a[k] = a[count - 1 - k];
    a[count - 1 - k] = x;
  }
}

constexpr int kDampThreads = 1024;

// One block: mean(diag) summed in double (the CPU sums in double too), rounded
// to fp32, times damp in fp32, added to the diagonal.
__global__ void __launch_bounds__(kDampThreads) HessianDampKernel(float* a, int n, float damp) {
  __shared__ double partial[kDampThreads / kWarpSize];
  double sum = 0.0;
  for (int j = threadIdx.x; j < n; j += blockDim.x) sum += a[static_cast<long>(j) * n + j];
#pragma unroll
  for (int off = kWarpSize / 2; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (threadIdx.x % kWarpSize == 0) partial[threadIdx.x / kWarpSize] = sum;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < static_cast<int>(blockDim.x / kWarpSize); ++w) total += partial[w];
  const float mean = static_cast<float>(total / n);
  const float value = __fmul_rn(damp, mean);
  __syncthreads();  // every thread has read the diagonal before any write
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    a[static_cast<long>(j) * n + j] = __fadd_rn(a[static_cast<long>(j) * n + j], value);
  }
}

__global__ void HessianCheckFactorKernel(const float* __restrict__ u, int n, int* bad) {
  const long total = static_cast<long>(n) * n;
  int local = 0;
  for (long idx = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<long>(gridDim.x) * blockDim.x) {
    const long i = idx / n;
    const long j = idx - i * n;
    if (j < i) continue;
    const float x = u[idx];
    if (!isfinite(x) || (i == j && !(x > 0.0f))) local = 1;
  }
  if (local) atomicOr(bad, 1);
}

}  // namespace

cudaError_t LaunchHessianPermute(float* out, const float* h, int n, const int32_t* perm,
                                 const uint8_t* dead, bool reversed, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  HessianPermuteKernel<<<GridFor(static_cast<long>(n) * n), kThreads, 0, stream>>>(
      out, h, n, perm, dead, reversed);
  return cudaGetLastError();
}

cudaError_t LaunchReverseInPlace(float* a, long count, cudaStream_t stream) {
  if (count < 2) return cudaSuccess;
  ReverseInPlaceKernel<<<GridFor(count / 2), kThreads, 0, stream>>>(a, count);
  return cudaGetLastError();
}

cudaError_t LaunchHessianDamp(float* a, int n, float damp, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  HessianDampKernel<<<1, kDampThreads, 0, stream>>>(a, n, damp);
  return cudaGetLastError();
}

cudaError_t LaunchHessianCheckFactor(const float* u, int n, int* bad, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  HessianCheckFactorKernel<<<GridFor(static_cast<long>(n) * n), kThreads, 0, stream>>>(u, n, bad);
  return cudaGetLastError();
}

}  // namespace shrinkray::kernels
