// distill::MakeCudaDistillRunner (core/distill/distill_device.h): the CPU
// DistillTrainer's run on one CUDA device (cuda:N) through LlamaCudaTrainer.
//
// Per optimizer step, as DistillTrainer::Step:
//   * the next global batch of windows from TrainData (same order, same
//     Position bookkeeping), cut into the same micro-batches;
//   * per micro-batch: tokens and next-token targets to the device, the
//     teacher's forward (Mode::kInference, bf16 logits), the student's forward,
//     the fused forward-KL + CE loss writing d loss / d logits with
//     inv_rows = 1 / (rows of the GLOBAL batch), so that the per-micro-batch
//     backward passes ADD up to the gradient of the global batch's mean (the
//     CPU weights each micro-batch's mean by its share of rows: the same);
//   * the global-norm clip and AdamW on the device at the schedule's lr for
//     the 0-based step (as the CPU's schedule_.At(optimizer_.step())).
// The metrics: per-row KL and CE copied back after every micro-batch and
// summed on the host in double; loss = alpha T^2 mean KL + (1 - alpha) mean CE
// as train::DistillLoss reports it.
//
// Every target is a token of the training data, which ValidateDistillOptions
// has checked to lie in [0, vocab): so every row is labelled and
// inv_labelled = inv_rows, as the CPU's per-micro-batch CE means weighted by
// row shares give.
//
// Checkpoints are DistillTrainer's (distill_checkpoint.h): the device's fp32
// master weights and AdamW moments are the ParameterStore's flat buffers, so
// they are copied to the host store and written as the CPU writes them, and
// a resumed checkpoint (from either device) is loaded back the same way; the
// step count and data position are the runner's.
#include <cuda_runtime_api.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "core/distill/distill_checkpoint.h"
#include "core/distill/distill_device.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/llama_cuda_trainer.h"
#include "core/train/adamw.h"
#include "core/train/llama_trainer_model.h"
#include "core/train/lr_schedule.h"
#include "core/util/compute_device.h"
#include "core/util/status_macros.h"

namespace shrinkray::distill {
namespace {

// A stream destroyed last (declared first in the runner, so that the
// trainers and buffers that use it go before it).
struct OwnedStream {
  cudaStream_t stream = nullptr;
  OwnedStream() = default;
  OwnedStream(const OwnedStream&) = delete;
  OwnedStream& operator=(const OwnedStream&) = delete;
  ~OwnedStream() { Reset(); }
  void Reset() {
    if (stream != nullptr) {
      (void)cudaStreamSynchronize(stream);
      (void)cudaStreamDestroy(stream);
    }
    stream = nullptr;
  }
};

class CudaDistillRunner final : public DistillRunner {
 public:
  static absl::StatusOr<std::unique_ptr<DistillRunner>> Create(
      int device, const DistillTrainerOptions& options, const LlamaModel& teacher, const TrainData& data,
      train::ParameterStore student);
  ~CudaDistillRunner() override {
    // The device state goes while its device is current: the thread that
    // drops the runner may have another one current.
    CudaDeviceGuard guard(device_);
    teacher_.reset();
    student_.reset();
    tokens_ = {};
    targets_ = {};
    kl_rows_ = {};
    ce_rows_ = {};
    stream_.Reset();
  }

  std::string device() const override { return ComputeDevice::Cuda(device_).ToString(); }
  absl::StatusOr<StepMetrics> Step() override;
  int64_t step() const override { return step_; }
  int64_t total_steps() const override { return options_.steps; }
  const std::string& resume_note() const override { return resume_note_; }
  const std::string& fingerprint() const override { return fingerprint_; }
  absl::Status SaveStudent(const std::filesystem::path& out_dir,
                           const std::filesystem::path& tokenizer_dir, bool overwrite) override;

 private:
  CudaDistillRunner(int device, const DistillTrainerOptions& options, const TrainData& data,
                    train::ParameterStore store, train::LrSchedule schedule)
      : device_(device), options_(options), data_(data), store_(std::move(store)), schedule_(std::move(schedule)) {}

  // Adds the micro-batch's gradient; adds its rows' KL and CE to sums.
  absl::Status MicroBatch(const std::vector<int64_t>& windows, float inv_rows, double sums[2]);
  // The device's weights and moments to store_, then to a checkpoint file.
  absl::Status WriteCheckpoint();

