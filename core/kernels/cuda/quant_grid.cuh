// The min-max quantization grid on the device, shared by the GPTQ and the
// SparseGPT (joint quantization) kernels: core/algo/quantizer.{h,cc}'s
// FitQuantParams from a range and QuantizeCode/DequantizeCode, with every
// operation rounded separately (no FMA contraction) so that the bits are the
// CPU's (nvcc only).
#pragma once

#include <cuda_runtime.h>

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

// clamp(rint(x / scale) + zero, 0, maxq), rint half to even.
__device__ __forceinline__ float QuantizeCode(float x, float scale, float zero, float maxq) {
  return fminf(fmaxf(__fadd_rn(rintf(__fdiv_rn(x, scale)), zero), 0.0f), maxq);
}

__device__ __forceinline__ float DequantizeCode(float code, float scale, float zero) {
  return __fmul_rn(scale, __fsub_rn(code, zero));
}

}  // namespace shrinkray::kernels
