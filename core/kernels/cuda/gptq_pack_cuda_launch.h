// Internal: raw launchers behind gptq_pack_cuda.h (no abseil in .cu files).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace shrinkray::kernels {

cudaError_t LaunchPackGptqQweight(int32_t* qweight, const uint8_t* codes, int rows, int cols, int bits,
                                  cudaStream_t stream);
cudaError_t LaunchPackGptqQzeros(int32_t* qzeros, const int32_t* zeros, int groups, int rows, int bits,
                                 bool v1, cudaStream_t stream);
cudaError_t LaunchConvertFp16(__half* out, const float* inp, long n, cudaStream_t stream);

}  // namespace shrinkray::kernels
