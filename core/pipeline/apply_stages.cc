#include "core/pipeline/apply_stages.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/algo/gptq.h"
#include "core/algo/magnitude.h"
#include "core/algo/prune_result.h"
#include "core/algo/rtn.h"
#include "core/algo/sparsegpt.h"
#include "core/algo/wanda.h"
#include "core/util/parallel.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

absl::Status Annotate(const absl::Status& status, const std::string& module, const RecipeStage& stage) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat(module, ": ", stage.Label(), ": ", std::string(status.message())));
}

// Column tile of RowQuadraticForms: its FLOPs are (1 + tile/cols)/2 of the
// full product's; 256 measured best of 256-1024 (bench/algo_bench
// BM_OutputError).
constexpr int kTraceTileCols = 256;

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Per row r of A [rows, cols]: a_r H a_rᵀ in double, H symmetric. Only the
// tiles of H on and below its diagonal are multiplied:
// a H aᵀ = Σ_I a_I H_II a_Iᵀ + 2 Σ_{J>I} a_J H_JI a_Iᵀ over column tiles I, J,
// (1 + tile/cols)/2 of the full product's FLOPs (the error phase costs what
// the GPTQ solve does otherwise).
std::vector<double> RowQuadraticForms(const float* a, int rows, int cols, const float* h) {
  const int tile = std::min(cols, kTraceTileCols);
  std::vector<float> c(static_cast<size_t>(rows) * tile);
  std::vector<double> forms(rows, 0.0);
  for (int i0 = 0; i0 < cols; i0 += tile) {
    const int width = std::min(tile, cols - i0), i1 = i0 + width;
    // C = A_I H_II + 2 Σ_{J>I} A_J H_JI  ([rows, width], ld width): the
    // second product's K is every column right of the tile, which keeps
    // sgemm efficient and C small.
    const float* h_col = h + i0;  // H[:, I], ld cols
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, width, width, 1.0f, a + i0, cols,
                h_col + static_cast<size_t>(i0) * cols, cols, 0.0f, c.data(), width);
    if (i1 < cols) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, width, cols - i1, 2.0f, a + i1, cols,
                  h_col + static_cast<size_t>(i1) * cols, cols, 1.0f, c.data(), width);
    }
    ParallelFor(rows, [&](int64_t r) {
      const float* ar = a + r * cols + i0;
      const float* cr = c.data() + r * width;
      double s = 0.0;
      for (int j = 0; j < width; ++j) s += static_cast<double>(ar[j]) * cr[j];
      forms[r] += s;
    });
  }
  return forms;
}

// `device` (the backend's solver) when there is a backend and it supports
// the options, else `cpu`. Float64 Hessians always solve on the CPU.
template <typename Result, typename Device, typename Cpu>
absl::StatusOr<Result> Solve(SolverBackend* solvers, bool f64, Device&& device, Cpu&& cpu) {
  if (solvers != nullptr && !f64) {
    absl::StatusOr<Result> r = device();
    if (!absl::IsUnimplemented(r.status())) {
      if (r.ok()) solvers->CountDeviceSolve();
      return r;
    }
  }
  if (solvers != nullptr) solvers->CountCpuFallback();
  return cpu();
}

void ApplyPruneResult(PruneResult&& r, LinearState* state) {
  state->weight = std::move(r.weight);
  state->keep = std::move(r.keep);
}

}  // namespace

absl::Status CheckStageChain(const std::string& module, const std::vector<const RecipeStage*>& stages) {
  const RecipeStage* pruner = nullptr;
  const RecipeStage* quantizer = nullptr;
  for (const RecipeStage* s : stages) {
    if (s->prunes()) {
      if (pruner != nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(module, ": ", pruner->Label(), " and ", s->Label(),
                                                       " both prune it; one pruning stage per matrix"));
      }
      if (quantizer != nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(module, ": ", s->Label(), " prunes after ",
                                                       quantizer->Label(),
                                                       " quantized it; put pruning stages first"));
      }
      pruner = s;
    }
    if (s->quantizes()) {
      if (quantizer != nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(module, ": ", quantizer->Label(), " and ", s->Label(),
                                                       " both quantize it; one quantizing stage per matrix"));
      }
      quantizer = s;
    }
  }
  return absl::OkStatus();
}

