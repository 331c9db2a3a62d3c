#include "core/distill/student_init.h"

#include <cmath>
#include <cstring>
#include <span>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/io/model_writer.h"
#include "core/model/synthetic.h"
#include "core/util/status_macros.h"

namespace shrinkray::distill {
namespace {

using nlohmann::json;

absl::Status Invalid(std::string message) {
  return absl::InvalidArgumentError(absl::StrCat("student init: ", message));
}

// The teacher's config.json as read (or rebuilt from its fields when it was
// made in memory), the base the student's is derived from, so that keys this
// code does not know (token ids, rope settings, ...) carry over.
json BaseJson(const ModelConfig& config) {
  return config.raw.is_object() ? config.raw : ModelConfigToJson(config);
}


// Parses the student's config.json as LlamaModel::Load will, so that the
// returned config is exactly what the written folder reads back as.
absl::StatusOr<ModelConfig> ParseStudentJson(json j) {
  j.erase("quantization_config");
  j.erase("compression_config");
  j.erase("shrinkray");
  SR_ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(j, "student config"));
  SR_RETURN_IF_ERROR(train::ValidateTrainConfig(config));
  return config;
}

// The teacher's parameters by HF name (views or, streaming, read on demand).
class TeacherWeights {
 public:
  explicit TeacherWeights(const LlamaModel& teacher) : teacher_(teacher) {
    for (LlamaModel::NamedParameter& p : teacher.Parameters()) {
      std::string name = p.name;
      by_name_.emplace(std::move(name), std::move(p));
    }
  }
  absl::StatusOr<std::vector<float>> Read(const std::string& name) const {
    auto it = by_name_.find(name);
    if (it == by_name_.end()) {
      return absl::InternalError(absl::StrCat("student init: teacher has no tensor ", name));
    }
    return teacher_.ReadParameter(it->second);
  }

 private:
  const LlamaModel& teacher_;
  absl::flat_hash_map<std::string, LlamaModel::NamedParameter> by_name_;
};

absl::Status CopyInto(std::span<float> dst, const std::vector<float>& src, const std::string& name) {
  if (src.size() != dst.size()) {
    return absl::InternalError(absl::StrCat("student init: ", name, " has ", src.size(),
                                            " values, the student's view ", dst.size()));
  }
  std::memcpy(dst.data(), src.data(), src.size() * sizeof(float));
  return absl::OkStatus();
}

// "model.layers.7.mlp.up_proj.weight" -> "mlp.up_proj.weight".
std::string LayerSuffix(const std::string& name) {
  const size_t dot = name.find('.', std::strlen("model.layers."));
  return name.substr(dot + 1);
}

std::string LayerName(int layer, const std::string& suffix) {
  return absl::StrCat("model.layers.", layer, ".", suffix);
}

// dst[r, :] = src[rows[r], :] for a row-major src with `cols` columns.
void GatherRows(std::span<float> dst, const std::vector<float>& src, const std::vector<int>& rows,
                size_t cols) {
  for (size_t r = 0; r < rows.size(); ++r) {
    std::memcpy(dst.data() + r * cols, src.data() + static_cast<size_t>(rows[r]) * cols,
                cols * sizeof(float));
  }
}

// dst[:, c] = src[:, keep[c]] for a row-major src with `src_cols` columns.
void GatherCols(std::span<float> dst, const std::vector<float>& src, const std::vector<int>& keep,
                size_t src_cols) {
  const size_t rows = src.size() / src_cols, cols = keep.size();
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) dst[r * cols + c] = src[r * src_cols + keep[c]];
  }
}

// Row indices of the whole heads `heads` (each head_dim rows), in order.
std::vector<int> HeadRows(const std::vector<int>& heads, int head_dim) {
  std::vector<int> rows;
  for (int h : heads) {
    for (int d = 0; d < head_dim; ++d) rows.push_back(h * head_dim + d);
  }
  return rows;
}

// A strictly increasing list of indices in [0, bound); `field` names it.
absl::Status CheckIndexList(const std::vector<int>& list, int bound, const std::string& field) {
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i] < 0 || list[i] >= bound) {
      return Invalid(absl::StrCat(field, "[", i, "] = ", list[i], " is outside [0, ", bound, ")"));
    }
    if (i > 0 && list[i] <= list[i - 1]) {
      return Invalid(absl::StrCat(field, "[", i, "] = ", list[i],
                                  list[i] == list[i - 1] ? " is repeated" : " is out of order",
                                  "; the list must be strictly increasing"));
    }
  }
  return absl::OkStatus();
}

