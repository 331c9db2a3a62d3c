#include "core/calib/hessian_accumulator.h"

#include <cblas.h>

#include <cmath>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/comm/communicator.h"
#include "core/util/status_macros.h"

namespace shrinkray {

HessianAccumulator::HessianAccumulator(int dim, HessianPrecision precision)
    : dim_(dim), precision_(precision) {}

void HessianAccumulator::Allocate() {
  const size_t n = static_cast<size_t>(dim_) * dim_;
  if (precision_ == HessianPrecision::kFloat64) {
    if (h64_.size() != n) h64_.assign(n, 0.0);
  } else if (h32_.size() != n) {
    h32_.assign(n, 0.0f);
  }
}

absl::Status HessianAccumulator::Add(const float* x, long rows, int samples) {
  if (samples <= 0 || rows < 0 || (rows > 0 && x == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("HessianAccumulator::Add: bad batch (rows ", rows, ", samples ", samples, ")"));
  }
  if (rows > INT32_MAX) {
    return absl::InvalidArgumentError("HessianAccumulator::Add: too many rows for one batch");
  }
  SR_RETURN_IF_ERROR(FetchToHost());
  device_.reset();  // the values change
  Allocate();
  const long n_old = n_;
  n_ += samples;
  symmetric_ = false;  // syrk updates the upper triangle only
  const size_t count = static_cast<size_t>(rows) * dim_;
  if (precision_ == HessianPrecision::kFloat64) {
    const double shrink = static_cast<double>(n_old) / static_cast<double>(n_);
    const double s = std::sqrt(2.0 / static_cast<double>(n_));
    scratch64_.resize(count);
    for (size_t i = 0; i < count; ++i) scratch64_[i] = s * static_cast<double>(x[i]);
    // H = shrink·H + xsᵀ·xs (x rows are tokens, so H += Xᵀ X).
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, dim_, static_cast<int>(rows), 1.0,
                scratch64_.data(), dim_, shrink, h64_.data(), dim_);
  } else {
    // The reference's float32 operations: scale H, scale x by sqrt(2/n), add.
    const float shrink = static_cast<float>(static_cast<double>(n_old) / static_cast<double>(n_));
    const float s = static_cast<float>(std::sqrt(2.0 / static_cast<double>(n_)));
    scratch32_.resize(count);
    for (size_t i = 0; i < count; ++i) scratch32_[i] = s * x[i];
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, dim_, static_cast<int>(rows), 1.0f,
                scratch32_.data(), dim_, shrink, h32_.data(), dim_);
  }
  return absl::OkStatus();
}

absl::Status HessianAccumulator::Assign(std::vector<float> h, long n_samples) {
  if (precision_ != HessianPrecision::kFloat32) {
    return absl::InvalidArgumentError("HessianAccumulator::Assign: float32 values for a float64 accumulator");
  }
  if (h.size() != static_cast<size_t>(dim_) * dim_ || n_samples < 0) {
    return absl::InvalidArgumentError(absl::StrCat("HessianAccumulator::Assign: ", h.size(), " values for a ", dim_,
                                                   "x", dim_, " H (", n_samples, " samples)"));
  }
  h32_ = std::move(h);
  n_ = n_samples;
  symmetric_ = true;
  device_.reset();
  return absl::OkStatus();
}

absl::Status HessianAccumulator::AssignOnDevice(std::shared_ptr<DeviceHessian> h, long n_samples) {
  if (precision_ != HessianPrecision::kFloat32) {
    return absl::InvalidArgumentError("HessianAccumulator::AssignOnDevice: float32 values for a float64 accumulator");
  }
  if (h == nullptr || h->dim() != dim_ || n_samples < 0) {
    return absl::InvalidArgumentError(absl::StrCat("HessianAccumulator::AssignOnDevice: a ",
                                                   h == nullptr ? 0 : h->dim(), "-wide device H for a ", dim_,
                                                   "-wide accumulator (", n_samples, " samples)"));
  }
  h32_ = {};  // released: the values are the device's now
  n_ = n_samples;
  symmetric_ = true;
  device_ = std::move(h);
  return absl::OkStatus();
}

