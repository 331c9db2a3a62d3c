#include "core/tokenizer/byte_level.h"

#include <array>

#include "core/tokenizer/utf8.h"

namespace shrinkray::tokenizer_internal {
namespace {

// Printable Latin-1 bytes keep their own code point; the other 68 bytes are
// assigned U+0100, U+0101, ... in byte order.
struct ByteTables {
  std::array<char32_t, 256> to_cp{};
  std::array<std::string, 256> to_utf8{};
  std::array<int, 324> from_cp{};  // the largest code point used is U+0143

  ByteTables() {
    from_cp.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? static_cast<char32_t>(b) : next++;
      from_cp[to_cp[b]] = b;
      AppendUtf8(to_cp[b], &to_utf8[b]);
    }
  }
};

const ByteTables& Tables() {
  static const ByteTables* tables = new ByteTables();
  return *tables;
}

}  // namespace

char32_t ByteToCodePoint(unsigned char b) { return Tables().to_cp[b]; }

std::string BytesToByteLevel(std::string_view bytes) {
  const ByteTables& t = Tables();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out.append(t.to_utf8[static_cast<unsigned char>(c)]);
  return out;
}

void ByteLevelToBytes(std::string_view token, std::string* out) {
  const ByteTables& t = Tables();
  const size_t start = out->size();
  size_t pos = 0;
  while (pos < token.size()) {
    const uint32_t cp = DecodeUtf8At(token, &pos);
    if (cp >= t.from_cp.size() || t.from_cp[cp] < 0) {
      out->resize(start);
      out->append(token);
      return;
    }
    out->push_back(static_cast<char>(t.from_cp[cp]));
  }
}

}  // namespace shrinkray::tokenizer_internal
