// Forward-with-cache and backward kernels for every op of the Llama decoder,
// for training. llm.c style like core/kernels/cpu/ops.h: outputs first, then
// inputs, then sizes; raw pointers, no checks (callers validate shapes and
// token ids). Instantiated for float (training) and double (the gradient
// checks against finite differences run in float64).
//
// Every backward ACCUMULATES (+=) into its input and parameter gradients, so
// that residual branches, tied embeddings and shared kv heads sum naturally;
// zero the buffers first where a fresh gradient is wanted.
#pragma once

#include <cstdint>
#include <vector>

#include "core/model/llama.h"

namespace shrinkray::train {

// Row-major C[M, N] = alpha * op(A) @ op(B) + beta * C, op(X) = X or X^T; one
// cblas_sgemm / cblas_dgemm call.
void Gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc);
void Gemm(bool trans_a, bool trans_b, int M, int N, int K, double alpha, const double* A, int lda,
          const double* B, int ldb, double beta, double* C, int ldc);

// out[n, :] = table[tokens[n], :]. Backward scatters dout rows into dtable.
template <typename T>
void EmbeddingForward(T* out, const int32_t* tokens, const T* table, long N, int C);
template <typename T>
void EmbeddingBackward(T* dtable, const T* dout, const int32_t* tokens, long N, int C);

// out = inp * rstd * weight with rstd = 1/sqrt(mean(inp^2) + eps) per row (the
// mean of squares accumulated in double, as rmsnorm_forward does); rstd [N] is
// the cache the backward needs.
template <typename T>
void RmsNormForward(T* out, T* rstd, const T* inp, const T* weight, long N, int C, T eps);
template <typename T>
void RmsNormBackward(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight,
                     const T* rstd, long N, int C);

// cos/sin tables [seqlen, HD/2]: the model's (core/model/llama.h).
using ::shrinkray::RopeTables;
// HF rotate_half RoPE on rows [B, S, NH, HD] (see rope_forward). It is a
// rotation, so the backward is the transposed rotation of dout; it needs no
// cache. Forward may run in place; backward's dinp must not alias dout.
template <typename T>
void RopeForward(T* out, const T* inp, const T* cos, const T* sin, int B, int S, int NH, int HD);
template <typename T>
void RopeBackward(T* dinp, const T* dout, const T* cos, const T* sin, int B, int S, int NH,
                  int HD);

// out[N, OC] = inp[N, C] @ weight[OC, C]^T (+ bias). Backward: dinp, dweight
// and dbias (each may be null when not wanted).
template <typename T>
void LinearForward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC);
template <typename T>
void LinearBackward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                    int N, int C, int OC);

// Causal grouped-query attention (q, out: [B, S, NH, HD]; k, v: [B, S, NKV, HD];
// query head h reads kv head h / (NH / NKV)); window > 0 limits keys to
// i - j < window. probs [B, NH, S, S] caches the softmax (zero where masked).
template <typename T>
void AttentionForward(T* out, T* probs, const T* q, const T* k, const T* v, int B, int S, int NH,
                      int NKV, int HD, int window);
template <typename T>
void AttentionBackward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                       const T* probs, int B, int S, int NH, int NKV, int HD, int window);

// out = silu(gate) * up elementwise. Backward needs only the inputs.
template <typename T>
void SwigluForward(T* out, const T* gate, const T* up, long N);
template <typename T>
void SwigluBackward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, long N);

// Mean cross-entropy of softmax(logits) against targets over the rows whose
// target is >= 0 (a negative target is ignored, HF's -100); 0 when none is.
// probs [N, V] caches the softmax. Backward adds dloss * d(mean)/d(logits).
template <typename T>
T CrossEntropyForward(T* probs, const T* logits, const int32_t* targets, long N, int V);
template <typename T>
void CrossEntropyBackward(T* dlogits, const T* probs, const int32_t* targets, long N, int V,
                          T dloss);

}  // namespace shrinkray::train
