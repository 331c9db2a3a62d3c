#include "core/kernels/cuda/gptq_pack_cuda_launch.h"
#include "core/kernels/cuda/ops.cuh"

namespace shrinkray::kernels {
namespace {

// The 32 bits [32 * word, 32 * word + 32) of the little-endian bit stream
// whose value i (from value(i), already masked to `bits`) occupies bits
// [i * bits, (i + 1) * bits). For 3 bits a value can straddle two words: the
// first word gets its low bits, the next its high bits.
template <typename ValueAt>
__device__ __forceinline__ uint32_t StreamWord(long word, int bits, int count, ValueAt value) {
  const long first_bit = word * 32;
  const long first = first_bit / bits;             // first value touching this word
  const long last = (first_bit + 31) / bits;       // last value touching it
  uint32_t out = 0;
  for (long i = first; i <= last && i < count; ++i) {
    const long shift = i * bits - first_bit;  // may be negative (straddles in from the left)
    const uint32_t v = value(i);
    out |= shift >= 0 ? (v << shift) : (v >> (-shift));
  }
  return out;
}

__global__ void PackQweightKernel(int32_t* qweight, const uint8_t* codes, int rows, int cols, int bits) {
  const long words_per_column = static_cast<long>(cols) * bits / 32;
  const long n = words_per_column * rows;
  const uint32_t mask = (1u << bits) - 1u;
  for (long idx = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<long>(gridDim.x) * blockDim.x) {
    const long word = idx / rows;  // qweight row: consecutive threads -> consecutive out rows
    const int r = static_cast<int>(idx % rows);
    const uint8_t* row = codes + static_cast<long>(r) * cols;
    qweight[idx] = static_cast<int32_t>(
        StreamWord(word, bits, cols, [&](long c) { return static_cast<uint32_t>(row[c]) & mask; }));
  }
}

__global__ void PackQzerosKernel(int32_t* qzeros, const int32_t* zeros, int groups, int rows, int bits,
                                 bool v1) {
  const long words_per_group = static_cast<long>(rows) * bits / 32;
  const long n = words_per_group * groups;
  const uint32_t mask = (1u << bits) - 1u;
  for (long idx = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<long>(gridDim.x) * blockDim.x) {
    const long g = idx / words_per_group;
    const long word = idx % words_per_group;
    const int32_t* z = zeros + g * rows;
    qzeros[idx] = static_cast<int32_t>(StreamWord(word, bits, rows, [&](long r) {
      return static_cast<uint32_t>(z[r] - (v1 ? 1 : 0)) & mask;
    }));
  }
}

__global__ void ConvertFp16Kernel(__half* out, const float* inp, long n) {
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    out[i] = __float2half_rn(inp[i]);
  }
}

}  // namespace

cudaError_t LaunchPackGptqQweight(int32_t* qweight, const uint8_t* codes, int rows, int cols, int bits,
                                  cudaStream_t stream) {
  const long n = static_cast<long>(cols) * bits / 32 * rows;
  if (n == 0) return cudaSuccess;
  PackQweightKernel<<<GridFor(n), kGridThreads, 0, stream>>>(qweight, codes, rows, cols, bits);
  return cudaGetLastError();
}

cudaError_t LaunchPackGptqQzeros(int32_t* qzeros, const int32_t* zeros, int groups, int rows, int bits,
                                 bool v1, cudaStream_t stream) {
  const long n = static_cast<long>(rows) * bits / 32 * groups;
  if (n == 0) return cudaSuccess;
  PackQzerosKernel<<<GridFor(n), kGridThreads, 0, stream>>>(qzeros, zeros, groups, rows, bits, v1);
  return cudaGetLastError();
}

cudaError_t LaunchConvertFp16(__half* out, const float* inp, long n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ConvertFp16Kernel<<<GridFor(n), kGridThreads, 0, stream>>>(out, inp, n);
  return cudaGetLastError();
}

}  // namespace shrinkray::kernels
