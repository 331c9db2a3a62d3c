// tokenizer.json "added_tokens": strings (special or not) that are cut out of
// the text before the model sees it, matched leftmost-longest.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tokenizer/json_util.h"

namespace shrinkray::tokenizer_internal {

class Normalizer;

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  // Matched in normalized text (true) or in the raw input (false).
  bool normalized = false;
  bool lstrip = false;       // swallows whitespace on its left
  bool rstrip = false;       // swallows whitespace on its right
  bool single_word = false;  // only matches when not inside a word
};

// A [begin, end) byte range of the searched text: an added token (id >= 0) or
// plain text for the rest of the pipeline (id == -1).
struct Segment {
  size_t begin;
  size_t end;
  int32_t id;
};

class AddedVocabulary {
 public:
  // Parses the "added_tokens" array (nullptr: none). `normalizer` (may be null)
  // rewrites the content of normalized tokens, as they are matched after
  // normalization.
  absl::Status Init(const Json* added_tokens, const Normalizer* normalizer);

  // Splits `text` on the raw (normalized == false) tokens.
  void SplitRaw(std::string_view text, std::vector<Segment>* out) const { raw_.Split(text, out); }
  // Splits already normalized `text` on the normalized tokens.
  void SplitNormalized(std::string_view text, std::vector<Segment>* out) const {
    normalized_.Split(text, out);
  }
  bool has_normalized() const { return !normalized_.empty(); }

  const AddedToken* FindById(int32_t id) const;
  const AddedToken* FindByContent(std::string_view content) const;
  int32_t max_id() const { return max_id_; }
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // Leftmost-longest matcher over one group of tokens.
  class Matcher {
   public:
    void Add(std::string pattern, const AddedToken* token);
    void Finish();
    bool empty() const { return entries_.empty(); }
    void Split(std::string_view text, std::vector<Segment>* out) const;

   private:
    struct Entry {
      std::string pattern;
      const AddedToken* token;
    };
    std::vector<Entry> entries_;
    // Entries whose pattern starts with byte b, longest first.
    std::array<std::vector<const Entry*>, 256> by_first_byte_;
  };

  std::vector<AddedToken> tokens_;
  absl::flat_hash_map<int32_t, size_t> by_id_;
  absl::flat_hash_map<std::string, size_t> by_content_;
  int32_t max_id_ = -1;
  Matcher raw_;
  Matcher normalized_;
};

}  // namespace shrinkray::tokenizer_internal
