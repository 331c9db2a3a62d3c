#include "core/calib/activation_norm_accumulator.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/comm/communicator.h"

namespace shrinkray {

absl::Status ActivationNormAccumulator::Add(const float* x, long rows, int samples) {
  if (samples <= 0 || rows < 0 || (rows > 0 && x == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ActivationNormAccumulator::Add: bad batch (rows ", rows, ", samples ", samples, ")"));
  }
  std::fill(sums_.begin(), sums_.end(), 0.0);
  for (long r = 0; r < rows; ++r) {
    const float* row = x + static_cast<size_t>(r) * dim_;
    for (int j = 0; j < dim_; ++j) sums_[j] += static_cast<double>(row[j]) * row[j];
  }
  const long n_old = n_;
  n_ += samples;
  const float shrink = static_cast<float>(static_cast<double>(n_old) / static_cast<double>(n_));
  for (int j = 0; j < dim_; ++j) {
    scaler_[j] = scaler_[j] * shrink + static_cast<float>(sums_[j] / static_cast<double>(n_));
  }
  return absl::OkStatus();
}

absl::Status ActivationNormAccumulator::Assign(std::vector<float> scaler, long n_samples) {
  if (scaler.size() != static_cast<size_t>(dim_) || n_samples < 0) {
    return absl::InvalidArgumentError(absl::StrCat("ActivationNormAccumulator::Assign: ", scaler.size(),
                                                   " values for dim ", dim_, " (", n_samples, " samples)"));
  }
  scaler_ = std::move(scaler);
  n_ = n_samples;
  return absl::OkStatus();
}

absl::Status ActivationNormAccumulator::MergeAcrossRanks(Communicator& comm) {
  std::vector<double> buffer(scaler_.size() + 1);
  for (size_t j = 0; j < scaler_.size(); ++j) buffer[j] = static_cast<double>(scaler_[j]) * static_cast<double>(n_);
  buffer.back() = static_cast<double>(n_);
  absl::Status s = comm.AllReduce(buffer.data(), buffer.size(), CommDType::kF64, ReduceOp::kSum);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("activation-norm all-reduce: ", s.message()));
  const double total = buffer.back();
  if (total <= 0) return absl::InternalError("activation-norm all-reduce: no samples on any rank");
  if (total == static_cast<double>(n_)) return absl::OkStatus();  // only ours: keep (see HessianAccumulator)
  for (size_t j = 0; j < scaler_.size(); ++j) scaler_[j] = static_cast<float>(buffer[j] / total);
  n_ = static_cast<long>(total);
  return absl::OkStatus();
}

}  // namespace shrinkray
