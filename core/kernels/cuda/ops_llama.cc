// Host side of the Llama forward ops: argument checks, kernel launches and the
// cuBLAS matmul.
#include <library_types.h>

#include "absl/strings/str_format.h"
#include "core/kernels/cuda/blas.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/ops.h"
#include "core/kernels/cuda/ops_launch.h"

namespace shrinkray {
namespace {

using bf16 = __nv_bfloat16;

absl::Status CheckEmbedding(const void* out, const void* tokens, const void* wte, int N, int V,
                            int C) {
  if (N < 0 || V < 0 || C < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("embedding_forward: bad shape N=%d V=%d C=%d", N, V, C));
  }
  if (N > 0 && C > 0 && (out == nullptr || tokens == nullptr || wte == nullptr)) {
    return absl::InvalidArgumentError("embedding_forward: null out, tokens or wte");
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status EmbeddingImpl(T* out, const int32_t* tokens, const T* wte, int N, int V, int C,
                           cudaStream_t stream) {
  SR_STATUS_RETURN_IF_ERROR(CheckEmbedding(out, tokens, wte, N, V, C));
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchEmbedding<T>(out, tokens, wte, N, V, C, stream));
  return absl::OkStatus();
}

// Row-major out[N, OC] = inp[N, C] @ W[OC, C]^T is, in cuBLAS's column-major
// view, out^T[OC, N] = W^T(op T on the [C, OC] column-major W) x inp^T[C, N].
absl::Status GemmImpl(void* out, cudaDataType_t out_type, const void* inp, const void* weight,
                      cudaDataType_t in_type, int N, int C, int OC, cudaStream_t stream) {
  SR_CUDA_ASSIGN_OR_RETURN(cublasHandle_t handle, CublasHandleFor(stream));
  const float alpha = 1.0f;
  const float beta = 0.0f;
  SR_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, &alpha,
                                         weight, in_type, C, inp, in_type, C, &beta, out,
                                         out_type, OC, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

absl::Status CheckMatmul(const void* out, const void* inp, const void* weight, int N, int C,
                         int OC) {
  if (N < 0 || C < 0 || OC < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("matmul_forward: bad shape N=%d C=%d OC=%d", N, C, OC));
  }
  if (N > 0 && OC > 0 && (out == nullptr || inp == nullptr || weight == nullptr)) {
    return absl::InvalidArgumentError("matmul_forward: null out, inp or weight");
  }
  if (out != nullptr && out == inp) {
    return absl::InvalidArgumentError("matmul_forward: out aliases inp");
  }
  return absl::OkStatus();
}

template <typename TOut>
absl::Status MatmulImpl(TOut* out, const void* inp, const void* weight, cudaDataType_t in_type,
                        const float* bias, int N, int C, int OC, cudaStream_t stream) {
  SR_STATUS_RETURN_IF_ERROR(CheckMatmul(out, inp, weight, N, C, OC));
  if (N == 0 || OC == 0) return absl::OkStatus();
  if (C == 0) {  // an empty sum: cuBLAS rejects k = 0 with ld >= 1 rules; the result is the bias
    SR_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(out, 0, static_cast<size_t>(N) * OC * sizeof(TOut), stream));
  } else {
    constexpr cudaDataType_t kOut = sizeof(TOut) == 4 ? CUDA_R_32F : CUDA_R_16BF;
    SR_STATUS_RETURN_IF_ERROR(GemmImpl(out, kOut, inp, weight, in_type, N, C, OC, stream));
  }
  if (bias != nullptr) {
    SR_CUDA_RETURN_IF_ERROR(kernels::LaunchAddBias<TOut>(out, bias, N, OC, stream));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status ResidualImpl(T* out, const T* a, const T* b, long N, cudaStream_t stream) {
  if (N < 0) return absl::InvalidArgumentError(absl::StrFormat("residual_forward: bad N=%d", N));
  if (N > 0 && (out == nullptr || a == nullptr || b == nullptr)) {
    return absl::InvalidArgumentError("residual_forward: null out, inp1 or inp2");
  }
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchResidual<T>(out, a, b, N, stream));
  return absl::OkStatus();
}

template <typename T>
absl::Status RopeImpl(T* out, const T* inp, const float* cos, const float* sin, int B, int T_,
                      int NH, int HD, cudaStream_t stream) {
  if (B < 0 || T_ < 0 || NH < 0 || HD < 0 || HD % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("rope_forward: bad shape B=%d T=%d NH=%d HD=%d", B, T_, NH, HD));
  }
  if (static_cast<long>(B) * T_ * NH * HD > 0 &&
      (out == nullptr || inp == nullptr || cos == nullptr || sin == nullptr)) {
    return absl::InvalidArgumentError("rope_forward: null pointer");
  }
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchRope<T>(out, inp, cos, sin, B, T_, NH, HD, /*inverse=*/false, stream));
  return absl::OkStatus();
}

