#include "core/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace shrinkray {
namespace {

// Debian's abseil is built with its own absl::string_view (not std's), so
// std::string_view must be converted before it reaches StrCat.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

using nlohmann::json;

constexpr size_t kHeaderPrefixBytes = 8;
// Real headers are a few hundred KB even for 100k-tensor files; anything this
// large is a corrupt length field, not a header worth allocating for.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr std::string_view kMetadataKey = "__metadata__";

std::string ShapeString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

const char* JsonTypeName(const json& value) { return value.type_name(); }

// Every reader error starts with the file so that a failure in a 30-shard
// checkpoint says which shard is broken.
absl::Status FileError(const std::filesystem::path& path, absl::string_view problem) {
  return absl::InvalidArgumentError(
      absl::StrCat("safetensors file ", path.string(), ": ", problem));
}

absl::Status TensorError(const std::filesystem::path& path, absl::string_view tensor,
                         absl::string_view problem) {
  return FileError(path, absl::StrCat("tensor '", tensor, "': ", problem));
}

// A JSON integer as a non-negative int64; fails for floats, negatives, and
// values past int64 (nlohmann stores those as unsigned).
bool AsNonNegativeInt64(const json& value, int64_t* out) {
  if (value.is_number_unsigned()) {
    const uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (value.is_number_integer()) {
    const int64_t i = value.get<int64_t>();
    if (i < 0) return false;
    *out = i;
    return true;
  }
  return false;
}

// Element count × element size with overflow detection; false on overflow or
// on a negative dimension.
bool ByteSize(std::span<const int64_t> shape, DType dtype, uint64_t* out) {
  uint64_t total = DTypeSize(dtype);
  for (int64_t dim : shape) {
    if (dim < 0) return false;
    if (__builtin_mul_overflow(total, static_cast<uint64_t>(dim), &total)) return false;
  }
  *out = total;
  return true;
}

uint64_t ReadLittleEndian64(const std::byte* p) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | static_cast<uint8_t>(p[i]);
  return value;
}

void AppendLittleEndian64(uint64_t value, std::string* out) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xFF));
}

// JSON-quotes `text`, refusing strings that are not valid UTF-8 (nlohmann
// would throw on them, and a reader would reject the header anyway).
absl::StatusOr<std::string> JsonQuote(absl::string_view text, absl::string_view what) {
  const std::string input(text);
  std::string quoted = json(input).dump(-1, ' ', false, json::error_handler_t::replace);
  const json back = json::parse(quoted, nullptr, /*allow_exceptions=*/false);
  if (back.is_discarded() || !back.is_string() || back.get_ref<const std::string&>() != input) {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", text, "' is not valid UTF-8"));
  }
  return quoted;
}

// Parsed, range-checked header entry before the data pointer is attached.
struct Entry {
  TensorInfo info;
  uint64_t begin = 0;
  uint64_t end = 0;
};

