#include "core/pipeline/recipe.h"

#include <yaml-cpp/yaml.h>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

// Debian's abseil has its own absl::string_view, distinct from std's.
std::string S(std::string_view s) { return std::string(s); }

const std::map<std::string, StageMethod>& Methods() {
  static const auto* methods = new std::map<std::string, StageMethod>{
      {"rtn", StageMethod::kRtn},
      {"gptq", StageMethod::kGptq},
      {"sparsegpt", StageMethod::kSparseGpt},
      {"wanda", StageMethod::kWanda},
      {"magnitude", StageMethod::kMagnitude},
  };
  return *methods;
}

// The fields each stage accepts (besides the common ones).
const std::set<std::string>& FieldsOf(StageMethod method) {
  static const auto* common = new std::set<std::string>{"targets", "ignore", "true_sequential"};
  auto with = [&](std::initializer_list<const char*> extra) {
    auto* s = new std::set<std::string>(*common);
    for (const char* e : extra) s->insert(e);
    return s;
  };
  static const auto* rtn = with({"bits", "group_size", "sym"});
  static const auto* gptq = with({"bits", "group_size", "sym", "act_order", "static_groups", "damp",
                                  "damp_auto_increment", "block_size", "hessian_dtype"});
  static const auto* sparsegpt = with({"sparsity", "pattern", "bits", "group_size", "sym", "damp",
                                       "damp_auto_increment", "block_size", "hessian_dtype"});
  static const auto* pruner = with({"sparsity", "pattern"});
  switch (method) {
    case StageMethod::kRtn: return *rtn;
    case StageMethod::kGptq: return *gptq;
    case StageMethod::kSparseGpt: return *sparsegpt;
    case StageMethod::kWanda:
    case StageMethod::kMagnitude: return *pruner;
  }
  return *common;
}

std::string At(const YAML::Mark& mark) {
  if (mark.is_null()) return "";
  return absl::StrCat(" (line ", mark.line + 1, ", column ", mark.column + 1, ")");
}

// Builds errors that name the recipe, the stage and the field.
class ErrorContext {
 public:
  explicit ErrorContext(std::string source) : source_(std::move(source)) {}
  void SetStage(std::string label) { stage_ = std::move(label); }

  absl::Status Recipe(const std::string& what, const YAML::Mark& mark) const {
    return absl::InvalidArgumentError(absl::StrCat("recipe ", source_, ": ", what, At(mark)));
  }
  absl::Status Stage(const std::string& what, const YAML::Mark& mark) const {
    return absl::InvalidArgumentError(absl::StrCat("recipe ", source_, ": ", stage_, ": ", what, At(mark)));
  }
  absl::Status Field(const std::string& field, const std::string& what, const YAML::Node& node) const {
    return absl::InvalidArgumentError(
        absl::StrCat("recipe ", source_, ": ", stage_, ": field '", field, "': ", what, At(node.Mark())));
  }

 private:
  std::string source_;
  std::string stage_;
};

std::string Show(const YAML::Node& node) {
  if (node.IsScalar()) return absl::StrCat("'", node.Scalar(), "'");
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  return "null";
}

// A plain (unquoted) scalar: quoted values are strings in YAML, never numbers or booleans.
bool IsPlainScalar(const YAML::Node& node) { return node.IsScalar() && node.Tag() != "!"; }

absl::StatusOr<int> ReadInt(const ErrorContext& ctx, const std::string& field, const YAML::Node& node) {
  if (IsPlainScalar(node)) {
    const std::string& s = node.Scalar();
    int value = 0;
    const char* begin = s.data();
    if (!s.empty() && s[0] == '+') ++begin;
    auto [ptr, ec] = std::from_chars(begin, s.data() + s.size(), value);
    if (ec == std::errc() && ptr == s.data() + s.size() && begin != ptr) return value;
  }
  return ctx.Field(field, absl::StrCat("expected an integer, got ", Show(node)), node);
}

absl::StatusOr<double> ReadNumber(const ErrorContext& ctx, const std::string& field, const YAML::Node& node) {
  if (IsPlainScalar(node)) {
    const std::string& s = node.Scalar();
    char* end = nullptr;
    const double value = std::strtod(s.c_str(), &end);
    if (!s.empty() && end == s.c_str() + s.size() && std::isfinite(value)) return value;
  }
  return ctx.Field(field, absl::StrCat("expected a number, got ", Show(node)), node);
}

absl::StatusOr<bool> ReadBool(const ErrorContext& ctx, const std::string& field, const YAML::Node& node) {
  bool value = false;
  if (IsPlainScalar(node) && YAML::convert<bool>::decode(node, value)) return value;
  return ctx.Field(field, absl::StrCat("expected true or false, got ", Show(node)), node);
}

