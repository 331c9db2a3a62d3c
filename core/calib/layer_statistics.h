// The calibration statistics of one decoder layer, keyed by Linear group
// (q/k/v share one input, gate/up share one): a Hessian accumulator and/or a
// Wanda activation-norm accumulator per requested group. Fed by a
// LinearInputObserver during LlamaModel::LayerForward.
#pragma once

#include <array>
#include <memory>

#include "absl/status/status.h"
#include "core/calib/activation_norm_accumulator.h"
#include "core/calib/hessian_accumulator.h"
#include "core/model/config.h"
#include "core/model/llama.h"

namespace shrinkray {

class Communicator;

// Input width of a group's Linears: C for qkv and gate_up, q_dim for o, I for down.
int LinearGroupInputDim(const ModelConfig& config, LinearGroup group);
// "qkv", "o", "gate_up", "down".
const char* LinearGroupName(LinearGroup group);

class LayerStatistics {
 public:
  LayerStatistics(const ModelConfig& config, int seqlen, HessianPrecision precision)
      : config_(config), seqlen_(seqlen), precision_(precision) {}

  // Starts fresh accumulators for `group` (dropping any earlier ones).
  void Request(LinearGroup group, bool hessian, bool act_norm);
  // Drops every accumulator.
  void Clear();
  bool AnyRequested() const;

  // An observer that feeds the requested groups; each call's rows are whole
  // windows of `seqlen` tokens (samples = rows / seqlen). The first error is
  // kept in *status (observers cannot return one).
  LinearInputObserver Observer(absl::Status* status);

  // Every requested accumulator merged over the ranks of `comm` (sharded
  // calibration: each rank saw its own windows). Size 1: the collectives run
  // and the statistics stay bit for bit as they were.
  absl::Status MergeAcrossRanks(Communicator& comm);

  const HessianAccumulator* hessian(LinearGroup group) const { return hessian_[Index(group)].get(); }
  // For executors that accumulate elsewhere and hand the result over.
  HessianAccumulator* mutable_hessian(LinearGroup group) { return hessian_[Index(group)].get(); }
  ActivationNormAccumulator* mutable_act_norm(LinearGroup group) { return act_norm_[Index(group)].get(); }
  int seqlen() const { return seqlen_; }
  const ActivationNormAccumulator* act_norm(LinearGroup group) const {
    return act_norm_[Index(group)].get();
  }

 private:
  static size_t Index(LinearGroup group) { return static_cast<size_t>(group); }

  const ModelConfig& config_;
  int seqlen_;
  HessianPrecision precision_;
  std::array<std::unique_ptr<HessianAccumulator>, 4> hessian_;
  std::array<std::unique_ptr<ActivationNormAccumulator>, 4> act_norm_;
};

}  // namespace shrinkray
