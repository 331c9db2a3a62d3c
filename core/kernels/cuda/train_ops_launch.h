// Internal: the raw kernel launchers behind train_ops.h (same role as
// ops_launch.h for ops.h). They return the launch's cudaError_t so that the
// .cu files need no abseil; train_ops.cc validates the arguments first and
// turns the result into absl::Status. Every launcher returns cudaSuccess
// without launching anything for an empty problem.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace shrinkray::kernels {

// train_ops.cu ---------------------------------------------------------------

// dwte[tokens[n], :] += dout[n, :] (fp32 atomics); tokens outside [0, V) skip.
cudaError_t LaunchEmbeddingBackward(float* dwte, const __nv_bfloat16* dout, const int32_t* tokens,
                                    int N, int V, int C, cudaStream_t stream);

// dweight (may be null) first, then dinp (may be null): see rmsnorm_backward.
cudaError_t LaunchRmsnormBackward(__nv_bfloat16* dinp, float* dweight, const __nv_bfloat16* dout,
                                  const __nv_bfloat16* inp, const float* weight,
                                  const float* rstd, int N, int C, cudaStream_t stream);

cudaError_t LaunchSwigluBackward(__nv_bfloat16* dgate, __nv_bfloat16* dup,
                                 const __nv_bfloat16* dout, const __nv_bfloat16* gate,
                                 const __nv_bfloat16* up, long N, cudaStream_t stream);

// dbias[o] += sum_n dout[n, o] for dout [N, OC].
cudaError_t LaunchBiasBackward(float* dbias, const __nv_bfloat16* dout, int N, int OC,
                               cudaStream_t stream);

// x[i] = bf16(beta * x[i]) for i in [0, n) (beta == 0 writes zeros, NaN-free).
cudaError_t LaunchScaleBf16(__nv_bfloat16* x, long n, float beta, cudaStream_t stream);

// distill_loss.cu -------------------------------------------------------------

cudaError_t LaunchDistillLossBackward(__nv_bfloat16* logits, float* kl_rows, float* ce_rows,
                                      const __nv_bfloat16* teacher, const int32_t* targets, int N,
                                      int V, float alpha, float temperature, float inv_rows,
                                      float inv_labelled, cudaStream_t stream);

// adamw.cu ----------------------------------------------------------------------

// Two-level deterministic sum of squares; the partials live in a
// stream-ordered scratch allocation (cudaMallocAsync / cudaFreeAsync).
cudaError_t LaunchGlobalNormSquared(float* out, const float* grads, long n, cudaStream_t stream);

cudaError_t LaunchClipScale(float* scale, const float* norm_squared, float max_norm,
                            cudaStream_t stream);

// The step-dependent constants are computed by the caller in double and
// rounded once: bc1 = 1 - beta1^step, bc2 = 1 - beta2^step, decay = 1 - lr *
// weight_decay. The kernel forms 1 - beta1 and 1 - beta2 in fp32 (exact for
// betas >= 0.5, by Sterbenz's lemma).
cudaError_t LaunchAdamW(float* params, __nv_bfloat16* params_bf16, const float* grads, float* m,
                        float* v, long n, float lr, float beta1, float beta2, float eps,
                        float decay, float bc1, float bc2, float grad_scale,
                        const float* grad_scale_dev, cudaStream_t stream);

}  // namespace shrinkray::kernels
