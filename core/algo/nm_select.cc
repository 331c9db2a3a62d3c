#include "core/algo/nm_select.h"

#include <algorithm>
#include <numeric>
#include <vector>

namespace shrinkray::algo_internal {

void PruneNSmallest(const float* score, int n, int m, uint8_t* keep) {
  // M is small (4, 8, 16): a stable insertion-order sort of indices is cheap.
  int stack_idx[64];
  std::vector<int> heap_idx;
  int* idx = stack_idx;
  if (m > 64) {
    heap_idx.resize(m);
    idx = heap_idx.data();
  }
  std::iota(idx, idx + m, 0);
  std::stable_sort(idx, idx + m, [&](int a, int b) { return score[a] < score[b]; });
  for (int k = 0; k < n; ++k) keep[idx[k]] = 0;
}

}  // namespace shrinkray::algo_internal
