#include "core/io/model_writer.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/io/checkpoint.h"
#include "core/io/compressed_tensors_format.h"
#include "core/io/safetensors.h"
#include "core/io/shard_stream.h"
#include "core/io/dense_format.h"
#include "core/io/gptq_format.h"
#include "core/io/text_file.h"
#include "core/tensor/convert.h"
#include "core/util/status_macros.h"
#include "core/util/value_range.h"

namespace shrinkray {
namespace {

// Debian's abseil has its own absl::string_view, distinct from std's.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

using nlohmann::json;

// Read size when copying parked tensors into the shards.
constexpr uint64_t kScratchPieceBytes = uint64_t{8} << 20;
// Values converted at a time when encoding floats to a 16-bit dtype: the
// piece stays in the cache between its conversion and its write.
constexpr size_t kConvertPieceValues = size_t{1} << 18;

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

// Sparsity over the tensors added so far, for config.json's "shrinkray".
class SparsityTally {
 public:
  void Add(std::span<const CompressedTensorEntry> entries) {
    for (const CompressedTensorEntry& e : entries) {
      const double n = static_cast<double>(Numel(e.shape));
      total_ += n;
      if (e.sparsity <= 0) continue;
      any_ = true;
      zeros_ += e.sparsity * n;
      all_two_four_ = all_two_four_ && e.two_four;
      const std::string module = LinearModuleOf(e);
      modules_.push_back(module.empty() ? e.name : module);
    }
  }
  // Null when nothing was pruned.
  json ToJson() const {
    if (!any_) return nullptr;
    return {{"global_sparsity", total_ > 0 ? zeros_ / total_ : 0.0},
            {"sparsity_structure", all_two_four_ ? "2:4" : "unstructured"},
            {"modules", modules_}};
  }

