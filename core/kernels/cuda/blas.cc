#include "core/kernels/cuda/blas.h"

#include <array>
#include <string>

#include "absl/strings/str_format.h"
#include "core/kernels/cuda/cuda_check.h"

namespace shrinkray {
namespace {

constexpr int kMaxDevices = 16;

const char* CublasName(cublasStatus_t st) {
  switch (st) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_?";
  }
}

const char* CusolverName(cusolverStatus_t st) {
  switch (st) {
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "CUSOLVER_STATUS_?";
  }
}

}  // namespace

absl::Status CublasStatus(cublasStatus_t st, const char* expr, const char* file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg = absl::StrFormat("cuBLAS error %s (%d) in %s at %s:%d", CublasName(st),
                                          static_cast<int>(st), expr, file, line);
  if (st == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  if (st == CUBLAS_STATUS_INVALID_VALUE) return absl::InvalidArgumentError(msg);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_ARCH_MISMATCH) {
    return absl::UnimplementedError(msg);
  }
  return absl::InternalError(msg);
}

absl::Status CusolverStatus(cusolverStatus_t st, const char* expr, const char* file, int line) {
  if (st == CUSOLVER_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg = absl::StrFormat("cuSOLVER error %s (%d) in %s at %s:%d",
                                          CusolverName(st), static_cast<int>(st), expr, file, line);
  if (st == CUSOLVER_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  if (st == CUSOLVER_STATUS_INVALID_VALUE) return absl::InvalidArgumentError(msg);
  return absl::InternalError(msg);
}

absl::StatusOr<cublasHandle_t> CublasHandleFor(cudaStream_t stream) {
  thread_local std::array<cublasHandle_t, kMaxDevices> handles{};
  int dev = 0;
  SR_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev));
  if (dev < 0 || dev >= kMaxDevices) return absl::OutOfRangeError("device id out of range");
  if (handles[dev] == nullptr) {
    cublasHandle_t h = nullptr;
    SR_CUBLAS_RETURN_IF_ERROR(cublasCreate(&h));
    // IEEE fp32 for fp32 GEMMs unless a call asks for TF32 explicitly.
    SR_CUBLAS_RETURN_IF_ERROR(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
    handles[dev] = h;
  }
  SR_CUBLAS_RETURN_IF_ERROR(cublasSetStream(handles[dev], stream));
  return handles[dev];
}

absl::StatusOr<cusolverDnHandle_t> CusolverHandleFor(cudaStream_t stream) {
  thread_local std::array<cusolverDnHandle_t, kMaxDevices> handles{};
  int dev = 0;
  SR_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev));
  if (dev < 0 || dev >= kMaxDevices) return absl::OutOfRangeError("device id out of range");
  if (handles[dev] == nullptr) {
    cusolverDnHandle_t h = nullptr;
    SR_CUSOLVER_RETURN_IF_ERROR(cusolverDnCreate(&h));
    handles[dev] = h;
  }
  SR_CUSOLVER_RETURN_IF_ERROR(cusolverDnSetStream(handles[dev], stream));
  return handles[dev];
}

}  // namespace shrinkray
