#include "core/tensor/convert.h"

#include <bit>
#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace shrinkray {
namespace {

// Debian's abseil is built with its own absl::string_view (not std's), so
// std::string_view must be converted before it reaches StrCat.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr uint32_t kF32SignMask = 0x80000000u;
constexpr uint32_t kF32AbsMask = 0x7FFFFFFFu;
constexpr uint32_t kF32Inf = 0x7F800000u;
constexpr uint32_t kF32QuietBit = 0x00400000u;

// Rounds `value >> shift` to nearest, ties to even. 1 <= shift <= 31.
uint32_t ShiftRightRoundEven(uint32_t value, int shift) {
  const uint32_t quotient = value >> shift;
  const uint32_t remainder = value & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (remainder > half || (remainder == half && (quotient & 1u) != 0)) return quotient + 1u;
  return quotient;
}

// Loads element `i` of a possibly unaligned array (mmap'd tensors need not be
// aligned, and a misaligned load is UB).
template <typename T>
T LoadAt(const void* base, size_t i) {
  T value;
  std::memcpy(&value, static_cast<const std::byte*>(base) + i * sizeof(T), sizeof(T));
  return value;
}

template <typename T>
void StoreAt(void* base, size_t i, T value) {
  std::memcpy(static_cast<std::byte*>(base) + i * sizeof(T), &value, sizeof(T));
}

template <typename T>
void ConvertByValue(float* dst, const void* src, size_t count) {
  for (size_t i = 0; i < count; ++i) dst[i] = static_cast<float>(LoadAt<T>(src, i));
}

}  // namespace

uint16_t F32ToF16(float value) {
  const uint32_t x = std::bit_cast<uint32_t>(value);
  const uint16_t sign = static_cast<uint16_t>((x & kF32SignMask) >> 16);
  const uint32_t abs = x & kF32AbsMask;
  if (abs > kF32Inf) {
    // NaN: keep the top 10 payload bits and force the quiet bit so that a
    // signalling NaN (or one whose payload sits in the dropped bits) stays NaN.
    return static_cast<uint16_t>(sign | 0x7C00u | 0x0200u | ((abs >> 13) & 0x03FFu));
  }
  if (abs >= 0x38800000u) {
    // Normal F16 range or above (2^-14 and up, Inf included): rebias the
    // exponent (127 -> 15) and round the 13 dropped mantissa bits; a carry out
    // of the mantissa correctly bumps the exponent, up to Inf.
    const uint32_t rebiased = abs - (112u << 23);
    const uint32_t rounded = ShiftRightRoundEven(rebiased, 13);
    return static_cast<uint16_t>(sign | (rounded >= 0x7C00u ? 0x7C00u : rounded));
  }
  // F16 subnormal (or zero): the result counts units of 2^-24. A float with
  // biased exponent e and 24-bit significand m is m * 2^(e-150), i.e.
  // m >> (126 - e) units; below 2^-25 (shift > 24) everything rounds to zero.
  const int exponent = static_cast<int>(abs >> 23);
  const int shift = 126 - exponent;
  if (shift > 24) return sign;
  const uint32_t significand = (abs & 0x007FFFFFu) | 0x00800000u;
  return static_cast<uint16_t>(sign | ShiftRightRoundEven(significand, shift));
}