absl::Status CheckAttention(const void* out, const void* q, const void* k, const void* v, int B,
                            int T, int NH, int NKV, int HD) {
  if (B < 0 || T < 0 || NH <= 0 || NKV <= 0 || HD <= 0 || NH % NKV != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "attention_forward: bad shape B=%d T=%d NH=%d NKV=%d HD=%d", B, T, NH, NKV, HD));
  }
  if (HD > 256) {
    return absl::UnimplementedError(absl::StrFormat("attention_forward: HD=%d > 256", HD));
  }
  if (static_cast<long>(B) * T > 0 &&
      (out == nullptr || q == nullptr || k == nullptr || v == nullptr)) {
    return absl::InvalidArgumentError("attention_forward: null pointer");
  }
  if (out != nullptr && (out == q || out == k || out == v)) {
    return absl::InvalidArgumentError("attention_forward: out aliases an input");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status embedding_forward(float* out, const int32_t* tokens, const float* wte, int N, int V,
                               int C, cudaStream_t stream) {
  return EmbeddingImpl(out, tokens, wte, N, V, C, stream);
}
absl::Status embedding_forward(bf16* out, const int32_t* tokens, const bf16* wte, int N, int V,
                               int C, cudaStream_t stream) {
  return EmbeddingImpl(out, tokens, wte, N, V, C, stream);
}

absl::Status matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                            int N, int C, int OC, cudaStream_t stream) {
  return MatmulImpl<float>(out, inp, weight, CUDA_R_32F, bias, N, C, OC, stream);
}
absl::Status matmul_forward(bf16* out, const bf16* inp, const bf16* weight, const float* bias,
                            int N, int C, int OC, cudaStream_t stream) {
  return MatmulImpl<bf16>(out, inp, weight, CUDA_R_16BF, bias, N, C, OC, stream);
}
absl::Status matmul_forward(float* out, const bf16* inp, const bf16* weight, const float* bias,
                            int N, int C, int OC, cudaStream_t stream) {
  return MatmulImpl<float>(out, inp, weight, CUDA_R_16BF, bias, N, C, OC, stream);
}

absl::Status residual_forward(float* out, const float* inp1, const float* inp2, long N,
                              cudaStream_t stream) {
  return ResidualImpl(out, inp1, inp2, N, stream);
}
absl::Status residual_forward(bf16* out, const bf16* inp1, const bf16* inp2, long N,
                              cudaStream_t stream) {
  return ResidualImpl(out, inp1, inp2, N, stream);
}

absl::Status rope_forward(float* out, const float* inp, const float* cos, const float* sin, int B,
                          int T, int NH, int HD, cudaStream_t stream) {
  return RopeImpl(out, inp, cos, sin, B, T, NH, HD, stream);
}
absl::Status rope_forward(bf16* out, const bf16* inp, const float* cos, const float* sin, int B,
                          int T, int NH, int HD, cudaStream_t stream) {
  return RopeImpl(out, inp, cos, sin, B, T, NH, HD, stream);
}

namespace {

// The fast kernel of each type where the shape allows (fp32: tiled; bf16:
// tensor cores), else (or when `simt`) the one-warp-per-query kernel.
bool FastAttentionOk(const float* out, const float* q, const float* k, const float* v, int /*NH*/, int /*NKV*/,
                     int HD) {
  return kernels::AttentionTiledF32Ok(out, q, k, v, HD);
}
bool FastAttentionOk(const bf16* out, const bf16* q, const bf16* k, const bf16* v, int NH, int NKV, int HD) {
  return kernels::AttentionTensorCoreOk(out, q, k, v, NH, NKV, HD);
}
cudaError_t LaunchFastAttention(float* out, const float* q, const float* k, const float* v, int B, int T, int NH,
                                int NKV, int HD, int window, cudaStream_t stream) {
  return kernels::LaunchAttentionTiledF32(out, q, k, v, B, T, NH, NKV, HD, window, stream);
}
cudaError_t LaunchFastAttention(bf16* out, const bf16* q, const bf16* k, const bf16* v, int B, int T, int NH,
                                int NKV, int HD, int window, cudaStream_t stream) {
  return kernels::LaunchAttentionTensorCore(out, nullptr, q, k, v, B, T, NH, NKV, HD, window, stream);
}

template <typename T>
absl::Status AttentionImpl(T* out, const T* q, const T* k, const T* v, int B, int T_, int NH, int NKV, int HD,
                           int window, bool simt, cudaStream_t stream) {
  SR_STATUS_RETURN_IF_ERROR(CheckAttention(out, q, k, v, B, T_, NH, NKV, HD));
  if (!simt && FastAttentionOk(out, q, k, v, NH, NKV, HD)) {
    SR_CUDA_RETURN_IF_ERROR(LaunchFastAttention(out, q, k, v, B, T_, NH, NKV, HD, window, stream));
  } else {
    SR_CUDA_RETURN_IF_ERROR(
        kernels::LaunchAttentionSimt<T>(out, nullptr, q, k, v, B, T_, NH, NKV, HD, window, stream));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status attention_forward(float* out, const float* q, const float* k, const float* v, int B,
                               int T, int NH, int NKV, int HD, int window, cudaStream_t stream) {
  return AttentionImpl(out, q, k, v, B, T, NH, NKV, HD, window, /*simt=*/false, stream);
}
absl::Status attention_forward_simt(float* out, const float* q, const float* k, const float* v, int B,
                                    int T, int NH, int NKV, int HD, int window, cudaStream_t stream) {
  return AttentionImpl(out, q, k, v, B, T, NH, NKV, HD, window, /*simt=*/true, stream);
}
absl::Status attention_forward(bf16* out, const bf16* q, const bf16* k, const bf16* v, int B,
                               int T, int NH, int NKV, int HD, int window, cudaStream_t stream) {
  return AttentionImpl(out, q, k, v, B, T, NH, NKV, HD, window, /*simt=*/false, stream);
}
absl::Status attention_forward_simt(bf16* out, const bf16* q, const bf16* k, const bf16* v, int B,
                                    int T, int NH, int NKV, int HD, int window,
                                    cudaStream_t stream) {
  return AttentionImpl(out, q, k, v, B, T, NH, NKV, HD, window, /*simt=*/true, stream);
}

}  // namespace shrinkray
