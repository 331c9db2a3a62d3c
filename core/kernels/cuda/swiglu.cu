// SwiGLU forward (Llama MLP): out = silu(gate) * up, fp32 math.
#include "core/kernels/cuda/ops.cuh"

namespace shrinkray::kernels {
namespace {

constexpr int kSwigluThreads = 256;
// Grid-stride loop: this many blocks keep every SM of an H100 (132 SMs,
// 2048 threads each) busy; more only adds scheduling.
constexpr long kSwigluMaxBlocks = 132L * 8 * 4;

__device__ __forceinline__ float Silu(float g) { return g / (1.0f + expf(-g)); }

// kVec elements per access (a 128-bit vector, or 1 when the pointers are not
// 16-byte aligned). The N % kVec tail is done by the first threads of the grid.
// No __restrict__: out may alias gate or up (in place); each thread reads its
// elements before writing them.
template <typename T, int kVec>
__global__ void __launch_bounds__(kSwigluThreads)
    SwigluKernel(T* out, const T* gate, const T* up, long N) {
  const long num_vec = N / kVec;
  const long first = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long stride = static_cast<long>(gridDim.x) * blockDim.x;
  for (long i = first; i < num_vec; i += stride) {
    float g[kVec];
    float u[kVec];
    LoadAsFloat<T, kVec>(gate + i * kVec, g);
    LoadAsFloat<T, kVec>(up + i * kVec, u);
#pragma unroll
    for (int k = 0; k < kVec; ++k) g[k] = Silu(g[k]) * u[k];
    StoreFromFloat<T, kVec>(out + i * kVec, g);
  }
  const long tail = num_vec * kVec + first;
  if (tail < N) {
    out[tail] = FromFloat<T>(Silu(ToFloat(gate[tail])) * ToFloat(up[tail]));
  }
}

template <typename T>
cudaError_t LaunchSwigluImpl(T* out, const T* gate, const T* up, long N, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;  // an empty grid is a launch error
  constexpr int kVec = kVec128<T>;
  const bool vec = IsAligned16(out) && IsAligned16(gate) && IsAligned16(up);
  const long work = vec ? N / kVec : N;
  long blocks = (work + kSwigluThreads - 1) / kSwigluThreads;
  blocks = blocks < 1 ? 1 : (blocks > kSwigluMaxBlocks ? kSwigluMaxBlocks : blocks);
  if (vec) {
    SwigluKernel<T, kVec><<<static_cast<unsigned>(blocks), kSwigluThreads, 0, stream>>>(
        out, gate, up, N);
  } else {
    SwigluKernel<T, 1><<<static_cast<unsigned>(blocks), kSwigluThreads, 0, stream>>>(
        out, gate, up, N);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchSwiglu(float* out, const float* gate, const float* up, long N,
                         cudaStream_t stream) {
  return LaunchSwigluImpl(out, gate, up, N, stream);
}

cudaError_t LaunchSwiglu(__nv_bfloat16* out, const __nv_bfloat16* gate, const __nv_bfloat16* up,
                         long N, cudaStream_t stream) {
  return LaunchSwigluImpl(out, gate, up, N, stream);
}

}  // namespace shrinkray::kernels
