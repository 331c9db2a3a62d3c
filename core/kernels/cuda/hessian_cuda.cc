#include "core/kernels/cuda/hessian_cuda.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <mutex>
#include <set>

#include "absl/strings/str_format.h"
#include "core/kernels/cuda/blas.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/hessian_cuda_launch.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

// The tile size for the block-triangular product of a cols x cols Hessian, or
// 0 for one full GEMM: tiles must divide cols, be multiples of 32 (the mirror
// kernel) and stay large enough (>= 1024) to keep the GEMMs efficient.
int SymmetricBlock(int cols) {
  for (int block : {2048, 1536, 1024}) {
    if (cols % block == 0 && cols / block >= 2) return block;
  }
  return 0;
}

// C = alpha · aᵀ b + beta · C for a, b row-major [tokens, cols]: the whole
// [cols, cols] product, or (block > 0) only its lower blocks (i, j), i >= j,
// of a k x k grid of block x block tiles — (k + 1) / 2k of the FLOPs (57% for
// 14336 = 7 x 2048) — as one strided-batched GEMM per block diagonal d = i - j
// (the k - d blocks of a diagonal are equally spaced in aᵀ, bᵀ and H); the
// caller mirrors them once the sum is complete. Each entry is still one dot
// product over the tokens. beta = 0 means cuBLAS never reads C.
absl::Status LowerProduct(cublasHandle_t handle, float* h, int cols, int block, const void* a, const void* b,
                          cudaDataType_t type, int tokens, float alpha, float beta, cublasComputeType_t compute) {
  // a row-major [tokens, cols] is column-major aᵀ [cols, tokens] (ld cols):
  // op N times op T.
  if (block == 0) {
    SR_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, cols, cols, tokens, &alpha, a, type,
                                           cols, b, type, cols, &beta, h, CUDA_R_32F, cols, compute,
                                           CUBLAS_GEMM_DEFAULT));
    return absl::OkStatus();
  }
  const int k = cols / block;
  const size_t elem = type == CUDA_R_16BF ? 2 : 4;
  const char* ab = static_cast<const char*>(a);
  for (int d = 0; d < k; ++d) {
    const long long stride_x = block;                                      // elements
    const long long stride_h = static_cast<long long>(block) * (cols + 1);  // (j, j) -> (j+1, j+1)
    SR_CUBLAS_RETURN_IF_ERROR(cublasGemmStridedBatchedEx(
        handle, CUBLAS_OP_N, CUBLAS_OP_T, block, block, tokens, &alpha, ab + static_cast<size_t>(d) * block * elem,
        type, cols, stride_x, b, type, cols, stride_x, &beta, h + static_cast<size_t>(d) * block, CUDA_R_32F, cols,
        stride_h, k - d, compute, CUBLAS_GEMM_DEFAULT));
  }
  return absl::OkStatus();
}

// Rows per split of the 3xTF32 path: big and small of one chunk in 256 MiB,
// and at most 2048 rows. The tensor cores may truncate each product while
// accumulating in fp32, a bias that grows with the rows one GEMM sums: a
// bit-level model of per-product truncation without guard bits puts 3xTF32
// at 1.5e-4 of max |H| over 8192 rows and 3.9e-5 over 2048 (the fp32 GEMM:
// 7e-6). Each split adds one fp32 read and write of H (~25% at width 4096).
constexpr size_t kSplitFloats = size_t{64} << 20;
constexpr long kSplitMaxRows = 2048;

// The stream-ordered allocator gives memory back to the device at every
// synchronisation unless its pool keeps some (release threshold 0 by
// default), so a workspace taken and freed per call would be mapped again
// for every batch. The current device's default pool keeps up to one
// workspace (set once per device; a failure only costs that re-mapping).
void KeepOneWorkspaceInThePool() {
  static std::mutex mu;
  static std::set<int> done;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return;
  }
  const std::lock_guard<std::mutex> lock(mu);
  if (!done.insert(device).second) return;
  cudaMemPool_t pool = nullptr;
  uint64_t threshold = kSplitFloats * sizeof(float);  // the largest workspace
  if (cudaDeviceGetDefaultMemPool(&pool, device) != cudaSuccess ||
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold) != cudaSuccess) {
    (void)cudaGetLastError();
  }
}

