// A recipe led by a distill stage: distill -> (each later stage in a pass of
// its own) -> one results table. See job_runner.h.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <fstream>
#include <memory>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/calib/calibration_set.h"
#include "core/distill/distill_device.h"
#include "core/distill/distill_trainer.h"
#include "core/distill/student_init.h"
#include "core/distill/teacher_samples.h"
#include "core/distill/train_data.h"
#include "core/io/checkpoint.h"
#include "core/io/text_file.h"
#include "core/model/config.h"
#include "core/model/llama.h"
#include "core/pipeline/eval.h"
#include "core/pipeline/job_runner.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::string S(std::string_view s) { return std::string(s); }

// "recipe SRC: stage 0 (distill): field 'F': message" (the recipe parser's form).
absl::Status FieldError(absl::StatusCode code, const std::string& source, const std::string& field,
                        const std::string& message) {
  return absl::Status(code, absl::StrCat("recipe ", source, ": stage 0 (distill): ",
                                         field.empty() ? "" : absl::StrCat("field '", field, "': "), message));
}

absl::Status InStage(const absl::Status& status, const std::string& source, const std::string& field = "") {
  if (status.ok()) return status;
  return FieldError(status.code(), source, field, std::string(status.message()));
}

// The recipe field a student-init error is about.
std::string StudentField(const DistillStage& d, const std::string& message) {
  switch (d.student) {
    case DistillStudentKind::kDepth: return "student.keep_layers";
    case DistillStudentKind::kConfig: return "student.config";
    case DistillStudentKind::kWidth:
      if (message.find("num_attention_heads") != std::string::npos || message.find("kv") != std::string::npos) {
        return "student.heads";
      }
      return d.mlp_fraction.has_value() ? "student.mlp_fraction" : "student.mlp_width";
  }
  return "student";
}

int TargetIntermediate(const ModelConfig& teacher, const DistillStage& d) {
  if (d.intermediate_size.has_value()) return *d.intermediate_size;
  if (d.mlp_fraction.has_value()) {
    return std::max(1, static_cast<int>(std::lround(*d.mlp_fraction * teacher.intermediate_size)));
  }
  return teacher.intermediate_size;
}

fs::path WorkDir(const CompressionJob& job) { return fs::path(job.compress.out_dir.string() + ".work"); }

fs::path DataPath(const CompressionJob& job, const DistillStage& d) {
  return d.data.empty() ? job.compress.calib_path : fs::path(d.data);
}

absl::Status CheckFile(const std::string& what, const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat(what, " ", path.string(), " does not exist or is not a file"));
  }
  if (fs::file_size(path, ec) == 0 || ec) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path.string(), " is empty"));
  }
  return absl::OkStatus();
}

// What identifies the chain's intermediate results: a work folder of another
// job (same OUT, other model, recipe or data) is discarded.
nlohmann::json WorkFingerprint(const CompressionJob& job, const Recipe& recipe) {
  const CompressOptions& c = job.compress;
  return {{"model", c.model_dir.string()},
          {"recipe", recipe.ToJson()},
          {"calibration",
           {{"path", c.calib_path.string()},
            {"num_samples", c.calibration.num_samples},
            {"seqlen", c.calibration.seqlen},
            {"seed", c.calibration.seed}}}};
}

absl::Status Barrier(Communicator* comm) { return comm == nullptr ? absl::OkStatus() : comm->Barrier(); }

// Rank 0's status to every rank (so a failure on rank 0 stops the others
// instead of leaving them in the next collective).
absl::Status ShareStatus(Communicator* comm, const absl::Status& status) {
  if (comm == nullptr || comm->size() == 1) return status;
  int32_t code = static_cast<int32_t>(status.code());
  SR_RETURN_IF_ERROR(comm->Broadcast(&code, 1, CommDType::kI32, 0));
  if (comm->rank() == 0) return status;
  if (code == 0) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(code), "rank 0 failed (its error is the job's)");
}

struct DistillOutcome {
  double seconds = 0.0;
  std::string note;
};

