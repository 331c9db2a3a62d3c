#include "core/algo/rtn.h"

#include <algorithm>

#include "core/algo/quantizer.h"
#include "core/algo/validation.h"
#include "core/util/parallel.h"
#include "core/util/status_macros.h"

namespace shrinkray {

absl::StatusOr<RtnResult> RtnQuantize(absl::Span<const float> w, int rows, int cols, const RtnOptions& o) {
  SR_RETURN_IF_ERROR(algo_internal::CheckBits(o.bits, o.allow_wide_bits));
  SR_RETURN_IF_ERROR(algo_internal::CheckGroupSize(o.group_size));
  SR_RETURN_IF_ERROR(algo_internal::CheckMatrix("w", w, rows, cols));
  const float maxq = MaxQ(o.bits);
  const int gs = o.group_size > 0 ? std::min(o.group_size, cols) : cols;

  RtnResult result;
  result.quantized = QuantizedWeight::InColumnGroups(rows, cols, o.bits, o.group_size, o.sym);
  QuantizedWeight& qw = result.quantized;
  // Codes only where a byte holds them (bits <= 8).
  const bool codes = o.bits <= 8;
  if (codes) qw.codes.resize(static_cast<size_t>(rows) * cols);
  result.weight.resize(static_cast<size_t>(rows) * cols);

  ParallelFor(rows, [&](int64_t r) {
    const size_t base = static_cast<size_t>(r) * cols;
    for (int g = 0; g < qw.num_groups; ++g) {
      const int c0 = g * gs;
      const int c1 = std::min(cols, c0 + gs);
      const QuantParams p = FitQuantParams(w.data() + base + c0, c1 - c0, maxq, o.sym);
      qw.scales[static_cast<size_t>(g) * rows + r] = p.scale;
      qw.zeros[static_cast<size_t>(g) * rows + r] = static_cast<int32_t>(p.zero);
      for (int c = c0; c < c1; ++c) {
        const float code = QuantizeCode(w[base + c], p, maxq);
        if (codes) qw.codes[base + c] = static_cast<uint8_t>(code);
        result.weight[base + c] = DequantizeCode(code, p);
      }
    }
  });
  return result;
}

}  // namespace shrinkray
