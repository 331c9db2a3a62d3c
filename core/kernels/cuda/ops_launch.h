// Internal: the raw kernel launchers behind ops.h. They return the launch's
// cudaError_t so that the .cu files need no abseil (nvcc compiles them);
// ops.cc turns the result into absl::Status. Arguments are already validated.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace shrinkray::kernels {

cudaError_t LaunchRmsnorm(float* out, float* rstd, const float* inp, const float* weight, int N,
                          int C, float eps, cudaStream_t stream);
cudaError_t LaunchRmsnorm(__nv_bfloat16* out, float* rstd, const __nv_bfloat16* inp,
                          const float* weight, int N, int C, float eps, cudaStream_t stream);

cudaError_t LaunchSwiglu(float* out, const float* gate, const float* up, long N,
                         cudaStream_t stream);
cudaError_t LaunchSwiglu(__nv_bfloat16* out, const __nv_bfloat16* gate, const __nv_bfloat16* up,
                         long N, cudaStream_t stream);

// llama_ops.cu
template <typename T>
cudaError_t LaunchEmbedding(T* out, const int32_t* tokens, const T* wte, int N, int V, int C,
                            cudaStream_t stream);
template <typename T>
cudaError_t LaunchResidual(T* out, const T* inp1, const T* inp2, long N, cudaStream_t stream);
// inverse: the transposed rotation (rope_backward).
template <typename T>
cudaError_t LaunchRope(T* out, const T* inp, const float* cos, const float* sin, int B, int T_,
                       int NH, int HD, bool inverse, cudaStream_t stream);
// out[n, c] += bias[c] for out [N, C].
template <typename T>
cudaError_t LaunchAddBias(T* out, const float* bias, int N, int C, cudaStream_t stream);

// attention.cu. Tensor-core path: bf16, HD in {64, 128}, aligned pointers
// (checked by the caller via AttentionTensorCoreOk): the mma.sync
// flash-attention-2 forward. lse (fp32 [B, NH, T], natural log of each query
// row's sum of exp(scaled scores)) may be null (not wanted); the SIMT kernel
// writes it too.
bool AttentionTensorCoreOk(const void* out, const void* q, const void* k, const void* v, int NH,
                           int NKV, int HD);
cudaError_t LaunchAttentionTensorCore(__nv_bfloat16* out, float* lse, const __nv_bfloat16* q,
                                      const __nv_bfloat16* k, const __nv_bfloat16* v, int B,
                                      int T, int NH, int NKV, int HD, int window,
                                      cudaStream_t stream);
template <typename T>
cudaError_t LaunchAttentionSimt(T* out, float* lse, const T* q, const T* k, const T* v, int B,
                                int T_, int NH, int NKV, int HD, int window, cudaStream_t stream);
// fp32 with HD in {64, 128} and 16-byte aligned pointers (checked by the
// caller via AttentionTiledF32Ok): K/V tiles shared by 32 queries. No lse:
// the fp32 path is inference only (the trainer's backward runs bf16).
bool AttentionTiledF32Ok(const void* out, const void* q, const void* k, const void* v, int HD);
cudaError_t LaunchAttentionTiledF32(float* out, const float* q, const float* k, const float* v, int B, int T,
                                    int NH, int NKV, int HD, int window, cudaStream_t stream);

// attention_backward.cu: the flash-attention-2 backward (bf16, HD in {64, 128},
// 16-byte aligned pointers, T >= 1). Workspaces, owned by the caller:
// dq_acc fp32 [B, T, NH, HD] and delta fp32 [B, NH, T]. Enqueues, in order:
// delta = rowsum(dout * out) and dq_acc = 0; the main kernel (dk, dv written,
// dq_acc accumulated with fp32 atomics); dq = bf16(dq_acc).
cudaError_t LaunchAttentionBackward(__nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv,
                                    const __nv_bfloat16* dout, const __nv_bfloat16* out,
                                    const float* lse, const __nv_bfloat16* q,
                                    const __nv_bfloat16* k, const __nv_bfloat16* v,
                                    float* dq_acc, float* delta, int B, int T, int NH, int NKV,
                                    int HD, int window, cudaStream_t stream);

// attention_backward.cu: the SIMT backward for any even HD <= 256 (fp32 math,
// bf16 in/out, T >= 0, no alignment needed beyond bf16's). Workspace owned by
// the caller: delta fp32 [B, NH, T]. Enqueues, in order: dq and delta (one
// warp per query row), then dk and dv (one warp per key row, looping over its
// group's query heads). Deterministic (no atomics); dq, dk, dv OVERWRITTEN.
cudaError_t LaunchAttentionBackwardSimt(__nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv,
                                        const __nv_bfloat16* dout, const __nv_bfloat16* out,
                                        const float* lse, const __nv_bfloat16* q,
                                        const __nv_bfloat16* k, const __nv_bfloat16* v,
                                        float* delta, int B, int T, int NH, int NKV, int HD,
                                        int window, cudaStream_t stream);

}  // namespace shrinkray::kernels
