#include "core/tokenizer/decoder.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/tokenizer/byte_level.h"
#include "core/tokenizer/regex.h"
#include "core/tokenizer/utf8.h"
#include "core/util/status_macros.h"

namespace shrinkray::tokenizer_internal {
namespace {

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (const auto& step : steps_) SR_RETURN_IF_ERROR(step->DecodeChain(tokens));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(std::string literal, std::unique_ptr<Regex> regex, std::string content)
      : literal_(std::move(literal)), regex_(std::move(regex)), content_(std::move(content)) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::pair<size_t, size_t>> matches;
    for (std::string& token : *tokens) {
      matches.clear();
      if (regex_ != nullptr) {
        SR_RETURN_IF_ERROR(regex_->FindAll(token, &matches));
      } else if (!literal_.empty()) {
        for (size_t pos = token.find(literal_); pos != std::string::npos;
             pos = token.find(literal_, pos + literal_.size())) {
          matches.emplace_back(pos, pos + literal_.size());
        }
      }
      if (matches.empty()) continue;
      std::string out;
      size_t last = 0;
      for (const auto& [b, e] : matches) {
        out.append(token, last, b - last);
        out.append(content_);
        last = e;
      }
      out.append(token, last, std::string::npos);
      token = std::move(out);
    }
    return absl::OkStatus();
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

// "<0xAB>" -> 0xAB, or -1 for any other token.
int ParseByteToken(std::string_view t) {
  if (t.size() != 6 || !t.starts_with("<0x") || t[5] != '>') return -1;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(t[3]), lo = hex(t[4]);
  if (hi < 0 || lo < 0) return -1;
  return hi * 16 + lo;
}

// Runs of byte tokens become their UTF-8 text; an invalid run becomes one
// U+FFFD per byte (HF's behaviour).
class ByteFallbackDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string bytes;
    auto flush = [&] {
      if (bytes.empty()) return;
      if (!FindInvalidUtf8(bytes).has_value()) {
        out.push_back(bytes);
      } else {
        for (size_t i = 0; i < bytes.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      bytes.clear();
    };
    for (std::string& token : *tokens) {
      const int b = ParseByteToken(token);
      if (b >= 0) {
        bytes.push_back(static_cast<char>(b));
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    *tokens = std::move(out);
    return absl::OkStatus();
  }
};

class FuseDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::string joined;
    for (const std::string& t : *tokens) joined += t;
    tokens->assign(1, std::move(joined));
    return absl::OkStatus();
  }
};

// Removes up to `start` leading and `stop` trailing copies of `content` from
// each token.
class StripDecoder : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    if (content_.empty()) return absl::OkStatus();
    for (std::string& token : *tokens) {
      size_t begin = 0, end = token.size();
      for (size_t i = 0; i < start_ && std::string_view(token).substr(begin).starts_with(content_);
           ++i) {
        begin += content_.size();
      }
      for (size_t i = 0; i < stop_ && end >= begin + content_.size() &&
                         std::string_view(token).substr(begin, end - begin).ends_with(content_);
           ++i) {
        end -= content_.size();
      }
      token = token.substr(begin, end - begin);
    }
    return absl::OkStatus();
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

// Replacement -> space; in the first token the replacement is dropped instead
// unless the scheme is "never" (mirrors HF's Metaspace decoder exactly).
class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    if (replacement_.empty()) return absl::OkStatus();
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& token = (*tokens)[i];
      const std::string with = (i == 0 && strip_first_) ? "" : " ";
      std::string out;
      size_t last = 0;
      for (size_t pos = token.find(replacement_); pos != std::string::npos;
           pos = token.find(replacement_, last)) {
        out.append(token, last, pos - last);
        out.append(with);
        last = pos + replacement_.size();
      }
      out.append(token, last, std::string::npos);
      token = std::move(out);
    }
    return absl::OkStatus();
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class ByteLevelDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::string bytes;
    for (const std::string& t : *tokens) ByteLevelToBytes(t, &bytes);
    tokens->assign(1, Utf8Lossy(bytes));
    return absl::OkStatus();
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& j) {
  SR_ASSIGN_OR_RETURN(std::string type, TypeOf(j, "decoder"));
  const std::string what = absl::StrCat("decoder ", type);
  if (type == "Sequence") {
    const Json* list = Member(j, "decoders");
    if (list == nullptr || !list->is_array()) {
      return absl::InvalidArgumentError("decoder Sequence needs a \"decoders\" array");
    }
    std::vector<std::unique_ptr<Decoder>> steps;
    for (const Json& item : *list) {
      SR_ASSIGN_OR_RETURN(auto step, ParseDecoder(item));
      steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
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
    return std::make_unique<ReplaceDecoder>(pattern.text, std::move(regex), content.value_or(""));
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    SR_ASSIGN_OR_RETURN(auto content, OptString(j, "content", what));
    SR_ASSIGN_OR_RETURN(auto start, OptInt(j, "start", what));
    SR_ASSIGN_OR_RETURN(auto stop, OptInt(j, "stop", what));
    if (start.value_or(0) < 0 || stop.value_or(0) < 0) {
      return absl::InvalidArgumentError(what + ": start/stop must be >= 0");
    }
    return std::make_unique<StripDecoder>(content.value_or(" "),
                                          static_cast<size_t>(start.value_or(0)),
                                          static_cast<size_t>(stop.value_or(0)));
  }
  if (type == "Metaspace") {
    SR_ASSIGN_OR_RETURN(auto replacement, OptString(j, "replacement", what));
    SR_ASSIGN_OR_RETURN(auto scheme, OptString(j, "prepend_scheme", what));
    SR_ASSIGN_OR_RETURN(auto add_prefix_space, OptBool(j, "add_prefix_space", what));
    const bool strip_first =
        scheme.has_value() ? *scheme != "never" : add_prefix_space.value_or(true);
    return std::make_unique<MetaspaceDecoder>(replacement.value_or("\xE2\x96\x81"), strip_first);
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  return absl::InvalidArgumentError(absl::StrCat("unsupported decoder type '", type, "'"));
}

}  // namespace shrinkray::tokenizer_internal
