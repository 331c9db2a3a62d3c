#include "core/pipeline/layer_checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/algo/quantized_codes.h"
#include "core/io/safetensors.h"
#include "core/io/text_file.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kJobFile[] = "job.json";
constexpr char kLayersDir[] = "layers";
constexpr size_t kReadPiece = size_t{8} << 20;
constexpr uint64_t kSampleBytes = uint64_t{1} << 20;  // of each shard's data, for the model hash

uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

uint64_t Step(uint64_t state, uint64_t word) {
  word *= 0x87c37b91114253d5ull;
  word = std::rotl(word, 31) * 0x4cf5ad432745937full;
  return std::rotl(state ^ word, 27) * 0x9e3779b97f4a7c15ull + 0x52dce729ull;
}

std::string Stem(int layer) { return absl::StrFormat("layer-%05d", layer); }
fs::path LayersDir(const fs::path& partial) { return partial / kLayersDir; }
fs::path TensorsPath(const fs::path& partial, int layer) {
  return LayersDir(partial) / (Stem(layer) + ".safetensors");
}
fs::path InfoPath(const fs::path& partial, int layer) { return LayersDir(partial) / (Stem(layer) + ".json"); }

// Hash and size of a file's bytes, read a piece at a time.
absl::Status HashFile(const fs::path& path, StableHasher* hasher, uint64_t* size,
                      uint64_t offset = 0, uint64_t limit = std::numeric_limits<uint64_t>::max()) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("open ", path.string()));
  in.seekg(static_cast<std::streamoff>(offset));
  std::vector<char> piece(static_cast<size_t>(std::min<uint64_t>(kReadPiece, limit)));
  uint64_t total = 0;
  while (total < limit && in) {
    in.read(piece.data(), static_cast<std::streamsize>(std::min<uint64_t>(piece.size(), limit - total)));
    const auto n = static_cast<size_t>(in.gcount());
    if (n == 0) break;
    hasher->Update(std::as_bytes(std::span<const char>(piece.data(), n)));
    total += n;
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("read ", path.string()));
  if (size != nullptr) *size = total;
  return absl::OkStatus();
}

// Makes the renames inside `dir` durable (a power cut, not just a killed
// process). Best effort: some filesystems refuse fsync on a directory.
void SyncDirectory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}


// Names of the tensors of one entry inside the layer file.
std::string CodesName(const std::string& name) { return name + "#codes"; }
std::string ScalesName(const std::string& name) { return name + "#scales"; }
std::string ZerosName(const std::string& name) { return name + "#zeros"; }
std::string GIdxName(const std::string& name) { return name + "#g_idx"; }

template <typename T>
std::span<const std::byte> Bytes(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

absl::StatusOr<json> ReadInfo(const fs::path& partial, int layer) {
  const fs::path path = InfoPath(partial, layer);
  std::error_code ec;
  if (!fs::exists(path, ec)) return absl::NotFoundError(absl::StrCat(path.string(), " does not exist"));
  std::ifstream in(path);
  json info = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (info.is_discarded() || !info.is_object()) {
    return absl::DataLossError(absl::StrCat(path.string(), " is not valid JSON"));
  }
  if (info.value("version", -1) != kLayerCheckpointVersion || info.value("layer", -1) != layer ||
      !info.contains("file_bytes") || !info.contains("file_hash") || !info.contains("tensors") ||
      !info.contains("matrices")) {
    return absl::DataLossError(absl::StrCat(path.string(), " is not a layer ", layer, " checkpoint of version ",
                                            kLayerCheckpointVersion));
  }
  return info;
}

absl::Status CheckSize(const fs::path& path, const json& info) {
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(path.string(), ": ", ec.message()));
  if (size != info.at("file_bytes").get<uint64_t>()) {
    return absl::DataLossError(absl::StrCat(path.string(), " has ", size, " bytes, expected ",
                                            info.at("file_bytes").get<uint64_t>()));
  }
  return absl::OkStatus();
}

// The top-level keys in which two fingerprints differ, for the log.
std::string DifferingKeys(const json& a, const json& b) {
  std::vector<std::string> keys;
  if (a.is_object() && b.is_object()) {
    for (const auto& [key, value] : a.items()) {
      if (!b.contains(key) || b.at(key) != value) keys.push_back(key);
    }
    for (const auto& [key, value] : b.items()) {
      if (!a.contains(key)) keys.push_back(key);
    }
  }
  return keys.empty() ? std::string("unreadable") : absl::StrJoin(keys, ", ");
}

}  // namespace

