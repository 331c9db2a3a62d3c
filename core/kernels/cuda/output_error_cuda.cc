#include "core/kernels/cuda/output_error_cuda.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/kernels/cuda/blas.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/output_error_cuda_launch.h"
#include "core/util/status_macros.h"

namespace shrinkray {

absl::StatusOr<double> relative_output_error(const float* w, const float* q, int rows, int cols, const float* h,
                                             cudaStream_t stream) {
  if (rows <= 0 || cols <= 0 || w == nullptr || q == nullptr || h == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("relative_output_error: bad matrix [", rows, ", ", cols, "]"));
  }
  // W − Q and W stacked, A [2·rows, cols], so that both forms come from one
  // pass over H; and per column tile I only the tiles of H on and below its
  // diagonal: C = A_I H_II + 2 A_{>I} H_{>I,I}, then Σ A_I ∘ C over each half
  // of the rows ((1 + tile/cols)/2 of the FLOPs of A·H; the CPU's form).
  const size_t n = static_cast<size_t>(rows) * cols;
  const long stacked = 2L * rows;
  const int tile = std::min(cols, kOutputErrorTileCols);
  const int tiles = (cols + tile - 1) / tile;
  SR_ASSIGN_OR_RETURN(DeviceBuffer<float> a, DeviceBuffer<float>::Create(2 * n));
  SR_ASSIGN_OR_RETURN(DeviceBuffer<float> c, DeviceBuffer<float>::Create(static_cast<size_t>(stacked) * tile));
  SR_ASSIGN_OR_RETURN(DeviceBuffer<double> partial,
                      DeviceBuffer<double>::Create(static_cast<size_t>(tiles) * 2 * kernels::kDotBlocks));
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchStackDifference(a.data(), w, q, static_cast<long>(n), stream));
  SR_CUDA_ASSIGN_OR_RETURN(cublasHandle_t handle, CublasHandleFor(stream));
  for (int t = 0; t < tiles; ++t) {
    const int i0 = t * tile, width = std::min(tile, cols - i0), i1 = i0 + width;
    // Row-major C = A_I · H_II is column-major Cᵀ = H_IIᵀ · A_Iᵀ (H symmetric).
    const float one = 1.0f, two = 2.0f, zero = 0.0f;
    SR_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, width, static_cast<int>(stacked), width,
                                           &one, h + static_cast<size_t>(i0) * cols + i0, CUDA_R_32F, cols,
                                           a.data() + i0, CUDA_R_32F, cols, &zero, c.data(), CUDA_R_32F, width,
                                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (i1 < cols) {
      SR_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, width, static_cast<int>(stacked),
                                             cols - i1, &two, h + static_cast<size_t>(i1) * cols + i0, CUDA_R_32F,
                                             cols, a.data() + i1, CUDA_R_32F, cols, &one, c.data(), CUDA_R_32F, width,
                                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    double* p = partial.data() + static_cast<size_t>(t) * 2 * kernels::kDotBlocks;
    SR_CUDA_RETURN_IF_ERROR(kernels::LaunchTileDotPartials(p, a.data() + i0, cols, c.data(), width, 0, rows, width,
                                                           stream));
    SR_CUDA_RETURN_IF_ERROR(kernels::LaunchTileDotPartials(p + kernels::kDotBlocks, a.data() + i0, cols, c.data(),
                                                           width, rows, stacked, width, stream));
  }
  std::vector<double> host(partial.size());
  SR_RETURN_IF_ERROR(partial.CopyToHost(absl::MakeSpan(host), stream));
  double num = 0.0, den = 0.0;
  for (int t = 0; t < tiles; ++t) {
    for (int b = 0; b < kernels::kDotBlocks; ++b) {
      num += host[(static_cast<size_t>(t) * 2) * kernels::kDotBlocks + b];
      den += host[(static_cast<size_t>(t) * 2 + 1) * kernels::kDotBlocks + b];
    }
  }
  if (den <= 0.0) return 0.0;
  return num / den;
}

absl::Status report_output_error(const float* w, const float* q, int rows, int cols, const float* h,
                                 cudaStream_t stream, std::optional<double>* out) {
  absl::StatusOr<double> e = relative_output_error(w, q, rows, cols, h, stream);
  if (e.ok()) {
    *out = *e;
    return absl::OkStatus();
  }
  out->reset();
  if (!absl::IsResourceExhausted(e.status())) return e.status();
  (void)cudaGetLastError();  // the failed allocation is not the next launch's error
  return absl::OkStatus();
}

}  // namespace shrinkray
