#include "core/tokenizer/bpe_model.h"

#include <algorithm>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/tokenizer/absl_compat.h"
#include "core/tokenizer/utf8.h"
#include "core/util/status_macros.h"

namespace shrinkray::tokenizer_internal {
namespace {

// Ids beyond this are rejected so that a corrupt file cannot make us allocate
// an enormous id table (real vocabularies are < 300k).
constexpr int64_t kMaxTokenId = 1 << 24;
// Only short words are cached: long ones (sentencepiece text without a
// pre-tokenizer) rarely repeat and would bloat the map.
constexpr size_t kMaxCachedWordBytes = 128;
constexpr size_t kMaxCacheEntries = 1 << 18;

absl::Status ParseMergeEntry(const Json& entry, std::string* a, std::string* b) {
  if (entry.is_string()) {
    const std::string& s = entry.get_ref<const std::string&>();
    const size_t space = s.find(' ');
    if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge \"", s, "\" is not two tokens separated by one space"));
    }
    *a = s.substr(0, space);
    *b = s.substr(space + 1);
    return absl::OkStatus();
  }
  if (entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string()) {
    *a = entry[0].get<std::string>();
    *b = entry[1].get<std::string>();
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError("a merge must be \"a b\" or [\"a\", \"b\"]");
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const Json& model) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  constexpr std::string_view kWhat = "model";

  const Json* vocab = Member(model, "vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return absl::InvalidArgumentError("BPE model needs a \"vocab\" object");
  }
  int64_t max_id = -1;
  m->vocab_.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it.value().is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocab entry \"", it.key(), "\" has no integer id"));
    }
    const int64_t id = it.value().get<int64_t>();
    if (id < 0 || id >= kMaxTokenId) {
      return absl::InvalidArgumentError(absl::StrCat("vocab entry \"", it.key(), "\" has id ", id,
                                                     " outside [0, ", kMaxTokenId, ")"));
    }
    m->vocab_[it.key()] = static_cast<int32_t>(id);
    max_id = std::max(max_id, id);
  }
  m->id_to_token_.resize(static_cast<size_t>(max_id + 1));
  m->id_present_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : m->vocab_) {
    m->id_to_token_[id] = token;
    m->id_present_[id] = true;
  }

  SR_ASSIGN_OR_RETURN(auto unk, OptString(model, "unk_token", kWhat));
  if (unk.has_value()) {
    // HF tolerates an unk_token missing from the vocab until it is needed.
    if (auto it = m->vocab_.find(*unk); it != m->vocab_.end()) m->unk_id_ = it->second;
  }
  SR_ASSIGN_OR_RETURN(auto byte_fallback, OptBool(model, "byte_fallback", kWhat));
  SR_ASSIGN_OR_RETURN(auto fuse_unk, OptBool(model, "fuse_unk", kWhat));
  SR_ASSIGN_OR_RETURN(auto ignore_merges, OptBool(model, "ignore_merges", kWhat));
  SR_ASSIGN_OR_RETURN(auto prefix, OptString(model, "continuing_subword_prefix", kWhat));
  SR_ASSIGN_OR_RETURN(auto suffix, OptString(model, "end_of_word_suffix", kWhat));
  m->byte_fallback_ = byte_fallback.value_or(false);
  m->fuse_unk_ = fuse_unk.value_or(false);
  m->ignore_merges_ = ignore_merges.value_or(false);
  m->continuing_subword_prefix_ = prefix.value_or("");
  m->end_of_word_suffix_ = suffix.value_or("");

  for (int b = 0; b < 256; ++b) {
    auto it = m->vocab_.find(absl::StrFormat("<0x%02X>", b));
    m->byte_token_ids_[b] = it == m->vocab_.end() ? -1 : it->second;
  }
  for (int c = 0; c < 128; ++c) {
    auto it = m->vocab_.find(std::string(1, static_cast<char>(c)));
    m->ascii_ids_[c] = it == m->vocab_.end() ? -1 : it->second;
  }

  if (const Json* merges = Member(model, "merges"); merges != nullptr) {
    if (!merges->is_array()) return absl::InvalidArgumentError("model \"merges\" must be an array");
    m->merges_.reserve(merges->size());
    std::string a, b;
    int32_t rank = 0;
    for (const Json& entry : *merges) {
      SR_RETURN_IF_ERROR(ParseMergeEntry(entry, &a, &b));
      auto ia = m->vocab_.find(a);
      auto ib = m->vocab_.find(b);
      if (ia == m->vocab_.end() || ib == m->vocab_.end()) {
        return absl::InvalidArgumentError(absl::StrCat("merge \"", a, " ", b, "\" (rank ", rank,
                                                       ") uses a token not in the vocab"));
      }
      std::string merged = a;
      if (!m->continuing_subword_prefix_.empty() && b.starts_with(m->continuing_subword_prefix_)) {
        merged.append(b, m->continuing_subword_prefix_.size());
      } else {
        merged += b;
      }
      auto im = m->vocab_.find(merged);
      if (im == m->vocab_.end()) {
        return absl::InvalidArgumentError(absl::StrCat("merge \"", a, " ", b, "\" (rank ", rank,
                                                       ") makes \"", merged,
                                                       "\", which is not in the vocab"));
      }
      // A repeated pair keeps its first (best) rank.
      m->merges_.try_emplace(PairKey(ia->second, ib->second), MergeResult{rank, im->second});
      ++rank;
    }
  }
  return m;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(Sv(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !id_present_[id]) return nullptr;
  return &id_to_token_[id];
}

