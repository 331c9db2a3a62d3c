#include "core/algo/sparsegpt.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/algo/nm_select.h"
#include "core/algo/quantizer.h"
#include "core/algo/row_update.h"
#include "core/algo/validation.h"
#include "core/util/parallel.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

constexpr int kRowChunk = 16;

absl::Status ValidateOptions(const SparseGptOptions& o, int cols) {
  if (o.block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("block_size must be positive, got ", o.block_size));
  }
  SR_RETURN_IF_ERROR(algo_internal::CheckNm(o.prune_n, o.prune_m, cols, std::min(o.block_size, cols)));
  if (o.prune_n == 0) SR_RETURN_IF_ERROR(algo_internal::CheckSparsity(o.sparsity));
  if (o.bits != 0) {
    SR_RETURN_IF_ERROR(algo_internal::CheckBits(o.bits, o.allow_wide_bits));
    SR_RETURN_IF_ERROR(algo_internal::CheckGroupSize(o.group_size));
  }
  if (!(o.damp >= 0.0 && o.damp < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("damp must be in [0, 1), got ", o.damp));
  }
  if (!(o.damp_auto_increment >= 0.0 && o.damp_auto_increment < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("damp_auto_increment must be in [0, 1), got ", o.damp_auto_increment));
  }
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<SparseGptResult> Solve(absl::Span<const float> w_in, int rows, int cols, std::vector<T> h,
                                      const SparseGptOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  const size_t numel = static_cast<size_t>(rows) * cols;
  const bool quantize = o.bits != 0;
  const float maxq = quantize ? MaxQ(o.bits) : 0.0f;
  const int gs = quantize ? o.group_size : -1;
  const bool grouped = gs > 0;
  const int num_groups = grouped ? (cols - 1) / gs + 1 : 1;  // no overflow for any gs
  const bool nm = o.prune_n != 0;

  std::vector<float> w(w_in.begin(), w_in.end());

  // Quantizer fitted once on the unpruned W, before dead-column zeroing.
  std::vector<QuantParams> current(rows);
  std::vector<QuantParams> group_params;
  if (quantize) {
    if (grouped) group_params.resize(static_cast<size_t>(num_groups) * rows);
    ParallelFor(rows, [&](int64_t r) { current[r] = FitQuantParams(w.data() + r * cols, cols, maxq, o.sym); });
  }

  const std::vector<uint8_t> dead = algo_internal::FixDeadColumns(h, cols);
  int dead_count = 0;
  for (int j = 0; j < cols; ++j) {
    if (!dead[j]) continue;
    ++dead_count;
    for (int r = 0; r < rows; ++r) w[static_cast<size_t>(r) * cols + j] = 0.0f;
  }

  SR_ASSIGN_OR_RETURN(HessianInverse inverse,
                      algo_internal::InvertHessian(h, cols, o.damp, o.damp_auto_increment, o.inverse_factor));
  std::vector<T>().swap(h);
  const float* hinv = inverse.upper.data();

  SparseGptResult result;
  result.weight.assign(numel, 0.0f);
  result.keep.assign(numel, 1);
  // Codes only where a byte holds them (bits <= 8; wider grids are analysis-only).
  std::vector<uint8_t> codes(quantize && o.bits <= 8 ? numel : 0);
  std::vector<double> row_loss(rows, 0.0);
  const int block = std::min(o.block_size, cols);
  std::vector<float> err(static_cast<size_t>(rows) * block);
  std::vector<float> score;
  std::vector<float> scratch;
  const int64_t chunks = (rows + kRowChunk - 1) / kRowChunk;

  for (int i1 = 0; i1 < cols; i1 += block) {
    const int i2 = std::min(i1 + block, cols);
    const int count = i2 - i1;

    if (!nm) {
      // Unstructured mask for the whole block, from W1 at the block start:
      // W1² / diag(Hinv1)² (float32, the reference's operation order).
      score.resize(static_cast<size_t>(rows) * count);
      ParallelFor(rows, [&](int64_t r) {
        const float* src = w.data() + r * cols + i1;
        float* dst = score.data() + r * count;
        for (int i = 0; i < count; ++i) {
          const float d = hinv[static_cast<size_t>(i1 + i) * cols + i1 + i];
          dst[i] = (src[i] * src[i]) / (d * d);
        }
      });
      const auto kth = static_cast<size_t>(static_cast<double>(score.size()) * o.sparsity);
      scratch = score;
      std::nth_element(scratch.begin(), scratch.begin() + kth, scratch.end());
      const float thresh = scratch[kth];
      ParallelFor(rows, [&](int64_t r) {
        const float* s = score.data() + r * count;
        uint8_t* k = result.keep.data() + r * cols + i1;
        for (int i = 0; i < count; ++i) k[i] = s[i] <= thresh ? 0 : 1;
      });
    }

    ParallelFor(chunks, [&](int64_t chunk) {
      std::vector<float> w1(count);
      std::vector<float> nm_score(nm ? o.prune_m : 0);
      const int r_end = static_cast<int>(std::min<int64_t>(rows, (chunk + 1) * kRowChunk));
      for (int r = static_cast<int>(chunk * kRowChunk); r < r_end; ++r) {
        const float* outer = w.data() + static_cast<size_t>(r) * cols;
        uint8_t* keep = result.keep.data() + static_cast<size_t>(r) * cols;
        float* out = result.weight.data() + static_cast<size_t>(r) * cols;
        float* err_row = err.data() + static_cast<size_t>(r) * count;
        std::copy(outer + i1, outer + i2, w1.begin());
        QuantParams p = quantize ? current[r] : QuantParams{};
        double loss = 0.0;
        for (int i = 0; i < count; ++i) {
          const int c = i1 + i;
          if (nm && i % o.prune_m == 0) {
            // Scored on the current W1, which holds this block's updates.
            for (int k = 0; k < o.prune_m; ++k) {
              const float d = hinv[static_cast<size_t>(c + k) * cols + c + k];
              nm_score[k] = (w1[i + k] * w1[i + k]) / (d * d);
            }
            algo_internal::PruneNSmallest(nm_score.data(), o.prune_n, o.prune_m, keep + c);
          }
          if (grouped && c % gs == 0) {
            // GPTQ's rule on the outer W (stale by this block's updates).
            p = FitQuantParams(outer + c, std::min(gs, cols - c), maxq, o.sym);
            group_params[static_cast<size_t>(c / gs) * rows + r] = p;
          }
          const float d = hinv[static_cast<size_t>(c) * cols + c];
          const float wv = w1[i];
          float qv = keep[c] ? wv : 0.0f;
          if (quantize) {
            // quant(0) is exactly 0 (the zero point is on the grid), so
            // pruned entries stay zero and get the zero point as code.
            const float code = QuantizeCode(qv, p, maxq);
            qv = DequantizeCode(code, p);
            if (!codes.empty()) codes[static_cast<size_t>(r) * cols + c] = static_cast<uint8_t>(code);
          }
          out[c] = qv;
          const float diff = wv - qv;
          loss += static_cast<double>((diff * diff) / (d * d));
          const float e = diff / d;
          err_row[i] = e;
          const float* hrow = hinv + static_cast<size_t>(c) * cols + i1;
          algo_internal::SubtractScaledRow(w1.data(), hrow, e, i + 1, count);
        }
        if (quantize) current[r] = p;
        row_loss[r] += loss / 2.0;
      }
    });
    if (i2 < cols) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols - i2, count, -1.0f, err.data(), count,
                  hinv + static_cast<size_t>(i1) * cols + i2, cols, 1.0f, w.data() + i2, cols);
    }
  }

  result.pruned = static_cast<int64_t>(std::count(result.keep.begin(), result.keep.end(), uint8_t{0}));
  if (quantize) {
    QuantizedWeight qw = QuantizedWeight::InColumnGroups(rows, cols, o.bits, gs, o.sym);
    qw.codes = std::move(codes);
    for (size_t i = 0; i < qw.scales.size(); ++i) {
      const QuantParams& p = grouped ? group_params[i] : current[i];
      qw.scales[i] = p.scale;
      qw.zeros[i] = static_cast<int32_t>(p.zero);
    }
    result.quantized = std::move(qw);
  }
  SolveReport& report = result.report;
  report.loss = std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
  report.damp_used = inverse.damp_used;
  report.damp_increments = inverse.damp_increments;
  report.dead_columns = dead_count;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

