// tokenizer.json "normalizer" stage: rewrites each piece of input text (between
// added tokens) before pre-tokenization.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tokenizer/json_util.h"

namespace shrinkray::tokenizer_internal {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites *text (valid UTF-8) in place.
  virtual absl::Status Normalize(std::string* text) const = 0;
};

// Builds the normalizer described by `j` (Sequence, Prepend, Replace, NFC, NFD,
// NFKC, NFKD, Lowercase, Strip). Unknown types are InvalidArgument.
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const Json& j);

}  // namespace shrinkray::tokenizer_internal
