// Writing a compressed model as a Hugging Face folder that vLLM, transformers
// and GPTQModel load: dense (dequantized weights materialised), GPTQ
// (qweight/qzeros/scales/g_idx) or compressed-tensors "pack-quantized".
// The layouts, and which shapes each format keeps dense, are in docs/formats.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/algo/quantized_weight.h"
#include "core/tensor/dtype.h"
#include "nlohmann/json.hpp"

namespace shrinkray {

// One model tensor in its HF name (e.g. "model.layers.0.mlp.down_proj.weight").
struct CompressedTensorEntry {
  std::string name;
  std::vector<int64_t> shape;
  // Dense (dequantized) values, row-major. May be empty when `quantized` is set:
  // the writers then dequantize it themselves.
  std::vector<float> values;
  // Set for Linear weights that were quantized ([out, in] == [rows, cols]).
  std::optional<QuantizedWeight> quantized;
  double sparsity = 0;    // fraction of zero weights after pruning
  bool two_four = false;  // pruned 2:4 along the input dimension
};

struct CompressedModelSpec {
  std::filesystem::path source_dir;  // tokenizer*, generation_config.json are copied
  nlohmann::json source_config;      // config.json as read
  DType dense_dtype = DType::kF32;   // F32/F16/BF16, as the input
  std::vector<CompressedTensorEntry> tensors;  // ALL model tensors, HF names
  // bits, group_size, sym, desc_act, static_groups, damp, true_sequential.
  nlohmann::json recipe_info;
};

enum class OutputFormat { kDense, kGptq, kCompressedTensors };

// "dense", "gptq", "compressed-tensors" (also "compressed_tensors", "ct").
absl::StatusOr<OutputFormat> ParseOutputFormat(std::string_view name);
std::string_view OutputFormatName(OutputFormat format);

// A quantized Linear that the format (or its loaders) cannot hold quantized, so
// it is written in the dense dtype and listed for loaders to skip.
struct DenseFallback {
  std::string module;  // "model.layers.0.mlp.down_proj"
  std::string reason;
};

// The fallbacks WriteCompressedModel would make, without writing anything
// (for reports and dry runs). Errors as WriteCompressedModel's validation.
absl::StatusOr<std::vector<DenseFallback>> PlanDenseFallbacks(const CompressedModelSpec& spec,
                                                              OutputFormat format);

// Writes the model into `out_dir` + ".partial", then renames it to `out_dir`.
// An existing `out_dir` without `overwrite` is AlreadyExists ("output folder X
// exists; pass --overwrite"); with it, it is replaced only once the new folder
// is complete. Bits a packed format cannot hold are InvalidArgument naming the
// format and suggesting --format dense.
absl::Status WriteCompressedModel(const std::filesystem::path& out_dir,
                                  const CompressedModelSpec& spec, OutputFormat format,
                                  bool overwrite);

// ---- Shared by the format writers (dense_format, gptq_format,
// compressed_tensors_format); not needed by callers.

// A tensor that owns its bytes, ready for WriteCheckpoint.
struct OwnedTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<std::byte> data;
};

// What one format contributes to the output folder.
struct FormatOutput {
  std::vector<OwnedTensor> tensors;
  nlohmann::json quantization_config;  // config.json's; null: none
  nlohmann::json quantize_config;      // quantize_config.json; null: not written
  std::vector<DenseFallback> fallbacks;
};

// The uniform quantization scheme of a spec's quantized weights.
struct QuantScheme {
  int bits = 4;
  int group_size = -1;
  bool sym = true;
  bool act_order = false;  // some weight's g_idx is not c / group_size
};

absl::StatusOr<OwnedTensor> EncodeFloats(std::string name, std::vector<int64_t> shape,
                                         std::span<const float> values, DType dtype);
OwnedTensor EncodeInt32(std::string name, std::vector<int64_t> shape,
                        std::span<const int32_t> values);
OwnedTensor EncodeInt64(std::string name, std::vector<int64_t> shape,
                        std::span<const int64_t> values);
// The entry's dense values in `dtype` (dequantizing when only `quantized` is set).
absl::StatusOr<OwnedTensor> EncodeDense(const CompressedTensorEntry& entry, DType dtype);

// "model.layers.0.mlp.gate_proj" for a 2-D "...gate_proj.weight" that is a
// Linear (not an embedding); empty otherwise.
std::string LinearModuleOf(const CompressedTensorEntry& entry);
// Checks sizes and value ranges of `w` (codes, zeros in [0, 2^bits), g_idx in
// [0, num_groups)); InvalidArgument naming `name`.
absl::Status ValidateQuantizedWeight(const QuantizedWeight& w, std::string_view name);
// Every quantized entry is a 2-D Linear weight whose shape matches and passes
// ValidateQuantizedWeight; names are unique.
absl::Status ValidateQuantizedEntries(const CompressedModelSpec& spec);
// ValidateQuantizedEntries, then the quantized weights' common scheme (nullopt when none is quantized). Mixed bit
// widths / group sizes / sym are InvalidArgument for the packed formats.
absl::StatusOr<std::optional<QuantScheme>> UniformScheme(const CompressedModelSpec& spec,
                                                         std::string_view format_name);
// vLLM loads q/k/v and gate/up as one fused layer, which is either quantized
// or not: extends `direct` (module -> reason) to the quantized siblings of each
// module in it, in spec order.
std::vector<DenseFallback> ExtendToFusedSiblings(
    const CompressedModelSpec& spec, const std::vector<DenseFallback>& direct);
// The InvalidArgument for bits a packed format cannot hold.
absl::Status UnpackableBitsError(int bits, std::string_view format_name);

}  // namespace shrinkray
