// CUDA training ops: the backward twins of core/train/backward_ops.h, the
// fused distillation loss, global-norm clipping and fused AdamW, for
// bf16 mixed-precision training (llm.c's scheme):
//   * master parameters, their gradients and the Adam moments are fp32;
//   * the forward and backward GEMMs read a bf16 copy of the matrices, written
//     by adamw_update after every step;
//   * activations and activation gradients are bf16; every reduction, softmax
//     and loss is computed in fp32.
// Same conventions as ops.h: device pointers, work enqueued on `stream`,
// the status covers argument checks and the launch.
//
// Parameter gradients (dweight, dbias, dwte) always ACCUMULATE (+=) into fp32,
// so tied embeddings and gradient accumulation sum naturally; zero them first
// for a fresh gradient. Activation gradients are OVERWRITTEN unless the
// function says otherwise.
//
// Host-only header (plain g++ can include it).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace shrinkray {

// dwte[tokens[n], :] += dout[n, :] for n in [0, N) (fp32 atomics: the order
// of the sums differs run to run, as in PyTorch). Tokens outside [0, V) add
// nothing.
absl::Status embedding_backward(float* dwte, const __nv_bfloat16* dout, const int32_t* tokens,
                                int N, int V, int C, cudaStream_t stream);

// Backward of rmsnorm_forward (bf16 in/out, fp32 weight and rstd [N] from the
// forward): dinp[n, :] += d/dinp (ACCUMULATES, in fp32 then rounded: dinp is
// the residual stream's gradient), dweight[:] += sum_n dout * inp * rstd.
// Either of dinp and dweight may be null (not wanted); weight is needed only for
// dinp. dinp must not alias dout or inp. dweight's column sums are split over
// row chunks added with fp32 atomics when N is large (order may differ run to
// run); small N (one chunk) is deterministic.
absl::Status rmsnorm_backward(__nv_bfloat16* dinp, float* dweight, const __nv_bfloat16* dout,
                              const __nv_bfloat16* inp, const float* weight, const float* rstd,
                              int N, int C, cudaStream_t stream);

// Backward of rope_forward: the transposed rotation of dout. dinp may equal
// dout (in place). Same shape rules as rope_forward (HD even).
absl::Status rope_backward(__nv_bfloat16* dinp, const __nv_bfloat16* dout, const float* cos,
                           const float* sin, int B, int T, int NH, int HD, cudaStream_t stream);

// Backward of swiglu_forward: dgate = dout * up * silu'(gate), dup = dout *
// silu(gate), computed in fp32. dgate may alias gate and dup may alias up
// (each element is read before it is written); dgate must not alias dup or up,
// nor dup alias gate.
absl::Status swiglu_backward(__nv_bfloat16* dgate, __nv_bfloat16* dup, const __nv_bfloat16* dout,
                             const __nv_bfloat16* gate, const __nv_bfloat16* up, long N,
                             cudaStream_t stream);

// Backward of matmul_forward (out[N, OC] = inp[N, C] @ weight[OC, C]^T + bias):
//   dinp[N, C]     = dout @ weight  (bf16 out; beta_dinp 0 overwrites, 1 adds
//                    to what dinp holds, both in the GEMM's fp32 epilogue);
//   dweight[OC, C] += dout^T @ inp  (fp32, bf16 tensor cores, fp32 accumulate);
//   dbias[OC]      += sum_n dout    (fp32).
// Any of dinp, dweight, dbias may be null (not wanted). dweight and dbias are
// computed first, so dinp may alias inp (llm.c reuses buffers so); it must not
// alias dout or weight. beta_dinp must be finite. dbias's column sums use fp32
// atomics across row chunks when N is large (as rmsnorm_backward's dweight).
absl::Status matmul_backward(__nv_bfloat16* dinp, float* dweight, float* dbias,
                             const __nv_bfloat16* dout, const __nv_bfloat16* inp,
                             const __nv_bfloat16* weight, int N, int C, int OC, float beta_dinp,
                             cudaStream_t stream);

// Forward KL distillation mixed with cross-entropy, fused with its gradient
// (the GPU twin of train::DistillLoss with Divergence::kForwardKL and full
// teacher logits):
//   loss = alpha * T^2 * sum_rows KL(softmax(t/T) || softmax(s/T)) * inv_rows
//        + (1 - alpha) * sum_{rows with target >= 0} CE(s, target) * inv_labelled.
// logits [N, V] bf16 (the student's) are OVERWRITTEN with d loss / d logits
// (llm.c does the same to save an [N, V] buffer). teacher [N, V] bf16 may be
// null (then alpha must be 0: plain CE). kl_rows[N] and ce_rows[N] (fp32, may be
// null) receive each row's KL (at temperature T, without alpha and T^2) and CE
// (0 for an ignored target) so the host can report means. The caller passes
// inv_rows = 1/N and inv_labelled = 1/(number of targets >= 0) — over the whole
// batch when gradients are accumulated over micro-batches.
// targets [N] (device, int32) is required; a target < 0 is ignored (HF's -100)
// and so is a target >= V (the kernel cannot report it: validate on the host).
// kl_rows gets 0 when teacher is null. When alpha is 0 a non-null teacher only
// feeds kl_rows. Exponentials use the fast __expf (args <= 0); each row is read
// twice (statistics, then gradient). InvalidArgument for alpha outside [0, 1],
// temperature <= 0 or non-finite, negative or non-finite inv_rows /
// inv_labelled, a null teacher with alpha > 0, V = 0 with N > 0, null logits
// or targets, teacher == logits.
absl::Status distill_loss_backward(__nv_bfloat16* logits, float* kl_rows, float* ce_rows,
                                   const __nv_bfloat16* teacher, const int32_t* targets, int N,
                                   int V, float alpha, float temperature, float inv_rows,
                                   float inv_labelled, cudaStream_t stream);

