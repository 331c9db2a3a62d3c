// The layer-streaming compression executor (GPTQ's llama.py order):
//   embed the calibration windows -> hidden [N·L, C];
//   for each decoder layer:
//     for each Linear group in true-sequential order qkv -> o -> gate_up ->
//     down (or all four at once when true_sequential is false):
//       run every window through the layer (LayerForward) with the earlier
//       groups already compressed, accumulating this group's input statistics
//       (H = 2/n Σ x xᵀ always — it also gives the reported error — and
//       Wanda's Σx²/n when a Wanda stage applies);
//       apply every stage of the recipe that targets each matrix, in order,
//       and write the result back into the model's layer views;
//     recompute the layer's outputs with all of its weights compressed: they
//     are the next layer's inputs.
// A pass resumes from what the previous pass of the layer computed when the
// weights it depends on did not change (core/pipeline/layer_executor.h): the
// same values for a fraction of the forwards.
// Windows go through the layer in batches (memory bound); statistics use the
// running-average form, so batching changes only rounding.
//
// RunCompression streams the weights too: the model is opened with
// LlamaModel::OpenStreaming (nothing read), the embeddings are loaded for the
// embedding step and freed, each layer is loaded (LoadLayer) just before its
// turn, and once its outputs are recomputed and its progress reported, its
// tensors go to CompressedModelWriter (encoded and parked on disk at once)
// and the layer is released. Resident memory is one layer's fp32 weights and
// compression state plus the hidden states, not the model; the output equals
// the in-memory path's byte for byte. See docs/recipes.md for measurements.
//
// RunCompression also checkpoints: each finished layer is persisted in
// OUT.partial (core/pipeline/layer_checkpoint.h), so a run that was killed,
// failed or cancelled resumes at its first unfinished layer when run again
// with the same inputs, and writes the same bytes as an uninterrupted run.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/calib/calibration_set.h"
#include "core/io/model_writer.h"
#include "core/model/llama.h"
#include "core/pipeline/apply_stages.h"
#include "core/pipeline/compress_report.h"
#include "core/pipeline/layer_executor.h"
#include "core/pipeline/recipe.h"
#include "core/pipeline/solver_backend.h"
#include "core/util/cancellation.h"
#include "core/comm/communicator.h"

