// tokenizer.json "post_processor": which special ids surround a single encoded
// sequence when add_special_tokens is set (e.g. [<s>, $A] -> BOS prefix).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tokenizer/json_util.h"

namespace shrinkray::tokenizer_internal {

struct SpecialTokensTemplate {
  std::vector<int32_t> prefix;  // ids before $A
  std::vector<int32_t> suffix;  // ids after $A
};

// Reads TemplateProcessing ("single"), BertProcessing / RobertaProcessing
// (cls, sep), ByteLevel (no ids) and Sequence of those. Unknown types are
// InvalidArgument.
absl::StatusOr<SpecialTokensTemplate> ParsePostProcessor(const Json& j);

}  // namespace shrinkray::tokenizer_internal