std::vector<std::string> LayerCheckpointEntries() { return {kJobFile, kLayersDir}; }

void StableHasher::Update(std::span<const std::byte> bytes) {
  length_ += bytes.size();
  size_t i = 0;
  if (tail_size_ > 0) {
    while (tail_size_ < 8 && i < bytes.size()) tail_[tail_size_++] = static_cast<unsigned char>(bytes[i++]);
    if (tail_size_ < 8) return;
    uint64_t word;
    std::memcpy(&word, tail_, 8);
    state_ = Step(state_, word);
    tail_size_ = 0;
  }
  for (; i + 8 <= bytes.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, bytes.data() + i, 8);
    state_ = Step(state_, word);
  }
  for (; i < bytes.size(); ++i) tail_[tail_size_++] = static_cast<unsigned char>(bytes[i]);
}

uint64_t StableHasher::Digest() const {
  uint64_t state = state_;
  if (tail_size_ > 0) {
    unsigned char last[8] = {};
    std::memcpy(last, tail_, static_cast<size_t>(tail_size_));
    uint64_t word;
    std::memcpy(&word, last, 8);
    state = Step(state, word);
  }
  return Mix(state ^ length_);
}

std::string StableHasher::HexDigest() const { return absl::StrFormat("%016x", Digest()); }

absl::StatusOr<std::string> HashModelFolder(const fs::path& model_dir, const Checkpoint& checkpoint) {
  StableHasher hasher;
  for (const char* name : {"config.json", "model.safetensors.index.json"}) {
    std::error_code ec;
    if (!fs::exists(model_dir / name, ec)) continue;
    hasher.Update(name);
    SR_RETURN_IF_ERROR(HashFile(model_dir / name, &hasher, nullptr));
  }
  for (const std::unique_ptr<SafetensorsFile>& file : checkpoint.files()) {
    std::error_code ec;
    const uint64_t size = fs::file_size(file->path(), ec);
    if (ec) return absl::NotFoundError(absl::StrCat(file->path().string(), ": ", ec.message()));
    hasher.Update(absl::StrCat(file->path().filename().string(), ":", size));
    // The 8-byte length, the header and the first MiB of data, then the last MiB.
    uint64_t header_len = 0;
    {
      std::ifstream in(file->path(), std::ios::binary);
      in.read(reinterpret_cast<char*>(&header_len), 8);
    }
    header_len = std::min<uint64_t>(header_len, size);
    SR_RETURN_IF_ERROR(HashFile(file->path(), &hasher, nullptr, 0, 8 + header_len + kSampleBytes));
    if (size > kSampleBytes) SR_RETURN_IF_ERROR(HashFile(file->path(), &hasher, nullptr, size - kSampleBytes));
  }
  return hasher.HexDigest();
}