absl::Status HessianAccumulator::FetchToHost() {
  if (!host_pending()) return absl::OkStatus();
  std::vector<float> h(static_cast<size_t>(dim_) * dim_);
  absl::Status s = device_->CopyToHost(absl::MakeSpan(h));
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("Hessian from the device: ", s.message()));
  h32_ = std::move(h);
  symmetric_ = true;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> HessianAccumulator::HessianF32() const {
  const size_t d = static_cast<size_t>(dim_);
  if (host_pending()) {
    std::vector<float> out(d * d);
    SR_RETURN_IF_ERROR(device_->CopyToHost(absl::MakeSpan(out)));
    return out;
  }
  // Whole already (the column-order mirror below costs a cache miss per value).
  if (symmetric_) return h32_;
  std::vector<float> out(d * d);
  if (h32_.empty() && h64_.empty()) return out;  // nothing accumulated
  for (size_t i = 0; i < d; ++i) {
    for (size_t j = i; j < d; ++j) {
      const float v = precision_ == HessianPrecision::kFloat64 ? static_cast<float>(h64_[i * d + j])
                                                               : h32_[i * d + j];
      out[i * d + j] = v;
      out[j * d + i] = v;
    }
  }
  return out;
}

absl::StatusOr<absl::Span<const float>> HessianAccumulator::SymmetricF32() {
  if (precision_ != HessianPrecision::kFloat32) return absl::Span<const float>();
  SR_RETURN_IF_ERROR(FetchToHost());
  Allocate();
  if (!symmetric_) {
    const size_t d = static_cast<size_t>(dim_);
    for (size_t i = 0; i < d; ++i) {
      for (size_t j = i + 1; j < d; ++j) h32_[j * d + i] = h32_[i * d + j];
    }
    symmetric_ = true;
  }
  return absl::Span<const float>(h32_);
}

absl::StatusOr<std::vector<double>> HessianAccumulator::HessianF64() const {
  const size_t d = static_cast<size_t>(dim_);
  if (host_pending()) {
    SR_ASSIGN_OR_RETURN(std::vector<float> h, HessianF32());
    return std::vector<double>(h.begin(), h.end());
  }
  std::vector<double> out(d * d);
  if (h32_.empty() && h64_.empty()) return out;  // nothing accumulated
  for (size_t i = 0; i < d; ++i) {
    for (size_t j = i; j < d; ++j) {
      const double v = precision_ == HessianPrecision::kFloat64 ? h64_[i * d + j]
                                                                : static_cast<double>(h32_[i * d + j]);
      out[i * d + j] = v;
      out[j * d + i] = v;
    }
  }
  return out;
}

absl::Status HessianAccumulator::MergeAcrossRanks(Communicator& comm) {
  if (host_pending()) {
    // Where the values are: no d² copy down, none back up for a solver on
    // that device, and no float64 sums staged up and back for a host-staged
    // NCCL all-reduce (at 8B shapes each of the four 1.02 GB a layer).
    if (Communicator* on_device = comm.OnDevice(device_->device())) {
      absl::StatusOr<std::optional<long>> merged = device_->MergeAcrossRanks(*on_device, n_);
      if (!merged.ok()) {
        return absl::Status(merged.status().code(), absl::StrCat("Hessian all-reduce: ", merged.status().message()));
      }
      if (merged->has_value()) {
        n_ = **merged;
        return absl::OkStatus();
      }
      // This holder cannot merge there; nothing was exchanged.
    }
  }
  SR_RETURN_IF_ERROR(FetchToHost());
  Allocate();  // a rank without windows adds zeros
  const size_t d = static_cast<size_t>(dim_);
  // Upper triangle (the valid part) as sums H·n, plus n, in one buffer
  // (HessianMergeCount's layout).
  std::vector<double> buffer;
  buffer.reserve(HessianMergeCount(d));
  for (size_t i = 0; i < d; ++i) {
    for (size_t j = i; j < d; ++j) {
      const double h = precision_ == HessianPrecision::kFloat64 ? h64_[i * d + j] : h32_[i * d + j];
      buffer.push_back(h * static_cast<double>(n_));
    }
  }
  buffer.push_back(static_cast<double>(n_));
  absl::Status s = comm.AllReduce(buffer.data(), buffer.size(), CommDType::kF64, ReduceOp::kSum);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("Hessian all-reduce: ", s.message()));
  const double total = buffer.back();
  if (total <= 0) return absl::InternalError("Hessian all-reduce: no samples on any rank");
  // Only this rank saw samples (a 1-rank job): the sums are ours, and keeping
  // H as it is avoids the H·n/n rounding, so a 1-rank job equals no job comm.
  if (total == static_cast<double>(n_)) return absl::OkStatus();
  size_t k = 0;
  for (size_t i = 0; i < d; ++i) {
    for (size_t j = i; j < d; ++j, ++k) {
      const double h = buffer[k] / total;
      if (precision_ == HessianPrecision::kFloat64) {
        h64_[i * d + j] = h;
      } else {
        h32_[i * d + j] = static_cast<float>(h);
      }
    }
  }
  n_ = static_cast<long>(total);
  symmetric_ = false;  // the lower triangle was not merged
  device_.reset();     // the values changed
  return absl::OkStatus();
}

}  // namespace shrinkray
