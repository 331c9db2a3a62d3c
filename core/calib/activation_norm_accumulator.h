// Wanda's per-input-channel statistic scaler_row_j = Σ_tokens x_j² / n_samples,
// in the running form of locuslab/wanda lib/layerwrapper.py add_batch:
//   scaler *= n/(n+b);  n += b;  scaler += ‖x_j‖² / n
// (b samples per batch). Per batch the squares are summed in double, then the
// running value is kept in float32 as the reference.
#pragma once

#include <vector>

#include "absl/status/status.h"

namespace shrinkray {

class Communicator;

class ActivationNormAccumulator {
 public:
  explicit ActivationNormAccumulator(int dim) : dim_(dim), scaler_(dim, 0.0f), sums_(dim, 0.0) {}

  // x: [rows, dim] row-major from `samples` samples.
  absl::Status Add(const float* x, long rows, int samples);

  // Σ_r scaler_r·n_r / Σ_r n_r over every rank (see HessianAccumulator).
  absl::Status MergeAcrossRanks(Communicator& comm);

  // Replaces the state with `scaler` of n_samples samples accumulated
  // elsewhere (the GPU executor).
  absl::Status Assign(std::vector<float> scaler, long n_samples);

  int dim() const { return dim_; }
  long num_samples() const { return n_; }
  const std::vector<float>& scaler_row() const { return scaler_; }

 private:
  int dim_;
  long n_ = 0;
  std::vector<float> scaler_;
  std::vector<double> sums_;
};

}  // namespace shrinkray
