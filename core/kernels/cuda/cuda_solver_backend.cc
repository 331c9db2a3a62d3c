// The GPU SolverBackend (core/pipeline/solver_backend.h): GPTQ and SparseGPT
// of the layerwise pipeline solved by GptqCuda / SparseGptCuda on one stream
// of its device (cuda:N), host in and host out. What the GPU solvers do not
// support they answer Unimplemented, and ApplyStage solves that matrix on the
// CPU instead (GPTQ after a pruning stage: keep mask; SparseGPT with joint
// quantization).
#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/gptq_cuda.h"
#include "core/kernels/cuda/output_error_cuda.h"
#include "core/kernels/cuda/sparsegpt_cuda.h"
#include "core/pipeline/solver_backend.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

class CudaSolverBackend final : public SolverBackend {
 public:
  CudaSolverBackend(int device, cudaStream_t stream) : device_(device), stream_(stream) {}
  ~CudaSolverBackend() override {
    CudaDeviceGuard guard(device_);
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "cuda"; }

  absl::StatusOr<GptqResult> Gptq(absl::Span<const float> w, int rows, int cols, absl::Span<const float> h,
                                  const GptqOptions& options) override {
    if (!options.keep_mask.empty()) return absl::UnimplementedError("GPTQ with a keep mask on the GPU");
    SR_RETURN_IF_ERROR(UseDevice());
    return GptqQuantizeCuda(w, rows, cols, h, options, stream_);
  }

  absl::StatusOr<double> OutputError(absl::Span<const float> w, absl::Span<const float> q, int rows, int cols,
                                     absl::Span<const float> h) override {
    SR_RETURN_IF_ERROR(UseDevice());
    SR_ASSIGN_OR_RETURN(DeviceBuffer<float> dw, DeviceBuffer<float>::FromHost(w, stream_));
    SR_ASSIGN_OR_RETURN(DeviceBuffer<float> dq, DeviceBuffer<float>::FromHost(q, stream_));
    SR_ASSIGN_OR_RETURN(DeviceBuffer<float> dh, DeviceBuffer<float>::FromHost(h, stream_));
    return relative_output_error(dw.data(), dq.data(), rows, cols, dh.data(), stream_);
  }

  absl::StatusOr<SparseGptResult> SparseGpt(absl::Span<const float> w, int rows, int cols, absl::Span<const float> h,
                                            const SparseGptOptions& options) override {
    if (options.bits > 0) return absl::UnimplementedError("SparseGPT with joint quantization on the GPU");
    SR_RETURN_IF_ERROR(UseDevice());
    return SparseGptPruneCuda(w, rows, cols, h, options, stream_);
  }

 private:
  // The pipeline may run on a thread whose current device differs.
  absl::Status UseDevice() {
    SR_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    return absl::OkStatus();
  }

  int device_;
  cudaStream_t stream_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<SolverBackend>> MakeCudaSolverBackend(int device) {
  SR_RETURN_IF_ERROR(UseCudaDevice(device));
  cudaStream_t stream = nullptr;
  SR_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return std::unique_ptr<SolverBackend>(new CudaSolverBackend(device, stream));
}

}  // namespace shrinkray