// out[0] = sum_i grads[i]^2 over [0, n), in fp32 with a deterministic
// two-level reduction (out is overwritten). For global-norm clipping. The
// first level's grid depends only on n (and whether grads is 16-byte aligned),
// so the result is the same bits run to run; its partials live in a
// stream-ordered scratch buffer (cudaMallocAsync / cudaFreeAsync on stream).
absl::Status global_norm_squared(float* out, const float* grads, long n, cudaStream_t stream);

// One fused AdamW step over n parameters, PyTorch's order (see
// core/train/adamw.h), in fp32:
//   g = grads[i] * grad_scale (the clip factor; read from *grad_scale_dev when
//       that is non-null, so that clipping needs no host round trip);
//   p *= 1 - lr * weight_decay; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//   p -= lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps).
// params_bf16 (may be null) receives p rounded to bf16 for the next forward.
// step is 1-based. 1 - beta^step and 1 - lr * weight_decay are computed on the
// host in double and rounded once; everything else is fp32 on the device.
// InvalidArgument for n < 0, null params/grads/m/v, lr < 0, betas outside
// [0, 1), eps <= 0, weight_decay < 0, step < 1, a non-finite host grad_scale.
absl::Status adamw_update(float* params, __nv_bfloat16* params_bf16, const float* grads, float* m,
                          float* v, long n, float lr, float beta1, float beta2, float eps,
                          float weight_decay, int step, float grad_scale,
                          const float* grad_scale_dev, cudaStream_t stream);

// *scale = min(1, max_norm / (sqrt(*norm_squared) + 1e-6)) on the device
// (max_norm <= 0: 1; a non-finite norm: 1 too, leaving the gradients as they
// are like train::ClipGradNorm; the caller checks the norm to skip the step).
absl::Status clip_scale(float* scale, const float* norm_squared, float max_norm,
                        cudaStream_t stream);

// ---- attention with the softmax statistics kept for the backward ----------

// attention_forward (ops.h) that also writes lse[B, NH, T] (fp32): the
// natural-log log-sum-exp of each query row's scaled scores, which is all the
// backward needs to rebuild P. Same shape rules and kernels (mma.sync
// flash-attention-2 for HD 64/128 with 16-byte aligned pointers, else SIMT);
// bf16 only. lse may be null (not wanted). (attention_train.cc)
absl::Status attention_forward(__nv_bfloat16* out, float* lse, const __nv_bfloat16* q,
                               const __nv_bfloat16* k, const __nv_bfloat16* v, int B, int T,
                               int NH, int NKV, int HD, int window, cudaStream_t stream);

// Flash-attention-2 backward: dq [B, T, NH, HD], dk and dv [B, T, NKV, HD]
// (OVERWRITTEN; a kv head's gradient sums over the NH/NKV query heads that read
// it) from dout and out [B, T, NH, HD] and lse of the forward. Never
// materialises T x T. Causal, with the same sliding window semantics.
// HD 64 and 128 run on tensor cores (mma.sync; every pointer must be 16-byte
// aligned) with a temporary fp32 workspace of B*T*NH*HD + B*NH*T floats; dq's
// fp32 accumulation uses atomics, so dq may differ in the last bits run to
// run; dk and dv are deterministic. Any other even HD <= 256 runs SIMT kernels
// in fp32 (O(T^2 HD) per head, for small models such as head_dim 8; B*NH*T
// floats of workspace; deterministic). HD > 256 is Unimplemented. dq, dk, dv
// must not alias the inputs. Workspaces come from the stream-ordered
// allocator (cudaMallocAsync / cudaFreeAsync on `stream`).
// (attention_train.cc, attention_backward.cu)
absl::Status attention_backward(__nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv,
                                const __nv_bfloat16* dout, const __nv_bfloat16* out,
                                const float* lse, const __nv_bfloat16* q, const __nv_bfloat16* k,
                                const __nv_bfloat16* v, int B, int T, int NH, int NKV, int HD,
                                int window, cudaStream_t stream);

}  // namespace shrinkray
