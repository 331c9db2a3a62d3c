#include "core/io/shard_stream.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/io/checkpoint.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

// Writes all of `data` at `offset` of `fd`, across partial writes and EINTR.
absl::Status PwriteAll(int fd, const void* data, size_t size, uint64_t offset, const std::filesystem::path& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, p, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("write ", path.string()));
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

ShardStream::ShardStream(std::filesystem::path dir, ShardStreamOptions options)
    : dir_(std::move(dir)), options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<ShardStream>> ShardStream::Open(const std::filesystem::path& dir,
                                                               ShardStreamOptions options) {
  if (options.header_bytes % 8 != 0 || options.header_bytes < 64 || options.shard_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat("shard stream: header_bytes ", options.header_bytes,
                                                   " (a multiple of 8, at least 64) and shard_bytes ",
                                                   options.shard_bytes, " (positive)"));
  }
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("shard stream: ", dir.string(), " is not a folder"));
  }
  return std::unique_ptr<ShardStream>(new ShardStream(dir, std::move(options)));
}

ShardStream::~ShardStream() {
  if (fd_ >= 0) ::close(fd_);
  if (finished_) return;
  std::error_code ec;
  for (const Shard& s : shards_) std::filesystem::remove(s.path, ec);
}

absl::Status ShardStream::OpenShard() {
  Shard shard;
  shard.path = dir_ / absl::StrFormat(".shard-%05d.safetensors.tmp", static_cast<int>(shards_.size()) + 1);
  // The header with no tensors yet: what the entries are added to.
  SR_ASSIGN_OR_RETURN(const std::string empty, SafetensorsHeaderBytes({}, options_.metadata));
  shard.header_used = empty.size();
  if (shard.header_used > options_.header_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("shard stream: the metadata alone needs ", shard.header_used,
                                                   " header bytes of ", options_.header_bytes));
  }
  fd_ = ::open(shard.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) return absl::ErrnoToStatus(errno, absl::StrCat("create ", shard.path.string()));
  written_back_ = 0;
  shards_.push_back(std::move(shard));
  return absl::OkStatus();
}

absl::Status ShardStream::CloseShard() {
  Shard& shard = shards_.back();
  SR_ASSIGN_OR_RETURN(const std::string header,
                      SafetensorsHeaderBytes(shard.entries, options_.metadata, options_.header_bytes));
  if (header.size() != options_.header_bytes) {
    return absl::InternalError(absl::StrCat("shard stream: a header of ", header.size(), " bytes for the ",
                                            options_.header_bytes, " reserved in ", shard.path.string()));
  }
  absl::Status status = PwriteAll(fd_, header.data(), header.size(), 0, shard.path);
  // Durable before the files are named: a crash never leaves a named shard
  // without its data.
  if (status.ok() && ::fsync(fd_) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("fsync ", shard.path.string()));
  }
  if (::close(fd_) != 0 && status.ok()) status = absl::ErrnoToStatus(errno, absl::StrCat("close ", shard.path.string()));
  fd_ = -1;
  return status;
}

absl::Status ShardStream::Add(const StreamedTensor& tensor) {
  if (finished_) return absl::FailedPreconditionError("shard stream: already finished");
  SR_RETURN_IF_ERROR(failed_);
  auto fail = [this](absl::Status s) {
    failed_ = s;
    return s;
  };
  SR_RETURN_IF_ERROR(CheckTensorsToWrite({&tensor, 1}));
  if (names_.contains(tensor.name)) {
    return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name '", tensor.name, "'"));
  }
  // The entry as it would sit in the open shard, else in a new one.
  auto entry_in = [&](const Shard& s) {
    return SafetensorsHeaderEntry(tensor.name, tensor.dtype, tensor.shape, s.data_bytes,
                                  s.data_bytes + tensor.nbytes);
  };
  auto fits = [&](const Shard& s, const std::string& entry) {
    const uint64_t header = s.header_used + entry.size() + 1;  // and a comma (counted from the padded empty header)
    return header + (8 - header % 8) % 8 <= options_.header_bytes &&
           (s.entries.empty() || s.data_bytes + tensor.nbytes <= options_.shard_bytes);
  };
  std::string entry;
  if (fd_ >= 0) {
    SR_ASSIGN_OR_RETURN(entry, entry_in(shards_.back()));
    if (!fits(shards_.back(), entry)) {
      if (absl::Status s = CloseShard(); !s.ok()) return fail(s);
      entry.clear();
    }
  }
  if (fd_ < 0) {
    if (absl::Status s = OpenShard(); !s.ok()) return fail(s);
    SR_ASSIGN_OR_RETURN(entry, entry_in(shards_.back()));
    if (!fits(shards_.back(), entry)) {
      return fail(absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "': its header entry of ",
                                                          entry.size(), " bytes does not fit the ",
                                                          options_.header_bytes, " reserved")));
    }
  }
  Shard& shard = shards_.back();
  uint64_t offset = options_.header_bytes + shard.data_bytes;
  absl::Status status = WriteStreamedTensor(tensor, [&](std::span<const std::byte> bytes) {
    SR_RETURN_IF_ERROR(PwriteAll(fd_, bytes.data(), bytes.size(), offset, shard.path));
    offset += bytes.size();
    return absl::OkStatus();
  });
  if (!status.ok()) return fail(status);
  shard.header_used += entry.size() + 1;
  shard.entries.push_back(std::move(entry));
  shard.names.push_back(tensor.name);
  shard.data_bytes += tensor.nbytes;
  names_.insert(tensor.name);
  total_bytes_ += tensor.nbytes;
  return absl::OkStatus();
}

void ShardStream::StartWriteback() {
  if (fd_ < 0) return;
  const uint64_t end = options_.header_bytes + shards_.back().data_bytes;
  if (end <= written_back_) return;
  // Asynchronous: queues the dirty pages of the range for writing and returns.
  (void)::sync_file_range(fd_, static_cast<off_t>(written_back_), static_cast<off_t>(end - written_back_),
                          SYNC_FILE_RANGE_WRITE);
  written_back_ = end;
}

absl::Status ShardStream::Finish() {
  if (finished_) return absl::FailedPreconditionError("shard stream: already finished");
  SR_RETURN_IF_ERROR(failed_);
  if (shards_.empty()) SR_RETURN_IF_ERROR(OpenShard());
  if (fd_ >= 0) SR_RETURN_IF_ERROR(CloseShard());
  const int n = static_cast<int>(shards_.size());
  std::map<std::string, std::string> weight_map;
  for (int i = 0; i < n; ++i) {
    const std::string name = n == 1 ? SingleCheckpointFileName() : ShardFileName(i, n);
    std::error_code ec;
    std::filesystem::rename(shards_[i].path, dir_ / name, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("rename ", shards_[i].path.string(), ": ", ec.message()));
    }
    shards_[i].path = dir_ / name;
    for (const std::string& tensor : shards_[i].names) weight_map[tensor] = name;
  }
  if (n > 1) SR_RETURN_IF_ERROR(WriteCheckpointIndex(dir_, weight_map, total_bytes_));
  finished_ = true;
  return absl::OkStatus();
}

}  // namespace shrinkray
