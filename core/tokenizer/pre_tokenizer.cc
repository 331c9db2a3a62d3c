#include "core/tokenizer/pre_tokenizer.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/tokenizer/byte_level.h"
#include "core/tokenizer/regex.h"
#include "core/util/status_macros.h"

namespace shrinkray::tokenizer_internal {
namespace {

using Ranges = std::vector<std::pair<size_t, size_t>>;

// What happens to the delimiters (matches) when a piece is split.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

absl::StatusOr<SplitBehavior> ParseBehavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return absl::InvalidArgumentError(absl::StrCat("unknown split behavior '", name, "'"));
}

// Finds the delimiter ranges in `text`: regex matches or literal occurrences.
class Matcher {
 public:
  static absl::StatusOr<Matcher> Make(const Pattern& pattern) {
    Matcher m;
    if (pattern.is_regex) {
      SR_ASSIGN_OR_RETURN(auto re, Regex::Compile(pattern.text));
      m.regex_ = std::shared_ptr<Regex>(std::move(re));
    } else {
      m.literal_ = pattern.text;
    }
    return m;
  }
  absl::Status Find(std::string_view text, Ranges* out) const {
    if (regex_ != nullptr) return regex_->FindAll(text, out);
    if (literal_.empty()) return absl::OkStatus();
    for (size_t pos = text.find(literal_); pos != std::string_view::npos;
         pos = text.find(literal_, pos + literal_.size())) {
      out->emplace_back(pos, pos + literal_.size());
    }
    return absl::OkStatus();
  }

