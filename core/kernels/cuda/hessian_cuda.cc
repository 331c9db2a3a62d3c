#include "core/kernels/cuda/hessian_cuda.h"

#include <limits>

#include "absl/strings/str_format.h"
#include "core/kernels/cuda/blas.h"
#include "core/kernels/cuda/cuda_check.h"

namespace shrinkray {
namespace {

absl::Status Accumulate(float* h, int cols, long* n_samples, const void* x, cudaDataType_t type,
                        long tokens, int batch_samples, cublasComputeType_t compute,
                        cudaStream_t stream) {
  if (cols <= 0 || tokens < 0 || batch_samples <= 0 || n_samples == nullptr || *n_samples < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "hessian_accumulate: bad arguments cols=%d tokens=%d batch_samples=%d", cols, tokens,
        batch_samples));
  }
  if (h == nullptr || (tokens > 0 && x == nullptr)) {
    return absl::InvalidArgumentError("hessian_accumulate: null h or x");
  }
  if (tokens > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError("hessian_accumulate: more than 2^31 tokens in one call");
  }
  const long n_old = *n_samples;
  const long n_new = n_old + batch_samples;
  // The reference's factors, as Python floats rounded to fp32 by torch.
  const float beta = static_cast<float>(static_cast<double>(n_old) / static_cast<double>(n_new));
  const float alpha = static_cast<float>(2.0 / static_cast<double>(n_new));
  if (tokens == 0) {
    // No rows: only the rescale (H *= n/(n+b)); on the first batch H = 0.
    if (n_old == 0) {
      SR_CUDA_RETURN_IF_ERROR(
          cudaMemsetAsync(h, 0, static_cast<size_t>(cols) * cols * sizeof(float), stream));
    } else {
      SR_CUDA_ASSIGN_OR_RETURN(cublasHandle_t handle, CublasHandleFor(stream));
      SR_CUBLAS_RETURN_IF_ERROR(cublasSscal(handle, cols * cols, &beta, h, 1));
    }
    *n_samples = n_new;
    return absl::OkStatus();
  }
  SR_CUDA_ASSIGN_OR_RETURN(cublasHandle_t handle, CublasHandleFor(stream));
  // x row-major [tokens, cols] is column-major X^T [cols, tokens] (ld cols);
  // H = X^T X = (X^T)(X^T)^T: op N times op T. beta = 0 on the first batch
  // means cuBLAS never reads h (it may hold garbage).
  SR_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, cols, cols,
                                         static_cast<int>(tokens), &alpha, x, type, cols, x, type,
                                         cols, &beta, h, CUDA_R_32F, cols, compute,
                                         CUBLAS_GEMM_DEFAULT));
  *n_samples = n_new;
  return absl::OkStatus();
}

}  // namespace

absl::Status hessian_accumulate(float* h, int cols, long* n_samples, const __nv_bfloat16* x,
                                long tokens, int batch_samples, cudaStream_t stream) {
  return Accumulate(h, cols, n_samples, x, CUDA_R_16BF, tokens, batch_samples, CUBLAS_COMPUTE_32F,
                    stream);
}

absl::Status hessian_accumulate(float* h, int cols, long* n_samples, const float* x, long tokens,
                                int batch_samples, bool allow_tf32, cudaStream_t stream) {
  return Accumulate(h, cols, n_samples, x, CUDA_R_32F, tokens, batch_samples,
                    allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, stream);
}

}  // namespace shrinkray
