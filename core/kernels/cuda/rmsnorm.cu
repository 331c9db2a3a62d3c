// RMSNorm forward (Llama): y = x * rsqrt(mean(x^2) + eps) * w, fp32 math.
#include "core/kernels/cuda/ops.cuh"

namespace shrinkray::kernels {
namespace {

// Rows up to this width get one warp each (8 rows per 256-thread block): a
// block per narrow row would leave most of its threads idle. Wider rows get a
// whole block so that few-row inputs (decode steps) still fill the SMs.
constexpr int kWarpPerRowMaxC = 1024;
constexpr int kWarpRowsBlock = 256;

// One row per warp (kWarpPerRow) or per block. kVec elements per access: a
// 128-bit vector when the row width and pointers allow it, else 1. The row is
// read twice (sum of squares, then scale); the second read mostly hits L1/L2.
// out may alias inp: every element is read before its own thread writes it,
// and the reduction between the passes orders the whole row.
template <typename T, int kVec, bool kWarpPerRow>
__global__ void __launch_bounds__(1024)
    RmsnormKernel(T* out, float* __restrict__ rstd, const T* inp, const float* __restrict__ weight,
                  int N, int C, float eps) {
  int row, tid, stride;
  if constexpr (kWarpPerRow) {
    row = blockIdx.x * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
    if (row >= N) return;  // whole warps leave together, so the shuffles stay full
    tid = threadIdx.x % kWarpSize;
    stride = kWarpSize;
  } else {
    row = blockIdx.x;
    tid = threadIdx.x;
    stride = blockDim.x;
  }
  const T* x = inp + static_cast<long>(row) * C;
  T* y = out + static_cast<long>(row) * C;
  const int num_vec = C / kVec;

  float sum_sq = 0.0f;
  for (int i = tid; i < num_vec; i += stride) {
    float v[kVec];
    LoadAsFloat<T, kVec>(x + i * kVec, v);
#pragma unroll
    for (int k = 0; k < kVec; ++k) sum_sq += v[k] * v[k];
  }
  if constexpr (kWarpPerRow) {
    sum_sq = WarpSum(sum_sq);
  } else {
    sum_sq = BlockSum(sum_sq);
  }
  // 1/sqrt rather than rsqrtf: bit-for-bit closer to the CPU reference, and it
  // runs once per row.
  const float r = 1.0f / sqrtf(sum_sq / static_cast<float>(C) + eps);

  for (int i = tid; i < num_vec; i += stride) {
    float v[kVec];
    float w[kVec];
    LoadAsFloat<T, kVec>(x + i * kVec, v);
    LoadAsFloat<float, kVec>(weight + i * kVec, w);
#pragma unroll
    for (int k = 0; k < kVec; ++k) v[k] = (v[k] * r) * w[k];  // same order as the CPU op
    StoreFromFloat<T, kVec>(y + i * kVec, v);
  }
  if (rstd != nullptr && tid == 0) rstd[row] = r;
}

template <typename T, int kVec>
void LaunchRmsnormVec(T* out, float* rstd, const T* inp, const float* weight, int N, int C,
                      float eps, cudaStream_t stream) {
  if (C <= kWarpPerRowMaxC) {
    constexpr int kRowsPerBlock = kWarpRowsBlock / kWarpSize;
    const int blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
    RmsnormKernel<T, kVec, true>
        <<<blocks, kWarpRowsBlock, 0, stream>>>(out, rstd, inp, weight, N, C, eps);
  } else {
    // About four vectors per thread, in whole warps, 128..1024 threads.
    const int num_vec = C / kVec;
    int threads = ((num_vec + 3) / 4 + kWarpSize - 1) / kWarpSize * kWarpSize;
    threads = threads < 128 ? 128 : (threads > 1024 ? 1024 : threads);
    RmsnormKernel<T, kVec, false><<<N, threads, 0, stream>>>(out, rstd, inp, weight, N, C, eps);
  }
}

template <typename T>
cudaError_t LaunchRmsnormImpl(T* out, float* rstd, const T* inp, const float* weight, int N,
                              int C, float eps, cudaStream_t stream) {
  if (N == 0 || C == 0) return cudaSuccess;  // an empty grid is a launch error
  constexpr int kVec = kVec128<T>;
  // Vector path needs every row start 16-byte aligned: aligned bases and C a
  // multiple of the vector width (the weight then needs only its base aligned).
  const bool vec = C % kVec == 0 && IsAligned16(out) && IsAligned16(inp) && IsAligned16(weight);
  if (vec) {
    LaunchRmsnormVec<T, kVec>(out, rstd, inp, weight, N, C, eps, stream);
  } else {
    LaunchRmsnormVec<T, 1>(out, rstd, inp, weight, N, C, eps, stream);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchRmsnorm(float* out, float* rstd, const float* inp, const float* weight, int N,
                          int C, float eps, cudaStream_t stream) {
  return LaunchRmsnormImpl(out, rstd, inp, weight, N, C, eps, stream);
}

cudaError_t LaunchRmsnorm(__nv_bfloat16* out, float* rstd, const __nv_bfloat16* inp,
                          const float* weight, int N, int C, float eps, cudaStream_t stream) {
  return LaunchRmsnormImpl(out, rstd, inp, weight, N, C, eps, stream);
}

}  // namespace shrinkray::kernels