absl::Status BpeModel::InitialSymbols(std::string_view word, std::vector<Symbol>* symbols) const {
  const bool affixes = !continuing_subword_prefix_.empty() || !end_of_word_suffix_.empty();
  bool last_was_unk = false;
  std::string piece;
  auto push = [&](int32_t id) {
    const auto idx = static_cast<int32_t>(symbols->size());
    symbols->push_back(Symbol{id, idx - 1, idx + 1, true});
  };
  size_t pos = 0;
  while (pos < word.size()) {
    const auto lead = static_cast<unsigned char>(word[pos]);
    const size_t len = std::min(Utf8LeadLength(lead), word.size() - pos);
    const std::string_view ch = word.substr(pos, len);
    int32_t id = -1;
    if (!affixes) {
      if (lead < 0x80) {
        id = ascii_ids_[lead];
      } else if (auto it = vocab_.find(Sv(ch)); it != vocab_.end()) {
        id = it->second;
      }
    } else {
      piece.clear();
      if (pos > 0) piece += continuing_subword_prefix_;
      piece += ch;
      if (pos + len == word.size()) piece += end_of_word_suffix_;
      if (auto it = vocab_.find(piece); it != vocab_.end()) id = it->second;
    }
    pos += len;
    if (id >= 0) {
      push(id);
      last_was_unk = false;
      continue;
    }
    if (byte_fallback_ && std::all_of(ch.begin(), ch.end(), [&](char c) {
          return byte_token_ids_[static_cast<unsigned char>(c)] >= 0;
        })) {
      for (char c : ch) push(byte_token_ids_[static_cast<unsigned char>(c)]);
      last_was_unk = false;
      continue;
    }
    if (!unk_id_.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "character \"", Sv(ch), "\" is not in the vocabulary and the model has no unk_token"));
    }
    if (!(fuse_unk_ && last_was_unk)) push(*unk_id_);
    last_was_unk = true;
  }
  if (!symbols->empty()) symbols->back().next = -1;
  return absl::OkStatus();
}

absl::Status BpeModel::TokenizeUncached(std::string_view word, std::vector<int32_t>* out) const {
  if (ignore_merges_) {
    if (auto it = vocab_.find(Sv(word)); it != vocab_.end()) {
      out->push_back(it->second);
      return absl::OkStatus();
    }
  }
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  SR_RETURN_IF_ERROR(InitialSymbols(word, &symbols));

  // Heap entries pack (rank, position) so that the smallest rank wins and ties
  // go to the leftmost pair, as in HF. Entries may be stale: they are
  // re-validated against the current symbols when popped.
  auto entry = [](int32_t rank, int32_t pos) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(rank)) << 32) | static_cast<uint32_t>(pos);
  };
  std::vector<uint64_t> heap;
  heap.reserve(symbols.size());
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const MergeResult* m = FindMerge(symbols[i].id, symbols[i + 1].id)) {
      heap.push_back(entry(m->rank, static_cast<int32_t>(i)));
    }
  }
  const std::greater<uint64_t> cmp;
  std::make_heap(heap.begin(), heap.end(), cmp);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), cmp);
    const uint64_t top = heap.back();
    heap.pop_back();
    const auto rank = static_cast<int32_t>(top >> 32);
    const auto pos = static_cast<int32_t>(top & 0xFFFFFFFFu);
    Symbol& left = symbols[pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const MergeResult* m = FindMerge(left.id, right.id);
    if (m == nullptr || m->rank != rank) continue;  // stale entry

    left.id = m->new_id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = pos;
    if (left.prev >= 0) {
      if (const MergeResult* p = FindMerge(symbols[left.prev].id, left.id)) {
        heap.push_back(entry(p->rank, left.prev));
        std::push_heap(heap.begin(), heap.end(), cmp);
      }
    }
    if (left.next >= 0) {
      if (const MergeResult* n = FindMerge(left.id, symbols[left.next].id)) {
        heap.push_back(entry(n->rank, pos));
        std::push_heap(heap.begin(), heap.end(), cmp);
      }
    }
  }
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
    out->push_back(symbols[i].id);
  }
  return absl::OkStatus();
}

absl::Status BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* out) const {
  if (word.empty()) return absl::OkStatus();
  if (word.size() > kMaxCachedWordBytes) return TokenizeUncached(word, out);
  {
    absl::ReaderMutexLock lock(&cache_mu_);
    auto it = cache_.find(Sv(word));
    if (it != cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return absl::OkStatus();
    }
  }
  std::vector<int32_t> ids;
  SR_RETURN_IF_ERROR(TokenizeUncached(word, &ids));
  out->insert(out->end(), ids.begin(), ids.end());
  absl::MutexLock lock(&cache_mu_);
  if (cache_.size() >= kMaxCacheEntries) cache_.clear();
  cache_.emplace(std::string(word), std::move(ids));
  return absl::OkStatus();
}

}  // namespace shrinkray::tokenizer_internal
