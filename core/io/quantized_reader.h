// Reading a model's weights as float whether a Linear is stored dense, as GPTQ
// (qweight/qzeros/scales/g_idx) or as compressed-tensors pack-quantized
// (weight_packed/weight_scale/weight_zero_point/weight_g_idx/weight_shape), so
// that every output format of shrinkray (and third-party checkpoints in those
// formats) loads back for evaluation. Which one applies comes from config.json's
// quantization_config; per module, whichever tensors are present win, so
// modules kept dense (GPTQ "dynamic" skips, compressed-tensors "ignore") read
// as ordinary weights.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/algo/quantized_weight.h"
#include "core/io/checkpoint.h"
#include "core/io/gptq_format.h"
#include "nlohmann/json.hpp"

namespace shrinkray {

struct CheckpointQuantization {
  enum class Method { kNone, kGptq, kCompressedTensors, kUnsupported };
  Method method = Method::kNone;
  std::string method_name;  // quant_method as written (e.g. "awq" when unsupported)

  // GPTQ.
  int bits = 0;  // from the config; per-module bits are inferred from shapes
  int group_size = -1;
  bool sym = true;
  GptqZeroFormat zero_format = GptqZeroFormat::kV1;

  // compressed-tensors: one entry per config group.
  struct CtGroup {
    std::string name;
    std::vector<std::string> targets;  // "Linear", exact module names, "re:<regex>"
    std::string format;                // "pack-quantized" is the one read
    int num_bits = 0;
    int group_size = -1;  // -1: channel strategy
    bool symmetric = true;
  };
  std::vector<CtGroup> ct_groups;
};

// `quantization_config` is config.json's block (null or absent: kNone).
// Malformed fields of a known method are InvalidArgument.
absl::StatusOr<CheckpointQuantization> ParseCheckpointQuantization(
    const nlohmann::json& quantization_config);
// The block of a whole config.json object, or null.
nlohmann::json QuantizationConfigOf(const nlohmann::json& config);

// The integers of the quantized Linear `module` (e.g.
// "model.layers.0.self_attn.q_proj"), or nullopt when the checkpoint holds no
// quantized tensors for it. GPTQ v1 zero points are stored + 1 after masking,
// as vLLM does, so a third-party all-ones field reads as 2^bits.
absl::StatusOr<std::optional<QuantizedWeight>> ReadQuantizedWeight(
    const Checkpoint& checkpoint, const CheckpointQuantization& quantization,
    std::string_view module);

// Reads the logical HF tensor `name` (e.g. "model.layers.0.mlp.up_proj.weight")
// as float: the stored tensor when present, else the dequantized Linear
// (scale * (code - zero), scales widened from their stored dtype). Shape and
// buffer checks and errors as Checkpoint::ReadF32Into; an integer tensor under
// a quant method shrinkray cannot read is Unimplemented.
absl::Status ReadWeightF32Into(const Checkpoint& checkpoint,
                               const CheckpointQuantization& quantization, std::string_view name,
                               std::span<float> out, std::span<const int64_t> expected_shape = {});
absl::StatusOr<std::vector<float>> ReadWeightF32(const Checkpoint& checkpoint,
                                                 const CheckpointQuantization& quantization,
                                                 std::string_view name,
                                                 std::span<const int64_t> expected_shape = {});

}  // namespace shrinkray
