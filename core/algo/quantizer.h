// GPTQ's min-max uniform quantizer (quant.py Quantizer.find_params / quantize),
// for one output row or one group of columns of a row. Everything is float32
// in the reference's operation order, so that codes and dequantized values
// match torch bit for bit for the same input.
//
//   xmin = min(x, 0), xmax = max(x, 0)
//   sym:  xmax = max(|xmin|, xmax); xmin = -xmax only where xmin < 0
//   xmin == xmax == 0  ->  xmin = -1, xmax = +1
//   scale = (xmax - xmin) / maxq,  zero = (maxq + 1) / 2 (sym) or rint(-xmin / scale)
//   code  = clamp(rint(x / scale) + zero, 0, maxq),  q = scale * (code - zero)
//
// rint is round-half-to-even (torch.round); std::round would round ties away
// from zero and change codes.
#pragma once

#include <cmath>
#include <cstdint>

namespace shrinkray {

struct QuantParams {
  float scale = 1.0f;
  float zero = 0.0f;  // integer-valued, in [0, maxq]
};

// 2^bits - 1 as a float (exact for bits <= 24).
inline float MaxQ(int bits) { return static_cast<float>((int64_t{1} << bits) - 1); }

// Fits the grid to x[0..n). When keep is not null, entries with keep[i] == 0
// are read as 0 (pruned weights; since the range always includes 0 this is
// the same as leaving them out).
QuantParams FitQuantParams(const float* x, int64_t n, float maxq, bool sym, const uint8_t* keep = nullptr);

// The integer code of x (as a float, integer-valued, in [0, maxq]).
inline float QuantizeCode(float x, const QuantParams& p, float maxq) {
  const float v = std::rint(x / p.scale) + p.zero;
  return std::fmin(std::fmax(v, 0.0f), maxq);
}

inline float DequantizeCode(float code, const QuantParams& p) { return p.scale * (code - p.zero); }

// quantize(x) of the reference: the dequantized grid point nearest to x.
inline float FakeQuantize(float x, const QuantParams& p, float maxq) {
  return DequantizeCode(QuantizeCode(x, p, maxq), p);
}

}  // namespace shrinkray
