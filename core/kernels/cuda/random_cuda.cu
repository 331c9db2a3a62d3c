#include "core/kernels/cuda/ops.cuh"
#include "core/kernels/cuda/random_cuda_launch.h"

namespace shrinkray::kernels {
namespace {

constexpr int kThreads = kGridThreads;


__device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A uniform in (0, 1]: 24 random bits, never 0 (log is taken).
__device__ __forceinline__ float Uniform(uint32_t bits) {
  return (static_cast<float>(bits >> 8) + 1.0f) * (1.0f / 16777216.0f);
}

template <typename T>
__global__ void FillNormalKernel(T* out, long n, float mean, float stddev, uint64_t seed) {
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    const uint64_t r = SplitMix64(seed ^ SplitMix64(static_cast<uint64_t>(i)));
    const float u1 = Uniform(static_cast<uint32_t>(r));
    const float u2 = Uniform(static_cast<uint32_t>(r >> 32));
    const float z = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    out[i] = FromFloat<T>(mean + stddev * z);
  }
}

__global__ void FillConstantKernel(float* out, long n, float value) {
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    out[i] = value;
  }
}

__global__ void FillTokensKernel(int32_t* out, long n, int vocab, uint64_t seed) {
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    const uint64_t r = SplitMix64(seed ^ SplitMix64(static_cast<uint64_t>(i)));
    out[i] = static_cast<int32_t>(r % static_cast<uint64_t>(vocab));
  }
}

__global__ void ConvertBf16Kernel(__nv_bfloat16* out, const float* inp, long n) {
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16_rn(inp[i]);
  }
}

__global__ void PackInt4Kernel(uint8_t* out, const uint8_t* codes, long n_out) {
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_out;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    out[i] = static_cast<uint8_t>((codes[2 * i] & 0xF) | ((codes[2 * i + 1] & 0xF) << 4));
  }
}

}  // namespace

template <typename T>
cudaError_t LaunchFillNormal(T* out, long n, float mean, float stddev, uint64_t seed,
                             cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FillNormalKernel<T><<<GridFor(n), kThreads, 0, stream>>>(out, n, mean, stddev, seed);
  return cudaGetLastError();
}
template cudaError_t LaunchFillNormal<float>(float*, long, float, float, uint64_t, cudaStream_t);
template cudaError_t LaunchFillNormal<__nv_bfloat16>(__nv_bfloat16*, long, float, float, uint64_t,
                                                     cudaStream_t);

cudaError_t LaunchFillConstant(float* out, long n, float value, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FillConstantKernel<<<GridFor(n), kThreads, 0, stream>>>(out, n, value);
  return cudaGetLastError();
}

cudaError_t LaunchFillTokens(int32_t* out, long n, int vocab, uint64_t seed, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FillTokensKernel<<<GridFor(n), kThreads, 0, stream>>>(out, n, vocab, seed);
  return cudaGetLastError();
}

cudaError_t LaunchConvertBf16(__nv_bfloat16* out, const float* inp, long n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ConvertBf16Kernel<<<GridFor(n), kThreads, 0, stream>>>(out, inp, n);
  return cudaGetLastError();
}

cudaError_t LaunchPackInt4(uint8_t* out, const uint8_t* codes, int rows, int cols,
                           cudaStream_t stream) {
  const long n_out = static_cast<long>(rows) * cols / 2;
  if (n_out == 0) return cudaSuccess;
  PackInt4Kernel<<<GridFor(n_out), kThreads, 0, stream>>>(out, codes, n_out);
  return cudaGetLastError();
}

}  // namespace shrinkray::kernels
