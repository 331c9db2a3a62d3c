// The min-max quantization grid on the device, shared by the GPTQ and the
// SparseGPT (joint quantization) kernels: core/algo/quantizer.{h,cc}'s
// FitQuantParams from a range and QuantizeCode/DequantizeCode, with every
// operation rounded separately (no FMA contraction) so that the bits are the
// CPU's (nvcc only).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace shrinkray::kernels {

// The grid of a range whose min and max were seeded with 0.
__device__ __forceinline__ void ParamsFromRange(float xmin, float xmax, float maxq, bool sym,
                                                float* scale, float* zero) {
  if (sym) {
    xmax = fmaxf(fabsf(xmin), xmax);
    if (xmin < 0.0f) xmin = -xmax;  // an all non-negative row keeps xmin = 0 (reference)
  }
  if (xmin == 0.0f && xmax == 0.0f) {
    xmin = -1.0f;
    xmax = 1.0f;
  }
  const float s = __fdiv_rn(__fsub_rn(xmax, xmin), maxq);
  *scale = s;
  *zero = sym ? __fdiv_rn(__fadd_rn(maxq, 1.0f), 2.0f) : rintf(__fdiv_rn(-xmin, s));
}

// The grid of x[c0, c1) (min and max seeded with 0), an entry read as 0
// where keep_row (indexed by perm[c] when perm is given, else by c; null: no
// mask) is 0: a group's refit on the outer W in the sweeps.
__device__ __forceinline__ void RangeParams(const float* x, int c0, int c1, const uint8_t* keep_row,
                                            const int32_t* perm, float maxq, bool sym, float* scale,
                                            float* zero) {
  float xmin = 0.0f;
  float xmax = 0.0f;
  for (int c = c0; c < c1; ++c) {
    const bool pruned = keep_row != nullptr && keep_row[perm != nullptr ? perm[c] : c] == 0;
    const float v = pruned ? 0.0f : x[c];
    xmin = fminf(xmin, v);
    xmax = fmaxf(xmax, v);
  }
  ParamsFromRange(xmin, xmax, maxq, sym, scale, zero);
}

// clamp(rint(x / scale) + zero, 0, maxq), rint half to even.
__device__ __forceinline__ float QuantizeCode(float x, float scale, float zero, float maxq) {
  return fminf(fmaxf(__fadd_rn(rintf(__fdiv_rn(x, scale)), zero), 0.0f), maxq);
}

__device__ __forceinline__ float DequantizeCode(float code, float scale, float zero) {
  return __fmul_rn(scale, __fsub_rn(code, zero));
}

}  // namespace shrinkray::kernels
