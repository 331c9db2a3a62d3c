// The GPTQ checkpoint layout (AutoGPTQ / GPTQModel QuantLinear.pack, read by
// vLLM's GPTQ kernels and by transformers through GPTQModel):
//   qweight int32 [in * bits / 32, out]   codes packed along the input dim
//   qzeros  int32 [groups, out * bits / 32] zero points packed along the output dim
//   scales  fp16  [groups, out]
//   g_idx   int32 [in]                    each input column's group
// Within each packed run the values form one little-endian bit stream: value i
// occupies bits [i*bits, (i+1)*bits). For 2/4/8 bits that is 32/bits values per
// word; for 3 bits it is the reference's 32-values-in-3-words layout, where
// values 10 and 21 straddle word boundaries.
// checkpoint_format "gptq" (v1) stores zero - 1 in each qzeros field, so a zero
// point of 0 cannot be stored; "gptq_v2" stores the zero point itself.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/algo/quantized_weight.h"
#include "core/io/model_writer.h"

namespace shrinkray {

enum class GptqZeroFormat { kV1, kV2 };

// "gptq" -> kV1, "gptq_v2" -> kV2.
std::string_view GptqCheckpointFormatName(GptqZeroFormat format);

// 2, 3, 4 and 8; other widths are InvalidArgument "bits N cannot be packed in
// gptq; use --format dense".
absl::Status CheckGptqBits(int bits);

// codes [rows = out, cols = in] -> qweight [cols * bits / 32, rows].
// cols * bits must be a multiple of 32.
absl::StatusOr<std::vector<int32_t>> PackGptqQweight(std::span<const uint8_t> codes, int rows,
                                                     int cols, int bits);
absl::StatusOr<std::vector<uint8_t>> UnpackGptqQweight(std::span<const int32_t> qweight, int rows,
                                                       int cols, int bits);
// zeros [groups, rows] -> qzeros [groups, rows * bits / 32]. kV1 stores zero - 1
// and refuses a zero of 0 (InvalidArgument naming the group and row).
absl::StatusOr<std::vector<int32_t>> PackGptqQzeros(std::span<const int32_t> zeros, int groups,
                                                    int rows, int bits, GptqZeroFormat format);
// The inverse. kV1 adds 1 to each field after masking, as vLLM's gptq_gemm and
// AutoGPTQ do, so a stored all-ones field reads as 2^bits.
absl::StatusOr<std::vector<int32_t>> UnpackGptqQzeros(std::span<const int32_t> qzeros, int groups,
                                                      int rows, int bits, GptqZeroFormat format);

// Why GPTQ or its loaders cannot hold an [out, in] Linear quantized with
// `bits`/`group_size`; empty when they can. qweight/qzeros need in*bits and
// out*bits to be multiples of 32; vLLM also needs in % group_size == 0.
std::string GptqShapeProblem(int out, int in, int bits, int group_size);

// The GPTQ tensors of one quantized Linear (scales as fp16 bit patterns).
struct GptqTensors {
  int bits = 4;
  int rows = 0;  // out
  int cols = 0;  // in
  int num_groups = 1;
  std::vector<int32_t> qweight;  // [cols * bits / 32, rows]
  std::vector<int32_t> qzeros;   // [num_groups, rows * bits / 32]
  std::vector<uint16_t> scales;  // [num_groups, rows] fp16
  std::vector<int32_t> g_idx;    // [cols]
};
absl::StatusOr<GptqTensors> PackGptq(const QuantizedWeight& w, GptqZeroFormat format);
// The integers back (scales widened from fp16); group_size and sym are not
// stored in the tensors and are taken from the arguments.
absl::StatusOr<QuantizedWeight> UnpackGptq(const GptqTensors& t, GptqZeroFormat format,
                                           int group_size, bool sym);

// The GPTQ output: quantized Linears as <module>.qweight/.qzeros/.scales/.g_idx,
// everything else (and the fallbacks) in the dense dtype, plus
// quantize_config.json / config.json's quantization_config (with "dynamic"
// negative matches for the modules kept dense).
std::unique_ptr<FormatEncoder> MakeGptqEncoder(const CompressedModelSpec& header);

}  // namespace shrinkray
