#include "core/io/gptq_format.h"

#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/tensor/convert.h"
#include "core/util/status_macros.h"
#include "core/util/value_range.h"
#include "nlohmann/json.hpp"

namespace shrinkray {
namespace {

using nlohmann::json;

constexpr char kFormat[] = "gptq";

absl::Status CheckSize(size_t got, size_t want, const char* what) {
  if (got == want) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " has ", got, " values, expected ", want));
}

// Writes the `bits`-wide value `v` at bit offset `pos` of a little-endian
// stream of 32-bit words, word w living at words[w * stride + column].
void PutBits(std::vector<uint32_t>& words, size_t stride, size_t column, uint64_t pos, int bits,
             uint32_t v) {
  const size_t w = pos / 32;
  const int shift = static_cast<int>(pos % 32);
  words[w * stride + column] |= v << shift;
  if (shift + bits > 32) words[(w + 1) * stride + column] |= v >> (32 - shift);
}

uint32_t GetBits(std::span<const int32_t> words, size_t stride, size_t column, uint64_t pos,
                 int bits) {
  const size_t w = pos / 32;
  const int shift = static_cast<int>(pos % 32);
  uint32_t v = static_cast<uint32_t>(words[w * stride + column]) >> shift;
  if (shift + bits > 32) v |= static_cast<uint32_t>(words[(w + 1) * stride + column]) << (32 - shift);
  return v & ((uint32_t{1} << bits) - 1);
}

std::vector<int32_t> ToInt32(const std::vector<uint32_t>& words) {
  return std::vector<int32_t>(words.begin(), words.end());  // modular in C++20
}

absl::Status CheckStreamLength(int64_t count, int bits, const char* dim) {
  if ((count * bits) % 32 == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(dim, " ", count, " * ", bits,
                                                 " bits is not a multiple of 32, so GPTQ cannot "
                                                 "pack it; use --format dense"));
}

// A regular expression matching `module` and the fused vLLM layer it belongs
// to, for GPTQModel's / vLLM's "dynamic" rules (both use re.match).
std::string DynamicPattern(const std::string& module) {
  std::string escaped;
  for (char c : module) {
    if (std::string_view(".^$|?*+()[]{}\\").find(c) != std::string_view::npos) escaped += '\\';
    escaped += c;
  }
  const size_t dot = escaped.rfind("\\.");
  const std::string prefix = escaped.substr(0, dot + 2);
  const std::string proj = escaped.substr(dot + 2);
  std::string fused;
  if (proj == "q_proj" || proj == "k_proj" || proj == "v_proj") fused = "qkv_proj";
  if (proj == "gate_proj" || proj == "up_proj") fused = "gate_up_proj";
  if (fused.empty()) return absl::StrCat("-:^", escaped, "$");
  return absl::StrCat("-:^", prefix, "(?:", proj, "|", fused, ")$");
}

template <typename T>
T RecipeValue(const json& recipe, const char* key, T fallback) {
  if (!recipe.is_object()) return fallback;
  const auto it = recipe.find(key);
  if (it == recipe.end() || it->is_null()) return fallback;
  if constexpr (std::is_same_v<T, bool>) {
    return it->is_boolean() ? it->template get<bool>() : fallback;
  } else {
    return it->is_number() ? it->template get<T>() : fallback;
  }
}

