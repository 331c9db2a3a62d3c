// MakeDistillRunner: the device by name, and the CPU runner (DistillTrainer
// behind the DistillRunner interface). Only the programs that choose a device
// at run time reference MakeCudaDistillRunner, which CUDA builds define in
// shrinkray_cuda; CUDA builds therefore compile this file into shrinkray_cuda
// too, for static link order (core/CMakeLists.txt), as
// core/pipeline/solver_backend.cc.
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

absl::StatusOr<std::unique_ptr<DistillRunner>> MakeDistillRunner(
    const std::string& device, const DistillTrainerOptions& options, const LlamaModel& teacher,
    const TrainData& data, train::ParameterStore student) {
  if (device == "cpu") {
    SR_ASSIGN_OR_RETURN(std::unique_ptr<DistillTrainer> trainer,
                        DistillTrainer::Create(options, teacher, data, std::move(student)));
    return std::unique_ptr<DistillRunner>(new CpuDistillRunner(std::move(trainer), options.steps));
  }
  if (device == "cuda") return MakeCudaDistillRunner(options, teacher, data, std::move(student));
  return absl::InvalidArgumentError(absl::StrCat("device must be cpu or cuda, got '", device, "'"));
}

}  // namespace shrinkray::distill
