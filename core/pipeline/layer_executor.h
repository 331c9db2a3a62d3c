// Where the layerwise executor (compress.h) runs its layer forwards and
// gathers their statistics. It holds this rank's hidden states (one row per
// calibration token) between layers:
//   Embed     the windows' token embeddings -> hidden states;
//   RunLayer  every window through one decoder layer, `batch_windows` at a
//             time, with the layer's current weights (model.layer(l), read
//             anew on each call: a pass after compressing a group sees the
//             compressed weights). output=true advances the hidden states
//             (the next layer's inputs); output=false leaves them as they are
//             and feeds the requested statistics.
// Both executors keep, between the passes of one layer, what its blocks
// computed (LlamaModel::LayerForwardStaged: attention output, attention block
// output, MLP activation; all windows) when it fits, and start the next pass
// from the latest kept output whose weights did not change since
// (WeightsChanged); a statistics pass stops after its last observed group.
// A true-sequential layer then costs one forward instead of four partial ones
// plus the output pass, with the same values. The CPU executor runs
// LlamaModel::LayerForwardStaged. The CUDA one
// (core/kernels/cuda/cuda_layer_executor.cc) keeps the hidden states on the
// device in fp32 (or bf16: the recipe's forward_dtype), runs the same op
// sequence with cuBLAS GEMMs and accumulates each group's Hessian (fp32:
// 3xTF32, near-fp32 on tensor cores, never plain TF32; bf16: tensor cores
// with fp32 accumulation) and Wanda norm there
// in the same running form; the statistics are then handed to the CPU
// accumulators (the Hessians left on the device: AssignOnDevice), so merging
// across ranks and the solvers see the same objects.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/calib/layer_statistics.h"
#include "core/pipeline/device_matrix.h"
#include "core/model/forward_dtype.h"
#include "core/model/llama.h"
#include "core/util/cancellation.h"

namespace shrinkray {

class LayerExecutor {
 public:
  virtual ~LayerExecutor() = default;
  virtual std::string device() const = 0;  // "cpu", "cuda"

  // tokens: [windows, seqlen] of this rank, as the executor was made for.
  // The model's embeddings must be loaded.
  virtual absl::Status Embed(const LlamaModel& model, std::span<const int32_t> tokens) = 0;
  // stats: null, or the statistics to feed (output=false passes).
  virtual absl::Status RunLayer(const LlamaModel& model, int layer, bool output, LayerStatistics* stats,
                                const CancellationToken* cancel) = 0;
  // The weights of `group` in `layer` changed (a stage compressed them). An
  // executor that keeps what earlier passes of the layer computed drops what
  // depends on them, and one that keeps the layer's weights on a device
  // copies that group again; the caller must say so before the next RunLayer.
  virtual void WeightsChanged(int layer, LinearGroup group) {}
  // A hint: `layer`'s weights are in memory (model.layer(layer)) and stay as
  // they are until its first RunLayer; an executor that keeps a layer's
  // weights on a device may start copying them now, beside the current
  // layer's work, so that the next layer does not wait for its copy. They
  // must stay valid and unchanged until that RunLayer (the copy may still be
  // reading them). A failed copy is that RunLayer's error.
  virtual void Prefetch(const LlamaModel& model, int layer) {}
  // Where this executor holds the Linear weight of `layer` whose host values
  // are at `host` (a matrix view of model.layer(layer)) as float32 values
  // equal to them: the copy its last RunLayer used, unless WeightsChanged
  // named the matrix's group since. Valid until the next RunLayer; null data
  // when there is no such copy (the CPU executor, another layer, a changed
  // group). A GPU solver on that device reads W there (SolverBackend::
  // HoldWeight) instead of copying it up (0.87 GB a layer at 8B shapes).
  virtual DeviceMatrix DeviceWeight(int layer, const float* host) const { return {}; }
  // Layers whose first pass found their weights copied ahead by a Prefetch
  // (0 for an executor that never copies ahead): what the tests check, since
  // a prefetch that could not be had falls back to a copy at RunLayer.
  virtual long layers_prefetched() const { return 0; }
};

// The block of LayerForwardStaged whose input a group's Linears read (0..3).
int LayerBlockOf(LinearGroup group);

// The groups a statistics pass observes: the first one's block (4: none) and
// the last one in forward order.
struct ObservedGroups {
  int first_block = 4;
  std::optional<LinearGroup> last;
};
ObservedGroups ObservedBy(const LayerStatistics& stats);

// Which kept block outputs of the current layer are valid: the bookkeeping
// both executors share.
class KeptBlocks {
 public:
  explicit KeptBlocks(int kept) : kept_(kept) {}
  int kept() const { return kept_; }  // block outputs held (0..3, in block order)
  // The block a pass of `layer` starts from when it observes from `first_block`.
  int Start(int layer, int first_block);
  // After a pass over every window of the layer: an output pass moved the
  // hidden states on (nothing kept belongs to them any more); a statistics
  // pass ran the blocks before `last`'s, whose kept outputs are now valid.
  void PassDone(bool output, std::optional<LinearGroup> last);
  void WeightsChanged(int layer, LinearGroup group);

 private:
  int kept_;
  int layer_ = -1;
  int valid_ = 0;  // kept outputs [0, valid_) are current
};

// What an executor is made for: this rank's windows and how many go through
// a layer at once.
struct LayerExecutorSpec {
  const ModelConfig* config = nullptr;
  int windows = 0;
  int seqlen = 0;
  int batch_windows = 1;
  HessianPrecision precision = HessianPrecision::kFloat32;
  // The recipe's forward_dtype. The CPU executor always runs float32; a
  // device executor runs bfloat16 when asked.
  ForwardDtype forward_dtype = ForwardDtype::kFloat32;
  // How many of a layer's block outputs (attention, attention block output,
  // MLP activation) an executor may keep between the passes of the layer,
  // when they fit (CPU: 4 GiB in all; GPU: beside a margin): 3 makes a
  // true-sequential layer cost one forward instead of four partial ones plus
  // the output pass; 0 recomputes from the layer input every pass (the
  // values are the same).
  int max_kept_blocks = 3;
};

// The CPU executor (always available).
std::unique_ptr<LayerExecutor> MakeCpuLayerExecutor(const LayerExecutorSpec& spec);

// Makes a run's executor. Unimplemented means "this device cannot serve this
// run" (e.g. float64 Hessians on the GPU): the caller then uses the CPU
// executor and says why; any other error fails the run.
using LayerExecutorFactory = std::function<absl::StatusOr<std::unique_ptr<LayerExecutor>>(const LayerExecutorSpec&)>;

// The CUDA executor and the factory by device: core/pipeline/device_factories.h.

}  // namespace shrinkray
