#include "core/distill/distill_trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/distill/distill_checkpoint.h"
#include "core/io/model_writer.h"
#include "core/model/synthetic.h"
#include "core/pipeline/layer_checkpoint.h"
#include "core/train/grad_clip.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace shrinkray::distill {
namespace {

constexpr int kCheckpointVersion = 1;

// What must be equal for a checkpoint to continue this run. The rank count and
// micro-batch are left out: they change only the summation order.
std::string RunFingerprint(const DistillTrainerOptions& o, const train::ParameterStore& student,
                           const std::string& teacher_fp, const TrainData& data) {
  StableHasher params;
  params.Update(std::as_bytes(student.params()));
  const nlohmann::json j = {
      {"version", kCheckpointVersion},
      {"student_config", ModelConfigToJson(student.config())},
      {"student_init", params.HexDigest()},
      {"teacher", teacher_fp},
      {"data", data.Fingerprint()},
      {"global_batch", o.global_batch},
      {"lr", {o.lr.max_lr, o.lr.min_lr, o.lr.warmup_steps, o.lr.total_steps}},
      {"adamw", {o.adamw.beta1, o.adamw.beta2, o.adamw.eps, o.adamw.weight_decay, o.adamw.decay_vectors}},
      {"max_grad_norm", o.max_grad_norm},
      {"loss", {static_cast<int>(o.loss.divergence), o.loss.alpha, o.loss.temperature, o.loss.beta}},
      {"teacher_mode", static_cast<int>(o.teacher_mode)},
      {"top_k", o.teacher_mode == TeacherMode::kOnlineLogits ? 0 : o.top_k},
      {"top_k_mode", static_cast<int>(o.top_k_mode)},
      {"seed", o.seed},
  };
  StableHasher hasher;
  hasher.Update(j.dump());
  return hasher.HexDigest();
}

absl::Status BroadcastFloats(Communicator& comm, std::span<float> data, size_t bucket) {
  for (size_t at = 0; at < data.size(); at += bucket) {
    const size_t n = std::min(bucket, data.size() - at);
    SR_RETURN_IF_ERROR(comm.Broadcast(data.data() + at, n, CommDType::kF32, 0));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateDistillOptions(const DistillTrainerOptions& o, const ModelConfig& student,
                                    const ModelConfig& teacher, const TrainData& data) {
  auto invalid = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (teacher.vocab_size != student.vocab_size) {
    return invalid("vocab_size differs: the teacher has ", teacher.vocab_size,
                   ", the student ", student.vocab_size);
  }
  const int V = student.vocab_size;
  const train::DistillLossOptions& l = o.loss;
  if (!(l.alpha >= 0.0 && l.alpha <= 1.0)) return invalid("alpha ", l.alpha, " must be in [0, 1]");
  if (!(l.temperature > 0.0) || !std::isfinite(l.temperature)) {
    return invalid("temperature ", l.temperature, " must be positive");
  }
  if (l.divergence == train::Divergence::kJSD && !(l.beta > 0.0 && l.beta < 1.0)) {
    return invalid("beta ", l.beta, " must be in (0, 1) for JSD");
  }
  if (o.teacher_mode != TeacherMode::kOnlineLogits && (o.top_k <= 0 || o.top_k > V)) {
    return invalid("top_k ", o.top_k, " must be in [1, vocab_size = ", V, "]");
  }
  if (o.steps < 0) return invalid("steps ", o.steps, " must be >= 0");
  if (o.micro_batch <= 0) return invalid("micro_batch ", o.micro_batch, " must be positive");
  if (o.bucket_floats == 0) return invalid("bucket_floats must be positive");
  if (o.checkpoint_every < 0) return invalid("checkpoint_every ", o.checkpoint_every, " must be >= 0");
  if (o.checkpoint_every > 0 && o.checkpoint_dir.empty()) {
    return invalid("checkpoint_every ", o.checkpoint_every, " needs a checkpoint_dir");
  }
  if (o.teacher_mode == TeacherMode::kCache && o.teacher_cache.empty()) {
    return invalid("teacher_cache: the cache teacher mode needs the cache folder");
  }
  const int max_positions = std::min(student.max_position_embeddings, teacher.max_position_embeddings);
  if (data.seqlen() > max_positions) {
    return invalid("seqlen ", data.seqlen(), " exceeds max_position_embeddings ", max_positions);
  }
  if (data.max_token() >= V) {
    return invalid("training data ", data.source(), " holds token ", data.max_token(),
                   ", outside vocab_size ", V);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> DistillRunFingerprint(const DistillTrainerOptions& options,
                                                  const train::ParameterStore& student,
                                                  const LlamaModel& teacher,
                                                  const TrainData& data) {
  SR_ASSIGN_OR_RETURN(const std::string teacher_fp, TeacherFingerprint(teacher));
  return RunFingerprint(options, student, teacher_fp, data);
}

DistillTrainer::DistillTrainer(const DistillTrainerOptions& options, const LlamaModel& teacher,
                               const TrainData& data, train::ParameterStore store,
                               train::LlamaTrainerModel<float> model, train::AdamW optimizer,
                               train::LrSchedule schedule)
    : options_(options),
      teacher_(teacher),
      data_(data),
      store_(std::move(store)),
      model_(std::move(model)),
      optimizer_(std::move(optimizer)),
      schedule_(std::move(schedule)) {}

absl::StatusOr<std::unique_ptr<DistillTrainer>> DistillTrainer::Create(
    const DistillTrainerOptions& options, const LlamaModel& teacher, const TrainData& data,
    train::ParameterStore student) {
  SR_RETURN_IF_ERROR(train::ValidateTrainConfig(student.config()));
  SR_RETURN_IF_ERROR(ValidateDistillOptions(options, student.config(), teacher.config(), data));
  const int size = options.comm == nullptr ? 1 : options.comm->size();
  SR_RETURN_IF_ERROR(RankSlice(options.global_batch, 0, size).status());
  SR_ASSIGN_OR_RETURN(train::LlamaTrainerModel<float> model,
                      train::LlamaTrainerModel<float>::Create(student.config()));
  SR_ASSIGN_OR_RETURN(train::AdamW optimizer, train::AdamW::Create(options.adamw));
  SR_ASSIGN_OR_RETURN(train::LrSchedule schedule, train::LrSchedule::Create(options.lr));
  SR_ASSIGN_OR_RETURN(const std::string teacher_fp, TeacherFingerprint(teacher));
  const std::string fingerprint = RunFingerprint(options, student, teacher_fp, data);
  auto trainer = std::unique_ptr<DistillTrainer>(
      new DistillTrainer(options, teacher, data, std::move(student), std::move(model),
                         std::move(optimizer), std::move(schedule)));
  trainer->fingerprint_ = fingerprint;
  trainer->comm_ = options.comm;
  if (trainer->comm_ == nullptr) {
    trainer->local_comm_ = MakeLocalCommunicator();
    trainer->comm_ = trainer->local_comm_.get();
  }
  if (options.teacher_mode == TeacherMode::kCache) {
    SR_ASSIGN_OR_RETURN(trainer->cache_, TeacherCache::Open(options.teacher_cache));
    TeacherCacheKey key;
    key.teacher = teacher_fp;
    key.data = data.Fingerprint();
    key.seqlen = data.seqlen();
    key.num_windows = data.num_windows();
    key.vocab_size = teacher.config().vocab_size;
    key.k = options.top_k;
    key.temperature = options.loss.temperature;
    SR_RETURN_IF_ERROR(trainer->cache_->Validate(key));
  }
  SR_RETURN_IF_ERROR(trainer->Resume());
  return trainer;
}

absl::Status DistillTrainer::Resume() {
  // Rank 0 decides (it alone writes checkpoints), then every rank takes its
  // state: the ranks need not share a filesystem.
  int64_t header[3] = {0, 0, 0};  // step, epoch, index
  if (comm_->rank() == 0 && options_.resume && !options_.checkpoint_dir.empty()) {
    const ResumedDistillCheckpoint resumed =
        ReadDistillCheckpoint(options_.checkpoint_dir, fingerprint_, store_);
    header[0] = resumed.step;
    header[1] = resumed.position.epoch;
    header[2] = resumed.position.index;
    resume_note_ = resumed.note;
  }
  SR_RETURN_IF_ERROR(comm_->Broadcast(header, sizeof(header), CommDType::kU8, 0));
  // Rank 0's parameters on every rank, also when starting over: the ranks
  // then step in lockstep from identical states.
  SR_RETURN_IF_ERROR(BroadcastFloats(*comm_, store_.params(), options_.bucket_floats));
  if (header[0] > 0) {
    SR_RETURN_IF_ERROR(BroadcastFloats(*comm_, store_.first_moment(), options_.bucket_floats));
    SR_RETURN_IF_ERROR(BroadcastFloats(*comm_, store_.second_moment(), options_.bucket_floats));
  } else {
    std::fill(store_.first_moment().begin(), store_.first_moment().end(), 0.0f);
    std::fill(store_.second_moment().begin(), store_.second_moment().end(), 0.0f);
  }
  optimizer_.set_step(header[0]);
  position_ = {header[1], header[2]};
  return absl::OkStatus();
}

absl::Status DistillTrainer::WriteCheckpoint() const {
  return WriteDistillCheckpoint(options_.checkpoint_dir, fingerprint_, step(), position_,
                                options_.seed, store_);
}

absl::Status DistillTrainer::MicroBatch(const std::vector<int64_t>& windows, double weight,
                                        double sums[3]) {
  const int B = static_cast<int>(windows.size()), S = data_.seqlen();
  const int V = store_.config().vocab_size;
  const long rows = static_cast<long>(B) * S;
  tokens_.clear();
  labels_.clear();
  for (const int64_t w : windows) {
    const auto window = data_.Window(w);
    tokens_.insert(tokens_.end(), window.begin(), window.begin() + S);
    labels_.insert(labels_.end(), window.begin() + 1, window.end());
  }
  logits_.resize(static_cast<size_t>(rows) * V);
  dlogits_.resize(logits_.size());
  SR_RETURN_IF_ERROR(model_.Forward(store_, tokens_, B, S, logits_));
  absl::StatusOr<train::DistillLossValue> value;
  if (options_.teacher_mode == TeacherMode::kCache) {
    topk_ids_.clear();
    topk_log_probs_.clear();
    for (const int64_t w : windows) SR_RETURN_IF_ERROR(cache_->AppendRows(w, &topk_ids_, &topk_log_probs_));
    const train::TeacherTopK<float> teacher{topk_ids_, topk_log_probs_, options_.top_k, options_.top_k_mode};
    value = train::DistillLoss<float>(options_.loss, logits_, rows, V, teacher, labels_, dlogits_);
  } else {
    teacher_logits_.resize(logits_.size());
    SR_RETURN_IF_ERROR(teacher_.Forward(tokens_, B, S, teacher_logits_));
    if (options_.teacher_mode == TeacherMode::kOnlineLogits) {
      const train::TeacherLogits<float> teacher{teacher_logits_, V};
      value = train::DistillLoss<float>(options_.loss, logits_, rows, V, teacher, labels_, dlogits_);
    } else {
      SR_ASSIGN_OR_RETURN(train::TopKTable<float> table,
                          train::TopKFromLogits<float>(teacher_logits_, rows, V, options_.top_k,
                                                       options_.loss.temperature));
      const train::TeacherTopK<float> teacher{table.ids, table.log_probs, table.k, options_.top_k_mode};
      value = train::DistillLoss<float>(options_.loss, logits_, rows, V, teacher, labels_, dlogits_);
    }
  }
  SR_RETURN_IF_ERROR(value.status());
  // The loss is a mean over this micro-batch's rows; `weight` (its rows over
  // the global batch's) makes the sum over all micro-batches of all ranks
  // the gradient of the mean over the global batch.
  const float w = static_cast<float>(weight);
  for (float& d : dlogits_) d *= w;
  sums[0] += weight * value->loss;
  sums[1] += weight * value->divergence;
  sums[2] += weight * value->cross_entropy;
  return model_.Backward(store_, dlogits_);
}

absl::Status DistillTrainer::AllReduceGradients() {
  if (comm_->size() == 1) return absl::OkStatus();
  // Buckets bound the backend's staging memory. The trainer's Backward has no
  // per-layer hook, so the reduction follows the whole backward pass.
  std::span<float> grads = store_.grads();
  for (size_t at = 0; at < grads.size(); at += options_.bucket_floats) {
    const size_t n = std::min(options_.bucket_floats, grads.size() - at);
    SR_RETURN_IF_ERROR(comm_->AllReduce(grads.data() + at, n, CommDType::kF32, ReduceOp::kSum));
  }
  return absl::OkStatus();
}

absl::StatusOr<StepMetrics> DistillTrainer::Step() {
  if (step() >= options_.steps) {
    return absl::FailedPreconditionError(
        absl::StrCat("the run is complete: ", step(), " of ", options_.steps, " steps"));
  }
  const auto start = std::chrono::steady_clock::now();
  Position next;
  const std::vector<int64_t> global = data_.GlobalBatch(position_, options_.global_batch, &next);
  SR_ASSIGN_OR_RETURN(const auto slice, RankSlice(options_.global_batch, comm_->rank(), comm_->size()));
  const std::span<const int64_t> mine(global.data() + slice.first, slice.second - slice.first);
  store_.ZeroGrads();
  double sums[3] = {0.0, 0.0, 0.0};  // loss, divergence, ce
  const double share = 1.0 / options_.global_batch;  // every window has seqlen rows
  for (const std::vector<int64_t>& micro : MicroBatches(mine, options_.micro_batch)) {
    SR_RETURN_IF_ERROR(MicroBatch(micro, share * micro.size(), sums));
  }
  SR_RETURN_IF_ERROR(AllReduceGradients());
  if (comm_->size() > 1) SR_RETURN_IF_ERROR(comm_->AllReduce(sums, 3, CommDType::kF64, ReduceOp::kSum));

  StepMetrics m;
  if (options_.max_grad_norm > 0.0) {
    SR_ASSIGN_OR_RETURN(m.grad_norm, train::ClipGradNorm<float>(store_.grads(), options_.max_grad_norm));
  } else {
    m.grad_norm = train::GlobalGradNorm<float>(store_.grads());
  }
  if (!std::isfinite(m.grad_norm)) {
    return absl::InternalError(absl::StrCat("distillation: gradient norm is ", m.grad_norm,
                                            " at step ", step() + 1));
  }
  m.lr = schedule_.At(optimizer_.step());
  SR_RETURN_IF_ERROR(optimizer_.Step(store_, m.lr));
  position_ = next;
  m.step = step();
  m.loss = sums[0];
  m.divergence = sums[1];
  m.cross_entropy = sums[2];
  if (comm_->rank() == 0 && DistillCheckpointDue(m.step, options_.checkpoint_every, options_.steps)) {
    SR_RETURN_IF_ERROR(WriteCheckpoint());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  m.tokens_per_s = seconds > 0.0
                       ? static_cast<double>(options_.global_batch) * data_.seqlen() / seconds
                       : 0.0;
  return m;
}

absl::Status DistillTrainer::Run(const MetricsCallback& on_step) {
  while (step() < options_.steps) {
    SR_ASSIGN_OR_RETURN(const StepMetrics m, Step());
    if (on_step) on_step(m);
  }
  return absl::OkStatus();
}

absl::Status DistillTrainer::SaveStudent(const std::filesystem::path& out_dir,
                                         const std::filesystem::path& tokenizer_dir,
                                         bool overwrite) const {
  return WriteDistilledStudent(store_, step(), fingerprint_, out_dir, tokenizer_dir, overwrite);
}

absl::Status WriteDistilledStudent(const train::ParameterStore& student, int64_t steps,
                                   const std::string& fingerprint,
                                   const std::filesystem::path& out_dir,
                                   const std::filesystem::path& tokenizer_dir, bool overwrite) {
  CompressedModelSpec spec;
  spec.source_dir = tokenizer_dir;
  // The student's sizes over whatever else its config carried.
  nlohmann::json config =
      student.config().raw.is_object() ? student.config().raw : nlohmann::json::object();
  config.update(ModelConfigToJson(student.config()));
  spec.source_config = std::move(config);
  spec.dense_dtype = DType::kF32;
  spec.recipe_info = {{"distill", {{"steps", steps}, {"fingerprint", fingerprint}}}};
  for (const train::ParameterView& v : student.views()) {
    const auto values = student.param(v);
    CompressedTensorEntry entry;
    entry.name = v.name;
    entry.shape = v.shape;
    entry.values.assign(values.begin(), values.end());
    spec.tensors.push_back(std::move(entry));
  }
  return WriteCompressedModel(out_dir, spec, OutputFormat::kDense, overwrite);
}

}  // namespace shrinkray::distill