 private:
  double zeros_ = 0, total_ = 0;
  bool any_ = false, all_two_four_ = true;
  json modules_ = json::array();
};

// Writes the folder's files besides the weights into `dir`.
absl::Status WriteFolderFiles(const std::filesystem::path& dir, const CompressedModelSpec& header,
                              OutputFormat format, const FormatOutput& output, json sparsity) {
  // config.json: the source's, with this output's quantization_config.
  json config = header.source_config.is_object() ? header.source_config : json::object();
  config.erase("quantization_config");
  config.erase("compression_config");
  config["torch_dtype"] = std::string(TorchDtypeName(header.dense_dtype));
  if (!output.quantization_config.is_null()) {
    config["quantization_config"] = output.quantization_config;
  }
  // What loaders do not read but a reader of the folder wants to know.
  json shrinkray = {{"format", std::string(OutputFormatName(format))}};
  if (!header.recipe_info.is_null()) shrinkray["recipe"] = header.recipe_info;
  if (!sparsity.is_null()) shrinkray["sparsity"] = std::move(sparsity);
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
  if (!header.source_dir.empty() && std::filesystem::is_directory(header.source_dir, ec)) {
    for (const auto& item : std::filesystem::directory_iterator(header.source_dir, ec)) {
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
          absl::StrCat("list ", header.source_dir.string(), ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

// Renames the complete `partial` folder to `target`. An existing `target`
// (--overwrite) is moved aside first, so that a failure leaves either the old
// model or the new one at `target`, never a mixture.
absl::Status CommitFolder(const std::filesystem::path& partial,
                          const std::filesystem::path& target) {
  std::error_code ec;
  if (!std::filesystem::exists(target, ec)) {
    std::filesystem::rename(partial, target, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("rename ", partial.string(), " to ", target.string(), ": ", ec.message()));
    }
    return absl::OkStatus();
  }
  const std::filesystem::path old = absl::StrCat(target.string(), ".old.", ::getpid());
  std::filesystem::remove_all(old, ec);
  std::filesystem::rename(target, old, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("move ", target.string(), " aside: ", ec.message()));
  }
  std::filesystem::rename(partial, target, ec);
  if (ec) {
    const absl::Status status = absl::InternalError(
        absl::StrCat("rename ", partial.string(), " to ", target.string(), ": ", ec.message()));
    std::error_code restore_ec;
    std::filesystem::rename(old, target, restore_ec);
    return status;
  }
  std::filesystem::remove_all(old, ec);
  return absl::OkStatus();
}

// Removes everything directly inside `dir` but the names in `keep`.
absl::Status RemoveAllBut(const std::filesystem::path& dir, const std::vector<std::string>& keep) {
  std::error_code ec;
  std::vector<std::filesystem::path> doomed;
  for (const auto& item : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = item.path().filename().string();
    if (std::find(keep.begin(), keep.end(), name) == keep.end()) doomed.push_back(item.path());
  }
  if (ec) return absl::InternalError(absl::StrCat("list ", dir.string(), ": ", ec.message()));
  for (const std::filesystem::path& path : doomed) {
    std::filesystem::remove_all(path, ec);
    if (ec) return absl::InternalError(absl::StrCat("remove ", path.string(), ": ", ec.message()));
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
  std::unique_ptr<FormatEncoder> encoder = MakeFormatEncoder(format, spec);
  SR_RETURN_IF_ERROR(encoder->Add(spec.tensors, [](const StreamedTensor&, const FactCondition&) {
    return absl::OkStatus();
  }));
  SR_ASSIGN_OR_RETURN(FormatOutput output, encoder->Finish());
  return std::move(output.fallbacks);
}

absl::Status WriteCompressedModel(const std::filesystem::path& out_dir,
                                  const CompressedModelSpec& spec, OutputFormat format,
                                  bool overwrite) {
  CompressedModelSpec header;
  header.source_dir = spec.source_dir;
  header.source_config = spec.source_config;
  header.dense_dtype = spec.dense_dtype;
  header.recipe_info = spec.recipe_info;
  SR_ASSIGN_OR_RETURN(std::unique_ptr<CompressedModelWriter> writer,
                      CompressedModelWriter::Open(out_dir, header, format, overwrite));
  SR_RETURN_IF_ERROR(writer->Add(spec.tensors));
  return writer->Finish().status();
}

// An encoded tensor that is part of the output only under some facts, parked
// in the scratch file until they are known (every other tensor goes straight
// into the shards).
struct ParkedTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t offset = 0;
  uint64_t nbytes = 0;
  FactCondition when;
};

struct CompressedModelWriter::State {
  std::filesystem::path target;
  std::filesystem::path partial;
  std::filesystem::path scratch_path;
  std::vector<std::string> keep;  // PartialFolderOptions::keep
  CompressedModelSpec header;
  OutputFormat format = OutputFormat::kDense;
  std::unique_ptr<FormatEncoder> encoder;
  std::unique_ptr<ShardStream> shards;
  std::ofstream scratch;  // opened for the first parked tensor
  uint64_t scratch_bytes = 0;
  std::vector<ParkedTensor> parked;
  SparsityTally sparsity;
  std::set<std::string> done_prefixes;  // fused groups of earlier Adds
  absl::Status failed;
  bool finished = false;

  absl::Status Take(const StreamedTensor& t, const FactCondition& when) {
    if (when.always()) return shards->Add(t);
    if (!scratch.is_open()) {
      scratch.open(scratch_path, std::ios::binary | std::ios::trunc);
      if (!scratch) return absl::InternalError(absl::StrCat("create ", scratch_path.string()));
    }
    SR_RETURN_IF_ERROR(WriteStreamedTensor(t, [&](std::span<const std::byte> bytes) {
      scratch.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
      if (!scratch) return absl::InternalError(absl::StrCat("write ", scratch_path.string()));
      return absl::OkStatus();
    }));
    parked.push_back({t.name, t.dtype, t.shape, scratch_bytes, t.nbytes, when});
    scratch_bytes += t.nbytes;
    return absl::OkStatus();
  }

  absl::Status Add(std::span<const CompressedTensorEntry> tensors) {
    std::set<std::string> prefixes;
    for (const CompressedTensorEntry& e : tensors) {
      std::string prefix = FusedGroupPrefix(LinearModuleOf(e));
      if (prefix.empty()) continue;
      if (done_prefixes.contains(prefix)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", e.name, "' comes after the other tensors of ", prefix,
            " were added; the tensors of a fused group must be added together"));
      }
      prefixes.insert(std::move(prefix));
    }
    SR_RETURN_IF_ERROR(encoder->Add(tensors, [this](const StreamedTensor& t, const FactCondition& when) {
      return Take(t, when);
    }));
    shards->StartWriteback();
    sparsity.Add(tensors);
    done_prefixes.merge(prefixes);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<DenseFallback>> Finish() {
    SR_ASSIGN_OR_RETURN(FormatOutput output, encoder->Finish());
    // The parked tensors whose facts hold join the last shard, a bounded
    // piece at a time from the scratch file.
    if (scratch.is_open()) {
      scratch.close();
      if (!scratch) return absl::InternalError(absl::StrCat("write ", scratch_path.string()));
      std::ifstream in(scratch_path, std::ios::binary);
      if (!in) return absl::InternalError(absl::StrCat("open ", scratch_path.string()));
      std::vector<char> piece;
      for (const ParkedTensor& p : parked) {
        if (!p.when.Holds(output.facts)) continue;
        auto copy = [this, &in, &piece, offset = p.offset, nbytes = p.nbytes](const ByteSink& sink) {
          in.seekg(static_cast<std::streamoff>(offset));
          for (uint64_t left = nbytes; left > 0;) {
            const uint64_t n = std::min(left, kScratchPieceBytes);
            piece.resize(n);
            if (!in.read(piece.data(), static_cast<std::streamsize>(n))) {
              return absl::DataLossError(absl::StrCat("read ", scratch_path.string()));
            }
            SR_RETURN_IF_ERROR(sink(std::as_bytes(std::span<const char>(piece))));
            left -= n;
          }
          return absl::OkStatus();
        };
        SR_RETURN_IF_ERROR(shards->Add({p.name, p.dtype, p.shape, p.nbytes, std::move(copy)}));
      }
      in.close();
      std::error_code ec;
      std::filesystem::remove(scratch_path, ec);
      if (ec) return absl::InternalError(absl::StrCat("remove ", scratch_path.string(), ": ", ec.message()));
    }
    SR_RETURN_IF_ERROR(shards->Finish());

    SR_RETURN_IF_ERROR(WriteFolderFiles(partial, header, format, output, sparsity.ToJson()));
    // A resumable run's checkpoint is not part of the output. Removed in the
    // order given (RunCompression's job.json first: without it the rest is
    // ignored), so a crash here leaves nothing that a resume would trust.
    std::error_code ec;
    for (const std::string& name : keep) {
      std::filesystem::remove_all(partial / name, ec);
      if (ec) return absl::InternalError(absl::StrCat("remove ", (partial / name).string(), ": ", ec.message()));
    }
    SR_RETURN_IF_ERROR(CommitFolder(partial, target));
    return std::move(output.fallbacks);
  }
};

CompressedModelWriter::CompressedModelWriter(std::unique_ptr<State> state)
    : state_(std::move(state)) {}

CompressedModelWriter::~CompressedModelWriter() {
  if (state_->finished) return;
  state_->scratch.close();
  if (!state_->keep.empty()) {
    // A resumable run's checkpoint stays for the next attempt; best effort.
    RemoveAllBut(state_->partial, state_->keep).IgnoreError();
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(state_->partial, ec);
}

std::filesystem::path PartialFolderOf(const std::filesystem::path& out_dir) {
  std::filesystem::path target = out_dir;
  if (!target.has_filename()) target = target.parent_path();  // "out/" -> "out"
  return target.string() + ".partial";
}

absl::StatusOr<std::unique_ptr<CompressedModelWriter>> CompressedModelWriter::Open(
    const std::filesystem::path& out_dir, const CompressedModelSpec& header, OutputFormat format,
    bool overwrite, const PartialFolderOptions& partial) {
  if (out_dir.empty()) return absl::InvalidArgumentError("output folder is empty");
  if (!header.tensors.empty()) {
    return absl::InvalidArgumentError("the writer's header must hold no tensors; Add them");
  }
  std::filesystem::path target = out_dir;
  if (!target.has_filename()) target = target.parent_path();  // "out/" -> "out"
  std::error_code ec;
  if (std::filesystem::exists(target, ec) && !overwrite) {
    return absl::AlreadyExistsError(
        absl::StrCat("output folder ", target.string(), " exists; pass --overwrite"));
  }
  auto state = std::make_unique<State>();
  state->target = target;
  state->partial = PartialFolderOf(target);
  state->keep = partial.keep;
  state->header = header;
  state->format = format;
  state->encoder = MakeFormatEncoder(format, header);
  // A crashed earlier run's files (but for a resumable run's checkpoint).
  if (state->keep.empty() || !std::filesystem::is_directory(state->partial, ec)) {
    std::filesystem::remove_all(state->partial, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("remove ", state->partial.string(), ": ", ec.message()));
    }
  } else {
    SR_RETURN_IF_ERROR(RemoveAllBut(state->partial, state->keep));
  }
  std::filesystem::create_directories(state->partial, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("create ", state->partial.string(), ": ", ec.message()));
  }
  // From here on the writer owns the folder: an early return removes it.
  std::unique_ptr<CompressedModelWriter> writer(new CompressedModelWriter(std::move(state)));
  State& s = *writer->state_;
  s.scratch_path = s.partial / ".shrinkray-tensors.scratch";
  SR_ASSIGN_OR_RETURN(s.shards, ShardStream::Open(s.partial));
  return writer;
}

absl::Status CompressedModelWriter::Add(std::span<const CompressedTensorEntry> tensors) {
  State& s = *state_;
  if (s.finished) return absl::FailedPreconditionError("the model was already written");
  SR_RETURN_IF_ERROR(s.failed);
  s.failed = s.Add(tensors);
  return s.failed;
}

absl::StatusOr<std::vector<DenseFallback>> CompressedModelWriter::Finish() {
  State& s = *state_;
  if (s.finished) return absl::FailedPreconditionError("the model was already written");
  SR_RETURN_IF_ERROR(s.failed);
  absl::StatusOr<std::vector<DenseFallback>> fallbacks = s.Finish();
  if (!fallbacks.ok()) {
    s.failed = fallbacks.status();
    return fallbacks;
  }
  s.finished = true;
  return fallbacks;
}

// ---- Shared helpers.

std::unique_ptr<FormatEncoder> MakeFormatEncoder(OutputFormat format,
                                                 const CompressedModelSpec& header) {
  switch (format) {
    case OutputFormat::kGptq: return MakeGptqEncoder(header);
    case OutputFormat::kCompressedTensors: return MakeCompressedTensorsEncoder(header);
    case OutputFormat::kDense: break;
  }
  return MakeDenseEncoder(header);
}

bool FactCondition::Holds(const ModelFacts& facts) const {
  return (!zero_points_mid.has_value() || *zero_points_mid == facts.zero_points_mid) &&
         (!act_order.has_value() || *act_order == facts.act_order);
}

std::optional<FactCondition> BothConditions(const FactCondition& a, const FactCondition& b) {
  auto merge = [](std::optional<bool> x, std::optional<bool> y, bool* clash) {
    if (x.has_value() && y.has_value() && *x != *y) *clash = true;
    return x.has_value() ? x : y;
  };
  bool clash = false;
  FactCondition both{merge(a.zero_points_mid, b.zero_points_mid, &clash),
                     merge(a.act_order, b.act_order, &clash)};
  if (clash) return std::nullopt;
  return both;
}

namespace {
// EncodeFloats' checks, for `count` values.
absl::Status CheckFloatEncoding(const std::string& name, const std::vector<int64_t>& shape,
                                size_t count, DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("dense dtype ", Sv(DTypeName(dtype)),
                                                   " is not F32, F16 or BF16"));
  }
  if (Numel(shape) != static_cast<int64_t>(count)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has ", count,
                                                   " values for ", Numel(shape), " elements"));
  }
  return absl::OkStatus();
}

