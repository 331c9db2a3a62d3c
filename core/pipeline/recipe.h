// A compression recipe: a YAML list of stages run in one pass through the
// decoder layers, e.g.
//   - sparsegpt: {sparsity: 0.5}
//   - gptq: {bits: 4, group_size: 128, act_order: true}
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
#include "nlohmann/json.hpp"

namespace shrinkray {

enum class StageMethod { kRtn, kGptq, kSparseGpt, kWanda, kMagnitude };

// "rtn", "gptq", "sparsegpt", "wanda", "magnitude".
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
  // Pruning (sparsegpt, wanda, magnitude): unstructured sparsity or N:M.
  double sparsity = 0.0;
  int prune_n = 0;
  int prune_m = 0;
  bool true_sequential = true;
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

struct Recipe {
  std::string source;  // file name or "<string>"
  std::vector<RecipeStage> stages;

  // One value shared by all stages (they run in one pass).
  bool true_sequential() const;
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
