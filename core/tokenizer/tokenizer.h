// Hugging Face tokenizer.json BPE tokenizers, both kinds in use by LLMs:
//  - sentencepiece style (Llama 2, Mistral, stories260K): "▁" for spaces via a
//    Prepend/Replace normalizer or a Metaspace pre-tokenizer, byte fallback
//    tokens <0xXX>, decoder Replace/ByteFallback/Fuse/Strip or Metaspace;
//  - byte-level style (GPT-2, Llama 3, Qwen2): regex pre-tokenization (PCRE2),
//    GPT-2's byte->unicode mapping, optional NFC normalizer.
// Added tokens are matched in the text first; the post-processor template (or
// tokenizer_config.json's add_bos_token) says which special ids to add.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace shrinkray {

namespace tokenizer_internal {
class AddedVocabulary;
class BpeModel;
class Decoder;
class Normalizer;
class PreTokenizer;
}  // namespace tokenizer_internal

class Tokenizer {
 public:
  // Parses tokenizer.json (and tokenizer_config.json in the same folder, when present).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(
      const std::filesystem::path& tokenizer_json);
  // From JSON text; `source` names it in errors. `tokenizer_config_json` is the
  // text of tokenizer_config.json, or empty.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(
      std::string_view json_text, std::string_view source,
      std::string_view tokenizer_config_json = "");

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Text (valid UTF-8, else InvalidArgument) to ids. add_special_tokens applies
  // the post-processor template / add_bos_token (BOS at the start). Thread-safe.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool add_special_tokens = true) const;
  // Decodes as the tokenizer.json decoder does; skip_special_tokens drops
  // special added tokens. An id with no token is InvalidArgument.
  absl::StatusOr<std::string> Decode(std::span<const int32_t> ids,
                                     bool skip_special_tokens = true) const;

  // Including added tokens (max id + 1).
  int vocab_size() const { return vocab_size_; }
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // Empty when `id` has no token.
  std::string_view IdToToken(int32_t id) const;

 private:
  Tokenizer();
  // Encodes one stretch of text that contains no raw added token.
  absl::Status EncodeText(std::string_view text, bool at_start, std::vector<int32_t>* ids) const;

  std::string source_;
  std::unique_ptr<tokenizer_internal::Normalizer> normalizer_;
  std::unique_ptr<tokenizer_internal::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<tokenizer_internal::BpeModel> model_;
  std::unique_ptr<tokenizer_internal::Decoder> decoder_;
  std::unique_ptr<tokenizer_internal::AddedVocabulary> added_;
  std::vector<int32_t> prefix_ids_;  // added before the text when add_special_tokens
  std::vector<int32_t> suffix_ids_;  // added after it
  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eos_id_;
  int vocab_size_ = 0;
};

}  // namespace shrinkray