json IntList(const std::vector<int>& v) { return json(v); }

absl::StatusOr<StudentModel> InitRandom(const LlamaModel& teacher, const StudentSpec& spec) {
  const ModelConfig& t = teacher.config();
  SR_RETURN_IF_ERROR(train::ValidateTrainConfig(spec.config));
  if (spec.config.vocab_size != t.vocab_size) {
    return Invalid(absl::StrCat("vocab_size ", spec.config.vocab_size, " differs from the teacher's ",
                                t.vocab_size, "; distillation compares distributions over one vocabulary"));
  }
  if (!(spec.init_stddev > 0.0) || !std::isfinite(spec.init_stddev)) {
    return Invalid(absl::StrCat("init_stddev ", spec.init_stddev, " must be positive and finite"));
  }
  json j = BaseJson(spec.config);
  SetModelSizeFields(j, spec.config);
  j["tie_word_embeddings"] = spec.config.tie_word_embeddings;
  // A config copied from another depth keeps a per-layer list of that depth.
  auto types = j.find("layer_types");
  if (types != j.end() && (!types->is_array() ||
                           static_cast<int>(types->size()) != spec.config.num_hidden_layers)) {
    j.erase(types);
  }
  SR_ASSIGN_OR_RETURN(ModelConfig config, ParseStudentJson(std::move(j)));
  SR_ASSIGN_OR_RETURN(train::ParameterStore store, train::ParameterStore::Create(config));
  store.InitRandom(spec.seed, spec.init_stddev);
  StudentModel student{std::move(config), std::move(store), json::object(), std::nullopt,
                       std::nullopt};
  student.provenance = {{"student_init", "random"},
                        {"seed", spec.seed},
                        {"init_stddev", spec.init_stddev}};
  return student;
}

absl::StatusOr<StudentModel> InitDepth(const LlamaModel& teacher, const StudentSpec& spec) {
  const ModelConfig& t = teacher.config();
  const std::vector<int>& keep = spec.keep_layers;
  if (keep.empty()) return Invalid("keep_layers is empty; keep at least one layer");
  if (static_cast<int>(keep.size()) > t.num_hidden_layers) {
    return Invalid(absl::StrCat("keep_layers has ", keep.size(), " entries but the teacher has ",
                                t.num_hidden_layers, " layers; a pruned student cannot be deeper"));
  }
  SR_RETURN_IF_ERROR(CheckIndexList(keep, t.num_hidden_layers, "keep_layers"));

  json j = BaseJson(t);
  ModelConfig sizes = t;
  sizes.num_hidden_layers = static_cast<int>(keep.size());
  SetModelSizeFields(j, sizes);
  // Per-layer attention types follow their layers (HF checks the length).
  auto types = j.find("layer_types");
  const bool has_types = types != j.end() && types->is_array() &&
                         static_cast<int>(types->size()) == t.num_hidden_layers;
  if (has_types || !t.sliding_window_layers.empty()) {
    json kept = json::array();
    for (int l : keep) {
      if (has_types) {
        kept.push_back((*types)[l]);
      } else {
        kept.push_back(t.sliding_window_layers[l] ? "sliding_attention" : "full_attention");
      }
    }
    // Mistral has no layer_types: its window covers every layer anyway.
    if (has_types || t.arch == Architecture::kQwen2 || t.arch == Architecture::kQwen3) {
      j["layer_types"] = std::move(kept);
    }
  }
  SR_ASSIGN_OR_RETURN(ModelConfig config, ParseStudentJson(std::move(j)));
  SR_ASSIGN_OR_RETURN(train::ParameterStore store, train::ParameterStore::Create(config));

  TeacherWeights weights(teacher);
  for (const train::ParameterView& v : store.views()) {
    const std::string source =
        v.layer < 0 ? v.name : LayerName(keep[v.layer], LayerSuffix(v.name));
    SR_ASSIGN_OR_RETURN(std::vector<float> values, weights.Read(source));
    SR_RETURN_IF_ERROR(CopyInto(store.param(v), values, source));
  }
  StudentModel student{std::move(config), std::move(store), json::object(), std::nullopt,
                       std::nullopt};
  student.provenance = {{"student_init", "depth"},
                        {"teacher_layers", t.num_hidden_layers},
                        {"kept_layers", IntList(keep)}};
  return student;
}

