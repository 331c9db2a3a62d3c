#include "core/tokenizer/post_processor.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "core/tokenizer/absl_compat.h"
#include "core/util/status_macros.h"

namespace shrinkray::tokenizer_internal {
namespace {

// The ids of special token `name` from TemplateProcessing's "special_tokens".
absl::StatusOr<std::vector<int32_t>> TemplateSpecialIds(const Json& j, const std::string& name) {
  const Json* specials = Member(j, "special_tokens");
  const Json* entry = specials == nullptr ? nullptr : Member(*specials, name);
  const Json* ids = entry == nullptr ? nullptr : Member(*entry, "ids");
  if (ids == nullptr || !ids->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "post_processor TemplateProcessing: special token '", name, "' has no \"ids\""));
  }
  std::vector<int32_t> out;
  for (const Json& id : *ids) {
    if (!id.is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "post_processor TemplateProcessing: special token '", name, "' has a non-integer id"));
    }
    out.push_back(id.get<int32_t>());
  }
  return out;
}

// BertProcessing/RobertaProcessing store cls/sep as ["[CLS]", 101].
absl::StatusOr<int32_t> PairId(const Json& j, std::string_view key) {
  const Json* pair = Member(j, key);
  if (pair == nullptr || !pair->is_array() || pair->size() != 2 ||
      !(*pair)[1].is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat("post_processor: \"", Sv(key), "\" must be [token, id]"));
  }
  return (*pair)[1].get<int32_t>();
}

}  // namespace

absl::StatusOr<SpecialTokensTemplate> ParsePostProcessor(const Json& j) {
  SR_ASSIGN_OR_RETURN(std::string type, TypeOf(j, "post_processor"));
  SpecialTokensTemplate out;
  if (type == "ByteLevel") return out;
  if (type == "TemplateProcessing") {
    const Json* single = Member(j, "single");
    if (single == nullptr || !single->is_array()) {
      return absl::InvalidArgumentError(
          "post_processor TemplateProcessing needs a \"single\" array");
    }
    bool seen_sequence = false;
    for (const Json& item : *single) {
      if (Member(item, "Sequence") != nullptr) {
        seen_sequence = true;
        continue;
      }
      const Json* special = Member(item, "SpecialToken");
      const Json* name = special == nullptr ? nullptr : Member(*special, "id");
      if (name == nullptr || !name->is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat("post_processor TemplateProcessing: bad item ", item.dump()));
      }
      SR_ASSIGN_OR_RETURN(auto ids, TemplateSpecialIds(j, name->get<std::string>()));
      auto& dst = seen_sequence ? out.suffix : out.prefix;
      dst.insert(dst.end(), ids.begin(), ids.end());
    }
    return out;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    SR_ASSIGN_OR_RETURN(int32_t cls, PairId(j, "cls"));
    SR_ASSIGN_OR_RETURN(int32_t sep, PairId(j, "sep"));
    out.prefix = {cls};
    out.suffix = {sep};
    return out;
  }
  if (type == "Sequence") {
    const Json* list = Member(j, "processors");
    if (list == nullptr || !list->is_array()) {
      return absl::InvalidArgumentError("post_processor Sequence needs a \"processors\" array");
    }
    for (const Json& item : *list) {
      SR_ASSIGN_OR_RETURN(SpecialTokensTemplate step, ParsePostProcessor(item));
      // Each step wraps the result of the previous one.
      step.prefix.insert(step.prefix.end(), out.prefix.begin(), out.prefix.end());
      out.suffix.insert(out.suffix.end(), step.suffix.begin(), step.suffix.end());
      out.prefix = std::move(step.prefix);
    }
    return out;
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported post_processor type '", type, "'"));
}

}  // namespace shrinkray::tokenizer_internal