absl::StatusOr<Entry> ParseEntry(const std::filesystem::path& path, const std::string& name,
                                 const json& value, uint64_t data_size) {
  Entry entry;
  entry.info.name = name;
  if (!value.is_object()) {
    return TensorError(path, name,
                       absl::StrCat("entry must be an object, got ", JsonTypeName(value)));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!value.contains(key)) return TensorError(path, name, absl::StrCat("missing '", key, "'"));
  }

  const json& dtype = value["dtype"];
  if (!dtype.is_string()) {
    return TensorError(path, name,
                       absl::StrCat("dtype must be a string, got ", JsonTypeName(dtype)));
  }
  absl::StatusOr<DType> parsed = ParseDType(dtype.get_ref<const std::string&>());
  if (!parsed.ok()) return TensorError(path, name, parsed.status().message());
  entry.info.dtype = *parsed;

  const json& shape = value["shape"];
  if (!shape.is_array()) {
    return TensorError(path, name,
                       absl::StrCat("shape must be an array, got ", JsonTypeName(shape)));
  }
  for (const json& dim : shape) {
    int64_t d = 0;
    if (!AsNonNegativeInt64(dim, &d)) {
      return TensorError(path, name,
                         absl::StrCat("shape ", shape.dump(), " must hold non-negative integers"));
    }
    entry.info.shape.push_back(d);
  }

  const json& offsets = value["data_offsets"];
  int64_t begin = 0;
  int64_t end = 0;
  if (!offsets.is_array() || offsets.size() != 2 || !AsNonNegativeInt64(offsets[0], &begin) ||
      !AsNonNegativeInt64(offsets[1], &end)) {
    return TensorError(path, name,
                       absl::StrCat("data_offsets ", offsets.dump(),
                                    " must be [begin, end] of two non-negative integers"));
  }
  if (begin > end) {
    return TensorError(path, name,
                       absl::StrCat("data_offsets [", begin, ", ", end, "] has begin > end"));
  }
  entry.begin = static_cast<uint64_t>(begin);
  entry.end = static_cast<uint64_t>(end);
  if (entry.end > data_size) {
    return TensorError(path, name,
                       absl::StrCat("data_offsets [", begin, ", ", end,
                                    "] end past the data region of ", data_size, " bytes"));
  }

  uint64_t nbytes = 0;
  if (!ByteSize(entry.info.shape, entry.info.dtype, &nbytes)) {
    return TensorError(
        path, name,
        absl::StrCat("shape ", ShapeString(entry.info.shape), " overflows a byte count"));
  }
  if (nbytes != entry.end - entry.begin) {
    return TensorError(path, name,
                       absl::StrCat("shape ", ShapeString(entry.info.shape), " x ",
                                    Sv(DTypeName(entry.info.dtype)), " needs ", nbytes,
                                    " bytes but data_offsets [", begin, ", ", end, "] hold ",
                                    entry.end - entry.begin, " bytes"));
  }
  entry.info.nbytes = static_cast<size_t>(nbytes);
  return entry;
}

absl::Status ParseMetadata(const std::filesystem::path& path, const json& value,
                           std::map<std::string, std::string>* out) {
  if (!value.is_object()) {
    return FileError(
        path, absl::StrCat("__metadata__ must be an object of strings, got ", JsonTypeName(value)));
  }
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      return FileError(path, absl::StrCat("__metadata__ must map strings to strings, but '", key,
                                          "' is a ", JsonTypeName(item)));
    }
    (*out)[key] = item.get<std::string>();
  }
  return absl::OkStatus();
}