// H = beta · H + alpha · xᵀ x by 3xTF32 (hessian_cuda.h), over chunks of
// rows whose split fits the workspace. Unavailable (kUnavailable) when the
// workspace cannot be had: the caller then runs the fp32 GEMM.
absl::Status LowerProduct3xTf32(cublasHandle_t handle, float* h, int cols, int block, const float* x, long tokens,
                                float alpha, float beta, cudaStream_t stream) {
  const long chunk =
      std::max<long>(1, std::min({tokens, kSplitMaxRows, static_cast<long>(kSplitFloats / 2 / cols)}));
  void* workspace = nullptr;
  const size_t floats = static_cast<size_t>(chunk) * cols;
  KeepOneWorkspaceInThePool();
  if (cudaMallocAsync(&workspace, 2 * floats * sizeof(float), stream) != cudaSuccess) {
    (void)cudaGetLastError();  // not the next launch's error
    return absl::UnavailableError("3xTF32: no workspace");
  }
  float* big = static_cast<float*>(workspace);
  float* small = big + floats;
  absl::Status status;
  for (long r0 = 0; r0 < tokens && status.ok(); r0 += chunk) {
    const int rows = static_cast<int>(std::min(chunk, tokens - r0));
    const float* xc = x + static_cast<size_t>(r0) * cols;
    // The first chunk rescales H (beta); the rest add to it.
    const float beta_c = r0 == 0 ? beta : 1.0f;
    status = CudaStatus(kernels::LaunchSplitTf32(big, small, xc, static_cast<long>(rows) * cols, stream),
                        "LaunchSplitTf32", __FILE__, __LINE__);
    if (!status.ok()) break;
    status = LowerProduct(handle, h, cols, block, big, big, CUDA_R_32F, rows, alpha, beta_c,
                          CUBLAS_COMPUTE_32F_FAST_TF32);
    if (!status.ok()) break;
    status = LowerProduct(handle, h, cols, block, big, small, CUDA_R_32F, rows, alpha, 1.0f,
                          CUBLAS_COMPUTE_32F_FAST_TF32);
    if (!status.ok()) break;
    status = LowerProduct(handle, h, cols, block, small, big, CUDA_R_32F, rows, alpha, 1.0f,
                          CUBLAS_COMPUTE_32F_FAST_TF32);
  }
  // Stream-ordered: freed once the GEMMs that read it are done.
  (void)cudaFreeAsync(workspace, stream);
  return status;
}

absl::Status Accumulate(float* h, int cols, long* n_samples, const void* x, cudaDataType_t type,
                        long tokens, int batch_samples, cublasComputeType_t compute, bool three_tf32,
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
  const int block = SymmetricBlock(cols);
  if (three_tf32) {
    const absl::Status product =
        LowerProduct3xTf32(handle, h, cols, block, static_cast<const float*>(x), tokens, alpha, beta, stream);
    if (!absl::IsUnavailable(product)) {
      SR_RETURN_IF_ERROR(product);
      // Three sums per entry, added in an order that differs between (i, j)
      // and (j, i) (bigᵀsmall of one is smallᵀbig of the other), and on the
      // block path upper blocks never computed: the lower triangle, mirrored
      // element by element, makes H exactly symmetric.
      SR_CUDA_RETURN_IF_ERROR(kernels::LaunchMirrorLowerTriangle(h, cols, stream));
      *n_samples = n_new;
      return absl::OkStatus();
    }
  }
  SR_RETURN_IF_ERROR(LowerProduct(handle, h, cols, block, x, x, type, static_cast<int>(tokens), alpha, beta, compute));
  if (block > 0) SR_CUDA_RETURN_IF_ERROR(kernels::LaunchMirrorLowerBlocks(h, cols, block, stream));
  *n_samples = n_new;
  return absl::OkStatus();
}

}  // namespace

double hessian_accumulate_flops(int cols, long tokens) {
  const int block = SymmetricBlock(cols);
  const double k = block == 0 ? 1.0 : static_cast<double>(cols / block);
  const double entries = block == 0 ? static_cast<double>(cols) * cols
                                    : k * (k + 1) / 2 * static_cast<double>(block) * block;
  return 2.0 * static_cast<double>(tokens) * entries;
}

absl::Status hessian_accumulate(float* h, int cols, long* n_samples, const __nv_bfloat16* x,
                                long tokens, int batch_samples, cudaStream_t stream) {
  return Accumulate(h, cols, n_samples, x, CUDA_R_16BF, tokens, batch_samples, CUBLAS_COMPUTE_32F,
                    /*three_tf32=*/false, stream);
}

absl::Status hessian_accumulate(float* h, int cols, long* n_samples, const float* x, long tokens,
                                int batch_samples, Fp32HessianGemm gemm, cudaStream_t stream) {
  return Accumulate(h, cols, n_samples, x, CUDA_R_32F, tokens, batch_samples,
                    gemm == Fp32HessianGemm::kTf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                    gemm == Fp32HessianGemm::k3xTf32, stream);
}

}  // namespace shrinkray
