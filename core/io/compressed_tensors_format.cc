#include "core/io/compressed_tensors_format.h"

#include <algorithm>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace shrinkray {
namespace {

using nlohmann::json;

constexpr char kFormat[] = "compressed-tensors";

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::Status CheckSize(size_t got, size_t want, const char* what) {
  if (got == want) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " has ", got, " values, expected ", want));
}

absl::Status CheckValue(int32_t v, int bits, int r, int c) {
  const int32_t maxq = (1 << bits) - 1;
  if (v >= 0 && v <= maxq) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("value ", v, " at [", r, ", ", c, "] outside [0, ", maxq, "]"));
}

}  // namespace

absl::Status CheckCompressedTensorsBits(int bits) {
  if (bits == 2 || bits == 3 || bits == 4 || bits == 8) return absl::OkStatus();
  return UnpackableBitsError(bits, kFormat);
}

absl::StatusOr<std::vector<int32_t>> PackCtRows(std::span<const uint8_t> values, int rows, int cols,
                                                int bits) {
  SR_RETURN_IF_ERROR(CheckCompressedTensorsBits(bits));
  SR_RETURN_IF_ERROR(CheckSize(values.size(), static_cast<size_t>(rows) * cols, "values"));
  const int pf = CompressedTensorsPackFactor(bits);
  const int64_t words = CeilDiv(cols, pf);
  std::vector<uint32_t> packed(static_cast<size_t>(rows * words), 0);  // padding stays 0
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      const int32_t v = values[static_cast<size_t>(r) * cols + c];
      SR_RETURN_IF_ERROR(CheckValue(v, bits, r, c));
      packed[static_cast<size_t>(r * words + c / pf)] |= static_cast<uint32_t>(v)
                                                         << (bits * (c % pf));
    }
  }
  return std::vector<int32_t>(packed.begin(), packed.end());
}

absl::StatusOr<std::vector<uint8_t>> UnpackCtRows(std::span<const int32_t> packed, int rows,
                                                  int cols, int bits) {
  SR_RETURN_IF_ERROR(CheckCompressedTensorsBits(bits));
  const int pf = CompressedTensorsPackFactor(bits);
  const int64_t words = CeilDiv(cols, pf);
  SR_RETURN_IF_ERROR(CheckSize(packed.size(), static_cast<size_t>(rows * words), "packed"));
  const uint32_t mask = (uint32_t{1} << bits) - 1;
  std::vector<uint8_t> values(static_cast<size_t>(rows) * cols);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      const uint32_t word = static_cast<uint32_t>(packed[static_cast<size_t>(r * words + c / pf)]);
      values[static_cast<size_t>(r) * cols + c] =
          static_cast<uint8_t>((word >> (bits * (c % pf))) & mask);
    }
  }
  return values;
}

absl::StatusOr<std::vector<int32_t>> PackCtColumns(std::span<const int32_t> values, int rows,
                                                   int cols, int bits) {
  SR_RETURN_IF_ERROR(CheckCompressedTensorsBits(bits));
  SR_RETURN_IF_ERROR(CheckSize(values.size(), static_cast<size_t>(rows) * cols, "values"));
  const int pf = CompressedTensorsPackFactor(bits);
  std::vector<uint32_t> packed(static_cast<size_t>(CeilDiv(rows, pf) * cols), 0);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      const int32_t v = values[static_cast<size_t>(r) * cols + c];
      SR_RETURN_IF_ERROR(CheckValue(v, bits, r, c));
      packed[static_cast<size_t>(r / pf) * cols + c] |= static_cast<uint32_t>(v)
                                                        << (bits * (r % pf));
    }
  }
  return std::vector<int32_t>(packed.begin(), packed.end());
}

absl::StatusOr<std::vector<int32_t>> UnpackCtColumns(std::span<const int32_t> packed, int rows,
                                                     int cols, int bits) {
  SR_RETURN_IF_ERROR(CheckCompressedTensorsBits(bits));
  const int pf = CompressedTensorsPackFactor(bits);
  SR_RETURN_IF_ERROR(
      CheckSize(packed.size(), static_cast<size_t>(CeilDiv(rows, pf) * cols), "packed"));
  const uint32_t mask = (uint32_t{1} << bits) - 1;
  std::vector<int32_t> values(static_cast<size_t>(rows) * cols);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      const uint32_t word = static_cast<uint32_t>(packed[static_cast<size_t>(r / pf) * cols + c]);
      values[static_cast<size_t>(r) * cols + c] =
          static_cast<int32_t>((word >> (bits * (r % pf))) & mask);
    }
  }
  return values;
}

