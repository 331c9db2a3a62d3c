// CUDA twins of the CPU reference kernels in core/kernels/cpu/ops.h: same names
// and argument order, plus a trailing stream (llm.c llmc/*.cuh style). All
// pointers are device pointers; the work is enqueued on `stream` and the call
// returns without waiting for it. The returned status covers argument checks
// and the launch itself; an error raised while the kernel runs surfaces at the
// next synchronising call (e.g. DeviceBuffer::CopyToHost).
//
// Host-only header (plain g++ can include it). Device-side helpers for .cu files
// live in ops.cuh.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace shrinkray {

// out[n, :] = inp[n, :] / sqrt(mean(inp[n, :]^2) + eps) * weight[:], fp32.
// rstd[n] receives the reciprocal RMS (fp32); it may be null.
absl::Status rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight,
                             int N, int C, float eps, cudaStream_t stream);

// bf16 activations: inp/out are bf16, weight and rstd fp32, the sum of squares
// and the scaling are computed in fp32 and only the output is rounded to bf16.
absl::Status rmsnorm_forward(__nv_bfloat16* out, float* rstd, const __nv_bfloat16* inp,
                             const float* weight, int N, int C, float eps, cudaStream_t stream);

// out[i] = silu(gate[i]) * up[i] for i in [0, N), fp32.
absl::Status swiglu_forward(float* out, const float* gate, const float* up, long N,
                            cudaStream_t stream);

// bf16 in and out, computed in fp32.
absl::Status swiglu_forward(__nv_bfloat16* out, const __nv_bfloat16* gate,
                            const __nv_bfloat16* up, long N, cudaStream_t stream);

// ---- Llama forward ops (ops_llama.cc, llama_ops.cu, attention.cu) -----------

// out[n, :] = wte[tokens[n], :] for n in [0, N); wte is [V, C]. A token outside
// [0, V) gives a zero row (the kernel cannot return an error; callers
// validate token ids on the host).
absl::Status embedding_forward(float* out, const int32_t* tokens, const float* wte, int N, int V,
                               int C, cudaStream_t stream);
absl::Status embedding_forward(__nv_bfloat16* out, const int32_t* tokens,
                               const __nv_bfloat16* wte, int N, int V, int C,
                               cudaStream_t stream);

// out[N, OC] = inp[N, C] @ weight[OC, C]^T (+ bias[OC]) via cuBLAS on the
// calling thread's handle. fp32: CUBLAS_COMPUTE_32F (IEEE fp32, never TF32).
// bf16 inputs: tensor cores with fp32 accumulation (CUBLAS_COMPUTE_32F), the
// output rounded once to bf16 (or kept fp32). The bias (fp32, may be null) is
// added after the GEMM: for a bf16 output that is a second rounding.
// out must not alias inp.
absl::Status matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                            int N, int C, int OC, cudaStream_t stream);
absl::Status matmul_forward(__nv_bfloat16* out, const __nv_bfloat16* inp,
                            const __nv_bfloat16* weight, const float* bias, int N, int C, int OC,
                            cudaStream_t stream);
absl::Status matmul_forward(float* out, const __nv_bfloat16* inp, const __nv_bfloat16* weight,
                            const float* bias, int N, int C, int OC, cudaStream_t stream);

// out[i] = inp1[i] + inp2[i]; out may alias either input.
absl::Status residual_forward(float* out, const float* inp1, const float* inp2, long N,
                              cudaStream_t stream);
absl::Status residual_forward(__nv_bfloat16* out, const __nv_bfloat16* inp1,
                              const __nv_bfloat16* inp2, long N, cudaStream_t stream);

// HF rotate_half RoPE on rows [B, T, NH, HD]; cos/sin are fp32 [T, HD/2]
// (see the CPU op). out may equal inp. HD must be even.
absl::Status rope_forward(float* out, const float* inp, const float* cos, const float* sin, int B,
                          int T, int NH, int HD, cudaStream_t stream);
absl::Status rope_forward(__nv_bfloat16* out, const __nv_bfloat16* inp, const float* cos,
                          const float* sin, int B, int T, int NH, int HD, cudaStream_t stream);

// Causal GQA attention, same layout and semantics as the CPU op (q, out:
// [B, T, NH, HD]; k, v: [B, T, NKV, HD]; window > 0: sliding window). Never
// materialises the T x T scores: a tiled online-softmax (flash-attention)
// kernel. bf16 with HD in {64, 128} and 16-byte aligned pointers runs the
// flash-attention-2 tensor-core kernel (mma.sync bf16 QK^T and PV, fp32
// accumulation, online softmax in registers, P rounded to bf16 before PV as
// flash-attention does); fp32 with HD in {64, 128} and aligned pointers runs
// a tiled SIMT kernel (32 queries share each K/V tile in shared memory); any
// other case runs a SIMT kernel in fp32, one warp per query (HD <= 256). out
// must not alias q, k or v. train_ops.h has the variant that also writes the
// log-sum-exp for the backward (same kernels).
absl::Status attention_forward(float* out, const float* q, const float* k, const float* v, int B,
                               int T, int NH, int NKV, int HD, int window, cudaStream_t stream);
absl::Status attention_forward(__nv_bfloat16* out, const __nv_bfloat16* q,
                               const __nv_bfloat16* k, const __nv_bfloat16* v, int B, int T,
                               int NH, int NKV, int HD, int window, cudaStream_t stream);

// Forces the one-warp-per-query SIMT attention kernel (tests cross-check it
// against the others; the attention bench times it beside them).
absl::Status attention_forward_simt(float* out, const float* q, const float* k, const float* v, int B, int T,
                                    int NH, int NKV, int HD, int window, cudaStream_t stream);
absl::Status attention_forward_simt(__nv_bfloat16* out, const __nv_bfloat16* q,
                                    const __nv_bfloat16* k, const __nv_bfloat16* v, int B, int T,
                                    int NH, int NKV, int HD, int window, cudaStream_t stream);

}  // namespace shrinkray
