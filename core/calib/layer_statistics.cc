#include "core/calib/layer_statistics.h"

#include "core/util/status_macros.h"

#include "absl/strings/str_cat.h"

namespace shrinkray {

int LinearGroupInputDim(const ModelConfig& config, LinearGroup group) {
  switch (group) {
    case LinearGroup::kQkv:
    case LinearGroup::kGateUp: return config.hidden_size;
    case LinearGroup::kO: return config.q_dim();
    case LinearGroup::kDown: return config.intermediate_size;
  }
  return 0;
}

const char* LinearGroupName(LinearGroup group) {
  switch (group) {
    case LinearGroup::kQkv: return "qkv";
    case LinearGroup::kO: return "o";
    case LinearGroup::kGateUp: return "gate_up";
    case LinearGroup::kDown: return "down";
  }
  return "?";
}

void LayerStatistics::Request(LinearGroup group, bool hessian, bool act_norm) {
  const int dim = LinearGroupInputDim(config_, group);
  hessian_[Index(group)] = hessian ? std::make_unique<HessianAccumulator>(dim, precision_) : nullptr;
  act_norm_[Index(group)] = act_norm ? std::make_unique<ActivationNormAccumulator>(dim) : nullptr;
}

void LayerStatistics::Clear() {
  for (auto& h : hessian_) h.reset();
  for (auto& a : act_norm_) a.reset();
}

bool LayerStatistics::AnyRequested() const {
  for (size_t i = 0; i < 4; ++i) {
    if (hessian_[i] || act_norm_[i]) return true;
  }
  return false;
}

LinearInputObserver LayerStatistics::Observer(absl::Status* status) {
  return [this, status](int layer, LinearGroup group, const float* x, long rows, int cols) {
    if (!status->ok()) return;
    const size_t i = Index(group);
    if (!hessian_[i] && !act_norm_[i]) return;
    if (cols != LinearGroupInputDim(config_, group) || rows % seqlen_ != 0) {
      *status = absl::InternalError(absl::StrCat("layer ", layer, " group ", LinearGroupName(group),
                                                 ": observed [", rows, ", ", cols,
                                                 "] does not match the statistics"));
      return;
    }
    const int samples = static_cast<int>(rows / seqlen_);
    if (hessian_[i]) {
      absl::Status s = hessian_[i]->Add(x, rows, samples);
      if (!s.ok()) *status = s;
    }
    if (act_norm_[i] && status->ok()) {
      absl::Status s = act_norm_[i]->Add(x, rows, samples);
      if (!s.ok()) *status = s;
    }
  };
}

absl::Status LayerStatistics::MergeAcrossRanks(Communicator& comm) {
  // Fixed group order on every rank: the collectives must line up.
  for (size_t g = 0; g < hessian_.size(); ++g) {
    if (hessian_[g]) SR_RETURN_IF_ERROR(hessian_[g]->MergeAcrossRanks(comm));
    if (act_norm_[g]) SR_RETURN_IF_ERROR(act_norm_[g]->MergeAcrossRanks(comm));
  }
  return absl::OkStatus();
}

}  // namespace shrinkray
