// Backward kernels of the Llama decoder's element-wise and norm ops (the GPU
// twins of core/train/backward_ops.h): embedding scatter-add, RMSNorm, RoPE,
// SwiGLU, the bias column sum of matmul_backward, and a bf16 scale used when a
// GEMM has nothing to sum. bf16 activations, fp32 math and fp32 parameter
// gradients. Launchers in train_ops_launch.h; checks in train_ops.cc.
#include "core/kernels/cuda/ops.cuh"
#include "core/kernels/cuda/train_ops_launch.h"

namespace shrinkray::kernels {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = kGridThreads;

// ---- column sums (dweight of RMSNorm, dbias of matmul) ----------------------

// out[c] += sum_n op(n, c) over a [N, C] row-major domain. A block covers
// kColTile adjacent columns (one warp wide, so a warp reads a contiguous
// piece of a row) and a chunk of rows; its kRowLanes warps stride over the
// chunk's rows and the partials are summed in shared memory in a fixed order.
// With one chunk (gridDim.y == 1) each column is written by one thread with a
// plain +=: deterministic. With several chunks the chunk sums are added with
// fp32 atomics (order differs run to run, as for embedding_backward).
constexpr int kColTile = 32;
constexpr int kRowLanes = 8;
// Blocks enough to fill an H100 several times over.
constexpr long kColTargetBlocks = 132L * 8;
// A chunk shorter than this is not worth an atomic per column.
constexpr int kColMinRowsPerChunk = 64;

template <typename Op>
__global__ void __launch_bounds__(kColTile* kRowLanes)
    ColumnSumKernel(float* __restrict__ out, Op op, int N, int C, int rows_per_chunk) {
  __shared__ float partial[kRowLanes][kColTile + 1];
  const int c = blockIdx.x * kColTile + threadIdx.x;
  const int n0 = blockIdx.y * rows_per_chunk;
  const int n1 = min(N, n0 + rows_per_chunk);
  float acc = 0.0f;
  if (c < C) {
    for (int n = n0 + threadIdx.y; n < n1; n += kRowLanes) acc += op(n, c);
  }
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < kRowLanes; ++k) sum += partial[k][threadIdx.x];
    if (gridDim.y == 1) {
      out[c] += sum;
    } else {
      atomicAdd(out + c, sum);
    }
  }
}

template <typename Op>
cudaError_t LaunchColumnSum(float* out, Op op, int N, int C, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return cudaSuccess;
  const long gx = (static_cast<long>(C) + kColTile - 1) / kColTile;
  long gy = (static_cast<long>(N) + kColMinRowsPerChunk - 1) / kColMinRowsPerChunk;
  long cap = kColTargetBlocks / gx;
  cap = cap < 1 ? 1 : cap;
  gy = gy > cap ? cap : gy;
  gy = gy < 1 ? 1 : gy;
  const int rows_per_chunk = static_cast<int>((N + gy - 1) / gy);
  gy = (N + rows_per_chunk - 1) / rows_per_chunk;  // no empty chunk
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  const dim3 block(kColTile, kRowLanes);
  ColumnSumKernel<Op><<<grid, block, 0, stream>>>(out, op, N, C, rows_per_chunk);
  return cudaGetLastError();
}

// dweight[c] term of RMSNorm: dout * inp * rstd, in the CPU op's order.
struct RmsnormDweightOp {
  const bf16* dout;
  const bf16* inp;
  const float* rstd;
  int C;
  __device__ __forceinline__ float operator()(int n, int c) const {
    const long i = static_cast<long>(n) * C + c;
    return ToFloat(dout[i]) * ToFloat(inp[i]) * rstd[n];
  }
};

struct BiasOp {
  const bf16* dout;
  int OC;
  __device__ __forceinline__ float operator()(int n, int o) const {
    return ToFloat(dout[static_cast<long>(n) * OC + o]);
  }
};

// ---- embedding ----------------------------------------------------------------

__global__ void EmbeddingBackwardKernel(float* dwte, const bf16* __restrict__ dout,
                                        const int32_t* __restrict__ tokens, int N, int V, int C) {
  const long total = static_cast<long>(N) * C;
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    const long n = i / C;
    const int c = static_cast<int>(i - n * C);
    const int tok = tokens[n];
    if (tok >= 0 && tok < V) atomicAdd(dwte + static_cast<long>(tok) * C + c, ToFloat(dout[i]));
  }
}