namespace shrinkray {

using ProgressFn = std::function<void(const std::string& line)>;

// Sent after each decoder layer is compressed and its outputs recomputed.
struct LayerDone {
  int layer = 0;       // 0-based
  int num_layers = 0;
  double seconds = 0.0;
  std::vector<MatrixReport> matrices;  // this layer's, in processing order
};
using LayerDoneFn = std::function<void(const LayerDone&)>;

struct LayerwiseOptions {
  // Also compute, per matrix quantized by GPTQ, the error of RTN at the same
  // bits/group/sym on the same inputs (GPTQ-vs-RTN tables).
  bool compare_rtn = false;
  // Windows per LayerForward call; 0 picks one that keeps activations near 512 MiB.
  int batch_windows = 0;
  ProgressFn progress;  // one line per layer; may be empty
  LayerDoneFn on_layer_done;  // structured progress for the service; may be empty
  // Polled between window batches and layers; a cancelled run returns
  // CancelledError and leaves no output folder (RunCompression keeps the
  // finished layers in OUT.partial for a resume). May be null.
  const CancellationToken* cancel = nullptr;
  // RunCompression only: called once, before anything is recomputed, when the
  // run resumes an interrupted one at `first_layer` > 0 (layers before it are
  // restored, not compressed again: on_layer_done is not called for them).
  std::function<void(int first_layer, int num_layers)> on_resume;
  // Sharded calibration across the ranks of a job (null or size 1: alone).
  // Every rank runs the same call: each embeds and forwards its own slice of
  // the windows; statistics are all-reduced; each matrix is solved by one
  // rank (whole matrices, bin-packed by cost) and broadcast; every rank
  // recomputes its windows' outputs. Rank 0 alone writes the output,
  // checkpoint and report. docs/distributed.md.
  Communicator* comm = nullptr;
  // Where GPTQ/SparseGPT solve each matrix (null: the CPU). Not owned; used
  // from the calling thread only. core/pipeline/solver_backend.h.
  SolverBackend* solvers = nullptr;
  // Where the layer forwards and their statistics (Hessians, activation
  // norms) run (core/pipeline/layer_executor.h): empty, the CPU; else the
  // device's executor, e.g. MakeLayerExecutorFactory(cuda:N) of
  // core/pipeline/device_factories.h. A run it cannot serve (Unimplemented)
  // falls back to the CPU with a progress line.
  LayerExecutorFactory executors;
};

// Wall seconds by phase over the layers (sharded runs: this rank's).
struct LayerwisePhases {
  double load = 0.0;        // materialising each layer (the read, or waiting for the read ahead)
  double forward = 0.0;     // layer forwards with statistics, and the output recompute
  double allreduce = 0.0;   // merging statistics across ranks
  double solve = 0.0;       // this rank's GPTQ/SparseGPT/... solves
  double error = 0.0;       // the reported output errors (and RTN's) of those matrices
  double broadcast = 0.0;   // waiting for and receiving other ranks' matrices
  double Total() const;
  nlohmann::json ToJson() const;
};

struct LayerwiseResult {
  std::vector<MatrixReport> matrices;        // in processing order
  std::map<std::string, LinearState> linears;  // module -> final state
  std::vector<double> layer_seconds;  // a restored layer's are its first run's
  double embed_seconds = 0.0;
  int resumed_from_layer = 0;   // layers before it were restored from a checkpoint
  double resume_seconds = 0.0;  // restoring them, with the forward that rebuilds the hidden states
  LayerwisePhases phases;
};

// Compresses `model` (loaded whole, e.g. LlamaModel::Load) in place with
// `recipe` on `calibration`. Errors name the module and stage; a stage whose
// targets match no Linear is InvalidArgument.
absl::StatusOr<LayerwiseResult> CompressLayerwise(LlamaModel& model, const Recipe& recipe,
                                                  const CalibrationSet& calibration,
                                                  const LayerwiseOptions& options);

struct CompressOptions {
  std::filesystem::path model_dir;
  std::filesystem::path calib_path;  // text, or pre-tokenized .safetensors
  std::filesystem::path out_dir;
  CalibrationOptions calibration;    // seqlen is clamped to max_position_embeddings
  OutputFormat format = OutputFormat::kDense;
  bool overwrite = false;
  // Continue an interrupted run from the layers it left in OUT.partial when
  // its fingerprint (model, recipe, calibration tokens, format, dtype,
  // compare_rtn, batch size) equals this run's; false discards them. Layers
  // are checkpointed either way.
  bool resume = true;
  // Write each finished layer (and its checkpoint) on a thread of its own
  // while the next layer computes, and read the next layer from the source
  // checkpoint while this one computes. Same output bytes either way; false
  // keeps all of it in line (for measuring what the overlap hides).
  bool overlap_io = true;
  LayerwiseOptions layerwise;
};

// Everything: open config + checkpoint (streaming) + tokenizer, build the
// calibration set, run the executor layer by layer while the folder is written
// (CompressedModelWriter), then report.json. An existing out_dir without
// overwrite fails before any work; a run that fails or is cancelled before
// the folder is complete leaves no output folder (and an old one untouched),
// only OUT.partial with the job's fingerprint and finished layers, which a
// later run resumes from (see CompressOptions::resume) and which a successful
// run or a changed fingerprint removes. A resumed run rebuilds the hidden
// states by embedding the calibration windows and running them through the
// restored layers (one extra forward per layer), then continues; its output
// equals an uninterrupted run's byte for byte (report.json but its timings
// and "resumed_from_layer").
absl::StatusOr<CompressReport> RunCompression(const Recipe& recipe, const CompressOptions& options);

// InvalidArgument when a stage of `recipe` selects no decoder Linear of this
// model or a stage chain is invalid (what RunCompression checks before its
// slow calibration; the service's dry run uses it too).
absl::Status CheckRecipeTargets(const ModelConfig& config, const Recipe& recipe);

// The HF name of a decoder Linear, e.g. ("model.layers.3.mlp.up_proj").
std::string LinearModuleName(int layer, const char* leaf);

}  // namespace shrinkray