// Writes all of `data` to `fd`, across partial writes and EINTR.
absl::Status WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("write ", path));
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status ValidateForWrite(std::span<const StreamedTensor> tensors) {
  std::set<std::string_view> seen;
  for (const StreamedTensor& t : tensors) {
    if (t.name.empty()) return absl::InvalidArgumentError("tensor name must not be empty");
    if (t.name == kMetadataKey) {
      return absl::InvalidArgumentError("tensor name '__metadata__' is reserved");
    }
    if (!seen.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name '", t.name, "'"));
    }
    if (!t.write) return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' has no bytes"));
    if (static_cast<size_t>(t.dtype) >= static_cast<size_t>(DType::kCount)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': invalid dtype"));
    }
    uint64_t nbytes = 0;
    if (!ByteSize(t.shape, t.dtype, &nbytes)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "': bad shape ", ShapeString(t.shape)));
    }
    if (nbytes != t.nbytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", t.name, "': shape ", ShapeString(t.shape), " x ", Sv(DTypeName(t.dtype)),
          " needs ", nbytes, " bytes but ", t.nbytes, " were given"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckTensorsToWrite(std::span<const StreamedTensor> tensors) { return ValidateForWrite(tensors); }

absl::StatusOr<std::string> SafetensorsHeaderEntry(std::string_view name, DType dtype,
                                                   std::span<const int64_t> shape, uint64_t begin,
                                                   uint64_t end) {
  SR_ASSIGN_OR_RETURN(std::string quoted, JsonQuote(Sv(name), "tensor name"));
  return absl::StrCat(quoted, ":{\"dtype\":\"", Sv(DTypeName(dtype)), "\",\"shape\":[",
                      absl::StrJoin(shape, ","), "],\"data_offsets\":[", begin, ",", end, "]}");
}

absl::StatusOr<std::string> SafetensorsHeaderBytes(std::span<const std::string> entries,
                                                   const std::map<std::string, std::string>& metadata,
                                                   uint64_t min_bytes) {
  // Built by hand rather than via nlohmann::json, whose std::map ordering
  // would put "__metadata__" after names starting with a capital or digit.
  std::vector<std::string> fields;
  if (!metadata.empty()) {
    std::vector<std::string> items;
    for (const auto& [key, value] : metadata) {
      SR_ASSIGN_OR_RETURN(std::string k, JsonQuote(key, "metadata key"));
      SR_ASSIGN_OR_RETURN(std::string v, JsonQuote(value, "metadata value"));
      items.push_back(absl::StrCat(k, ":", v));
    }
    fields.push_back(absl::StrCat("\"__metadata__\":{", absl::StrJoin(items, ","), "}"));
  }
  fields.insert(fields.end(), entries.begin(), entries.end());
  std::string header = absl::StrCat("{", absl::StrJoin(fields, ","), "}");
  // Padding keeps the data region 8-byte aligned in the file (and so in an
  // mmap), which is what the Python library does too.
  const uint64_t bytes = std::max<uint64_t>(kHeaderPrefixBytes + header.size(), min_bytes);
  header.append((8 - bytes % 8) % 8 + (bytes - kHeaderPrefixBytes - header.size()), ' ');
  std::string out;
  AppendLittleEndian64(header.size(), &out);
  return out + header;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::filesystem::path& path) {
  const std::string p = path.string();
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat("safetensors file not found: ", p));
    return absl::ErrnoToStatus(err, absl::StrCat("open safetensors file ", p));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat("stat ", p));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return FileError(path, "not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < kHeaderPrefixBytes) {
    ::close(fd);
    return FileError(path, absl::StrCat("truncated: ", file_size, " bytes, need at least 8"));
  }

  // From here on the object owns the mapping, so every early return unmaps.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  ::close(fd);  // The mapping keeps the file alive.
  if (map == MAP_FAILED) return absl::ErrnoToStatus(mmap_errno, absl::StrCat("mmap ", p));
  file->map_ = map;
  file->map_size_ = file_size;
  const std::byte* base = static_cast<const std::byte*>(map);

  const uint64_t header_size = ReadLittleEndian64(base);
  if (header_size > file_size - kHeaderPrefixBytes) {
    return FileError(path,
                     absl::StrCat("header length ", header_size, " exceeds file size ", file_size));
  }
  if (header_size > kMaxHeaderBytes) {
    return FileError(path, absl::StrCat("header length ", header_size, " exceeds the limit of ",
                                        kMaxHeaderBytes, " bytes"));
  }
  const char* header_begin = reinterpret_cast<const char*>(base + kHeaderPrefixBytes);
  const json header =
      json::parse(header_begin, header_begin + header_size, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return FileError(path, "header is not valid JSON");
  if (!header.is_object()) {
    return FileError(path,
                     absl::StrCat("header must be a JSON object, got ", JsonTypeName(header)));
  }

  const uint64_t data_offset = kHeaderPrefixBytes + header_size;
  const uint64_t data_size = file_size - data_offset;
  std::vector<Entry> entries;
  entries.reserve(header.size());
  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      SR_RETURN_IF_ERROR(ParseMetadata(path, value, &file->metadata_));
      continue;
    }
    SR_ASSIGN_OR_RETURN(Entry entry, ParseEntry(path, name, value, data_size));
    entries.push_back(std::move(entry));
  }

  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.info.name < b.info.name;
  });
  // Sorted by begin, a range overlaps an earlier one iff it starts before the
  // furthest end seen so far. Empty ranges hold no bytes and overlap nothing.
  const Entry* furthest = nullptr;
  for (const Entry& entry : entries) {
    if (entry.begin == entry.end) continue;
    if (furthest != nullptr && entry.begin < furthest->end) {
      return FileError(path, absl::StrCat("tensors '", furthest->info.name, "' [", furthest->begin,
                                          ", ", furthest->end, ") and '", entry.info.name, "' [",
                                          entry.begin, ", ", entry.end, ") overlap"));
    }
    if (furthest == nullptr || entry.end > furthest->end) furthest = &entry;
  }

  file->tensors_.reserve(entries.size());
  for (Entry& entry : entries) {
    entry.info.data = base + data_offset + entry.begin;
    file->tensors_.push_back(std::move(entry.info));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  for (const TensorInfo& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::Status WriteStreamedTensor(const StreamedTensor& tensor, const ByteSink& sink) {
  uint64_t written = 0;
  SR_RETURN_IF_ERROR(tensor.write([&](std::span<const std::byte> bytes) {
    written += bytes.size();
    return sink(bytes);
  }));
  if (written != tensor.nbytes) {
    return absl::InternalError(
        absl::StrCat("tensor '", tensor.name, "': ", written, " bytes produced, expected ", tensor.nbytes));
  }
  return absl::OkStatus();
}

std::vector<StreamedTensor> StreamFromMemory(std::span<const TensorToWrite> tensors) {
  std::vector<StreamedTensor> out;
  out.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) {
    const std::span<const std::byte> data = t.data;
    out.push_back({t.name, t.dtype, t.shape, data.size(),
                   [data](const ByteSink& sink) { return sink(data); }});
  }
  return out;
}

absl::Status WriteSafetensors(const std::filesystem::path& path,
                              std::span<const TensorToWrite> tensors,
                              const std::map<std::string, std::string>& metadata) {
  return WriteSafetensorsStreamed(path, StreamFromMemory(tensors), metadata);
}

absl::Status WriteSafetensorsStreamed(const std::filesystem::path& path,
                                      std::span<const StreamedTensor> tensors,
                                      const std::map<std::string, std::string>& metadata,
                                      const ByteSink& observer) {
  SR_RETURN_IF_ERROR(ValidateForWrite(tensors));

  std::vector<const StreamedTensor*> sorted;
  sorted.reserve(tensors.size());
  for (const StreamedTensor& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const StreamedTensor* a, const StreamedTensor* b) { return a->name < b->name; });

  std::vector<std::string> entries;
  uint64_t offset = 0;
  for (const StreamedTensor* t : sorted) {
    SR_ASSIGN_OR_RETURN(std::string entry,
                        SafetensorsHeaderEntry(t->name, t->dtype, t->shape, offset, offset + t->nbytes));
    entries.push_back(std::move(entry));
    offset += t->nbytes;
  }
  SR_ASSIGN_OR_RETURN(const std::string header, SafetensorsHeaderBytes(entries, metadata));

  const std::string final_path = path.string();
  const std::string tmp_path = absl::StrCat(final_path, ".tmp.", ::getpid());
  const int fd = ::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("create ", tmp_path));
  auto write = [&](std::span<const std::byte> bytes) {
    if (observer) SR_RETURN_IF_ERROR(observer(bytes));
    return WriteAll(fd, bytes.data(), bytes.size(), tmp_path);
  };
  absl::Status status = write(std::as_bytes(std::span<const char>(header)));
  for (const StreamedTensor* t : sorted) {
    if (!status.ok()) break;
    status = WriteStreamedTensor(*t, write);
  }
  // fsync before rename: otherwise a crash can leave a renamed, empty file.
  if (status.ok() && ::fsync(fd) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("fsync ", tmp_path));
  }
  if (::close(fd) != 0 && status.ok()) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("close ", tmp_path));
  }
  if (status.ok() && ::rename(tmp_path.c_str(), final_path.c_str()) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("rename ", tmp_path, " to ", final_path));
  }
  if (!status.ok()) ::unlink(tmp_path.c_str());
  return status;
}

}  // namespace shrinkray
