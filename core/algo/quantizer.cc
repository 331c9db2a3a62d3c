#include "core/algo/quantizer.h"

#include <algorithm>
#include <cmath>

namespace shrinkray {

QuantParams FitQuantParams(const float* x, int64_t n, float maxq, bool sym, const uint8_t* keep) {
  // min/max seeded with 0: the reference's torch.minimum(x.min(1), 0).
  float xmin = 0.0f;
  float xmax = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    if (keep != nullptr && keep[i] == 0) continue;
    xmin = std::min(xmin, x[i]);
    xmax = std::max(xmax, x[i]);
  }
  if (sym) {
    xmax = std::max(std::fabs(xmin), xmax);
    // Only a row with a negative entry gets a mirrored xmin; an all
    // non-negative row keeps xmin = 0 (reference quirk, kept on purpose).
    if (xmin < 0.0f) xmin = -xmax;
  }
  if (xmin == 0.0f && xmax == 0.0f) {
    xmin = -1.0f;
    xmax = 1.0f;
  }
  QuantParams p;
  p.scale = (xmax - xmin) / maxq;
  p.zero = sym ? (maxq + 1.0f) / 2.0f : std::rint(-xmin / p.scale);
  return p;
}

}  // namespace shrinkray