absl::StatusOr<StudentModel> InitWidth(const LlamaModel& teacher, const StudentSpec& spec) {
  const ModelConfig& t = teacher.config();
  if (!spec.intermediate_size.has_value() && !spec.num_attention_heads.has_value()) {
    return Invalid("width pruning needs a target intermediate_size and/or num_attention_heads");
  }
  const int per_group = t.num_attention_heads / t.num_key_value_heads;
  int inter = t.intermediate_size, heads = t.num_attention_heads;
  if (spec.intermediate_size.has_value()) {
    inter = *spec.intermediate_size;
    if (inter <= 0) return Invalid(absl::StrCat("intermediate_size = ", inter, " must be positive"));
    if (inter > t.intermediate_size) {
      return Invalid(absl::StrCat("intermediate_size ", inter, " is larger than the teacher's ",
                                  t.intermediate_size, "; pruning cannot widen"));
    }
  }
  if (spec.num_attention_heads.has_value()) {
    heads = *spec.num_attention_heads;
    if (heads <= 0) return Invalid(absl::StrCat("num_attention_heads = ", heads, " must be positive"));
    if (heads > t.num_attention_heads) {
      return Invalid(absl::StrCat("num_attention_heads ", heads, " is larger than the teacher's ",
                                  t.num_attention_heads, "; pruning cannot add heads"));
    }
    if (heads % per_group != 0) {
      return Invalid(absl::StrCat("num_attention_heads ", heads, " is not a multiple of the ",
                                  per_group, " query heads per KV group (the teacher has ",
                                  t.num_attention_heads, " heads in ", t.num_key_value_heads,
                                  " groups); heads are pruned as whole groups"));
    }
  }
  if (spec.calibration.num_samples <= 0) {
    return Invalid("calibration has no windows; width pruning ranks by activations on them");
  }
  SR_ASSIGN_OR_RETURN(ModelImportance importance,
                      ComputeActivationImportance(teacher, spec.calibration, spec.importance));
  WidthSelection selection;
  for (const LayerImportance& layer : importance.layers) {
    selection.mlp_channels.push_back(TopKIndices(layer.mlp_channels, inter));
    selection.kv_groups.push_back(TopKIndices(layer.kv_groups, heads / per_group));
  }
  SR_ASSIGN_OR_RETURN(StudentModel student, PruneWidth(teacher, selection));
  student.provenance["importance"] = {
      {"windows", importance.num_windows},
      {"seqlen", importance.seqlen},
      {"across_windows",
       spec.importance.across_windows == ImportanceAggregation::kL2 ? "l2" : "mean"}};
  student.importance = std::move(importance);
  return student;
}

}  // namespace

