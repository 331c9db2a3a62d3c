// Argument checks shared by the compression algorithms. Each returns
// InvalidArgument naming the offending field, so that a recipe error can be
// traced to its key.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace shrinkray::algo_internal {

// `values` must hold rows * cols finite numbers, rows and cols positive.
absl::Status CheckMatrix(std::string_view field, absl::Span<const float> values, int64_t rows, int64_t cols);
absl::Status CheckMatrix(std::string_view field, absl::Span<const double> values, int64_t rows, int64_t cols);

// bits in [2, 8], or [2, 16] when allow_wide (analysis and tests only).
absl::Status CheckBits(int bits, bool allow_wide);

// group_size == -1 (one group per row) or > 0.
absl::Status CheckGroupSize(int group_size);

// sparsity in [0, 1).
absl::Status CheckSparsity(double sparsity);

// N:M: both zero (off), or 0 < n < m with m dividing cols (and dividing
// block_size when block_size > 0, so that no group straddles a block).
absl::Status CheckNm(int prune_n, int prune_m, int64_t cols, int block_size);

}  // namespace shrinkray::algo_internal
