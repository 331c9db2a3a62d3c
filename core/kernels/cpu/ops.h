// CPU reference kernels, llm.c op style: outputs first, then inputs, then sizes.
// Their CUDA twins in core/kernels/cuda/ops.cuh keep the same names and argument
// order, plus a stream. All activations are row-major [N, C] float32.
#pragma once

namespace shrinkray {

// out[n, :] = inp[n, :] / sqrt(mean(inp[n, :]^2) + eps) * weight[:]
// (Hugging Face LlamaRMSNorm, computed in fp32). rstd[n] receives the
// reciprocal RMS for the backward pass; it may be null.
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight,
                     int N, int C, float eps);

// out[i] = silu(gate[i]) * up[i] for i in [0, N): the SwiGLU activation of the
// Llama MLP, silu(x) = x / (1 + exp(-x)).
void swiglu_forward(float* out, const float* gate, const float* up, long N);

// out[N, OC] = inp[N, C] @ weight[OC, C]^T (+ bias[OC] when bias is non-null):
// a Linear with HF's [out, in] weight layout, one cblas_sgemm (OpenBLAS
// threads it). out must not alias inp.
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                    int N, int C, int OC);

// out[i] = inp1[i] + inp2[i] (the residual add); out may alias either input.
void residual_forward(float* out, const float* inp1, const float* inp2, long N);

// Rotary embedding in HF's rotate_half convention, for rows laid out
// [B, T, NH, HD] (token-major, heads contiguous in a row). cos/sin are [T, HD/2]
// for positions 0..T-1 of every sequence (both halves of a head share them):
//   out[d]        = x[d] * cos[d] - x[d + HD/2] * sin[d]
//   out[d + HD/2] = x[d + HD/2] * cos[d] + x[d] * sin[d]      for d < HD/2.
// out may equal inp.
void rope_forward(float* out, const float* inp, const float* cos, const float* sin, int B, int T,
                  int NH, int HD);

// Causal grouped-query attention. q, out: [B, T, NH, HD]; k, v: [B, T, NKV, HD];
// query head h reads kv head h / (NH / NKV). Scores are scaled by 1/sqrt(HD)
// and softmaxed over keys j <= i; when window > 0 only keys with
// i - j < window are seen (HF's sliding_window mask). Parallel over (b, h).
void attention_forward(float* out, const float* q, const float* k, const float* v, int B, int T,
                       int NH, int NKV, int HD, int window);

}  // namespace shrinkray
