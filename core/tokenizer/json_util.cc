#include "core/tokenizer/json_util.h"

#include "absl/strings/str_cat.h"
#include "core/tokenizer/absl_compat.h"

namespace shrinkray::tokenizer_internal {

const Json* Member(const Json& j, std::string_view key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<std::optional<std::string>> OptString(const Json& j, std::string_view key,
                                                     std::string_view what) {
  const Json* v = Member(j, key);
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(what), ": \"", Sv(key), "\" must be a string"));
  }
  return std::optional<std::string>(v->get_ref<const std::string&>());
}

absl::StatusOr<std::optional<bool>> OptBool(const Json& j, std::string_view key,
                                            std::string_view what) {
  const Json* v = Member(j, key);
  if (v == nullptr) return std::optional<bool>();
  if (!v->is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(what), ": \"", Sv(key), "\" must be a boolean"));
  }
  return std::optional<bool>(v->get<bool>());
}

absl::StatusOr<std::optional<int64_t>> OptInt(const Json& j, std::string_view key,
                                              std::string_view what) {
  const Json* v = Member(j, key);
  if (v == nullptr) return std::optional<int64_t>();
  if (!v->is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(what), ": \"", Sv(key), "\" must be an integer"));
  }
  return std::optional<int64_t>(v->get<int64_t>());
}

absl::StatusOr<std::string> TypeOf(const Json& j, std::string_view what) {
  if (!j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), " must be an object"));
  auto type = OptString(j, "type", what);
  if (!type.ok()) return type.status();
  if (!type->has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), " has no \"type\""));
  }
  return **type;
}

absl::StatusOr<Pattern> ParsePattern(const Json& j, std::string_view what) {
  if (const Json* s = Member(j, "String"); s != nullptr && s->is_string()) {
    return Pattern{s->get<std::string>(), false};
  }
  if (const Json* r = Member(j, "Regex"); r != nullptr && r->is_string()) {
    return Pattern{r->get<std::string>(), true};
  }
  return absl::InvalidArgumentError(
      absl::StrCat(Sv(what), ": pattern must be {\"String\": ...} or {\"Regex\": ...}"));
}

}  // namespace shrinkray::tokenizer_internal