absl::StatusOr<DistillOutcome> RunDistill(const CompressionJob& job, const Recipe& recipe, const fs::path& student_dir,
                                          const fs::path& checkpoint_dir, const JobObserver& observer,
                                          double share) {
  const DistillStage& d = *recipe.distill;
  const std::string& source = job.recipe_source;
  const auto start = Clock::now();
  const fs::path& model_dir = job.compress.model_dir;
  SR_ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> teacher, LlamaModel::Load(model_dir));
  const ModelConfig& tc = teacher->config();
  SR_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::FromFile(model_dir / "tokenizer.json"));
  // With teacher_samples and no `data`, the sampled windows are the whole training set.
  const bool sampled = d.teacher_samples > 0;
  const bool user_data = !sampled || !d.data.empty();
  const fs::path data_path = DataPath(job, d);
  // A sampled window is one sequence of seqlen + 1 tokens.
  const int seqlen = std::min(d.seqlen, tc.max_position_embeddings - (sampled ? 1 : 0));
  std::optional<distill::TrainData> user;
  if (user_data) {
    absl::StatusOr<distill::TrainData> data_or =
        data_path.extension() == ".safetensors"
            ? distill::TrainData::FromTokensFile(data_path, seqlen, d.seed)
            : distill::TrainData::FromText(data_path, *tokenizer, seqlen, d.seed);
    if (!data_or.ok()) return InStage(data_or.status(), source, "data");
    user = std::move(*data_or);
  }
  std::vector<int32_t> sample_tokens;
  if (sampled) {
    distill::TeacherSampleOptions so;
    so.num_windows = d.teacher_samples;
    so.seqlen = seqlen;
    so.sampling = {.temperature = d.sample_temperature, .top_k = d.sample_top_k, .top_p = d.sample_top_p};
    so.seed = d.sample_seed.value_or(d.seed);
    std::optional<int32_t> bos = tokenizer->bos_id();
    if (!bos.has_value() && tc.bos_token_id.has_value()) bos = *tc.bos_token_id;
    if (observer.log) {
      observer.log(absl::StrFormat("distill: sampling %d windows of %d tokens from the teacher at T=%g",
                                   d.teacher_samples, seqlen + 1, d.sample_temperature));
    }
    auto tokens = distill::SampleTeacherWindows(*teacher, so, bos, nullptr);
    if (!tokens.ok()) return InStage(tokens.status(), source, "teacher_samples");
    sample_tokens = std::move(*tokens);
  }
  absl::StatusOr<distill::TrainData> data_or = [&]() -> absl::StatusOr<distill::TrainData> {
    if (!sampled) return std::move(*user);
    std::vector<int32_t> all = user ? user->tokens() : std::vector<int32_t>{};
    all.insert(all.end(), sample_tokens.begin(), sample_tokens.end());
    return distill::TrainData::FromWindows(std::move(all), seqlen, d.seed,
                                           user ? absl::StrCat(data_path.string(), " + teacher samples")
                                                : std::string("teacher samples"));
  }();
  if (!data_or.ok()) return InStage(data_or.status(), source, sampled ? "teacher_samples" : "data");
  const distill::TrainData data = std::move(*data_or);

  distill::StudentSpec spec;
  spec.seed = d.seed;
  switch (d.student) {
    case DistillStudentKind::kDepth:
      spec.kind = distill::StudentInitKind::kDepth;
      spec.keep_layers = d.keep_layers;
      break;
    case DistillStudentKind::kWidth: {
      spec.kind = distill::StudentInitKind::kWidth;
      if (d.intermediate_size.has_value() || d.mlp_fraction.has_value()) {
        spec.intermediate_size = TargetIntermediate(tc, d);
      }
      spec.num_attention_heads = d.num_attention_heads;
      CalibrationOptions calib;
      calib.num_samples = d.importance_windows;
      calib.seqlen = seqlen;
      calib.seed = d.seed;
      if (user_data) {
        auto windows = LoadCalibrationSet(data_path, *tokenizer, calib);
        if (!windows.ok()) return InStage(windows.status(), source, "data");
        spec.calibration = std::move(*windows);
      } else {
        // Only sampled text: its first windows rank the channels.
        CalibrationSet set;
        set.seqlen = seqlen;
        set.num_samples = static_cast<int>(std::min<int64_t>(d.importance_windows, data.num_windows()));
        for (int i = 0; i < set.num_samples; ++i) {
          const auto w = data.Window(i).first(seqlen);
          set.tokens.insert(set.tokens.end(), w.begin(), w.end());
        }
        set.source = "teacher samples";
        spec.calibration = std::move(set);
      }
      break;
    }
    case DistillStudentKind::kConfig: {
      spec.kind = distill::StudentInitKind::kRandom;
      auto config = LoadModelConfig(d.student_config);
      if (!config.ok()) return InStage(config.status(), source, "student.config");
      spec.config = std::move(*config);
      break;
    }
  }
  auto init_student = [&]() -> absl::StatusOr<distill::StudentModel> {
    absl::StatusOr<distill::StudentModel> made = distill::InitStudent(*teacher, spec);
    if (!made.ok()) return InStage(made.status(), source, StudentField(d, std::string(made.status().message())));
    return made;
  };
  absl::StatusOr<distill::StudentModel> student = init_student();
  if (!student.ok()) return student.status();

  const int ranks = job.comm == nullptr ? 1 : job.comm->size();
  distill::DistillTrainerOptions o;
  o.steps = d.steps;
  o.global_batch = d.batch;
  o.micro_batch = d.micro_batch > 0 ? d.micro_batch : std::max(1, std::min(d.batch / std::max(1, ranks), 4));
  const double min_lr = d.min_lr.value_or(d.lr / 10);
  o.lr = {.max_lr = d.lr, .min_lr = min_lr, .warmup_steps = d.warmup, .total_steps = d.steps};
  o.adamw.weight_decay = d.weight_decay;
  o.max_grad_norm = d.clip;
  const train::Divergence divergence = d.loss == "reverse_kl" ? train::Divergence::kReverseKL
                                       : d.loss == "jsd"      ? train::Divergence::kJSD
                                                              : train::Divergence::kForwardKL;
  o.loss = {.divergence = divergence, .alpha = d.alpha, .temperature = d.temperature, .beta = d.beta};
  o.teacher_mode = d.top_k > 0 ? distill::TeacherMode::kOnlineTopK : distill::TeacherMode::kOnlineLogits;
  o.top_k = d.top_k > 0 ? d.top_k : 32;
  o.checkpoint_every = d.checkpoint_every > 0 ? d.checkpoint_every : std::max(1, d.steps / 10);
  o.checkpoint_dir = checkpoint_dir;
  o.resume = true;
  o.seed = d.seed;
  o.comm = job.comm;
  if (ranks > 1 && d.batch % ranks != 0) {
    return FieldError(absl::StatusCode::kInvalidArgument, source, "batch",
                      absl::StrCat("batch ", d.batch, " must be a multiple of the job's ", ranks,
                                   " workers (each takes an equal slice)"));
  }
  if (d.top_k > tc.vocab_size) {
    return FieldError(absl::StatusCode::kInvalidArgument, source, "top_k",
                      absl::StrCat("top_k ", d.top_k, " is larger than the teacher's vocabulary (", tc.vocab_size, ")"));
  }
  // The job's device trains when it can serve the run, else the CPU, saying
  // why: the GPU runner takes one rank (o.comm) and only some options
  // (distill_device.h), and a model it does not implement is Unimplemented.
  distill::DistillRunnerFactory runners = job.distill_runners;
  std::string cpu_reason;
  if (runners) {
    const absl::Status supported = distill::CheckCudaDistillOptions(o);
    if (!supported.ok()) {
      cpu_reason = std::string(supported.message());
      runners = nullptr;
    }
  }
  const ModelConfig sc = student->weights.config();
  const long student_params = static_cast<long>(student->weights.size());
  auto trainer_or = distill::MakeDistillRunner(runners, o, *teacher, data, std::move(student->weights));
  if (absl::IsUnimplemented(trainer_or.status()) && runners) {
    // The student was moved into the failed runner: made again for the CPU.
    cpu_reason = std::string(trainer_or.status().message());
    runners = nullptr;
    student = init_student();
    if (!student.ok()) return student.status();
    trainer_or = distill::MakeDistillRunner(runners, o, *teacher, data, std::move(student->weights));
  }
  if (!trainer_or.ok()) return InStage(trainer_or.status(), source);
  if (!cpu_reason.empty() && observer.log) observer.log(absl::StrCat("distill on the CPU: ", cpu_reason));
  distill::DistillRunner& trainer = **trainer_or;
  DistillOutcome outcome;
  outcome.note = trainer.resume_note();
  const int64_t first = trainer.step();
  if (observer.log) {
    observer.log(absl::StrFormat(
        "distill: teacher %ld parameters, student %ld (%d layers, MLP %d, %d heads); %ld windows of %d tokens "
        "from %s; %d steps x %d windows on %d rank(s)%s%s",
        teacher->num_parameters(), student_params, sc.num_hidden_layers, sc.intermediate_size,
        sc.num_attention_heads, static_cast<long>(data.num_windows()), seqlen, data.source(), d.steps, d.batch,
        ranks, trainer.device() == "cpu" ? "" : absl::StrCat(", on ", trainer.device()),
        outcome.note.empty() ? "" : absl::StrCat("; ", outcome.note)));
  }
  if (observer.progress) observer.progress("distill", static_cast<int>(first), d.steps, share * first / d.steps);
  while (trainer.step() < d.steps) {
    SR_RETURN_IF_ERROR(CheckCancelled(observer.cancel, "distillation"));
    SR_ASSIGN_OR_RETURN(distill::StepMetrics m, trainer.Step());
    if (observer.on_train_step) observer.on_train_step(m);
    const int every = std::max(1, d.steps / 20);
    if (observer.log && (m.step % every == 0 || m.step == d.steps || m.step == first + 1)) {
      observer.log(absl::StrFormat("distill step %d/%d  loss %.4f  %s %.4f  ce %.4f  lr %.3e  grad %.3f  %.0f tok/s",
                                   m.step, d.steps, m.loss, d.loss, m.divergence, m.cross_entropy, m.lr, m.grad_norm,
                                   m.tokens_per_s));
    }
    if (observer.progress) {
      observer.progress("distill", static_cast<int>(m.step), d.steps, share * m.step / d.steps);
    }
  }
  const bool leader = job.comm == nullptr || job.comm->rank() == 0;
  absl::Status saved = absl::OkStatus();
  if (leader) saved = trainer.SaveStudent(student_dir, job.compress.model_dir, /*overwrite=*/true);
  if (leader && saved.ok() && sampled) {
    // The sampled text beside the student, for a user to read.
    std::string text;
    const size_t row = static_cast<size_t>(seqlen) + 1;
    for (size_t w = 0; w * row < sample_tokens.size(); ++w) {
      std::vector<int32_t> ids(sample_tokens.begin() + w * row, sample_tokens.begin() + (w + 1) * row);
      auto decoded = tokenizer->Decode(ids, /*skip_special_tokens=*/true);
      if (!decoded.ok()) {
        saved = decoded.status();
        break;
      }
      absl::StrAppend(&text, "=== window ", w, " ===\n", *decoded, "\n");
    }
    if (saved.ok()) saved = WriteTextFile(student_dir / "teacher_samples.txt", text);
  }
  SR_RETURN_IF_ERROR(ShareStatus(job.comm, saved));
  outcome.seconds = SecondsSince(start);
  return outcome;
}

