// Debian's abseil is built with its own absl::string_view (not an alias of
// std::string_view): convert explicitly before StrCat and before heterogeneous
// lookups in absl hash maps.
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace shrinkray::tokenizer_internal {

inline absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace shrinkray::tokenizer_internal
