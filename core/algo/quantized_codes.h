// Compact forms of a QuantizedWeight for the pipeline's own records (the
// resume checkpoint's layer files, the solved matrices ranks send each
// other): codes of up to 4 bits two to a byte, and the compressed weight
// left out when it is exactly the dequantized codes (as it is after GPTQ or
// RTN), to be rebuilt by the reader. At Llama-3-8B shapes a layer's w4
// matrices are 0.87 GB of float32 values and 0.22 GB of byte codes, or
// 0.11 GB in this form.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/algo/quantized_weight.h"

namespace shrinkray {

// Codes per byte in the compact form: 2 for bits <= 4 (the low nibble
// first), 1 for bits <= 8; 0 for wider grids, which have no codes.
int CodesPerByte(int bits);
// n codes (each < 16) -> (n + 1) / 2 bytes at `out`; an odd last code alone.
void PackCodePairs(const uint8_t* codes, size_t n, uint8_t* out);
// The inverse: (n + 1) / 2 bytes -> n codes.
void UnpackCodePairs(const uint8_t* packed, size_t n, uint8_t* codes);

// [rows, cols]: QuantizedWeight::Dequantize of every entry (in parallel over rows).
std::vector<float> DequantizeAll(const QuantizedWeight& w);
// Whether `values` are bit for bit the dequantized codes of `w`, without
// materialising them (in parallel over rows).
bool IsDequantized(const QuantizedWeight& w, std::span<const float> values);

}  // namespace shrinkray
