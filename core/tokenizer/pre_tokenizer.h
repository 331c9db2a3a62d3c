// tokenizer.json "pre_tokenizer" stage: cuts normalized text into words that BPE
// merges within (and rewrites them, e.g. the ByteLevel byte->unicode mapping).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tokenizer/json_util.h"

namespace shrinkray::tokenizer_internal {

struct PreToken {
  std::string text;
  // True when the piece begins at offset 0 of the original input (Metaspace's
  // prepend_scheme "first" only prefixes that piece).
  bool at_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces *pieces with their refinement. Input pieces are valid UTF-8.
  virtual absl::Status PreTokenize(std::vector<PreToken>* pieces) const = 0;
};

// Builds the pre-tokenizer described by `j` (Sequence, Split, ByteLevel,
// Metaspace, Digits, Whitespace, WhitespaceSplit). Unknown types are
// InvalidArgument.
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Json& j);

// GPT-2's word-splitting regex, used by ByteLevel with use_regex.
inline constexpr char kGpt2SplitRegex[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace shrinkray::tokenizer_internal
