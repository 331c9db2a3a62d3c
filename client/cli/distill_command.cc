// `shrinkray distill`: knowledge distillation of a student from a local
// teacher on the CPU (core/distill). The student is the teacher pruned in
// depth (--keep-layers) or width (--mlp-width / --heads, Minitron importance)
// or a random model (--student-config); it is trained on --data with the KD
// loss of core/train/distill_loss.h and written as a Hugging Face folder with
// distill_report.json beside the weights. With --eval, the teacher's and the
// student's perplexity and the student's KL to the teacher and top-1
// agreement are measured before and after training (docs/eval.md protocol).
// --teacher-samples N adds N windows of text sampled from the teacher
// (sequence-level KD, core/distill/teacher_samples.h) to --data, or is the
// whole training set without --data; the text is written to
// teacher_samples.txt in --out.
// --device cuda[:N] runs the same training on that GPU (core/distill/
// distill_device.h: online teacher with full logits, forward KL; the same
// checkpoints); the evaluation stays on the CPU.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/cli/commands.h"
#include "core/calib/calibration_set.h"
#include "core/distill/distill_device.h"
#include "core/distill/distill_trainer.h"
#include "core/distill/student_init.h"
#include "core/distill/teacher_cache.h"
#include "core/distill/teacher_samples.h"
#include "core/distill/train_data.h"
#include "core/io/text_file.h"
#include "core/model/config.h"
#include "core/model/llama.h"
#include "core/pipeline/device_factories.h"
#include "core/pipeline/eval.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/compute_device.h"
#include "core/util/flags.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace shrinkray::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

// The library's InvalidArgument names the option field ("alpha 2 must be in
// [0, 1]", "LrScheduleOptions.min_lr = ..."); the user typed a flag, so put
// the flag in front. Other codes and unknown fields pass through unchanged.
absl::Status NameFlag(const absl::Status& status) {
  if (status.ok() || status.code() != absl::StatusCode::kInvalidArgument) return status;
  static const std::map<std::string, std::string> kFlags = {
      {"alpha", "--alpha"},
      {"temperature", "--temperature"},
      {"beta", "--beta"},
      {"top_k", "--top-k"},
      {"steps", "--steps"},
      {"total_steps", "--warmup/--steps"},
      {"micro_batch", "--micro-batch"},
      {"global_batch", "--batch"},
      {"checkpoint_every", "--checkpoint-every"},
      {"seqlen", "--seqlen"},
      {"max_lr", "--lr"},
      {"min_lr", "--min-lr"},
      {"warmup_steps", "--warmup"},
      {"weight_decay", "--weight-decay"},
      {"vocab_size", "--student-config"},
      {"training", "--data"},
      {"teacher_cache", "--teacher-cache"},
      {"divergence", "--loss"},
  };
  const std::string full(status.message());
  std::string_view m = full;
  for (std::string_view prefix : {"LrScheduleOptions.", "AdamWOptions."}) {
    if (m.substr(0, prefix.size()) == prefix) m.remove_prefix(prefix.size());
  }
  size_t n = 0;
  while (n < m.size() && (std::islower(static_cast<unsigned char>(m[n])) || m[n] == '_' ||
                          std::isdigit(static_cast<unsigned char>(m[n])))) {
    ++n;
  }
  const auto it = kFlags.find(std::string(m.substr(0, n)));
  if (it == kFlags.end()) return status;
  return Invalid(absl::StrCat(it->second, ": ", std::string(status.message())));
}

absl::Status WithFlag(const std::string& flag, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(flag, ": ", std::string(status.message())));
}

