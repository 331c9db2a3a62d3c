// Float conversions between F32 and the 16-bit formats, bit-exact with IEEE 754
// round-to-nearest-even (what torch's .half()/.bfloat16() produce): overflow
// goes to Inf, subnormals are kept, NaN stays a quiet NaN (sign and top payload
// bits preserved).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "core/tensor/dtype.h"

namespace shrinkray {

uint16_t F32ToF16(float value);
float F16ToF32(uint16_t bits);
uint16_t F32ToBF16(float value);
float BF16ToF32(uint16_t bits);

// Converts `count` elements of `src` (dtype `src_dtype`) to float. Integer
// dtypes are converted by value. Fails (InvalidArgument) for kBool.
absl::Status ConvertToF32(float* dst, const void* src, DType src_dtype, size_t count);
// Converts `count` floats to `dst_dtype` (F64, F32, F16, BF16 only).
absl::Status ConvertFromF32(void* dst, DType dst_dtype, const float* src, size_t count);

}  // namespace shrinkray
