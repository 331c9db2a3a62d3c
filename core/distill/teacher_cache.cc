#include "core/distill/teacher_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/io/text_file.h"
#include "core/model/synthetic.h"
#include "core/pipeline/layer_checkpoint.h"
#include "core/tensor/convert.h"
#include "core/train/distill_loss.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace shrinkray::distill {
namespace {

constexpr const char* kFormat = "shrinkray-teacher-topk";
constexpr int kVersion = 1;
constexpr int kSampledValues = 4096;

std::string ShardName(int rank, int size) {
  return absl::StrFormat("shard-%05d-of-%05d.safetensors", rank, size);
}

template <typename T>
std::span<const std::byte> Bytes(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

}  // namespace

absl::StatusOr<std::string> TeacherFingerprint(const LlamaModel& teacher) {
  StableHasher hasher;
  hasher.Update(ModelConfigToJson(teacher.config()).dump());
  for (const LlamaModel::NamedParameter& p : teacher.Parameters()) {
    std::string shape;
    for (const int64_t d : p.shape) absl::StrAppend(&shape, d, ",");
    hasher.Update(absl::StrCat(p.name, "[", shape, "];"));
    std::vector<float> read;
    const float* values = p.data;
    if (values == nullptr) {  // a streaming teacher's unloaded weights
      SR_ASSIGN_OR_RETURN(read, teacher.ReadParameter(p));
      values = read.data();
    }
    size_t numel = 1;
    for (const int64_t d : p.shape) numel *= static_cast<size_t>(d);
    const size_t stride = std::max<size_t>(1, numel / kSampledValues);
    for (size_t i = 0; i < numel; i += stride) {
      hasher.Update(std::as_bytes(std::span<const float>(values + i, 1)));
    }
  }
  return hasher.HexDigest();
}

absl::Status WriteTeacherCache(const std::filesystem::path& dir, const LlamaModel& teacher,
                               const TrainData& data, const TeacherCacheOptions& options,
                               Communicator* comm) {
  const int vocab = teacher.config().vocab_size;
  if (options.k <= 0 || options.k > vocab) {
    return absl::InvalidArgumentError(absl::StrCat("top_k ", options.k,
                                                   " must be in [1, vocab_size = ", vocab, "]"));
  }
  if (!(options.temperature > 0.0) || !std::isfinite(options.temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature ", options.temperature, " must be positive"));
  }
  if (options.windows_per_forward <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("windows_per_forward ",
                                                   options.windows_per_forward, " must be positive"));
  }
  if (data.max_token() >= vocab) {
    return absl::InvalidArgumentError(absl::StrCat("training data ", data.source(), " holds token ",
                                                   data.max_token(), ", outside the teacher's vocab_size ",
                                                   vocab));
  }
  const int rank = comm == nullptr ? 0 : comm->rank();
  const int size = comm == nullptr ? 1 : comm->size();
  const int S = data.seqlen(), k = options.k;
  const int64_t N = data.num_windows();
  // Contiguous shares, so a shard's windows are a range.
  const int64_t first = N * rank / size, last = N * (rank + 1) / size;
  const int64_t n = last - first;

  std::vector<int32_t> window_ids, ids;
  std::vector<uint16_t> log_probs;
  window_ids.reserve(n);
  ids.reserve(static_cast<size_t>(n) * S * k);
  log_probs.reserve(static_cast<size_t>(n) * S * k);
  std::vector<int32_t> tokens;
  std::vector<float> logits;
  for (int64_t w = first; w < last; w += options.windows_per_forward) {
    const int B = static_cast<int>(std::min<int64_t>(options.windows_per_forward, last - w));
    tokens.clear();
    for (int b = 0; b < B; ++b) {
      const auto window = data.Window(w + b);
      tokens.insert(tokens.end(), window.begin(), window.begin() + S);
      window_ids.push_back(static_cast<int32_t>(w + b));
    }
    const long rows = static_cast<long>(B) * S;
    logits.resize(static_cast<size_t>(rows) * vocab);
    SR_RETURN_IF_ERROR(teacher.Forward(tokens, B, S, logits));
    SR_ASSIGN_OR_RETURN(train::TopKTable<float> table,
                        train::TopKFromLogits<float>(logits, rows, vocab, k, options.temperature));
    ids.insert(ids.end(), table.ids.begin(), table.ids.end());
    for (const float lp : table.log_probs) log_probs.push_back(F32ToF16(lp));
  }

  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", dir.string(), ": ", ec.message()));
  // A stale manifest must not vouch for the shards being replaced.
  if (rank == 0) std::filesystem::remove(dir / "manifest.json", ec);
  if (comm != nullptr) SR_RETURN_IF_ERROR(comm->Barrier());
  const std::vector<TensorToWrite> tensors = {
      {"windows", DType::kI32, {n}, Bytes(window_ids)},
      {"ids", DType::kI32, {n, S, k}, Bytes(ids)},
      {"log_probs", DType::kF16, {n, S, k}, Bytes(log_probs)},
  };
  SR_RETURN_IF_ERROR(WriteSafetensors(dir / ShardName(rank, size), tensors));
  if (comm != nullptr) SR_RETURN_IF_ERROR(comm->Barrier());
  if (rank == 0) {
    SR_ASSIGN_OR_RETURN(const std::string teacher_fp, TeacherFingerprint(teacher));
    nlohmann::json shards = nlohmann::json::array();
    for (int r = 0; r < size; ++r) shards.push_back(ShardName(r, size));
    const nlohmann::json manifest = {
        {"format", kFormat},           {"version", kVersion},
        {"teacher", teacher_fp},       {"data", data.Fingerprint()},
        {"seqlen", S},                 {"num_windows", N},
        {"vocab_size", vocab},         {"k", k},
        {"temperature", options.temperature},
        {"log_prob_dtype", "F16"},     {"shards", shards},
    };
    SR_RETURN_IF_ERROR(WriteTextFile(dir / "manifest.json", manifest.dump(2) + "\n"));
  }
  if (comm != nullptr) SR_RETURN_IF_ERROR(comm->Barrier());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TeacherCache>> TeacherCache::Open(const std::filesystem::path& dir) {
  const std::filesystem::path manifest_path = dir / "manifest.json";
  if (!std::filesystem::exists(manifest_path)) {
    return absl::NotFoundError(absl::StrCat("teacher cache ", dir.string(),
                                            ": no manifest.json (missing or incomplete cache)"));
  }
  SR_ASSIGN_OR_RETURN(const std::string text, ReadTextFile(manifest_path));
  const nlohmann::json m = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat("teacher cache ", manifest_path.string(), ": ", what));
  };
  if (!m.is_object() || m.value("format", "") != kFormat) return bad("not a teacher top-k manifest");
  if (m.value("version", 0) != kVersion) return bad("unknown version");
  auto cache = std::unique_ptr<TeacherCache>(new TeacherCache());
  cache->dir_ = dir;
  TeacherCacheKey& key = cache->key_;
  try {
    key.teacher = m.at("teacher").get<std::string>();
    key.data = m.at("data").get<std::string>();
    key.seqlen = m.at("seqlen").get<int>();
    key.num_windows = m.at("num_windows").get<int64_t>();
    key.vocab_size = m.at("vocab_size").get<int>();
    key.k = m.at("k").get<int>();
    key.temperature = m.at("temperature").get<double>();
  } catch (const nlohmann::json::exception& e) {
    return bad(e.what());
  }
  if (key.seqlen <= 0 || key.num_windows <= 0 || key.k <= 0) return bad("non-positive sizes");
  cache->where_.assign(static_cast<size_t>(key.num_windows), {-1, 0});
  const nlohmann::json& shards = m.contains("shards") ? m["shards"] : nlohmann::json();
  if (!shards.is_array() || shards.empty()) return bad("no shards");
  for (const nlohmann::json& name : shards) {
    if (!name.is_string()) return bad("a shard name is not a string");
    const std::filesystem::path path = dir / name.get<std::string>();
    auto file = SafetensorsFile::Open(path);
    if (!file.ok()) return bad(absl::StrCat("shard ", path.string(), ": ", file.status().message()));
    const TensorInfo* windows = (*file)->Find("windows");
    const TensorInfo* ids = (*file)->Find("ids");
    const TensorInfo* lps = (*file)->Find("log_probs");
    if (windows == nullptr || ids == nullptr || lps == nullptr || windows->dtype != DType::kI32 ||
        windows->shape.size() != 1 || ids->dtype != DType::kI32 || lps->dtype != DType::kF16) {
      return bad(absl::StrCat("shard ", path.string(), " lacks windows/ids/log_probs of I32/I32/F16"));
    }
    const int64_t n = windows->shape[0];
    const std::vector<int64_t> rows_shape = {n, key.seqlen, key.k};
    if (ids->shape != rows_shape || lps->shape != rows_shape) {
      return bad(absl::StrCat("shard ", path.string(), ": ids/log_probs are not [", n, ", ",
                              key.seqlen, ", ", key.k, "]"));
    }
    const int shard = static_cast<int>(cache->shards_.size());
    for (int64_t r = 0; r < n; ++r) {
      int32_t w = 0;
      std::memcpy(&w, windows->data + r * 4, 4);
      if (w < 0 || w >= key.num_windows || cache->where_[w].first >= 0) {
        return bad(absl::StrCat("shard ", path.string(), ": window ", w,
                                " is out of range or repeated"));
      }
      cache->where_[w] = {shard, r};
    }
    cache->shards_.push_back(std::move(*file));
  }
  for (int64_t w = 0; w < key.num_windows; ++w) {
    if (cache->where_[w].first < 0) return bad(absl::StrCat("window ", w, " is in no shard"));
  }
  return cache;
}

