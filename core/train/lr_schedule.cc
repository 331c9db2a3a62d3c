#include "core/train/lr_schedule.h"

#include <cmath>
#include <numbers>

#include "absl/strings/str_cat.h"

namespace shrinkray::train {

absl::StatusOr<LrSchedule> LrSchedule::Create(const LrScheduleOptions& o) {
  if (!(o.max_lr > 0.0) || !std::isfinite(o.max_lr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("LrScheduleOptions.max_lr = ", o.max_lr, " must be > 0"));
  }
  if (!(o.min_lr >= 0.0 && o.min_lr <= o.max_lr)) {
    return absl::InvalidArgumentError(absl::StrCat("LrScheduleOptions.min_lr = ", o.min_lr,
                                                   " is outside [0, max_lr = ", o.max_lr, "]"));
  }
  if (o.warmup_steps < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("LrScheduleOptions.warmup_steps = ", o.warmup_steps, " must be >= 0"));
  }
  if (o.total_steps <= o.warmup_steps) {
    return absl::InvalidArgumentError(
        absl::StrCat("LrScheduleOptions.total_steps = ", o.total_steps,
                     " must exceed warmup_steps = ", o.warmup_steps));
  }
  return LrSchedule(o);
}

double LrSchedule::At(int64_t step) const {
  const LrScheduleOptions& o = options_;
  if (step < 0) step = 0;
  // (step + 1) so that the first step already moves the weights.
  if (step < o.warmup_steps) {
    return o.max_lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps);
  }
  if (step >= o.total_steps) return o.min_lr;
  const double p = static_cast<double>(step - o.warmup_steps) /
                   static_cast<double>(o.total_steps - o.warmup_steps);
  return o.min_lr + (o.max_lr - o.min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * p));
}

}  // namespace shrinkray::train
