#include "core/tokenizer/normalizer.h"

#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/tokenizer/regex.h"
#include "core/tokenizer/utf8.h"
#include "core/util/status_macros.h"
#include "utf8proc.h"

namespace shrinkray::tokenizer_internal {
namespace {

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  absl::Status Normalize(std::string* text) const override {
    for (const auto& step : steps_) SR_RETURN_IF_ERROR(step->Normalize(text));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

// HF prepends only to non-empty pieces, so an empty input stays empty.
class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  absl::Status Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prefix_);
    return absl::OkStatus();
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::string literal, std::unique_ptr<Regex> regex, std::string content)
      : literal_(std::move(literal)), regex_(std::move(regex)), content_(std::move(content)) {}

  absl::Status Normalize(std::string* text) const override {
    std::vector<std::pair<size_t, size_t>> matches;
    if (regex_ != nullptr) {
      SR_RETURN_IF_ERROR(regex_->FindAll(*text, &matches));
    } else if (!literal_.empty()) {
      for (size_t pos = text->find(literal_); pos != std::string::npos;
           pos = text->find(literal_, pos + literal_.size())) {
        matches.emplace_back(pos, pos + literal_.size());
      }
    }
    if (matches.empty()) return absl::OkStatus();
    std::string out;
    out.reserve(text->size() + matches.size() * content_.size());
    size_t last = 0;
    for (const auto& [b, e] : matches) {
      out.append(*text, last, b - last);
      out.append(content_);
      last = e;
    }
    out.append(*text, last, std::string::npos);
    *text = std::move(out);
    return absl::OkStatus();
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

// Unicode normalization forms through utf8proc.
class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(int options) : options_(options) {}
  absl::Status Normalize(std::string* text) const override {
    if (text->empty()) return absl::OkStatus();
    utf8proc_uint8_t* dst = nullptr;
    const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text->data()),
                                            static_cast<utf8proc_ssize_t>(text->size()), &dst,
                                            static_cast<utf8proc_option_t>(options_));
    if (n < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unicode normalization failed: ", utf8proc_errmsg(n)));
    }
    text->assign(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
    std::free(dst);
    return absl::OkStatus();
  }

 private:
  int options_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  absl::Status Normalize(std::string* text) const override {
    std::string out;
    out.reserve(text->size());
    size_t pos = 0;
    while (pos < text->size()) {
      const uint32_t cp = DecodeUtf8At(*text, &pos);
      AppendUtf8(static_cast<uint32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))), &out);
    }
    *text = std::move(out);
    return absl::OkStatus();
  }
};

bool IsUnicodeSpace(uint32_t cp) {
  if (cp == ' ' || (cp >= '\t' && cp <= '\r')) return true;
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  absl::Status Normalize(std::string* text) const override {
    size_t begin = 0, end = text->size();
    if (left_) {
      while (begin < end) {
        size_t next = begin;
        if (!IsUnicodeSpace(DecodeUtf8At(*text, &next))) break;
        begin = next;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>((*text)[start]) & 0xC0) == 0x80) {
          --start;
        }
        size_t tmp = start;
        if (!IsUnicodeSpace(DecodeUtf8At(*text, &tmp))) break;
        end = start;
      }
    }
    *text = text->substr(begin, end - begin);
    return absl::OkStatus();
  }

 private:
  bool left_, right_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const Json& j) {
  SR_ASSIGN_OR_RETURN(std::string type, TypeOf(j, "normalizer"));
  const std::string what = absl::StrCat("normalizer ", type);
  if (type == "Sequence") {
    const Json* list = Member(j, "normalizers");
    if (list == nullptr || !list->is_array()) {
      return absl::InvalidArgumentError("normalizer Sequence needs a \"normalizers\" array");
    }
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const Json& item : *list) {
      SR_ASSIGN_OR_RETURN(auto step, ParseNormalizer(item));
      steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (type == "Prepend") {
    SR_ASSIGN_OR_RETURN(auto prepend, OptString(j, "prepend", what));
    return std::make_unique<PrependNormalizer>(prepend.value_or(""));
  }
  if (type == "Replace") {
    const Json* pattern_json = Member(j, "pattern");
    if (pattern_json == nullptr) return absl::InvalidArgumentError(what + " needs a \"pattern\"");
    SR_ASSIGN_OR_RETURN(Pattern pattern, ParsePattern(*pattern_json, what));
    SR_ASSIGN_OR_RETURN(auto content, OptString(j, "content", what));
    std::unique_ptr<Regex> regex;
    if (pattern.is_regex) {
      SR_ASSIGN_OR_RETURN(regex, Regex::Compile(pattern.text));
    }
    return std::make_unique<ReplaceNormalizer>(pattern.text, std::move(regex),
                                               content.value_or(""));
  }
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  if (type == "NFD") {
    return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
  }
  if (type == "NFKC") {
    return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_COMPOSE |
                                               UTF8PROC_COMPAT);
  }
  if (type == "NFKD") {
    return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE |
                                               UTF8PROC_COMPAT);
  }
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Strip") {
    SR_ASSIGN_OR_RETURN(auto left, OptBool(j, "strip_left", what));
    SR_ASSIGN_OR_RETURN(auto right, OptBool(j, "strip_right", what));
    return std::make_unique<StripNormalizer>(left.value_or(true), right.value_or(true));
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported normalizer type '", type, "'"));
}

}  // namespace shrinkray::tokenizer_internal