  OwnedStream stream_;  // first: destroyed last
  int device_;  // the CUDA ordinal; every entry point makes it current (callers' threads may differ)
  DistillTrainerOptions options_;
  const TrainData& data_;
  train::ParameterStore store_;  // the student's layout; a host copy for checkpoints and SaveStudent
  train::LrSchedule schedule_;
  CudaAdamWOptions adamw_;
  std::unique_ptr<LlamaCudaTrainer> teacher_, student_;
  DeviceBuffer<int32_t> tokens_, targets_;
  DeviceBuffer<float> kl_rows_, ce_rows_;
  std::vector<int32_t> tokens_h_, targets_h_;
  std::vector<float> kl_h_, ce_h_;
  int64_t step_ = 0;
  Position position_;
  std::string fingerprint_;
  std::string resume_note_;
};

absl::StatusOr<std::unique_ptr<DistillRunner>> CudaDistillRunner::Create(
    int device, const DistillTrainerOptions& options, const LlamaModel& teacher, const TrainData& data,
    train::ParameterStore student) {
  // The CPU trainer's checks first, so that a bad run fails the same way on
  // both devices; then what only the CPU does; then the device.
  SR_RETURN_IF_ERROR(train::ValidateTrainConfig(student.config()));
  SR_RETURN_IF_ERROR(ValidateDistillOptions(options, student.config(), teacher.config(), data));
  SR_RETURN_IF_ERROR(RankSlice(options.global_batch, 0, 1).status());
  SR_RETURN_IF_ERROR(CheckCudaDistillOptions(options));
  SR_RETURN_IF_ERROR(train::AdamW::Create(options.adamw).status());  // the CPU's option checks
  SR_ASSIGN_OR_RETURN(train::LrSchedule schedule, train::LrSchedule::Create(options.lr));
  SR_RETURN_IF_ERROR(UseCudaDevice(device));
  SR_ASSIGN_OR_RETURN(std::string fingerprint,
                      DistillRunFingerprint(options, student, teacher, data));

  std::unique_ptr<CudaDistillRunner> r(
      new CudaDistillRunner(device, options, data, std::move(student), std::move(schedule)));
  r->fingerprint_ = std::move(fingerprint);
  r->adamw_.beta1 = static_cast<float>(options.adamw.beta1);
  r->adamw_.beta2 = static_cast<float>(options.adamw.beta2);
  r->adamw_.eps = static_cast<float>(options.adamw.eps);
  r->adamw_.weight_decay = static_cast<float>(options.adamw.weight_decay);
  r->adamw_.decay_vectors = options.adamw.decay_vectors;
  r->adamw_.max_grad_norm = options.max_grad_norm > 0.0 ? static_cast<float>(options.max_grad_norm) : 0.0f;
  SR_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&r->stream_.stream, cudaStreamNonBlocking));
  cudaStream_t s = r->stream_.stream;

  const int micro = options.micro_batch, S = data.seqlen();
  const size_t rows = static_cast<size_t>(micro) * S;
  // The teacher's fp32 weights in the trainer's layout, then bf16 on the
  // device (the host copy is dropped at the end of this scope).
  {
    SR_ASSIGN_OR_RETURN(train::ParameterStore teacher_store,
                        train::ParameterStore::Create(teacher.config()));
    SR_RETURN_IF_ERROR(teacher_store.LoadFrom(teacher));
    SR_ASSIGN_OR_RETURN(r->teacher_, LlamaCudaTrainer::Create(teacher.config(),
                                                              LlamaCudaTrainer::Mode::kInference,
                                                              micro, S, s));
    SR_RETURN_IF_ERROR(r->teacher_->LoadParams(teacher_store.params()));
  }
  SR_ASSIGN_OR_RETURN(r->student_, LlamaCudaTrainer::Create(r->store_.config(),
                                                            LlamaCudaTrainer::Mode::kTrain, micro,
                                                            S, s));
  // As DistillTrainer::Resume: the newest checkpoint of this run (from
  // either device), else the starting weights with zero moments.
  if (options.resume && !options.checkpoint_dir.empty()) {
    const ResumedDistillCheckpoint resumed =
        ReadDistillCheckpoint(options.checkpoint_dir, r->fingerprint_, r->store_);
    r->step_ = resumed.step;
    r->position_ = resumed.position;
    r->resume_note_ = resumed.note;
  }
  SR_RETURN_IF_ERROR(r->student_->LoadParams(r->store_.params()));  // moments zeroed
  if (r->step_ > 0) {
    SR_RETURN_IF_ERROR(r->student_->LoadMoments(r->store_.first_moment(), r->store_.second_moment()));
  }
  SR_ASSIGN_OR_RETURN(r->tokens_, DeviceBuffer<int32_t>::Create(rows));
  SR_ASSIGN_OR_RETURN(r->targets_, DeviceBuffer<int32_t>::Create(rows));
  SR_ASSIGN_OR_RETURN(r->kl_rows_, DeviceBuffer<float>::Create(rows));
  SR_ASSIGN_OR_RETURN(r->ce_rows_, DeviceBuffer<float>::Create(rows));
  SR_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  return std::unique_ptr<DistillRunner>(std::move(r));
}

