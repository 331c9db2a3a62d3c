// The optimizer-side kernels of mixed-precision training: the deterministic
// global sum of squared gradients, the clip factor derived from it on the
// device, and the fused AdamW step over fp32 master weights (with the bf16
// copy the next forward reads).
#include <cmath>

#include "core/kernels/cuda/ops.cuh"
#include "core/kernels/cuda/train_ops_launch.h"

namespace shrinkray::kernels {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = kGridThreads;

// ---- global norm ----------------------------------------------------------------

// Level 1 uses a grid that depends only on n (and the alignment of grads), at
// most kNormMaxBlocks blocks; level 2 is one block of kNormMaxBlocks threads.
// Every partial is summed in a fixed order, so the result is the same bits run
// to run.
constexpr int kNormThreads = 256;
constexpr int kNormMaxBlocks = 1024;
constexpr int kNormVecPerThread = 8;  // aim: at least this many vectors per thread

// kVec floats per access (4 = 128 bits, or 1); the n % kVec tail is done by the
// first threads of the grid.
template <int kVec>
__global__ void __launch_bounds__(kNormThreads)
    SumSquaresPartialKernel(float* __restrict__ partials, const float* __restrict__ grads,
                            long n) {
  const long num_vec = n / kVec;
  const long first = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long stride = static_cast<long>(gridDim.x) * blockDim.x;
  float acc = 0.0f;
  for (long i = first; i < num_vec; i += stride) {
    float g[kVec];
    LoadAsFloat<float, kVec>(grads + i * kVec, g);
#pragma unroll
    for (int k = 0; k < kVec; ++k) acc += g[k] * g[k];
  }
  const long tail = num_vec * kVec + first;
  if (tail < n) acc += grads[tail] * grads[tail];
  acc = BlockSum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(kNormMaxBlocks)
    SumPartialsKernel(float* __restrict__ out, const float* __restrict__ partials, int count) {
  float acc = 0.0f;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  acc = BlockSum(acc);
  if (threadIdx.x == 0) out[0] = acc;
}

// ---- clip factor ------------------------------------------------------------------

// torch.nn.utils.clip_grad_norm_'s factor, capped at 1. A non-finite norm
// gives 1 (the gradients are left as they are, as train::ClipGradNorm does;
// the caller reads the norm to skip the step).
__global__ void ClipScaleKernel(float* scale, const float* norm_squared, float max_norm) {
  const float norm = sqrtf(*norm_squared);
  float s = 1.0f;
  if (max_norm > 0.0f && isfinite(norm)) s = fminf(1.0f, max_norm / (norm + 1e-6f));
  *scale = s;
}

// ---- AdamW ------------------------------------------------------------------------

// PyTorch's order, as train::AdamW::Update (which does it in double):
//   g = grad * scale; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//   p = p * decay - lr * (m / bc1) / (sqrt(v / bc2) + eps).
// sqrtf and the divisions are IEEE (no fast-math in this build).
__global__ void __launch_bounds__(kThreads)
    AdamWKernel(float* __restrict__ params, bf16* __restrict__ params_bf16,
                const float* __restrict__ grads, float* __restrict__ m, float* __restrict__ v,
                long n, float lr, float b1, float b2, float eps, float decay, float bc1,
                float bc2, float grad_scale, const float* __restrict__ grad_scale_dev) {
  const float scale = grad_scale_dev != nullptr ? *grad_scale_dev : grad_scale;
  const float one_minus_b1 = 1.0f - b1;
  const float one_minus_b2 = 1.0f - b2;
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    const float g = grads[i] * scale;
    const float mi = b1 * m[i] + one_minus_b1 * g;
    const float vi = b2 * v[i] + one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float update = (mi / bc1) / (sqrtf(vi / bc2) + eps);
    const float p = params[i] * decay - lr * update;
    params[i] = p;
    if (params_bf16 != nullptr) params_bf16[i] = FromFloat<bf16>(p);
  }
}

}  // namespace

cudaError_t LaunchGlobalNormSquared(float* out, const float* grads, long n, cudaStream_t stream) {
  if (n == 0) return cudaMemsetAsync(out, 0, sizeof(float), stream);
  constexpr int kVec = kVec128<float>;
  const bool vec = IsAligned16(grads);
  const long work = vec ? n / kVec : n;
  long blocks = (work + static_cast<long>(kNormThreads) * kNormVecPerThread - 1) /
                (static_cast<long>(kNormThreads) * kNormVecPerThread);
  blocks = blocks < 1 ? 1 : (blocks > kNormMaxBlocks ? kNormMaxBlocks : blocks);
  // Stream-ordered scratch for the partials: safe when several streams run
  // this at once, and capturable in a CUDA graph.
  void* scratch = nullptr;
  cudaError_t err = cudaMallocAsync(&scratch, static_cast<size_t>(blocks) * sizeof(float), stream);
  if (err != cudaSuccess) return err;
  float* partials = static_cast<float*>(scratch);
  if (vec) {
    SumSquaresPartialKernel<kVec>
        <<<static_cast<unsigned>(blocks), kNormThreads, 0, stream>>>(partials, grads, n);
  } else {
    SumSquaresPartialKernel<1>
        <<<static_cast<unsigned>(blocks), kNormThreads, 0, stream>>>(partials, grads, n);
  }
  err = cudaGetLastError();
  if (err == cudaSuccess) {
    SumPartialsKernel<<<1, kNormMaxBlocks, 0, stream>>>(out, partials,
                                                        static_cast<int>(blocks));
    err = cudaGetLastError();
  }
  const cudaError_t free_err = cudaFreeAsync(scratch, stream);
  return err != cudaSuccess ? err : free_err;
}

cudaError_t LaunchClipScale(float* scale, const float* norm_squared, float max_norm,
                            cudaStream_t stream) {
  ClipScaleKernel<<<1, 1, 0, stream>>>(scale, norm_squared, max_norm);
  return cudaGetLastError();
}

cudaError_t LaunchAdamW(float* params, bf16* params_bf16, const float* grads, float* m, float* v,
                        long n, float lr, float beta1, float beta2, float eps, float decay,
                        float bc1, float bc2, float grad_scale, const float* grad_scale_dev,
                        cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  AdamWKernel<<<GridFor(n), kThreads, 0, stream>>>(params, params_bf16, grads, m, v, n, lr, beta1,
                                                   beta2, eps, decay, bc1, bc2, grad_scale,
                                                   grad_scale_dev);
  return cudaGetLastError();
}

}  // namespace shrinkray::kernels
