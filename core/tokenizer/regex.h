// A compiled PCRE2 pattern (UTF + Unicode properties, JIT when available) used
// by the Split pre-tokenizer and Replace normalizer/decoder.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace shrinkray::tokenizer_internal {

class Regex {
 public:
  // Compiles `pattern` (Oniguruma/Rust-style syntax used by tokenizer.json; the
  // constructs in use are PCRE2-compatible).
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the [begin, end) byte ranges of all non-overlapping matches in
  // `text` (which must be valid UTF-8), left to right. Thread-safe.
  absl::Status FindAll(std::string_view text,
                       std::vector<std::pair<size_t, size_t>>* matches) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*, kept opaque to keep pcre2.h out of headers
  bool jit_ = false;
};

}  // namespace shrinkray::tokenizer_internal
