// Magnitude pruning as locuslab/wanda's prune_magnitude: unstructured, one
// threshold per matrix, thresh = sort(|W|.flatten())[int(numel · sparsity)],
// prune |W| <= thresh (the "<=" prunes all ties with the threshold, and
// sparsity 0 still prunes the minimum — reference behaviour, kept). N:M: per
// row, in each group of M columns the N smallest |W| (ties: lower column).
#pragma once

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/algo/prune_result.h"

namespace shrinkray {

absl::StatusOr<PruneResult> MagnitudePrune(absl::Span<const float> w, int rows, int cols,
                                           const PruneOptions& options);

}  // namespace shrinkray
