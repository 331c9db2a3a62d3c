// Host side of the CUDA training ops (train_ops.h): argument checks, the kernel
// launches (train_ops_launch.h) and the cuBLAS GEMMs of matmul_backward.
// attention_forward-with-lse and attention_backward live elsewhere.
#include "core/kernels/cuda/train_ops.h"

#include <library_types.h>

#include <cmath>
#include <string>

#include "absl/strings/str_format.h"
#include "core/kernels/cuda/blas.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/ops_launch.h"
#include "core/kernels/cuda/train_ops_launch.h"

namespace shrinkray {
namespace {

using bf16 = __nv_bfloat16;

absl::Status Invalid(const char* fn, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrFormat("%s: %s", fn, what));
}

}  // namespace

absl::Status embedding_backward(float* dwte, const bf16* dout, const int32_t* tokens, int N,
                                int V, int C, cudaStream_t stream) {
  constexpr const char* kFn = "embedding_backward";
  if (N < 0 || V < 0 || C < 0) {
    return Invalid(kFn, absl::StrFormat("bad shape N=%d V=%d C=%d", N, V, C));
  }
  if (static_cast<long>(N) * C > 0) {
    if (dwte == nullptr) return Invalid(kFn, "null dwte");
    if (dout == nullptr) return Invalid(kFn, "null dout");
    if (tokens == nullptr) return Invalid(kFn, "null tokens");
  }
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchEmbeddingBackward(dwte, dout, tokens, N, V, C, stream));
  return absl::OkStatus();
}

absl::Status rmsnorm_backward(bf16* dinp, float* dweight, const bf16* dout, const bf16* inp,
                              const float* weight, const float* rstd, int N, int C,
                              cudaStream_t stream) {
  constexpr const char* kFn = "rmsnorm_backward";
  if (N < 0 || C < 0) return Invalid(kFn, absl::StrFormat("bad shape N=%d C=%d", N, C));
  if (static_cast<long>(N) * C > 0) {
    if (dout == nullptr) return Invalid(kFn, "null dout");
    if (inp == nullptr) return Invalid(kFn, "null inp");
    if (rstd == nullptr) return Invalid(kFn, "null rstd");
    if (dinp != nullptr && weight == nullptr) return Invalid(kFn, "null weight");
  }
  if (dinp != nullptr && (static_cast<const void*>(dinp) == dout ||
                          static_cast<const void*>(dinp) == inp)) {
    return Invalid(kFn, "dinp aliases dout or inp");
  }
  SR_CUDA_RETURN_IF_ERROR(
      kernels::LaunchRmsnormBackward(dinp, dweight, dout, inp, weight, rstd, N, C, stream));
  return absl::OkStatus();
}

absl::Status rope_backward(bf16* dinp, const bf16* dout, const float* cos, const float* sin, int B,
                           int T, int NH, int HD, cudaStream_t stream) {
  constexpr const char* kFn = "rope_backward";
  if (B < 0 || T < 0 || NH < 0 || HD < 0 || HD % 2 != 0) {
    return Invalid(kFn, absl::StrFormat("bad shape B=%d T=%d NH=%d HD=%d", B, T, NH, HD));
  }
  if (static_cast<long>(B) * T * NH * HD > 0) {
    if (dinp == nullptr) return Invalid(kFn, "null dinp");
    if (dout == nullptr) return Invalid(kFn, "null dout");
    if (cos == nullptr) return Invalid(kFn, "null cos");
    if (sin == nullptr) return Invalid(kFn, "null sin");
  }
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchRope<__nv_bfloat16>(dinp, dout, cos, sin, B, T, NH, HD, /*inverse=*/true, stream));
  return absl::OkStatus();
}

absl::Status swiglu_backward(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate,
                             const bf16* up, long N, cudaStream_t stream) {
  constexpr const char* kFn = "swiglu_backward";
  if (N < 0) return Invalid(kFn, absl::StrFormat("bad N=%d", N));
  if (N > 0) {
    if (dgate == nullptr) return Invalid(kFn, "null dgate");
    if (dup == nullptr) return Invalid(kFn, "null dup");
    if (dout == nullptr) return Invalid(kFn, "null dout");
    if (gate == nullptr) return Invalid(kFn, "null gate");
    if (up == nullptr) return Invalid(kFn, "null up");
    if (dgate == dup) return Invalid(kFn, "dgate aliases dup");
    if (static_cast<const void*>(dgate) == up || static_cast<const void*>(dup) == gate) {
      return Invalid(kFn, "dgate aliases up or dup aliases gate");
    }
  }
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchSwigluBackward(dgate, dup, dout, gate, up, N, stream));
  return absl::OkStatus();
}

