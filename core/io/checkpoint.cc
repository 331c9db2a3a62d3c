#include "core/io/checkpoint.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/io/text_file.h"
#include "core/tensor/convert.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace shrinkray {
namespace {

// Debian's abseil is built with its own absl::string_view (not std's), so
// std::string_view must be converted before it reaches StrCat.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

using nlohmann::json;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

std::string ShapeString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

bool IsRegularFile(const std::filesystem::path& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

absl::StatusOr<std::string> ReadTextFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path.string()));
  return contents.str();
}

// Reads the index's weight_map: tensor name -> shard file name.
absl::StatusOr<std::map<std::string, std::string>> ReadWeightMap(
    const std::filesystem::path& index_path) {
  SR_ASSIGN_OR_RETURN(std::string text, ReadTextFile(index_path));
  const std::string where = index_path.string();
  const json index = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded()) return absl::InvalidArgumentError(where + ": not valid JSON");
  if (!index.is_object()) return absl::InvalidArgumentError(where + ": must be a JSON object");
  const auto it = index.find("weight_map");
  if (it == index.end() || !it->is_object()) {
    return absl::InvalidArgumentError(where + ": missing \"weight_map\" object");
  }
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, file] : it->items()) {
    if (!file.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": weight_map entry for '", name, "' must be a file name string"));
    }
    const std::string& shard = file.get_ref<const std::string&>();
    // Shards live beside the index; a path would let an index read anywhere.
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": weight_map entry for '", name,
                                                     "' names '", shard,
                                                     "', which is not a plain file name"));
    }
    weight_map[name] = shard;
  }
  return weight_map;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::filesystem::path& dir) {
  auto checkpoint = std::make_unique<Checkpoint>();
  checkpoint->dir_ = dir;
  const std::filesystem::path index_path = dir / kIndexFile;

  if (IsRegularFile(index_path)) {
    SR_ASSIGN_OR_RETURN(auto weight_map, ReadWeightMap(index_path));
    std::map<std::string, const SafetensorsFile*> shards;  // file name -> opened shard
    for (const auto& [name, shard] : weight_map) {
      if (shards.contains(shard)) continue;
      const std::filesystem::path shard_path = dir / shard;
      if (!IsRegularFile(shard_path)) {
        return absl::NotFoundError(absl::StrCat("shard file '", shard, "' listed in ",
                                                index_path.string(), " not found (",
                                                shard_path.string(), ")"));
      }
      SR_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(shard_path));
      shards[shard] = file.get();
      checkpoint->files_.push_back(std::move(file));
    }
    // Where each tensor really is, across the shards the index names; built
    // once so that validation stays O(n log n) for checkpoints with many tensors.
    struct Held {
      std::string shard;
      const TensorInfo* info;
    };
    std::map<std::string, Held> held;
    for (const auto& [shard, file] : shards) {
      for (const TensorInfo& t : file->tensors()) {
        const auto [it, inserted] = held.try_emplace(t.name, Held{shard, &t});
        if (!inserted) {
          return absl::InvalidArgumentError(
              absl::StrCat("tensor '", t.name, "' is in two shards of ", dir.string(), ": '",
                           it->second.shard, "' and '", shard, "'"));
        }
      }
    }
    for (const auto& [name, shard] : weight_map) {
      const auto it = held.find(name);
      if (it == held.end() || it->second.shard != shard) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is mapped to shard '",
                                                       shard, "' by ", index_path.string(),
                                                       " but that shard does not hold it"));
      }
    }
    for (const auto& [name, where] : held) {
      if (!weight_map.contains(name)) {
        return absl::InvalidArgumentError(
            absl::StrCat("shard '", where.shard, "' in ", dir.string(), " holds tensor '", name,
                         "' which ", index_path.string(), " does not list"));
      }
      checkpoint->index_.emplace_back(name, where.info);
    }
  } else {
    const std::filesystem::path single = dir / kSingleFile;
    if (!IsRegularFile(single)) {
      return absl::NotFoundError(
          absl::StrCat("no ", kSingleFile, " or ", kIndexFile, " in ", dir.string()));
    }
    SR_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single));
    for (const TensorInfo& t : file->tensors()) checkpoint->index_.emplace_back(t.name, &t);
    checkpoint->files_.push_back(std::move(file));
  }

  std::sort(checkpoint->index_.begin(), checkpoint->index_.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return checkpoint;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& entry : index_) names.push_back(entry.first);
  return names;
}

absl::StatusOr<const TensorInfo*> Checkpoint::Find(std::string_view name) const {
  const auto it =
      std::lower_bound(index_.begin(), index_.end(), name,
                       [](const auto& entry, std::string_view n) { return entry.first < n; });
  if (it == index_.end() || it->first != name) {
    return absl::NotFoundError(
        absl::StrCat("tensor '", Sv(name), "' not found in ", dir_.string()));
  }
  return it->second;
}

bool Checkpoint::Contains(std::string_view name) const { return Find(name).ok(); }

absl::StatusOr<std::vector<float>> Checkpoint::ReadF32(
    std::string_view name, std::span<const int64_t> expected_shape) const {
  SR_ASSIGN_OR_RETURN(const TensorInfo* info, Find(name));
  std::vector<float> out(static_cast<size_t>(info->numel()));
  SR_RETURN_IF_ERROR(ReadF32Into(name, out, expected_shape));
  return out;
}