 private:
  std::shared_ptr<Regex> regex_;
  std::string literal_;
};

// Splits `in` at `matches` per `behavior`, appending non-empty pieces to *out.
// With `invert`, the matches are the kept words and the gaps the delimiters.
void SplitPiece(const PreToken& in, const Ranges& matches, SplitBehavior behavior, bool invert,
                std::vector<PreToken>* out) {
  const std::string& text = in.text;
  struct Span {
    size_t begin, end;
    bool delim;
  };
  std::vector<Span> spans;
  size_t last = 0;
  for (const auto& [b, e] : matches) {
    if (b > last) spans.push_back({last, b, invert});
    spans.push_back({b, e, !invert});
    last = e;
  }
  if (last < text.size()) spans.push_back({last, text.size(), invert});

  auto emit = [&](size_t b, size_t e) {
    if (e > b) out->push_back({text.substr(b, e - b), in.at_start && b == 0});
  };
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.delim) emit(s.begin, s.end);
      }
      break;
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) emit(s.begin, s.end);
      break;
    case SplitBehavior::kContiguous: {
      size_t i = 0;
      while (i < spans.size()) {
        size_t j = i + 1;
        if (spans[i].delim) {
          while (j < spans.size() && spans[j].delim) ++j;
        }
        emit(spans[i].begin, spans[j - 1].end);
        i = j;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      // A delimiter closes the current piece.
      size_t start = 0;
      for (const Span& s : spans) {
        if (s.delim) {
          emit(start, s.end);
          start = s.end;
        }
      }
      emit(start, text.size());
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      // A delimiter opens a new piece.
      size_t start = 0;
      for (const Span& s : spans) {
        if (s.delim) {
          emit(start, s.begin);
          start = s.begin;
        }
      }
      emit(start, text.size());
      break;
    }
  }
}

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  absl::Status PreTokenize(std::vector<PreToken>* pieces) const override {
    for (const auto& step : steps_) SR_RETURN_IF_ERROR(step->PreTokenize(pieces));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(Matcher matcher, SplitBehavior behavior, bool invert)
      : matcher_(std::move(matcher)), behavior_(behavior), invert_(invert) {}
  absl::Status PreTokenize(std::vector<PreToken>* pieces) const override {
    std::vector<PreToken> out;
    out.reserve(pieces->size());
    Ranges matches;
    for (const PreToken& piece : *pieces) {
      matches.clear();
      SR_RETURN_IF_ERROR(matcher_.Find(piece.text, &matches));
      SplitPiece(piece, matches, behavior_, invert_, &out);
    }
    *pieces = std::move(out);
    return absl::OkStatus();
  }

 private:
  Matcher matcher_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  absl::Status PreTokenize(std::vector<PreToken>* pieces) const override {
    std::vector<PreToken> split;
    Ranges matches;
    for (PreToken& piece : *pieces) {
      if (add_prefix_space_ && !piece.text.empty() && piece.text[0] != ' ') {
        piece.text.insert(0, 1, ' ');
      }
      if (regex_ == nullptr) {
        split.push_back(std::move(piece));
        continue;
      }
      matches.clear();
      SR_RETURN_IF_ERROR(regex_->FindAll(piece.text, &matches));
      SplitPiece(piece, matches, SplitBehavior::kIsolated, /*invert=*/false, &split);
    }
    for (PreToken& piece : split) piece.text = BytesToByteLevel(piece.text);
    *pieces = std::move(split);
    return absl::OkStatus();
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  absl::Status PreTokenize(std::vector<PreToken>* pieces) const override {
    std::vector<PreToken> out;
    Ranges matches;
    for (PreToken& piece : *pieces) {
      std::string text;
      text.reserve(piece.text.size() + replacement_.size());
      for (char c : piece.text) {
        if (c == ' ') {
          text.append(replacement_);
        } else {
          text.push_back(c);
        }
      }
      const bool needs_prefix = !text.starts_with(replacement_);
      if (needs_prefix && (scheme_ == PrependScheme::kAlways ||
                           (scheme_ == PrependScheme::kFirst && piece.at_start))) {
        text.insert(0, replacement_);
      }
      PreToken rewritten{std::move(text), piece.at_start};
      if (!split_) {
        if (!rewritten.text.empty()) out.push_back(std::move(rewritten));
        continue;
      }
      matches.clear();
      for (size_t pos = rewritten.text.find(replacement_); pos != std::string::npos;
           pos = rewritten.text.find(replacement_, pos + replacement_.size())) {
        matches.emplace_back(pos, pos + replacement_.size());
      }
      SplitPiece(rewritten, matches, SplitBehavior::kMergedWithNext, false, &out);
    }
    *pieces = std::move(out);
    return absl::OkStatus();
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

absl::StatusOr<std::unique_ptr<PreTokenizer>> MakeRegexSplit(std::string_view pattern,
                                                             SplitBehavior behavior, bool invert) {
  SR_ASSIGN_OR_RETURN(Matcher m, Matcher::Make(Pattern{std::string(pattern), true}));
  return std::make_unique<SplitPreTokenizer>(std::move(m), behavior, invert);
}

}  // namespace

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Json& j) {
  SR_ASSIGN_OR_RETURN(std::string type, TypeOf(j, "pre_tokenizer"));
  const std::string what = absl::StrCat("pre_tokenizer ", type);
  if (type == "Sequence") {
    const Json* list = Member(j, "pretokenizers");
    if (list == nullptr || !list->is_array()) {
      return absl::InvalidArgumentError("pre_tokenizer Sequence needs a \"pretokenizers\" array");
    }
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const Json& item : *list) {
      SR_ASSIGN_OR_RETURN(auto step, ParsePreTokenizer(item));
      steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "Split") {
    const Json* pattern_json = Member(j, "pattern");
    if (pattern_json == nullptr) return absl::InvalidArgumentError(what + " needs a \"pattern\"");
    SR_ASSIGN_OR_RETURN(Pattern pattern, ParsePattern(*pattern_json, what));
    SR_ASSIGN_OR_RETURN(auto behavior_name, OptString(j, "behavior", what));
    SR_ASSIGN_OR_RETURN(SplitBehavior behavior, ParseBehavior(behavior_name.value_or("Isolated")));
    SR_ASSIGN_OR_RETURN(auto invert, OptBool(j, "invert", what));
    SR_ASSIGN_OR_RETURN(Matcher m, Matcher::Make(pattern));
    return std::make_unique<SplitPreTokenizer>(std::move(m), behavior, invert.value_or(false));
  }
  if (type == "ByteLevel") {
    SR_ASSIGN_OR_RETURN(auto add_prefix_space, OptBool(j, "add_prefix_space", what));
    SR_ASSIGN_OR_RETURN(auto use_regex, OptBool(j, "use_regex", what));
    std::unique_ptr<Regex> regex;
    if (use_regex.value_or(true)) {
      SR_ASSIGN_OR_RETURN(regex, Regex::Compile(kGpt2SplitRegex));
    }
    return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space.value_or(true),
                                                   std::move(regex));
  }
  if (type == "Metaspace") {
    SR_ASSIGN_OR_RETURN(auto replacement, OptString(j, "replacement", what));
    SR_ASSIGN_OR_RETURN(auto scheme_name, OptString(j, "prepend_scheme", what));
    SR_ASSIGN_OR_RETURN(auto add_prefix_space, OptBool(j, "add_prefix_space", what));
    SR_ASSIGN_OR_RETURN(auto split, OptBool(j, "split", what));
    PrependScheme scheme = PrependScheme::kAlways;
    if (scheme_name.has_value()) {
      if (*scheme_name == "first") {
        scheme = PrependScheme::kFirst;
      } else if (*scheme_name == "never") {
        scheme = PrependScheme::kNever;
      } else if (*scheme_name != "always") {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": unknown prepend_scheme '", *scheme_name, "'"));
      }
    } else if (add_prefix_space.has_value() && !*add_prefix_space) {
      scheme = PrependScheme::kNever;  // files written before prepend_scheme existed
    }
    return std::make_unique<MetaspacePreTokenizer>(replacement.value_or("\xE2\x96\x81"), scheme,
                                                   split.value_or(true));
  }
  if (type == "Digits") {
    SR_ASSIGN_OR_RETURN(auto individual, OptBool(j, "individual_digits", what));
    return MakeRegexSplit(individual.value_or(false) ? R"(\p{N})" : R"(\p{N}+)",
                          SplitBehavior::kIsolated, false);
  }
  if (type == "Whitespace") return MakeRegexSplit(R"(\w+|[^\w\s]+)", SplitBehavior::kRemoved, true);
  if (type == "WhitespaceSplit") return MakeRegexSplit(R"(\s+)", SplitBehavior::kRemoved, false);
  return absl::InvalidArgumentError(absl::StrCat("unsupported pre_tokenizer type '", type, "'"));
}

}  // namespace shrinkray::tokenizer_internal