absl::StatusOr<std::string> ReadString(const ErrorContext& ctx, const std::string& field,
                                       const YAML::Node& node) {
  if (node.IsScalar()) return node.Scalar();
  return ctx.Field(field, absl::StrCat("expected a string, got ", Show(node)), node);
}

// A list of regular expressions (a single string is a list of one).
absl::StatusOr<std::vector<ModulePattern>> ReadPatterns(const ErrorContext& ctx, const std::string& field,
                                                        const YAML::Node& node) {
  std::vector<YAML::Node> items;
  if (node.IsScalar()) {
    items.push_back(node);
  } else if (node.IsSequence()) {
    for (const YAML::Node& item : node) items.push_back(item);
  } else {
    return ctx.Field(field, absl::StrCat("expected a list of regular expressions, got ", Show(node)), node);
  }
  std::vector<ModulePattern> out;
  for (size_t i = 0; i < items.size(); ++i) {
    const YAML::Node& item = items[i];
    if (!item.IsScalar()) {
      return ctx.Field(field, absl::StrCat("item ", i, ": expected a string, got ", Show(item)), item);
    }
    ModulePattern pattern;
    pattern.source = item.Scalar();
    try {
      pattern.regex = std::regex(pattern.source, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      return ctx.Field(field,
                       absl::StrCat("item ", i, ": bad regular expression '", pattern.source, "': ", e.what()),
                       item);
    }
    out.push_back(std::move(pattern));
  }
  return out;
}

absl::Status ParsePattern(const ErrorContext& ctx, const YAML::Node& node, RecipeStage& stage) {
  SR_ASSIGN_OR_RETURN(std::string s, ReadString(ctx, "pattern", node));
  const size_t colon = s.find(':');
  int n = 0, m = 0;
  bool ok = colon != std::string::npos;
  if (ok) {
    auto [p1, e1] = std::from_chars(s.data(), s.data() + colon, n);
    auto [p2, e2] = std::from_chars(s.data() + colon + 1, s.data() + s.size(), m);
    ok = e1 == std::errc() && p1 == s.data() + colon && colon > 0 && e2 == std::errc() &&
         p2 == s.data() + s.size() && colon + 1 < s.size();
  }
  if (!ok) return ctx.Field("pattern", absl::StrCat("expected \"N:M\" such as \"2:4\", got '", s, "'"), node);
  if (n <= 0 || m <= 0) {
    return ctx.Field("pattern", absl::StrCat("N and M must be positive, got '", s, "'"), node);
  }
  if (n >= m) return ctx.Field("pattern", absl::StrCat("N must be less than M (N >= M in '", s, "')"), node);
  stage.prune_n = n;
  stage.prune_m = m;
  return absl::OkStatus();
}

absl::StatusOr<RecipeStage> ParseStage(ErrorContext& ctx, const YAML::Node& item, int index) {
  if (!item.IsMap() || item.size() != 1) {
    ctx.SetStage(absl::StrCat("stage ", index));
    return ctx.Stage(absl::StrCat("expected a mapping with one key (the method: ",
                                  "rtn, gptq, sparsegpt, wanda or magnitude), got ", Show(item),
                                  item.IsMap() ? absl::StrCat(" with ", item.size(), " keys") : ""),
                     item.Mark());
  }
  const auto entry = *item.begin();
  const YAML::Node key = entry.first;
  const YAML::Node body = entry.second;
  const std::string name = key.IsScalar() ? key.Scalar() : Show(key);
  ctx.SetStage(absl::StrCat("stage ", index, " (", name, ")"));
  auto it = Methods().find(name);
  if (it == Methods().end()) {
    return ctx.Stage(absl::StrCat("unknown stage '", name, "'; expected rtn, gptq, sparsegpt, wanda or magnitude"),
                     key.Mark());
  }
  RecipeStage stage;
  stage.index = index;
  stage.method = it->second;
  if (stage.method == StageMethod::kRtn || stage.method == StageMethod::kGptq) stage.bits = 4;
  if (!body.IsNull() && !body.IsMap()) {
    return ctx.Stage(absl::StrCat("expected a mapping of fields, got ", Show(body)), body.Mark());
  }
  const std::set<std::string>& allowed = FieldsOf(stage.method);
  bool has_sparsity = false, has_pattern = false;
  YAML::Node pattern_node;
  if (body.IsMap()) {
    for (const auto& kv : body) {
      if (!kv.first.IsScalar()) return ctx.Stage("field names must be strings", kv.first.Mark());
      const std::string field = kv.first.Scalar();
      const YAML::Node& v = kv.second;
      if (allowed.count(field) == 0) {
        return ctx.Stage(absl::StrCat("unknown field '", field, "'; allowed: ", absl::StrJoin(allowed, ", ")),
                         kv.first.Mark());
      }
      if (field == "bits") {
        SR_ASSIGN_OR_RETURN(int bits, ReadInt(ctx, field, v));
        if (bits < 2 || bits > 8) {
          return ctx.Field(field, absl::StrCat("must be in 2..8, got ", bits), v);
        }
        stage.bits = bits;
      } else if (field == "group_size") {
        SR_ASSIGN_OR_RETURN(int g, ReadInt(ctx, field, v));
        if (g == 0 || g < -1) {
          return ctx.Field(field, absl::StrCat("must be -1 (per row) or positive, got ", g), v);
        }
        stage.group_size = g;
      } else if (field == "sym") {
        SR_ASSIGN_OR_RETURN(stage.sym, ReadBool(ctx, field, v));
      } else if (field == "act_order") {
        SR_ASSIGN_OR_RETURN(stage.act_order, ReadBool(ctx, field, v));
      } else if (field == "static_groups") {
        SR_ASSIGN_OR_RETURN(stage.static_groups, ReadBool(ctx, field, v));
      } else if (field == "true_sequential") {
        SR_ASSIGN_OR_RETURN(stage.true_sequential, ReadBool(ctx, field, v));
      } else if (field == "damp") {
        SR_ASSIGN_OR_RETURN(double d, ReadNumber(ctx, field, v));
        if (d < 0 || d >= 1) return ctx.Field(field, absl::StrCat("must be in [0, 1), got ", d), v);
        stage.damp = d;
      } else if (field == "damp_auto_increment") {
        SR_ASSIGN_OR_RETURN(double d, ReadNumber(ctx, field, v));
        if (d < 0 || d >= 1) return ctx.Field(field, absl::StrCat("must be in [0, 1), got ", d), v);
        stage.damp_auto_increment = d;
      } else if (field == "block_size") {
        SR_ASSIGN_OR_RETURN(int b, ReadInt(ctx, field, v));
        if (b <= 0) return ctx.Field(field, absl::StrCat("must be positive, got ", b), v);
        stage.block_size = b;
      } else if (field == "hessian_dtype") {
        SR_ASSIGN_OR_RETURN(std::string s, ReadString(ctx, field, v));
        if (s == "float32" || s == "fp32") {
          stage.hessian_dtype = HessianPrecision::kFloat32;
        } else if (s == "float64" || s == "fp64") {
          stage.hessian_dtype = HessianPrecision::kFloat64;
        } else {
          return ctx.Field(field, absl::StrCat("expected float32 or float64, got '", s, "'"), v);
        }
      } else if (field == "sparsity") {
        SR_ASSIGN_OR_RETURN(double p, ReadNumber(ctx, field, v));
        if (p < 0 || p >= 1) return ctx.Field(field, absl::StrCat("must be in [0, 1), got ", p), v);
        stage.sparsity = p;
        has_sparsity = true;
      } else if (field == "pattern") {
        SR_RETURN_IF_ERROR(ParsePattern(ctx, v, stage));
        has_pattern = true;
        pattern_node = v;
      } else if (field == "targets") {
        SR_ASSIGN_OR_RETURN(stage.targets, ReadPatterns(ctx, field, v));
      } else if (field == "ignore") {
        SR_ASSIGN_OR_RETURN(stage.ignore, ReadPatterns(ctx, field, v));
      }
    }
  }
  const YAML::Mark mark = body.IsNull() ? key.Mark() : body.Mark();
  if (stage.prunes()) {
    if (has_sparsity == has_pattern) {
      return ctx.Stage(has_sparsity ? "give either 'sparsity' or 'pattern', not both"
                                    : "needs 'sparsity' (e.g. 0.5) or 'pattern' (e.g. \"2:4\")",
                       mark);
    }
    if (has_pattern && stage.method == StageMethod::kSparseGpt && stage.block_size % stage.prune_m != 0) {
      return ctx.Field("pattern",
                       absl::StrCat("M = ", stage.prune_m, " must divide block_size ", stage.block_size),
                       pattern_node);
    }
  }
  if (stage.method == StageMethod::kSparseGpt && !stage.quantizes()) {
    // Quantizer fields without bits would be silently ignored.
    for (const char* f : {"group_size", "sym"}) {
      if (body.IsMap() && body[f]) {
        return ctx.Field(f, "needs 'bits' (joint sparsity + quantization)", body[f]);
      }
    }
  }
  return stage;
}

nlohmann::json PatternsJson(const std::vector<ModulePattern>& patterns) {
  nlohmann::json out = nlohmann::json::array();
  for (const ModulePattern& p : patterns) out.push_back(p.source);
  return out;
}

}  // namespace