absl::Status TeacherCache::Validate(const TeacherCacheKey& e) const {
  auto differs = [&](const std::string& field, const auto& cached, const auto& wanted) {
    return absl::FailedPreconditionError(
        absl::StrCat("teacher cache ", dir_.string(), " was made for another ", field, ": ",
                     field, " is ", cached, " in the cache, ", wanted, " here"));
  };
  if (key_.teacher != e.teacher) return differs("teacher", key_.teacher, e.teacher);
  if (key_.data != e.data) return differs("data", key_.data, e.data);
  if (key_.seqlen != e.seqlen) return differs("seqlen", key_.seqlen, e.seqlen);
  if (key_.num_windows != e.num_windows) return differs("num_windows", key_.num_windows, e.num_windows);
  if (key_.vocab_size != e.vocab_size) return differs("vocab_size", key_.vocab_size, e.vocab_size);
  if (key_.k != e.k) return differs("top_k", key_.k, e.k);
  if (key_.temperature != e.temperature) {
    return differs("temperature", key_.temperature, e.temperature);
  }
  return absl::OkStatus();
}

absl::Status TeacherCache::AppendRows(int64_t window, std::vector<int32_t>* ids,
                                      std::vector<float>* log_probs) const {
  if (window < 0 || window >= key_.num_windows) {
    return absl::OutOfRangeError(absl::StrCat("teacher cache ", dir_.string(), ": window ", window,
                                              " of ", key_.num_windows));
  }
  const auto [shard, row] = where_[window];
  const size_t count = static_cast<size_t>(key_.seqlen) * key_.k;
  const SafetensorsFile& file = *shards_[shard];
  // The mapping may be unaligned for these dtypes: copy element by element.
  const std::byte* id_bytes = file.Find("ids")->data + static_cast<size_t>(row) * count * 4;
  const std::byte* lp_bytes = file.Find("log_probs")->data + static_cast<size_t>(row) * count * 2;
  const size_t at = ids->size();
  ids->resize(at + count);
  std::memcpy(ids->data() + at, id_bytes, count * 4);
  log_probs->reserve(log_probs->size() + count);
  for (size_t i = 0; i < count; ++i) {
    uint16_t h = 0;
    std::memcpy(&h, lp_bytes + i * 2, 2);
    log_probs->push_back(F16ToF32(h));
  }
  return absl::OkStatus();
}

}  // namespace shrinkray::distill
