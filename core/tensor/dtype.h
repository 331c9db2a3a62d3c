// Element types of tensors, with one traits table (ggml's type_traits idea):
// every per-dtype fact (safetensors name, byte size, kind) lives in kDTypeTraits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace shrinkray {

enum class DType : uint8_t {
  kF64 = 0,
  kF32,
  kF16,
  kBF16,
  kI64,
  kI32,
  kI16,
  kI8,
  kU8,
  kBool,
  kCount,  // not a dtype: the table's length
};

struct DTypeTraits {
  DType dtype;
  std::string_view name;  // safetensors spelling: "F32", "BF16", ...
  size_t size;            // bytes per element
  bool is_float;
  bool is_signed;
};

const DTypeTraits& GetDTypeTraits(DType dtype);
inline size_t DTypeSize(DType dtype) { return GetDTypeTraits(dtype).size; }
inline std::string_view DTypeName(DType dtype) { return GetDTypeTraits(dtype).name; }

// Parses a safetensors dtype string ("F32", "F16", "BF16", "I32", "I8", "U8", ...).
// Unknown names are InvalidArgument naming the string.
absl::StatusOr<DType> ParseDType(std::string_view name);

}  // namespace shrinkray
