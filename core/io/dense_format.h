// The dense output: the same HF layout as the input, every weight (quantized
// ones dequantized) materialised in the input's float dtype, no
// quantization_config, so any loader reads it as an ordinary model.
#pragma once

#include "absl/status/statusor.h"
#include "core/io/model_writer.h"

namespace shrinkray {

absl::StatusOr<FormatOutput> BuildDenseOutput(const CompressedModelSpec& spec);

}  // namespace shrinkray