std::string CompressedTensorsShapeProblem(int out, int in, int bits, int group_size, bool sym) {
  const int pf = CompressedTensorsPackFactor(bits);
  // compressed-tensors pads the packed dimension, but vLLM's WNA16 (the only
  // loader with 4/8-bit kernels) sizes weight_packed as in // pf and the zero
  // points as out // pf, so a padded tensor fails its shape check.
  if (bits == 4 || bits == 8) {
    if (in % pf != 0) {
      return absl::StrCat("in_features ", in, " is not a multiple of ", pf,
                          " values per int32 (vLLM's WNA16 loader expects in / ", pf, " words)");
    }
    if (!sym && out % pf != 0) {
      return absl::StrCat("out_features ", out, " is not a multiple of ", pf,
                          " (packed zero points; vLLM's WNA16 loader expects out / ", pf,
                          " rows)");
    }
  }
  if (group_size > 0 && in % group_size != 0) {
    return absl::StrCat("in_features ", in, " is not a multiple of group_size ", group_size,
                        " (the \"group\" strategy needs whole groups)");
  }
  return "";
}

absl::StatusOr<CtTensors> PackCompressedTensors(const QuantizedWeight& w, bool with_zero_point,
                                                bool with_g_idx) {
  SR_RETURN_IF_ERROR(ValidateQuantizedWeight(w, kFormat));
  SR_RETURN_IF_ERROR(CheckCompressedTensorsBits(w.bits));
  if (!with_zero_point && !ZeroPointsMid(w)) {
    return absl::InvalidArgumentError(
        absl::StrCat("symmetric compressed-tensors needs every zero point to be ",
                     1 << (w.bits - 1), "; write the zero points"));
  }
  if (!with_g_idx && GIdxPermuted(w)) {
    return absl::InvalidArgumentError("g_idx is permuted (act_order); write weight_g_idx");
  }
  CtTensors t;
  t.bits = w.bits;
  t.rows = w.rows;
  t.cols = w.cols;
  t.num_groups = w.num_groups;
  SR_ASSIGN_OR_RETURN(t.weight_packed, PackCtRows(w.codes, w.rows, w.cols, w.bits));
  // Ours are [groups, rows]; compressed-tensors' are [rows, groups].
  t.weight_scale.resize(w.scales.size());
  std::vector<int32_t> zero_point(w.zeros.size());
  for (int g = 0; g < w.num_groups; ++g) {
    for (int r = 0; r < w.rows; ++r) {
      const size_t ours = static_cast<size_t>(g) * w.rows + r;
      const size_t theirs = static_cast<size_t>(r) * w.num_groups + g;
      t.weight_scale[theirs] = w.scales[ours];
      zero_point[theirs] = w.zeros[ours];
    }
  }
  if (with_zero_point) {
    SR_ASSIGN_OR_RETURN(t.weight_zero_point,
                        PackCtColumns(zero_point, w.rows, w.num_groups, w.bits));
  }
  if (with_g_idx) t.weight_g_idx = w.g_idx;
  return t;
}

absl::StatusOr<QuantizedWeight> UnpackCompressedTensors(const CtTensors& t, int group_size) {
  QuantizedWeight w;
  w.rows = t.rows;
  w.cols = t.cols;
  w.bits = t.bits;
  w.group_size = group_size;
  w.num_groups = t.num_groups;
  w.sym = t.weight_zero_point.empty();
  SR_ASSIGN_OR_RETURN(w.codes, UnpackCtRows(t.weight_packed, t.rows, t.cols, t.bits));
  SR_RETURN_IF_ERROR(
      CheckSize(t.weight_scale.size(), static_cast<size_t>(t.rows) * t.num_groups, "weight_scale"));
  std::vector<int32_t> zero_point;
  if (!w.sym) {
    SR_ASSIGN_OR_RETURN(zero_point,
                        UnpackCtColumns(t.weight_zero_point, t.rows, t.num_groups, t.bits));
  }
  w.scales.resize(t.weight_scale.size());
  w.zeros.assign(t.weight_scale.size(), 1 << (t.bits - 1));
  for (int g = 0; g < t.num_groups; ++g) {
    for (int r = 0; r < t.rows; ++r) {
      const size_t ours = static_cast<size_t>(g) * t.rows + r;
      const size_t theirs = static_cast<size_t>(r) * t.num_groups + g;
      w.scales[ours] = t.weight_scale[theirs];
      if (!w.sym) w.zeros[ours] = zero_point[theirs];
    }
  }
  if (!t.weight_g_idx.empty()) {
    SR_RETURN_IF_ERROR(CheckSize(t.weight_g_idx.size(), static_cast<size_t>(t.cols), "weight_g_idx"));
    w.g_idx = t.weight_g_idx;
    w.act_order = GIdxPermuted(w);
  } else {
    w.g_idx.resize(t.cols);
    for (int c = 0; c < t.cols; ++c) w.g_idx[c] = group_size > 0 ? c / group_size : 0;
  }
  return w;
}

