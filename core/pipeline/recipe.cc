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
  static const auto* common = new std::set<std::string>{"targets", "ignore", "true_sequential",
                                                                  "forward_dtype"};
  auto with = [&](std::initializer_list<const char*> extra) {
    auto* s = new std::set<std::string>(*common);
    for (const char* e : extra) s->insert(e);
    return s;
  };
  static const auto* rtn = with({"bits", "group_size", "sym"});
  static const auto* gptq = with({"bits", "group_size", "sym", "act_order", "static_groups", "damp",
                                  "damp_auto_increment", "block_size", "hessian_dtype", "inverse_factor"});
  static const auto* sparsegpt = with({"sparsity", "pattern", "bits", "group_size", "sym", "damp",
                                       "damp_auto_increment", "block_size", "hessian_dtype", "inverse_factor"});
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

const std::set<std::string>& DistillFields() {
  static const auto* fields = new std::set<std::string>{
      "student", "data", "steps", "batch", "micro_batch", "seqlen", "alpha", "temperature", "loss", "beta",
      "top_k", "lr", "min_lr", "warmup", "weight_decay", "clip", "checkpoint_every", "seed",
      "teacher_samples", "sample_temperature", "sample_top_k", "sample_top_p", "sample_seed"};
  return *fields;
}

const std::set<std::string>& StudentFields() {
  static const auto* fields = new std::set<std::string>{"keep_layers", "mlp_fraction", "mlp_width", "heads",
                                                        "importance_windows", "config"};
  return *fields;
}

absl::StatusOr<std::vector<int>> ReadIntList(const ErrorContext& ctx, const std::string& field,
                                             const YAML::Node& node) {
  if (!node.IsSequence()) {
    return ctx.Field(field, absl::StrCat("expected a list of integers (e.g. [0, 2, 4]), got ", Show(node)), node);
  }
  std::vector<int> out;
  for (const YAML::Node& item : node) {
    SR_ASSIGN_OR_RETURN(int v, ReadInt(ctx, field, item));
    out.push_back(v);
  }
  return out;
}

absl::Status ParseStudent(const ErrorContext& ctx, const YAML::Node& node, DistillStage& d) {
  if (!node.IsMap()) {
    return ctx.Field("student",
                     absl::StrCat("expected a mapping: {keep_layers: [...]}, {mlp_fraction: F, heads: H} or "
                                  "{config: FILE}, got ",
                                  Show(node)),
                     node);
  }
  bool depth = false, width = false, config = false;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) return ctx.Field("student", "field names must be strings", kv.first);
    const std::string name = kv.first.Scalar();
    const std::string field = absl::StrCat("student.", name);
    const YAML::Node& v = kv.second;
    if (StudentFields().count(name) == 0) {
      return ctx.Field("student", absl::StrCat("unknown field '", name, "'; allowed: ",
                                               absl::StrJoin(StudentFields(), ", ")),
                       kv.first);
    }
    if (name == "keep_layers") {
      SR_ASSIGN_OR_RETURN(d.keep_layers, ReadIntList(ctx, field, v));
      if (d.keep_layers.empty()) return ctx.Field(field, "must keep at least one layer", v);
      for (size_t i = 0; i < d.keep_layers.size(); ++i) {
        if (d.keep_layers[i] < 0) {
          return ctx.Field(field, absl::StrCat("layer indices must be >= 0, got ", d.keep_layers[i]), v);
        }
        if (i > 0 && d.keep_layers[i] <= d.keep_layers[i - 1]) {
          return ctx.Field(field, absl::StrCat("layers must be strictly increasing (", d.keep_layers[i - 1],
                                               " then ", d.keep_layers[i], ")"),
                           v);
        }
      }
      depth = true;
    } else if (name == "mlp_fraction") {
      SR_ASSIGN_OR_RETURN(double f, ReadNumber(ctx, field, v));
      if (!(f > 0 && f <= 1)) {
        return ctx.Field(field, absl::StrCat("must be in (0, 1] (a pruned student cannot be wider), got ", f), v);
      }
      d.mlp_fraction = f;
      width = true;
    } else if (name == "mlp_width") {
      SR_ASSIGN_OR_RETURN(int n, ReadInt(ctx, field, v));
      if (n <= 0) return ctx.Field(field, absl::StrCat("must be positive, got ", n), v);
      d.intermediate_size = n;
      width = true;
    } else if (name == "heads") {
      SR_ASSIGN_OR_RETURN(int n, ReadInt(ctx, field, v));
      if (n <= 0) return ctx.Field(field, absl::StrCat("must be positive, got ", n), v);
      d.num_attention_heads = n;
      width = true;
    } else if (name == "importance_windows") {
      SR_ASSIGN_OR_RETURN(int n, ReadInt(ctx, field, v));
      if (n <= 0) return ctx.Field(field, absl::StrCat("must be positive, got ", n), v);
      d.importance_windows = n;
    } else if (name == "config") {
      SR_ASSIGN_OR_RETURN(d.student_config, ReadString(ctx, field, v));
      if (d.student_config.empty()) return ctx.Field(field, "must name a config.json", v);
      config = true;
    }
  }
  if (depth + width + config != 1) {
    return ctx.Field("student",
                     depth + width + config == 0
                         ? "needs one of keep_layers (depth), mlp_fraction / mlp_width / heads (width) or config"
                         : "keep_layers, mlp_fraction/mlp_width/heads and config are exclusive; give one kind",
                     node);
  }
  if (d.mlp_fraction.has_value() && d.intermediate_size.has_value()) {
    return ctx.Field("student.mlp_width", "give either mlp_fraction or mlp_width, not both", node);
  }
  if (node["importance_windows"] && !width) {
    return ctx.Field("student.importance_windows", "applies to width pruning (mlp_fraction, mlp_width, heads) only",
                     node["importance_windows"]);
  }
  d.student = depth ? DistillStudentKind::kDepth : width ? DistillStudentKind::kWidth : DistillStudentKind::kConfig;
  return absl::OkStatus();
}

