// cuBLAS / cuSOLVER plumbing: status conversion macros and per-thread handles.
// Host-only header.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace shrinkray {

absl::Status CublasStatus(cublasStatus_t st, const char* expr, const char* file, int line);
absl::Status CusolverStatus(cusolverStatus_t st, const char* expr, const char* file, int line);

// The calling thread's cuBLAS handle for the current device, created on first
// use (cuBLAS handles must not be shared between threads). It is bound to
// `stream` on every call. Handles live until the process exits: destroying
// them from a thread_local destructor could run after the CUDA runtime has
// been torn down.
absl::StatusOr<cublasHandle_t> CublasHandleFor(cudaStream_t stream);

// The same for cuSOLVER dense.
absl::StatusOr<cusolverDnHandle_t> CusolverHandleFor(cudaStream_t stream);

}  // namespace shrinkray

#define SR_CUBLAS_RETURN_IF_ERROR(expr)                                               \
  do {                                                                                \
    const cublasStatus_t sr_cublas_st_ = (expr);                                      \
    if (sr_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                     \
      return ::shrinkray::CublasStatus(sr_cublas_st_, #expr, __FILE__, __LINE__);     \
    }                                                                                 \
  } while (0)

#define SR_CUSOLVER_RETURN_IF_ERROR(expr)                                             \
  do {                                                                                \
    const cusolverStatus_t sr_cusolver_st_ = (expr);                                  \
    if (sr_cusolver_st_ != CUSOLVER_STATUS_SUCCESS) {                                 \
      return ::shrinkray::CusolverStatus(sr_cusolver_st_, #expr, __FILE__, __LINE__); \
    }                                                                                 \
  } while (0)

// Assigns the value of a StatusOr expression or returns its status.
#define SR_CUDA_ASSIGN_OR_RETURN(lhs, expr) SR_CUDA_ASSIGN_OR_RETURN_IMPL(SR_CUDA_CAT(sr_sor_, __LINE__), lhs, expr)
#define SR_CUDA_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()
#define SR_CUDA_CAT_INNER(a, b) a##b
#define SR_CUDA_CAT(a, b) SR_CUDA_CAT_INNER(a, b)

#define SR_STATUS_RETURN_IF_ERROR(expr)          \
  do {                                           \
    const ::absl::Status sr_st_ = (expr);        \
    if (!sr_st_.ok()) return sr_st_;             \
  } while (0)
