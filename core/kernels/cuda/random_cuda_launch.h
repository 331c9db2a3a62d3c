// Internal: raw launchers behind random_cuda.h (no abseil in .cu files).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace shrinkray::kernels {

template <typename T>
cudaError_t LaunchFillNormal(T* out, long n, float mean, float stddev, uint64_t seed,
                             cudaStream_t stream);
cudaError_t LaunchFillConstant(float* out, long n, float value, cudaStream_t stream);
cudaError_t LaunchFillTokens(int32_t* out, long n, int vocab, uint64_t seed, cudaStream_t stream);
cudaError_t LaunchConvertBf16(__nv_bfloat16* out, const float* inp, long n, cudaStream_t stream);
cudaError_t LaunchPackInt4(uint8_t* out, const uint8_t* codes, int rows, int cols,
                           cudaStream_t stream);

}  // namespace shrinkray::kernels
