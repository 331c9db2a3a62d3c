#include "core/tensor/dtype.h"

#include <array>
#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace shrinkray {
namespace {

// Debian's abseil is built with its own absl::string_view (not std's), so
// std::string_view must be converted before it reaches StrCat.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr size_t kNumDTypes = static_cast<size_t>(DType::kCount);

// Indexed by DType; every per-dtype fact lives here and nowhere else.
constexpr std::array<DTypeTraits, kNumDTypes> kDTypeTraits = {{
    {DType::kF64, "F64", 8, /*is_float=*/true, /*is_signed=*/true},
    {DType::kF32, "F32", 4, true, true},
    {DType::kF16, "F16", 2, true, true},
    {DType::kBF16, "BF16", 2, true, true},
    {DType::kI64, "I64", 8, false, true},
    {DType::kI32, "I32", 4, false, true},
    {DType::kI16, "I16", 2, false, true},
    {DType::kI8, "I8", 1, false, true},
    {DType::kU8, "U8", 1, false, false},
    {DType::kBool, "BOOL", 1, false, false},
}};

// A missing or misplaced row would silently give the wrong size to a dtype.
constexpr bool TableInEnumOrder() {
  for (size_t i = 0; i < kDTypeTraits.size(); ++i) {
    if (static_cast<size_t>(kDTypeTraits[i].dtype) != i) return false;
    if (kDTypeTraits[i].name.empty() || kDTypeTraits[i].size == 0) return false;
  }
  return true;
}
static_assert(kDTypeTraits.size() == kNumDTypes, "kDTypeTraits needs one row per DType");
static_assert(TableInEnumOrder(), "kDTypeTraits rows must follow the DType enum order");

}  // namespace

const DTypeTraits& GetDTypeTraits(DType dtype) {
  // kCount or a corrupted byte must not read past the table; the sentinel row
  // has a name that makes the mistake visible in any error message.
  static constexpr DTypeTraits kInvalid = {DType::kCount, "INVALID", 1, false, false};
  const size_t index = static_cast<size_t>(dtype);
  return index < kNumDTypes ? kDTypeTraits[index] : kInvalid;
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  for (const DTypeTraits& traits : kDTypeTraits) {
    if (traits.name == name) return traits.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", Sv(name), "'"));
}

}  // namespace shrinkray
