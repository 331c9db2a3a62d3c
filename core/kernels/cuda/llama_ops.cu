// Element-wise Llama forward kernels: embedding lookup, residual add, RoPE
// (HF rotate_half) and a bias epilogue for the cuBLAS matmul.
#include "core/kernels/cuda/ops.cuh"

namespace shrinkray::kernels {
namespace {

constexpr int kThreads = kGridThreads;


template <typename T>
__global__ void EmbeddingKernel(T* out, const int32_t* __restrict__ tokens, const T* __restrict__ wte,
                                int N, int V, int C) {
  const long total = static_cast<long>(N) * C;
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    const long n = i / C;
    const int c = static_cast<int>(i - n * C);
    const int tok = tokens[n];
    out[i] = (tok >= 0 && tok < V) ? wte[static_cast<long>(tok) * C + c] : FromFloat<T>(0.0f);
  }
}

template <typename T>
__global__ void ResidualKernel(T* out, const T* inp1, const T* inp2, long N) {
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < N;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    out[i] = FromFloat<T>(ToFloat(inp1[i]) + ToFloat(inp2[i]));
  }
}

// One thread per (token row, head, d < HD/2): reads the pair (d, d + HD/2)
// before writing it, so out may equal inp. The products are rounded
// separately (no FMA contraction) to match the CPU op's x*c - y*s bit for bit.
template <typename T>
__global__ void RopeKernel(T* out, const T* inp, const float* __restrict__ cos,
                           const float* __restrict__ sin, int B, int T_, int NH, int HD,
                           bool inverse) {
  const int half = HD / 2;
  const long total = static_cast<long>(B) * T_ * NH * half;
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    const int d = static_cast<int>(i % half);
    const long row_head = i / half;          // (b*T + t)*NH + h
    const long bt = row_head / NH;           // b*T + t
    const int t = static_cast<int>(bt % T_);
    const long base = row_head * HD;
    const float c = cos[static_cast<long>(t) * half + d];
    // The inverse (transposed) rotation, RoPE's backward, is the rotation by
    // -angle: y * (-s) = -(y * s) exactly, so it rounds like the direct form.
    const float s = inverse ? -sin[static_cast<long>(t) * half + d] : sin[static_cast<long>(t) * half + d];
    const float x = ToFloat(inp[base + d]);
    const float y = ToFloat(inp[base + d + half]);
    out[base + d] = FromFloat<T>(__fsub_rn(__fmul_rn(x, c), __fmul_rn(y, s)));
    out[base + d + half] = FromFloat<T>(__fadd_rn(__fmul_rn(y, c), __fmul_rn(x, s)));
  }
}

template <typename T>
__global__ void AddBiasKernel(T* out, const float* __restrict__ bias, int N, int C) {
  const long total = static_cast<long>(N) * C;
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    out[i] = FromFloat<T>(ToFloat(out[i]) + bias[i % C]);
  }
}

}  // namespace

template <typename T>
cudaError_t LaunchEmbedding(T* out, const int32_t* tokens, const T* wte, int N, int V, int C,
                            cudaStream_t stream) {
  if (N == 0 || C == 0) return cudaSuccess;
  EmbeddingKernel<T><<<GridFor(static_cast<long>(N) * C), kThreads, 0, stream>>>(out, tokens, wte,
                                                                                  N, V, C);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchResidual(T* out, const T* inp1, const T* inp2, long N, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  ResidualKernel<T><<<GridFor(N), kThreads, 0, stream>>>(out, inp1, inp2, N);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchRope(T* out, const T* inp, const float* cos, const float* sin, int B, int T_,
                       int NH, int HD, bool inverse, cudaStream_t stream) {
  const long total = static_cast<long>(B) * T_ * NH * (HD / 2);
  if (total == 0) return cudaSuccess;
  RopeKernel<T><<<GridFor(total), kThreads, 0, stream>>>(out, inp, cos, sin, B, T_, NH, HD, inverse);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchAddBias(T* out, const float* bias, int N, int C, cudaStream_t stream) {
  if (N == 0 || C == 0) return cudaSuccess;
  AddBiasKernel<T><<<GridFor(static_cast<long>(N) * C), kThreads, 0, stream>>>(out, bias, N, C);
  return cudaGetLastError();
}

#define SR_INSTANTIATE(T)                                                                      \
  template cudaError_t LaunchEmbedding<T>(T*, const int32_t*, const T*, int, int, int,         \
                                          cudaStream_t);                                       \
  template cudaError_t LaunchResidual<T>(T*, const T*, const T*, long, cudaStream_t);          \
  template cudaError_t LaunchRope<T>(T*, const T*, const float*, const float*, int, int, int,  \
                                     int, bool, cudaStream_t);                                 \
  template cudaError_t LaunchAddBias<T>(T*, const float*, int, int, cudaStream_t);
SR_INSTANTIATE(float)
SR_INSTANTIATE(__nv_bfloat16)
#undef SR_INSTANTIATE

}  // namespace shrinkray::kernels