// values[0, n) converted to `dtype` in `piece` (grown as needed) and handed
// to `sink`: one step of a piecewise float encoding.
absl::Status SinkConverted(const float* values, size_t n, DType dtype, std::vector<std::byte>& piece,
                           const ByteSink& sink) {
  piece.resize(std::max(piece.size(), n * DTypeSize(dtype)));
  SR_RETURN_IF_ERROR(ConvertFromF32(piece.data(), dtype, values, n));
  return sink(std::span<const std::byte>(piece.data(), n * DTypeSize(dtype)));
}
}  // namespace

absl::StatusOr<StreamedTensor> EncodeFloats(std::string name, std::vector<int64_t> shape,
                                            std::span<const float> values, DType dtype) {
  SR_RETURN_IF_ERROR(CheckFloatEncoding(name, shape, values.size(), dtype));
  const uint64_t nbytes = values.size() * DTypeSize(dtype);
  if (dtype == DType::kF32) {
    return EncodeBytes(std::move(name), dtype, std::move(shape), std::as_bytes(values));
  }
  auto write = [values, dtype](const ByteSink& sink) -> absl::Status {
    std::vector<std::byte> piece;
    for (size_t begin = 0; begin < values.size(); begin += kConvertPieceValues) {
      const size_t n = std::min(kConvertPieceValues, values.size() - begin);
      SR_RETURN_IF_ERROR(SinkConverted(values.data() + begin, n, dtype, piece, sink));
    }
    return absl::OkStatus();
  };
  return StreamedTensor{std::move(name), dtype, std::move(shape), nbytes, std::move(write)};
}