absl::StatusOr<DistillStage> ParseDistill(const ErrorContext& ctx, const YAML::Node& key, const YAML::Node& body) {
  DistillStage d;
  if (!body.IsMap()) {
    return ctx.Stage(absl::StrCat("expected a mapping of fields with at least 'student', got ", Show(body)),
                     body.IsNull() ? key.Mark() : body.Mark());
  }
  YAML::Node min_lr_node, beta_node, warmup_node, micro_node, sample_node;
  std::string sample_field;
  for (const auto& kv : body) {
    if (!kv.first.IsScalar()) return ctx.Stage("field names must be strings", kv.first.Mark());
    const std::string field = kv.first.Scalar();
    const YAML::Node& v = kv.second;
    if (DistillFields().count(field) == 0) {
      return ctx.Stage(absl::StrCat("unknown field '", field, "'; allowed: ", absl::StrJoin(DistillFields(), ", ")),
                       kv.first.Mark());
    }
    auto positive = [&](int* out) -> absl::Status {
      SR_ASSIGN_OR_RETURN(int n, ReadInt(ctx, field, v));
      if (n <= 0) return ctx.Field(field, absl::StrCat("must be positive, got ", n), v);
      *out = n;
      return absl::OkStatus();
    };
    auto non_negative = [&](int* out) -> absl::Status {
      SR_ASSIGN_OR_RETURN(int n, ReadInt(ctx, field, v));
      if (n < 0) return ctx.Field(field, absl::StrCat("must be >= 0, got ", n), v);
      *out = n;
      return absl::OkStatus();
    };
    if (field == "student") {
      SR_RETURN_IF_ERROR(ParseStudent(ctx, v, d));
    } else if (field == "data") {
      SR_ASSIGN_OR_RETURN(d.data, ReadString(ctx, field, v));
    } else if (field == "steps") {
      SR_RETURN_IF_ERROR(positive(&d.steps));
    } else if (field == "batch") {
      SR_RETURN_IF_ERROR(positive(&d.batch));
    } else if (field == "micro_batch") {
      SR_RETURN_IF_ERROR(positive(&d.micro_batch));
      micro_node = v;
    } else if (field == "seqlen") {
      SR_ASSIGN_OR_RETURN(int n, ReadInt(ctx, field, v));
      if (n < 2) return ctx.Field(field, absl::StrCat("must be >= 2, got ", n), v);
      d.seqlen = n;
    } else if (field == "alpha") {
      SR_ASSIGN_OR_RETURN(double a, ReadNumber(ctx, field, v));
      if (a < 0 || a > 1) return ctx.Field(field, absl::StrCat("must be in [0, 1], got ", a), v);
      d.alpha = a;
    } else if (field == "temperature") {
      SR_ASSIGN_OR_RETURN(double t, ReadNumber(ctx, field, v));
      if (t <= 0) return ctx.Field(field, absl::StrCat("must be positive, got ", t), v);
      d.temperature = t;
    } else if (field == "loss") {
      SR_ASSIGN_OR_RETURN(d.loss, ReadString(ctx, field, v));
      if (d.loss != "kl" && d.loss != "reverse_kl" && d.loss != "jsd") {
        return ctx.Field(field, absl::StrCat("expected kl, reverse_kl or jsd, got '", d.loss, "'"), v);
      }
    } else if (field == "beta") {
      SR_ASSIGN_OR_RETURN(double b, ReadNumber(ctx, field, v));
      if (!(b > 0 && b < 1)) return ctx.Field(field, absl::StrCat("must be in (0, 1), got ", b), v);
      d.beta = b;
      beta_node = v;
    } else if (field == "top_k") {
      SR_RETURN_IF_ERROR(non_negative(&d.top_k));
    } else if (field == "lr") {
      SR_ASSIGN_OR_RETURN(double x, ReadNumber(ctx, field, v));
      if (x <= 0) return ctx.Field(field, absl::StrCat("must be positive, got ", x), v);
      d.lr = x;
    } else if (field == "min_lr") {
      SR_ASSIGN_OR_RETURN(double x, ReadNumber(ctx, field, v));
      if (x < 0) return ctx.Field(field, absl::StrCat("must be >= 0, got ", x), v);
      d.min_lr = x;
      min_lr_node = v;
    } else if (field == "warmup") {
      SR_RETURN_IF_ERROR(non_negative(&d.warmup));
      warmup_node = v;
    } else if (field == "weight_decay") {
      SR_ASSIGN_OR_RETURN(double x, ReadNumber(ctx, field, v));
      if (x < 0) return ctx.Field(field, absl::StrCat("must be >= 0, got ", x), v);
      d.weight_decay = x;
    } else if (field == "clip") {
      SR_ASSIGN_OR_RETURN(double x, ReadNumber(ctx, field, v));
      if (x < 0) return ctx.Field(field, absl::StrCat("must be >= 0 (0: no clipping), got ", x), v);
      d.clip = x;
    } else if (field == "checkpoint_every") {
      SR_RETURN_IF_ERROR(non_negative(&d.checkpoint_every));
    } else if (field == "seed") {
      int seed = 0;
      SR_RETURN_IF_ERROR(non_negative(&seed));
      d.seed = static_cast<uint64_t>(seed);
    } else if (field == "teacher_samples") {
      SR_RETURN_IF_ERROR(positive(&d.teacher_samples));
    } else if (field == "sample_temperature") {
      SR_ASSIGN_OR_RETURN(double t, ReadNumber(ctx, field, v));
      if (!(t > 0)) return ctx.Field(field, absl::StrCat("must be positive, got ", t), v);
      d.sample_temperature = t;
    } else if (field == "sample_top_k") {
      SR_RETURN_IF_ERROR(non_negative(&d.sample_top_k));
    } else if (field == "sample_top_p") {
      SR_ASSIGN_OR_RETURN(double p, ReadNumber(ctx, field, v));
      if (!(p > 0 && p <= 1)) return ctx.Field(field, absl::StrCat("must be in (0, 1], got ", p), v);
      d.sample_top_p = p;
    } else if (field == "sample_seed") {
      int seed = 0;
      SR_RETURN_IF_ERROR(non_negative(&seed));
      d.sample_seed = static_cast<uint64_t>(seed);
    }
    if (field.rfind("sample_", 0) == 0) {
      sample_node = v;
      sample_field = field;
    }
  }
  if (!body["student"]) {
    return ctx.Stage("needs 'student': {keep_layers: [...]}, {mlp_fraction: F, heads: H} or {config: FILE}",
                     body.Mark());
  }
  if (!micro_node.IsNull() && d.micro_batch > d.batch) {
    return ctx.Field("micro_batch", absl::StrCat("must be <= batch (", d.batch, "), got ", d.micro_batch), micro_node);
  }
  if (!min_lr_node.IsNull() && *d.min_lr > d.lr) {
    return ctx.Field("min_lr", absl::StrCat("must be <= lr (", d.lr, "), got ", *d.min_lr), min_lr_node);
  }
  if (!warmup_node.IsNull() && d.warmup >= d.steps) {
    return ctx.Field("warmup", absl::StrCat("must be less than steps (", d.steps, "), got ", d.warmup), warmup_node);
  }
  if (!beta_node.IsNull() && d.loss != "jsd") return ctx.Field("beta", "applies to loss: jsd only", beta_node);
  if (!sample_node.IsNull() && d.teacher_samples == 0) {
    return ctx.Field(sample_field, "needs teacher_samples: N (the number of windows to sample)", sample_node);
  }
  return d;
}

