#include "core/algo/wanda.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/algo/nm_select.h"
#include "core/algo/validation.h"
#include "core/util/parallel.h"
#include "core/util/status_macros.h"

namespace shrinkray {

absl::StatusOr<PruneResult> WandaPrune(absl::Span<const float> w, int rows, int cols,
                                       absl::Span<const float> scaler_row, const PruneOptions& o) {
  SR_RETURN_IF_ERROR(algo_internal::CheckMatrix("w", w, rows, cols));
  SR_RETURN_IF_ERROR(algo_internal::CheckMatrix("scaler_row", scaler_row, 1, cols));
  for (int c = 0; c < cols; ++c) {
    if (scaler_row[c] < 0.0f) {
      return absl::InvalidArgumentError(
          absl::StrCat("scaler_row: negative value ", scaler_row[c], " at column ", c));
    }
  }
  SR_RETURN_IF_ERROR(algo_internal::CheckNm(o.prune_n, o.prune_m, cols, 0));
  const bool nm = o.prune_n != 0;
  if (!nm) SR_RETURN_IF_ERROR(algo_internal::CheckSparsity(o.sparsity));

  std::vector<float> sqrt_scaler(cols);
  for (int c = 0; c < cols; ++c) sqrt_scaler[c] = std::sqrt(scaler_row[c]);
  const auto prune_per_row = static_cast<int>(static_cast<double>(cols) * o.sparsity);

  PruneResult result;
  result.weight.assign(w.begin(), w.end());
  result.keep.assign(w.size(), 1);
  ParallelFor(rows, [&](int64_t r) {
    const size_t base = static_cast<size_t>(r) * cols;
    std::vector<float> metric(cols);
    for (int c = 0; c < cols; ++c) metric[c] = std::fabs(w[base + c]) * sqrt_scaler[c];
    uint8_t* keep = result.keep.data() + base;
    if (nm) {
      for (int c = 0; c < cols; c += o.prune_m) {
        algo_internal::PruneNSmallest(metric.data() + c, o.prune_n, o.prune_m, keep + c);
      }
    } else {
      std::vector<int> order(cols);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return metric[a] < metric[b]; });
      for (int k = 0; k < prune_per_row; ++k) keep[order[k]] = 0;
    }
    for (int c = 0; c < cols; ++c) {
      if (!keep[c]) result.weight[base + c] = 0.0f;
    }
  });
  result.pruned = static_cast<int64_t>(std::count(result.keep.begin(), result.keep.end(), uint8_t{0}));
  return result;
}

}  // namespace shrinkray
