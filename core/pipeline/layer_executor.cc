#include "core/pipeline/layer_executor.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

class CpuLayerExecutor : public LayerExecutor {
 public:
  explicit CpuLayerExecutor(const LayerExecutorSpec& spec) : spec_(spec) {}

  std::string device() const override { return "cpu"; }

  absl::Status Embed(const LlamaModel& model, std::span<const int32_t> tokens) override {
    hidden_.resize(tokens.size() * static_cast<size_t>(spec_.config->hidden_size));
    return model.Embed(tokens, hidden_);
  }

  absl::Status RunLayer(const LlamaModel& model, int layer, bool output, LayerStatistics* stats,
                        const CancellationToken* cancel) override {
    const size_t window_floats = static_cast<size_t>(spec_.seqlen) * spec_.config->hidden_size;
    absl::Status observed;
    const LinearInputObserver observer = stats != nullptr ? stats->Observer(&observed) : LinearInputObserver();
    std::vector<float> scratch;
    for (int first = 0; first < spec_.windows; first += spec_.batch_windows) {
      SR_RETURN_IF_ERROR(CheckCancelled(cancel, absl::StrCat("layer ", layer)));
      const int b = std::min(spec_.batch_windows, spec_.windows - first);
      std::span<float> batch(hidden_.data() + first * window_floats, b * window_floats);
      if (!output) {
        // Statistics passes leave the layer inputs untouched.
        scratch.assign(batch.begin(), batch.end());
        batch = std::span<float>(scratch);
      }
      SR_RETURN_IF_ERROR(model.LayerForward(layer, model.layer(layer), b, spec_.seqlen, batch, observer));
      SR_RETURN_IF_ERROR(observed);
    }
    return absl::OkStatus();
  }

 private:
  LayerExecutorSpec spec_;
  std::vector<float> hidden_;  // [windows * seqlen, C]
};

}  // namespace

std::unique_ptr<LayerExecutor> MakeCpuLayerExecutor(const LayerExecutorSpec& spec) {
  return std::make_unique<CpuLayerExecutor>(spec);
}

}  // namespace shrinkray
