// A distillation run's checkpoints, one format for every device
// (DistillTrainer on the CPU, the CUDA runner of distill_device.h):
// checkpoint_dir/step-NNNNNNNN.safetensors holding the flat fp32 buffers of
// the student's ParameterStore layout, "params", "exp_avg" and "exp_avg_sq"
// (the AdamW moments), and metadata format, fingerprint, step, epoch, index
// (the data Position after that step) and seed. Since the buffers share one
// layout and the fingerprint leaves the device out, a run may stop on one
// device and go on on the other.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "absl/status/status.h"
#include "core/distill/train_data.h"
#include "core/train/parameter_store.h"

namespace shrinkray::distill {

// Whether a run of `total` steps writes a checkpoint after `step`: every
// `every` steps (> 0) and after the last.
inline bool DistillCheckpointDue(int64_t step, int64_t every, int64_t total) {
  return every > 0 && (step % every == 0 || step == total);
}

// Writes dir/step-<step>.safetensors crash-safely (a temporary file renamed
// into place), then removes the older checkpoints of dir: the params and
// AdamW moments of `store` after `step` steps of the run `fingerprint`, the
// data at `position`, the data order's `seed`.
absl::Status WriteDistillCheckpoint(const std::filesystem::path& dir, const std::string& fingerprint,
                                    int64_t step, Position position, uint64_t seed,
                                    const train::ParameterStore& store);

struct ResumedDistillCheckpoint {
  int64_t step = 0;  // 0: nothing resumed (the store is untouched)
  Position position;
  // Why the run starts where it does ("resumed from ... at step 3", "checkpoint
  // ... is for another run (...); starting over"); empty when dir holds none.
  std::string note;
};

// Loads the newest checkpoint of dir whose fingerprint is `fingerprint` into
// the params and AdamW moments of `store`. Unreadable, foreign or damaged
// ones are skipped (said in the note) and leave the store as it was: a
// checkpoint is copied only once all of it has been checked.
ResumedDistillCheckpoint ReadDistillCheckpoint(const std::filesystem::path& dir,
                                               const std::string& fingerprint,
                                               train::ParameterStore& store);

}  // namespace shrinkray::distill
