// Device-side helpers shared by the CUDA kernels (nvcc only): warp/block
// reductions and 128-bit vectorised loads/stores that convert to fp32.
// The host-visible API is ops.h; the launchers are declared in ops_launch.h.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/kernels/cuda/ops_launch.h"

namespace shrinkray::kernels {

constexpr int kWarpSize = 32;

// Grid-stride launches of the elementwise kernels: kGridThreads per block, at
// most kGridMaxBlocks blocks (enough to fill an H100/H200), at least one.
constexpr int kGridThreads = 256;
constexpr long kGridMaxBlocks = 132L * 16;
inline unsigned GridFor(long work) {
  long blocks = (work + kGridThreads - 1) / kGridThreads;
  blocks = blocks < 1 ? 1 : (blocks > kGridMaxBlocks ? kGridMaxBlocks : blocks);
  return static_cast<unsigned>(blocks);
}

// Elements of T per 128-bit access.
template <typename T>
constexpr int kVec128 = 16 / static_cast<int>(sizeof(T));

__host__ __device__ __forceinline__ bool IsAligned16(const void* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0;
}

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);  // round to nearest even, as torch does
}

// Sum across the 32 lanes of a warp; every lane gets the total.
__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Sum across the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the total. Call at most once per kernel: the shared partials are
// not re-synchronised for reuse.
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float partial[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  v = WarpSum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int num_warps = blockDim.x / kWarpSize;
  // Every warp reduces the partials itself, which saves a second barrier.
  v = lane < num_warps ? partial[lane] : 0.0f;
  return WarpSum(v);
}

// Loads kN elements of T from p into fp32. When kN elements span whole 16-byte
// chunks, p must be 16-byte aligned and the load is done in 128-bit pieces.
template <typename T, int kN>
__device__ __forceinline__ void LoadAsFloat(const T* p, float (&f)[kN]) {
  constexpr int kPer = kVec128<T>;
  if constexpr (kN % kPer == 0) {
#pragma unroll
    for (int c = 0; c < kN / kPer; ++c) {
      const int4 raw = *reinterpret_cast<const int4*>(p + c * kPer);
      T e[kPer];
      memcpy(e, &raw, sizeof(raw));
#pragma unroll
      for (int k = 0; k < kPer; ++k) f[c * kPer + k] = ToFloat(e[k]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < kN; ++k) f[k] = ToFloat(p[k]);
  }
}

// Converts kN fp32 values to T and stores them at p (same alignment rule).
template <typename T, int kN>
__device__ __forceinline__ void StoreFromFloat(T* p, const float (&f)[kN]) {
  constexpr int kPer = kVec128<T>;
  if constexpr (kN % kPer == 0) {
#pragma unroll
    for (int c = 0; c < kN / kPer; ++c) {
      T e[kPer];
#pragma unroll
      for (int k = 0; k < kPer; ++k) e[k] = FromFloat<T>(f[c * kPer + k]);
      int4 raw;
      memcpy(&raw, e, sizeof(raw));
      *reinterpret_cast<int4*>(p + c * kPer) = raw;
    }
  } else {
#pragma unroll
    for (int k = 0; k < kN; ++k) p[k] = FromFloat<T>(f[k]);
  }
}

}  // namespace shrinkray::kernels