StreamedTensor EncodeBytes(std::string name, DType dtype, std::vector<int64_t> shape,
                           std::span<const std::byte> bytes) {
  return {std::move(name), dtype, std::move(shape), bytes.size(),
          [bytes](const ByteSink& sink) { return sink(bytes); }};
}

StreamedTensor EncodeInt32(std::string name, std::vector<int64_t> shape,
                           std::span<const int32_t> values) {
  return EncodeBytes(std::move(name), DType::kI32, std::move(shape), std::as_bytes(values));
}

StreamedTensor EncodeInt64(std::string name, std::vector<int64_t> shape,
                           std::span<const int64_t> values) {
  return EncodeBytes(std::move(name), DType::kI64, std::move(shape), std::as_bytes(values));
}

absl::StatusOr<StreamedTensor> EncodeDense(const CompressedTensorEntry& entry, DType dtype) {
  if (!entry.values.empty() || !entry.quantized.has_value()) {
    return EncodeFloats(entry.name, entry.shape, entry.values, dtype);
  }
  const QuantizedWeight& w = *entry.quantized;
  const size_t count = static_cast<size_t>(w.rows) * w.cols;
  SR_RETURN_IF_ERROR(CheckFloatEncoding(entry.name, entry.shape, count, dtype));
  const size_t rows_per_piece = std::max<size_t>(1, kConvertPieceValues / w.cols);
  auto write = [&w, dtype, rows_per_piece](const ByteSink& sink) -> absl::Status {
    std::vector<float> values(std::min<size_t>(rows_per_piece, w.rows) * w.cols);
    std::vector<std::byte> piece;
    for (size_t r0 = 0; r0 < static_cast<size_t>(w.rows); r0 += rows_per_piece) {
      const size_t rows = std::min(rows_per_piece, w.rows - r0);
      for (size_t r = 0; r < rows; ++r) {
        for (int c = 0; c < w.cols; ++c) values[r * w.cols + c] = w.Dequantize(static_cast<int>(r0 + r), c);
      }
      SR_RETURN_IF_ERROR(SinkConverted(values.data(), rows * w.cols, dtype, piece, sink));
    }
    return absl::OkStatus();
  };
  return StreamedTensor{entry.name, dtype, entry.shape, count * DTypeSize(dtype), std::move(write)};
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
  if (const std::optional<size_t> i = FirstOutOfRange(w.codes, 0, maxq)) {
    return bad(absl::StrCat("code ", static_cast<int>(w.codes[*i]), " at ", *i, " outside [0, ", maxq, "]"));
  }
  if (const std::optional<size_t> i = FirstOutOfRange(w.zeros, 0, maxq)) {
    return bad(absl::StrCat("zero point ", w.zeros[*i], " at ", *i, " outside [0, ", maxq, "]"));
  }
  for (int c = 0; c < w.cols; ++c) {
    if (w.g_idx[c] < 0 || w.g_idx[c] >= w.num_groups) {
      return bad(absl::StrCat("g_idx[", c, "] = ", w.g_idx[c], " outside [0, ", w.num_groups, ")"));
    }
  }
  return absl::OkStatus();
}

