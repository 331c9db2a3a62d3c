// Rounding an fp32 value to TF32 (10 of fp32's 23 mantissa bits), as the
// GPU's 3xTF32 Hessian split does it (core/kernels/cuda/hessian_cuda.cu),
// on bit patterns so that host code (its test) computes the same thing.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SR_HOST_DEVICE __host__ __device__
#else
#define SR_HOST_DEVICE
#endif

namespace shrinkray {

// To nearest, ties away from zero: add half of the 13 dropped bits' unit,
// then drop them (a carry into the exponent is the right result; values
// within 2^-12 of FLT_MAX round to inf). Inf and NaN pass through.
SR_HOST_DEVICE inline uint32_t RoundTf32Bits(uint32_t bits) {
  if ((bits & 0x7f800000u) == 0x7f800000u) return bits;
  return (bits + 0x1000u) & 0xffffe000u;
}

inline float RoundToTf32(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits = RoundTf32Bits(bits);
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

}  // namespace shrinkray
