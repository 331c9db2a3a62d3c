// tokenizer.json "decoder" stage: turns the token strings of an id sequence back
// into text. Each step maps a list of strings to a list of strings, as in HF.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tokenizer/json_util.h"

namespace shrinkray::tokenizer_internal {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual absl::Status DecodeChain(std::vector<std::string>* tokens) const = 0;
};

// Builds the decoder described by `j` (Sequence, Replace, ByteFallback, Fuse,
// Strip, Metaspace, ByteLevel). Unknown types are InvalidArgument.
absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& j);

}  // namespace shrinkray::tokenizer_internal
