#include "core/kernels/cuda/ops.h"

#include "absl/strings/str_format.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/ops_launch.h"

namespace shrinkray {
namespace {

absl::Status CheckRmsnormArgs(const void* out, const void* inp, const float* weight, int N, int C,
                              float eps) {
  if (N < 0 || C < 0) {
    return absl::InvalidArgumentError(absl::StrFormat("rmsnorm_forward: bad shape N=%d C=%d", N, C));
  }
  if (!(eps >= 0.0f)) {  // also rejects NaN
    return absl::InvalidArgumentError(absl::StrFormat("rmsnorm_forward: bad eps %g", eps));
  }
  if (N > 0 && C > 0 && (out == nullptr || inp == nullptr || weight == nullptr)) {
    return absl::InvalidArgumentError("rmsnorm_forward: null out, inp or weight");
  }
  return absl::OkStatus();
}

absl::Status CheckSwigluArgs(const void* out, const void* gate, const void* up, long N) {
  if (N < 0) return absl::InvalidArgumentError(absl::StrFormat("swiglu_forward: bad N=%d", N));
  if (N > 0 && (out == nullptr || gate == nullptr || up == nullptr)) {
    return absl::InvalidArgumentError("swiglu_forward: null out, gate or up");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight,
                             int N, int C, float eps, cudaStream_t stream) {
  if (absl::Status st = CheckRmsnormArgs(out, inp, weight, N, C, eps); !st.ok()) return st;
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchRmsnorm(out, rstd, inp, weight, N, C, eps, stream));
  return absl::OkStatus();
}

absl::Status rmsnorm_forward(__nv_bfloat16* out, float* rstd, const __nv_bfloat16* inp,
                             const float* weight, int N, int C, float eps, cudaStream_t stream) {
  if (absl::Status st = CheckRmsnormArgs(out, inp, weight, N, C, eps); !st.ok()) return st;
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchRmsnorm(out, rstd, inp, weight, N, C, eps, stream));
  return absl::OkStatus();
}

absl::Status swiglu_forward(float* out, const float* gate, const float* up, long N,
                            cudaStream_t stream) {
  if (absl::Status st = CheckSwigluArgs(out, gate, up, N); !st.ok()) return st;
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchSwiglu(out, gate, up, N, stream));
  return absl::OkStatus();
}

absl::Status swiglu_forward(__nv_bfloat16* out, const __nv_bfloat16* gate,
                            const __nv_bfloat16* up, long N, cudaStream_t stream) {
  if (absl::Status st = CheckSwigluArgs(out, gate, up, N); !st.ok()) return st;
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchSwiglu(out, gate, up, N, stream));
  return absl::OkStatus();
}

}  // namespace shrinkray
