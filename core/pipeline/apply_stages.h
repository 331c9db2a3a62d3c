// Applies a recipe's stages to one Linear weight, in order, given its input
// statistics: the matrix-level step of the layerwise executor. A pruning
// stage's keep mask is carried into later stages (GPTQ quantizes only the
// surviving weights; RTN maps 0 to exactly 0 on every grid, so zeros survive).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/algo/quantized_weight.h"
#include "core/pipeline/compress_report.h"
#include "core/pipeline/recipe.h"
#include "core/pipeline/solver_backend.h"

namespace shrinkray {

// One Linear weight while the stages compress it.
struct LinearState {
  std::vector<float> weight;  // current [rows, cols]; empty until a stage ran
  // Until a stage ran: the matrix's original values where they lie (the
  // model's weight, unchanged while the group is solved), which the first
  // stage reads instead of a copy in `weight`. Cleared once the stages ran.
  absl::Span<const float> original;
  std::vector<uint8_t> keep;  // [rows, cols] 1 = kept; empty until a pruning stage ran
  std::optional<QuantizedWeight> quantized;
  std::string pattern;  // "N:M" of the pruning stage, empty otherwise
  // Set by the caller when `weight` is the matrix's original and the next
  // stage is its only one: a GPTQ or SparseGPT solve is then asked for the
  // output error of its result (SolveReport::output_error), which ApplyStage
  // leaves in `output_error` when the solver had it at hand (a device solve:
  // no second copy of W and Q for it); `output_error` is unset after any
  // other stage. ApplyStage clears the request: it serves one stage.
  bool report_output_error = false;
  std::optional<double> output_error;

  // The values the next stage reads: the last stage's result, else the original.
  absl::Span<const float> current() const { return weight.empty() ? original : absl::Span<const float>(weight); }
};

// The statistics of the matrix's input (shared by the matrices of a group).
struct LinearInputStats {
  // [cols, cols] full symmetric. Empty while only a device holds it: the
  // solver backend reads it there (it was given the hold) and `fetch_h32`
  // copies it to the host, once, for what runs on the CPU.
  absl::Span<const float> h32;
  std::function<absl::StatusOr<absl::Span<const float>>()> fetch_h32;
  absl::Span<const double> h64;    // [cols, cols] when the recipe asks for float64, else empty
  absl::Span<const float> scaler;  // Wanda's Σx²/n [cols], empty unless a Wanda stage applies

  // h32 on the host (fetched on first need).
  absl::StatusOr<absl::Span<const float>> HostH32() const;
};

// Checks that the stages applying to `module` can be chained: at most one
// pruning stage, at most one quantizing stage (sparsegpt with bits is both),
// pruning before quantizing. InvalidArgument naming the module and stages.
absl::Status CheckStageChain(const std::string& module, const std::vector<const RecipeStage*>& stages);

// Runs `stage` on `state` and adds to `report` (methods, bits, damping, solve
// seconds, solver loss). Errors name the module and the stage. GPTQ and
// SparseGPT solve on `solvers` when given (float32 Hessians; what it answers
// Unimplemented for runs on the CPU), else on the CPU.
absl::Status ApplyStage(const RecipeStage& stage, const std::string& module, int rows, int cols,
                        const LinearInputStats& stats, LinearState* state, MatrixReport* report,
                        SolverBackend* solvers = nullptr);

// tr((W−Q) H (W−Q)ᵀ) / tr(W H Wᵀ) = ‖(W−Q)X‖²/‖WX‖² for H ∝ X Xᵀ; 0 when W H Wᵀ is 0.
double RelativeOutputError(absl::Span<const float> w, absl::Span<const float> q, int rows, int cols,
                           absl::Span<const float> h);
// The same with `input`'s H on `solvers`' device when given and it computes
// it (given input.h32, the held span), else on the CPU (input.HostH32());
// also on the CPU when the device has no memory for it.
absl::StatusOr<double> RelativeOutputErrorOn(SolverBackend* solvers, absl::Span<const float> w,
                                             absl::Span<const float> q, int rows, int cols,
                                             const LinearInputStats& input);

}  // namespace shrinkray