namespace {

// The codes as the checkpoint stores them: the bytes themselves, or two to a
// byte for bits <= 4, paired a piece at a time while the file is written.
StreamedTensor StoredCodes(std::string name, const QuantizedWeight& w) {
  const std::vector<uint8_t>& codes = w.codes;
  const int per_byte = CodesPerByte(w.bits);
  const uint64_t nbytes = (codes.size() + per_byte - 1) / per_byte;
  return {std::move(name), DType::kU8, {static_cast<int64_t>(nbytes)}, nbytes,
          [&codes, per_byte](const ByteSink& sink) {
            if (per_byte == 1) return sink(std::as_bytes(std::span<const uint8_t>(codes)));
            constexpr size_t kPiece = size_t{4} << 20;  // codes, even
            std::vector<uint8_t> piece(std::min(kPiece, codes.size()) / 2 + 1);
            for (size_t begin = 0; begin < codes.size(); begin += kPiece) {
              const size_t n = std::min(kPiece, codes.size() - begin);
              PackCodePairs(codes.data() + begin, n, piece.data());
              SR_RETURN_IF_ERROR(sink(std::as_bytes(std::span<const uint8_t>(piece.data(), (n + 1) / 2))));
            }
            return absl::OkStatus();
          }};
}

// The tensors file of WriteLayerCheckpoint; its size and hash through `bytes`
// and `hasher`, the info file's tensor entries through `entries`.
absl::Status WriteLayerTensors(const fs::path& partial, const PersistedLayer& layer, json* entries_out,
                               StableHasher* hasher, uint64_t* bytes_out) {
  std::vector<TensorToWrite> in_memory;
  std::vector<StreamedTensor> tensors;
  json entries = json::array();
  for (const CompressedTensorEntry& e : layer.tensors) {
    json entry = {{"name", e.name}, {"shape", e.shape}, {"sparsity", e.sparsity}, {"two_four", e.two_four}};
    std::string values = e.values.empty() ? "none" : "stored";
    if (e.quantized.has_value()) {
      const QuantizedWeight& w = *e.quantized;
      const std::vector<int64_t> gr = {w.num_groups, w.rows};
      const int per_byte = CodesPerByte(w.bits);
      if (per_byte == 0 || w.codes.size() != static_cast<size_t>(w.rows) * w.cols) {
        return absl::InvalidArgumentError(absl::StrCat("layer checkpoint: tensor ", e.name, ": ", w.bits,
                                                       "-bit codes are not kept (8 bits at most)"));
      }
      tensors.push_back(StoredCodes(CodesName(e.name), w));
      in_memory.push_back({ScalesName(e.name), DType::kF32, gr, Bytes(w.scales)});
      in_memory.push_back({ZerosName(e.name), DType::kI32, gr, Bytes(w.zeros)});
      in_memory.push_back({GIdxName(e.name), DType::kI32, {w.cols}, Bytes(w.g_idx)});
      entry["quantized"] = {{"rows", w.rows},         {"cols", w.cols},     {"bits", w.bits},
                            {"group_size", w.group_size}, {"sym", w.sym},   {"act_order", w.act_order},
                            {"num_groups", w.num_groups}, {"codes_per_byte", per_byte}};
      // The compressed weight is normally exactly its dequantized codes: then
      // storing the codes alone keeps the checkpoint near the packed size.
      if (IsDequantized(w, e.values)) values = "dequantized";
    }
    if (values == "stored") in_memory.push_back({e.name, DType::kF32, e.shape, Bytes(e.values)});
    entry["values"] = values;
    entries.push_back(std::move(entry));
  }
  for (StreamedTensor& t : StreamFromMemory(in_memory)) tensors.push_back(std::move(t));
  *entries_out = std::move(entries);
  // The file is hashed as it is written rather than read back.
  return WriteSafetensorsStreamed(TensorsPath(partial, layer.layer), tensors,
                                  {{"format", "shrinkray-layer-checkpoint"}},
                                  [&](std::span<const std::byte> piece) {
                                    hasher->Update(piece);
                                    *bytes_out += piece.size();
                                    return absl::OkStatus();
                                  });
}

}  // namespace

absl::Status WriteLayerCheckpoint(const fs::path& partial, const PersistedLayer& layer,
                                  const std::function<absl::Status()>& alongside) {
  absl::Status beside;
  std::thread helper;
  if (alongside) helper = std::thread([&] { beside = alongside(); });
  json entries;
  StableHasher hasher;
  uint64_t bytes = 0;
  const absl::Status written = WriteLayerTensors(partial, layer, &entries, &hasher, &bytes);
  if (helper.joinable()) helper.join();
  SR_RETURN_IF_ERROR(beside);
  SR_RETURN_IF_ERROR(written);

  json matrices = json::array();
  for (const MatrixReport& m : layer.matrices) matrices.push_back(MatrixReportToRecord(m));
  const json info = {{"version", kLayerCheckpointVersion},
                     {"layer", layer.layer},
                     {"seconds", layer.seconds},
                     {"file_bytes", bytes},
                     {"file_hash", hasher.HexDigest()},
                     {"tensors", std::move(entries)},
                     {"matrices", std::move(matrices)}};
  // Last: the layer is done once this file exists.
  SR_RETURN_IF_ERROR(WriteTextFile(InfoPath(partial, layer.layer), info.dump() + "\n"));
  SyncDirectory(LayersDir(partial));
  return absl::OkStatus();
}

