#include "core/io/model_writer.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/io/checkpoint.h"
#include "core/io/compressed_tensors_format.h"
#include "core/io/dense_format.h"
#include "core/io/gptq_format.h"
#include "core/io/text_file.h"
#include "core/tensor/convert.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

// Debian's abseil has its own absl::string_view, distinct from std's.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

using nlohmann::json;

constexpr uint64_t kShardBytes = uint64_t{4} << 30;  // HF's default max_shard_size is 5GB

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string_view TorchDtypeName(DType dtype) {
  switch (dtype) {
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
    default: return "float32";
  }
}

// The files besides the weights that make the folder a loadable model.
bool IsCopiedSourceFile(const std::string& name) {
  return name.rfind("tokenizer", 0) == 0 || name.rfind("chat_template", 0) == 0 ||
         name == "generation_config.json" || name == "special_tokens_map.json";
}

std::string DumpJson(const json& j) {
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

// Sparsity of the spec's tensors: null when nothing was pruned.
json SparsitySummary(const CompressedModelSpec& spec) {
  double zeros = 0, total = 0;
  bool any = false, all_two_four = true;
  json modules = json::array();
  for (const CompressedTensorEntry& e : spec.tensors) {
    const double n = static_cast<double>(Numel(e.shape));
    total += n;
    if (e.sparsity <= 0) continue;
    any = true;
    zeros += e.sparsity * n;
    all_two_four = all_two_four && e.two_four;
    const std::string module = LinearModuleOf(e);
    modules.push_back(module.empty() ? e.name : module);
  }
  if (!any) return nullptr;
  return {{"global_sparsity", total > 0 ? zeros / total : 0.0},
          {"sparsity_structure", all_two_four ? "2:4" : "unstructured"},
          {"modules", std::move(modules)}};
}

absl::StatusOr<FormatOutput> BuildOutput(const CompressedModelSpec& spec, OutputFormat format) {
  switch (format) {
    case OutputFormat::kDense: return BuildDenseOutput(spec);
    case OutputFormat::kGptq: return BuildGptqOutput(spec);
    case OutputFormat::kCompressedTensors: return BuildCompressedTensorsOutput(spec);
  }
  return absl::InvalidArgumentError("unknown output format");
}

// Writes the folder's contents into `dir` (which exists and is empty).
absl::Status WriteFolder(const std::filesystem::path& dir, const CompressedModelSpec& spec,
                         OutputFormat format, FormatOutput output) {
  // Weights.
  std::vector<TensorToWrite> to_write;
  to_write.reserve(output.tensors.size());
  uint64_t total_bytes = 0;
  for (const OwnedTensor& t : output.tensors) {
    to_write.push_back({t.name, t.dtype, t.shape, std::span<const std::byte>(t.data)});
    total_bytes += t.data.size();
  }
  const int num_shards = static_cast<int>(std::clamp<uint64_t>(
      (total_bytes + kShardBytes - 1) / kShardBytes, 1, std::max<size_t>(1, to_write.size())));
  SR_RETURN_IF_ERROR(WriteCheckpoint(dir, to_write, num_shards));

  // config.json: the source's, with this output's quantization_config.
  json config = spec.source_config.is_object() ? spec.source_config : json::object();
  config.erase("quantization_config");
  config.erase("compression_config");
  config["torch_dtype"] = std::string(TorchDtypeName(spec.dense_dtype));
  if (!output.quantization_config.is_null()) {
    config["quantization_config"] = output.quantization_config;
  }
  // What loaders do not read but a reader of the folder wants to know.
  json shrinkray = {{"format", std::string(OutputFormatName(format))}};
  if (!spec.recipe_info.is_null()) shrinkray["recipe"] = spec.recipe_info;
  if (json sparsity = SparsitySummary(spec); !sparsity.is_null()) {
    shrinkray["sparsity"] = std::move(sparsity);
  }
  if (!output.fallbacks.empty()) {
    json fallbacks = json::array();
    for (const DenseFallback& f : output.fallbacks) {
      fallbacks.push_back({{"module", f.module}, {"reason", f.reason}});
    }
    shrinkray["kept_dense"] = std::move(fallbacks);
  }
  config["shrinkray"] = std::move(shrinkray);
  SR_RETURN_IF_ERROR(WriteTextFile(dir / "config.json", DumpJson(config)));
  if (!output.quantize_config.is_null()) {
    SR_RETURN_IF_ERROR(
        WriteTextFile(dir / "quantize_config.json", DumpJson(output.quantize_config)));
  }

  // Tokenizer and generation settings, so the folder is a complete model.
  std::error_code ec;
  if (!spec.source_dir.empty() && std::filesystem::is_directory(spec.source_dir, ec)) {
    for (const auto& item : std::filesystem::directory_iterator(spec.source_dir, ec)) {
      const std::string name = item.path().filename().string();
      if (!item.is_regular_file(ec) || !IsCopiedSourceFile(name)) continue;
      std::filesystem::copy_file(item.path(), dir / name,
                                 std::filesystem::copy_options::overwrite_existing, ec);
      if (ec) {
        return absl::InternalError(
            absl::StrCat("copy ", item.path().string(), " to ", dir.string(), ": ", ec.message()));
      }
    }
    if (ec) {
      return absl::InternalError(
          absl::StrCat("list ", spec.source_dir.string(), ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

std::string LayerPrefixAndProj(std::string_view module, std::string* proj) {
  const size_t dot = module.rfind('.');
  if (dot == std::string_view::npos) return "";
  *proj = std::string(module.substr(dot + 1));
  return std::string(module.substr(0, dot + 1));
}

// The projections vLLM fuses with `proj` (itself included), or empty.
std::vector<std::string_view> FusedSiblings(std::string_view proj) {
  if (proj == "q_proj" || proj == "k_proj" || proj == "v_proj") {
    return {"q_proj", "k_proj", "v_proj"};
  }
  if (proj == "gate_proj" || proj == "up_proj") return {"gate_proj", "up_proj"};
  return {};
}

}  // namespace

absl::StatusOr<OutputFormat> ParseOutputFormat(std::string_view name) {
  std::string lower(name);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "dense") return OutputFormat::kDense;
  if (lower == "gptq") return OutputFormat::kGptq;
  if (lower == "compressed-tensors" || lower == "compressed_tensors" || lower == "ct") {
    return OutputFormat::kCompressedTensors;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown output format '", Sv(name), "'; expected dense, gptq or compressed-tensors"));
}

std::string_view OutputFormatName(OutputFormat format) {
  switch (format) {
    case OutputFormat::kDense: return "dense";
    case OutputFormat::kGptq: return "gptq";
    case OutputFormat::kCompressedTensors: return "compressed-tensors";
  }
  return "dense";
}

absl::StatusOr<std::vector<DenseFallback>> PlanDenseFallbacks(const CompressedModelSpec& spec,
                                                              OutputFormat format) {
  SR_ASSIGN_OR_RETURN(FormatOutput output, BuildOutput(spec, format));
  return std::move(output.fallbacks);
}

absl::Status WriteCompressedModel(const std::filesystem::path& out_dir,
                                  const CompressedModelSpec& spec, OutputFormat format,
                                  bool overwrite) {
  if (out_dir.empty()) return absl::InvalidArgumentError("output folder is empty");
  std::filesystem::path target = out_dir;
  if (!target.has_filename()) target = target.parent_path();  // "out/" -> "out"
  std::error_code ec;
  if (std::filesystem::exists(target, ec) && !overwrite) {
    return absl::AlreadyExistsError(
        absl::StrCat("output folder ", target.string(), " exists; pass --overwrite"));
  }
  // Everything that can fail on the spec fails before the disk is touched.
  SR_ASSIGN_OR_RETURN(FormatOutput output, BuildOutput(spec, format));

  const std::filesystem::path partial = target.string() + ".partial";
  std::filesystem::remove_all(partial, ec);  // a crashed earlier run's
  if (ec) return absl::InternalError(absl::StrCat("remove ", partial.string(), ": ", ec.message()));
  std::filesystem::create_directories(partial, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", partial.string(), ": ", ec.message()));
  absl::Status status = WriteFolder(partial, spec, format, std::move(output));
  if (status.ok() && std::filesystem::exists(target, ec)) {
    // --overwrite: move the old folder aside first, so that a failure leaves
    // either the old model or the new one at `target`, never a mixture.
    const std::filesystem::path old = absl::StrCat(target.string(), ".old.", ::getpid());
    std::filesystem::remove_all(old, ec);
    std::filesystem::rename(target, old, ec);
    if (ec) {
      status = absl::InternalError(absl::StrCat("move ", target.string(), " aside: ", ec.message()));
    } else {
      std::filesystem::rename(partial, target, ec);
      if (ec) {
        status = absl::InternalError(
            absl::StrCat("rename ", partial.string(), " to ", target.string(), ": ", ec.message()));
        std::error_code restore_ec;
        std::filesystem::rename(old, target, restore_ec);
      } else {
        std::filesystem::remove_all(old, ec);
      }
    }
  } else if (status.ok()) {
    std::filesystem::rename(partial, target, ec);
    if (ec) {
      status = absl::InternalError(
          absl::StrCat("rename ", partial.string(), " to ", target.string(), ": ", ec.message()));
    }
  }
  if (!status.ok()) {
    std::error_code cleanup_ec;
    std::filesystem::remove_all(partial, cleanup_ec);
  }
  return status;
}

// ---- Shared helpers.

absl::StatusOr<OwnedTensor> EncodeFloats(std::string name, std::vector<int64_t> shape,
                                         std::span<const float> values, DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("dense dtype ", Sv(DTypeName(dtype)),
                                                   " is not F32, F16 or BF16"));
  }
  if (Numel(shape) != static_cast<int64_t>(values.size())) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has ", values.size(),
                                                   " values for ", Numel(shape), " elements"));
  }
  OwnedTensor t{std::move(name), dtype, std::move(shape), {}};
  t.data.resize(values.size() * DTypeSize(dtype));
  SR_RETURN_IF_ERROR(ConvertFromF32(t.data.data(), dtype, values.data(), values.size()));
  return t;
}

OwnedTensor EncodeInt32(std::string name, std::vector<int64_t> shape,
                        std::span<const int32_t> values) {
  OwnedTensor t{std::move(name), DType::kI32, std::move(shape), {}};
  t.data.resize(values.size_bytes());
  if (!values.empty()) std::memcpy(t.data.data(), values.data(), values.size_bytes());
  return t;
}

OwnedTensor EncodeInt64(std::string name, std::vector<int64_t> shape,
                        std::span<const int64_t> values) {
  OwnedTensor t{std::move(name), DType::kI64, std::move(shape), {}};
  t.data.resize(values.size_bytes());
  if (!values.empty()) std::memcpy(t.data.data(), values.data(), values.size_bytes());
  return t;
}

absl::StatusOr<OwnedTensor> EncodeDense(const CompressedTensorEntry& entry, DType dtype) {
  if (!entry.values.empty() || !entry.quantized.has_value()) {
    return EncodeFloats(entry.name, entry.shape, entry.values, dtype);
  }
  const QuantizedWeight& w = *entry.quantized;
  std::vector<float> values(static_cast<size_t>(w.rows) * w.cols);
  for (int r = 0; r < w.rows; ++r) {
    for (int c = 0; c < w.cols; ++c) values[static_cast<size_t>(r) * w.cols + c] = w.Dequantize(r, c);
  }
  return EncodeFloats(entry.name, entry.shape, values, dtype);
}

std::string LinearModuleOf(const CompressedTensorEntry& entry) {
  constexpr std::string_view kWeight = ".weight";
  if (entry.shape.size() != 2 || !EndsWith(entry.name, kWeight)) return "";
  if (entry.name.find("embed_tokens") != std::string::npos) return "";
  return entry.name.substr(0, entry.name.size() - kWeight.size());
}

absl::Status ValidateQuantizedWeight(const QuantizedWeight& w, std::string_view name) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("quantized weight '", Sv(name), "': ", what));
  };
  if (w.rows <= 0 || w.cols <= 0) return bad(absl::StrCat("shape ", w.rows, "x", w.cols));
  if (w.bits < 1 || w.bits > 16) return bad(absl::StrCat("bits ", w.bits));
  if (w.num_groups < 1 || w.num_groups > w.cols) return bad(absl::StrCat("num_groups ", w.num_groups));
  const size_t rc = static_cast<size_t>(w.rows) * w.cols;
  const size_t gr = static_cast<size_t>(w.num_groups) * w.rows;
  if (w.codes.size() != rc || w.scales.size() != gr || w.zeros.size() != gr ||
      w.g_idx.size() != static_cast<size_t>(w.cols)) {
    return bad(absl::StrCat("sizes codes ", w.codes.size(), " scales ", w.scales.size(), " zeros ",
                            w.zeros.size(), " g_idx ", w.g_idx.size(), " for ", w.rows, "x", w.cols,
                            " with ", w.num_groups, " groups"));
  }
  const int32_t maxq = (1 << w.bits) - 1;
  for (size_t i = 0; i < rc; ++i) {
    if (w.codes[i] < 0 || w.codes[i] > maxq) {
      return bad(absl::StrCat("code ", w.codes[i], " at ", i, " outside [0, ", maxq, "]"));
    }
  }
  for (size_t i = 0; i < gr; ++i) {
    if (w.zeros[i] < 0 || w.zeros[i] > maxq) {
      return bad(absl::StrCat("zero point ", w.zeros[i], " at ", i, " outside [0, ", maxq, "]"));
    }
  }
  for (int c = 0; c < w.cols; ++c) {
    if (w.g_idx[c] < 0 || w.g_idx[c] >= w.num_groups) {
      return bad(absl::StrCat("g_idx[", c, "] = ", w.g_idx[c], " outside [0, ", w.num_groups, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateQuantizedEntries(const CompressedModelSpec& spec) {
  std::set<std::string> names;
  for (const CompressedTensorEntry& e : spec.tensors) {
    if (!names.insert(e.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", e.name, "' appears twice"));
    }
    if (!e.quantized.has_value()) continue;
    if (LinearModuleOf(e).empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", e.name, "' is quantized but is not a Linear weight"));
    }
    const QuantizedWeight& w = *e.quantized;
    if (e.shape[0] != w.rows || e.shape[1] != w.cols) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", e.name, "' has shape [",
                                                     absl::StrJoin(e.shape, ", "),
                                                     "] but its quantized weight is ", w.rows, "x",
                                                     w.cols));
    }
    SR_RETURN_IF_ERROR(ValidateQuantizedWeight(w, e.name));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<QuantScheme>> UniformScheme(const CompressedModelSpec& spec,
                                                         std::string_view format_name) {
  SR_RETURN_IF_ERROR(ValidateQuantizedEntries(spec));
  std::optional<QuantScheme> scheme;
  for (const CompressedTensorEntry& e : spec.tensors) {
    if (!e.quantized.has_value()) continue;
    const QuantizedWeight& w = *e.quantized;
    bool act_order = false;
    for (int c = 0; c < w.cols && !act_order; ++c) {
      const int expected = w.group_size > 0 ? c / w.group_size : 0;
      act_order = w.g_idx[c] != expected;
    }
    if (!scheme.has_value()) {
      scheme = QuantScheme{w.bits, w.group_size, w.sym, act_order};
      continue;
    }
    if (w.bits != scheme->bits || w.group_size != scheme->group_size || w.sym != scheme->sym) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", e.name, "' is quantized with bits ", w.bits, ", group_size ", w.group_size,
          ", sym ", w.sym, " but others with bits ", scheme->bits, ", group_size ",
          scheme->group_size, ", sym ", scheme->sym, "; mixed schemes cannot be written in ",
          Sv(format_name), "; use --format dense"));
    }
    scheme->act_order = scheme->act_order || act_order;
  }
  return scheme;
}

std::vector<DenseFallback> ExtendToFusedSiblings(const CompressedModelSpec& spec,
                                                 const std::vector<DenseFallback>& direct) {
  std::map<std::string, std::string> reasons;  // module -> reason
  for (const DenseFallback& f : direct) reasons.emplace(f.module, f.reason);
  for (const DenseFallback& f : direct) {
    std::string proj;
    const std::string prefix = LayerPrefixAndProj(f.module, &proj);
    for (std::string_view sibling : FusedSiblings(proj)) {
      const std::string module = absl::StrCat(prefix, Sv(sibling));
      reasons.emplace(module, absl::StrCat("vLLM fuses it with ", f.module,
                                           ", which is kept dense (", f.reason, ")"));
    }
  }
  std::vector<DenseFallback> out;
  for (const CompressedTensorEntry& e : spec.tensors) {
    if (!e.quantized.has_value()) continue;
    const std::string module = LinearModuleOf(e);
    if (auto it = reasons.find(module); it != reasons.end()) out.push_back({module, it->second});
  }
  return out;
}

absl::Status UnpackableBitsError(int bits, std::string_view format_name) {
  return absl::InvalidArgumentError(absl::StrCat("bits ", bits, " cannot be packed in ",
                                                 Sv(format_name), "; use --format dense"));
}

}  // namespace shrinkray
