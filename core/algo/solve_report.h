// What a Hessian-based solver (GPTQ, SparseGPT) reports besides its result.
#pragma once

#include <optional>

namespace shrinkray {

struct SolveReport {
  // Σ (w - q)² / d² / 2 over all entries (d = Hinv[c, c]), the reference's
  // "error"; accumulated in double.
  double loss = 0.0;
  // The percdamp that made the Cholesky chain succeed (the requested value
  // unless it had to be raised), and how many raises that took.
  double damp_used = 0.0;
  int damp_increments = 0;
  // Columns whose diag(H) was exactly zero (treated as dead).
  int dead_columns = 0;
  double seconds = 0.0;
  // RelativeOutputError (core/pipeline/apply_stages.h) of the result against
  // the solve's input w under its (undamped) Hessian, when the options asked
  // for it (output_error) and the solver had both at hand: the GPU solvers,
  // whose W and result are still on the device. Unset otherwise (the CPU
  // solvers): the caller computes it.
  std::optional<double> output_error;
};

}  // namespace shrinkray
