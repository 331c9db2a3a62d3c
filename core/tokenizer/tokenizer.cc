#include "core/tokenizer/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/tokenizer/absl_compat.h"
#include "core/tokenizer/added_vocabulary.h"
#include "core/tokenizer/bpe_model.h"
#include "core/tokenizer/decoder.h"
#include "core/tokenizer/json_util.h"
#include "core/tokenizer/normalizer.h"
#include "core/tokenizer/post_processor.h"
#include "core/tokenizer/pre_tokenizer.h"
#include "core/tokenizer/utf8.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

using tokenizer_internal::Json;
using tokenizer_internal::Member;
namespace ti = tokenizer_internal;

// Prefixes a status message with the file (or other source) it concerns.
absl::Status WithSource(const absl::Status& status, std::string_view source) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(ti::Sv(source), ": ", status.message()));
}

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path.string()));
  return std::move(ss).str();
}

// The parts of tokenizer_config.json that decide BOS/EOS handling.
struct TokenizerConfig {
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
};

// bos_token/eos_token are either a string or an AddedToken object {"content": ...}.
std::optional<std::string> ConfigTokenString(const Json& config, std::string_view key) {
  const Json* v = Member(config, key);
  if (v == nullptr) return std::nullopt;
  if (v->is_string()) return v->get<std::string>();
  if (const Json* content = Member(*v, "content"); content != nullptr && content->is_string()) {
    return content->get<std::string>();
  }
  return std::nullopt;
}

absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(std::string_view text) {
  TokenizerConfig out;
  if (text.empty()) return out;
  Json config = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError("tokenizer_config.json is not a valid JSON object");
  }
  constexpr std::string_view kWhat = "tokenizer_config.json";
  SR_ASSIGN_OR_RETURN(out.add_bos_token,
                      tokenizer_internal::OptBool(config, "add_bos_token", kWhat));
  SR_ASSIGN_OR_RETURN(out.add_eos_token,
                      tokenizer_internal::OptBool(config, "add_eos_token", kWhat));
  out.bos_token = ConfigTokenString(config, "bos_token");
  out.eos_token = ConfigTokenString(config, "eos_token");
  return out;
}

// Makes `ids` contain `id` (at the front or back) when `want`, and not at all otherwise.
void SetMembership(std::vector<int32_t>* ids, int32_t id, bool want, bool at_front) {
  const bool has = std::find(ids->begin(), ids->end(), id) != ids->end();
  if (want && !has) {
    ids->insert(at_front ? ids->begin() : ids->end(), id);
  } else if (!want && has) {
    ids->erase(std::remove(ids->begin(), ids->end(), id), ids->end());
  }
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(
    const std::filesystem::path& tokenizer_json) {
  SR_ASSIGN_OR_RETURN(std::string text, ReadFile(tokenizer_json));
  std::string config_text;
  const std::filesystem::path config_path = tokenizer_json.parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (std::filesystem::exists(config_path, ec)) {
    SR_ASSIGN_OR_RETURN(config_text, ReadFile(config_path));
  }
  return FromJson(text, tokenizer_json.string(), config_text);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(
    std::string_view json_text, std::string_view source, std::string_view tokenizer_config_json) {
  Json root = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(ti::Sv(source), ": invalid JSON"));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(ti::Sv(source), ": top level is not a JSON object"));
  }
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  tok->source_ = std::string(source);

  const Json* model = Member(root, "model");
  if (model == nullptr || !model->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(ti::Sv(source), ": no \"model\" object"));
  }
  auto model_type = ti::OptString(*model, "type", "model");
  if (!model_type.ok()) return WithSource(model_type.status(), source);
  // Old files omit the type of a BPE model; the merges identify it.
  const std::string type = model_type->value_or(Member(*model, "merges") != nullptr ? "BPE" : "");
  if (type != "BPE") {
    return absl::InvalidArgumentError(
        absl::StrCat(ti::Sv(source), ": model type '", type, "' is not supported (only BPE)"));
  }
  auto bpe = ti::BpeModel::FromJson(*model);
  if (!bpe.ok()) return WithSource(bpe.status(), source);
  tok->model_ = *std::move(bpe);

  if (const Json* j = Member(root, "normalizer")) {
    auto n = ti::ParseNormalizer(*j);
    if (!n.ok()) return WithSource(n.status(), source);
    tok->normalizer_ = *std::move(n);
  }
  if (const Json* j = Member(root, "pre_tokenizer")) {
    auto p = ti::ParsePreTokenizer(*j);
    if (!p.ok()) return WithSource(p.status(), source);
    tok->pre_tokenizer_ = *std::move(p);
  }
  if (const Json* j = Member(root, "decoder")) {
    auto d = ti::ParseDecoder(*j);
    if (!d.ok()) return WithSource(d.status(), source);
    tok->decoder_ = *std::move(d);
  }
  tok->added_ = std::make_unique<ti::AddedVocabulary>();
  SR_RETURN_IF_ERROR(
      WithSource(tok->added_->Init(Member(root, "added_tokens"), tok->normalizer_.get()), source));
  tok->vocab_size_ = std::max(tok->model_->max_id(), tok->added_->max_id()) + 1;

  ti::SpecialTokensTemplate specials;
  if (const Json* j = Member(root, "post_processor")) {
    auto s = ti::ParsePostProcessor(*j);
    if (!s.ok()) return WithSource(s.status(), source);
    specials = *std::move(s);
  }
  for (int32_t id : specials.prefix) {
    if (id < 0 || id >= tok->vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat(
          ti::Sv(source), ": post_processor uses token id ", id, " outside the vocabulary"));
    }
  }
  for (int32_t id : specials.suffix) {
    if (id < 0 || id >= tok->vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat(
          ti::Sv(source), ": post_processor uses token id ", id, " outside the vocabulary"));
    }
  }

  auto config = ParseTokenizerConfig(tokenizer_config_json);
  if (!config.ok()) return WithSource(config.status(), source);
  if (config->bos_token.has_value()) tok->bos_id_ = tok->TokenToId(*config->bos_token);
  if (config->eos_token.has_value()) tok->eos_id_ = tok->TokenToId(*config->eos_token);
  if (!tok->bos_id_.has_value() && !specials.prefix.empty()) tok->bos_id_ = specials.prefix.front();
  // Without a config, fall back to the conventional names.
  for (const char* name : {"<s>", "<|begin_of_text|>", "<bos>"}) {
    if (!tok->bos_id_.has_value()) tok->bos_id_ = tok->TokenToId(name);
  }
  for (const char* name : {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"}) {
    if (!tok->eos_id_.has_value()) tok->eos_id_ = tok->TokenToId(name);
  }
  // An explicit add_bos_token/add_eos_token overrides the template, as
  // transformers' Llama tokenizers do.
  if (config->add_bos_token.has_value() && tok->bos_id_.has_value()) {
    SetMembership(&specials.prefix, *tok->bos_id_, *config->add_bos_token, /*at_front=*/true);
  }
  if (config->add_eos_token.has_value() && tok->eos_id_.has_value()) {
    SetMembership(&specials.suffix, *tok->eos_id_, *config->add_eos_token, /*at_front=*/false);
  }
  tok->prefix_ids_ = std::move(specials.prefix);
  tok->suffix_ids_ = std::move(specials.suffix);
  return tok;
}

