// Minitron-style activation importance of a teacher's prunable widths,
// measured by running its CPU forward on calibration windows and observing
// the activations that each width feeds into:
//   MLP channel c of layer l: |a_c| of the SwiGLU output silu(gate x) * up x
//     (the input of down_proj), since removing channel c removes exactly
//     that term from down_proj's sum;
//   attention head h: the L2 norm over head_dim of the head's attention
//     output (the input of o_proj, before it mixes the heads);
//   KV group g (GQA): the sum of its query heads' scores, so that pruning
//     removes whole groups and heads / kv_heads stays an integer;
//   embedding channel c (report only): |x_c| of the RMSNorm outputs feeding
//     q/k/v and gate/up, summed over those 2 * num_layers norms.
//
// Aggregation (Minitron, "Compact Language Models via Pruning and Knowledge
// Distillation", Sec. 2 / Table 11): per window, the mean over its tokens;
// across windows, the L2 norm (kL2, Minitron's best "batch=L2, seq=mean"),
// or the mean (kMean: the plain mean over all tokens). Magnitudes are used
// because the SwiGLU output is signed and a large negative contribution
// matters as much as a positive one. Only the ranking is used for pruning,
// so the default kL2 favours channels that are large on some windows over
// channels that are uniformly moderate, as Minitron found works best.
//
// The windows are given (a CalibrationSet, seeded), the forward is
// deterministic, and sums are in double: the same windows give the same
// scores on every run.
#pragma once

#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "core/calib/calibration_set.h"
#include "core/model/llama.h"

namespace shrinkray::distill {

enum class ImportanceAggregation { kL2, kMean };

struct ImportanceOptions {
  ImportanceAggregation across_windows = ImportanceAggregation::kL2;
  int batch = 4;  // windows per forward call (does not change the scores)
};

struct LayerImportance {
  std::vector<double> mlp_channels;  // [intermediate_size]
  std::vector<double> heads;         // [num_attention_heads]
  std::vector<double> kv_groups;     // [num_key_value_heads]
};

struct ModelImportance {
  std::vector<LayerImportance> layers;    // [num_hidden_layers]
  std::vector<double> embedding_channels;  // [hidden_size], report only
  int num_windows = 0;
  int seqlen = 0;
};

// Runs `teacher` (loaded whole, not streaming: FailedPrecondition) over every
// window of `windows`. InvalidArgument when there are no windows, seqlen is
// not positive or above max_position_embeddings, or a token is out of vocab.
absl::StatusOr<ModelImportance> ComputeActivationImportance(const LlamaModel& teacher,
                                                            const CalibrationSet& windows,
                                                            const ImportanceOptions& options = {});

// The indices of the `k` largest scores, in ascending index order (the
// original order of the channels); ties go to the lower index. k is clamped
// to [0, scores.size()].
std::vector<int> TopKIndices(std::span<const double> scores, int k);

}  // namespace shrinkray::distill
