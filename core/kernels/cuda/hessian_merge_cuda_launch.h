// Internal: raw launchers behind hessian_merge_cuda.cc (no abseil in .cu files).
#pragma once

#include <cuda_runtime_api.h>

namespace shrinkray::kernels {

// sums[HessianMergeRowStart(i) + j − i] = double(h[i·dim + j]) · n for j >= i
// (core/calib/hessian_merge_layout.h); the last entry (n) is not written.
cudaError_t LaunchPackHessianSums(double* sums, const float* h, int dim, double n, cudaStream_t stream);
// h[i·dim + j] = h[j·dim + i] = float(sums[HessianMergeRowStart(i) + j − i] / total) for j >= i.
cudaError_t LaunchUnpackHessianMean(float* h, const double* sums, int dim, double total, cudaStream_t stream);

}  // namespace shrinkray::kernels
