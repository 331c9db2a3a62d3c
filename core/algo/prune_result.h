// Options and result shared by the one-shot pruners without weight update
// (Wanda, magnitude).
#pragma once

#include <cstdint>
#include <vector>

namespace shrinkray {

struct PruneOptions {
  double sparsity = 0.5;  // unstructured, [0, 1); ignored with N:M
  int prune_n = 0;        // N:M when prune_n > 0 (M must divide cols)
  int prune_m = 0;
};

struct PruneResult {
  std::vector<float> weight;  // [rows, cols], pruned entries exactly 0
  std::vector<uint8_t> keep;  // [rows, cols], 1 = kept, 0 = pruned
  int64_t pruned = 0;         // zeros in keep
};

}  // namespace shrinkray
