// The checkpoint that lets an interrupted RunCompression resume at its first
// unfinished layer. It lives in the output's ".partial" folder next to the
// writer's files and is removed by the writer just before the folder is
// renamed into place (PartialFolderOptions::keep):
//
//   OUT.partial/job.json                     the run's fingerprint (model,
//                                            recipe, calibration, format ...)
//   OUT.partial/layers/layer-00003.safetensors  layer 3's tensors as handed to
//                                            the writer: compressed f32 values
//                                            (unless they are the dequantized
//                                            codes), quantized codes (bytes for
//                                            bits <= 8, two to a byte for bits
//                                            <= 4), scales/zeros/g_idx
//   OUT.partial/layers/layer-00003.json      what else the writer and
//                                            report.json need (sparsity, 2:4,
//                                            quantization settings, the
//                                            layer's report rows and seconds),
//                                            the .safetensors file's size and
//                                            hash; written last, so a layer
//                                            counts as done only when it exists.
//
// Both files of a layer are written crash-safely (temporary name, fsync,
// rename). See docs/recipes.md, "Checkpoint and resume".
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/checkpoint.h"
#include "core/io/model_writer.h"
#include "core/pipeline/compress_report.h"
#include "nlohmann/json.hpp"

namespace shrinkray {

// Bumped whenever what a checkpoint holds or means changes: an older one is
// then discarded rather than misread.
inline constexpr int kLayerCheckpointVersion = 2;  // 2: codes of bits <= 4 two to a byte

// The entries of OUT.partial that belong to the checkpoint, in the order they
// are removed once the output is complete (job.json first: without it the
// rest is ignored). For PartialFolderOptions::keep.
std::vector<std::string> LayerCheckpointEntries();

// A 64-bit hash that is the same for the same bytes on every run and machine
// (unlike absl::Hash); for fingerprints and file checks, not cryptographic.
class StableHasher {
 public:
  void Update(std::span<const std::byte> bytes);
  void Update(std::string_view text) { Update(std::as_bytes(std::span<const char>(text.data(), text.size()))); }
  uint64_t Digest() const;
  std::string HexDigest() const;  // 16 lowercase hex digits

 private:
  uint64_t state_ = 0x6a09e667f3bcc908ull;
  uint64_t length_ = 0;
  unsigned char tail_[8] = {};
  int tail_size_ = 0;
};

// Identifies a model folder cheaply: config.json, the index when present, and
// per checkpoint shard its name, size, safetensors header and the first and
// last MiB of its data (fine-tunes of one architecture have equal headers).
absl::StatusOr<std::string> HashModelFolder(const std::filesystem::path& model_dir,
                                            const Checkpoint& checkpoint);

// One finished decoder layer.
struct PersistedLayer {
  int layer = 0;
  double seconds = 0.0;  // the layer's time in the run that compressed it
  // The layer's tensors in the order they went to CompressedModelWriter::Add.
  std::vector<CompressedTensorEntry> tensors;
  std::vector<MatrixReport> matrices;  // the layer's report rows, in order
};

// Writes layer `layer.layer` into `partial`/layers (which must exist).
// `alongside` (may be empty) runs on another thread while the tensors file is
// written (RunCompression: the output writer taking the same layer, which
// only reads it too); the layer is committed (its .json) only when both
// succeeded, and alongside's error comes first.
absl::Status WriteLayerCheckpoint(const std::filesystem::path& partial, const PersistedLayer& layer,
                                  const std::function<absl::Status()>& alongside = nullptr);
// Whether layer `layer` is complete and intact (both files, sizes and the
// hash of the tensors file), without decoding it. DataLoss/NotFound otherwise.
absl::Status VerifyLayerCheckpoint(const std::filesystem::path& partial, int layer);
// Reads it back: the tensors equal the ones written, bit for bit.
absl::StatusOr<PersistedLayer> ReadLayerCheckpoint(const std::filesystem::path& partial, int layer);

struct ResumePoint {
  int first_layer = 0;  // layers [0, first_layer) are persisted and intact
  std::string note;     // one line for the log; empty when there was no checkpoint
};

// Where a run with `fingerprint` starts, before the writer opens `partial`.
// Without `resume`, or when partial/job.json is missing or differs from
// `fingerprint`, the folder is removed (the note says why) and the run starts
// at layer 0. Otherwise the run resumes after the longest intact prefix of
// layers; the files of every later layer (an orphan, a half-written or a
// corrupted one) are removed.
absl::StatusOr<ResumePoint> PrepareLayerCheckpoint(const std::filesystem::path& partial,
                                                   const nlohmann::json& fingerprint, int num_layers,
                                                   bool resume);
// After the writer opened `partial`: creates partial/layers and writes
// partial/job.json (when a resumed run's is already there, rewrites it equal).
absl::Status StartLayerCheckpoint(const std::filesystem::path& partial, const nlohmann::json& fingerprint);

}  // namespace shrinkray
