// The teacher-forward stage of distillation and the cache it leaves: each rank
// runs the teacher over its contiguous share of the training windows and
// writes the top-k of log softmax(z_T / T) per position (int32 ids, fp16
// log-probs) into one safetensors shard; rank 0 then writes manifest.json,
// which says what the cache was made from (teacher and data fingerprints,
// seqlen, windows, vocab, k, T) so that a trainer never reads a cache made
// for another teacher, other data or other k / T. Training from the cache
// then needs no teacher forward at all.
//
//   DIR/manifest.json                     written last: a cache without it is incomplete
//   DIR/shard-00000-of-00002.safetensors  "windows" I32 [n], "ids" I32 [n, seqlen, k],
//                                         "log_probs" F16 [n, seqlen, k]
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/comm/communicator.h"
#include "core/distill/train_data.h"
#include "core/io/safetensors.h"
#include "core/model/llama.h"

namespace shrinkray::distill {

// Identifies a teacher cheaply (as HashModelFolder does a folder): its config,
// every parameter's name and shape, and up to 4096 evenly spaced values of
// each; 16 hex digits.
absl::StatusOr<std::string> TeacherFingerprint(const LlamaModel& teacher);

// What a cache was made from; a reader must be used with an equal one.
struct TeacherCacheKey {
  std::string teacher;  // TeacherFingerprint
  std::string data;     // TrainData::Fingerprint
  int seqlen = 0;
  int64_t num_windows = 0;
  int vocab_size = 0;
  int k = 0;
  double temperature = 1.0;
};

struct TeacherCacheOptions {
  int k = 32;                   // 0 < k <= vocab
  double temperature = 1.0;     // > 0: the loss temperature the cache serves
  int windows_per_forward = 4;  // teacher batch size
};

// Every rank of `comm` (null: one rank) calls it with the same arguments; it
// returns once the whole cache, manifest included, is in `dir`. Errors:
// InvalidArgument naming top_k / temperature / vocab_size (a token the
// teacher cannot read); a forward or write error of any rank fails the others
// at their next collective.
absl::Status WriteTeacherCache(const std::filesystem::path& dir, const LlamaModel& teacher,
                               const TrainData& data, const TeacherCacheOptions& options,
                               Communicator* comm);

class TeacherCache {
 public:
  // NotFound without manifest.json; DataLoss for a shard that is missing, of
  // the wrong shape, or windows not covered exactly once.
  static absl::StatusOr<std::unique_ptr<TeacherCache>> Open(const std::filesystem::path& dir);

  const TeacherCacheKey& key() const { return key_; }
  // FailedPrecondition naming the first field (teacher, data, seqlen,
  // num_windows, vocab_size, top_k, temperature) that differs from `expected`.
  absl::Status Validate(const TeacherCacheKey& expected) const;
  // Appends window `window`'s seqlen rows of k ids and log-probs (as float).
  absl::Status AppendRows(int64_t window, std::vector<int32_t>* ids,
                          std::vector<float>* log_probs) const;

 private:
  TeacherCache() = default;
  std::filesystem::path dir_;
  TeacherCacheKey key_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  // window -> (shard, row)
  std::vector<std::pair<int, int64_t>> where_;
};

}  // namespace shrinkray::distill
