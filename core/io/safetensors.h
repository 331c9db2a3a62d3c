// safetensors files: a memory-mapped, fully validated reader and a writer.
// Format: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {"k": "v"}}, then the data region; offsets are relative to it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tensor/dtype.h"

namespace shrinkray {

// One tensor inside a mapped file. `data` points into the mapping and lives as
// long as the SafetensorsFile that owns it.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps `path` read-only and validates everything: file at least 8 bytes,
  // header length inside the file, header valid JSON object, known dtype names,
  // shapes of non-negative ints, shape×dtype size == byte range, every range
  // inside the data region, no two ranges overlapping. Errors are
  // InvalidArgument (NotFound for a missing file) and name the file, and the
  // tensor where one is at fault.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // Tensors in the order of their data offsets.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // nullptr when absent.
  const TensorInfo* Find(std::string_view name) const;

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: bytes in `dtype`'s little-endian layout.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;
};

// Writes one safetensors file (tensors sorted by name, as the Python library
// does; header padded with spaces to a multiple of 8). Validates that each
// tensor's byte count matches shape×dtype and names are unique. Writes to a
// temporary file and renames, so a crash never leaves a half file at `path`.
absl::Status WriteSafetensors(const std::filesystem::path& path,
                              std::span<const TensorToWrite> tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Appends bytes to the file being written.
using ByteSink = std::function<absl::Status(std::span<const std::byte>)>;

// A tensor whose bytes are produced while its file is written, for outputs
// too large to hold in memory at once: `write` passes exactly `nbytes` bytes
// to the sink, in order, in as many pieces as it likes.
struct StreamedTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
  std::function<absl::Status(const ByteSink& sink)> write;
};

// Runs `tensor.write` into `sink`; Internal when it passes another byte
// count than `nbytes` (what every writer of streamed tensors checks).
absl::Status WriteStreamedTensor(const StreamedTensor& tensor, const ByteSink& sink);

// Streamed views of in-memory tensors (whose bytes must outlive them).
std::vector<StreamedTensor> StreamFromMemory(std::span<const TensorToWrite> tensors);

// WriteSafetensors for streamed tensors: the same bytes, checks and crash
// safety; a `write` that passes another byte count than `nbytes` is Internal.
// `observer` (may be empty) sees every byte of the file as it is written, in
// order: e.g. to hash the file without reading it back.
absl::Status WriteSafetensorsStreamed(const std::filesystem::path& path,
                                      std::span<const StreamedTensor> tensors,
                                      const std::map<std::string, std::string>& metadata = {},
                                      const ByteSink& observer = nullptr);

// The pieces of WriteSafetensors, for writers that lay a file out
// themselves (core/io/shard_stream.h):
// The checks WriteSafetensors makes of its tensors (names, dtypes, sizes).
absl::Status CheckTensorsToWrite(std::span<const StreamedTensor> tensors);
// One tensor's entry of a header: "name":{"dtype":..,"shape":[..],"data_offsets":[begin,end]}.
absl::StatusOr<std::string> SafetensorsHeaderEntry(std::string_view name, DType dtype,
                                                   std::span<const int64_t> shape, uint64_t begin,
                                                   uint64_t end);
// What a file starts with: the 8-byte little-endian header length and the
// header (metadata first, then `entries`), padded with spaces so that the data
// starts at a multiple of 8 and at `min_bytes` or later (header space
// reserved before the data was written).
absl::StatusOr<std::string> SafetensorsHeaderBytes(std::span<const std::string> entries,
                                                   const std::map<std::string, std::string>& metadata,
                                                   uint64_t min_bytes = 0);

}  // namespace shrinkray