// qweight from codes already checked (size, range, bits, cols * bits % 32).
std::vector<int32_t> PackQweightWords(std::span<const uint8_t> codes, int rows, int cols, int bits) {
  const size_t words_per_column = static_cast<size_t>(cols) * bits / 32;
  if (32 % bits == 0) {
    // Whole codes per word (2, 4, 8 bits): word k of row r holds codes
    // [k * per_word, (k + 1) * per_word) of the row, the first in the low bits.
    std::vector<int32_t> qweight(words_per_column * rows);
    const int per_word = 32 / bits;
    for (int r = 0; r < rows; ++r) {
      const uint8_t* row = codes.data() + static_cast<size_t>(r) * cols;
      for (size_t k = 0; k < words_per_column; ++k) {
        uint32_t word = 0;
        for (int j = 0; j < per_word; ++j) {
          word |= static_cast<uint32_t>(row[k * per_word + j]) << (j * bits);
        }
        qweight[k * rows + r] = static_cast<int32_t>(word);  // modular in C++20
      }
    }
    return qweight;
  }
  std::vector<uint32_t> words(words_per_column * rows, 0);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      PutBits(words, rows, r, static_cast<uint64_t>(c) * bits, bits,
              static_cast<uint32_t>(codes[static_cast<size_t>(r) * cols + c]));
    }
  }
  return ToInt32(words);
}

}  // namespace

std::string_view GptqCheckpointFormatName(GptqZeroFormat format) {
  return format == GptqZeroFormat::kV1 ? "gptq" : "gptq_v2";
}

absl::Status CheckGptqBits(int bits) {
  if (bits == 2 || bits == 3 || bits == 4 || bits == 8) return absl::OkStatus();
  return UnpackableBitsError(bits, kFormat);
}

absl::StatusOr<std::vector<int32_t>> PackGptqQweight(std::span<const uint8_t> codes, int rows,
                                                     int cols, int bits) {
  SR_RETURN_IF_ERROR(CheckGptqBits(bits));
  SR_RETURN_IF_ERROR(CheckStreamLength(cols, bits, "in_features"));
  SR_RETURN_IF_ERROR(CheckSize(codes.size(), static_cast<size_t>(rows) * cols, "codes"));
  const int32_t maxq = (1 << bits) - 1;
  if (const std::optional<size_t> i = FirstOutOfRange(codes, 0, maxq)) {
    return absl::InvalidArgumentError(absl::StrCat("code ", static_cast<int>(codes[*i]), " at [", *i / cols, ", ", *i % cols,
                                                   "] outside [0, ", maxq, "]"));
  }
  return PackQweightWords(codes, rows, cols, bits);
}

absl::StatusOr<std::vector<uint8_t>> UnpackGptqQweight(std::span<const int32_t> qweight, int rows,
                                                       int cols, int bits) {
  SR_RETURN_IF_ERROR(CheckGptqBits(bits));
  SR_RETURN_IF_ERROR(CheckStreamLength(cols, bits, "in_features"));
  SR_RETURN_IF_ERROR(
      CheckSize(qweight.size(), static_cast<size_t>(cols) * bits / 32 * rows, "qweight"));
  std::vector<uint8_t> codes(static_cast<size_t>(rows) * cols);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      codes[static_cast<size_t>(r) * cols + c] =
          static_cast<uint8_t>(GetBits(qweight, rows, r, static_cast<uint64_t>(c) * bits, bits));
    }
  }
  return codes;
}

