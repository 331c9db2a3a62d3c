// Writing a compressed model as a Hugging Face folder that vLLM, transformers
// and GPTQModel load: dense (dequantized weights materialised), GPTQ
// (qweight/qzeros/scales/g_idx) or compressed-tensors "pack-quantized".
// The layouts, and which shapes each format keeps dense, are in docs/formats.md.
//
// Tensors are encoded as they arrive and their bytes parked in a scratch file
// inside the output's ".partial" folder; the safetensors shards (whose tensors
// are sorted by name, so layer 10 comes before layer 2) are assembled from it
// at the end. So CompressedModelWriter holds one layer's tensors at a time,
// and WriteCompressedModel (the whole spec at once) is the same writer fed in
// one piece: both give the same bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/algo/quantized_weight.h"
#include "core/io/safetensors.h"
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
// format and suggesting --format dense. On any error the ".partial" folder is
// removed and `out_dir` left as it was.
absl::Status WriteCompressedModel(const std::filesystem::path& out_dir,
                                  const CompressedModelSpec& spec, OutputFormat format,
                                  bool overwrite);

// `out_dir` + ".partial" (a trailing "/" of `out_dir` ignored): where the
// writer works until the folder is complete.
std::filesystem::path PartialFolderOf(const std::filesystem::path& out_dir);

// What the writer does with a ".partial" folder it finds and what an
// unfinished writer leaves behind.
struct PartialFolderOptions {
  // Entries directly inside ".partial" that are not the writer's but a
  // resumable run's checkpoint (RunCompression's "job.json" and "layers"):
  // Open keeps them and removes everything else, a writer destroyed without
  // Finish removes only its own files (so the folder and these stay for a
  // later resume), and Finish removes them just before the rename, so the
  // output never holds them. Empty: Open starts from an empty folder and an
  // unfinished writer removes the folder.
  std::vector<std::string> keep;
};

// The same output, written incrementally: Add the tensors in model order
// (embeddings, then each decoder layer, then the final norm and lm_head), each
// is encoded and parked on disk at once, then Finish writes the shards,
// config.json and the rest and renames the folder into place. Destroying a
// writer that did not Finish removes its ".partial" folder (but see
// PartialFolderOptions::keep). The bytes equal
// WriteCompressedModel's on the spec holding all the tensors in that order;
// errors are the same, found in the Add holding the offending tensor (the
// "no weight is quantized" of a packed format in Finish).
class CompressedModelWriter {
 public:
  // `header` gives everything but the tensors (its `tensors` must be empty).
  // The existence check is WriteCompressedModel's; the ".partial" folder is
  // created here (a crashed earlier run's is removed, but for `partial.keep`).
  static absl::StatusOr<std::unique_ptr<CompressedModelWriter>> Open(
      const std::filesystem::path& out_dir, const CompressedModelSpec& header, OutputFormat format,
      bool overwrite, const PartialFolderOptions& partial = {});
  ~CompressedModelWriter();
  CompressedModelWriter(const CompressedModelWriter&) = delete;
  CompressedModelWriter& operator=(const CompressedModelWriter&) = delete;

  // The next tensors. A format may keep a Linear dense because of a fused
  // sibling (vLLM's q/k/v and gate/up), so the tensors of one module prefix
  // ("model.layers.3.self_attn.") must come in one call: a later call holding
  // such a sibling is InvalidArgument. After an error the writer only fails.
  absl::Status Add(std::span<const CompressedTensorEntry> tensors);
  // Completes the folder; returns the modules kept dense (PlanDenseFallbacks').
  absl::StatusOr<std::vector<DenseFallback>> Finish();

