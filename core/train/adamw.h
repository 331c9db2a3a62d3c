// AdamW (Loshchilov & Hutter): Adam with bias correction and weight decay
// decoupled from the gradient, in PyTorch's order:
//   p <- p * (1 - lr * wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
//   p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
// Serial and in double per element, so a run is reproducible bit for bit.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/train/parameter_store.h"

namespace shrinkray::train {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  // Whether 1-D parameters (norm weights, biases) decay too; off as in
  // llm.c / nanoGPT, where only matrices (and embeddings) decay.
  bool decay_vectors = false;
};

class AdamW {
 public:
  // InvalidArgument naming the field: betas outside [0, 1), eps <= 0,
  // weight_decay < 0.
  static absl::StatusOr<AdamW> Create(const AdamWOptions& options);

  // One update of `params` from `grads`, with the moments m, v (same sizes)
  // and weight decay `weight_decay` (the caller's per-tensor choice).
  // Advances no step counter: `step` is the 1-based step for bias correction.
  static void Update(std::span<float> params, std::span<const float> grads, std::span<float> m,
                     std::span<float> v, const AdamWOptions& options, double lr,
                     double weight_decay, int64_t step);

  // Advances the step counter and updates every view of `store` from its
  // gradients and moments. lr must be >= 0.
  absl::Status Step(ParameterStore& store, double lr);

  int64_t step() const { return step_; }
  // For resuming from a checkpoint that saved the moments and the step.
  void set_step(int64_t step) { step_ = step; }
  const AdamWOptions& options() const { return options_; }

 private:
  explicit AdamW(const AdamWOptions& options) : options_(options) {}
  AdamWOptions options_;
  int64_t step_ = 0;
};

}  // namespace shrinkray::train