absl::Status ApplyStage(const RecipeStage& stage, const std::string& module, int rows, int cols,
                        const LinearInputStats& stats, LinearState* state, MatrixReport* report,
                        SolverBackend* solvers) {
  const auto start = std::chrono::steady_clock::now();
  // Every stage moves a new weight in: only the first reads the original.
  const absl::Span<const float> w = state->current();
  if (w.size() != static_cast<size_t>(rows) * cols) {
    return absl::InternalError(absl::StrCat(module, ": ", stage.Label(), ": ", w.size(), " values for a ", rows, "x",
                                            cols, " matrix"));
  }
  const bool f64 = stage.hessian_dtype == HessianPrecision::kFloat64 && !stats.h64.empty();
  const HessianPrecision precision = f64 ? HessianPrecision::kFloat64 : HessianPrecision::kFloat32;
  report->methods.push_back(std::string(StageMethodName(stage.method)));
  state->output_error.reset();
  // The request serves this stage only: a later one starts from another W.
  const bool report_output_error = std::exchange(state->report_output_error, false);
  switch (stage.method) {
    case StageMethod::kRtn: {
      RtnOptions o;
      o.bits = stage.bits;
      o.group_size = stage.group_size;
      o.sym = stage.sym;
      auto r = RtnQuantize(w, rows, cols, o);
      SR_RETURN_IF_ERROR(Annotate(r.status(), module, stage));
      state->weight = std::move(r->weight);
      state->quantized = std::move(r->quantized);
      break;
    }
    case StageMethod::kGptq: {
      GptqOptions o;
      o.bits = stage.bits;
      o.group_size = stage.group_size;
      o.sym = stage.sym;
      o.act_order = stage.act_order;
      o.static_groups = stage.static_groups;
      o.damp = stage.damp;
      o.damp_auto_increment = stage.damp_auto_increment;
      o.block_size = stage.block_size;
      o.precision = precision;
      o.inverse_factor = stage.inverse_factor;
      o.output_error = report_output_error;
      if (state->keep.empty() && stage.keep_input_zeros) {
        // A pass after the pruning one: its zeros are the keep mask.
        state->keep.resize(w.size());
        for (size_t i = 0; i < w.size(); ++i) state->keep[i] = w[i] != 0.0f ? 1 : 0;
      }
      if (!state->keep.empty()) o.keep_mask = absl::Span<const uint8_t>(state->keep);
      auto r = Solve<GptqResult>(
          solvers, f64, [&] { return solvers->Gptq(w, rows, cols, stats.h32, o); },
          [&]() -> absl::StatusOr<GptqResult> {
            if (f64) return GptqQuantize(w, rows, cols, stats.h64, o);
            SR_ASSIGN_OR_RETURN(absl::Span<const float> h, stats.HostH32());
            return GptqQuantize(w, rows, cols, h, o);
          });
      SR_RETURN_IF_ERROR(Annotate(r.status(), module, stage));
      state->weight = std::move(r->weight);
      state->quantized = std::move(r->quantized);
      state->output_error = r->report.output_error;
      report->solver_loss += r->report.loss;
      report->damp_used = r->report.damp_used;
      report->damp_increments += r->report.damp_increments;
      report->dead_columns = r->report.dead_columns;
      break;
    }
    case StageMethod::kSparseGpt: {
      SparseGptOptions o;
      o.sparsity = stage.sparsity;
      o.prune_n = stage.prune_n;
      o.prune_m = stage.prune_m;
      o.block_size = stage.block_size;
      o.damp = stage.damp;
      o.damp_auto_increment = stage.damp_auto_increment;
      o.precision = precision;
      o.inverse_factor = stage.inverse_factor;
      o.bits = stage.bits;
      o.sym = stage.sym;
      o.group_size = stage.group_size;
      o.output_error = report_output_error;
      auto r = Solve<SparseGptResult>(
          solvers, f64, [&] { return solvers->SparseGpt(w, rows, cols, stats.h32, o); },
          [&]() -> absl::StatusOr<SparseGptResult> {
            if (f64) return SparseGptPrune(w, rows, cols, stats.h64, o);
            SR_ASSIGN_OR_RETURN(absl::Span<const float> h, stats.HostH32());
            return SparseGptPrune(w, rows, cols, h, o);
          });
      SR_RETURN_IF_ERROR(Annotate(r.status(), module, stage));
      state->weight = std::move(r->weight);
      state->keep = std::move(r->keep);
      if (r->quantized.has_value()) state->quantized = std::move(r->quantized);
      state->output_error = r->report.output_error;
      report->solver_loss += r->report.loss;
      report->damp_used = r->report.damp_used;
      report->damp_increments += r->report.damp_increments;
      report->dead_columns = r->report.dead_columns;
      break;
    }
    case StageMethod::kWanda: {
      PruneOptions o{stage.sparsity, stage.prune_n, stage.prune_m};
      if (stats.scaler.size() != static_cast<size_t>(cols)) {
        return absl::InternalError(absl::StrCat(module, ": ", stage.Label(), ": no activation statistics"));
      }
      auto r = WandaPrune(w, rows, cols, stats.scaler, o);
      SR_RETURN_IF_ERROR(Annotate(r.status(), module, stage));
      ApplyPruneResult(std::move(*r), state);
      break;
    }
    case StageMethod::kMagnitude: {
      PruneOptions o{stage.sparsity, stage.prune_n, stage.prune_m};
      auto r = MagnitudePrune(w, rows, cols, o);
      SR_RETURN_IF_ERROR(Annotate(r.status(), module, stage));
      ApplyPruneResult(std::move(*r), state);
      break;
    }
  }
  if (stage.prunes() && stage.prune_n > 0) state->pattern = absl::StrCat(stage.prune_n, ":", stage.prune_m);
  if (stage.quantizes()) {
    report->bits = stage.bits;
    report->group_size = stage.group_size;
    report->sym = stage.sym;
    report->act_order = stage.act_order;
  }
  report->seconds += Seconds(start);
  return absl::OkStatus();
}