// ---- RMSNorm dinp -------------------------------------------------------------

// One block per row. y_c = w_c x_c r, dr/dx_j = -r^3 x_j / C, hence
//   dx_j += r dy_j w_j - (r^3 / C) x_j sum_c dy_c w_c x_c.
// dinp is read, updated in fp32 and rounded once. kVec elements per access (8
// bf16 = 128 bits when C and the pointers allow it, else 1). dinp must not
// alias dout or inp (it accumulates).
template <int kVec>
__global__ void __launch_bounds__(1024)
    RmsnormBackwardKernel(bf16* dinp, const bf16* __restrict__ dout, const bf16* inp,
                          const float* __restrict__ weight, const float* __restrict__ rstd, int C) {
  const long row = blockIdx.x;
  const bf16* dy = dout + row * C;
  const bf16* x = inp + row * C;
  bf16* dx = dinp + row * C;
  const float r = rstd[row];
  const int num_vec = C / kVec;

  float dot = 0.0f;
  for (int i = threadIdx.x; i < num_vec; i += blockDim.x) {
    float g[kVec], xv[kVec], w[kVec];
    LoadAsFloat<bf16, kVec>(dy + i * kVec, g);
    LoadAsFloat<bf16, kVec>(x + i * kVec, xv);
    LoadAsFloat<float, kVec>(weight + i * kVec, w);
#pragma unroll
    for (int k = 0; k < kVec; ++k) dot += g[k] * w[k] * xv[k];
  }
  dot = BlockSum(dot);
  const float coef = dot / static_cast<float>(C) * r * r * r;

  for (int i = threadIdx.x; i < num_vec; i += blockDim.x) {
    float g[kVec], xv[kVec], w[kVec], d[kVec];
    LoadAsFloat<bf16, kVec>(dy + i * kVec, g);
    LoadAsFloat<bf16, kVec>(x + i * kVec, xv);
    LoadAsFloat<float, kVec>(weight + i * kVec, w);
    LoadAsFloat<bf16, kVec>(dx + i * kVec, d);
#pragma unroll
    for (int k = 0; k < kVec; ++k) d[k] += r * g[k] * w[k] - coef * xv[k];
    StoreFromFloat<bf16, kVec>(dx + i * kVec, d);
  }
}

template <int kVec>
void LaunchRmsnormBackwardVec(bf16* dinp, const bf16* dout, const bf16* inp, const float* weight,
                              const float* rstd, int N, int C, cudaStream_t stream) {
  // About four vectors per thread, whole warps, 64..1024 threads (BlockSum
  // needs a multiple of 32).
  const int num_vec = C / kVec;
  int threads = ((num_vec + 3) / 4 + kWarpSize - 1) / kWarpSize * kWarpSize;
  threads = threads < 64 ? 64 : (threads > 1024 ? 1024 : threads);
  RmsnormBackwardKernel<kVec><<<N, threads, 0, stream>>>(dinp, dout, inp, weight, rstd, C);
}

// ---- RoPE ---------------------------------------------------------------------

// RoPE backward: LaunchRope with inverse = true (llama_ops.cu).

// ---- SwiGLU -------------------------------------------------------------------

