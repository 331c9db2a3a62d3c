// One compressed matrix's outcome (its LinearState and report row) as bytes,
// exact to the bit: in sharded calibration the rank that solved a matrix
// broadcasts it to the others, which must end with identical weights. A
// quantized weight that is exactly its dequantized codes travels as the
// codes (core/algo/quantized_codes.h): at Llama-3-8B shapes a layer's w4
// results are ~0.11 GB instead of 0.87 GB of float32 plus 0.22 GB of codes.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "core/pipeline/apply_stages.h"
#include "core/pipeline/compress_report.h"

namespace shrinkray {

std::vector<uint8_t> EncodeLinearResult(const LinearState& state, const MatrixReport& report);
// DataLoss when `bytes` is not what EncodeLinearResult wrote.
absl::Status DecodeLinearResult(std::span<const uint8_t> bytes, LinearState* state, MatrixReport* report);

}  // namespace shrinkray