absl::Status matmul_backward(bf16* dinp, float* dweight, float* dbias, const bf16* dout,
                             const bf16* inp, const bf16* weight, int N, int C, int OC,
                             float beta_dinp, cudaStream_t stream) {
  constexpr const char* kFn = "matmul_backward";
  if (N < 0 || C < 0 || OC < 0) {
    return Invalid(kFn, absl::StrFormat("bad shape N=%d C=%d OC=%d", N, C, OC));
  }
  if (!std::isfinite(beta_dinp)) return Invalid(kFn, absl::StrFormat("bad beta_dinp %g", beta_dinp));
  const bool any_sum = static_cast<long>(N) * OC > 0;  // dout has elements
  if (any_sum && dout == nullptr) return Invalid(kFn, "null dout");
  if (dinp != nullptr && any_sum && C > 0 && weight == nullptr) return Invalid(kFn, "null weight");
  if (dweight != nullptr && any_sum && C > 0 && inp == nullptr) return Invalid(kFn, "null inp");
  if (dinp != nullptr &&
      (static_cast<const void*>(dinp) == dout || static_cast<const void*>(dinp) == weight)) {
    return Invalid(kFn, "dinp aliases dout or weight");
  }

  const float one = 1.0f;
  // Row-major X[r, c] is the column-major X^T; see ops_llama.cc's GemmImpl.
  // dweight and dbias first: they read inp, which dinp may overwrite.
  if (dweight != nullptr && N > 0 && C > 0 && OC > 0) {
    // dweight^T[C, OC] (col-major, ld C) += inp^T[C, N] (col-major view of
    // inp, ld C) x dout[N, OC] (transposed col-major view of dout, ld OC).
    SR_CUDA_ASSIGN_OR_RETURN(cublasHandle_t handle, CublasHandleFor(stream));
    SR_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, &one, inp,
                                           CUDA_R_16BF, C, dout, CUDA_R_16BF, OC, &one, dweight,
                                           CUDA_R_32F, C, CUBLAS_COMPUTE_32F,
                                           CUBLAS_GEMM_DEFAULT));
  }
  if (dbias != nullptr) {
    SR_CUDA_RETURN_IF_ERROR(kernels::LaunchBiasBackward(dbias, dout, N, OC, stream));
  }
  if (dinp != nullptr && N > 0 && C > 0) {
    if (OC == 0) {  // an empty sum: dinp = beta * dinp (cuBLAS rejects k = 0 here)
      if (beta_dinp != 1.0f) {
        SR_CUDA_RETURN_IF_ERROR(
            kernels::LaunchScaleBf16(dinp, static_cast<long>(N) * C, beta_dinp, stream));
      }
    } else {
      // dinp^T[C, N] (col-major, ld C) = weight^T[C, OC] (col-major view of
      // weight, ld C) x dout^T[OC, N] (col-major view of dout, ld OC)
      // + beta dinp^T, in the fp32 epilogue, rounded once to bf16.
      SR_CUDA_ASSIGN_OR_RETURN(cublasHandle_t handle, CublasHandleFor(stream));
      SR_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, &one,
                                             weight, CUDA_R_16BF, C, dout, CUDA_R_16BF, OC,
                                             &beta_dinp, dinp, CUDA_R_16BF, C, CUBLAS_COMPUTE_32F,
                                             CUBLAS_GEMM_DEFAULT));
    }
  }
  return absl::OkStatus();
}

