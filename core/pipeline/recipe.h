// A compression recipe: a YAML list of stages run in one pass through the
// decoder layers, e.g.
//   - sparsegpt: {sparsity: 0.5}
//   - gptq: {bits: 4, group_size: 128, act_order: true}
// optionally led by a `distill` stage (knowledge distillation of a student
// from the job's model, core/distill), after which the other stages run on the
// trained student, each in a pass of its own (core/pipeline/job_runner.h):
//   - distill: {student: {keep_layers: [0, 2, 4]}, steps: 200, alpha: 1}
//   - sparsegpt: {sparsity: 0.3}
//   - gptq: {bits: 4, group_size: 32}
// Schema, defaults and the rules between stages: docs/recipes.md. Every field
// is validated; errors are InvalidArgument naming the recipe source, the stage
// (index and method) and the field, with the YAML line/column when known.
#pragma once

#include <filesystem>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/algo/hessian_inverse.h"
#include "core/model/forward_dtype.h"
#include "nlohmann/json.hpp"

namespace shrinkray {

enum class StageMethod { kRtn, kGptq, kSparseGpt, kWanda, kMagnitude };

// "rtn", "gptq", "sparsegpt", "wanda", "magnitude" ("distill" is a
// DistillStage, not a RecipeStage).
std::string_view StageMethodName(StageMethod method);

// A compiled module-name pattern (std::regex, ECMAScript, matched with
// regex_search: anchor with ^...$ for a whole-name match).
struct ModulePattern {
  std::string source;
  std::regex regex;
};

struct RecipeStage {
  int index = 0;  // position in the recipe, from 0
  StageMethod method = StageMethod::kGptq;

  // Quantization (rtn, gptq; sparsegpt when bits > 0). 0 = no quantization.
  int bits = 0;
  int group_size = -1;
  bool sym = true;
  bool act_order = false;
  bool static_groups = false;
  // Hessian solvers (gptq, sparsegpt).
  double damp = 0.01;
  double damp_auto_increment = 0.0015;
  int block_size = 128;
  HessianPrecision hessian_dtype = HessianPrecision::kFloat32;
  InverseFactorMethod inverse_factor = InverseFactorMethod::kCholeskyInverseChain;
  // Pruning (sparsegpt, wanda, magnitude): unstructured sparsity or N:M.
  double sparsity = 0.0;
  int prune_n = 0;
  int prune_m = 0;
  bool true_sequential = true;
  // The calibration forwards' precision (core/model/forward_dtype.h); all
  // stages of a recipe must agree.
  ForwardDtype forward_dtype = ForwardDtype::kFloat32;
  // Not a YAML field: set by the job runner when this quantizing stage runs
  // in a pass after the one that pruned (distill recipes run one pass per
  // stage), so the zeros of its input weights stay exactly zero (GPTQ's keep
  // mask), as they would in one pass.
  bool keep_input_zeros = false;
  std::vector<ModulePattern> targets;  // empty: every decoder-layer Linear
  std::vector<ModulePattern> ignore;

  bool quantizes() const { return bits > 0; }
  bool prunes() const {
    return method == StageMethod::kSparseGpt || method == StageMethod::kWanda ||
           method == StageMethod::kMagnitude;
  }
  bool needs_hessian() const { return method == StageMethod::kGptq || method == StageMethod::kSparseGpt; }
  bool needs_act_norm() const { return method == StageMethod::kWanda; }
  // Whether this stage compresses the module (full name, e.g.
  // "model.layers.0.mlp.down_proj"): it must be a decoder-layer Linear, match
  // a target (any when targets is empty) and no ignore pattern.
  bool Applies(const std::string& module) const;
  // "stage 1 (gptq)".
  std::string Label() const;
  nlohmann::json ToJson() const;
};

// The student of a distill stage: exactly one kind.
enum class DistillStudentKind { kDepth, kWidth, kConfig };

// A `distill` stage: the teacher is the job's model; the student is made from
// it (depth: the layers to keep; width: MLP channels / heads ranked by
// activation importance; config: a random model of a config.json) and trained
// with core/distill's DistillTrainer. Field names and defaults: docs/recipes.md.
struct DistillStage {
  int index = 0;  // always 0: a distill stage comes first
  DistillStudentKind student = DistillStudentKind::kDepth;
  std::vector<int> keep_layers;              // kDepth
  std::optional<int> intermediate_size;      // kWidth (mlp_width)
  std::optional<double> mlp_fraction;        // kWidth: fraction of the teacher's intermediate size
  std::optional<int> num_attention_heads;    // kWidth (heads)
  int importance_windows = 16;               // kWidth
  std::string student_config;                // kConfig: a config.json path
  std::string data;  // training text or pre-tokenized .safetensors; empty: the job's calibration data
  int steps = 100;
  int batch = 8;        // global batch (windows per step, over all ranks)
  int micro_batch = 0;  // 0: min(batch per rank, 4)
  int seqlen = 256;
  double alpha = 0.5;
  double temperature = 1.0;
  std::string loss = "kl";  // kl, reverse_kl, jsd
  double beta = 0.5;        // jsd
  int top_k = 0;            // 0: full logits
  double lr = 1e-3;
  std::optional<double> min_lr;  // unset: lr / 10
  int warmup = 0;
  double weight_decay = 0.0;
  double clip = 1.0;
  int checkpoint_every = 0;  // 0: steps / 10 (at least 1)
  uint64_t seed = 0;
  // Sequence-level KD (core/distill/teacher_samples.h): windows of text
  // sampled from the teacher; with `data` they are added to it, without it
  // they are the whole training set. 0: none.
  int teacher_samples = 0;
  double sample_temperature = 1.0;
  int sample_top_k = 0;
  double sample_top_p = 1.0;
  std::optional<uint64_t> sample_seed;  // unset: seed

  std::string Label() const { return "stage 0 (distill)"; }
  nlohmann::json ToJson() const;
};

struct Recipe {
  std::string source;  // file name or "<string>"
  // A leading distill stage, when the recipe has one; `stages` are then the
  // stages after it (their index counts the distill stage: stage 1, 2, ...).
  std::optional<DistillStage> distill;
  std::vector<RecipeStage> stages;

  // One value shared by all stages (they run in one pass).
  bool true_sequential() const;
  ForwardDtype forward_dtype() const;
  // fp64 when any Hessian stage asks for it.
  HessianPrecision hessian_dtype() const;
  nlohmann::json ToJson() const;
};

absl::StatusOr<Recipe> ParseRecipe(std::string_view yaml_text, std::string_view source = "<string>");
absl::StatusOr<Recipe> LoadRecipe(const std::filesystem::path& path);

// True for the names of decoder-layer Linears ("model.layers.N.self_attn.
// {q,k,v,o}_proj", "model.layers.N.mlp.{gate,up,down}_proj").
bool IsDecoderLinear(const std::string& module);

}  // namespace shrinkray
