// UTF-8 helpers shared by the tokenizer stages (validation, decoding, lossy repair).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace shrinkray::tokenizer_internal {

// Length in bytes of the valid UTF-8 sequence at the start of `s`, or 0 when the
// bytes there are not a well-formed sequence (overlongs, surrogates and code
// points above U+10FFFF are rejected).
size_t ValidUtf8SequenceLength(std::string_view s);

// Offset of the first byte that is not part of well-formed UTF-8, if any.
std::optional<size_t> FindInvalidUtf8(std::string_view s);

// Decodes the code point at s[*pos] (which must be valid UTF-8) and advances *pos.
uint32_t DecodeUtf8At(std::string_view s, size_t* pos);

// Appends the UTF-8 encoding of code point `cp`.
void AppendUtf8(uint32_t cp, std::string* out);

// Number of bytes of the UTF-8 character whose lead byte is `lead` (1 for a
// stray continuation byte, so that loops always make progress).
inline size_t Utf8LeadLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;
}

// Copies `bytes`, replacing each maximal ill-formed subsequence with U+FFFD (as
// Rust's String::from_utf8_lossy does, which the HF decoders use).
std::string Utf8Lossy(std::string_view bytes);

}  // namespace shrinkray::tokenizer_internal
