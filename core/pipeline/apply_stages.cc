#include "core/pipeline/apply_stages.h"

#include <cblas.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "core/algo/gptq.h"
#include "core/algo/magnitude.h"
#include "core/algo/prune_result.h"
#include "core/algo/rtn.h"
#include "core/algo/sparsegpt.h"
#include "core/algo/wanda.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

absl::Status Annotate(const absl::Status& status, const std::string& module, const RecipeStage& stage) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat(module, ": ", stage.Label(), ": ", std::string(status.message())));
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Σ_ij A_ij (A H)_ij in double, A [rows, cols].
double QuadraticTrace(const float* a, int rows, int cols, const float* h) {
  std::vector<float> ah(static_cast<size_t>(rows) * cols);
  cblas_ssymm(CblasRowMajor, CblasRight, CblasUpper, rows, cols, 1.0f, h, cols, a, cols, 0.0f, ah.data(),
              cols);
  double sum = 0.0;
  for (size_t i = 0; i < ah.size(); ++i) sum += static_cast<double>(a[i]) * ah[i];
  return sum;
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
  const absl::Span<const float> w(state->weight);
  const bool f64 = stage.hessian_dtype == HessianPrecision::kFloat64 && !stats.h64.empty();
  const HessianPrecision precision = f64 ? HessianPrecision::kFloat64 : HessianPrecision::kFloat32;
  report->methods.push_back(std::string(StageMethodName(stage.method)));
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
      if (state->keep.empty() && stage.keep_input_zeros) {
        // A pass after the pruning one: its zeros are the keep mask.
        state->keep.resize(w.size());
        for (size_t i = 0; i < w.size(); ++i) state->keep[i] = w[i] != 0.0f ? 1 : 0;
      }
      if (!state->keep.empty()) o.keep_mask = absl::Span<const uint8_t>(state->keep);
      auto r = Solve<GptqResult>(
          solvers, f64, [&] { return solvers->Gptq(w, rows, cols, stats.h32, o); },
          [&] { return f64 ? GptqQuantize(w, rows, cols, stats.h64, o) : GptqQuantize(w, rows, cols, stats.h32, o); });
      SR_RETURN_IF_ERROR(Annotate(r.status(), module, stage));
      state->weight = std::move(r->weight);
      state->quantized = std::move(r->quantized);
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
      o.bits = stage.bits;
      o.sym = stage.sym;
      o.group_size = stage.group_size;
      auto r = Solve<SparseGptResult>(
          solvers, f64, [&] { return solvers->SparseGpt(w, rows, cols, stats.h32, o); },
          [&] {
            return f64 ? SparseGptPrune(w, rows, cols, stats.h64, o) : SparseGptPrune(w, rows, cols, stats.h32, o);
          });
      SR_RETURN_IF_ERROR(Annotate(r.status(), module, stage));
      state->weight = std::move(r->weight);
      state->keep = std::move(r->keep);
      if (r->quantized.has_value()) state->quantized = std::move(r->quantized);
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
  std::vector<float> d(w.size());
  for (size_t i = 0; i < d.size(); ++i) d[i] = w[i] - q[i];
  const double num = QuadraticTrace(d.data(), rows, cols, h.data());
  const double den = QuadraticTrace(w.data(), rows, cols, h.data());
  if (den <= 0.0) return 0.0;
  return num / den;
}

absl::StatusOr<double> RelativeOutputErrorOn(SolverBackend* solvers, absl::Span<const float> w,
                                             absl::Span<const float> q, int rows, int cols,
                                             absl::Span<const float> h) {
  if (solvers != nullptr) {
    absl::StatusOr<double> e = solvers->OutputError(w, q, rows, cols, h);
    if (!absl::IsUnimplemented(e.status())) return e;
  }
  return RelativeOutputError(w, q, rows, cols, h);
}

}  // namespace shrinkray