absl::StatusOr<std::vector<int>> ParseIntList(const std::string& flag, const std::string& text) {
  std::vector<int> out;
  for (const std::string& part : std::vector<std::string>(absl::StrSplit(text, ','))) {
    int v = 0;
    if (!absl::SimpleAtoi(part, &v)) {
      return Invalid(absl::StrCat(flag, ": '", part, "' is not an integer (want e.g. 0,2,4)"));
    }
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<train::Divergence> ParseLoss(const std::string& name) {
  if (name == "kl") return train::Divergence::kForwardKL;
  if (name == "reverse_kl") return train::Divergence::kReverseKL;
  if (name == "jsd") return train::Divergence::kJSD;
  return Invalid(absl::StrCat("--loss: unknown loss '", name, "' (kl, reverse_kl or jsd)"));
}

absl::StatusOr<train::TopKMode> ParseTopKMode(const std::string& name) {
  if (name == "renormalize") return train::TopKMode::kRenormalize;
  if (name == "tail") return train::TopKMode::kTailBucket;
  return Invalid(absl::StrCat("--top-k-mode: unknown mode '", name, "' (renormalize or tail)"));
}

struct EvalRow {
  double ppl = 0;
  std::optional<double> kl, top1;
  json ToJson() const {
    json j = {{"ppl", ppl}};
    if (kl.has_value()) j["mean_kl"] = *kl;
    if (top1.has_value()) j["top1_agreement"] = *top1;
    return j;
  }
};

struct EvalSet {
  std::string path;
  std::vector<int32_t> ids;
  int seqlen = 256;
  long scored_tokens = 0;
};

absl::StatusOr<EvalRow> Evaluate(const LlamaModel& model, EvalSet& set, const LlamaModel* reference) {
  EvalOptions options;
  options.seqlen = set.seqlen;
  auto result = EvaluatePerplexity(model, set.ids, options, reference);
  if (!result.ok()) {
    return absl::Status(result.status().code(),
                        absl::StrCat("--eval ", set.path, ": ", result.status().message()));
  }
  set.scored_tokens = result->scored_tokens;
  return EvalRow{result->ppl, result->mean_kl, result->top1_agreement};
}

json MetricsJson(const distill::StepMetrics& m) {
  return {{"step", m.step},     {"loss", m.loss}, {"divergence", m.divergence},
          {"cross_entropy", m.cross_entropy}, {"lr", m.lr},     {"grad_norm", m.grad_norm},
          {"tokens_per_s", m.tokens_per_s}};
}

}  // namespace

absl::Status RunDistill(const Args& args) {
  SR_ASSIGN_OR_RETURN(
      Flags flags,
      Flags::Parse(args,
                   {"teacher", "data", "out", "keep-layers", "mlp-width", "heads", "importance-windows",
                    "student-config", "seed", "steps", "batch", "micro-batch", "seqlen", "lr", "min-lr",
                    "warmup", "weight-decay", "clip", "alpha", "temperature", "loss", "beta", "top-k",
                    "top-k-mode", "teacher-cache", "checkpoint-dir", "checkpoint-every", "eval",
                    "eval-max-chars", "eval-seqlen", "log-every", "device", "teacher-samples",
                    "teacher-sample-temperature", "teacher-sample-seed", "teacher-sample-top-k",
                    "teacher-sample-top-p", "teacher-sample-prompt-tokens"},
                   {"overwrite", "no-resume"}));
  SR_ASSIGN_OR_RETURN(std::string teacher_dir, flags.Required("teacher"));
  // Sequence-level KD: windows sampled from the teacher, with or without --data.
  const bool sampled = flags.Has("teacher-samples");
  if (!sampled && !flags.Has("data")) {
    return Invalid("missing required flag --data (or --teacher-samples N to train on text sampled from the teacher)");
  }
  const std::string data_path = flags.Get("data", "");
  for (const char* flag : {"teacher-sample-temperature", "teacher-sample-seed", "teacher-sample-top-k",
                           "teacher-sample-top-p", "teacher-sample-prompt-tokens"}) {
    if (flags.Has(flag) && !sampled) return Invalid(absl::StrCat("--", flag, " needs --teacher-samples N"));
  }
  SR_ASSIGN_OR_RETURN(long teacher_samples, flags.GetInt("teacher-samples", 0));
  SR_ASSIGN_OR_RETURN(double sample_temperature, flags.GetDouble("teacher-sample-temperature", 1.0));
  SR_ASSIGN_OR_RETURN(long sample_top_k, flags.GetInt("teacher-sample-top-k", 0));
  SR_ASSIGN_OR_RETURN(double sample_top_p, flags.GetDouble("teacher-sample-top-p", 1.0));
  SR_ASSIGN_OR_RETURN(long sample_prompt_tokens, flags.GetInt("teacher-sample-prompt-tokens", 0));
  if (sampled && teacher_samples <= 0) {
    return Invalid(absl::StrCat("--teacher-samples must be positive, got ", teacher_samples));
  }
  if (!(sample_temperature > 0)) {
    return Invalid(absl::StrCat("--teacher-sample-temperature must be positive, got ", sample_temperature));
  }
  if (sample_top_k < 0) return Invalid(absl::StrCat("--teacher-sample-top-k must be >= 0, got ", sample_top_k));
  if (!(sample_top_p > 0 && sample_top_p <= 1)) {
    return Invalid(absl::StrCat("--teacher-sample-top-p must be in (0, 1], got ", sample_top_p));
  }
  if (sample_prompt_tokens < 0) {
    return Invalid(absl::StrCat("--teacher-sample-prompt-tokens must be >= 0, got ", sample_prompt_tokens));
  }
  if (sample_prompt_tokens > 0 && data_path.empty()) {
    return Invalid("--teacher-sample-prompt-tokens prompts from --data's windows; give --data");
  }
  SR_ASSIGN_OR_RETURN(std::string out_dir, flags.Required("out"));

  // The student spec: exactly one kind.
  const bool depth = flags.Has("keep-layers");
  const bool width = flags.Has("mlp-width") || flags.Has("heads");
  const bool random = flags.Has("student-config");
  if (depth + width + random != 1) {
    return Invalid(depth + width + random == 0
                       ? "a student is required: --keep-layers LIST, --mlp-width N [--heads N] or "
                         "--student-config FILE"
                       : "--keep-layers, --mlp-width/--heads and --student-config are exclusive; give one");
  }
  if (flags.Has("importance-windows") && !width) {
    return Invalid("--importance-windows applies to width pruning (--mlp-width / --heads) only");
  }

  std::vector<int> keep_layers;  // parsed before anything is loaded
  if (depth) {
    SR_ASSIGN_OR_RETURN(keep_layers, ParseIntList("--keep-layers", flags.Get("keep-layers", "")));
  }
  SR_ASSIGN_OR_RETURN(long seed, flags.GetInt("seed", 0));
  SR_ASSIGN_OR_RETURN(long steps, flags.GetInt("steps", 100));
  SR_ASSIGN_OR_RETURN(long batch, flags.GetInt("batch", 8));
  SR_ASSIGN_OR_RETURN(long micro_batch, flags.GetInt("micro-batch", 0));
  SR_ASSIGN_OR_RETURN(long seqlen, flags.GetInt("seqlen", 256));
  SR_ASSIGN_OR_RETURN(double lr, flags.GetDouble("lr", 1e-3));
  SR_ASSIGN_OR_RETURN(double min_lr, flags.GetDouble("min-lr", 0.1 * lr));
  SR_ASSIGN_OR_RETURN(long warmup, flags.GetInt("warmup", 0));
  SR_ASSIGN_OR_RETURN(double weight_decay, flags.GetDouble("weight-decay", 0.0));
  SR_ASSIGN_OR_RETURN(double clip, flags.GetDouble("clip", 1.0));
  SR_ASSIGN_OR_RETURN(double alpha, flags.GetDouble("alpha", 0.5));
  SR_ASSIGN_OR_RETURN(double temperature, flags.GetDouble("temperature", 1.0));
  SR_ASSIGN_OR_RETURN(double beta, flags.GetDouble("beta", 0.5));
  SR_ASSIGN_OR_RETURN(long top_k, flags.GetInt("top-k", 0));
  SR_ASSIGN_OR_RETURN(long checkpoint_every, flags.GetInt("checkpoint-every", 0));
  SR_ASSIGN_OR_RETURN(long eval_max_chars, flags.GetInt("eval-max-chars", -1));
  SR_ASSIGN_OR_RETURN(long eval_seqlen, flags.GetInt("eval-seqlen", 256));
  SR_ASSIGN_OR_RETURN(long log_every, flags.GetInt("log-every", 10));
  SR_ASSIGN_OR_RETURN(long importance_windows, flags.GetInt("importance-windows", 16));
  SR_ASSIGN_OR_RETURN(train::Divergence divergence, ParseLoss(flags.Get("loss", "kl")));
  SR_ASSIGN_OR_RETURN(train::TopKMode top_k_mode, ParseTopKMode(flags.Get("top-k-mode", "renormalize")));
  // Range checks the library does not make (it sees ints, not flags); the
  // rest (alpha, T, beta, top-k, lr, ...) come back from it with NameFlag.
  if (seed < 0) return Invalid(absl::StrCat("--seed must be >= 0, got ", seed));
  SR_ASSIGN_OR_RETURN(long sample_seed, flags.GetInt("teacher-sample-seed", seed));
  if (sample_seed < 0) return Invalid(absl::StrCat("--teacher-sample-seed must be >= 0, got ", sample_seed));
  if (sampled && flags.Has("teacher-cache")) {
    return Invalid("--teacher-samples and --teacher-cache are exclusive (a cache is written for --data's windows)");
  }
  if (steps <= 0) return Invalid(absl::StrCat("--steps must be positive, got ", steps));
  if (batch <= 0) return Invalid(absl::StrCat("--batch must be positive, got ", batch));
  if (micro_batch < 0) return Invalid(absl::StrCat("--micro-batch must be positive, got ", micro_batch));
  if (micro_batch == 0) micro_batch = std::min<long>(batch, 4);
  if (micro_batch > batch) {
    return Invalid(absl::StrCat("--micro-batch ", micro_batch, " is larger than --batch ", batch));
  }
  if (seqlen <= 0) return Invalid(absl::StrCat("--seqlen must be positive, got ", seqlen));
  if (log_every <= 0) return Invalid(absl::StrCat("--log-every must be positive, got ", log_every));
  if (eval_seqlen < 2) return Invalid(absl::StrCat("--eval-seqlen must be >= 2, got ", eval_seqlen));
  if (importance_windows <= 0) {
    return Invalid(absl::StrCat("--importance-windows must be positive, got ", importance_windows));
  }
  if (flags.Has("top-k") && top_k <= 0) return Invalid(absl::StrCat("--top-k must be >= 1, got ", top_k));
  if (flags.Has("top-k-mode") && !flags.Has("top-k") && !flags.Has("teacher-cache")) {
    return Invalid("--top-k-mode needs --top-k K (or --teacher-cache)");
  }
  if (flags.Has("beta") && divergence != train::Divergence::kJSD) {
    return Invalid("--beta applies to --loss jsd only");
  }
  if (checkpoint_every > 0 && !flags.Has("checkpoint-dir")) {
    return Invalid("--checkpoint-every needs --checkpoint-dir");
  }
  if (flags.Has("checkpoint-dir") && checkpoint_every <= 0) {
    // A folder without a period would never be written: default to one
    // checkpoint per 10% of the run.
    checkpoint_every = std::max<long>(1, steps / 10);
  }
  if (fs::exists(out_dir) && !flags.Has("overwrite")) {
    return Invalid(absl::StrCat("--out ", out_dir, " exists; pass --overwrite to replace it"));
  }
  SR_ASSIGN_OR_RETURN(const ComputeDevice device, ParseComputeDevice(flags.Get("device", "cpu"), "--device"));
  if (device.is_cuda()) {
    // What the GPU path does not do, named by flag before anything is loaded.
    for (const char* flag : {"top-k", "top-k-mode", "teacher-cache"}) {
      if (flags.Has(flag)) {
        return Invalid(absl::StrCat("--", flag, " is not supported with --device cuda (online teacher "
                                    "with full logits, forward KL); use --device cpu"));
      }
    }
    if (divergence != train::Divergence::kForwardKL) {
      return Invalid(absl::StrCat("--loss ", flags.Get("loss", "kl"),
                                  " is not supported with --device cuda (kl only); use --device cpu"));
    }
  }
  // The device's runner, checked before anything is loaded (empty: the CPU).
  SR_ASSIGN_OR_RETURN(const distill::DistillRunnerFactory runners, MakeDistillRunnerFactory(device));

  // Teacher, tokenizer, data.
  const auto t_start = std::chrono::steady_clock::now();
  auto teacher_or = LlamaModel::Load(teacher_dir);
  if (!teacher_or.ok()) return WithFlag("--teacher", teacher_or.status());
  std::unique_ptr<LlamaModel> teacher = std::move(*teacher_or);
  const ModelConfig& tc = teacher->config();
  SR_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::FromFile(fs::path(teacher_dir) / "tokenizer.json"));
  if (top_k > tc.vocab_size) {
    return Invalid(absl::StrCat("--top-k ", top_k, " is larger than the teacher's vocabulary (", tc.vocab_size, ")"));
  }
  std::optional<distill::TrainData> user_data;
  if (!data_path.empty()) {
    const bool pretokenized = fs::path(data_path).extension() == ".safetensors";
    absl::StatusOr<distill::TrainData> data_or =
        pretokenized ? distill::TrainData::FromTokensFile(data_path, static_cast<int>(seqlen), seed)
                     : distill::TrainData::FromText(data_path, *tokenizer, static_cast<int>(seqlen), seed);
    if (!data_or.ok()) return WithFlag("--data", data_or.status());
    user_data = std::move(*data_or);
  }
  std::vector<int32_t> sample_tokens;
  double sample_seconds = 0;
  if (sampled) {
    distill::TeacherSampleOptions so;
    so.num_windows = teacher_samples;
    so.seqlen = static_cast<int>(seqlen);
    so.sampling = {.temperature = sample_temperature, .top_k = static_cast<int>(sample_top_k),
                   .top_p = sample_top_p};
    so.seed = static_cast<uint64_t>(sample_seed);
    so.prompt_tokens = static_cast<int>(sample_prompt_tokens);
    std::optional<int32_t> bos = tokenizer->bos_id();
    if (!bos.has_value() && tc.bos_token_id.has_value()) bos = *tc.bos_token_id;
    std::printf("teacher samples %ld windows of %ld tokens at T=%g (seed %ld)...\n", teacher_samples, seqlen + 1,
                sample_temperature, sample_seed);
    std::fflush(stdout);
    const auto s_start = std::chrono::steady_clock::now();
    auto tokens = distill::SampleTeacherWindows(*teacher, so, bos, user_data ? &*user_data : nullptr);
    if (!tokens.ok()) {
      // Name the flag (the values were range-checked above; what is left is
      // about the model or the data): the library names the option field.
      const std::string m(tokens.status().message());
      if (m.rfind("seqlen", 0) == 0) return WithFlag("--seqlen", tokens.status());
      if (m.rfind("prompt_tokens", 0) == 0) return WithFlag("--teacher-sample-prompt-tokens", tokens.status());
      return WithFlag("--teacher-samples", tokens.status());
    }
    sample_tokens = std::move(*tokens);
    sample_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - s_start).count();
  }
  // The training windows: --data's, then the sampled ones (mixed in one epoch order).
  std::vector<int32_t> all_tokens;
  if (sampled) {
    if (user_data) all_tokens = user_data->tokens();
    all_tokens.insert(all_tokens.end(), sample_tokens.begin(), sample_tokens.end());
  }
  const std::string data_source = !sampled ? data_path
                                  : user_data ? absl::StrCat(data_path, " + teacher samples")
                                              : std::string("teacher samples");
  absl::StatusOr<distill::TrainData> data_or =
      !sampled ? std::move(*user_data)
               : distill::TrainData::FromWindows(std::move(all_tokens), static_cast<int>(seqlen), seed, data_source);
  if (!data_or.ok()) return WithFlag(sampled ? "--teacher-samples" : "--data", data_or.status());
  const distill::TrainData data = std::move(*data_or);

  // The student.
  distill::StudentSpec spec;
  spec.seed = static_cast<uint64_t>(seed);
  json spec_json;
  std::string spec_flag;
  if (depth) {
    spec_flag = "--keep-layers";
    spec.kind = distill::StudentInitKind::kDepth;
    spec.keep_layers = keep_layers;
    spec_json = {{"kind", "depth"}, {"keep_layers", spec.keep_layers}};
  } else if (width) {
    spec_flag = flags.Has("mlp-width") ? "--mlp-width" : "--heads";
    spec.kind = distill::StudentInitKind::kWidth;
    spec_json = {{"kind", "width"}, {"importance_windows", importance_windows}};
    if (flags.Has("mlp-width")) {
      SR_ASSIGN_OR_RETURN(long v, flags.GetInt("mlp-width", 0));
      spec.intermediate_size = static_cast<int>(v);
      spec_json["intermediate_size"] = v;
    }
    if (flags.Has("heads")) {
      SR_ASSIGN_OR_RETURN(long v, flags.GetInt("heads", 0));
      spec.num_attention_heads = static_cast<int>(v);
      spec_json["num_attention_heads"] = v;
      if (flags.Has("mlp-width")) spec_flag = "--mlp-width/--heads";
    }
    // Importance windows: drawn from the training data as calibration draws them.
    CalibrationOptions calib;
    calib.num_samples = static_cast<int>(importance_windows);
    calib.seqlen = static_cast<int>(std::min<long>(seqlen, tc.max_position_embeddings));
    calib.seed = static_cast<uint64_t>(seed);
    if (!data_path.empty()) {
      auto windows = LoadCalibrationSet(data_path, *tokenizer, calib);
      if (!windows.ok()) return WithFlag("--data", windows.status());
      spec.calibration = std::move(*windows);
    } else {
      // No user data: the first sampled windows rank the channels.
      CalibrationSet set;
      set.seqlen = calib.seqlen;
      set.num_samples = static_cast<int>(std::min<long>(importance_windows, data.num_windows()));
      for (int i = 0; i < set.num_samples; ++i) {
        const auto w = data.Window(i).first(set.seqlen);
        set.tokens.insert(set.tokens.end(), w.begin(), w.end());
      }
      set.source = "teacher samples";
      spec.calibration = std::move(set);
    }
  } else {
    spec_flag = "--student-config";
    spec.kind = distill::StudentInitKind::kRandom;
    const std::string path = flags.Get("student-config", "");
    auto config = LoadModelConfig(path);
    if (!config.ok()) return WithFlag("--student-config", config.status());
    spec.config = std::move(*config);
    spec_json = {{"kind", "random"}, {"config", path}, {"seed", seed}};
  }
  absl::StatusOr<distill::StudentModel> student_or = distill::InitStudent(*teacher, spec);
  if (!student_or.ok()) return WithFlag(spec_flag, student_or.status());
  distill::StudentModel student = std::move(*student_or);
  const ModelConfig& sc = student.config;
  const long student_params = static_cast<long>(student.weights.size());
  std::printf("teacher         %s: %d layers, hidden %d, MLP %d, %d heads, %ld parameters\n",
              teacher_dir.c_str(), tc.num_hidden_layers, tc.hidden_size, tc.intermediate_size,
              tc.num_attention_heads, teacher->num_parameters());
  std::printf("student         %s: %d layers, hidden %d, MLP %d, %d heads, %ld parameters (%.1f%%)\n",
              std::string(spec_json["kind"]).c_str(), sc.num_hidden_layers, sc.hidden_size,
              sc.intermediate_size, sc.num_attention_heads, student_params,
              100.0 * student_params / std::max<long>(1, teacher->num_parameters()));
  if (sampled) {
    std::printf("teacher samples %ld windows sampled in %.1f s%s\n", teacher_samples, sample_seconds,
                user_data ? absl::StrCat(", mixed with ", user_data->num_windows(), " of --data").c_str() : "");
  }
  std::printf("data            %s: %ld windows of %ld tokens\n", data_source.c_str(),
              static_cast<long>(data.num_windows()), seqlen);
  std::fflush(stdout);

  // The trainer's options.
  distill::DistillTrainerOptions options;
  options.steps = steps;
  options.global_batch = static_cast<int>(batch);
  options.micro_batch = static_cast<int>(micro_batch);
  options.lr = {.max_lr = lr, .min_lr = min_lr, .warmup_steps = warmup, .total_steps = steps};
  options.adamw.weight_decay = weight_decay;
  options.max_grad_norm = clip;
  options.loss = {.divergence = divergence, .alpha = alpha, .temperature = temperature, .beta = beta};
  options.top_k = top_k > 0 ? static_cast<int>(top_k) : 32;
  options.top_k_mode = top_k_mode;
  options.teacher_mode = flags.Has("teacher-cache") ? distill::TeacherMode::kCache
                         : top_k > 0                ? distill::TeacherMode::kOnlineTopK
                                                    : distill::TeacherMode::kOnlineLogits;
  options.checkpoint_every = checkpoint_every;
  options.checkpoint_dir = flags.Get("checkpoint-dir", "");
  options.resume = !flags.Has("no-resume");
  options.seed = static_cast<uint64_t>(seed);
  if (options.teacher_mode == distill::TeacherMode::kCache) {
    options.teacher_cache = flags.Get("teacher-cache", "");
    // A missing cache is made here; an existing one must match (the trainer checks).
    if (!fs::exists(options.teacher_cache / "manifest.json")) {
      distill::TeacherCacheOptions cache_options;
      cache_options.k = options.top_k;
      cache_options.temperature = temperature;
      const auto c_start = std::chrono::steady_clock::now();
      SR_RETURN_IF_ERROR(WithFlag("--teacher-cache", NameFlag(distill::WriteTeacherCache(
                                                         options.teacher_cache, *teacher, data,
                                                         cache_options, nullptr))));
      std::printf("teacher cache   wrote %s (top-%d at T=%g) in %.1f s\n", options.teacher_cache.c_str(),
                  options.top_k, temperature,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - c_start).count());
    } else {
      std::printf("teacher cache   %s\n", options.teacher_cache.c_str());
    }
  }

  // The before-training student as a folder: evaluation reads LlamaModel.
  std::optional<EvalSet> eval_set;
  fs::path init_dir;
  if (flags.Has("eval")) {
    eval_set.emplace();
    eval_set->path = flags.Get("eval", "");
    eval_set->seqlen = static_cast<int>(eval_seqlen);
    auto text = ReadTextFile(eval_set->path, eval_max_chars);
    if (!text.ok()) return WithFlag("--eval", text.status());
    SR_ASSIGN_OR_RETURN(eval_set->ids, tokenizer->Encode(*text, /*add_special_tokens=*/true));
    init_dir = fs::temp_directory_path() / absl::StrCat("shrinkray-distill-init-", getpid());
    SR_RETURN_IF_ERROR(distill::WriteStudentFolder(init_dir, student, teacher_dir, /*overwrite=*/true));
  }

  auto trainer_or = distill::MakeDistillRunner(runners, options, *teacher, data, std::move(student.weights));
  if (!trainer_or.ok()) {
    if (!init_dir.empty()) fs::remove_all(init_dir);
    return NameFlag(trainer_or.status());
  }
  distill::DistillRunner& trainer = **trainer_or;
  if (!trainer.resume_note().empty()) std::printf("resume          %s\n", trainer.resume_note().c_str());

  json eval_json;
  if (eval_set.has_value()) {
    auto init_model = LlamaModel::Load(init_dir);
    std::error_code ec;
    fs::remove_all(init_dir, ec);
    SR_RETURN_IF_ERROR(init_model.status());
    SR_ASSIGN_OR_RETURN(EvalRow t, Evaluate(*teacher, *eval_set, nullptr));
    SR_ASSIGN_OR_RETURN(EvalRow b, Evaluate(**init_model, *eval_set, teacher.get()));
    std::printf("eval            %s (windows of %d, %ld scored tokens)\n", eval_set->path.c_str(),
                eval_set->seqlen, eval_set->scored_tokens);
    std::printf("ppl teacher     %.4f\n", t.ppl);
    std::printf("before          ppl %.4f  kl %.6g  top1 %.4f\n", b.ppl, *b.kl, *b.top1);
    eval_json = {{"data", eval_set->path},
                 {"seqlen", eval_set->seqlen},
                 {"max_chars", eval_max_chars},
                 {"scored_tokens", eval_set->scored_tokens},
                 {"teacher", t.ToJson()},
                 {"before", b.ToJson()}};
  }

  const std::string d_name = flags.Get("loss", "kl");
  std::printf("train           %ld steps x %ld windows x %ld tokens (micro-batch %ld), lr %g -> %g, "
              "warmup %ld, alpha %g, T %g, loss %s%s%s\n",
              steps, batch, seqlen, micro_batch, lr, min_lr, warmup, alpha, temperature, d_name.c_str(),
              options.teacher_mode == distill::TeacherMode::kOnlineLogits
                  ? ""
                  : absl::StrFormat(", top-%d %s", options.top_k, flags.Get("top-k-mode", "renormalize")).c_str(),
              device.is_cuda() ? absl::StrCat(", on ", device.ToString()).c_str() : "");
  std::fflush(stdout);
  json metrics = json::array();
  const int64_t first_step = trainer.step();
  const auto train_start = std::chrono::steady_clock::now();
  SR_RETURN_IF_ERROR(trainer.Run([&](const distill::StepMetrics& m) {
    if (m.step % log_every != 0 && m.step != steps && m.step != first_step + 1) return;
    metrics.push_back(MetricsJson(m));
    std::printf("step %5ld/%ld  loss %.4f  %s %.4f  ce %.4f  lr %.3e  grad %.3f  %.0f tok/s\n",
                static_cast<long>(m.step), steps, m.loss, d_name.c_str(), m.divergence, m.cross_entropy, m.lr,
                m.grad_norm, m.tokens_per_s);
    std::fflush(stdout);
  }));
  const double train_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - train_start).count();
  SR_RETURN_IF_ERROR(trainer.SaveStudent(out_dir, teacher_dir, flags.Has("overwrite")));
  if (sampled) {
    // The sampled text, window by window, for a user to read.
    const fs::path path = fs::path(out_dir) / "teacher_samples.txt";
    std::ofstream out(path);
    const size_t row = static_cast<size_t>(seqlen) + 1;
    for (size_t w = 0; w * row < sample_tokens.size(); ++w) {
      std::vector<int32_t> ids(sample_tokens.begin() + w * row, sample_tokens.begin() + (w + 1) * row);
      SR_ASSIGN_OR_RETURN(std::string text, tokenizer->Decode(ids, /*skip_special_tokens=*/true));
      out << "=== window " << w << " ===\n" << text << "\n";
    }
    if (!out.good()) return absl::InternalError(absl::StrCat("write ", path.string(), " failed"));
  }

  if (eval_set.has_value()) {
    SR_ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> trained, LlamaModel::Load(out_dir));
    SR_ASSIGN_OR_RETURN(EvalRow a, Evaluate(*trained, *eval_set, teacher.get()));
    eval_json["after"] = a.ToJson();
  }

  const long trained_steps = static_cast<long>(trainer.step() - first_step);
  json report = {
      {"teacher", {{"dir", teacher_dir}, {"parameters", teacher->num_parameters()}}},
      {"student",
       {{"spec", spec_json},
        {"provenance", student.provenance},
        {"config", ModelConfigToJson(sc)},
        {"parameters", student_params}}},
      {"data", {{"path", data_path}, {"windows", data.num_windows()}, {"seqlen", seqlen},
                {"fingerprint", data.Fingerprint()}}},
      {"teacher_samples",
       sampled ? json{{"windows", teacher_samples}, {"temperature", sample_temperature}, {"top_k", sample_top_k},
                      {"top_p", sample_top_p}, {"seed", sample_seed}, {"prompt_tokens", sample_prompt_tokens},
                      {"mixed_with_data", user_data.has_value()}, {"seconds", sample_seconds},
                      {"text", "teacher_samples.txt"}}
               : json(nullptr)},
      {"options",
       {{"steps", steps}, {"batch", batch}, {"micro_batch", micro_batch}, {"lr", lr}, {"min_lr", min_lr},
        {"warmup", warmup}, {"weight_decay", weight_decay}, {"clip", clip}, {"alpha", alpha},
        {"temperature", temperature}, {"loss", d_name},
        {"beta", beta}, {"top_k", options.teacher_mode == distill::TeacherMode::kOnlineLogits ? 0 : options.top_k},
        {"top_k_mode", flags.Get("top-k-mode", "renormalize")},
        {"teacher_cache", flags.Get("teacher-cache", "")}, {"seed", seed},
        {"checkpoint_dir", flags.Get("checkpoint-dir", "")}, {"checkpoint_every", checkpoint_every},
        {"log_every", log_every}, {"device", device.ToString()}}},
      {"resume_note", trainer.resume_note()},
      {"fingerprint", trainer.fingerprint()},
      {"trained_steps", trained_steps},
      {"train_seconds", train_seconds},
      {"total_seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count()},
      {"metrics", metrics},
  };
  if (!eval_json.is_null()) report["eval"] = eval_json;
  {
    const fs::path path = fs::path(out_dir) / "distill_report.json";
    std::ofstream out(path);
    out << report.dump(2) << "\n";
    if (!out.good()) return absl::InternalError(absl::StrCat("write ", path.string(), " failed"));
  }

  std::printf("trained         %ld steps in %.1f s (%.0f tokens/s)\n", trained_steps, train_seconds,
              train_seconds > 0 ? trained_steps * batch * seqlen / train_seconds : 0.0);
  if (eval_set.has_value()) {
    const json& b = eval_json["before"];
    const json& a = eval_json["after"];
    std::printf("after           ppl %.4f  kl %.6g  top1 %.4f\n", a["ppl"].get<double>(),
                a["mean_kl"].get<double>(), a["top1_agreement"].get<double>());
    std::printf("summary         ppl %.4f -> %.4f (teacher %.4f), kl %.4g -> %.4g, top1 %.4f -> %.4f\n",
                b["ppl"].get<double>(), a["ppl"].get<double>(), eval_json["teacher"]["ppl"].get<double>(),
                b["mean_kl"].get<double>(), a["mean_kl"].get<double>(), b["top1_agreement"].get<double>(),
                a["top1_agreement"].get<double>());
  }
  std::printf("output          %s (distill_report.json inside)\n", out_dir.c_str());
  return absl::OkStatus();
}

}  // namespace shrinkray::cli