namespace {

// One entry of a list whose members depend on the model's facts.
template <typename T>
struct Conditional {
  T value;
  FactCondition when;
};

class CompressedTensorsEncoder : public FormatEncoder {
 public:
  explicit CompressedTensorsEncoder(DType dtype) : dtype_(dtype) {}

  absl::Status Add(std::span<const CompressedTensorEntry> tensors,
                   const EncodedTensorSink& sink) override {
    const bool had_scheme = scheme_.has_value();
    SR_RETURN_IF_ERROR(MergeUniformScheme(tensors, kFormat, &names_, &scheme_));
    if (!had_scheme && scheme_.has_value()) {
      SR_RETURN_IF_ERROR(CheckCompressedTensorsBits(scheme_->bits));
    }
    // Symmetric in compressed-tensors means a signed zero point of 0 on every
    // module (one scheme for all); anything else needs weight_zero_point.
    for (const CompressedTensorEntry& e : tensors) {
      if (!e.quantized.has_value()) continue;
      facts_.zero_points_mid = facts_.zero_points_mid && ZeroPointsMid(*e.quantized);
      facts_.act_order = facts_.act_order || GIdxPermuted(*e.quantized);
    }

    // The modules kept dense if the model turns out symmetric ([1]) or not
    // ([0]): the shapes vLLM can load differ.
    std::set<std::string> kept_dense[2];
    std::vector<DenseFallback> fallbacks[2];
    for (const bool symmetric : {false, true}) {
      std::vector<DenseFallback> direct;
      for (const CompressedTensorEntry& e : tensors) {
        const std::string module = LinearModuleOf(e);
        if (module.empty()) continue;
        if (!e.quantized.has_value()) {
          direct.push_back({module, "not quantized by the recipe"});
          continue;
        }
        const QuantizedWeight& w = *e.quantized;
        if (std::string problem =
                CompressedTensorsShapeProblem(w.rows, w.cols, w.bits, w.group_size, symmetric);
            !problem.empty()) {
          direct.push_back({module, std::move(problem)});
        }
      }
      fallbacks[symmetric] = ExtendToFusedSiblings(tensors, direct);
      for (const DenseFallback& f : fallbacks[symmetric]) kept_dense[symmetric].insert(f.module);
    }
    const bool same = std::equal(
        fallbacks[0].begin(), fallbacks[0].end(), fallbacks[1].begin(), fallbacks[1].end(),
        [](const DenseFallback& a, const DenseFallback& b) {
          return a.module == b.module && a.reason == b.reason;
        });
    for (const bool symmetric : {false, true}) {
      if (same && !symmetric) continue;
      const FactCondition when = same ? FactCondition{} : FactCondition{symmetric, {}};
      for (const DenseFallback& f : fallbacks[symmetric]) fallbacks_.push_back({f, when});
    }

    for (const CompressedTensorEntry& e : tensors) {
      const std::string module = LinearModuleOf(e);
      const double numel = static_cast<double>(Numel(e.shape));
      total_ += numel;
      if (e.sparsity > 0) {
        any_sparse_ = true;
        zeros_ += e.sparsity * numel;
        all_two_four_ = all_two_four_ && e.two_four;
      } else if (!module.empty()) {
        sparsity_ignore_.push_back(module);
      }
      const bool dense_if[2] = {!e.quantized.has_value() || kept_dense[0].contains(module),
                                !e.quantized.has_value() || kept_dense[1].contains(module)};
      // Dense under `dense_when`, packed under `packed_when` (either may be never).
      std::optional<FactCondition> dense_when, packed_when;
      if (dense_if[0] && dense_if[1]) {
        dense_when = FactCondition{};
      } else if (!dense_if[0] && !dense_if[1]) {
        packed_when = FactCondition{};
      } else {
        dense_when = FactCondition{dense_if[1], {}};
        packed_when = FactCondition{!dense_if[1], {}};
      }
      if (dense_when.has_value()) {
        if (!module.empty()) ignore_.push_back({module, *dense_when});
        SR_ASSIGN_OR_RETURN(const StreamedTensor t, EncodeDense(e, dtype_));
        SR_RETURN_IF_ERROR(sink(t, *dense_when));
      }
      if (packed_when.has_value()) {
        SR_RETURN_IF_ERROR(EmitPacked(module, *e.quantized, *packed_when, sink));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<FormatOutput> Finish() override {
    if (!scheme_.has_value()) {
      return absl::InvalidArgumentError("no weight is quantized; use --format dense");
    }
    FormatOutput out;
    out.facts = facts_;
    const bool symmetric = facts_.zero_points_mid;
    const bool with_g_idx = facts_.act_order;
    for (const Conditional<DenseFallback>& f : fallbacks_) {
      if (f.when.Holds(facts_)) out.fallbacks.push_back(f.value);
    }
    json ignore = json::array();
    for (const Conditional<std::string>& m : ignore_) {
      if (m.when.Holds(facts_)) ignore.push_back(m.value);
    }

    const bool grouped = scheme_->group_size > 0;
    json weights = {
        {"num_bits", scheme_->bits},
        {"type", "int"},
        {"symmetric", symmetric},
        {"strategy", grouped ? "group" : "channel"},
        {"group_size", grouped ? json(scheme_->group_size) : json(nullptr)},
        {"actorder", with_g_idx ? json("group") : json(nullptr)},
        {"dynamic", false},
        {"observer", "minmax"},
        {"observer_kwargs", json::object()},
        {"block_structure", nullptr},
    };
    json config = {
        {"quant_method", "compressed-tensors"},
        {"format", "pack-quantized"},
        {"quantization_status", "compressed"},
        {"global_compression_ratio", nullptr},
        {"kv_cache_scheme", nullptr},
        {"config_groups",
         {{"group_0",
           {{"targets", json::array({"Linear"})},
            {"weights", std::move(weights)},
            {"input_activations", nullptr},
            {"output_activations", nullptr},
            {"format", "pack-quantized"}}}}},
        {"ignore", std::move(ignore)},
        {"sparsity_config", json::object()},
    };
    if (any_sparse_) {
      // The weights stay dense on disk (format "dense"); the block tells
      // loaders the structure, as llm-compressor's sparse+quantized models do.
      config["sparsity_config"] = {
          {"format", "dense"},
          {"global_sparsity", total_ > 0 ? zeros_ / total_ : 0.0},
          {"sparsity_structure", all_two_four_ ? "2:4" : "unstructured"},
          {"targets", json::array({"Linear"})},
          {"ignore", sparsity_ignore_},
          {"registry_requires_subclass", false},
      };
    }
    out.quantization_config = std::move(config);
    return out;
  }

 private:
  // The packed tensors of `module` under `when`; weight_zero_point only for
  // an asymmetric model and weight_g_idx only with act_order.
  absl::Status EmitPacked(const std::string& module, const QuantizedWeight& w,
                          const FactCondition& when, const EncodedTensorSink& sink) {
    const std::optional<FactCondition> zero_point_when =
        BothConditions(when, FactCondition{false, {}});
    const std::optional<FactCondition> g_idx_when = BothConditions(when, FactCondition{{}, true});
    // Both optional tensors are made, whether or not they end up written: the
    // checks that their absence needs are about the whole model, which the
    // conditions settle.
    auto packed = PackCompressedTensors(w, /*with_zero_point=*/true, /*with_g_idx=*/true);
    if (!packed.ok()) {
      return absl::Status(packed.status().code(),
                          absl::StrCat(module, ": ", packed.status().message()));
    }
    const CtTensors& t = *packed;
    const int pf = CompressedTensorsPackFactor(t.bits);
    const int64_t rows = t.rows, cols = t.cols, groups = t.num_groups;
    SR_RETURN_IF_ERROR(sink(
        EncodeInt32(module + ".weight_packed", {rows, CeilDiv(cols, pf)}, t.weight_packed), when));
    SR_ASSIGN_OR_RETURN(const StreamedTensor scale, EncodeFloats(module + ".weight_scale", {rows, groups},
                                                                 t.weight_scale, dtype_));
    SR_RETURN_IF_ERROR(sink(scale, when));
    if (zero_point_when.has_value()) {
      SR_RETURN_IF_ERROR(sink(EncodeInt32(module + ".weight_zero_point",
                                          {CeilDiv(rows, pf), groups}, t.weight_zero_point),
                              *zero_point_when));
    }
    if (g_idx_when.has_value()) {
      SR_RETURN_IF_ERROR(
          sink(EncodeInt32(module + ".weight_g_idx", {cols}, t.weight_g_idx), *g_idx_when));
    }
    const int64_t shape[2] = {rows, cols};
    return sink(EncodeInt64(module + ".weight_shape", {2}, shape), when);
  }

  DType dtype_;
  std::set<std::string> names_;
  std::optional<QuantScheme> scheme_;
  ModelFacts facts_;
  std::vector<Conditional<DenseFallback>> fallbacks_;
  std::vector<Conditional<std::string>> ignore_;
  json sparsity_ignore_ = json::array();
  double zeros_ = 0, total_ = 0;
  bool any_sparse_ = false, all_two_four_ = true;
};

}  // namespace

std::unique_ptr<FormatEncoder> MakeCompressedTensorsEncoder(const CompressedModelSpec& header) {
  return std::make_unique<CompressedTensorsEncoder>(header.dense_dtype);
}

}  // namespace shrinkray
