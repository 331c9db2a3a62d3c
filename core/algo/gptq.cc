#include "core/algo/gptq.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/algo/quantizer.h"
#include "core/algo/row_update.h"
#include "core/algo/validation.h"
#include "core/util/parallel.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

using algo_internal::CheckBits;
using algo_internal::CheckGroupSize;
using algo_internal::CheckMatrix;

// Rows handed to one ParallelFor index: enough work per index to amortise
// the dispatch, small enough to balance.
constexpr int kRowChunk = 16;

absl::Status ValidateOptions(const GptqOptions& o, int rows, int cols) {
  SR_RETURN_IF_ERROR(CheckBits(o.bits, o.allow_wide_bits));
  SR_RETURN_IF_ERROR(CheckGroupSize(o.group_size));
  if (!(o.damp >= 0.0 && o.damp < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("damp must be in [0, 1), got ", o.damp));
  }
  if (!(o.damp_auto_increment >= 0.0 && o.damp_auto_increment < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("damp_auto_increment must be in [0, 1), got ", o.damp_auto_increment));
  }
  if (o.block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("block_size must be positive, got ", o.block_size));
  }
  if (!o.keep_mask.empty() && o.keep_mask.size() != static_cast<size_t>(rows) * cols) {
    return absl::InvalidArgumentError(absl::StrCat("keep_mask: shape mismatch, expected ", static_cast<int64_t>(rows) * cols,
                                                   " entries, got ", o.keep_mask.size()));
  }
  return absl::OkStatus();
}

// Columns in the order GPTQ processes them: descending diag(H) with a stable
// sort (ties keep their column order), or identity.
template <typename T>
std::vector<int> ActOrderPermutation(const std::vector<T>& h, int n) {
  std::vector<int> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int a, int b) {
    return h[static_cast<size_t>(a) * n + a] > h[static_cast<size_t>(b) * n + b];
  });
  return perm;
}

// Gathers the columns of a row-major [rows, cols] matrix into perm order.
template <typename T>
std::vector<T> PermuteColumns(const std::vector<T>& m, int rows, int cols, const std::vector<int>& perm) {
  std::vector<T> out(m.size());
  ParallelFor(rows, [&](int64_t r) {
    const T* src = m.data() + r * cols;
    T* dst = out.data() + r * cols;
    for (int k = 0; k < cols; ++k) dst[k] = src[perm[k]];
  });
  return out;
}