// The model in `dir` against the original on the evaluation ids.
absl::Status EvaluateRow(const fs::path& dir, const LlamaModel* original, const std::vector<int32_t>& ids,
                         const JobEvaluation& e, JobEvalRow* row) {
  SR_ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model, LlamaModel::Load(dir));
  EvalOptions options;
  options.seqlen = e.seqlen;
  auto r = EvaluatePerplexity(*model, ids, options, original);
  if (!r.ok()) {
    return absl::Status(r.status().code(),
                        absl::StrCat("evaluation text ", e.text_path.string(), ": ", r.status().message()));
  }
  row->ppl = r->ppl;
  row->scored_tokens = r->scored_tokens;
  row->mean_kl = r->mean_kl.value_or(0.0);
  row->top1_agreement = r->top1_agreement.value_or(1.0);
  return absl::OkStatus();
}

absl::Status WriteText(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.good()) return absl::InternalError(absl::StrCat("cannot write ", tmp.string()));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp.string(), ": ", ec.message()));
  return absl::OkStatus();
}

std::string Cell(double v, const char* format, bool present) {
  return present ? absl::StrFormat(format, v) : std::string("-");
}

}  // namespace

absl::StatusOr<long> ModelParameters(const fs::path& dir) {
  SR_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  SR_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  SR_ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model, LlamaModel::OpenStreaming(config, *checkpoint));
  return model->num_parameters();
}

