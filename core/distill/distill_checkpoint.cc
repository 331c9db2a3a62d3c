#include "core/distill/distill_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/io/safetensors.h"
#include "core/util/status_macros.h"

namespace shrinkray::distill {
namespace {

// step-NNNNNNNN.safetensors -> NNNNNNNN, else -1.
int64_t CheckpointStep(const std::filesystem::path& path) {
  const std::string name = path.filename().string();
  if (!name.starts_with("step-") || !name.ends_with(".safetensors")) return -1;
  const std::string digits = name.substr(5, name.size() - 5 - 12);
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

std::vector<std::pair<int64_t, std::filesystem::path>> ListCheckpoints(const std::filesystem::path& dir) {
  std::vector<std::pair<int64_t, std::filesystem::path>> found;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return found;
  for (const auto& item : std::filesystem::directory_iterator(dir, ec)) {
    const int64_t step = CheckpointStep(item.path());
    if (step >= 0) found.emplace_back(step, item.path());
  }
  std::sort(found.rbegin(), found.rend());  // newest first
  return found;
}

// Tensor `name` of `file` if it is F32 with `count` elements.
absl::StatusOr<const TensorInfo*> FindFloats(const SafetensorsFile& file, const std::string& name,
                                             size_t count) {
  const TensorInfo* t = file.Find(name);
  if (t == nullptr || t->dtype != DType::kF32 || t->nbytes != count * sizeof(float)) {
    return absl::DataLossError(absl::StrCat("tensor ", name, " missing or not F32 [", count, "]"));
  }
  return t;
}

}  // namespace

absl::Status WriteDistillCheckpoint(const std::filesystem::path& dir, const std::string& fingerprint,
                                    int64_t step, Position position, uint64_t seed,
                                    const train::ParameterStore& store) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", dir.string(), ": ", ec.message()));
  const int64_t n = static_cast<int64_t>(store.size());
  const std::vector<TensorToWrite> tensors = {
      {"params", DType::kF32, {n}, std::as_bytes(store.params())},
      {"exp_avg", DType::kF32, {n}, std::as_bytes(store.first_moment())},
      {"exp_avg_sq", DType::kF32, {n}, std::as_bytes(store.second_moment())},
  };
  const std::map<std::string, std::string> metadata = {
      {"format", "shrinkray-distill-checkpoint"},
      {"fingerprint", fingerprint},
      {"step", absl::StrCat(step)},
      {"epoch", absl::StrCat(position.epoch)},
      {"index", absl::StrCat(position.index)},
      {"seed", absl::StrCat(seed)},
  };
  const std::filesystem::path path = dir / absl::StrFormat("step-%08d.safetensors", step);
  // WriteSafetensors writes a temporary file and renames it into place.
  SR_RETURN_IF_ERROR(WriteSafetensors(path, tensors, metadata));
  for (const auto& [old_step, old_path] : ListCheckpoints(dir)) {
    if (old_step != step) std::filesystem::remove(old_path, ec);
  }
  return absl::OkStatus();
}

ResumedDistillCheckpoint ReadDistillCheckpoint(const std::filesystem::path& dir,
                                               const std::string& fingerprint,
                                               train::ParameterStore& store) {
  ResumedDistillCheckpoint out;
  for (const auto& [step, path] : ListCheckpoints(dir)) {
    auto file = SafetensorsFile::Open(path);
    if (!file.ok()) {
      absl::StrAppend(&out.note, "checkpoint ", path.string(), " is unreadable (",
                      file.status().message(), "); ");
      continue;
    }
    const auto& meta = (*file)->metadata();
    auto get = [&](const char* key) {
      auto it = meta.find(key);
      return it == meta.end() ? std::string() : it->second;
    };
    if (get("fingerprint") != fingerprint) {
      absl::StrAppend(&out.note, "checkpoint ", path.string(), " is for another run (fingerprint ",
                      get("fingerprint"), ", this run ", fingerprint, "); ");
      continue;
    }
    // Everything checked before anything is copied, so that a damaged file
    // leaves the buffers as they were for the next candidate (or the start).
    const std::pair<std::string, std::span<float>> targets[] = {
        {"params", store.params()}, {"exp_avg", store.first_moment()}, {"exp_avg_sq", store.second_moment()}};
    const TensorInfo* found[3] = {nullptr, nullptr, nullptr};
    absl::Status read = absl::OkStatus();
    for (int i = 0; i < 3 && read.ok(); ++i) {
      absl::StatusOr<const TensorInfo*> t = FindFloats(**file, targets[i].first, targets[i].second.size());
      if (t.ok()) found[i] = *t;
      read = t.status();
    }
    int64_t values[3] = {0, 0, 0};  // step, epoch, index
    if (read.ok() && (!absl::SimpleAtoi(get("step"), &values[0]) ||
                      !absl::SimpleAtoi(get("epoch"), &values[1]) ||
                      !absl::SimpleAtoi(get("index"), &values[2]) || values[0] != step)) {
      read = absl::DataLossError("bad step/epoch/index metadata");
    }
    if (!read.ok()) {
      absl::StrAppend(&out.note, "checkpoint ", path.string(), " is damaged (", read.message(), "); ");
      continue;
    }
    for (int i = 0; i < 3; ++i) std::memcpy(targets[i].second.data(), found[i]->data, found[i]->nbytes);
    out.step = values[0];
    out.position = {values[1], values[2]};
    absl::StrAppend(&out.note, "resumed from ", path.string(), " at step ", step);
    return out;
  }
  if (!out.note.empty()) absl::StrAppend(&out.note, "starting over");
  return out;
}

}  // namespace shrinkray::distill
