#include "core/algo/quantized_codes.h"

#include <algorithm>
#include <atomic>
#include <bit>

#include "core/util/parallel.h"

namespace shrinkray {
namespace {

constexpr int kRowsPerTask = 64;

// fn(r, scale, zero) for every row r, with the row's scales and zeros
// gathered first (they are stored [group, row]); stops early when fn returns
// false. Whether every call returned true.
template <typename Fn>
bool ForEachRow(const QuantizedWeight& w, Fn&& fn) {
  std::atomic<bool> stop{false};
  ParallelFor((w.rows + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t task) {
    std::vector<float> scale(w.num_groups);
    std::vector<int32_t> zero(w.num_groups);
    const int end = std::min<int>(w.rows, static_cast<int>(task + 1) * kRowsPerTask);
    for (int r = static_cast<int>(task) * kRowsPerTask; r < end && !stop.load(std::memory_order_relaxed); ++r) {
      for (int g = 0; g < w.num_groups; ++g) {
        scale[g] = w.scales[static_cast<size_t>(g) * w.rows + r];
        zero[g] = w.zeros[static_cast<size_t>(g) * w.rows + r];
      }
      if (!fn(r, scale, zero)) stop.store(true, std::memory_order_relaxed);
    }
  });
  return !stop.load();
}

// QuantizedWeight::Dequantize's expression.
inline float DequantizedCode(uint8_t code, float scale, int32_t zero) {
  return scale * static_cast<float>(static_cast<int32_t>(code) - zero);
}

}  // namespace

int CodesPerByte(int bits) { return bits <= 4 ? 2 : bits <= 8 ? 1 : 0; }

void PackCodePairs(const uint8_t* codes, size_t n, uint8_t* out) {
  size_t o = 0;
  for (size_t i = 0; i + 1 < n; i += 2) out[o++] = static_cast<uint8_t>(codes[i] | (codes[i + 1] << 4));
  if (n % 2 != 0) out[o] = codes[n - 1];
}

void UnpackCodePairs(const uint8_t* packed, size_t n, uint8_t* codes) {
  for (size_t i = 0; i < n; ++i) codes[i] = (packed[i / 2] >> (4 * (i % 2))) & 15;
}

std::vector<float> DequantizeAll(const QuantizedWeight& w) {
  std::vector<float> out(static_cast<size_t>(w.rows) * w.cols);
  ForEachRow(w, [&](int r, const std::vector<float>& scale, const std::vector<int32_t>& zero) {
    const size_t row = static_cast<size_t>(r) * w.cols;
    for (int c = 0; c < w.cols; ++c) {
      const int g = w.g_idx[c];
      out[row + c] = DequantizedCode(w.codes[row + c], scale[g], zero[g]);
    }
    return true;
  });
  return out;
}

bool IsDequantized(const QuantizedWeight& w, std::span<const float> values) {
  if (values.size() != w.codes.size() || values.size() != static_cast<size_t>(w.rows) * w.cols) return false;
  return ForEachRow(w, [&](int r, const std::vector<float>& scale, const std::vector<int32_t>& zero) {
    const size_t row = static_cast<size_t>(r) * w.cols;
    uint32_t bits = 0;
    for (int c = 0; c < w.cols; ++c) {
      const int g = w.g_idx[c];
      bits |= std::bit_cast<uint32_t>(DequantizedCode(w.codes[row + c], scale[g], zero[g])) ^
              std::bit_cast<uint32_t>(values[row + c]);
    }
    return bits == 0;
  });
}

}  // namespace shrinkray