absl::StatusOr<StudentModel> PruneWidth(const LlamaModel& teacher,
                                        const WidthSelection& selection) {
  const ModelConfig& t = teacher.config();
  const int L = t.num_hidden_layers, HD = t.head_dim;
  const int per_group = t.num_attention_heads / t.num_key_value_heads;
  if (static_cast<int>(selection.mlp_channels.size()) != L ||
      static_cast<int>(selection.kv_groups.size()) != L) {
    return Invalid(absl::StrCat("selection has ", selection.mlp_channels.size(),
                                " mlp_channels and ", selection.kv_groups.size(),
                                " kv_groups lists; the teacher has ", L, " layers"));
  }
  const size_t inter = selection.mlp_channels[0].size(), groups = selection.kv_groups[0].size();
  for (int l = 0; l < L; ++l) {
    const std::string at = absl::StrCat(" of layer ", l);
    if (selection.mlp_channels[l].size() != inter || selection.kv_groups[l].size() != groups) {
      return Invalid(absl::StrCat("mlp_channels / kv_groups", at, " keep ",
                                  selection.mlp_channels[l].size(), " / ",
                                  selection.kv_groups[l].size(), ", layer 0 keeps ", inter, " / ",
                                  groups, "; every layer must keep the same widths"));
    }
    if (inter == 0) return Invalid("mlp_channels keeps no channel; intermediate_size must be positive");
    if (groups == 0) return Invalid("kv_groups keeps no group; num_attention_heads must be positive");
    SR_RETURN_IF_ERROR(CheckIndexList(selection.mlp_channels[l], t.intermediate_size,
                                      absl::StrCat("mlp_channels[", l, "]")));
    SR_RETURN_IF_ERROR(CheckIndexList(selection.kv_groups[l], t.num_key_value_heads,
                                      absl::StrCat("kv_groups[", l, "]")));
  }

  ModelConfig sizes = t;
  sizes.intermediate_size = static_cast<int>(inter);
  sizes.num_key_value_heads = static_cast<int>(groups);
  sizes.num_attention_heads = static_cast<int>(groups) * per_group;
  json j = BaseJson(t);
  SetModelSizeFields(j, sizes);
  SR_ASSIGN_OR_RETURN(ModelConfig config, ParseStudentJson(std::move(j)));
  SR_ASSIGN_OR_RETURN(train::ParameterStore store, train::ParameterStore::Create(config));

  // Per layer: teacher rows of the kept query heads and of the kept KV heads.
  std::vector<std::vector<int>> q_rows(L), kv_rows(L), q_heads(L);
  for (int l = 0; l < L; ++l) {
    for (int g : selection.kv_groups[l]) {
      for (int h = 0; h < per_group; ++h) q_heads[l].push_back(g * per_group + h);
    }
    q_rows[l] = HeadRows(q_heads[l], HD);
    kv_rows[l] = HeadRows(selection.kv_groups[l], HD);
  }

  TeacherWeights weights(teacher);
  const size_t C = static_cast<size_t>(t.hidden_size);
  for (const train::ParameterView& v : store.views()) {
    SR_ASSIGN_OR_RETURN(std::vector<float> values, weights.Read(v.name));
    std::span<float> dst = store.param(v);
    if (v.layer < 0) {
      SR_RETURN_IF_ERROR(CopyInto(dst, values, v.name));
      continue;
    }
    const int l = v.layer;
    const std::string suffix = LayerSuffix(v.name);
    if (suffix == "self_attn.q_proj.weight") {
      GatherRows(dst, values, q_rows[l], C);
    } else if (suffix == "self_attn.q_proj.bias") {
      GatherRows(dst, values, q_rows[l], 1);
    } else if (suffix == "self_attn.k_proj.weight" || suffix == "self_attn.v_proj.weight") {
      GatherRows(dst, values, kv_rows[l], C);
    } else if (suffix == "self_attn.k_proj.bias" || suffix == "self_attn.v_proj.bias") {
      GatherRows(dst, values, kv_rows[l], 1);
    } else if (suffix == "self_attn.o_proj.weight") {
      GatherCols(dst, values, q_rows[l], static_cast<size_t>(t.q_dim()));
    } else if (suffix == "mlp.gate_proj.weight" || suffix == "mlp.up_proj.weight") {
      GatherRows(dst, values, selection.mlp_channels[l], C);
    } else if (suffix == "mlp.down_proj.weight") {
      GatherCols(dst, values, selection.mlp_channels[l], static_cast<size_t>(t.intermediate_size));
    } else {
      // Norms (also Qwen3's per-head_dim q/k norms, shared by all heads) and o_proj's bias.
      SR_RETURN_IF_ERROR(CopyInto(dst, values, v.name));
    }
  }
  StudentModel student{std::move(config), std::move(store), json::object(), selection,
                       std::nullopt};
  json channels = json::array(), kv = json::array();
  for (int l = 0; l < L; ++l) {
    channels.push_back(IntList(selection.mlp_channels[l]));
    kv.push_back(IntList(selection.kv_groups[l]));
  }
  student.provenance = {{"student_init", "width"},
                        {"teacher_intermediate_size", t.intermediate_size},
                        {"teacher_num_attention_heads", t.num_attention_heads},
                        {"kept_mlp_channels", std::move(channels)},
                        {"kept_kv_groups", std::move(kv)}};
  return student;
}

absl::StatusOr<StudentModel> InitStudent(const LlamaModel& teacher, const StudentSpec& spec) {
  switch (spec.kind) {
    case StudentInitKind::kRandom: return InitRandom(teacher, spec);
    case StudentInitKind::kDepth: return InitDepth(teacher, spec);
    case StudentInitKind::kWidth: return InitWidth(teacher, spec);
  }
  return Invalid("kind is not random, depth or width");
}

absl::Status WriteStudentFolder(const std::filesystem::path& out_dir, const StudentModel& student,
                                const std::filesystem::path& teacher_dir, bool overwrite,
                                DType dtype) {
  CompressedModelSpec spec;
  spec.source_dir = teacher_dir;
  json config = BaseJson(student.config);
  SetModelSizeFields(config, student.config);
  spec.source_config = std::move(config);
  spec.dense_dtype = dtype;
  spec.recipe_info = student.provenance;
  const train::ParameterStore& store = student.weights;
  for (const train::ParameterView& v : store.views()) {
    const std::span<const float> values = store.param(v);
    CompressedTensorEntry entry;
    entry.name = v.name;
    entry.shape = v.shape;
    entry.values.assign(values.begin(), values.end());
    spec.tensors.push_back(std::move(entry));
  }
  return WriteCompressedModel(out_dir, spec, OutputFormat::kDense, overwrite);
}

}  // namespace shrinkray::distill
