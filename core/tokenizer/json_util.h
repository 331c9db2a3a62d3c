// Exception-free accessors for the parsed tokenizer.json: nlohmann's typed
// getters throw on a type mismatch, so every read goes through a type check.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace shrinkray::tokenizer_internal {

using Json = nlohmann::json;

// The member `key` of object `j`, or nullptr when `j` is not an object, lacks the
// key, or the value is JSON null.
const Json* Member(const Json& j, std::string_view key);

// Optional typed members: nullopt when absent or null, an error when present
// with another type. `what` names the enclosing object in messages.
absl::StatusOr<std::optional<std::string>> OptString(const Json& j, std::string_view key,
                                                     std::string_view what);
absl::StatusOr<std::optional<bool>> OptBool(const Json& j, std::string_view key,
                                            std::string_view what);
absl::StatusOr<std::optional<int64_t>> OptInt(const Json& j, std::string_view key,
                                              std::string_view what);

// The "type" member of a component object (its required discriminator).
absl::StatusOr<std::string> TypeOf(const Json& j, std::string_view what);

// A {"String": s} or {"Regex": r} pattern as used by Replace and Split.
struct Pattern {
  std::string text;
  bool is_regex = false;
};
absl::StatusOr<Pattern> ParsePattern(const Json& j, std::string_view what);

}  // namespace shrinkray::tokenizer_internal
