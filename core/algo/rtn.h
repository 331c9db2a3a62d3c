// Round-to-nearest: GPTQ's quantizer applied directly, per output row or per
// group of group_size columns (a last partial group is allowed). No Hessian.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/algo/quantized_weight.h"

namespace shrinkray {

struct RtnOptions {
  int bits = 4;         // 2..8 (2..16 with allow_wide_bits)
  int group_size = -1;  // -1: per row
  bool sym = true;
  bool allow_wide_bits = false;
};

struct RtnResult {
  std::vector<float> weight;  // dequantized W [rows, cols]
  QuantizedWeight quantized;
};

absl::StatusOr<RtnResult> RtnQuantize(absl::Span<const float> w, int rows, int cols, const RtnOptions& options);

}  // namespace shrinkray
