#include "core/kernels/cuda/activation_norm_cuda.h"

#include "absl/strings/str_cat.h"
#include "core/kernels/cuda/activation_norm_cuda_launch.h"
#include "core/kernels/cuda/cuda_check.h"

namespace shrinkray {

size_t activation_norm_workspace_size(long rows, int cols) {
  const long chunks = (rows + kernels::kActNormChunkRows - 1) / kernels::kActNormChunkRows;
  return static_cast<size_t>(chunks) * static_cast<size_t>(cols);
}

namespace {

template <typename T>
absl::Status Accumulate(float* scaler, int cols, long* n_samples, const T* x, long rows, int batch_samples,
                        double* workspace, cudaStream_t stream) {
  if (cols <= 0 || rows < 0 || batch_samples <= 0 || n_samples == nullptr || *n_samples < 0 ||
      scaler == nullptr || (rows > 0 && (x == nullptr || workspace == nullptr))) {
    return absl::InvalidArgumentError(absl::StrCat("activation_norm_accumulate: bad batch (rows ", rows,
                                                   ", cols ", cols, ", samples ", batch_samples, ")"));
  }
  if ((rows + kernels::kActNormChunkRows - 1) / kernels::kActNormChunkRows > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("activation_norm_accumulate: ", rows, " rows in one batch (at most ",
                                                   65535 * kernels::kActNormChunkRows, ")"));
  }
  // The first batch: whatever scaler held is scaled by 0 (a NaN would survive that).
  if (*n_samples == 0) SR_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(scaler, 0, cols * sizeof(float), stream));
  const long n_old = *n_samples;
  const long n_new = n_old + batch_samples;
  const float shrink = static_cast<float>(static_cast<double>(n_old) / static_cast<double>(n_new));
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchActivationNorm(scaler, cols, x, rows, shrink,
                                                        static_cast<double>(n_new), workspace, stream));
  *n_samples = n_new;
  return absl::OkStatus();
}

}  // namespace

absl::Status activation_norm_accumulate(float* scaler, int cols, long* n_samples, const float* x,
                                        long rows, int batch_samples, double* workspace,
                                        cudaStream_t stream) {
  return Accumulate(scaler, cols, n_samples, x, rows, batch_samples, workspace, stream);
}

absl::Status activation_norm_accumulate(float* scaler, int cols, long* n_samples, const __nv_bfloat16* x,
                                        long rows, int batch_samples, double* workspace,
                                        cudaStream_t stream) {
  return Accumulate(scaler, cols, n_samples, x, rows, batch_samples, workspace, stream);
}

}  // namespace shrinkray
