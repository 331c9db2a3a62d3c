// GPU Hessian accumulation for GPTQ/SparseGPT, in the reference's running form
// (shared/docs/numerics-reference.md, "Statistics"): for a batch of b samples
// whose tokens are the rows of x [tokens, cols],
//   H *= n / (n + b);  n += b;  H += (2 / n) · xᵀ x
// so that after all batches H = (2 / n_samples) · Σ_tokens x xᵀ, in fp32.
// Large H (cols a multiple of 1024..2048, at least two tiles) are computed
// block-triangularly and mirrored: ~40% fewer FLOPs, the same dot products.
// The reference scales x by sqrt(2/n) before the product; here the factor is
// the GEMM's alpha and n/(n+b) its beta (the same H up to fp32 rounding, and
// no rescaled copy of x).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace shrinkray {

// h: device [cols, cols] fp32 (symmetric, so row/column-major is the same).
// *n_samples: samples accumulated so far (0 on the first call: h's contents
// are then ignored, not read). x: device [tokens, cols] row-major.
// bf16 x: tensor cores, fp32 accumulation (CUBLAS_COMPUTE_32F).
absl::Status hessian_accumulate(float* h, int cols, long* n_samples, const __nv_bfloat16* x,
                                long tokens, int batch_samples, cudaStream_t stream);

// How the products of fp32 activations are computed:
//   kFp32    CUBLAS_COMPUTE_32F: IEEE fp32 on the SIMT cores (the reference).
//   k3xTf32  near-fp32 products on TF32 tensor cores: x = big + small with
//            big rounded to TF32 (exact in it) and small = x - big (exact in
//            fp32), and H from big·big + big·small + small·big, each a TF32
//            GEMM with fp32 accumulation (small·small, ~2^-22 of x·x, is
//            dropped; small's own TF32 rounding costs as much). The tensor
//            cores' fp32 accumulation may truncate rather than round, which
//            over thousands of rows leaves errors of ~1e-5 of max |H| where
//            the fp32 cores leave ~1e-6 (bf16 activations: ~1e-3); far below
//            GPTQ's 1% damping. Three TF32 products cost less than one on
//            the fp32 cores (H100: 3 x 1/494 vs 1/67 s per PFLOP). The split
//            runs over chunks of at most 2048 rows, in a workspace of up to
//            256 MiB from the stream-ordered allocator (without one the call
//            falls back to kFp32). H is mirrored element by element: exactly
//            symmetric.
//   kTf32    CUBLAS_COMPUTE_32F_FAST_TF32: only on explicit request (10-bit
//            mantissa products).
enum class Fp32HessianGemm { kFp32, k3xTf32, kTf32 };

absl::Status hessian_accumulate(float* h, int cols, long* n_samples, const float* x, long tokens,
                                int batch_samples, Fp32HessianGemm gemm, cudaStream_t stream);

// The multiply-add FLOPs (2 per product) one hessian_accumulate call of
// `tokens` rows spends on a cols x cols H: tokens · cols² · 2 for one full
// GEMM, less on the block-triangular path. For benchmarks' floors.
double hessian_accumulate_flops(int cols, long tokens);

}  // namespace shrinkray