absl::StatusOr<std::vector<int32_t>> PackGptqQzeros(std::span<const int32_t> zeros, int groups,
                                                    int rows, int bits, GptqZeroFormat format) {
  SR_RETURN_IF_ERROR(CheckGptqBits(bits));
  SR_RETURN_IF_ERROR(CheckStreamLength(rows, bits, "out_features"));
  SR_RETURN_IF_ERROR(CheckSize(zeros.size(), static_cast<size_t>(groups) * rows, "zeros"));
  const int32_t maxq = (1 << bits) - 1;
  const size_t words_per_group = static_cast<size_t>(rows) * bits / 32;
  std::vector<uint32_t> words(words_per_group * groups, 0);
  for (int g = 0; g < groups; ++g) {
    for (int r = 0; r < rows; ++r) {
      int32_t v = zeros[static_cast<size_t>(g) * rows + r];
      if (v < 0 || v > maxq) {
        return absl::InvalidArgumentError(absl::StrCat("zero point ", v, " at group ", g, ", row ",
                                                       r, " outside [0, ", maxq, "]"));
      }
      if (format == GptqZeroFormat::kV1) {
        // v1 stores zero - 1; a borrow would corrupt the neighbouring field.
        if (v == 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "zero point 0 at group ", g, ", row ", r,
              " cannot be stored in GPTQ checkpoint_format \"gptq\" (v1 stores zero - 1); "
              "write checkpoint_format \"gptq_v2\""));
        }
        --v;
      }
      // Row r of group g: word (g, r*bits/32) in a [groups, words_per_group] array.
      const uint64_t pos = static_cast<uint64_t>(r) * bits;
      const size_t w = pos / 32;
      const int shift = static_cast<int>(pos % 32);
      uint32_t* group_words = words.data() + static_cast<size_t>(g) * words_per_group;
      group_words[w] |= static_cast<uint32_t>(v) << shift;
      if (shift + bits > 32) group_words[w + 1] |= static_cast<uint32_t>(v) >> (32 - shift);
    }
  }
  return ToInt32(words);
}

absl::StatusOr<std::vector<int32_t>> UnpackGptqQzeros(std::span<const int32_t> qzeros, int groups,
                                                      int rows, int bits, GptqZeroFormat format) {
  SR_RETURN_IF_ERROR(CheckGptqBits(bits));
  SR_RETURN_IF_ERROR(CheckStreamLength(rows, bits, "out_features"));
  const size_t words_per_group = static_cast<size_t>(rows) * bits / 32;
  SR_RETURN_IF_ERROR(CheckSize(qzeros.size(), words_per_group * groups, "qzeros"));
  std::vector<int32_t> zeros(static_cast<size_t>(groups) * rows);
  for (int g = 0; g < groups; ++g) {
    const std::span<const int32_t> group_words =
        qzeros.subspan(static_cast<size_t>(g) * words_per_group, words_per_group);
    for (int r = 0; r < rows; ++r) {
      const int32_t v =
          static_cast<int32_t>(GetBits(group_words, 1, 0, static_cast<uint64_t>(r) * bits, bits));
      zeros[static_cast<size_t>(g) * rows + r] = format == GptqZeroFormat::kV1 ? v + 1 : v;
    }
  }
  return zeros;
}

std::string GptqShapeProblem(int out, int in, int bits, int group_size) {
  if ((static_cast<int64_t>(in) * bits) % 32 != 0) {
    return absl::StrCat("in_features ", in, " * ", bits,
                        " bits is not a multiple of 32 (qweight packs the input dimension)");
  }
  if ((static_cast<int64_t>(out) * bits) % 32 != 0) {
    return absl::StrCat("out_features ", out, " * ", bits,
                        " bits is not a multiple of 32 (qzeros packs the output dimension)");
  }
  if (group_size > 0 && in % group_size != 0) {
    return absl::StrCat("in_features ", in, " is not a multiple of group_size ", group_size,
                        " (vLLM's GPTQ loader requires it)");
  }
  return "";
}

namespace {

// PackGptq of a weight that passed ValidateQuantizedWeight: its codes are
// not scanned again (10^8 of them per layer at 8B shapes).
absl::StatusOr<GptqTensors> PackValidated(const QuantizedWeight& w, GptqZeroFormat format) {
  SR_RETURN_IF_ERROR(CheckGptqBits(w.bits));
  SR_RETURN_IF_ERROR(CheckStreamLength(w.cols, w.bits, "in_features"));
  GptqTensors t;
  t.bits = w.bits;
  t.rows = w.rows;
  t.cols = w.cols;
  t.num_groups = w.num_groups;
  t.qweight = PackQweightWords(w.codes, w.rows, w.cols, w.bits);
  SR_ASSIGN_OR_RETURN(t.qzeros, PackGptqQzeros(w.zeros, w.num_groups, w.rows, w.bits, format));
  t.scales.resize(w.scales.size());
  for (size_t i = 0; i < w.scales.size(); ++i) {
    t.scales[i] = F32ToF16(w.scales[i]);
    if (!std::isfinite(F16ToF32(t.scales[i]))) {
      return absl::InvalidArgumentError(
          absl::StrCat("scale ", w.scales[i], " at ", i, " does not fit GPTQ's fp16 scales"));
    }
  }
  t.g_idx = w.g_idx;
  return t;
}

}  // namespace