float F16ToF32(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1Fu;
  uint32_t mantissa = bits & 0x03FFu;
  if (exponent == 0x1F) {
    if (mantissa == 0) return std::bit_cast<float>(sign | kF32Inf);
    return std::bit_cast<float>(sign | kF32Inf | kF32QuietBit | (mantissa << 13));
  }
  if (exponent == 0) {
    if (mantissa == 0) return std::bit_cast<float>(sign);
    // Subnormal: normalise so the leading one becomes the implicit bit.
    uint32_t f32_exponent = 127 - 14;
    while ((mantissa & 0x0400u) == 0) {
      mantissa <<= 1;
      --f32_exponent;
    }
    mantissa &= 0x03FFu;
    return std::bit_cast<float>(sign | (f32_exponent << 23) | (mantissa << 13));
  }
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

uint16_t F32ToBF16(float value) {
  const uint32_t x = std::bit_cast<uint32_t>(value);
  if ((x & kF32AbsMask) > kF32Inf) {
    // NaN: truncating could drop every payload bit and yield Inf; the quiet
    // bit keeps it a NaN.
    return static_cast<uint16_t>((x >> 16) | 0x0040u);
  }
  // BF16 is the top half of an F32, so rounding is on the low 16 bits; a carry
  // into the exponent is the correct result (FLT_MAX rounds to Inf). No
  // overflow: the largest input here is 0xFF800000 + 0x8000.
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

float BF16ToF32(uint16_t bits) {
  uint32_t x = static_cast<uint32_t>(bits) << 16;
  if ((x & kF32AbsMask) > kF32Inf) x |= kF32QuietBit;
  return std::bit_cast<float>(x);
}

namespace {

// BF16ToF32 over an array, in fixed blocks so that the compiler vectorizes
// it at -O2 too (a layer of an 8B checkpoint is 2 * 10^8 values).
void BF16ArrayToF32(float* dst, const void* src, size_t count) {
  constexpr size_t kBlock = 64;
  size_t i = 0;
  for (; i + kBlock <= count; i += kBlock) {
    uint16_t in[kBlock];
    std::memcpy(in, static_cast<const char*>(src) + i * sizeof(uint16_t), sizeof(in));
    uint32_t out[kBlock];
    for (size_t j = 0; j < kBlock; ++j) {
      const uint32_t x = static_cast<uint32_t>(in[j]) << 16;
      out[j] = x | ((x & kF32AbsMask) > kF32Inf ? kF32QuietBit : 0u);
    }
    std::memcpy(dst + i, out, sizeof(out));
  }
  for (; i < count; ++i) dst[i] = BF16ToF32(LoadAt<uint16_t>(src, i));
}

}  // namespace

absl::Status ConvertToF32(float* dst, const void* src, DType src_dtype, size_t count) {
  if (count == 0) return absl::OkStatus();  // memcpy on null is UB even for 0 bytes.
  switch (src_dtype) {
    case DType::kF64:
      ConvertByValue<double>(dst, src, count);
      return absl::OkStatus();
    case DType::kF32:
      std::memcpy(dst, src, count * sizeof(float));
      return absl::OkStatus();
    case DType::kF16:
      for (size_t i = 0; i < count; ++i) dst[i] = F16ToF32(LoadAt<uint16_t>(src, i));
      return absl::OkStatus();
    case DType::kBF16:
      BF16ArrayToF32(dst, src, count);
      return absl::OkStatus();
    case DType::kI64:
      ConvertByValue<int64_t>(dst, src, count);
      return absl::OkStatus();
    case DType::kI32:
      ConvertByValue<int32_t>(dst, src, count);
      return absl::OkStatus();
    case DType::kI16:
      ConvertByValue<int16_t>(dst, src, count);
      return absl::OkStatus();
    case DType::kI8:
      ConvertByValue<int8_t>(dst, src, count);
      return absl::OkStatus();
    case DType::kU8:
      ConvertByValue<uint8_t>(dst, src, count);
      return absl::OkStatus();
    case DType::kBool:
    case DType::kCount:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("cannot convert dtype ", Sv(DTypeName(src_dtype)), " to F32"));
}

absl::Status ConvertFromF32(void* dst, DType dst_dtype, const float* src, size_t count) {
  switch (dst_dtype) {
    case DType::kF64:
      for (size_t i = 0; i < count; ++i) StoreAt<double>(dst, i, src[i]);
      return absl::OkStatus();
    case DType::kF32:
      if (count > 0) std::memcpy(dst, src, count * sizeof(float));
      return absl::OkStatus();
    case DType::kF16:
      for (size_t i = 0; i < count; ++i) StoreAt<uint16_t>(dst, i, F32ToF16(src[i]));
      return absl::OkStatus();
    case DType::kBF16:
      for (size_t i = 0; i < count; ++i) StoreAt<uint16_t>(dst, i, F32ToBF16(src[i]));
      return absl::OkStatus();
    default:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "cannot convert F32 to dtype ", Sv(DTypeName(dst_dtype)), " (only F64, F32, F16, BF16)"));
}

}  // namespace shrinkray