namespace {

// The formatted cells of one results row after stage and bytes: bits/param,
// ratio, ppl, retention, KL, top-1, seconds ("–" where a value does not apply).
std::array<std::string, 7> RowCells(const JobEvalRow& r, const char* seconds_format) {
  const bool original = r.model == "original";
  const bool evaluated = r.ppl > 0;
  return {Cell(r.bits_per_parameter, "%.2f", r.bits_per_parameter > 0),
          Cell(r.compression_ratio, "%.2fx", r.compression_ratio > 0),
          Cell(r.ppl, "%.4f", evaluated),
          Cell(r.retention, "%.4f", evaluated),
          Cell(r.mean_kl, "%.4g", evaluated && !original),
          Cell(r.top1_agreement, "%.4f", evaluated && !original),
          Cell(r.seconds, seconds_format, !original)};
}

}  // namespace

std::string FormatResultsTable(const std::vector<JobEvalRow>& rows) {
  std::string out = absl::StrFormat("%-10s %11s %6s %7s %10s %9s %10s %7s %8s\n", "stage", "bytes", "bits/p",
                                    "ratio", "ppl", "retention", "KL", "top-1", "seconds");
  for (const JobEvalRow& r : rows) {
    const auto c = RowCells(r, "%.2f");
    absl::StrAppend(&out, absl::StrFormat("%-10s %11d %6s %7s %10s %9s %10s %7s %8s\n", r.model, r.bytes, c[0],
                                          c[1], c[2], c[3], c[4], c[5], c[6]));
  }
  return out;
}

