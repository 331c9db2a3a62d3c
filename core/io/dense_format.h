// The dense output: the same HF layout as the input, every weight (quantized
// ones dequantized) materialised in the input's float dtype, no
// quantization_config, so any loader reads it as an ordinary model.
#pragma once

#include <memory>

#include "core/io/model_writer.h"

namespace shrinkray {

std::unique_ptr<FormatEncoder> MakeDenseEncoder(const CompressedModelSpec& header);

}  // namespace shrinkray