absl::Status Tokenizer::EncodeText(std::string_view text, bool at_start,
                                   std::vector<int32_t>* ids) const {
  std::string normalized(text);
  if (normalizer_ != nullptr) SR_RETURN_IF_ERROR(normalizer_->Normalize(&normalized));

  std::vector<ti::Segment> segments;
  if (added_->has_normalized()) {
    added_->SplitNormalized(normalized, &segments);
  } else {
    segments.push_back(ti::Segment{0, normalized.size(), -1});
  }
  std::vector<ti::PreToken> pieces;
  for (const ti::Segment& seg : segments) {
    if (seg.id >= 0) {
      ids->push_back(seg.id);
      continue;
    }
    pieces.clear();
    pieces.push_back(ti::PreToken{normalized.substr(seg.begin, seg.end - seg.begin),
                                  at_start && seg.begin == 0});
    if (pre_tokenizer_ != nullptr) SR_RETURN_IF_ERROR(pre_tokenizer_->PreTokenize(&pieces));
    for (const ti::PreToken& piece : pieces) SR_RETURN_IF_ERROR(model_->Tokenize(piece.text, ids));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       bool add_special_tokens) const {
  if (auto bad = ti::FindInvalidUtf8(text); bad.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("text is not valid UTF-8 at byte ", *bad));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  if (add_special_tokens) ids.insert(ids.end(), prefix_ids_.begin(), prefix_ids_.end());
  std::vector<ti::Segment> segments;
  added_->SplitRaw(text, &segments);
  for (const ti::Segment& seg : segments) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
    } else {
      SR_RETURN_IF_ERROR(
          EncodeText(text.substr(seg.begin, seg.end - seg.begin), seg.begin == 0, &ids));
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

absl::StatusOr<std::string> Tokenizer::Decode(std::span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is out of range [0, ", vocab_size_, ")"));
    }
    if (const auto* added = added_->FindById(id)) {
      if (!(skip_special_tokens && added->special)) tokens.push_back(added->content);
      continue;
    }
    const std::string* token = model_->IdToToken(id);
    if (token == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " has no token"));
    }
    tokens.push_back(*token);
  }
  if (decoder_ == nullptr) return absl::StrJoin(tokens, " ");  // HF's behaviour without a decoder
  SR_RETURN_IF_ERROR(decoder_->DecodeChain(&tokens));
  return absl::StrJoin(tokens, "");
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (const auto* added = added_->FindByContent(token)) return added->id;
  return model_->TokenToId(token);
}

std::string_view Tokenizer::IdToToken(int32_t id) const {
  if (const auto* added = added_->FindById(id)) return added->content;
  const std::string* token = model_->IdToToken(id);
  return token == nullptr ? std::string_view() : std::string_view(*token);
}

}  // namespace shrinkray
