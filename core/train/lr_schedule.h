// Learning rate: linear warmup to max_lr, then cosine decay to min_lr.
//   step < warmup:           max_lr * (step + 1) / warmup
//   warmup <= step < total:  min_lr + (max_lr - min_lr) * (1 + cos(pi * p)) / 2,
//                            p = (step - warmup) / (total - warmup)
//   step >= total:           min_lr
// Steps are 0-based optimizer steps (micro-batches do not count).
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"

namespace shrinkray::train {

struct LrScheduleOptions {
  double max_lr = 3e-4;
  double min_lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
};

class LrSchedule {
 public:
  // InvalidArgument naming the field: max_lr <= 0, min_lr outside [0, max_lr],
  // warmup_steps < 0, total_steps <= warmup_steps.
  static absl::StatusOr<LrSchedule> Create(const LrScheduleOptions& options);
  double At(int64_t step) const;
  const LrScheduleOptions& options() const { return options_; }

 private:
  explicit LrSchedule(const LrScheduleOptions& options) : options_(options) {}
  LrScheduleOptions options_;
};

}  // namespace shrinkray::train
