// The result of quantizing one Linear weight W [rows = out_features,
// cols = in_features] on a per-row min-max grid (GPTQ's Quantizer), in the
// terms every packed format needs: integer codes, per-group scales and zero
// points, and each input column's group (g_idx).
//
//   dequantized W[r, c] = scales[g, r] * (codes[r, c] - zeros[g, r]),  g = g_idx[c]
//
// Groups: group_size == -1 means one group per row (num_groups == 1). With
// act_order the groups are contiguous in the permuted column order, so g_idx is
// not monotone; without it g_idx[c] == c / group_size. A last partial group is
// allowed (cols need not be a multiple of group_size).
#pragma once

#include <cstdint>
#include <vector>

namespace shrinkray {

struct QuantizedWeight {
  int rows = 0;
  int cols = 0;
  int bits = 4;
  int group_size = -1;  // -1: per row
  bool sym = true;
  bool act_order = false;
  int num_groups = 1;
  // [rows, cols], each in [0, 2^bits - 1]: one byte each (every packed
  // format is at most 8 bits wide). Empty for the analysis-only grids wider
  // than 8 bits (allow_wide_bits), which only the dequantized weight carries.
  std::vector<uint8_t> codes;
  std::vector<float> scales;    // [num_groups, rows]
  std::vector<int32_t> zeros;   // [num_groups, rows], each in [0, 2^bits - 1]
  std::vector<int32_t> g_idx;   // [cols]

  // The layout of groups in column order (no act_order): g_idx[c] =
  // c / group_size (0 per row); scales and zeros sized, codes left empty.
  static QuantizedWeight InColumnGroups(int rows, int cols, int bits, int group_size, bool sym) {
    QuantizedWeight qw;
    qw.rows = rows;
    qw.cols = cols;
    qw.bits = bits;
    qw.group_size = group_size > 0 ? group_size : -1;
    qw.sym = sym;
    qw.act_order = false;
    qw.num_groups = group_size > 0 ? (cols - 1) / group_size + 1 : 1;  // no overflow for any group_size
    qw.scales.resize(static_cast<size_t>(qw.num_groups) * rows);
    qw.zeros.resize(qw.scales.size());
    qw.g_idx.resize(cols);
    for (int c = 0; c < cols; ++c) qw.g_idx[c] = group_size > 0 ? c / group_size : 0;
    return qw;
  }

  float Dequantize(int r, int c) const {
    const int g = g_idx[c];
    return scales[static_cast<long>(g) * rows + r] *
           static_cast<float>(static_cast<int32_t>(codes[static_cast<long>(r) * cols + c]) -
                              zeros[static_cast<long>(g) * rows + r]);
  }
};

}  // namespace shrinkray
