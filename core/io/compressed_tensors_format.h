// compressed-tensors "pack-quantized" (neuralmagic/compressed-tensors
// PackedQuantizationCompressor, read by vLLM's CompressedTensorsWNA16 and by
// transformers through compressed-tensors):
//   weight_packed     int32 [out, ceil(in / pf)], pf = 32 / bits values per word,
//                     value k of a word at bits [k*bits, (k+1)*bits), the last
//                     word zero-padded
//   weight_scale      [out, groups] in the model dtype
//   weight_zero_point int32 [ceil(out / pf), groups] (asymmetric only), packed
//                     along the output dim the same way
//   weight_g_idx      int32 [in] (actorder "group" only)
//   weight_shape      int64 [2] = {out, in}
// The library packs signed values q + 2^(bits-1); with our unsigned codes
// (q = code - 2^(bits-1)) the stored field is the code itself, and the same
// for zero points. Symmetric means a zero point of 2^(bits-1) (signed 0).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/algo/quantized_weight.h"
#include "core/io/model_writer.h"

namespace shrinkray {

// 2, 3, 4 and 8 (others: InvalidArgument "bits N cannot be packed in
// compressed-tensors; use --format dense").
absl::Status CheckCompressedTensorsBits(int bits);
inline int CompressedTensorsPackFactor(int bits) { return 32 / bits; }

// values [rows, cols] -> [rows, ceil(cols / pf)] (packed along dim 1).
absl::StatusOr<std::vector<int32_t>> PackCtRows(std::span<const uint8_t> values, int rows, int cols,
                                                int bits);
absl::StatusOr<std::vector<uint8_t>> UnpackCtRows(std::span<const int32_t> packed, int rows,
                                                  int cols, int bits);
// values [rows, cols] -> [ceil(rows / pf), cols] (packed along dim 0, as the
// zero points are).
absl::StatusOr<std::vector<int32_t>> PackCtColumns(std::span<const int32_t> values, int rows,
                                                   int cols, int bits);
absl::StatusOr<std::vector<int32_t>> UnpackCtColumns(std::span<const int32_t> packed, int rows,
                                                     int cols, int bits);

// Why vLLM's WNA16 loader (bits 4/8) or compressed-tensors itself (2/3) cannot
// hold an [out, in] Linear quantized so; empty when it can.
std::string CompressedTensorsShapeProblem(int out, int in, int bits, int group_size, bool sym);

// The tensors of one quantized Linear; scales stay float (the writer stores
// them in the model dtype).
struct CtTensors {
  int bits = 4;
  int rows = 0;
  int cols = 0;
  int num_groups = 1;
  std::vector<int32_t> weight_packed;      // [rows, ceil(cols / pf)]
  std::vector<float> weight_scale;         // [rows, num_groups]
  std::vector<int32_t> weight_zero_point;  // [ceil(rows / pf), num_groups]; empty when sym
  std::vector<int32_t> weight_g_idx;       // [cols]; empty unless act_order
};
// `with_zero_point` false requires every zero to be 2^(bits-1).
absl::StatusOr<CtTensors> PackCompressedTensors(const QuantizedWeight& w, bool with_zero_point,
                                                bool with_g_idx);
absl::StatusOr<QuantizedWeight> UnpackCompressedTensors(const CtTensors& t, int group_size);

// The compressed-tensors output, with config.json's quantization_config
// (config_groups, ignore, sparsity_config). Whether the scheme is symmetric
// (every zero point 2^(bits-1)) and carries g_idx is a fact of the whole
// model, so each Linear's tensors for both answers are produced under
// FactConditions and the writer keeps those that hold.
std::unique_ptr<FormatEncoder> MakeCompressedTensorsEncoder(const CompressedModelSpec& header);

}  // namespace shrinkray
