// Where a distillation run trains.
//   cpu:    DistillTrainer (distill_trainer.h), every option.
//   cuda:N: the same run on CUDA device N through LlamaCudaTrainer
//           (core/kernels/cuda/distill_cuda.cc): the teacher as a bf16
//           inference model, the student in bf16 mixed precision (fp32 master
//           weights, gradients and AdamW moments; bf16 activations), the fused
//           forward-KL + CE loss on the device. Same data order, global and
//           micro-batches, lr schedule, alpha / T, clipping, AdamW options,
//           seed and starting weights as the CPU run; the numbers differ by
//           bf16 rounding only. Limits: the online teacher with full logits and
//           forward KL (teacher_mode kOnlineLogits, Divergence::kForwardKL),
//           one rank; anything else is InvalidArgument naming the option
//           (CheckCudaDistillOptions, before any device work).
// A program picks the device at run time with MakeDistillRunnerFactory
// (core/pipeline/device_factories.h) and hands the factory to core (e.g.
// CompressionJob.distill_runners), as it does the layer executors.
// Both step alike: Step() / Run() report StepMetrics, SaveStudent writes the
// student exactly as DistillTrainer::SaveStudent does, and both write and
// resume the same checkpoints (distill_checkpoint.h; the fingerprint leaves
// the device out), so a run stopped on one device goes on on the other.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/distill/distill_trainer.h"
#include "core/distill/train_data.h"
#include "core/model/llama.h"
#include "core/train/parameter_store.h"

namespace shrinkray::distill {

class DistillRunner {
 public:
  virtual ~DistillRunner() = default;

  virtual std::string device() const = 0;  // "cpu", "cuda:N"
  // One optimizer step. FailedPrecondition after options.steps.
  virtual absl::StatusOr<StepMetrics> Step() = 0;
  virtual int64_t step() const = 0;         // steps taken (a resumed run counts its checkpoint's)
  virtual int64_t total_steps() const = 0;  // options.steps
  virtual const std::string& resume_note() const = 0;
  virtual const std::string& fingerprint() const = 0;
  // As DistillTrainer::SaveStudent (a device runner first copies its
  // parameters back to the host).
  virtual absl::Status SaveStudent(const std::filesystem::path& out_dir,
                                   const std::filesystem::path& tokenizer_dir, bool overwrite) = 0;

  // Steps until total_steps(), calling `on_step` (when set) after each.
  absl::Status Run(const MetricsCallback& on_step = {});
};

// What the CUDA runner does not do, decided from the options alone (no
// device needed; every build): InvalidArgument naming the option
// ("top_k: ...", "teacher_cache: ...", "divergence: ...", "comm: ..."), else
// OK. MakeCudaDistillRunner refuses the same, after the CPU trainer's checks.
absl::Status CheckCudaDistillOptions(const DistillTrainerOptions& options);

// The CUDA runner on device `device` (cuda:N): CUDA builds define it in
// shrinkray_cuda, builds without CUDA as Unimplemented naming the build
// (cuda_distill_stub.cc); FailedPrecondition when that device is not
// visible. Same arguments and lifetimes as DistillTrainer::Create; resumes
// from options.checkpoint_dir as DistillTrainer::Create does.
absl::StatusOr<std::unique_ptr<DistillRunner>> MakeCudaDistillRunner(
    int device, const DistillTrainerOptions& options, const LlamaModel& teacher, const TrainData& data,
    train::ParameterStore student);

// Makes a run's runner on a device (MakeDistillRunnerFactory binds one);
// empty means the CPU's DistillTrainer. A device runner refuses the options
// CheckCudaDistillOptions names and answers Unimplemented for a model it does
// not implement: a caller that may fall back checks the first and trains on
// the CPU after the second (core/pipeline/staged_job.cc).
using DistillRunnerFactory = std::function<absl::StatusOr<std::unique_ptr<DistillRunner>>(
    const DistillTrainerOptions& options, const LlamaModel& teacher, const TrainData& data,
    train::ParameterStore student)>;

// `runners`' runner, or the CPU's (DistillTrainer::Create) when it is empty.
absl::StatusOr<std::unique_ptr<DistillRunner>> MakeDistillRunner(
    const DistillRunnerFactory& runners, const DistillTrainerOptions& options, const LlamaModel& teacher,
    const TrainData& data, train::ParameterStore student);

}  // namespace shrinkray::distill
