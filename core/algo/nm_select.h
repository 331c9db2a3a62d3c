// N:M selection shared by SparseGPT, Wanda and magnitude pruning: within one
// group of M scores, mark the N smallest as pruned. Ties go to the lower
// index (a deterministic stand-in for torch.topk(largest=False), whose tie
// order is unspecified).
#pragma once

#include <cstdint>

namespace shrinkray::algo_internal {

// score[0..m) -> keep[0..m): 0 for the n smallest, others left untouched.
void PruneNSmallest(const float* score, int n, int m, uint8_t* keep);

}  // namespace shrinkray::algo_internal