template <typename In>
absl::StatusOr<SparseGptResult> Dispatch(absl::Span<const float> w, int rows, int cols, absl::Span<const In> h,
                                         const SparseGptOptions& o) {
  SR_RETURN_IF_ERROR(algo_internal::CheckMatrix("w", w, rows, cols));
  SR_RETURN_IF_ERROR(ValidateOptions(o, cols));
  SR_RETURN_IF_ERROR(algo_internal::CheckMatrix("h", h, cols, cols));
  if (o.precision == HessianPrecision::kFloat64) {
    return Solve<double>(w, rows, cols, std::vector<double>(h.begin(), h.end()), o);
  }
  return Solve<float>(w, rows, cols, std::vector<float>(h.begin(), h.end()), o);
}

}  // namespace

absl::StatusOr<SparseGptResult> SparseGptPrune(absl::Span<const float> w, int rows, int cols,
                                               absl::Span<const float> h, const SparseGptOptions& options) {
  return Dispatch(w, rows, cols, h, options);
}

absl::StatusOr<SparseGptResult> SparseGptPrune(absl::Span<const float> w, int rows, int cols,
                                               absl::Span<const double> h, const SparseGptOptions& options) {
  return Dispatch(w, rows, cols, h, options);
}

}  // namespace shrinkray
