#include "core/kernels/cuda/random_cuda.h"

#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/random_cuda_launch.h"

namespace shrinkray {
namespace {

absl::Status CheckFill(const void* out, long n, const char* what) {
  if (n < 0) return absl::InvalidArgumentError(std::string(what) + ": negative size");
  if (n > 0 && out == nullptr) return absl::InvalidArgumentError(std::string(what) + ": null out");
  return absl::OkStatus();
}

}  // namespace

absl::Status fill_random_normal(float* out, long n, float mean, float stddev, uint64_t seed,
                                cudaStream_t stream) {
  if (absl::Status st = CheckFill(out, n, "fill_random_normal"); !st.ok()) return st;
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchFillNormal<float>(out, n, mean, stddev, seed, stream));
  return absl::OkStatus();
}

absl::Status fill_random_normal(__nv_bfloat16* out, long n, float mean, float stddev,
                                uint64_t seed, cudaStream_t stream) {
  if (absl::Status st = CheckFill(out, n, "fill_random_normal"); !st.ok()) return st;
  SR_CUDA_RETURN_IF_ERROR(
      kernels::LaunchFillNormal<__nv_bfloat16>(out, n, mean, stddev, seed, stream));
  return absl::OkStatus();
}

absl::Status fill_constant(float* out, long n, float value, cudaStream_t stream) {
  if (absl::Status st = CheckFill(out, n, "fill_constant"); !st.ok()) return st;
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchFillConstant(out, n, value, stream));
  return absl::OkStatus();
}

absl::Status fill_random_tokens(int32_t* out, long n, int vocab, uint64_t seed,
                                cudaStream_t stream) {
  if (absl::Status st = CheckFill(out, n, "fill_random_tokens"); !st.ok()) return st;
  if (vocab <= 0) return absl::InvalidArgumentError("fill_random_tokens: vocab must be positive");
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchFillTokens(out, n, vocab, seed, stream));
  return absl::OkStatus();
}

absl::Status convert_to_bf16(__nv_bfloat16* out, const float* inp, long n, cudaStream_t stream) {
  if (absl::Status st = CheckFill(out, n, "convert_to_bf16"); !st.ok()) return st;
  if (n > 0 && inp == nullptr) return absl::InvalidArgumentError("convert_to_bf16: null inp");
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchConvertBf16(out, inp, n, stream));
  return absl::OkStatus();
}

absl::Status pack_int4(uint8_t* out, const uint8_t* codes, int rows, int cols,
                       cudaStream_t stream) {
  if (rows < 0 || cols < 0 || cols % 2 != 0) {
    return absl::InvalidArgumentError("pack_int4: rows/cols must be >= 0 and cols even");
  }
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchPackInt4(out, codes, rows, cols, stream));
  return absl::OkStatus();
}

}  // namespace shrinkray
