// Calibration data for layerwise compression: N windows of L token ids.
//
// From text (../shared/data/README.md, GPTQ's sampling): the file is encoded
// once with one BOS at the start; each window is the slice
// ids[start, start + L) with start uniform in [0, n_tokens - L], drawn from a
// seeded SplitMix64 with an unbiased bounded draw (so the windows are the same
// on every machine and standard library; std::uniform_int_distribution is
// not). Windows may overlap and get no BOS of their own.
//
// Pre-tokenized: a safetensors file (extension .safetensors) holding one
// tensor "input_ids", dtype I32, shape [N, L]. Its first min(N, num_samples)
// rows and first min(L, seqlen) columns are used, in file order (no sampling).
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/synthetic.h"
#include "core/tokenizer/tokenizer.h"

namespace shrinkray {

struct CalibrationOptions {
  int num_samples = 128;
  int seqlen = 2048;  // clamped to the model's max_position_embeddings by callers
  uint64_t seed = 0;
};

struct CalibrationSet {
  int num_samples = 0;
  int seqlen = 0;
  std::vector<int32_t> tokens;  // [num_samples, seqlen] row-major
  std::vector<int64_t> starts;  // window starts in the source stream (text only)
  int64_t source_tokens = 0;    // ids in the encoded text / the file's tensor
  std::string source;           // the file it came from
  bool pretokenized = false;

  std::span<const int32_t> Window(int i) const {
    return std::span<const int32_t>(tokens).subspan(static_cast<size_t>(i) * seqlen, seqlen);
  }
};

// Uniform in [0, bound] (inclusive) from SplitMix64 output by rejection: no
// modulo bias, identical on every platform.
uint64_t UniformInclusive(uint64_t bound, SplitMix64& rng);

// Draws the windows from an already-encoded stream. `source` names the data in
// errors: a stream shorter than seqlen + 1 tokens is InvalidArgument
// "calibration text SOURCE has K tokens; need at least L+1".
absl::StatusOr<CalibrationSet> SampleCalibrationWindows(std::span<const int32_t> ids,
                                                        const CalibrationOptions& options,
                                                        const std::string& source);

// Reads and encodes a UTF-8 text file (one BOS), then SampleCalibrationWindows.
absl::StatusOr<CalibrationSet> CalibrationSetFromText(const std::filesystem::path& path,
                                                      const Tokenizer& tokenizer,
                                                      const CalibrationOptions& options);

// Reads the pre-tokenized safetensors layout described above.
absl::StatusOr<CalibrationSet> CalibrationSetFromTokens(const std::filesystem::path& path,
                                                        const CalibrationOptions& options);

// Dispatches on the extension: ".safetensors" is pre-tokenized, anything else text.
absl::StatusOr<CalibrationSet> LoadCalibrationSet(const std::filesystem::path& path,
                                                  const Tokenizer& tokenizer,
                                                  const CalibrationOptions& options);

}  // namespace shrinkray