template <typename T>
absl::StatusOr<GptqResult> Solve(absl::Span<const float> w_in, int rows, int cols, std::vector<T> h,
                                 const GptqOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  const float maxq = MaxQ(o.bits);
  const int gs = o.group_size;
  const bool grouped = gs > 0;
  const bool static_groups = grouped && o.static_groups;
  const int num_groups = grouped ? (cols - 1) / gs + 1 : 1;  // no overflow for any gs
  const size_t numel = static_cast<size_t>(rows) * cols;

  std::vector<float> w(w_in.begin(), w_in.end());
  std::vector<uint8_t> keep;
  if (!o.keep_mask.empty()) {
    keep.resize(numel);
    for (size_t i = 0; i < numel; ++i) {
      keep[i] = o.keep_mask[i] != 0 ? 1 : 0;
      if (keep[i] == 0) w[i] = 0.0f;
    }
  }
  auto keep_row = [&](const std::vector<uint8_t>& k, int64_t r) -> const uint8_t* {
    return k.empty() ? nullptr : k.data() + r * cols;
  };

  // 1. Per-row parameters on the whole W, before dead columns are zeroed
  //    (reference order). Only used when there are no groups.
  std::vector<QuantParams> current(rows);
  if (!grouped) {
    ParallelFor(rows, [&](int64_t r) {
      current[r] = FitQuantParams(w.data() + r * cols, cols, maxq, o.sym, keep_row(keep, r));
    });
  }

  // 2. Dead columns.
  const std::vector<uint8_t> dead = algo_internal::FixDeadColumns(h, cols);
  int dead_count = 0;
  for (int j = 0; j < cols; ++j) {
    if (!dead[j]) continue;
    ++dead_count;
    for (int r = 0; r < rows; ++r) w[static_cast<size_t>(r) * cols + j] = 0.0f;
  }

  // 3. Static groups: fitted on the dead-zeroed W in original column order.
  std::vector<QuantParams> group_params(static_cast<size_t>(num_groups) * rows);
  if (static_groups) {
    ParallelFor(rows, [&](int64_t r) {
      const uint8_t* kr = keep_row(keep, r);
      for (int g = 0; g < num_groups; ++g) {
        const int c0 = g * gs;
        group_params[static_cast<size_t>(g) * rows + r] = FitQuantParams(
            w.data() + r * cols + c0, std::min(gs, cols - c0), maxq, o.sym, kr == nullptr ? nullptr : kr + c0);
      }
    });
  }

  // 4. act_order.
  std::vector<int> perm(cols);
  std::iota(perm.begin(), perm.end(), 0);
  if (o.act_order) {
    perm = ActOrderPermutation(h, cols);
    w = PermuteColumns(w, rows, cols, perm);
    if (!keep.empty()) keep = PermuteColumns(keep, rows, cols, perm);
    h = algo_internal::PermuteSymmetric(h, cols, perm);
  }

  // 5. Damped inverse factor.
  SR_ASSIGN_OR_RETURN(HessianInverse inverse,
                      algo_internal::InvertHessian(h, cols, o.damp, o.damp_auto_increment, o.inverse_factor));
  std::vector<T>().swap(h);
  const float* hinv = inverse.upper.data();

  // 6. Blocked sweep. Within a block every row is independent (its own
  //    parameters, its own in-block updates), so rows run in parallel; the
  //    cross-block update is one GEMM.
  std::vector<float> q(numel);
  // Codes only where a byte holds them (bits <= 8; wider grids are analysis-only).
  std::vector<uint8_t> codes(o.bits <= 8 ? numel : 0);
  const bool store_codes = !codes.empty();
  std::vector<double> row_loss(rows, 0.0);
  const int block = std::min(o.block_size, cols);
  std::vector<float> err(static_cast<size_t>(rows) * block);
  const int64_t chunks = (rows + kRowChunk - 1) / kRowChunk;

  for (int i1 = 0; i1 < cols; i1 += block) {
    const int i2 = std::min(i1 + block, cols);
    const int count = i2 - i1;
    ParallelFor(chunks, [&](int64_t chunk) {
      std::vector<float> w1(count);
      const int r_end = static_cast<int>(std::min<int64_t>(rows, (chunk + 1) * kRowChunk));
      for (int r = static_cast<int>(chunk * kRowChunk); r < r_end; ++r) {
        const float* outer = w.data() + static_cast<size_t>(r) * cols;  // the reference's outer W
        const uint8_t* kr = keep_row(keep, r);
        float* err_row = err.data() + static_cast<size_t>(r) * count;
        std::copy(outer + i1, outer + i2, w1.begin());
        QuantParams p = current[r];
        double loss = 0.0;
        for (int i = 0; i < count; ++i) {
          const int c = i1 + i;
          if (grouped) {
            if (static_groups) {
              p = group_params[static_cast<size_t>(perm[c] / gs) * rows + r];
            } else if (c % gs == 0) {
              // Fitted on the outer W: it lacks this block's in-block
              // updates (reference staleness, kept on purpose).
              p = FitQuantParams(outer + c, std::min(gs, cols - c), maxq, o.sym, kr == nullptr ? nullptr : kr + c);
              group_params[static_cast<size_t>(c / gs) * rows + r] = p;
            }
          }
          const float d = hinv[static_cast<size_t>(c) * cols + c];
          // A masked weight is exactly 0 (its updates are dropped), so it
          // quantizes to the zero point and carries no error.
          const float wv = (kr != nullptr && kr[c] == 0) ? 0.0f : w1[i];
          const float code = QuantizeCode(wv, p, maxq);
          const float qv = DequantizeCode(code, p);
          const size_t idx = static_cast<size_t>(r) * cols + c;
          q[idx] = qv;
          if (store_codes) codes[idx] = static_cast<uint8_t>(code);
          const float diff = wv - qv;
          loss += static_cast<double>((diff * diff) / (d * d));
          const float e = diff / d;
          err_row[i] = e;
          const float* hrow = hinv + static_cast<size_t>(c) * cols + i1;
          algo_internal::SubtractScaledRow(w1.data(), hrow, e, i + 1, count);
        }
        current[r] = p;
        row_loss[r] += loss / 2.0;
      }
    });
    if (i2 < cols) {
      // W[:, i2:] -= Err1 · Hinv[i1:i2, i2:]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols - i2, count, -1.0f, err.data(), count,
                  hinv + static_cast<size_t>(i1) * cols + i2, cols, 1.0f, w.data() + i2, cols);
    }
  }

  // 8. Undo the permutation; assemble the packed form.
  GptqResult result;
  result.perm.assign(perm.begin(), perm.end());
  QuantizedWeight& qw = result.quantized;
  qw.rows = rows;
  qw.cols = cols;
  qw.bits = o.bits;
  qw.group_size = grouped ? gs : -1;
  qw.sym = o.sym;
  // QuantizedWeight.act_order means "g_idx is not c / group_size": true only
  // for act_order with groups fitted in permuted order.
  qw.act_order = o.act_order && grouped && !static_groups;
  qw.num_groups = num_groups;
  qw.g_idx.assign(cols, 0);
  for (int k = 0; k < cols; ++k) {
    if (!grouped) break;
    qw.g_idx[perm[k]] = static_groups ? perm[k] / gs : k / gs;
  }
  if (o.act_order) {
    result.weight.resize(numel);
    qw.codes.resize(codes.size());
    ParallelFor(rows, [&](int64_t r) {
      const size_t base = static_cast<size_t>(r) * cols;
      for (int k = 0; k < cols; ++k) {
        result.weight[base + perm[k]] = q[base + k];
        if (store_codes) qw.codes[base + perm[k]] = codes[base + k];
      }
    });
  } else {
    result.weight = std::move(q);
    qw.codes = std::move(codes);
  }
  qw.scales.resize(static_cast<size_t>(num_groups) * rows);
  qw.zeros.resize(static_cast<size_t>(num_groups) * rows);
  for (size_t i = 0; i < qw.scales.size(); ++i) {
    const QuantParams& p = grouped ? group_params[i] : current[i];
    qw.scales[i] = p.scale;
    qw.zeros[i] = static_cast<int32_t>(p.zero);
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
absl::StatusOr<GptqResult> Dispatch(absl::Span<const float> w, int rows, int cols, absl::Span<const In> h,
                                    const GptqOptions& o) {
  SR_RETURN_IF_ERROR(ValidateOptions(o, rows, cols));
  SR_RETURN_IF_ERROR(CheckMatrix("w", w, rows, cols));
  SR_RETURN_IF_ERROR(CheckMatrix("h", h, cols, cols));
  if (o.precision == HessianPrecision::kFloat64) {
    return Solve<double>(w, rows, cols, std::vector<double>(h.begin(), h.end()), o);
  }
  return Solve<float>(w, rows, cols, std::vector<float>(h.begin(), h.end()), o);
}

}  // namespace

absl::StatusOr<GptqResult> GptqQuantize(absl::Span<const float> w, int rows, int cols, absl::Span<const float> h,
                                        const GptqOptions& options) {
  return Dispatch(w, rows, cols, h, options);
}

absl::StatusOr<GptqResult> GptqQuantize(absl::Span<const float> w, int rows, int cols, absl::Span<const double> h,
                                        const GptqOptions& options) {
  return Dispatch(w, rows, cols, h, options);
}

}  // namespace shrinkray
