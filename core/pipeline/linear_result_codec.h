// One compressed matrix's outcome (its LinearState and report row) as bytes,
// exact to the bit: in sharded calibration the rank that solved a matrix
// broadcasts it to the others, which must end with identical weights.
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
