// The tokenizer.json "model" of type BPE: vocabulary, ranked merges, byte
// fallback and unknown-token handling, and the per-word merge algorithm.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/tokenizer/json_util.h"

namespace shrinkray::tokenizer_internal {

class BpeModel {
 public:
  // Parses the "model" object (its "type" already checked to be BPE).
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const Json& model);

  // Appends the ids of one pre-tokenized word. Runs in O(n log n) for a word of
  // n characters: a min-heap of candidate merges over a linked list of symbols,
  // with stale heap entries skipped when popped. Thread-safe.
  absl::Status Tokenize(std::string_view word, std::vector<int32_t>* out) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr when `id` has no vocabulary entry.
  const std::string* IdToToken(int32_t id) const;
  // Largest id in the vocabulary, or -1 when it is empty.
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }
  std::optional<int32_t> unk_id() const { return unk_id_; }

 private:
  struct MergeResult {
    int32_t rank;
    int32_t new_id;
  };
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };

  BpeModel() = default;
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  const MergeResult* FindMerge(int32_t a, int32_t b) const {
    auto it = merges_.find(PairKey(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }
  // Splits `word` into its initial symbols (characters, byte-fallback bytes or unk).
  absl::Status InitialSymbols(std::string_view word, std::vector<Symbol>* symbols) const;
  absl::Status TokenizeUncached(std::string_view word, std::vector<int32_t>* out) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> id_present_;
  absl::flat_hash_map<uint64_t, MergeResult> merges_;
  std::optional<int32_t> unk_id_;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  std::array<int32_t, 256> byte_token_ids_{};  // ids of <0x00>..<0xFF>, -1 when absent
  std::array<int32_t, 128> ascii_ids_{};       // fast path for one-byte characters, -1 if none

  // Words seen before (byte-level text repeats words constantly).
  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace shrinkray::tokenizer_internal