// silu(g) = g sig(g), silu'(g) = sig (1 + g (1 - sig)). kVec elements per
// access; the N % kVec tail is done by the first threads of the grid. No
// __restrict__: dgate may alias gate and dup may alias up; each thread loads
// all of its elements before storing any.
template <int kVec>
__global__ void __launch_bounds__(kThreads)
    SwigluBackwardKernel(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate,
                         const bf16* up, long N) {
  const long num_vec = N / kVec;
  const long first = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long stride = static_cast<long>(gridDim.x) * blockDim.x;
  for (long i = first; i < num_vec; i += stride) {
    float g[kVec], u[kVec], dy[kVec], dg[kVec], du[kVec];
    LoadAsFloat<bf16, kVec>(gate + i * kVec, g);
    LoadAsFloat<bf16, kVec>(up + i * kVec, u);
    LoadAsFloat<bf16, kVec>(dout + i * kVec, dy);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float sig = 1.0f / (1.0f + expf(-g[k]));
      dg[k] = dy[k] * u[k] * sig * (1.0f + g[k] * (1.0f - sig));
      du[k] = dy[k] * g[k] * sig;
    }
    StoreFromFloat<bf16, kVec>(dgate + i * kVec, dg);
    StoreFromFloat<bf16, kVec>(dup + i * kVec, du);
  }
  const long tail = num_vec * kVec + first;
  if (tail < N) {
    const float g = ToFloat(gate[tail]);
    const float u = ToFloat(up[tail]);
    const float dy = ToFloat(dout[tail]);
    const float sig = 1.0f / (1.0f + expf(-g));
    dgate[tail] = FromFloat<bf16>(dy * u * sig * (1.0f + g * (1.0f - sig)));
    dup[tail] = FromFloat<bf16>(dy * g * sig);
  }
}

// ---- scale ---------------------------------------------------------------------

__global__ void ScaleBf16Kernel(bf16* x, long n, float beta) {
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    x[i] = FromFloat<bf16>(beta == 0.0f ? 0.0f : beta * ToFloat(x[i]));
  }
}

}  // namespace

cudaError_t LaunchEmbeddingBackward(float* dwte, const bf16* dout, const int32_t* tokens, int N,
                                    int V, int C, cudaStream_t stream) {
  const long total = static_cast<long>(N) * C;
  if (total == 0) return cudaSuccess;
  EmbeddingBackwardKernel<<<GridFor(total), kThreads, 0, stream>>>(dwte, dout, tokens, N, V, C);
  return cudaGetLastError();
}

cudaError_t LaunchRmsnormBackward(bf16* dinp, float* dweight, const bf16* dout, const bf16* inp,
                                  const float* weight, const float* rstd, int N, int C,
                                  cudaStream_t stream) {
  if (N == 0 || C == 0) return cudaSuccess;
  // Two independent kernels on the stream: dweight's column sums, then dinp.
  if (dweight != nullptr) {
    const cudaError_t err =
        LaunchColumnSum(dweight, RmsnormDweightOp{dout, inp, rstd, C}, N, C, stream);
    if (err != cudaSuccess) return err;
  }
  if (dinp != nullptr) {
    constexpr int kVec = kVec128<bf16>;
    // Every row start 16-byte aligned: aligned bases and C a multiple of 8
    // (the fp32 weight's 8-element pieces are then 32-byte aligned).
    const bool vec = C % kVec == 0 && IsAligned16(dinp) && IsAligned16(dout) &&
                     IsAligned16(inp) && IsAligned16(weight);
    if (vec) {
      LaunchRmsnormBackwardVec<kVec>(dinp, dout, inp, weight, rstd, N, C, stream);
    } else {
      LaunchRmsnormBackwardVec<1>(dinp, dout, inp, weight, rstd, N, C, stream);
    }
  }
  return cudaGetLastError();
}

cudaError_t LaunchSwigluBackward(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate,
                                 const bf16* up, long N, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  constexpr int kVec = kVec128<bf16>;
  const bool vec = IsAligned16(dgate) && IsAligned16(dup) && IsAligned16(dout) &&
                   IsAligned16(gate) && IsAligned16(up);
  if (vec) {
    SwigluBackwardKernel<kVec>
        <<<GridFor(N / kVec), kThreads, 0, stream>>>(dgate, dup, dout, gate, up, N);
  } else {
    SwigluBackwardKernel<1><<<GridFor(N), kThreads, 0, stream>>>(dgate, dup, dout, gate, up, N);
  }
  return cudaGetLastError();
}

cudaError_t LaunchBiasBackward(float* dbias, const bf16* dout, int N, int OC,
                               cudaStream_t stream) {
  return LaunchColumnSum(dbias, BiasOp{dout, OC}, N, OC, stream);
}

cudaError_t LaunchScaleBf16(bf16* x, long n, float beta, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ScaleBf16Kernel<<<GridFor(n), kThreads, 0, stream>>>(x, n, beta);
  return cudaGetLastError();
}

}  // namespace shrinkray::kernels