absl::Status VerifyLayerCheckpoint(const fs::path& partial, int layer) {
  SR_ASSIGN_OR_RETURN(json info, ReadInfo(partial, layer));
  const fs::path path = TensorsPath(partial, layer);
  SR_RETURN_IF_ERROR(CheckSize(path, info));
  StableHasher hasher;
  SR_RETURN_IF_ERROR(HashFile(path, &hasher, nullptr));
  if (hasher.HexDigest() != info.at("file_hash").get<std::string>()) {
    return absl::DataLossError(absl::StrCat(path.string(), " does not match its hash"));
  }
  return absl::OkStatus();
}

absl::StatusOr<PersistedLayer> ReadLayerCheckpoint(const fs::path& partial, int layer) {
  SR_ASSIGN_OR_RETURN(json info, ReadInfo(partial, layer));
  const fs::path path = TensorsPath(partial, layer);
  SR_RETURN_IF_ERROR(CheckSize(path, info));
  SR_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  auto bad = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat(path.string(), ": ", what));
  };
  // A tensor of the file with exactly this dtype and element count.
  auto find = [&](const std::string& name, DType dtype, int64_t numel) -> absl::StatusOr<const TensorInfo*> {
    const TensorInfo* t = file->Find(name);
    if (t == nullptr || t->dtype != dtype || t->numel() != numel) {
      return bad(absl::StrCat("tensor ", name, " is missing or has another dtype or size"));
    }
    return t;
  };
  PersistedLayer out;
  out.layer = layer;
  try {
    out.seconds = JsonNumberOrNaN(info, "seconds");
    for (const json& entry : info.at("tensors")) {
      CompressedTensorEntry e;
      e.name = entry.at("name").get<std::string>();
      e.shape = entry.at("shape").get<std::vector<int64_t>>();
      e.sparsity = JsonNumberOrNaN(entry, "sparsity");
      e.two_four = entry.at("two_four").get<bool>();
      int64_t numel = 1;
      for (int64_t d : e.shape) numel *= d;
      if (entry.contains("quantized")) {
        const json& q = entry.at("quantized");
        QuantizedWeight w;
        w.rows = q.at("rows").get<int>();
        w.cols = q.at("cols").get<int>();
        w.bits = q.at("bits").get<int>();
        w.group_size = q.at("group_size").get<int>();
        w.sym = q.at("sym").get<bool>();
        w.act_order = q.at("act_order").get<bool>();
        w.num_groups = q.at("num_groups").get<int>();
        const int64_t rc = static_cast<int64_t>(w.rows) * w.cols, gr = static_cast<int64_t>(w.num_groups) * w.rows;
        const int per_byte = q.at("codes_per_byte").get<int>();
        if (per_byte == 0 || per_byte != CodesPerByte(w.bits)) {
          return bad(absl::StrCat("tensor ", e.name, ": ", per_byte, " codes per byte for ", w.bits, " bits"));
        }
        SR_ASSIGN_OR_RETURN(const TensorInfo* codes,
                            find(CodesName(e.name), DType::kU8, (rc + per_byte - 1) / per_byte));
        w.codes.resize(static_cast<size_t>(rc));
        const auto* p = reinterpret_cast<const uint8_t*>(codes->data);
        if (per_byte == 2) {
          UnpackCodePairs(p, static_cast<size_t>(rc), w.codes.data());
        } else {
          std::memcpy(w.codes.data(), p, static_cast<size_t>(rc));
        }
        SR_ASSIGN_OR_RETURN(const TensorInfo* scales, find(ScalesName(e.name), DType::kF32, gr));
        w.scales.resize(static_cast<size_t>(gr));
        std::memcpy(w.scales.data(), scales->data, scales->nbytes);
        SR_ASSIGN_OR_RETURN(const TensorInfo* zeros, find(ZerosName(e.name), DType::kI32, gr));
        w.zeros.resize(static_cast<size_t>(gr));
        std::memcpy(w.zeros.data(), zeros->data, zeros->nbytes);
        SR_ASSIGN_OR_RETURN(const TensorInfo* g_idx, find(GIdxName(e.name), DType::kI32, w.cols));
        w.g_idx.resize(static_cast<size_t>(w.cols));
        std::memcpy(w.g_idx.data(), g_idx->data, g_idx->nbytes);
        SR_RETURN_IF_ERROR(ValidateQuantizedWeight(w, e.name));
        e.quantized = std::move(w);
      }
      const std::string values = entry.at("values").get<std::string>();
      if (values == "stored") {
        SR_ASSIGN_OR_RETURN(const TensorInfo* t, find(e.name, DType::kF32, numel));
        e.values.resize(static_cast<size_t>(numel));
        std::memcpy(e.values.data(), t->data, t->nbytes);
      } else if (values == "dequantized" && e.quantized.has_value() &&
                 static_cast<int64_t>(e.quantized->codes.size()) == numel) {
        e.values = DequantizeAll(*e.quantized);
      } else if (values != "none") {
        return bad(absl::StrCat("tensor ", e.name, ": unknown values '", values, "'"));
      }
      out.tensors.push_back(std::move(e));
    }
    for (const json& m : info.at("matrices")) out.matrices.push_back(MatrixReportFromRecord(m));
  } catch (const json::exception& e) {
    return bad(absl::StrCat("malformed ", InfoPath(partial, layer).filename().string(), ": ", e.what()));
  }
  return out;
}