absl::Status distill_loss_backward(bf16* logits, float* kl_rows, float* ce_rows,
                                   const bf16* teacher, const int32_t* targets, int N, int V,
                                   float alpha, float temperature, float inv_rows,
                                   float inv_labelled, cudaStream_t stream) {
  constexpr const char* kFn = "distill_loss_backward";
  if (N < 0 || V < 0) return Invalid(kFn, absl::StrFormat("bad shape N=%d V=%d", N, V));
  if (N > 0 && V == 0) return Invalid(kFn, "V=0: a softmax needs at least one class");
  if (!(alpha >= 0.0f && alpha <= 1.0f)) {
    return Invalid(kFn, absl::StrFormat("alpha = %g is outside [0, 1]", alpha));
  }
  if (!(temperature > 0.0f) || !std::isfinite(temperature)) {
    return Invalid(kFn, absl::StrFormat("temperature = %g must be > 0", temperature));
  }
  if (!(inv_rows >= 0.0f) || !std::isfinite(inv_rows)) {
    return Invalid(kFn, absl::StrFormat("inv_rows = %g must be finite and >= 0", inv_rows));
  }
  if (!(inv_labelled >= 0.0f) || !std::isfinite(inv_labelled)) {
    return Invalid(kFn,
                   absl::StrFormat("inv_labelled = %g must be finite and >= 0", inv_labelled));
  }
  if (teacher == nullptr && alpha > 0.0f) {
    return Invalid(kFn, absl::StrFormat("null teacher with alpha = %g > 0", alpha));
  }
  if (N > 0) {
    if (logits == nullptr) return Invalid(kFn, "null logits");
    if (targets == nullptr) return Invalid(kFn, "null targets");
  }
  if (teacher != nullptr && static_cast<const void*>(teacher) == logits) {
    return Invalid(kFn, "teacher aliases logits");
  }
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchDistillLossBackward(logits, kl_rows, ce_rows, teacher,
                                                             targets, N, V, alpha, temperature,
                                                             inv_rows, inv_labelled, stream));
  return absl::OkStatus();
}

absl::Status global_norm_squared(float* out, const float* grads, long n, cudaStream_t stream) {
  constexpr const char* kFn = "global_norm_squared";
  if (n < 0) return Invalid(kFn, absl::StrFormat("bad n=%d", n));
  if (out == nullptr) return Invalid(kFn, "null out");
  if (n > 0 && grads == nullptr) return Invalid(kFn, "null grads");
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchGlobalNormSquared(out, grads, n, stream));
  return absl::OkStatus();
}

absl::Status adamw_update(float* params, bf16* params_bf16, const float* grads, float* m, float* v,
                          long n, float lr, float beta1, float beta2, float eps,
                          float weight_decay, int step, float grad_scale,
                          const float* grad_scale_dev, cudaStream_t stream) {
  constexpr const char* kFn = "adamw_update";
  if (n < 0) return Invalid(kFn, absl::StrFormat("bad n=%d", n));
  if (n > 0) {
    if (params == nullptr) return Invalid(kFn, "null params");
    if (grads == nullptr) return Invalid(kFn, "null grads");
    if (m == nullptr) return Invalid(kFn, "null m");
    if (v == nullptr) return Invalid(kFn, "null v");
  }
  if (!(lr >= 0.0f) || !std::isfinite(lr)) {
    return Invalid(kFn, absl::StrFormat("lr = %g must be finite and >= 0", lr));
  }
  if (!(beta1 >= 0.0f && beta1 < 1.0f)) {
    return Invalid(kFn, absl::StrFormat("beta1 = %g is outside [0, 1)", beta1));
  }
  if (!(beta2 >= 0.0f && beta2 < 1.0f)) {
    return Invalid(kFn, absl::StrFormat("beta2 = %g is outside [0, 1)", beta2));
  }
  if (!(eps > 0.0f) || !std::isfinite(eps)) {
    return Invalid(kFn, absl::StrFormat("eps = %g must be > 0", eps));
  }
  if (!(weight_decay >= 0.0f) || !std::isfinite(weight_decay)) {
    return Invalid(kFn, absl::StrFormat("weight_decay = %g must be >= 0", weight_decay));
  }
  if (step < 1) return Invalid(kFn, absl::StrFormat("step = %d must be >= 1 (1-based)", step));
  if (grad_scale_dev == nullptr && !std::isfinite(grad_scale)) {
    return Invalid(kFn, absl::StrFormat("grad_scale = %g is not finite", grad_scale));
  }
  // The step constants in double, rounded once (train::AdamW::Update's values).
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
  const double decay = 1.0 - static_cast<double>(lr) * static_cast<double>(weight_decay);
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchAdamW(
      params, params_bf16, grads, m, v, n, lr, beta1, beta2, eps, static_cast<float>(decay),
      static_cast<float>(bc1), static_cast<float>(bc2), grad_scale, grad_scale_dev, stream));
  return absl::OkStatus();
}

absl::Status clip_scale(float* scale, const float* norm_squared, float max_norm,
                        cudaStream_t stream) {
  constexpr const char* kFn = "clip_scale";
  if (scale == nullptr) return Invalid(kFn, "null scale");
  if (norm_squared == nullptr) return Invalid(kFn, "null norm_squared");
  if (std::isnan(max_norm)) return Invalid(kFn, "max_norm is NaN");
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchClipScale(scale, norm_squared, max_norm, stream));
  return absl::OkStatus();
}

}  // namespace shrinkray
