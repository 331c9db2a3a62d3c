// MakeDistillRunner: a device's runner through its factory, else the CPU
// runner (DistillTrainer behind the DistillRunner interface), and
// CheckCudaDistillOptions, in shrinkray_core in every build. Core never names
// the CUDA runner itself: programs that choose a device inject its factory
// (MakeDistillRunnerFactory, core/pipeline/device_factories.h), so programs
// that never train on a GPU (the coordinator, the unit tests) link core alone.
#include "core/distill/distill_device.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace shrinkray::distill {

namespace {

class CpuDistillRunner final : public DistillRunner {
 public:
  explicit CpuDistillRunner(std::unique_ptr<DistillTrainer> trainer, int64_t total_steps)
      : trainer_(std::move(trainer)), total_steps_(total_steps) {}

  std::string device() const override { return "cpu"; }
  absl::StatusOr<StepMetrics> Step() override { return trainer_->Step(); }
  int64_t step() const override { return trainer_->step(); }
  int64_t total_steps() const override { return total_steps_; }
  const std::string& resume_note() const override { return trainer_->resume_note(); }
  const std::string& fingerprint() const override { return trainer_->fingerprint(); }
  absl::Status SaveStudent(const std::filesystem::path& out_dir,
                           const std::filesystem::path& tokenizer_dir, bool overwrite) override {
    return trainer_->SaveStudent(out_dir, tokenizer_dir, overwrite);
  }

 private:
  std::unique_ptr<DistillTrainer> trainer_;
  int64_t total_steps_;
};

}  // namespace

absl::Status DistillRunner::Run(const MetricsCallback& on_step) {
  while (step() < total_steps()) {
    SR_ASSIGN_OR_RETURN(const StepMetrics m, Step());
    if (on_step) on_step(m);
  }
  return absl::OkStatus();
}

absl::Status CheckCudaDistillOptions(const DistillTrainerOptions& o) {
  if (o.teacher_mode != TeacherMode::kOnlineLogits) {
    return absl::InvalidArgumentError(
        o.teacher_mode == TeacherMode::kCache
            ? "teacher_cache: device cuda distils from the online teacher's full logits only (no "
              "teacher cache)"
            : "top_k: device cuda distils from the online teacher's full logits only (no top-k)");
  }
  if (o.loss.divergence != train::Divergence::kForwardKL) {
    return absl::InvalidArgumentError(
        "divergence: device cuda implements the forward KL loss only (loss kl)");
  }
  if (o.comm != nullptr && o.comm->size() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("comm: device cuda distils on one rank, got ", o.comm->size()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DistillRunner>> MakeDistillRunner(
    const DistillRunnerFactory& runners, const DistillTrainerOptions& options, const LlamaModel& teacher,
    const TrainData& data, train::ParameterStore student) {
  if (runners) return runners(options, teacher, data, std::move(student));
  SR_ASSIGN_OR_RETURN(std::unique_ptr<DistillTrainer> trainer,
                      DistillTrainer::Create(options, teacher, data, std::move(student)));
  return std::unique_ptr<DistillRunner>(new CpuDistillRunner(std::move(trainer), options.steps));
}

}  // namespace shrinkray::distill
