// GPT-2's reversible byte <-> printable-unicode mapping used by ByteLevel
// pre-tokenizers and decoders: every byte becomes one visible code point so that
// BPE vocabularies never contain raw control bytes or spaces.
#pragma once

#include <string>
#include <string_view>

namespace shrinkray::tokenizer_internal {

// The code point that byte `b` is written as (e.g. ' ' -> U+0120 'Ġ').
char32_t ByteToCodePoint(unsigned char b);

// Maps every byte of `bytes` to its code point, UTF-8 encoded.
std::string BytesToByteLevel(std::string_view bytes);

// Inverse of BytesToByteLevel for one token. A token containing any code point
// outside the mapping (e.g. an added token with a raw space) is kept as its raw
// bytes, as the HF ByteLevel decoder does. Appends to *out.
void ByteLevelToBytes(std::string_view token, std::string* out);

}  // namespace shrinkray::tokenizer_internal
