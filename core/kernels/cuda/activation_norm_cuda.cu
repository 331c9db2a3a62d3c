#include "core/kernels/cuda/activation_norm_cuda_launch.h"

namespace shrinkray::kernels {
namespace {

constexpr int kThreads = 256;

// float or bf16 x: each value widened exactly to double.
__device__ __forceinline__ double Widen(float v) { return v; }
__device__ __forceinline__ double Widen(__nv_bfloat16 v) { return __bfloat162float(v); }

// One thread per (column, chunk): consecutive threads read consecutive
// columns of a row (coalesced).

template <typename T>
__global__ void ColumnSquaresKernel(double* partial, const T* x, long rows, int cols) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const long chunk = blockIdx.y;
  if (j >= cols) return;
  const long begin = chunk * kActNormChunkRows;
  const long end = begin + kActNormChunkRows < rows ? begin + kActNormChunkRows : rows;
  double acc = 0.0;
  for (long r = begin; r < end; ++r) {
    const double v = Widen(x[r * cols + j]);
    acc += v * v;
  }
  partial[chunk * cols + j] = acc;
}

__global__ void ScalerUpdateKernel(float* scaler, const double* partial, long chunks, int cols,
                                   float shrink, double n) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  double sum = 0.0;
  for (long c = 0; c < chunks; ++c) sum += partial[c * cols + j];
  scaler[j] = scaler[j] * shrink + static_cast<float>(sum / n);
}

template <typename T>
cudaError_t Launch(float* scaler, int cols, const T* x, long rows, float shrink, double n, double* partial,
                   cudaStream_t stream) {
  const long chunks = (rows + kActNormChunkRows - 1) / kActNormChunkRows;
  const unsigned col_blocks = static_cast<unsigned>((cols + kThreads - 1) / kThreads);
  if (chunks > 0) {
    ColumnSquaresKernel<<<dim3(col_blocks, static_cast<unsigned>(chunks)), kThreads, 0, stream>>>(
        partial, x, rows, cols);
  }
  ScalerUpdateKernel<<<col_blocks, kThreads, 0, stream>>>(scaler, partial, chunks, cols, shrink, n);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchActivationNorm(float* scaler, int cols, const float* x, long rows, float shrink,
                                 double n, double* partial, cudaStream_t stream) {
  return Launch(scaler, cols, x, rows, shrink, n, partial, stream);
}

cudaError_t LaunchActivationNorm(float* scaler, int cols, const __nv_bfloat16* x, long rows, float shrink,
                                 double n, double* partial, cudaStream_t stream) {
  return Launch(scaler, cols, x, rows, shrink, n, partial, stream);
}

}  // namespace shrinkray::kernels
