// Gradient clipping by global L2 norm (torch.nn.utils.clip_grad_norm_): when
// the norm over ALL gradients exceeds max_norm they are scaled by
// max_norm / (norm + 1e-6). One norm over the whole flat gradient buffer
// keeps the update direction, unlike per-tensor clipping.
#pragma once

#include <span>

#include "absl/status/statusor.h"

namespace shrinkray::train {

// The global norm of `grads` (accumulated in double, in order: deterministic).
template <typename T>
double GlobalGradNorm(std::span<const T> grads);

// Clips in place and returns the norm before clipping. max_norm must be > 0
// (InvalidArgument naming it). A non-finite norm is returned with the
// gradients untouched, for the caller to skip the step.
template <typename T>
absl::StatusOr<double> ClipGradNorm(std::span<T> grads, double max_norm);

}  // namespace shrinkray::train
