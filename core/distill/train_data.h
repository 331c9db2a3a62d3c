// Training windows for distillation and their order. A window is seqlen + 1
// consecutive token ids: the first seqlen are the model's input, the last
// seqlen the next-token labels. From text (encoded with one BOS, as
// calibration does) or a token stream the windows are the non-overlapping
// slices ids[w*seqlen, w*seqlen + seqlen + 1); from a pre-tokenized
// safetensors file ("input_ids", I32 [N, L], L > seqlen) each row's first
// seqlen + 1 ids.
//
// Order: epoch e visits every window once, in a Fisher-Yates permutation
// drawn from SplitMix64 seeded by (seed, e), so the order is a pure function
// of (seed, epoch, index): a checkpoint that stores the Position has stored
// the whole random state of the data. Global batches are consecutive runs of
// that order (crossing into the next epoch); rank r of R takes the r-th of R
// equal slices of each, cut into micro-batches.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tokenizer/tokenizer.h"

namespace shrinkray::distill {

// Where the next global batch starts: `index` into epoch `epoch`'s order.
struct Position {
  int64_t epoch = 0;
  int64_t index = 0;
  bool operator==(const Position&) const = default;
};

class TrainData {
 public:
  // InvalidArgument naming `source`: seqlen <= 0, fewer than seqlen + 1 ids,
  // a negative id.
  static absl::StatusOr<TrainData> FromIds(std::span<const int32_t> ids, int seqlen,
                                           uint64_t seed, std::string source);
  static absl::StatusOr<TrainData> FromText(const std::filesystem::path& path,
                                            const Tokenizer& tokenizer, int seqlen, uint64_t seed);
  static absl::StatusOr<TrainData> FromTokensFile(const std::filesystem::path& path, int seqlen,
                                                  uint64_t seed);
  // Independent windows laid end to end: `tokens` is [N, seqlen + 1] (e.g.
  // text sampled from the teacher, core/distill/teacher_samples.h, or those
  // windows after another TrainData's tokens()). InvalidArgument naming
  // `source`: seqlen <= 0, a size that is not a positive multiple of
  // seqlen + 1, a negative id.
  static absl::StatusOr<TrainData> FromWindows(std::vector<int32_t> tokens, int seqlen, uint64_t seed,
                                               std::string source);

  int seqlen() const { return seqlen_; }
  int64_t num_windows() const { return num_windows_; }
  uint64_t seed() const { return seed_; }
  const std::string& source() const { return source_; }
  int32_t max_token() const { return max_token_; }
  // Window w's seqlen + 1 ids.
  std::span<const int32_t> Window(int64_t w) const {
    return std::span<const int32_t>(tokens_).subspan(static_cast<size_t>(w) * (seqlen_ + 1),
                                                     seqlen_ + 1);
  }
  // Every window's ids, [num_windows, seqlen + 1].
  const std::vector<int32_t>& tokens() const { return tokens_; }
  // Epoch `epoch`'s permutation of [0, num_windows).
  std::vector<int64_t> EpochOrder(int64_t epoch) const;
  // The `count` windows of the global batch starting at `at`, in order, and
  // the position after them.
  std::vector<int64_t> GlobalBatch(Position at, int count, Position* next) const;
  // Identifies the windows (seqlen, count, every id): 16 hex digits.
  std::string Fingerprint() const;

 private:
  TrainData() = default;
  int seqlen_ = 0;
  int64_t num_windows_ = 0;
  uint64_t seed_ = 0;
  int32_t max_token_ = 0;
  std::string source_;
  std::vector<int32_t> tokens_;  // [num_windows, seqlen + 1]
};

// Rank `rank`'s slice [begin, end) of a global batch of `global` windows over
// `size` ranks; InvalidArgument unless size divides global (equal slices keep
// every rank's share of the mean loss the same).
absl::StatusOr<std::pair<int, int>> RankSlice(int global, int rank, int size);

// `windows` cut into consecutive micro-batches of `micro` (the last shorter).
std::vector<std::vector<int64_t>> MicroBatches(std::span<const int64_t> windows, int micro);

}  // namespace shrinkray::distill