double RelativeOutputError(absl::Span<const float> w, absl::Span<const float> q, int rows, int cols,
                           absl::Span<const float> h) {
  // W − Q and W stacked, so that both forms come from one pass over H.
  const size_t n = w.size();
  std::vector<float> dw(2 * n);
  for (size_t i = 0; i < n; ++i) dw[i] = w[i] - q[i];
  std::copy(w.begin(), w.end(), dw.begin() + static_cast<std::ptrdiff_t>(n));
  const std::vector<double> forms = RowQuadraticForms(dw.data(), 2 * rows, cols, h.data());
  double num = 0.0, den = 0.0;
  for (int r = 0; r < rows; ++r) {
    num += forms[r];
    den += forms[rows + r];
  }
  if (den <= 0.0) return 0.0;
  return num / den;
}

absl::StatusOr<double> RelativeOutputErrorOn(SolverBackend* solvers, absl::Span<const float> w,
                                             absl::Span<const float> q, int rows, int cols,
                                             const LinearInputStats& input) {
  if (solvers != nullptr) {
    absl::StatusOr<double> e = solvers->OutputError(w, q, rows, cols, input.h32);
    if (!absl::IsUnimplemented(e.status()) && !absl::IsResourceExhausted(e.status())) return e;
  }
  SR_ASSIGN_OR_RETURN(absl::Span<const float> h, input.HostH32());
  return RelativeOutputError(w, q, rows, cols, h);
}

absl::StatusOr<absl::Span<const float>> LinearInputStats::HostH32() const {
  if (!h32.empty() || !fetch_h32) return h32;
  return fetch_h32();
}

}  // namespace shrinkray
