// Range checks over large integer arrays (a layer's GPTQ codes are 10^8
// values), written so that the compiler vectorizes them at -O2 too: a
// fixed-size inner block, whose trip count needs no scalar epilogue.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

namespace shrinkray {

namespace value_range_internal {

template <typename T>
std::optional<size_t> FirstOutOfRange(std::span<const T> values, int32_t lo, int32_t hi) {
  // v - lo as unsigned is above hi - lo exactly when v is outside [lo, hi].
  const uint32_t width = static_cast<uint32_t>(hi) - static_cast<uint32_t>(lo);
  auto outside = [&](T v) {
    return static_cast<uint32_t>(static_cast<int32_t>(v)) - static_cast<uint32_t>(lo) > width;
  };
  constexpr size_t kBlock = 64;
  size_t begin = 0;
  for (; begin + kBlock <= values.size(); begin += kBlock) {
    uint32_t any = 0;
    for (size_t j = 0; j < kBlock; ++j) any |= static_cast<uint32_t>(outside(values[begin + j]));
    if (any != 0) break;
  }
  for (size_t i = begin; i < values.size(); ++i) {
    if (outside(values[i])) return i;
  }
  return std::nullopt;
}

}  // namespace value_range_internal

// The index of the first value outside [lo, hi] (lo <= hi), if any.
inline std::optional<size_t> FirstOutOfRange(std::span<const int32_t> values, int32_t lo, int32_t hi) {
  return value_range_internal::FirstOutOfRange(values, lo, hi);
}
inline std::optional<size_t> FirstOutOfRange(std::span<const uint8_t> values, int32_t lo, int32_t hi) {
  return value_range_internal::FirstOutOfRange(values, lo, hi);
}

}  // namespace shrinkray
