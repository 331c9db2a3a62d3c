// What HessianAccumulator::MergeAcrossRanks all-reduces, on the host or on a
// device alike (ranks on either path meet in one collective): the upper
// triangle of H·n row by row (row i holds entries j >= i, from
// HessianMergeRowStart(i)), each the float64 product double(h)·double(n),
// then n itself. The merged H is double(sum) / total rounded to float, and a
// rank's H stays as it is when the total is its own n. constexpr, so that
// device code (nvcc --expt-relaxed-constexpr) uses the same definitions.
#pragma once

#include <cstddef>

namespace shrinkray {

constexpr size_t HessianMergeCount(size_t dim) { return dim * (dim + 1) / 2 + 1; }
constexpr size_t HessianMergeRowStart(size_t i, size_t dim) { return i * dim - i * (i - 1) / 2; }

}  // namespace shrinkray
