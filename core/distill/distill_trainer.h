// Knowledge distillation of a student into a Llama-family model on the CPU:
// each optimizer step takes the next global batch of training windows, every
// rank computes the gradient of its slice (micro-batch by micro-batch, each
// weighted by its share of the global batch's tokens) of
//   alpha * T^2 * D(teacher_T, student_T) + (1 - alpha) * CE(student, labels)
// (core/train/distill_loss.h), the flat gradient buffer is summed over the
// ranks in buckets, so every rank holds the gradient of the whole global
// batch, then clipped and applied with AdamW on every rank alike. The
// teacher is a LlamaModel run beside the student (full logits or its top-k)
// or a top-k cache written beforehand (teacher_cache.h).
//
// Checkpoints: every `checkpoint_every` steps rank 0 writes
// checkpoint_dir/step-NNNNNNNN.safetensors (params, AdamW moments; metadata:
// step, data position, seed, the run's fingerprint) crash-safely and removes
// the older ones (distill_checkpoint.h: the CUDA runner of distill_device.h
// writes and resumes the same files). Create resumes from the newest one
// whose fingerprint matches, else starts over and says why in resume_note().
// The data order is a pure function of (seed, epoch), so the position is the
// whole random state.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/comm/communicator.h"
#include "core/distill/teacher_cache.h"
#include "core/distill/train_data.h"
#include "core/model/llama.h"
#include "core/train/adamw.h"
#include "core/train/distill_loss.h"
#include "core/train/llama_trainer_model.h"
#include "core/train/lr_schedule.h"
#include "core/train/parameter_store.h"

namespace shrinkray::distill {

enum class TeacherMode { kOnlineLogits, kOnlineTopK, kCache };

struct DistillTrainerOptions {
  int64_t steps = 100;     // optimizer steps of the whole run
  int global_batch = 8;    // windows per step over all ranks (a multiple of the ranks)
  int micro_batch = 2;     // windows per forward/backward on one rank
  train::LrScheduleOptions lr;
  train::AdamWOptions adamw;
  double max_grad_norm = 1.0;  // <= 0: no clipping
  train::DistillLossOptions loss;
  TeacherMode teacher_mode = TeacherMode::kOnlineLogits;
  int top_k = 32;  // kOnlineTopK and kCache
  train::TopKMode top_k_mode = train::TopKMode::kRenormalize;
  std::filesystem::path teacher_cache;  // kCache: the folder WriteTeacherCache made
  int64_t checkpoint_every = 0;         // 0: no checkpoints
  std::filesystem::path checkpoint_dir;
  bool resume = true;                   // load the newest matching checkpoint
  uint64_t seed = 0;                    // the data order's (TrainData's seed is not used)
  size_t bucket_floats = size_t{4} << 20;  // gradient all-reduce bucket
  Communicator* comm = nullptr;         // null: one rank
};

struct StepMetrics {
  int64_t step = 0;         // 1-based, the step just taken
  double loss = 0;          // mixed loss over the global batch, before the update
  double divergence = 0;    // mean D (no alpha, no T^2)
  double cross_entropy = 0;
  double lr = 0;
  double grad_norm = 0;     // before clipping
  double tokens_per_s = 0;  // global batch tokens / the step's wall time
};
using MetricsCallback = std::function<void(const StepMetrics&)>;

// What DistillTrainer::Create checks of a run (InvalidArgument naming the
// field, see Create), shared with the device trainers (distill_device.h).
absl::Status ValidateDistillOptions(const DistillTrainerOptions& options,
                                    const ModelConfig& student, const ModelConfig& teacher,
                                    const TrainData& data);

// The run's fingerprint (student config and initial weights, teacher, data,
// batch, lr, AdamW, clipping, loss, teacher mode, seed): what a checkpoint must
// match, and what SaveStudent records.
absl::StatusOr<std::string> DistillRunFingerprint(const DistillTrainerOptions& options,
                                                  const train::ParameterStore& student,
                                                  const LlamaModel& teacher,
                                                  const TrainData& data);

// DistillTrainer::SaveStudent for any store: `student` after `steps` steps of
// the run `fingerprint`, as a Hugging Face folder (F32, the tokenizer files of
// tokenizer_dir) that LlamaModel::Load reads.
absl::Status WriteDistilledStudent(const train::ParameterStore& student, int64_t steps,
                                   const std::string& fingerprint,
                                   const std::filesystem::path& out_dir,
                                   const std::filesystem::path& tokenizer_dir, bool overwrite);

class DistillTrainer {
 public:
  // `teacher` and `data` must outlive the trainer; `student` is the starting
  // point (overridden by a resumed checkpoint). InvalidArgument naming the
  // field: vocab_size differing between teacher and student, alpha outside
  // [0, 1], temperature <= 0, beta outside (0, 1) (JSD), top_k outside
  // [1, vocab_size], global_batch / micro_batch / steps / seqlen out of
  // range, a data token outside the vocabulary, checkpoint_every without
  // checkpoint_dir. A cache made for another teacher, data, k or T is
  // FailedPrecondition (TeacherCache::Validate).
  static absl::StatusOr<std::unique_ptr<DistillTrainer>> Create(const DistillTrainerOptions& options,
                                                                const LlamaModel& teacher,
                                                                const TrainData& data,
                                                                train::ParameterStore student);

  // One optimizer step (every rank calls it). FailedPrecondition after `steps`.
  absl::StatusOr<StepMetrics> Step();
  // Steps until options.steps, calling `on_step` (when set) after each.
  absl::Status Run(const MetricsCallback& on_step = {});

  // Writes the student as a Hugging Face folder (config.json,
  // model.safetensors in F32, the tokenizer files of `tokenizer_dir`) that
  // LlamaModel::Load reads. Call it on one rank.
  absl::Status SaveStudent(const std::filesystem::path& out_dir,
                           const std::filesystem::path& tokenizer_dir, bool overwrite) const;

  const train::ParameterStore& student() const { return store_; }
  int64_t step() const { return optimizer_.step(); }
  Position position() const { return position_; }
  // Why the run started where it did ("resumed from ... at step 3", "checkpoint
  // ... is for another run; starting over"); empty with no checkpoint.
  const std::string& resume_note() const { return resume_note_; }
  const std::string& fingerprint() const { return fingerprint_; }

 private:
  DistillTrainer(const DistillTrainerOptions& options, const LlamaModel& teacher,
                 const TrainData& data, train::ParameterStore store,
                 train::LlamaTrainerModel<float> model, train::AdamW optimizer,
                 train::LrSchedule schedule);
  absl::Status Resume();
  absl::Status WriteCheckpoint() const;
  // Adds this rank's micro-batch gradient; returns (loss, divergence, ce)
  // already weighted by the micro-batch's share of the global batch.
  absl::Status MicroBatch(const std::vector<int64_t>& windows, double weight, double sums[3]);
  absl::Status AllReduceGradients();

  DistillTrainerOptions options_;
  const LlamaModel& teacher_;
  const TrainData& data_;
  train::ParameterStore store_;
  train::LlamaTrainerModel<float> model_;
  train::AdamW optimizer_;
  train::LrSchedule schedule_;
  std::unique_ptr<Communicator> local_comm_;  // when options.comm is null
  Communicator* comm_ = nullptr;
  std::unique_ptr<TeacherCache> cache_;
  Position position_;
  std::string fingerprint_;
  std::string resume_note_;
  // Scratch reused across micro-batches.
  std::vector<int32_t> tokens_, labels_, topk_ids_;
  std::vector<float> logits_, teacher_logits_, dlogits_, topk_log_probs_;
};

}  // namespace shrinkray::distill
