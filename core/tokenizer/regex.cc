#include "core/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"
#include "core/tokenizer/absl_compat.h"
#include "core/tokenizer/utf8.h"

namespace shrinkray::tokenizer_internal {
namespace {

std::string Pcre2Error(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof(buf)) < 0) return absl::StrCat("error ", code);
  return std::string(reinterpret_cast<const char*>(buf));
}

// Frees the per-call match data on every exit path.
struct MatchDataDeleter {
  void operator()(pcre2_match_data* md) const { pcre2_match_data_free(md); }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot compile regex '", Sv(pattern),
                                                   "' at offset ", error_offset, ": ",
                                                   Pcre2Error(error_code)));
  }
  std::unique_ptr<Regex> re(new Regex());
  re->pattern_ = std::string(pattern);
  re->code_ = code;
  // JIT is an optimisation only: builds without it (or with it disabled at run
  // time) fall back to the interpreter.
  re->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return re;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

absl::Status Regex::FindAll(std::string_view text,
                            std::vector<std::pair<size_t, size_t>>* matches) const {
  auto* code = static_cast<pcre2_code*>(code_);
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(
      pcre2_match_data_create_from_pattern(code, nullptr));
  if (md == nullptr) return absl::ResourceExhaustedError("cannot allocate PCRE2 match data");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  bool use_jit = jit_;
  while (start <= text.size()) {
    // The text was validated once by the caller; skip PCRE2's per-call check.
    uint32_t options = PCRE2_NO_UTF_CHECK | (use_jit ? 0 : PCRE2_NO_JIT);
    int rc = pcre2_match(code, subject, text.size(), start, options, md.get(), nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && use_jit) {
      use_jit = false;  // very long runs can exhaust the JIT stack; retry interpreted
      continue;
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      return absl::InternalError(
          absl::StrCat("regex '", pattern_, "' failed to match: ", Pcre2Error(rc)));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    const size_t b = ov[0], e = ov[1];
    if (e > b) {
      matches->emplace_back(b, e);
      start = e;
    } else {
      // Empty match: step one character so the scan always advances.
      if (b >= text.size()) break;
      start = b + Utf8LeadLength(static_cast<unsigned char>(text[b]));
    }
  }
  return absl::OkStatus();
}

}  // namespace shrinkray::tokenizer_internal