absl::StatusOr<GptqTensors> PackGptq(const QuantizedWeight& w, GptqZeroFormat format) {
  SR_RETURN_IF_ERROR(ValidateQuantizedWeight(w, "gptq"));
  return PackValidated(w, format);
}

absl::StatusOr<QuantizedWeight> UnpackGptq(const GptqTensors& t, GptqZeroFormat format,
                                           int group_size, bool sym) {
  QuantizedWeight w;
  w.rows = t.rows;
  w.cols = t.cols;
  w.bits = t.bits;
  w.group_size = group_size;
  w.sym = sym;
  w.num_groups = t.num_groups;
  SR_ASSIGN_OR_RETURN(w.codes, UnpackGptqQweight(t.qweight, t.rows, t.cols, t.bits));
  SR_ASSIGN_OR_RETURN(w.zeros, UnpackGptqQzeros(t.qzeros, t.num_groups, t.rows, t.bits, format));
  SR_RETURN_IF_ERROR(CheckSize(t.scales.size(), static_cast<size_t>(t.num_groups) * t.rows, "scales"));
  SR_RETURN_IF_ERROR(CheckSize(t.g_idx.size(), static_cast<size_t>(t.cols), "g_idx"));
  w.scales.resize(t.scales.size());
  for (size_t i = 0; i < t.scales.size(); ++i) w.scales[i] = F16ToF32(t.scales[i]);
  w.g_idx = t.g_idx;
  for (int c = 0; c < w.cols && !w.act_order; ++c) {
    w.act_order = w.g_idx[c] != (group_size > 0 ? c / group_size : 0);
  }
  return w;
}

namespace {

class GptqEncoder : public FormatEncoder {
 public:
  GptqEncoder(DType dtype, json recipe) : dtype_(dtype), recipe_(std::move(recipe)) {}

