#include "core/kernels/cuda/gptq_pack_cuda.h"

#include "absl/strings/str_cat.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/gptq_pack_cuda_launch.h"

namespace shrinkray {
namespace {

absl::Status CheckPackArgs(const char* fn, const void* out, const void* in, int outer, int packed_dim,
                           int bits, const char* packed_name) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(fn, ": bits ", bits, " cannot be packed in gptq (2, 3, 4 or 8)"));
  }
  if (outer < 0 || packed_dim < 0) {
    return absl::InvalidArgumentError(absl::StrCat(fn, ": negative shape ", outer, " x ", packed_dim));
  }
  if (static_cast<long>(packed_dim) * bits % 32 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(fn, ": ", packed_name, " ", packed_dim, " x ", bits,
                                                   " bits is not a multiple of 32"));
  }
  if (outer > 0 && packed_dim > 0 && (out == nullptr || in == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(fn, ": null input or output"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status pack_gptq_qweight(int32_t* qweight, const uint8_t* codes, int rows, int cols, int bits,
                               cudaStream_t stream) {
  if (absl::Status st = CheckPackArgs("pack_gptq_qweight", qweight, codes, rows, cols, bits, "in_features");
      !st.ok()) {
    return st;
  }
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchPackGptqQweight(qweight, codes, rows, cols, bits, stream));
  return absl::OkStatus();
}

absl::Status pack_gptq_qzeros(int32_t* qzeros, const int32_t* zeros, int groups, int rows, int bits,
                              bool v1, cudaStream_t stream) {
  if (absl::Status st = CheckPackArgs("pack_gptq_qzeros", qzeros, zeros, groups, rows, bits, "out_features");
      !st.ok()) {
    return st;
  }
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchPackGptqQzeros(qzeros, zeros, groups, rows, bits, v1, stream));
  return absl::OkStatus();
}

absl::Status convert_to_fp16(__half* out, const float* inp, long n, cudaStream_t stream) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("convert_to_fp16: bad n ", n));
  if (n > 0 && (out == nullptr || inp == nullptr)) {
    return absl::InvalidArgumentError("convert_to_fp16: null out or inp");
  }
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchConvertFp16(out, inp, n, stream));
  return absl::OkStatus();
}

}  // namespace shrinkray
