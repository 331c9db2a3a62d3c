#include "core/tokenizer/added_vocabulary.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/tokenizer/absl_compat.h"
#include "core/tokenizer/normalizer.h"
#include "core/util/status_macros.h"

namespace shrinkray::tokenizer_internal {
namespace {

bool IsAsciiSpace(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

// Word characters for single_word: ASCII alphanumerics, '_' and any non-ASCII
// byte (letters of other scripts).
bool IsWordByte(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u >= 0x80 || (u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') ||
         u == '_';
}

}  // namespace

void AddedVocabulary::Matcher::Add(std::string pattern, const AddedToken* token) {
  if (pattern.empty()) return;
  entries_.push_back(Entry{std::move(pattern), token});
}

void AddedVocabulary::Matcher::Finish() {
  for (auto& bucket : by_first_byte_) bucket.clear();
  for (const Entry& e : entries_) {
    by_first_byte_[static_cast<unsigned char>(e.pattern[0])].push_back(&e);
  }
  for (auto& bucket : by_first_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(), [](const Entry* a, const Entry* b) {
      return a->pattern.size() > b->pattern.size();
    });
  }
}

void AddedVocabulary::Matcher::Split(std::string_view text, std::vector<Segment>* out) const {
  size_t text_start = 0;  // start of the pending plain-text run
  size_t i = 0;
  while (i < text.size()) {
    const auto& bucket = by_first_byte_[static_cast<unsigned char>(text[i])];
    const Entry* hit = nullptr;
    for (const Entry* e : bucket) {
      if (!text.substr(i).starts_with(e->pattern)) continue;
      const size_t end = i + e->pattern.size();
      if (e->token->single_word &&
          ((i > 0 && IsWordByte(text[i - 1])) || (end < text.size() && IsWordByte(text[end])))) {
        continue;
      }
      hit = e;
      break;
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t begin = i, end = i + hit->pattern.size();
    if (hit->token->lstrip) {
      while (begin > text_start && IsAsciiSpace(text[begin - 1])) --begin;
    }
    if (hit->token->rstrip) {
      while (end < text.size() && IsAsciiSpace(text[end])) ++end;
    }
    if (begin > text_start) out->push_back(Segment{text_start, begin, -1});
    out->push_back(Segment{begin, end, hit->token->id});
    text_start = i = end;
  }
  if (text_start < text.size()) out->push_back(Segment{text_start, text.size(), -1});
}

absl::Status AddedVocabulary::Init(const Json* added_tokens, const Normalizer* normalizer) {
  if (added_tokens != nullptr) {
    if (!added_tokens->is_array()) {
      return absl::InvalidArgumentError("\"added_tokens\" must be an array");
    }
    for (const Json& item : *added_tokens) {
      constexpr std::string_view kWhat = "added token";
      SR_ASSIGN_OR_RETURN(auto id, OptInt(item, "id", kWhat));
      SR_ASSIGN_OR_RETURN(auto content, OptString(item, "content", kWhat));
      if (!id.has_value() || !content.has_value() || *id < 0 || *id >= (1 << 24)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "added token needs a \"content\" and an \"id\" in [0, 2^24): ", item.dump()));
      }
      SR_ASSIGN_OR_RETURN(auto special, OptBool(item, "special", kWhat));
      SR_ASSIGN_OR_RETURN(auto normalized, OptBool(item, "normalized", kWhat));
      SR_ASSIGN_OR_RETURN(auto lstrip, OptBool(item, "lstrip", kWhat));
      SR_ASSIGN_OR_RETURN(auto rstrip, OptBool(item, "rstrip", kWhat));
      SR_ASSIGN_OR_RETURN(auto single_word, OptBool(item, "single_word", kWhat));
      AddedToken t;
      t.id = static_cast<int32_t>(*id);
      t.content = *content;
      t.special = special.value_or(false);
      t.normalized = normalized.value_or(!t.special);  // HF's default
      t.lstrip = lstrip.value_or(false);
      t.rstrip = rstrip.value_or(false);
      t.single_word = single_word.value_or(false);
      tokens_.push_back(std::move(t));
    }
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    by_id_[t.id] = i;
    by_content_.try_emplace(t.content, i);
    max_id_ = std::max(max_id_, t.id);
    if (t.normalized && normalizer != nullptr) {
      std::string pattern = t.content;
      SR_RETURN_IF_ERROR(normalizer->Normalize(&pattern));
      normalized_.Add(std::move(pattern), &t);
    } else if (t.normalized) {
      normalized_.Add(t.content, &t);
    } else {
      raw_.Add(t.content, &t);
    }
  }
  raw_.Finish();
  normalized_.Finish();
  return absl::OkStatus();
}

const AddedToken* AddedVocabulary::FindById(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::FindByContent(std::string_view content) const {
  auto it = by_content_.find(Sv(content));
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

}  // namespace shrinkray::tokenizer_internal