  absl::Status Add(std::span<const CompressedTensorEntry> tensors,
                   const EncodedTensorSink& sink) override {
    const bool had_scheme = scheme_.has_value();
    SR_RETURN_IF_ERROR(MergeUniformScheme(tensors, kFormat, &names_, &scheme_));
    if (!had_scheme && scheme_.has_value()) SR_RETURN_IF_ERROR(CheckGptqBits(scheme_->bits));

    // Modules loaders must not treat as GPTQ: shapes GPTQ cannot hold, and
    // decoder Linears the recipe left unquantized.
    std::vector<DenseFallback> direct;
    for (const CompressedTensorEntry& e : tensors) {
      const std::string module = LinearModuleOf(e);
      if (module.empty()) continue;
      if (!e.quantized.has_value()) {
        if (module != "lm_head") {
          unquantized_.insert(module);
          direct.push_back({module, "not quantized by the recipe"});
        }
        continue;
      }
      const QuantizedWeight& w = *e.quantized;
      if (std::string problem = GptqShapeProblem(w.rows, w.cols, w.bits, w.group_size);
          !problem.empty()) {
        direct.push_back({module, std::move(problem)});
      }
    }
    std::set<std::string> kept_dense;
    for (DenseFallback& f : ExtendToFusedSiblings(tensors, direct)) {
      kept_dense.insert(f.module);
      fallbacks_.push_back(std::move(f));
    }

    for (const CompressedTensorEntry& e : tensors) {
      const std::string module = LinearModuleOf(e);
      if (!e.quantized.has_value() || kept_dense.contains(module)) {
        SR_ASSIGN_OR_RETURN(const StreamedTensor t, EncodeDense(e, dtype_));
        SR_RETURN_IF_ERROR(sink(t, {}));
        continue;
      }
      lm_head_quantized_ = lm_head_quantized_ || module == "lm_head";
      // Symmetric zero points are 2^(bits-1) >= 1, which v1 holds; asymmetric
      // ones may be 0, which only v2 holds (see docs/formats.md). Validated
      // by MergeUniformScheme above.
      auto packed = PackValidated(*e.quantized, ZeroFormat());
      if (!packed.ok()) {
        return absl::Status(packed.status().code(),
                            absl::StrCat(module, ": ", packed.status().message()));
      }
      const GptqTensors& t = *packed;
      const int64_t rows = t.rows, cols = t.cols, groups = t.num_groups;
      SR_RETURN_IF_ERROR(
          sink(EncodeInt32(module + ".qweight", {cols * t.bits / 32, rows}, t.qweight), {}));
      SR_RETURN_IF_ERROR(
          sink(EncodeInt32(module + ".qzeros", {groups, rows * t.bits / 32}, t.qzeros), {}));
      SR_RETURN_IF_ERROR(sink(EncodeBytes(module + ".scales", DType::kF16, {groups, rows},
                                          std::as_bytes(std::span<const uint16_t>(t.scales))),
                              {}));
      SR_RETURN_IF_ERROR(sink(EncodeInt32(module + ".g_idx", {cols}, t.g_idx), {}));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<FormatOutput> Finish() override {
    if (!scheme_.has_value()) {
      return absl::InvalidArgumentError("no weight is quantized; use --format dense");
    }
    FormatOutput out;
    out.fallbacks = fallbacks_;
    json dynamic = json::object();
    std::set<std::string> listed = unquantized_;
    for (const DenseFallback& f : out.fallbacks) listed.insert(f.module);
    for (const std::string& m : listed) {
      if (m != "lm_head") dynamic[DynamicPattern(m)] = json::object();
    }

    json q = {
        {"bits", scheme_->bits},
        {"group_size", scheme_->group_size},
        // vLLM ignores g_idx unless desc_act, so a permuted g_idx forces it on.
        {"desc_act", scheme_->act_order || RecipeValue<bool>(recipe_, "desc_act", false)},
        {"sym", scheme_->sym},
        {"lm_head", lm_head_quantized_},
        {"static_groups", RecipeValue<bool>(recipe_, "static_groups", false)},
        {"true_sequential", RecipeValue<bool>(recipe_, "true_sequential", true)},
        {"damp_percent",
         RecipeValue<double>(recipe_, "damp_percent", RecipeValue<double>(recipe_, "damp", 0.01))},
        {"quant_method", "gptq"},
        {"checkpoint_format", std::string(GptqCheckpointFormatName(ZeroFormat()))},
        {"pack_dtype", "int32"},
        {"meta", {{"quantizer", json::array({"shrinkray"})}}},
    };
    if (!dynamic.empty()) q["dynamic"] = std::move(dynamic);
    out.quantization_config = q;
    out.quantize_config = std::move(q);
    return out;
  }

 private:
  GptqZeroFormat ZeroFormat() const {
    return scheme_->sym ? GptqZeroFormat::kV1 : GptqZeroFormat::kV2;
  }

  DType dtype_;
  json recipe_;
  std::set<std::string> names_;
  std::optional<QuantScheme> scheme_;
  std::set<std::string> unquantized_;
  std::vector<DenseFallback> fallbacks_;
  bool lm_head_quantized_ = false;
};

}  // namespace

std::unique_ptr<FormatEncoder> MakeGptqEncoder(const CompressedModelSpec& header) {
  return std::make_unique<GptqEncoder>(header.dense_dtype, header.recipe_info);
}

}  // namespace shrinkray
