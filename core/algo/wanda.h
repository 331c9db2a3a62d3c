// Wanda (Sun et al. 2023), locuslab/wanda lib/prune.py prune_wanda: metric
// |W| · sqrt(scaler_row) (scaler_row_j = Σ_tokens x_j² / n_samples).
// Unstructured: per output row, a stable ascending sort and exactly
// int(cols · sparsity) smallest pruned (ties: lower column first, as the
// reference's stable sort). N:M: in each group of M columns of a row the N
// smallest (ties: lower column first). No weight update.
#pragma once

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/algo/prune_result.h"

namespace shrinkray {

absl::StatusOr<PruneResult> WandaPrune(absl::Span<const float> w, int rows, int cols,
                                       absl::Span<const float> scaler_row, const PruneOptions& options);

}  // namespace shrinkray
