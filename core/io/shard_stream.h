// Writes a safetensors checkpoint (one file, or shards with an index) as its
// tensors arrive, each byte once: a shard's header space is reserved at the
// front of its file and filled in when the shard closes, so nothing is staged
// in a scratch file and copied at the end. For outputs larger than memory
// that are produced a layer at a time (CompressedModelWriter).
//
// The files are what WriteCheckpoint writes (the same names, index and
// checks) but for the order of the data (as added, not by name), the header's
// padding (the reserved space) and the split (a shard closes before the
// tensor that would take it past `shard_bytes`; a larger tensor gets a shard
// of its own, as Hugging Face's save_pretrained does).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/safetensors.h"

namespace shrinkray {

struct ShardStreamOptions {
  uint64_t shard_bytes = uint64_t{4} << 30;  // HF's default max_shard_size is 5GB
  // Header space reserved per shard (a multiple of 8). A shard also closes
  // before a tensor whose header entry would not fit: ~120 bytes a tensor
  // of a Llama model, so 64 KiB holds ~500 of them.
  uint64_t header_bytes = uint64_t{64} << 10;
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
};

class ShardStream {
 public:
  // Writes into `dir` (which must exist), under temporary names until Finish.
  static absl::StatusOr<std::unique_ptr<ShardStream>> Open(const std::filesystem::path& dir,
                                                           ShardStreamOptions options = {});
  ~ShardStream();  // unfinished: removes its files
  ShardStream(const ShardStream&) = delete;
  ShardStream& operator=(const ShardStream&) = delete;

  // Appends a tensor (WriteSafetensors' checks; names unique across shards).
  absl::Status Add(const StreamedTensor& tensor);
  // Starts writing what was added so far back to the disk, so that the
  // final fsyncs find little left to do. Advisory: never fails.
  void StartWriteback();
  // Closes the last shard, durably (fsync), and names the files
  // model.safetensors, or model-0000i-of-0000N.safetensors with
  // model.safetensors.index.json (written last). No tensors: an empty file.
  absl::Status Finish();

  uint64_t total_bytes() const { return total_bytes_; }

 private:
  struct Shard {
    std::filesystem::path path;  // temporary name
    std::vector<std::string> entries;
    std::vector<std::string> names;
    uint64_t header_used = 0;  // bytes of the header with these entries
    uint64_t data_bytes = 0;
  };
  ShardStream(std::filesystem::path dir, ShardStreamOptions options);
  absl::Status OpenShard();
  absl::Status CloseShard();

  std::filesystem::path dir_;
  ShardStreamOptions options_;
  std::vector<Shard> shards_;  // the last one open while fd_ >= 0
  int fd_ = -1;
  uint64_t written_back_ = 0;  // of the open shard's file
  std::set<std::string> names_;
  uint64_t total_bytes_ = 0;
  absl::Status failed_;
  bool finished_ = false;
};

}  // namespace shrinkray
