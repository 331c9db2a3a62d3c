#include "core/io/quantized_reader.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <regex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/io/compressed_tensors_format.h"
#include "core/tensor/convert.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

using nlohmann::json;
using Method = CheckpointQuantization::Method;

// Debian's abseil has its own absl::string_view, distinct from std's.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

absl::Status TensorError(const Checkpoint& ckpt, std::string_view tensor, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tensor '", Sv(tensor), "' in ",
                                                 ckpt.dir().string(), ": ", what));
}

bool IsIntegerDType(DType dtype) {
  return dtype == DType::kI64 || dtype == DType::kI32 || dtype == DType::kI16 ||
         dtype == DType::kI8 || dtype == DType::kU8;
}

// A stored integer tensor (I32 or I64) widened to int64, checking its rank.
absl::StatusOr<std::vector<int64_t>> ReadInts(const Checkpoint& ckpt, const TensorInfo& info,
                                              size_t rank) {
  if (info.shape.size() != rank) {
    return TensorError(ckpt, info.name, absl::StrCat("expected rank ", rank));
  }
  const size_t n = static_cast<size_t>(info.numel());
  std::vector<int64_t> out(n);
  if (info.dtype == DType::kI32) {
    for (size_t i = 0; i < n; ++i) {
      int32_t v;
      std::memcpy(&v, info.data + i * sizeof(v), sizeof(v));  // data may be unaligned
      out[i] = v;
    }
  } else if (info.dtype == DType::kI64) {
    std::memcpy(out.data(), info.data, n * sizeof(int64_t));
  } else {
    return TensorError(ckpt, info.name,
                       absl::StrCat("dtype ", Sv(DTypeName(info.dtype)), " is not I32 or I64"));
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> ReadInt32(const Checkpoint& ckpt, const TensorInfo& info,
                                               size_t rank) {
  if (info.dtype != DType::kI32) {
    return TensorError(ckpt, info.name,
                       absl::StrCat("dtype ", Sv(DTypeName(info.dtype)), " is not I32"));
  }
  SR_ASSIGN_OR_RETURN(std::vector<int64_t> wide, ReadInts(ckpt, info, rank));
  return std::vector<int32_t>(wide.begin(), wide.end());
}

absl::StatusOr<std::vector<float>> ReadFloats(const Checkpoint& ckpt, const TensorInfo& info) {
  if (!GetDTypeTraits(info.dtype).is_float) {
    return TensorError(ckpt, info.name,
                       absl::StrCat("dtype ", Sv(DTypeName(info.dtype)), " is not a float type"));
  }
  std::vector<float> out(static_cast<size_t>(info.numel()));
  SR_RETURN_IF_ERROR(ConvertToF32(out.data(), info.data, info.dtype, out.size()));
  return out;
}

const TensorInfo* FindOrNull(const Checkpoint& ckpt, const std::string& name) {
  auto found = ckpt.Find(name);
  return found.ok() ? *found : nullptr;
}

bool ValidGroups(const std::vector<int32_t>& g_idx, int num_groups) {
  return std::all_of(g_idx.begin(), g_idx.end(),
                     [&](int32_t g) { return g >= 0 && g < num_groups; });
}

std::vector<int32_t> DefaultGroups(int cols, int group_size) {
  std::vector<int32_t> g_idx(cols);
  for (int c = 0; c < cols; ++c) g_idx[c] = group_size > 0 ? c / group_size : 0;
  return g_idx;
}

absl::StatusOr<std::optional<QuantizedWeight>> ReadGptq(const Checkpoint& ckpt,
                                                        const CheckpointQuantization& q,
                                                        const std::string& module) {
  const TensorInfo* qweight_info = FindOrNull(ckpt, module + ".qweight");
  if (qweight_info == nullptr) return std::nullopt;
  const TensorInfo* qzeros_info = FindOrNull(ckpt, module + ".qzeros");
  const TensorInfo* scales_info = FindOrNull(ckpt, module + ".scales");
  if (qzeros_info == nullptr || scales_info == nullptr) {
    return TensorError(ckpt, module + ".qweight", "has no .qzeros or .scales beside it");
  }
  SR_ASSIGN_OR_RETURN(std::vector<int32_t> qweight, ReadInt32(ckpt, *qweight_info, 2));
  SR_ASSIGN_OR_RETURN(std::vector<int32_t> qzeros, ReadInt32(ckpt, *qzeros_info, 2));
  SR_ASSIGN_OR_RETURN(std::vector<float> scales, ReadFloats(ckpt, *scales_info));
  const int64_t packed_rows = qweight_info->shape[0];
  const int64_t out = qweight_info->shape[1];
  if (scales_info->shape.size() != 2 || scales_info->shape[1] != out ||
      qzeros_info->shape[0] != scales_info->shape[0]) {
    return TensorError(ckpt, module + ".scales", "shape does not match qweight / qzeros");
  }
  const int num_groups = static_cast<int>(scales_info->shape[0]);

  // Bits per module from the shapes (GPTQModel's "dynamic" may override the
  // config's), when g_idx gives the input size.
  std::vector<int32_t> g_idx;
  int bits = q.bits;
  int64_t in = 0;
  if (const TensorInfo* g_info = FindOrNull(ckpt, module + ".g_idx"); g_info != nullptr) {
    SR_ASSIGN_OR_RETURN(std::vector<int64_t> wide, ReadInts(ckpt, *g_info, 1));
    g_idx.assign(wide.begin(), wide.end());
    in = static_cast<int64_t>(g_idx.size());
    if (in <= 0 || (packed_rows * 32) % in != 0) {
      return TensorError(ckpt, module + ".qweight", "rows do not match g_idx's length");
    }
    bits = static_cast<int>(packed_rows * 32 / in);
  } else {
    if (bits <= 0) return TensorError(ckpt, module + ".qweight", "no g_idx and no bits in config");
    in = packed_rows * 32 / bits;
  }
  SR_RETURN_IF_ERROR(CheckGptqBits(bits));
  if (g_idx.empty()) g_idx = DefaultGroups(static_cast<int>(in), q.group_size);
  if (!ValidGroups(g_idx, num_groups)) {
    return TensorError(ckpt, module + ".g_idx", "has a group outside the scales' groups");
  }

  QuantizedWeight w;
  w.rows = static_cast<int>(out);
  w.cols = static_cast<int>(in);
  w.bits = bits;
  w.group_size = q.group_size;
  w.sym = q.sym;
  w.num_groups = num_groups;
  auto codes = UnpackGptqQweight(qweight, w.rows, w.cols, bits);
  if (!codes.ok()) return TensorError(ckpt, module + ".qweight", codes.status().message());
  auto zeros = UnpackGptqQzeros(qzeros, num_groups, w.rows, bits, q.zero_format);
  if (!zeros.ok()) return TensorError(ckpt, module + ".qzeros", zeros.status().message());
  // Stored [groups, out] like ours.
  w.codes = *std::move(codes);
  w.zeros = *std::move(zeros);
  w.scales = std::move(scales);
  w.g_idx = std::move(g_idx);
  for (int c = 0; c < w.cols && !w.act_order; ++c) {
    w.act_order = w.g_idx[c] != (w.group_size > 0 ? c / w.group_size : 0);
  }
  return w;
}

// The config group whose targets claim `module`: exact name, then "re:"
// pattern (matched at the start, as Python's re.match), then a class name.
absl::StatusOr<const CheckpointQuantization::CtGroup*> FindCtGroup(const CheckpointQuantization& q,
                                                                   const std::string& module) {
  const CheckpointQuantization::CtGroup* by_regex = nullptr;
  const CheckpointQuantization::CtGroup* by_class = nullptr;
  for (const auto& group : q.ct_groups) {
    for (const std::string& target : group.targets) {
      if (target == module) return &group;
      if (target.rfind("re:", 0) == 0) {
        try {
          if (by_regex == nullptr &&
              std::regex_search(module, std::regex(target.substr(3)),
                                std::regex_constants::match_continuous)) {
            by_regex = &group;
          }
        } catch (const std::regex_error&) {
          // A pattern std::regex cannot parse: fall back to the other rules.
        }
      } else if (target == "Linear" && by_class == nullptr) {
        by_class = &group;
      }
    }
  }
  if (by_regex != nullptr) return by_regex;
  if (by_class != nullptr) return by_class;
  if (q.ct_groups.size() == 1) return &q.ct_groups[0];
  return absl::InvalidArgumentError(
      absl::StrCat("no compressed-tensors config group targets '", module, "'"));
}

absl::StatusOr<std::optional<QuantizedWeight>> ReadCompressedTensors(
    const Checkpoint& ckpt, const CheckpointQuantization& q, const std::string& module) {
  const TensorInfo* packed_info = FindOrNull(ckpt, module + ".weight_packed");
  if (packed_info == nullptr) return std::nullopt;
  SR_ASSIGN_OR_RETURN(const CheckpointQuantization::CtGroup* group, FindCtGroup(q, module));
  if (group->format != "pack-quantized") {
    return absl::UnimplementedError(absl::StrCat("compressed-tensors format '", group->format,
                                                 "' of ", module, " cannot be read"));
  }
  const TensorInfo* shape_info = FindOrNull(ckpt, module + ".weight_shape");
  const TensorInfo* scale_info = FindOrNull(ckpt, module + ".weight_scale");
  if (shape_info == nullptr || scale_info == nullptr) {
    return TensorError(ckpt, module + ".weight_packed",
                       "has no .weight_shape or .weight_scale beside it");
  }
  SR_ASSIGN_OR_RETURN(std::vector<int64_t> shape, ReadInts(ckpt, *shape_info, 1));
  if (shape.size() != 2 || shape[0] <= 0 || shape[1] <= 0) {
    return TensorError(ckpt, module + ".weight_shape", "is not two positive sizes");
  }
  CtTensors t;
  t.bits = group->num_bits;
  t.rows = static_cast<int>(shape[0]);
  t.cols = static_cast<int>(shape[1]);
  if (scale_info->shape.size() != 2 || scale_info->shape[0] != shape[0]) {
    return TensorError(ckpt, module + ".weight_scale", "shape does not match weight_shape");
  }
  t.num_groups = static_cast<int>(scale_info->shape[1]);
  SR_ASSIGN_OR_RETURN(t.weight_packed, ReadInt32(ckpt, *packed_info, 2));
  SR_ASSIGN_OR_RETURN(t.weight_scale, ReadFloats(ckpt, *scale_info));
  if (const TensorInfo* zp = FindOrNull(ckpt, module + ".weight_zero_point"); zp != nullptr) {
    SR_ASSIGN_OR_RETURN(t.weight_zero_point, ReadInt32(ckpt, *zp, 2));
  } else if (!group->symmetric) {
    return TensorError(ckpt, module + ".weight_packed",
                       "is asymmetric but has no .weight_zero_point beside it");
  }
  if (const TensorInfo* g = FindOrNull(ckpt, module + ".weight_g_idx"); g != nullptr) {
    SR_ASSIGN_OR_RETURN(std::vector<int64_t> wide, ReadInts(ckpt, *g, 1));
    t.weight_g_idx.assign(wide.begin(), wide.end());
  }
  auto w = UnpackCompressedTensors(t, group->group_size);
  if (!w.ok()) return TensorError(ckpt, module + ".weight_packed", w.status().message());
  if (!ValidGroups(w->g_idx, w->num_groups)) {
    return TensorError(ckpt, module + ".weight_g_idx", "has a group outside weight_scale's");
  }
  return *std::move(w);
}

}  // namespace

nlohmann::json QuantizationConfigOf(const nlohmann::json& config) {
  if (!config.is_object()) return nullptr;
  const auto it = config.find("quantization_config");
  return it == config.end() ? json(nullptr) : *it;
}

absl::StatusOr<CheckpointQuantization> ParseCheckpointQuantization(const json& qc) {
  CheckpointQuantization q;
  if (qc.is_null()) return q;
  if (!qc.is_object()) return absl::InvalidArgumentError("quantization_config is not an object");
  const auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("quantization_config: ", what));
  };
  const auto method_it = qc.find("quant_method");
  q.method_name = method_it != qc.end() && method_it->is_string() ? method_it->get<std::string>() : "";
  const std::string method = Lower(q.method_name);
  try {
    if (method == "gptq") {
      q.method = Method::kGptq;
      if (!qc.contains("bits") || !qc["bits"].is_number_integer()) return bad("gptq needs integer bits");
      q.bits = qc["bits"].get<int>();
      if (qc.contains("group_size") && qc["group_size"].is_number_integer()) {
        q.group_size = qc["group_size"].get<int>();
      }
      if (qc.contains("sym") && qc["sym"].is_boolean()) q.sym = qc["sym"].get<bool>();
      std::string format = "gptq";
      for (const char* key : {"checkpoint_format", "format"}) {
        if (qc.contains(key) && qc[key].is_string()) {
          format = Lower(qc[key].get<std::string>());
          break;
        }
      }
      if (format == "gptq_v2") {
        q.zero_format = GptqZeroFormat::kV2;
      } else if (format != "gptq") {
        // marlin / bitblas checkpoints repack qweight differently.
        q.method = Method::kUnsupported;
        q.method_name = absl::StrCat("gptq (checkpoint_format ", format, ")");
      }
      return q;
    }
    if (method == "compressed-tensors") {
      q.method = Method::kCompressedTensors;
      const std::string top_format =
          qc.contains("format") && qc["format"].is_string() ? qc["format"].get<std::string>() : "";
      if (!qc.contains("config_groups") || !qc["config_groups"].is_object()) {
        return q;  // sparsity only: every weight is stored dense
      }
      for (const auto& [name, group] : qc["config_groups"].items()) {
        CheckpointQuantization::CtGroup g;
        g.name = name;
        if (group.contains("targets") && group["targets"].is_array()) {
          for (const json& t : group["targets"]) {
            if (t.is_string()) g.targets.push_back(t.get<std::string>());
          }
        }
        g.format = group.contains("format") && group["format"].is_string()
                       ? group["format"].get<std::string>()
                       : top_format;
        const json weights = group.contains("weights") ? group["weights"] : json(nullptr);
        if (!weights.is_object()) continue;  // activation-only group
        if (!weights.contains("num_bits") || !weights["num_bits"].is_number_integer()) {
          return bad(absl::StrCat("config group ", name, " has no integer num_bits"));
        }
        g.num_bits = weights["num_bits"].get<int>();
        const std::string strategy = weights.contains("strategy") && weights["strategy"].is_string()
                                         ? weights["strategy"].get<std::string>()
                                         : "";
        if (strategy == "group" && weights.contains("group_size") &&
            weights["group_size"].is_number_integer()) {
          g.group_size = weights["group_size"].get<int>();
        }
        if (weights.contains("symmetric") && weights["symmetric"].is_boolean()) {
          g.symmetric = weights["symmetric"].get<bool>();
        }
        q.ct_groups.push_back(std::move(g));
      }
      return q;
    }
  } catch (const json::exception& e) {
    return bad(e.what());
  }
  q.method = Method::kUnsupported;
  return q;
}