std::string_view StageMethodName(StageMethod method) {
  switch (method) {
    case StageMethod::kRtn: return "rtn";
    case StageMethod::kGptq: return "gptq";
    case StageMethod::kSparseGpt: return "sparsegpt";
    case StageMethod::kWanda: return "wanda";
    case StageMethod::kMagnitude: return "magnitude";
  }
  return "?";
}

bool IsDecoderLinear(const std::string& module) {
  static const std::regex* re = new std::regex(
      R"(^model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$)",
      std::regex::ECMAScript);
  return std::regex_match(module, *re);
}

bool RecipeStage::Applies(const std::string& module) const {
  if (!IsDecoderLinear(module)) return false;
  bool targeted = targets.empty();
  for (const ModulePattern& p : targets) {
    if (std::regex_search(module, p.regex)) {
      targeted = true;
      break;
    }
  }
  if (!targeted) return false;
  for (const ModulePattern& p : ignore) {
    if (std::regex_search(module, p.regex)) return false;
  }
  return true;
}

std::string RecipeStage::Label() const {
  return absl::StrCat("stage ", index, " (", S(StageMethodName(method)), ")");
}

nlohmann::json RecipeStage::ToJson() const {
  nlohmann::json j;
  j["method"] = S(StageMethodName(method));
  if (quantizes()) {
    j["bits"] = bits;
    j["group_size"] = group_size;
    j["sym"] = sym;
  }
  if (method == StageMethod::kGptq) {
    j["act_order"] = act_order;
    j["static_groups"] = static_groups;
  }
  if (needs_hessian()) {
    j["damp"] = damp;
    j["damp_auto_increment"] = damp_auto_increment;
    j["block_size"] = block_size;
    j["hessian_dtype"] = hessian_dtype == HessianPrecision::kFloat64 ? "float64" : "float32";
  }
  if (prunes()) {
    if (prune_n > 0) {
      j["pattern"] = absl::StrCat(prune_n, ":", prune_m);
    } else {
      j["sparsity"] = sparsity;
    }
  }
  j["true_sequential"] = true_sequential;
  j["targets"] = PatternsJson(targets);
  j["ignore"] = PatternsJson(ignore);
  return j;
}