std::string FormatResultsMarkdown(const std::vector<JobEvalRow>& rows) {
  std::string out =
      "| stage | bytes | bits/param | ratio | ppl | retention | KL to original | top-1 | seconds |\n"
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const JobEvalRow& r : rows) {
    const auto c = RowCells(r, "%.1f");
    absl::StrAppend(&out, absl::StrFormat("| %s | %d | %s | %s | %s | %s | %s | %s | %s |\n", r.model, r.bytes,
                                          c[0], c[1], c[2], c[3], c[4], c[5], c[6]));
  }
  return out;
}

nlohmann::json ResultsJson(const std::vector<JobEvalRow>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const JobEvalRow& r : rows) {
    nlohmann::json j = {{"stage", r.model},
                        {"bytes", r.bytes},
                        {"parameters", r.parameters},
                        {"bits_per_parameter", r.bits_per_parameter},
                        {"compression_ratio", r.compression_ratio},
                        {"seconds", r.seconds}};
    if (r.ppl > 0) {
      j["ppl"] = r.ppl;
      j["retention"] = r.retention;
      j["mean_kl"] = r.mean_kl;
      j["top1_agreement"] = r.top1_agreement;
      j["scored_tokens"] = r.scored_tokens;
    }
    out.push_back(std::move(j));
  }
  return out;
}