absl::Status CudaDistillRunner::MicroBatch(const std::vector<int64_t>& windows, float inv_rows,
                                           double sums[2]) {
  const int B = static_cast<int>(windows.size()), S = data_.seqlen();
  const size_t rows = static_cast<size_t>(B) * S;
  tokens_h_.clear();
  targets_h_.clear();
  for (const int64_t w : windows) {
    const auto window = data_.Window(w);
    tokens_h_.insert(tokens_h_.end(), window.begin(), window.begin() + S);
    targets_h_.insert(targets_h_.end(), window.begin() + 1, window.end());
  }
  cudaStream_t s = stream_.stream;
  SR_RETURN_IF_ERROR(tokens_.CopyFromHost(absl::MakeConstSpan(tokens_h_), s));
  SR_RETURN_IF_ERROR(targets_.CopyFromHost(absl::MakeConstSpan(targets_h_), s));
  // The teacher's logits stay valid until its next Forward.
  SR_ASSIGN_OR_RETURN(const __nv_bfloat16* teacher_logits, teacher_->Forward(tokens_.data(), B, S));
  SR_RETURN_IF_ERROR(student_->Forward(tokens_.data(), B, S).status());
  const train::DistillLossOptions& l = options_.loss;
  SR_RETURN_IF_ERROR(student_->Loss(teacher_logits, targets_.data(), static_cast<float>(l.alpha),
                                    static_cast<float>(l.temperature), inv_rows, inv_rows,
                                    kl_rows_.data(), ce_rows_.data()));
  SR_RETURN_IF_ERROR(student_->Backward());
  kl_h_.resize(rows);
  ce_h_.resize(rows);
  SR_RETURN_IF_ERROR(kl_rows_.CopyToHost(absl::MakeSpan(kl_h_), s));  // synchronizes
  SR_RETURN_IF_ERROR(ce_rows_.CopyToHost(absl::MakeSpan(ce_h_), s));
  for (size_t i = 0; i < rows; ++i) {
    sums[0] += kl_h_[i];
    sums[1] += ce_h_[i];
  }
  return absl::OkStatus();
}

absl::StatusOr<StepMetrics> CudaDistillRunner::Step() {
  if (step_ >= options_.steps) {
    return absl::FailedPreconditionError(
        absl::StrCat("the run is complete: ", step_, " of ", options_.steps, " steps"));
  }
  SR_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  const auto start = std::chrono::steady_clock::now();
  Position next;
  const std::vector<int64_t> global = data_.GlobalBatch(position_, options_.global_batch, &next);
  SR_RETURN_IF_ERROR(student_->ZeroGrads());
  const double global_rows = static_cast<double>(options_.global_batch) * data_.seqlen();
  const float inv_rows = static_cast<float>(1.0 / global_rows);
  double sums[2] = {0.0, 0.0};  // KL, CE summed over the global batch's rows
  for (const std::vector<int64_t>& micro : MicroBatches(global, options_.micro_batch)) {
    SR_RETURN_IF_ERROR(MicroBatch(micro, inv_rows, sums));
  }

  StepMetrics m;
  m.lr = schedule_.At(step_);
  SR_ASSIGN_OR_RETURN(const float norm,
                      student_->Step(adamw_, static_cast<float>(m.lr), static_cast<int>(step_ + 1)));
  m.grad_norm = norm;
  if (!std::isfinite(m.grad_norm)) {
    return absl::InternalError(absl::StrCat("distillation: gradient norm is ", m.grad_norm,
                                            " at step ", step_ + 1));
  }
  ++step_;
  position_ = next;
  const train::DistillLossOptions& l = options_.loss;
  m.step = step_;
  m.divergence = sums[0] / global_rows;
  m.cross_entropy = sums[1] / global_rows;
  m.loss = l.alpha * l.temperature * l.temperature * m.divergence + (1.0 - l.alpha) * m.cross_entropy;
  if (DistillCheckpointDue(step_, options_.checkpoint_every, options_.steps)) {
    SR_RETURN_IF_ERROR(WriteCheckpoint());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  m.tokens_per_s = seconds > 0.0 ? global_rows / seconds : 0.0;
  return m;
}

absl::Status CudaDistillRunner::WriteCheckpoint() {
  SR_RETURN_IF_ERROR(student_->DownloadParams(store_.params()));
  SR_RETURN_IF_ERROR(student_->DownloadMoments(store_.first_moment(), store_.second_moment()));
  return WriteDistillCheckpoint(options_.checkpoint_dir, fingerprint_, step_, position_,
                                options_.seed, store_);
}

absl::Status CudaDistillRunner::SaveStudent(const std::filesystem::path& out_dir,
                                            const std::filesystem::path& tokenizer_dir,
                                            bool overwrite) {
  SR_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  SR_RETURN_IF_ERROR(student_->DownloadParams(store_.params()));
  return WriteDistilledStudent(store_, step_, fingerprint_, out_dir, tokenizer_dir, overwrite);
}

}  // namespace

absl::StatusOr<std::unique_ptr<DistillRunner>> MakeCudaDistillRunner(
    int device, const DistillTrainerOptions& options, const LlamaModel& teacher, const TrainData& data,
    train::ParameterStore student) {
  return CudaDistillRunner::Create(device, options, teacher, data, std::move(student));
}

}  // namespace shrinkray::distill