bool Recipe::true_sequential() const { return stages.empty() || stages.front().true_sequential; }

HessianPrecision Recipe::hessian_dtype() const {
  for (const RecipeStage& s : stages) {
    if (s.needs_hessian() && s.hessian_dtype == HessianPrecision::kFloat64) return HessianPrecision::kFloat64;
  }
  return HessianPrecision::kFloat32;
}

nlohmann::json Recipe::ToJson() const {
  nlohmann::json j = nlohmann::json::array();
  for (const RecipeStage& s : stages) j.push_back(s.ToJson());
  return j;
}

absl::StatusOr<Recipe> ParseRecipe(std::string_view yaml_text, std::string_view source) {
  ErrorContext ctx{S(source)};
  YAML::Node root;
  try {
    root = YAML::Load(S(yaml_text));
  } catch (const YAML::Exception& e) {
    return ctx.Recipe(absl::StrCat("invalid YAML: ", e.msg), e.mark);
  }
  Recipe recipe;
  recipe.source = S(source);
  try {
    // A top-level {stages: [...]} is accepted too, to leave room for recipe-wide keys.
    if (root.IsMap() && root.size() == 1 && root["stages"]) root = root["stages"];
    if (!root.IsSequence()) {
      return ctx.Recipe(absl::StrCat("expected a list of stages (e.g. [{gptq: {bits: 4}}]), got ", Show(root)),
                        root.Mark());
    }
    if (root.size() == 0) return ctx.Recipe("has no stages", root.Mark());
    int index = 0;
    for (const YAML::Node& item : root) {
      SR_ASSIGN_OR_RETURN(RecipeStage stage, ParseStage(ctx, item, index));
      recipe.stages.push_back(std::move(stage));
      ++index;
    }
  } catch (const YAML::Exception& e) {
    return ctx.Recipe(absl::StrCat("invalid recipe: ", e.msg), e.mark);
  }
  // Stages share one pass through the layers, so they must agree on its order.
  const RecipeStage& first = recipe.stages.front();
  for (const RecipeStage& s : recipe.stages) {
    if (s.true_sequential != first.true_sequential) {
      return absl::InvalidArgumentError(absl::StrCat(
          "recipe ", recipe.source, ": ", s.Label(), ": field 'true_sequential' is ",
          s.true_sequential ? "true" : "false", " but ", first.Label(), " has ",
          first.true_sequential ? "true" : "false", "; stages run in one pass and must agree"));
    }
  }
  return recipe;
}

absl::StatusOr<Recipe> LoadRecipe(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("recipe ", path.string(), ": cannot open"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseRecipe(buffer.str(), path.string());
}

}  // namespace shrinkray
