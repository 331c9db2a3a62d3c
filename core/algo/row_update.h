// The in-block update of the GPTQ and SparseGPT column sweeps, one row at a
// time: w[j] -= e · h[j] for j in [begin, end).
#pragma once

namespace shrinkray::algo_internal {

// In fixed runs of 16, which gcc vectorizes at -O2 (it leaves a loop of
// unknown length scalar there); the same operations in the same order per
// element as the plain loop, so the same bits.
inline void SubtractScaledRow(float* __restrict w, const float* __restrict h, float e, int begin, int end) {
  int j = begin;
  for (; j + 16 <= end; j += 16) {
    for (int k = 0; k < 16; ++k) w[j + k] -= e * h[j + k];
  }
  for (; j < end; ++j) w[j] -= e * h[j];
}

}  // namespace shrinkray::algo_internal