absl::StatusOr<ModelConfig> DistillStudentConfig(const ModelConfig& teacher, const DistillStage& d,
                                                 const std::string& source) {
  auto invalid = [&](const std::string& field, const std::string& message) {
    return FieldError(absl::StatusCode::kInvalidArgument, source, field, message);
  };
  ModelConfig student = teacher;
  switch (d.student) {
    case DistillStudentKind::kDepth: {
      const int n = static_cast<int>(d.keep_layers.size());
      if (n > teacher.num_hidden_layers) {
        return invalid("student.keep_layers",
                       absl::StrCat("keeps ", n, " layers but the teacher has ", teacher.num_hidden_layers,
                                    "; a pruned student cannot be deeper"));
      }
      for (int layer : d.keep_layers) {
        if (layer >= teacher.num_hidden_layers) {
          return invalid("student.keep_layers", absl::StrCat("layer ", layer, " is outside the teacher's ",
                                                             teacher.num_hidden_layers, " layers (0..",
                                                             teacher.num_hidden_layers - 1, ")"));
        }
      }
      student.num_hidden_layers = n;
      break;
    }
    case DistillStudentKind::kWidth: {
      const int inter = TargetIntermediate(teacher, d);
      if (inter > teacher.intermediate_size) {
        return invalid("student.mlp_width", absl::StrCat("intermediate size ", inter, " is larger than the teacher's ",
                                                         teacher.intermediate_size, "; pruning cannot widen"));
      }
      student.intermediate_size = inter;
      if (d.num_attention_heads.has_value()) {
        const int heads = *d.num_attention_heads;
        const int group = teacher.num_key_value_heads > 0 ? teacher.num_attention_heads / teacher.num_key_value_heads : 1;
        if (heads > teacher.num_attention_heads) {
          return invalid("student.heads", absl::StrCat(heads, " heads is more than the teacher's ",
                                                       teacher.num_attention_heads, "; pruning cannot widen"));
        }
        if (group > 0 && heads % group != 0) {
          return invalid("student.heads", absl::StrCat(heads, " heads is not a whole number of KV groups of ",
                                                       group, " heads"));
        }
        student.num_attention_heads = heads;
        student.num_key_value_heads = group > 0 ? heads / group : heads;
      }
      break;
    }
    case DistillStudentKind::kConfig: {
      auto config = LoadModelConfig(d.student_config);
      if (!config.ok()) return InStage(config.status(), source, "student.config");
      if (config->vocab_size != teacher.vocab_size) {
        return invalid("student.config", absl::StrCat("vocab_size ", config->vocab_size, " differs from the teacher's ",
                                                      teacher.vocab_size, "; the KD loss compares distributions "
                                                                          "over one vocabulary"));
      }
      student = std::move(*config);
      break;
    }
  }
  return student;
}

absl::Status ValidateStagedJob(const CompressionJob& job, const Recipe& recipe) {
  const DistillStage& d = *recipe.distill;
  const CompressOptions& c = job.compress;
  SR_ASSIGN_OR_RETURN(ModelConfig teacher, LoadModelConfig(c.model_dir));
  SR_ASSIGN_OR_RETURN(ModelConfig student, DistillStudentConfig(teacher, d, job.recipe_source));
  if (d.top_k > teacher.vocab_size) {
    return FieldError(absl::StatusCode::kInvalidArgument, job.recipe_source, "top_k",
                      absl::StrCat("top_k ", d.top_k, " is larger than the teacher's vocabulary (", teacher.vocab_size,
                                   ")"));
  }
  const int ranks = job.comm == nullptr ? 1 : job.comm->size();
  if (ranks > 1 && d.batch % ranks != 0) {
    return FieldError(absl::StatusCode::kInvalidArgument, job.recipe_source, "batch",
                      absl::StrCat("batch ", d.batch, " must be a multiple of the job's ", ranks, " workers"));
  }
  if (!recipe.stages.empty()) {
    Recipe later = recipe;
    later.distill.reset();
    SR_RETURN_IF_ERROR(CheckRecipeTargets(student, later));
  }
  SR_RETURN_IF_ERROR(InStage(CheckFile("training data", DataPath(job, d)), job.recipe_source, "data"));
  return absl::OkStatus();
}

