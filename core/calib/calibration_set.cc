#include "core/calib/calibration_set.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/io/safetensors.h"
#include "core/io/text_file.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

absl::Status CheckOptions(const CalibrationOptions& options, const std::string& source) {
  if (options.num_samples <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration ", source, ": num_samples must be positive, got ", options.num_samples));
  }
  if (options.seqlen <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration ", source, ": seqlen must be positive, got ", options.seqlen));
  }
  return absl::OkStatus();
}

}  // namespace

uint64_t UniformInclusive(uint64_t bound, SplitMix64& rng) {
  if (bound == UINT64_MAX) return rng.Next();
  const uint64_t range = bound + 1;
  // Reject the low (2^64 mod range) values so every residue is equally likely.
  const uint64_t threshold = (0 - range) % range;
  uint64_t r = rng.Next();
  while (r < threshold) r = rng.Next();
  return r % range;
}

absl::StatusOr<CalibrationSet> SampleCalibrationWindows(std::span<const int32_t> ids,
                                                        const CalibrationOptions& options,
                                                        const std::string& source) {
  SR_RETURN_IF_ERROR(CheckOptions(options, source));
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t need = static_cast<int64_t>(options.seqlen) + 1;
  // GPTQ's sampler draws from [0, n - L - 1] and also takes the next token as a
  // target; we only need the window, but keep its "at least L+1" requirement.
  if (n < need) {
    return absl::InvalidArgumentError(absl::StrCat("calibration text ", source, " has ", n,
                                                   " tokens; need at least ", need,
                                                   " (seqlen ", options.seqlen, " + 1)"));
  }
  CalibrationSet set;
  set.num_samples = options.num_samples;
  set.seqlen = options.seqlen;
  set.source_tokens = n;
  set.source = source;
  set.tokens.resize(static_cast<size_t>(options.num_samples) * options.seqlen);
  set.starts.resize(options.num_samples);
  SplitMix64 rng(options.seed);
  const uint64_t max_start = static_cast<uint64_t>(n - options.seqlen);
  for (int i = 0; i < options.num_samples; ++i) {
    const int64_t start = static_cast<int64_t>(UniformInclusive(max_start, rng));
    set.starts[i] = start;
    std::copy(ids.begin() + start, ids.begin() + start + options.seqlen,
              set.tokens.begin() + static_cast<size_t>(i) * options.seqlen);
  }
  return set;
}

absl::StatusOr<CalibrationSet> CalibrationSetFromText(const std::filesystem::path& path,
                                                      const Tokenizer& tokenizer,
                                                      const CalibrationOptions& options) {
  SR_RETURN_IF_ERROR(CheckOptions(options, path.string()));
  SR_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  auto ids = tokenizer.Encode(text, /*add_special_tokens=*/true);
  if (!ids.ok()) {
    return absl::Status(ids.status().code(),
                        absl::StrCat("calibration text ", path.string(), ": ", ids.status().message()));
  }
  return SampleCalibrationWindows(*ids, options, path.string());
}

absl::StatusOr<CalibrationSet> CalibrationSetFromTokens(const std::filesystem::path& path,
                                                        const CalibrationOptions& options) {
  const std::string source = path.string();
  SR_RETURN_IF_ERROR(CheckOptions(options, source));
  SR_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  const TensorInfo* t = file->Find("input_ids");
  if (t == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration file ", source, ": no tensor \"input_ids\" (expected I32 [N, L])"));
  }
  if (t->dtype != DType::kI32 || t->shape.size() != 2 || t->shape[0] <= 0 || t->shape[1] <= 0) {
    std::string shape;
    for (int64_t d : t->shape) absl::StrAppend(&shape, shape.empty() ? "" : ", ", d);
    return absl::InvalidArgumentError(absl::StrCat(
        "calibration file ", source, ": \"input_ids\" is ", std::string(DTypeName(t->dtype)), " [", shape,
        "]; expected I32 [N, L] with N, L > 0"));
  }
  const int64_t rows = t->shape[0], cols = t->shape[1];
  CalibrationSet set;
  set.num_samples = static_cast<int>(std::min<int64_t>(rows, options.num_samples));
  set.seqlen = static_cast<int>(std::min<int64_t>(cols, options.seqlen));
  set.source_tokens = rows * cols;
  set.source = source;
  set.pretokenized = true;
  set.tokens.resize(static_cast<size_t>(set.num_samples) * set.seqlen);
  // safetensors data is little-endian int32, possibly unaligned in the mapping.
  for (int r = 0; r < set.num_samples; ++r) {
    for (int c = 0; c < set.seqlen; ++c) {
      const std::byte* p = t->data + (static_cast<size_t>(r) * cols + c) * 4;
      const uint32_t u = static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
                         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
      const int32_t id = static_cast<int32_t>(u);
      if (id < 0) {
        return absl::InvalidArgumentError(absl::StrCat("calibration file ", source, ": input_ids[", r,
                                                       ", ", c, "] = ", id, " is negative"));
      }
      set.tokens[static_cast<size_t>(r) * set.seqlen + c] = id;
    }
  }
  return set;
}

absl::StatusOr<CalibrationSet> LoadCalibrationSet(const std::filesystem::path& path,
                                                  const Tokenizer& tokenizer,
                                                  const CalibrationOptions& options) {
  if (path.extension() == ".safetensors") return CalibrationSetFromTokens(path, options);
  return CalibrationSetFromText(path, tokenizer, options);
}

}  // namespace shrinkray
