#include "core/distill/train_data.h"

#include <algorithm>
#include <climits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/calib/calibration_set.h"
#include "core/io/text_file.h"
#include "core/model/synthetic.h"
#include "core/pipeline/layer_checkpoint.h"
#include "core/util/status_macros.h"

namespace shrinkray::distill {

absl::StatusOr<TrainData> TrainData::FromIds(std::span<const int32_t> ids, int seqlen,
                                             uint64_t seed, std::string source) {
  if (seqlen <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("training data ", source, ": seqlen ", seqlen,
                                                   " must be positive"));
  }
  if (static_cast<int64_t>(ids.size()) < seqlen + 1) {
    return absl::InvalidArgumentError(absl::StrCat("training data ", source, " has ", ids.size(),
                                                   " tokens; need at least seqlen + 1 = ",
                                                   seqlen + 1));
  }
  TrainData data;
  data.seqlen_ = seqlen;
  data.seed_ = seed;
  data.source_ = std::move(source);
  // Non-overlapping inputs; each window's last label is the next window's first input.
  data.num_windows_ = (static_cast<int64_t>(ids.size()) - 1) / seqlen;
  data.tokens_.reserve(static_cast<size_t>(data.num_windows_) * (seqlen + 1));
  for (int64_t w = 0; w < data.num_windows_; ++w) {
    const auto window = ids.subspan(static_cast<size_t>(w) * seqlen, seqlen + 1);
    data.tokens_.insert(data.tokens_.end(), window.begin(), window.end());
  }
  for (size_t i = 0; i < data.tokens_.size(); ++i) {
    if (data.tokens_[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("training data ", data.source_, ": token ", i,
                                                     " is ", data.tokens_[i], " (negative)"));
    }
    data.max_token_ = std::max(data.max_token_, data.tokens_[i]);
  }
  return data;
}

absl::StatusOr<TrainData> TrainData::FromText(const std::filesystem::path& path,
                                              const Tokenizer& tokenizer, int seqlen,
                                              uint64_t seed) {
  SR_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  SR_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.Encode(text, /*add_special_tokens=*/true));
  return FromIds(ids, seqlen, seed, path.string());
}

absl::StatusOr<TrainData> TrainData::FromTokensFile(const std::filesystem::path& path, int seqlen,
                                                    uint64_t seed) {
  if (seqlen <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("training data ", path.string(), ": seqlen ",
                                                   seqlen, " must be positive"));
  }
  // The calibration reader validates the layout and takes the first seqlen + 1 columns.
  CalibrationOptions options;
  options.num_samples = INT_MAX;
  options.seqlen = seqlen + 1;
  SR_ASSIGN_OR_RETURN(CalibrationSet set, CalibrationSetFromTokens(path, options));
  if (set.seqlen != seqlen + 1) {
    return absl::InvalidArgumentError(absl::StrCat("training data ", path.string(), ": rows of ",
                                                   set.seqlen, " ids; need seqlen + 1 = ",
                                                   seqlen + 1));
  }
  return FromWindows(std::move(set.tokens), seqlen, seed, path.string());
}

absl::StatusOr<TrainData> TrainData::FromWindows(std::vector<int32_t> tokens, int seqlen, uint64_t seed,
                                                 std::string source) {
  if (seqlen <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("training data ", source, ": seqlen ", seqlen,
                                                   " must be positive"));
  }
  const size_t row = static_cast<size_t>(seqlen) + 1;
  if (tokens.empty() || tokens.size() % row != 0) {
    return absl::InvalidArgumentError(absl::StrCat("training data ", source, ": ", tokens.size(),
                                                   " ids are not a positive number of windows of seqlen + 1 = ",
                                                   row));
  }
  TrainData data;
  data.seqlen_ = seqlen;
  data.seed_ = seed;
  data.source_ = std::move(source);
  data.num_windows_ = static_cast<int64_t>(tokens.size() / row);
  data.tokens_ = std::move(tokens);
  for (size_t i = 0; i < data.tokens_.size(); ++i) {
    if (data.tokens_[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("training data ", data.source_, ": token ", i,
                                                     " is ", data.tokens_[i], " (negative)"));
    }
    data.max_token_ = std::max(data.max_token_, data.tokens_[i]);
  }
  return data;
}

std::vector<int64_t> TrainData::EpochOrder(int64_t epoch) const {
  std::vector<int64_t> order(static_cast<size_t>(num_windows_));
  for (int64_t i = 0; i < num_windows_; ++i) order[i] = i;
  // Seeds of neighbouring epochs are far apart after SplitMix64's first mix.
  SplitMix64 mix(seed_ ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(epoch + 1)));
  SplitMix64 rng(mix.Next());
  for (int64_t i = num_windows_ - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(UniformInclusive(static_cast<uint64_t>(i), rng));
    std::swap(order[i], order[j]);
  }
  return order;
}

std::vector<int64_t> TrainData::GlobalBatch(Position at, int count, Position* next) const {
  std::vector<int64_t> batch;
  batch.reserve(std::max(count, 0));
  std::vector<int64_t> order = EpochOrder(at.epoch);
  while (static_cast<int>(batch.size()) < count) {
    if (at.index >= num_windows_) {
      at = {at.epoch + 1, 0};
      order = EpochOrder(at.epoch);
    }
    batch.push_back(order[at.index++]);
  }
  if (at.index >= num_windows_) at = {at.epoch + 1, 0};
  if (next != nullptr) *next = at;
  return batch;
}

std::string TrainData::Fingerprint() const {
  StableHasher hasher;
  hasher.Update(absl::StrCat("seqlen=", seqlen_, ";windows=", num_windows_, ";"));
  hasher.Update(std::as_bytes(std::span<const int32_t>(tokens_)));
  return hasher.HexDigest();
}

absl::StatusOr<std::pair<int, int>> RankSlice(int global, int rank, int size) {
  if (size <= 0 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " of ", size, " is out of range"));
  }
  if (global <= 0 || global % size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("global_batch ", global,
                                                   " must be a positive multiple of the ", size,
                                                   " ranks"));
  }
  const int share = global / size;
  return std::make_pair(rank * share, (rank + 1) * share);
}

std::vector<std::vector<int64_t>> MicroBatches(std::span<const int64_t> windows, int micro) {
  std::vector<std::vector<int64_t>> out;
  const size_t step = static_cast<size_t>(std::max(micro, 1));
  for (size_t i = 0; i < windows.size(); i += step) {
    const size_t end = std::min(windows.size(), i + step);
    out.emplace_back(windows.begin() + i, windows.begin() + end);
  }
  return out;
}

}  // namespace shrinkray::distill