 private:
  struct State;
  explicit CompressedModelWriter(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// ---- Shared by the format writers (dense_format, gptq_format,
// compressed_tensors_format); not needed by callers.

// Facts about all of a model's quantized weights that a format's tensors may
// depend on, known only once every tensor has been added.
struct ModelFacts {
  bool zero_points_mid = true;  // every zero point is 2^(bits-1) (symmetric grids)
  bool act_order = false;       // some weight's g_idx is not c / group_size
};
// The facts under which an encoded tensor (or a fallback) is part of the
// output; an unset field holds for either value.
struct FactCondition {
  std::optional<bool> zero_points_mid;
  std::optional<bool> act_order;
  bool Holds(const ModelFacts& facts) const;
  bool always() const { return !zero_points_mid.has_value() && !act_order.has_value(); }
};
// `a` and `b` together; nullopt when they contradict each other.
std::optional<FactCondition> BothConditions(const FactCondition& a, const FactCondition& b);

// What a format adds to the output folder besides the tensors.
struct FormatOutput {
  nlohmann::json quantization_config;  // config.json's; null: none
  nlohmann::json quantize_config;      // quantize_config.json; null: not written
  std::vector<DenseFallback> fallbacks;
  ModelFacts facts;                    // decides the conditional tensors
};

// One format's encoding, fed tensors in model order. Add validates and
// encodes a piece of the model (a fused group's tensors together, see
// CompressedModelWriter::Add) and hands each encoded tensor to `sink`, with
// the facts it depends on; Finish gives the configs once all were added.
// The sink consumes the tensor before it returns: its `write` produces the
// bytes from memory that lives only that long (the entry's values, the
// encoder's packed words), converting a bounded piece at a time, so no
// encoded tensor is ever held whole (at Llama-3-8B a layer's dense weights
// are 0.9 GB of f32).
using EncodedTensorSink =
    std::function<absl::Status(const StreamedTensor& tensor, const FactCondition& when)>;
class FormatEncoder {
 public:
  virtual ~FormatEncoder() = default;
  virtual absl::Status Add(std::span<const CompressedTensorEntry> tensors,
                           const EncodedTensorSink& sink) = 0;
  virtual absl::StatusOr<FormatOutput> Finish() = 0;
};
// `header`'s dense_dtype and recipe_info are used; its tensors are not.
std::unique_ptr<FormatEncoder> MakeFormatEncoder(OutputFormat format,
                                                 const CompressedModelSpec& header);

// The uniform quantization scheme of a spec's quantized weights.
struct QuantScheme {
  int bits = 4;
  int group_size = -1;
  bool sym = true;
  bool act_order = false;  // some weight's g_idx is not c / group_size
};

// Encoded tensors for an EncodedTensorSink: views of `values` (which must
// outlive the sink call), converted as they are written.
// `values` in `dtype` (F32, F16 or BF16); InvalidArgument for another dtype
// or a count that is not the shape's.
absl::StatusOr<StreamedTensor> EncodeFloats(std::string name, std::vector<int64_t> shape,
                                            std::span<const float> values, DType dtype);
// Bytes already in their dtype's layout (e.g. F16 bits).
StreamedTensor EncodeBytes(std::string name, DType dtype, std::vector<int64_t> shape,
                           std::span<const std::byte> bytes);
StreamedTensor EncodeInt32(std::string name, std::vector<int64_t> shape,
                           std::span<const int32_t> values);
StreamedTensor EncodeInt64(std::string name, std::vector<int64_t> shape,
                           std::span<const int64_t> values);
// The entry's dense values in `dtype` (dequantized a few rows at a time when
// only `quantized` is set); views of `entry`.
absl::StatusOr<StreamedTensor> EncodeDense(const CompressedTensorEntry& entry, DType dtype);

// "model.layers.0.mlp.gate_proj" for a 2-D "...gate_proj.weight" that is a
// Linear (not an embedding); empty otherwise.
std::string LinearModuleOf(const CompressedTensorEntry& entry);
// "model.layers.0.self_attn." for a module that vLLM fuses with siblings
// (q/k/v_proj, gate/up_proj); empty otherwise.
std::string FusedGroupPrefix(std::string_view module);
// Checks sizes and value ranges of `w` (codes, zeros in [0, 2^bits), g_idx in
// [0, num_groups)); InvalidArgument naming `name`.
absl::Status ValidateQuantizedWeight(const QuantizedWeight& w, std::string_view name);
// Whether every zero point of `w` is 2^(bits-1), and whether its g_idx is
// permuted (some g_idx[c] != c / group_size).
bool ZeroPointsMid(const QuantizedWeight& w);
bool GIdxPermuted(const QuantizedWeight& w);
// Every quantized entry is a 2-D Linear weight whose shape matches and passes
// ValidateQuantizedWeight; names are unique, also against `names` (the names
// of earlier pieces, to which these are added).
absl::Status ValidateQuantizedEntries(std::span<const CompressedTensorEntry> entries,
                                      std::set<std::string>* names);
// ValidateQuantizedEntries, then folds the entries' quantized weights into
// `scheme`, the common scheme of all pieces so far (nullopt while none is
// quantized). Mixed bit widths / group sizes / sym are InvalidArgument for
// the packed formats.
absl::Status MergeUniformScheme(std::span<const CompressedTensorEntry> entries,
                                std::string_view format_name, std::set<std::string>* names,
                                std::optional<QuantScheme>* scheme);
// vLLM loads q/k/v and gate/up as one fused layer, which is either quantized
// or not: extends `direct` (module -> reason) to the quantized siblings of each
// module in it, in entry order.
std::vector<DenseFallback> ExtendToFusedSiblings(std::span<const CompressedTensorEntry> entries,
                                                 const std::vector<DenseFallback>& direct);
// The InvalidArgument for bits a packed format cannot hold.
absl::Status UnpackableBitsError(int bits, std::string_view format_name);

}  // namespace shrinkray
