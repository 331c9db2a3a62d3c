#include "core/algo/magnitude.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/algo/nm_select.h"
#include "core/algo/validation.h"
#include "core/util/parallel.h"
#include "core/util/status_macros.h"

namespace shrinkray {

absl::StatusOr<PruneResult> MagnitudePrune(absl::Span<const float> w, int rows, int cols, const PruneOptions& o) {
  SR_RETURN_IF_ERROR(algo_internal::CheckMatrix("w", w, rows, cols));
  SR_RETURN_IF_ERROR(algo_internal::CheckNm(o.prune_n, o.prune_m, cols, 0));
  const bool nm = o.prune_n != 0;
  if (!nm) SR_RETURN_IF_ERROR(algo_internal::CheckSparsity(o.sparsity));

  PruneResult result;
  result.weight.assign(w.begin(), w.end());
  result.keep.assign(w.size(), 1);
  if (nm) {
    ParallelFor(rows, [&](int64_t r) {
      const size_t base = static_cast<size_t>(r) * cols;
      std::vector<float> metric(o.prune_m);
      for (int c = 0; c < cols; c += o.prune_m) {
        for (int k = 0; k < o.prune_m; ++k) metric[k] = std::fabs(w[base + c + k]);
        algo_internal::PruneNSmallest(metric.data(), o.prune_n, o.prune_m, result.keep.data() + base + c);
      }
    });
  } else {
    // The int(numel · p)-th smallest |W| (nth_element gives the same value
    // as a full sort), then "<=" over the whole matrix.
    std::vector<float> metric(w.size());
    for (size_t i = 0; i < w.size(); ++i) metric[i] = std::fabs(w[i]);
    const auto kth = static_cast<size_t>(static_cast<double>(w.size()) * o.sparsity);
    std::vector<float> scratch = metric;
    std::nth_element(scratch.begin(), scratch.begin() + kth, scratch.end());
    const float thresh = scratch[kth];
    for (size_t i = 0; i < w.size(); ++i) result.keep[i] = metric[i] <= thresh ? 0 : 1;
  }
  for (size_t i = 0; i < w.size(); ++i) {
    if (!result.keep[i]) result.weight[i] = 0.0f;
  }
  result.pruned = static_cast<int64_t>(std::count(result.keep.begin(), result.keep.end(), uint8_t{0}));
  return result;
}

}  // namespace shrinkray
