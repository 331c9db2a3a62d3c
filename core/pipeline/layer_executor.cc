#include "core/pipeline/layer_executor.h"

#include <algorithm>
#include <array>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace shrinkray {

int LayerBlockOf(LinearGroup group) {
  switch (group) {
    case LinearGroup::kQkv: return 0;
    case LinearGroup::kO: return 1;
    case LinearGroup::kGateUp: return 2;
    case LinearGroup::kDown: return 3;
  }
  return 0;
}

ObservedGroups ObservedBy(const LayerStatistics& stats) {
  ObservedGroups o;
  for (LinearGroup g : {LinearGroup::kQkv, LinearGroup::kO, LinearGroup::kGateUp, LinearGroup::kDown}) {
    if (stats.hessian(g) == nullptr && stats.act_norm(g) == nullptr) continue;
    o.first_block = std::min(o.first_block, LayerBlockOf(g));
    o.last = g;
  }
  return o;
}

int KeptBlocks::Start(int layer, int first_block) {
  if (layer != layer_) {
    layer_ = layer;
    valid_ = 0;
  }
  return std::min(valid_, first_block);
}

void KeptBlocks::PassDone(bool output, std::optional<LinearGroup> last) {
  if (output) {
    valid_ = 0;
    return;
  }
  const int end = last.has_value() ? LayerBlockOf(*last) : 3;
  valid_ = std::max(valid_, std::min(end, kept_));
}

void KeptBlocks::WeightsChanged(int layer, LinearGroup group) {
  if (layer == layer_) valid_ = std::min(valid_, LayerBlockOf(group));
}

namespace {

// Kept block outputs on the CPU: at most this many bytes in all.
constexpr size_t kCpuKeptBytes = size_t{4} << 30;

class CpuLayerExecutor : public LayerExecutor {
 public:
  explicit CpuLayerExecutor(const LayerExecutorSpec& spec) : spec_(spec), kept_blocks_(Keep(spec)) {
    const size_t rows = static_cast<size_t>(spec.windows) * spec.seqlen;
    for (int k = 0; k < kept_blocks_.kept(); ++k) kept_[k].resize(rows * Width(k));
  }

  std::string device() const override { return "cpu"; }

  absl::Status Embed(const LlamaModel& model, std::span<const int32_t> tokens) override {
    hidden_.resize(tokens.size() * static_cast<size_t>(spec_.config->hidden_size));
    return model.Embed(tokens, hidden_);
  }

  absl::Status RunLayer(const LlamaModel& model, int layer, bool output, LayerStatistics* stats,
                        const CancellationToken* cancel) override {
    const ModelConfig& c = *spec_.config;
    const ObservedGroups observed = stats != nullptr ? ObservedBy(*stats) : ObservedGroups();
    // A statistics pass with nothing to observe has nothing to do.
    if (!output && !observed.last.has_value()) return absl::OkStatus();
    const int start = kept_blocks_.Start(layer, observed.first_block);
    absl::Status status;
    const LinearInputObserver observer = stats != nullptr ? stats->Observer(&status) : LinearInputObserver();
    const size_t batch_rows = static_cast<size_t>(spec_.batch_windows) * spec_.seqlen;
    // Scratch for what is not kept (a statistics pass leaves the layer input as it is).
    std::vector<float> attention, middle, activation;
    if (kept_blocks_.kept() < 1) attention.resize(batch_rows * c.q_dim());
    if (kept_blocks_.kept() < 2 && !output) middle.resize(batch_rows * c.hidden_size);
    if (kept_blocks_.kept() < 3) activation.resize(batch_rows * c.intermediate_size);
    for (int first = 0; first < spec_.windows; first += spec_.batch_windows) {
      SR_RETURN_IF_ERROR(CheckCancelled(cancel, absl::StrCat("layer ", layer)));
      const int b = std::min(spec_.batch_windows, spec_.windows - first);
      const size_t row0 = static_cast<size_t>(first) * spec_.seqlen;
      float* hidden = hidden_.data() + row0 * c.hidden_size;
      LlamaModel::LayerBuffers buffers;
      buffers.input = hidden;
      buffers.attention = kept_blocks_.kept() >= 1 ? kept_[0].data() + row0 * Width(0) : attention.data();
      buffers.middle = kept_blocks_.kept() >= 2 ? kept_[1].data() + row0 * Width(1)
                       : output                 ? hidden
                                                : middle.data();
      buffers.activation = kept_blocks_.kept() >= 3 ? kept_[2].data() + row0 * Width(2) : activation.data();
      buffers.output = hidden;
      SR_RETURN_IF_ERROR(
          model.LayerForwardStaged(layer, model.layer(layer), b, spec_.seqlen, buffers, start, observer, observed.last));
      SR_RETURN_IF_ERROR(status);
    }
    kept_blocks_.PassDone(output, observed.last);
    return absl::OkStatus();
  }

  void WeightsChanged(int layer, LinearGroup group) override { kept_blocks_.WeightsChanged(layer, group); }

 private:
  // Floats per row of kept block output k: attention, middle, activation.
  size_t Width(int k) const {
    const ModelConfig& c = *spec_.config;
    const int widths[3] = {c.q_dim(), c.hidden_size, c.intermediate_size};
    return static_cast<size_t>(widths[k]);
  }

  // How many block outputs fit in kCpuKeptBytes, in block order.
  static KeptBlocks Keep(const LayerExecutorSpec& spec) {
    const ModelConfig& c = *spec.config;
    const size_t rows = static_cast<size_t>(spec.windows) * spec.seqlen;
    const size_t widths[3] = {static_cast<size_t>(c.q_dim()), static_cast<size_t>(c.hidden_size),
                              static_cast<size_t>(c.intermediate_size)};
    size_t used = 0;
    int kept = 0;
    while (kept < std::min(spec.max_kept_blocks, 3) && used + rows * widths[kept] * sizeof(float) <= kCpuKeptBytes) {
      used += rows * widths[kept] * sizeof(float);
      ++kept;
    }
    return KeptBlocks(kept);
  }

  LayerExecutorSpec spec_;
  KeptBlocks kept_blocks_;
  std::vector<float> hidden_;                // [windows * seqlen, C]
  std::array<std::vector<float>, 3> kept_;  // attention, middle, activation of every window
};

}  // namespace

std::unique_ptr<LayerExecutor> MakeCpuLayerExecutor(const LayerExecutorSpec& spec) {
  return std::make_unique<CpuLayerExecutor>(spec);
}

}  // namespace shrinkray
