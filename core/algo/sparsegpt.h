// SparseGPT (Frantar & Alistarh 2023) on one Linear weight, as
// IST-DASLab/sparsegpt's SparseGPT.fasterprune computes it:
//   - same dead columns, damping and Hinv as GPTQ (core/algo/gptq.h);
//   - unstructured: at each block start, score W1² / diag(Hinv1)² over the
//     whole [rows, block] slice, thresh = sort(score)[int(numel · p)],
//     prune score <= thresh (ties and the "<=" can prune more than
//     int(numel · p); p = 0 still prunes each block's minimum — both
//     reference behaviour, kept);
//   - N:M: at every in-block column i with i % M == 0, score the *current*
//     W1 columns i..i+M (in-block updates included) and prune the N smallest
//     per row (ties: lower column first; torch.topk leaves this unspecified);
//   - pruned entries become 0 (with quantization: kept entries become
//     quant(w), pruned 0), error propagated as in GPTQ.
//
// Optional joint quantization: bits > 0 fits a per-row quantizer once on the
// unpruned W (before dead columns are zeroed), as the reference. Extension:
// group_size > 0 refits per group at the group's first column on the outer
// W, exactly GPTQ's (stale) rule; the reference has no groups here.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/algo/hessian_inverse.h"
#include "core/algo/quantized_weight.h"
#include "core/algo/solve_report.h"

namespace shrinkray {

struct SparseGptOptions {
  double sparsity = 0.5;  // unstructured target, [0, 1); ignored with N:M
  int prune_n = 0;        // N:M when prune_n > 0 (e.g. 2:4); M must divide cols and block_size
  int prune_m = 0;
  int block_size = 128;
  double damp = 0.01;
  double damp_auto_increment = 0.0015;  // see GptqOptions
  HessianPrecision precision = HessianPrecision::kFloat32;
  // How Hinv is computed (core/algo/hessian_inverse.h): the reference's
  // chain, or the flipped Cholesky in half the FLOPs.
  InverseFactorMethod inverse_factor = InverseFactorMethod::kCholeskyInverseChain;
  // Joint quantization: 0 = off, else 2..8 (2..16 with allow_wide_bits).
  int bits = 0;
  bool sym = true;
  int group_size = -1;
  bool allow_wide_bits = false;
  // Ask for report.output_error (see SolveReport).
  bool output_error = false;
};

struct SparseGptResult {
  std::vector<float> weight;  // [rows, cols]; pruned entries exactly 0
  std::vector<uint8_t> keep;  // [rows, cols]; 1 = kept, 0 = pruned
  int64_t pruned = 0;         // number of zeros in keep
  // Set when options.bits > 0: pruned entries carry their row's zero point.
  std::optional<QuantizedWeight> quantized;
  SolveReport report;
};

absl::StatusOr<SparseGptResult> SparseGptPrune(absl::Span<const float> w, int rows, int cols,
                                               absl::Span<const float> h, const SparseGptOptions& options);
absl::StatusOr<SparseGptResult> SparseGptPrune(absl::Span<const float> w, int rows, int cols,
                                               absl::Span<const double> h, const SparseGptOptions& options);

}  // namespace shrinkray