absl::Status Checkpoint::ReadF32Into(std::string_view name, std::span<float> out,
                                     std::span<const int64_t> expected_shape) const {
  SR_ASSIGN_OR_RETURN(const TensorInfo* info, Find(name));
  if (!expected_shape.empty() && !std::ranges::equal(expected_shape, info->shape)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", Sv(name), "' in ", dir_.string(),
                                                   " has shape ", ShapeString(info->shape),
                                                   " vs expected ", ShapeString(expected_shape)));
  }
  const size_t numel = static_cast<size_t>(info->numel());
  if (out.size() != numel) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", Sv(name), "' in ", dir_.string(), " has ", numel,
                     " elements but the output buffer holds ", out.size()));
  }
  absl::Status status = ConvertToF32(out.data(), info->data, info->dtype, numel);
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat("tensor '", Sv(name), "' in ", dir_.string(),
                                                    ": ", status.message()));
  }
  return absl::OkStatus();
}

void Checkpoint::ReleasePages(std::string_view prefix) const {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  auto it = std::lower_bound(index_.begin(), index_.end(), prefix,
                             [](const auto& entry, std::string_view p) { return entry.first < p; });
  for (; it != index_.end() && it->first.starts_with(prefix); ++it) {
    const TensorInfo& t = *it->second;
    if (t.nbytes == 0) continue;
    // Whole pages around the tensor: neighbours' pages that go too are only
    // read again; the mapping is private and never written, so nothing is lost.
    const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data) / page * page;
    const uintptr_t end = (reinterpret_cast<uintptr_t>(t.data) + t.nbytes + page - 1) / page * page;
    ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  }
}

absl::Status WriteCheckpoint(const std::filesystem::path& dir,
                             std::span<const TensorToWrite> tensors, int num_shards,
                             const std::map<std::string, std::string>& metadata) {
  return WriteCheckpointStreamed(dir, StreamFromMemory(tensors), num_shards, metadata);
}

absl::Status WriteCheckpointStreamed(const std::filesystem::path& dir,
                                     std::span<const StreamedTensor> tensors, int num_shards,
                                     const std::map<std::string, std::string>& metadata) {
  const size_t n = tensors.size();
  if (num_shards < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_shards must be >= 1, got ", num_shards));
  }
  if (num_shards > 1 && static_cast<size_t>(num_shards) > n) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_shards ", num_shards, " exceeds the tensor count ", n));
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", dir.string(), ": ", ec.message()));

  if (num_shards == 1) {
    SR_RETURN_IF_ERROR(WriteSafetensorsStreamed(dir / kSingleFile, tensors, metadata));
    // A stale index would win over the new file in Open().
    std::filesystem::remove(dir / kIndexFile, ec);
    return absl::OkStatus();
  }

  std::vector<const StreamedTensor*> sorted;
  sorted.reserve(n);
  for (const StreamedTensor& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const StreamedTensor* a, const StreamedTensor* b) { return a->name < b->name; });
  // Duplicates in different shards would pass each shard's own check.
  for (size_t i = 1; i < n; ++i) {
    if (sorted[i - 1]->name == sorted[i]->name) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate tensor name '", sorted[i]->name, "'"));
    }
  }

  uint64_t total = 0;
  for (const StreamedTensor* t : sorted) total += t->nbytes;

  // Greedy contiguous split: close shard s once the running byte count reaches
  // (s+1)/num_shards of the total, and early enough that every later shard
  // still gets at least one tensor.
  std::vector<std::vector<StreamedTensor>> shards(num_shards);
  int shard = 0;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < n; ++i) {
    shards[shard].push_back(*sorted[i]);
    cumulative += sorted[i]->nbytes;
    const size_t tensors_left = n - i - 1;
    const size_t shards_left = static_cast<size_t>(num_shards - 1 - shard);
    const bool reached = static_cast<long double>(cumulative) * num_shards >=
                         static_cast<long double>(total) * (shard + 1);
    if (shards_left > 0 && (tensors_left == shards_left || reached)) ++shard;
  }

  std::map<std::string, std::string> weight_map;
  for (int s = 0; s < num_shards; ++s) {
    const std::string file_name = ShardFileName(s, num_shards);
    SR_RETURN_IF_ERROR(WriteSafetensorsStreamed(dir / file_name, shards[s], metadata));
    for (const StreamedTensor& t : shards[s]) weight_map[t.name] = file_name;
  }
  return WriteCheckpointIndex(dir, weight_map, total);
}

std::string SingleCheckpointFileName() { return kSingleFile; }

std::string ShardFileName(int shard, int num_shards) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", shard + 1, num_shards);
}

absl::Status WriteCheckpointIndex(const std::filesystem::path& dir,
                                  const std::map<std::string, std::string>& weight_map, uint64_t total_size) {
  json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
  // Names were checked as valid UTF-8 by WriteSafetensors, so dump cannot throw.
  const std::string text = index.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
  // The index goes last: until it exists the folder is not a sharded checkpoint.
  return WriteTextFile(dir / kIndexFile, text);
}

}  // namespace shrinkray