absl::StatusOr<CompressionJobResult> RunStagedJob(const CompressionJob& job, const Recipe& recipe,
                                                  const JobObserver& observer) {
  const auto job_start = Clock::now();
  const CompressOptions& c = job.compress;
  const bool leader = job.comm == nullptr || job.comm->rank() == 0;
  std::error_code ec;
  if (!c.overwrite && fs::exists(c.out_dir, ec)) {
    return absl::AlreadyExistsError(absl::StrCat("output folder ", c.out_dir.string(), " exists; set overwrite"));
  }
  SR_RETURN_IF_ERROR(ValidateStagedJob(job, recipe));
  if (observer.progress) observer.progress("load", 0, 0, 0.0);

  // The work folder: checkpoints and the intermediate models of this job.
  const fs::path work = WorkDir(job);
  const std::string fingerprint = WorkFingerprint(job, recipe).dump();
  absl::Status prepared = absl::OkStatus();
  if (leader) {
    auto old = ReadTextFile(work / "job.json");
    if (old.ok() && *old != fingerprint) {
      if (observer.log) observer.log(absl::StrCat("discarded ", work.string(), " (another job's)"));
      fs::remove_all(work, ec);
    }
    fs::create_directories(work, ec);
    if (ec) {
      prepared = absl::InternalError(absl::StrCat("cannot create ", work.string(), ": ", ec.message()));
    } else {
      prepared = WriteText(work / "job.json", fingerprint);
    }
  }
  SR_RETURN_IF_ERROR(ShareStatus(job.comm, prepared));

  // Shares of the progress fraction: distill, each later pass, evaluation.
  const int passes = static_cast<int>(recipe.stages.size());
  const double eval_share = job.evaluation.has_value() ? 0.1 : 0.0;
  const double distill_share = passes == 0 ? 1.0 - eval_share : 0.6 * (1.0 - eval_share);
  const double pass_share = passes == 0 ? 0.0 : (1.0 - eval_share - distill_share) / passes;

  CompressionJobResult result;
  std::vector<std::pair<std::string, fs::path>> models = {{"original", c.model_dir}};
  std::vector<double> seconds = {0.0};

  // Stage 0: the student.
  const fs::path student_dir = passes == 0 ? c.out_dir : work / "student";
  if (passes == 0 && c.overwrite) fs::remove_all(c.out_dir, ec);
  SR_ASSIGN_OR_RETURN(DistillOutcome distilled,
                      RunDistill(job, recipe, student_dir, work / "distill-checkpoints", observer, distill_share));
  models.emplace_back("distill", student_dir);
  seconds.push_back(distilled.seconds);
  result.stage_seconds.emplace_back("distill", distilled.seconds);

  // The later stages, one pass each on the previous stage's model.
  bool pruned = false;
  for (int i = 0; i < passes; ++i) {
    const RecipeStage& stage = recipe.stages[i];
    const bool last = i + 1 == passes;
    Recipe one;
    one.source = recipe.source;
    one.stages = {stage};
    if (pruned && stage.quantizes()) one.stages[0].keep_input_zeros = true;
    pruned |= stage.prunes();
    CompressOptions options = c;
    options.model_dir = models.back().second;
    options.out_dir = last ? c.out_dir : work / absl::StrCat("stage-", stage.index, "-", S(StageMethodName(stage.method)));
    if (!last) {
      options.format = OutputFormat::kDense;
      options.overwrite = true;
    }
    options.layerwise.cancel = observer.cancel;
    options.layerwise.progress = observer.log;
    options.layerwise.comm = job.comm;
    const double base = distill_share + pass_share * i;
    const std::string label = S(StageMethodName(stage.method));
    options.layerwise.on_layer_done = [&observer, base, pass_share, label](const LayerDone& done) {
      if (observer.on_layer_done) observer.on_layer_done(done);
      if (observer.progress) {
        observer.progress(label, done.layer + 1, done.num_layers,
                          base + pass_share * (done.layer + 1) / std::max(1, done.num_layers));
      }
    };
    options.layerwise.on_resume = [&observer](int first_layer, int num_layers) {
      if (observer.on_resume) observer.on_resume(first_layer, num_layers);
    };
    const auto start = Clock::now();
    // An intermediate folder exists only once complete (a re-run attempt reuses it).
    const bool done_before = !last && fs::exists(options.out_dir / "report.json", ec);
    if (done_before) {
      if (observer.log) observer.log(absl::StrCat(stage.Label(), ": reusing ", options.out_dir.string()));
    } else {
      SR_ASSIGN_OR_RETURN(result.report, RunCompression(one, options));
      SR_RETURN_IF_ERROR(Barrier(job.comm));  // rank 0 wrote the folder the next pass reads
    }
    const double s = SecondsSince(start);
    models.emplace_back(label, options.out_dir);
    seconds.push_back(s);
    result.stage_seconds.emplace_back(label, s);
  }
  if (!leader) return result;
  if (passes > 0 && recipe.distill->teacher_samples > 0) {
    fs::copy_file(work / "student" / "teacher_samples.txt", c.out_dir / "teacher_samples.txt",
                  fs::copy_options::overwrite_existing, ec);
  }
  if (passes == 0) {
    result.report.model_dir = c.model_dir.string();
    result.report.out_dir = c.out_dir.string();
  }

  // The rows: sizes of every model, and the evaluation of each against the original.
  std::vector<JobEvalRow>& rows = result.eval;
  for (size_t i = 0; i < models.size(); ++i) {
    JobEvalRow row;
    row.model = models[i].first;
    row.bytes = SafetensorsBytes(models[i].second);
    SR_ASSIGN_OR_RETURN(row.parameters, ModelParameters(models[i].second));
    row.bits_per_parameter = row.parameters > 0 ? 8.0 * row.bytes / row.parameters : 0.0;
    row.seconds = seconds[i];
    rows.push_back(row);
  }
  for (JobEvalRow& row : rows) {
    row.compression_ratio = row.bytes > 0 ? static_cast<double>(rows[0].bytes) / row.bytes : 0.0;
  }
  if (job.evaluation.has_value()) {
    const JobEvaluation& e = *job.evaluation;
    if (observer.progress) observer.progress("evaluate", 0, 0, 1.0 - eval_share);
    const auto start = Clock::now();
    SR_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::FromFile(c.model_dir / "tokenizer.json"));
    SR_ASSIGN_OR_RETURN(std::string text, ReadTextFile(e.text_path, e.max_chars));
    SR_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(text, /*add_special_tokens=*/true));
    SR_ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> original, LlamaModel::Load(c.model_dir));
    for (size_t i = 0; i < rows.size(); ++i) {
      SR_RETURN_IF_ERROR(CheckCancelled(observer.cancel, "evaluation"));
      SR_RETURN_IF_ERROR(EvaluateRow(models[i].second, i == 0 ? nullptr : original.get(), ids, e, &rows[i]));
      if (i == 0) {
        rows[0].mean_kl = 0.0;
        rows[0].top1_agreement = 1.0;
      }
      rows[i].change_percent = 100.0 * (rows[i].ppl / rows[0].ppl - 1.0);
      rows[i].retention = rows[i].ppl > 0 ? rows[0].ppl / rows[i].ppl : 0.0;
      if (observer.progress) {
        observer.progress("evaluate", 0, 0, 1.0 - eval_share + eval_share * (i + 1) / rows.size());
      }
    }
    result.stage_seconds.emplace_back("evaluate", SecondsSince(start));
  }
  result.input_bytes = rows.front().bytes;
  result.output_bytes = rows.back().bytes;

  // The table: OUT/results.{json,md}, and on the job's log.
  nlohmann::json results = {{"model", c.model_dir.string()},
                            {"output", c.out_dir.string()},
                            {"recipe", recipe.ToJson()},
                            {"rows", ResultsJson(rows)},
                            {"total_seconds", SecondsSince(job_start)}};
  if (job.evaluation.has_value()) {
    results["evaluation"] = {{"path", job.evaluation->text_path.string()},
                             {"seqlen", job.evaluation->seqlen},
                             {"max_chars", job.evaluation->max_chars},
                             {"scored_tokens", rows.front().scored_tokens}};
  }
  if (!distilled.note.empty()) results["distill_resume_note"] = distilled.note;
  SR_RETURN_IF_ERROR(WriteText(c.out_dir / "results.json", results.dump(2) + "\n"));
  SR_RETURN_IF_ERROR(WriteText(c.out_dir / "results.md", FormatResultsMarkdown(rows)));
  if (observer.log) {
    observer.log("results (also in results.md / results.json of the output):");
    std::string table = FormatResultsTable(rows);
    size_t at = 0;
    while (at < table.size()) {
      const size_t nl = table.find('\n', at);
      observer.log(table.substr(at, nl - at));
      at = nl == std::string::npos ? table.size() : nl + 1;
    }
  }
  fs::remove_all(work, ec);  // checkpoints and intermediate models: the job is done
  if (observer.progress) observer.progress("done", 0, 0, 1.0);
  return result;
}

}  // namespace shrinkray