absl::StatusOr<std::optional<QuantizedWeight>> ReadQuantizedWeight(
    const Checkpoint& checkpoint, const CheckpointQuantization& quantization,
    std::string_view module) {
  const std::string m(module);
  switch (quantization.method) {
    case Method::kGptq: return ReadGptq(checkpoint, quantization, m);
    case Method::kCompressedTensors: return ReadCompressedTensors(checkpoint, quantization, m);
    default: return std::nullopt;
  }
}

namespace {

// The quantized Linear behind `name`, or nullopt when `name` is to be read as a
// stored tensor (present, or absent and so NotFound from the checkpoint).
absl::StatusOr<std::optional<QuantizedWeight>> ResolveQuantized(
    const Checkpoint& checkpoint, const CheckpointQuantization& quantization,
    std::string_view name) {
  if (quantization.method == Method::kNone) return std::nullopt;
  if (auto dense = checkpoint.Find(name); dense.ok()) {
    // e.g. compressed-tensors' int-quantized keeps an INT8 "weight".
    if (IsIntegerDType((*dense)->dtype)) {
      return absl::UnimplementedError(absl::StrCat(
          "tensor '", Sv(name), "' in ", checkpoint.dir().string(), " is stored as ",
          Sv(DTypeName((*dense)->dtype)), " under quant_method '", quantization.method_name,
          "', which shrinkray cannot read"));
    }
    return std::nullopt;
  }
  constexpr std::string_view kWeight = ".weight";
  if (name.size() <= kWeight.size() || name.substr(name.size() - kWeight.size()) != kWeight) {
    return std::nullopt;
  }
  if (quantization.method == Method::kUnsupported) {
    return absl::UnimplementedError(absl::StrCat(
        "tensor '", Sv(name), "' in ", checkpoint.dir().string(), " is quantized with '",
        quantization.method_name,
        "', which shrinkray cannot read (gptq, gptq_v2 and compressed-tensors "
        "pack-quantized are supported)"));
  }
  return ReadQuantizedWeight(checkpoint, quantization,
                             name.substr(0, name.size() - kWeight.size()));
}

absl::Status DequantizeInto(const Checkpoint& checkpoint, std::string_view name,
                            const QuantizedWeight& w, std::span<float> out,
                            std::span<const int64_t> expected_shape) {
  const int64_t shape[2] = {w.rows, w.cols};
  if (!expected_shape.empty() && !std::ranges::equal(expected_shape, std::span(shape))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", Sv(name), "' in ", checkpoint.dir().string(), " has shape [", w.rows, ", ",
        w.cols, "] vs expected [", absl::StrJoin(expected_shape, ", "), "]"));
  }
  const size_t numel = static_cast<size_t>(w.rows) * w.cols;
  if (out.size() != numel) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", Sv(name), "' in ",
                                                   checkpoint.dir().string(), " has ", numel,
                                                   " elements but the output buffer holds ",
                                                   out.size()));
  }
  for (int r = 0; r < w.rows; ++r) {
    for (int c = 0; c < w.cols; ++c) out[static_cast<size_t>(r) * w.cols + c] = w.Dequantize(r, c);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ReadWeightF32Into(const Checkpoint& checkpoint,
                               const CheckpointQuantization& quantization, std::string_view name,
                               std::span<float> out, std::span<const int64_t> expected_shape) {
  SR_ASSIGN_OR_RETURN(std::optional<QuantizedWeight> w,
                      ResolveQuantized(checkpoint, quantization, name));
  if (!w.has_value()) return checkpoint.ReadF32Into(name, out, expected_shape);
  return DequantizeInto(checkpoint, name, *w, out, expected_shape);
}

absl::StatusOr<std::vector<float>> ReadWeightF32(const Checkpoint& checkpoint,
                                                 const CheckpointQuantization& quantization,
                                                 std::string_view name,
                                                 std::span<const int64_t> expected_shape) {
  SR_ASSIGN_OR_RETURN(std::optional<QuantizedWeight> w,
                      ResolveQuantized(checkpoint, quantization, name));
  if (!w.has_value()) return checkpoint.ReadF32(name, expected_shape);
  std::vector<float> out(static_cast<size_t>(w->rows) * w->cols);
  SR_RETURN_IF_ERROR(DequantizeInto(checkpoint, name, *w, out, expected_shape));
  return out;
}

}  // namespace shrinkray
