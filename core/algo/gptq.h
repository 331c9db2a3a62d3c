// GPTQ (Frantar et al. 2022) on one Linear weight, as IST-DASLab/gptq's
// GPTQ.fasterquant computes it, quirks included (see
// shared/docs/numerics-reference.md):
//   1. per-row quantizer fitted on the whole W (before dead-column zeroing);
//   2. dead columns (diag H == 0): H_jj = 1, W[:, j] = 0;
//   3. static_groups: one quantizer per group of columns, fitted before any
//      permutation or update;
//   4. act_order: columns sorted by descending diag(H);
//   5. H += damp·mean(diag H)·I, Hinv = chol(chol_inverse(chol(H)), upper),
//      with GPTQModel-style automatic damping increments on failure;
//   6. 128-column blocks: per column q = quant(w), err = (w - q)/d,
//      in-block rank-1 update; after each block W[:, i2:] -= Err1·Hinv[i1:i2, i2:];
//   7. without static_groups, a group's parameters are fitted at its first
//      column on the *outer* W, which lacks the current block's in-block
//      updates (the reference's staleness, kept);
//   8. permutation undone; loss Σ (w - q)² / d² / 2.
//
// Deviation: act_order sorts with a stable sort (ties keep column order);
// torch.argsort(descending=True) is not stable, so on exactly tied diag(H)
// the reference's order is unspecified.
//
// Sparsity preservation (keep_mask, e.g. after SparseGPT/Wanda): as
// llm-compressor does, the error updates are multiplied by the mask, so a
// pruned weight never moves from 0, quantizes to its row's zero point and
// dequantizes to exactly 0.0; its error (w - q) is 0, so it feeds nothing to
// the remaining columns. Entries of W that the mask prunes are zeroed first.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/algo/hessian_inverse.h"
#include "core/algo/quantized_weight.h"
#include "core/algo/solve_report.h"

namespace shrinkray {

struct GptqOptions {
  int bits = 4;          // 2..8 (2..16 with allow_wide_bits)
  int group_size = -1;   // -1: one group per row
  bool sym = true;
  bool act_order = false;
  bool static_groups = false;  // only meaningful with group_size > 0 (ignored otherwise, as the reference)
  double damp = 0.01;          // percdamp, in [0, 1)
  // Step by which damp is raised when the Cholesky chain fails; 0 disables
  // retries. GPTQModel's QuantizeConfig default.
  double damp_auto_increment = 0.0015;
  int block_size = 128;
  HessianPrecision precision = HessianPrecision::kFloat32;
  // How Hinv is computed (core/algo/hessian_inverse.h): the reference's
  // chain, or the flipped Cholesky in half the FLOPs.
  InverseFactorMethod inverse_factor = InverseFactorMethod::kCholeskyInverseChain;
  // Optional [rows, cols] mask from an earlier pruning stage: 0 = pruned
  // (stays exactly zero), nonzero = kept. Empty: no mask. Not owned.
  absl::Span<const uint8_t> keep_mask;
  // Permits bits up to 16 (analysis/tests: a near-lossless grid). Recipes stay 2..8.
  bool allow_wide_bits = false;
  // Ask for report.output_error (see SolveReport).
  bool output_error = false;
};

struct GptqResult {
  std::vector<float> weight;  // dequantized W [rows, cols], original column order
  QuantizedWeight quantized;  // codes/scales/zeros/g_idx, original column order
  std::vector<int32_t> perm;  // act_order: processing order (perm[k] = column), else identity
  SolveReport report;
};

// w: [rows, cols] row-major; h: [cols, cols] (the layer input's
// H = 2/n Σ x xᵀ). Errors: InvalidArgument naming the field, or
// FailedPrecondition when H cannot be made positive definite with damp < 1.
absl::StatusOr<GptqResult> GptqQuantize(absl::Span<const float> w, int rows, int cols, absl::Span<const float> h,
                                        const GptqOptions& options);
absl::StatusOr<GptqResult> GptqQuantize(absl::Span<const float> w, int rows, int cols, absl::Span<const double> h,
                                        const GptqOptions& options);

}  // namespace shrinkray