absl::StatusOr<ResumePoint> PrepareLayerCheckpoint(const fs::path& partial, const json& fingerprint,
                                                   int num_layers, bool resume) {
  ResumePoint point;
  std::error_code ec;
  if (!fs::exists(partial, ec)) return point;
  auto discard = [&](const std::string& why) -> absl::StatusOr<ResumePoint> {
    fs::remove_all(partial, ec);
    if (ec) return absl::InternalError(absl::StrCat("remove ", partial.string(), ": ", ec.message()));
    point.note = absl::StrCat("discarded ", partial.string(), " (", why, "); starting at layer 1/", num_layers);
    return point;
  };
  if (!resume) return discard("resume is off");
  const fs::path job_path = partial / kJobFile;
  json stored;
  if (fs::exists(job_path, ec)) {
    std::ifstream in(job_path);
    stored = json::parse(in, nullptr, /*allow_exceptions=*/false);
  }
  if (stored.is_null()) return discard(absl::StrCat("no readable ", kJobFile, ": not a resumable run's"));
  // Compared as read back from text, so that e.g. integer kinds agree.
  const json expected = json::parse(fingerprint.dump());
  if (stored != expected) {
    return discard(absl::StrCat("another job's: ", DifferingKeys(stored, expected), " changed"));
  }

  std::string stop;
  while (point.first_layer < num_layers) {
    absl::Status status = VerifyLayerCheckpoint(partial, point.first_layer);
    if (!status.ok()) {
      if (status.code() != absl::StatusCode::kNotFound) stop = absl::StrCat("; ", status.message());
      break;
    }
    ++point.first_layer;
  }
  // Everything in layers/ but the intact prefix: later (orphaned) layers, a
  // damaged one, temporary files of an interrupted write.
  std::vector<fs::path> doomed;
  std::vector<std::string> kept;
  for (int l = 0; l < point.first_layer; ++l) {
    kept.push_back(Stem(l) + ".json");
    kept.push_back(Stem(l) + ".safetensors");
  }
  for (const auto& item : fs::directory_iterator(LayersDir(partial), ec)) {
    const std::string name = item.path().filename().string();
    if (std::find(kept.begin(), kept.end(), name) == kept.end()) doomed.push_back(item.path());
  }
  for (const fs::path& path : doomed) {
    fs::remove_all(path, ec);
    if (ec) return absl::InternalError(absl::StrCat("remove ", path.string(), ": ", ec.message()));
  }
  if (point.first_layer == 0) {
    point.note = absl::StrCat(partial.string(), " holds no finished layer", stop, "; starting at layer 1/",
                              num_layers);
  } else {
    point.note = absl::StrCat("resuming at layer ", point.first_layer + 1, "/", num_layers, ": layers 1-",
                              point.first_layer, " are in ", partial.string(), stop);
  }
  return point;
}

absl::Status StartLayerCheckpoint(const fs::path& partial, const json& fingerprint) {
  std::error_code ec;
  fs::create_directories(LayersDir(partial), ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", LayersDir(partial).string(), ": ", ec.message()));
  SR_RETURN_IF_ERROR(WriteTextFile(partial / kJobFile, fingerprint.dump(2) + "\n"));
  SyncDirectory(partial);
  return absl::OkStatus();
}

}  // namespace shrinkray