std::string FusedGroupPrefix(std::string_view module) {
  std::string proj;
  std::string prefix = LayerPrefixAndProj(module, &proj);
  return FusedSiblings(proj).empty() ? std::string() : prefix;
}

bool ZeroPointsMid(const QuantizedWeight& w) {
  const int32_t mid = 1 << (w.bits - 1);
  return std::all_of(w.zeros.begin(), w.zeros.end(), [&](int32_t z) { return z == mid; });
}

bool GIdxPermuted(const QuantizedWeight& w) {
  for (int c = 0; c < w.cols; ++c) {
    if (w.g_idx[c] != (w.group_size > 0 ? c / w.group_size : 0)) return true;
  }
  return false;
}

absl::Status ValidateQuantizedEntries(std::span<const CompressedTensorEntry> entries,
                                      std::set<std::string>* names) {
  for (const CompressedTensorEntry& e : entries) {
    if (!names->insert(e.name).second) {
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

absl::Status MergeUniformScheme(std::span<const CompressedTensorEntry> entries,
                                std::string_view format_name, std::set<std::string>* names,
                                std::optional<QuantScheme>* scheme) {
  SR_RETURN_IF_ERROR(ValidateQuantizedEntries(entries, names));
  for (const CompressedTensorEntry& e : entries) {
    if (!e.quantized.has_value()) continue;
    const QuantizedWeight& w = *e.quantized;
    const bool act_order = GIdxPermuted(w);
    if (!scheme->has_value()) {
      *scheme = QuantScheme{w.bits, w.group_size, w.sym, act_order};
      continue;
    }
    QuantScheme& s = **scheme;
    if (w.bits != s.bits || w.group_size != s.group_size || w.sym != s.sym) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", e.name, "' is quantized with bits ", w.bits, ", group_size ", w.group_size,
          ", sym ", w.sym, " but others with bits ", s.bits, ", group_size ", s.group_size,
          ", sym ", s.sym, "; mixed schemes cannot be written in ", Sv(format_name),
          "; use --format dense"));
    }
    s.act_order = s.act_order || act_order;
  }
  return absl::OkStatus();
}

std::vector<DenseFallback> ExtendToFusedSiblings(std::span<const CompressedTensorEntry> entries,
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
  for (const CompressedTensorEntry& e : entries) {
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
