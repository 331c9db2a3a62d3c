// A Hugging Face model folder's weights: `model.safetensors`, or shards listed by
// `model.safetensors.index.json` ({"metadata": {...}, "weight_map": {name: file}}).
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/safetensors.h"

namespace shrinkray {

class Checkpoint {
 public:
  // Opens `dir`: the index when present (every shard it names must exist and
  // hold exactly the tensors the index maps to it), else model.safetensors.
  // A tensor present in two shards is an error.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  // Sorted tensor names across all shards.
  std::vector<std::string> names() const;
  // NotFound naming the tensor and the folder when absent.
  absl::StatusOr<const TensorInfo*> Find(std::string_view name) const;
  bool Contains(std::string_view name) const;
  // Reads a tensor converted to float32; `expected_shape` (when non-empty) must
  // match exactly, else InvalidArgument naming the tensor and both shapes.
  absl::StatusOr<std::vector<float>> ReadF32(std::string_view name,
                                             std::span<const int64_t> expected_shape = {}) const;
  // Same, into a caller-owned buffer of exactly numel floats.
  absl::Status ReadF32Into(std::string_view name, std::span<float> out,
                           std::span<const int64_t> expected_shape = {}) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  // Drops this process's mapping of the pages holding the tensors whose names
  // start with `prefix` (they are read again from the page cache or the file
  // when touched), so that a reader streaming through a checkpoint larger
  // than memory keeps only what it uses resident. Advisory: never fails.
  void ReleasePages(std::string_view prefix) const;

 private:
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::pair<std::string, const TensorInfo*>> index_;  // sorted by name
};

// Writes `tensors` into `dir` as `num_shards` files named
// model-00001-of-0000N.safetensors plus model.safetensors.index.json (with
// metadata.total_size), or as a single model.safetensors when num_shards == 1.
// Tensors are assigned to shards in name order, balancing bytes.
absl::Status WriteCheckpoint(const std::filesystem::path& dir,
                             std::span<const TensorToWrite> tensors, int num_shards = 1,
                             const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// WriteCheckpoint for tensors whose bytes are produced while each shard is
// written (safetensors.h): the same files, shard split and checks.
absl::Status WriteCheckpointStreamed(
    const std::filesystem::path& dir, std::span<const StreamedTensor> tensors, int num_shards = 1,
    const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// The file names WriteCheckpoint uses: model.safetensors, and
// model-0000i-of-0000N.safetensors for shard i (from 0) of N.
std::string SingleCheckpointFileName();
std::string ShardFileName(int shard, int num_shards);
// model.safetensors.index.json of a sharded checkpoint (tensor -> file).
absl::Status WriteCheckpointIndex(const std::filesystem::path& dir,
                                  const std::map<std::string, std::string>& weight_map, uint64_t total_size);

}  // namespace shrinkray