absl::StatusOr<RecipeStage> ParseStage(ErrorContext& ctx, const YAML::Node& item, int index,
                                       std::optional<DistillStage>* distill) {
  if (!item.IsMap() || item.size() != 1) {
    ctx.SetStage(absl::StrCat("stage ", index));
    return ctx.Stage(absl::StrCat("expected a mapping with one key (the method: ",
                                  "distill, rtn, gptq, sparsegpt, wanda or magnitude), got ", Show(item),
                                  item.IsMap() ? absl::StrCat(" with ", item.size(), " keys") : ""),
                     item.Mark());
  }
  const auto entry = *item.begin();
  const YAML::Node key = entry.first;
  const YAML::Node body = entry.second;
  const std::string name = key.IsScalar() ? key.Scalar() : Show(key);
  ctx.SetStage(absl::StrCat("stage ", index, " (", name, ")"));
  if (name == "distill") {
    if (index != 0) {
      return ctx.Stage("a distill stage must come first (the later stages run on its student)", key.Mark());
    }
    SR_ASSIGN_OR_RETURN(DistillStage d, ParseDistill(ctx, key, body));
    *distill = std::move(d);
    return RecipeStage{};  // the caller keeps the distill stage apart
  }
  auto it = Methods().find(name);
  if (it == Methods().end()) {
    return ctx.Stage(
        absl::StrCat("unknown stage '", name, "'; expected distill, rtn, gptq, sparsegpt, wanda or magnitude"),
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
      } else if (field == "forward_dtype") {
        SR_ASSIGN_OR_RETURN(std::string s, ReadString(ctx, field, v));
        if (s == "float32" || s == "fp32") {
          stage.forward_dtype = ForwardDtype::kFloat32;
        } else if (s == "bfloat16" || s == "bf16") {
          stage.forward_dtype = ForwardDtype::kBfloat16;
        } else {
          return ctx.Field(field, absl::StrCat("expected float32 or bfloat16, got '", s, "'"), v);
        }
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
      } else if (field == "inverse_factor") {
        SR_ASSIGN_OR_RETURN(std::string s, ReadString(ctx, field, v));
        bool known = false;
        for (const InverseFactorMethod m :
             {InverseFactorMethod::kCholeskyInverseChain, InverseFactorMethod::kFlippedCholesky}) {
          if (s == InverseFactorMethodName(m)) {
            stage.inverse_factor = m;
            known = true;
          }
        }
        if (!known) return ctx.Field(field, absl::StrCat("expected chain or flipped, got '", s, "'"), v);
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
    // Only when not the default, as forward_dtype below.
    if (inverse_factor != InverseFactorMethod::kCholeskyInverseChain) {
      j["inverse_factor"] = std::string(InverseFactorMethodName(inverse_factor));
    }
  }
  if (prunes()) {
    if (prune_n > 0) {
      j["pattern"] = absl::StrCat(prune_n, ":", prune_m);
    } else {
      j["sparsity"] = sparsity;
    }
  }
  j["true_sequential"] = true_sequential;
  // Only when not the default: the layer checkpoints' fingerprints of
  // float32 jobs stay what they were before the field existed.
  if (forward_dtype != ForwardDtype::kFloat32) j["forward_dtype"] = std::string(ForwardDtypeName(forward_dtype));
  if (keep_input_zeros) j["keep_input_zeros"] = true;
  j["targets"] = PatternsJson(targets);
  j["ignore"] = PatternsJson(ignore);
  return j;
}

bool Recipe::true_sequential() const { return stages.empty() || stages.front().true_sequential; }

ForwardDtype Recipe::forward_dtype() const {
  return stages.empty() ? ForwardDtype::kFloat32 : stages.front().forward_dtype;
}

HessianPrecision Recipe::hessian_dtype() const {
  for (const RecipeStage& s : stages) {
    if (s.needs_hessian() && s.hessian_dtype == HessianPrecision::kFloat64) return HessianPrecision::kFloat64;
  }
  return HessianPrecision::kFloat32;
}

nlohmann::json DistillStage::ToJson() const {
  nlohmann::json student_json;
  switch (student) {
    case DistillStudentKind::kDepth: student_json = {{"keep_layers", keep_layers}}; break;
    case DistillStudentKind::kWidth:
      if (mlp_fraction.has_value()) student_json["mlp_fraction"] = *mlp_fraction;
      if (intermediate_size.has_value()) student_json["mlp_width"] = *intermediate_size;
      if (num_attention_heads.has_value()) student_json["heads"] = *num_attention_heads;
      student_json["importance_windows"] = importance_windows;
      break;
    case DistillStudentKind::kConfig: student_json = {{"config", student_config}}; break;
  }
  nlohmann::json j = {{"method", "distill"},
                      {"student", student_json},
                      {"data", data},
                      {"steps", steps},
                      {"batch", batch},
                      {"micro_batch", micro_batch},
                      {"seqlen", seqlen},
                      {"alpha", alpha},
                      {"temperature", temperature},
                      {"loss", loss},
                      {"top_k", top_k},
                      {"lr", lr},
                      {"min_lr", min_lr.value_or(lr / 10)},
                      {"warmup", warmup},
                      {"weight_decay", weight_decay},
                      {"clip", clip},
                      {"checkpoint_every", checkpoint_every},
                      {"seed", seed}};
  if (loss == "jsd") j["beta"] = beta;
  if (teacher_samples > 0) {
    j["teacher_samples"] = teacher_samples;
    j["sample_temperature"] = sample_temperature;
    j["sample_top_k"] = sample_top_k;
    j["sample_top_p"] = sample_top_p;
    j["sample_seed"] = sample_seed.value_or(seed);
  }
  return j;
}

nlohmann::json Recipe::ToJson() const {
  nlohmann::json j = nlohmann::json::array();
  if (distill.has_value()) j.push_back(distill->ToJson());
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
      const bool had_distill = recipe.distill.has_value();
      SR_ASSIGN_OR_RETURN(RecipeStage stage, ParseStage(ctx, item, index, &recipe.distill));
      if (recipe.distill.has_value() && !had_distill) {
        ++index;
        continue;
      }
      recipe.stages.push_back(std::move(stage));
      ++index;
    }
  } catch (const YAML::Exception& e) {
    return ctx.Recipe(absl::StrCat("invalid recipe: ", e.msg), e.mark);
  }
  if (recipe.stages.empty()) return recipe;  // distill alone: the output is the student
  // Stages share one pass through the layers, so they must agree on its order.
  const RecipeStage& first = recipe.stages.front();
  for (const RecipeStage& s : recipe.stages) {
    if (s.true_sequential != first.true_sequential) {
      return absl::InvalidArgumentError(absl::StrCat(
          "recipe ", recipe.source, ": ", s.Label(), ": field 'true_sequential' is ",
          s.true_sequential ? "true" : "false", " but ", first.Label(), " has ",
          first.true_sequential ? "true" : "false", "; stages run in one pass and must agree"));
    }
    if (s.forward_dtype != first.forward_dtype) {
      return absl::InvalidArgumentError(absl::StrCat(
          "recipe ", recipe.source, ": ", s.Label(), ": field 'forward_dtype' is ",
          std::string(ForwardDtypeName(s.forward_dtype)), " but ", first.Label(), " has ",
          std::string(ForwardDtypeName(first.forward_dtype)), "; stages run in one pass and must agree"));
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
