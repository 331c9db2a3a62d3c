// The GPU SolverBackend (core/pipeline/solver_backend.h): GPTQ and SparseGPT
// of the layerwise pipeline solved by GptqCuda / SparseGptCuda on one stream
// of its device (cuda:N), host in and host out. What the GPU solvers do not
// support they answer Unimplemented, and ApplyStage solves that matrix on the
// CPU instead (float64 Hessians).
//
// The solvers (their cuBLAS/cuSOLVER handles and workspaces) live as long as
// the backend. While the pipeline holds a group's Hessian (HoldHessian) it is
// copied to the device once, on first use (or, when the GPU executor of the
// same device accumulated it, read where it is: no copy at all, and the host
// never holds it), and each solver prepares it (dead
// columns, permutation, damping, the inverse factor) once per set of options
// that the preparation reads: q, k and v then share one copy and one
// preparation, and the matrix errors read the same copy. The results are those
// of a preparation per matrix (the same kernels on the same input).
#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/algo/validation.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/gptq_cuda.h"
#include "core/kernels/cuda/output_error_cuda.h"
#include "core/kernels/cuda/sparsegpt_cuda.h"
#include "core/pipeline/solver_backend.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

// What a preparation of the held Hessian was made with: it serves a solve
// whose key is equal (the same hold, and the options the preparation reads).
struct PreparedFor {
  long hold = 0;  // 0: nothing reusable
  bool act_order = false;
  double damp = 0.0;
  double damp_auto_increment = 0.0;
  InverseFactorMethod inverse_factor = InverseFactorMethod::kCholeskyInverseChain;
  bool operator==(const PreparedFor&) const = default;
};

class CudaSolverBackend final : public SolverBackend {
 public:
  CudaSolverBackend(int device, cudaStream_t stream) : device_(device), stream_(stream) {}
  ~CudaSolverBackend() override {
    CudaDeviceGuard guard(device_);
    gptq_.reset();
    sparsegpt_.reset();
    held_device_ = {};
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "cuda"; }

  void HoldHessian(absl::Span<const float> h, const DeviceHessian* device) override {
    held_ = h;
    held_device_copy_ = device != nullptr && ReadsDevice(*device) ? device : nullptr;
    held_on_device_ = false;
    ++hold_;
  }
  void ReleaseHessian() override {
    held_ = {};
    held_device_copy_ = nullptr;
    held_on_device_ = false;
    ++hold_;  // nothing prepared under the last hold serves again
  }
  bool ReadsDevice(const DeviceHessian& h) const override { return h.device() == device_; }

  void HoldWeight(absl::Span<const float> w, const DeviceMatrix& device) override {
    held_w_ = device.device == device_ ? w : absl::Span<const float>();
    held_w_device_ = device.device == device_ ? device.data : nullptr;
  }
  void ReleaseWeight() override {
    held_w_ = {};
    held_w_device_ = nullptr;
  }

  absl::StatusOr<GptqResult> Gptq(absl::Span<const float> w, int rows, int cols, absl::Span<const float> h,
                                  const GptqOptions& options) override {
    SR_RETURN_IF_ERROR(UseDevice());
    if (!Held(h)) return GptqQuantizeCuda(w, rows, cols, h, options, stream_);
    if (rows <= 0 || cols <= 0 || w.size() != static_cast<size_t>(rows) * cols ||
        HeldCount() != static_cast<size_t>(cols) * cols) {
      return absl::InvalidArgumentError("GptqQuantizeCuda: shape mismatch");
    }
    if (gptq_ == nullptr) {
      SR_ASSIGN_OR_RETURN(gptq_, GptqCuda::Create(stream_));
      gptq_->set_timing(false);
    }
    const PreparedFor key{hold_, options.act_order, options.damp, options.damp_auto_increment,
                               options.inverse_factor};
    if (!(gptq_prepared_ == key)) {
      gptq_prepared_ = {};
      SR_ASSIGN_OR_RETURN(const float* dh, HeldOnDevice());
      SR_RETURN_IF_ERROR(gptq_->PrepareHessian(dh, cols, options));
      gptq_prepared_ = key;
    }
    // The error (when asked) against the held Hessian as it is, undamped.
    SR_ASSIGN_OR_RETURN(const float* dh, HeldOnDevice());
    const float* dw = WeightOnDevice(w);
    absl::StatusOr<GptqResult> r = GptqQuantizePrepared(*gptq_, w, rows, options, stream_, dh, dw);
    if (r.ok() && dw != nullptr) CountWeightReadOnDevice();
    return r;
  }

  absl::StatusOr<SparseGptResult> SparseGpt(absl::Span<const float> w, int rows, int cols, absl::Span<const float> h,
                                            const SparseGptOptions& options) override {
    SR_RETURN_IF_ERROR(UseDevice());
    if (!Held(h)) return SparseGptPruneCuda(w, rows, cols, h, options, stream_);
    // The checks SparseGptPruneCuda makes, in its order; the Hessian's
    // (finiteness included) once per hold: on the host when it holds the
    // values, else its shape here and its diagonal in the preparation.
    SR_RETURN_IF_ERROR(algo_internal::CheckMatrix("w", w, rows, cols));
    if (HeldCount() != static_cast<size_t>(cols) * cols) {
      return absl::InvalidArgumentError(absl::StrCat("h: shape mismatch, expected [", cols, ", ", cols, "] = ",
                                                     static_cast<size_t>(cols) * cols, " values, got ", HeldCount()));
    }
    if (sparsegpt_ == nullptr) {
      SR_ASSIGN_OR_RETURN(sparsegpt_, SparseGptCuda::Create(stream_));
      sparsegpt_->set_timing(false);
    }
    const PreparedFor key{hold_, false, options.damp, options.damp_auto_increment, options.inverse_factor};
    if (!(sparsegpt_prepared_ == key)) {
      sparsegpt_prepared_ = {};
      if (!h.empty()) SR_RETURN_IF_ERROR(algo_internal::CheckMatrix("h", h, cols, cols));
      SR_ASSIGN_OR_RETURN(const float* dh, HeldOnDevice());
      SR_RETURN_IF_ERROR(sparsegpt_->PrepareHessian(dh, cols, options));
      sparsegpt_prepared_ = key;
    }
    SR_ASSIGN_OR_RETURN(const float* dh, HeldOnDevice());
    const float* dw = WeightOnDevice(w);
    absl::StatusOr<SparseGptResult> r = SparseGptPrunePrepared(*sparsegpt_, w, rows, options, stream_, dh, dw);
    if (r.ok() && dw != nullptr) CountWeightReadOnDevice();
    return r;
  }

  absl::StatusOr<double> OutputError(absl::Span<const float> w, absl::Span<const float> q, int rows, int cols,
                                     absl::Span<const float> h) override {
    absl::StatusOr<double> e = OutputErrorOnDevice(w, q, rows, cols, h);
    // Out of memory: the caller computes it on the CPU and the job goes on,
    // so the failed allocation must not stay CUDA's last error (the next
    // launch on this thread would report it as its own).
    if (absl::IsResourceExhausted(e.status())) (void)cudaGetLastError();
    if (e.ok() && WeightOnDevice(w) != nullptr) CountWeightReadOnDevice();
    return e;
  }

 private:
  absl::StatusOr<double> OutputErrorOnDevice(absl::Span<const float> w, absl::Span<const float> q, int rows, int cols,
                                             absl::Span<const float> h) {
    SR_RETURN_IF_ERROR(UseDevice());
    const float* w_held = WeightOnDevice(w);
    DeviceBuffer<float> dw;
    if (w_held == nullptr) {
      SR_ASSIGN_OR_RETURN(dw, DeviceBuffer<float>::FromHost(w, stream_));
    }
    const float* w_on_device = w_held != nullptr ? w_held : dw.data();
    SR_ASSIGN_OR_RETURN(DeviceBuffer<float> dq, DeviceBuffer<float>::FromHost(q, stream_));
    if (Held(h)) {
      if (HeldCount() != static_cast<size_t>(cols) * cols) {
        return absl::InvalidArgumentError("OutputError: the held Hessian is not [cols, cols]");
      }
      SR_ASSIGN_OR_RETURN(const float* dh, HeldOnDevice());
      return relative_output_error(w_on_device, dq.data(), rows, cols, dh, stream_);
    }
    SR_ASSIGN_OR_RETURN(DeviceBuffer<float> dh, DeviceBuffer<float>::FromHost(h, stream_));
    return relative_output_error(w_on_device, dq.data(), rows, cols, dh.data(), stream_);
  }

  // Where W's values already are on this device (the held weight, when `w`
  // is its span); else null: the solver copies `w` up. Counted by the
  // callers once the read served (a failed error falls back to the CPU).
  const float* WeightOnDevice(absl::Span<const float> w) const {
    if (held_w_device_ == nullptr || w.data() != held_w_.data() || w.size() != held_w_.size()) return nullptr;
    return held_w_device_;
  }

  // The pipeline may run on a thread whose current device differs.
  absl::Status UseDevice() {
    SR_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    return absl::OkStatus();
  }

  // `h` is the held Hessian (the same span, not merely equal values; the
  // empty span of a hold that only the device copy backs).
  bool Held(absl::Span<const float> h) const {
    const bool holding = !held_.empty() || held_device_copy_ != nullptr;
    return holding && h.data() == held_.data() && h.size() == held_.size();
  }
  // How many values the held Hessian has.
  size_t HeldCount() const {
    if (held_device_copy_ != nullptr) return static_cast<size_t>(held_device_copy_->dim()) * held_device_copy_->dim();
    return held_.size();
  }

  // The held Hessian on the device: the executor's copy where there is one,
  // else copied from the host on its first use in this hold.
  absl::StatusOr<const float*> HeldOnDevice() {
    if (held_device_copy_ != nullptr) return held_device_copy_->data();
    if (!held_on_device_) {
      if (held_device_.size() < held_.size()) {
        held_device_ = {};
        SR_ASSIGN_OR_RETURN(held_device_, DeviceBuffer<float>::Create(held_.size()));
      }
      SR_RETURN_IF_ERROR(held_device_.CopyFromHost(held_, stream_));
      held_on_device_ = true;
    }
    return static_cast<const float*>(held_device_.data());
  }

  int device_;
  cudaStream_t stream_;
  std::unique_ptr<GptqCuda> gptq_;
  std::unique_ptr<SparseGptCuda> sparsegpt_;
  absl::Span<const float> held_;  // the host values (empty when only the device copy backs the hold)
  const DeviceHessian* held_device_copy_ = nullptr;  // the same values on this device, or null
  long hold_ = 1;                 // which hold (or gap between holds) this is
  bool held_on_device_ = false;
  DeviceBuffer<float> held_device_;  // its device copy (grown, reused)
  absl::Span<const float> held_w_;  // HoldWeight's host span, and its values on this device
  const float* held_w_device_ = nullptr;
  PreparedFor gptq_prepared_, sparsegpt_prepared_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<SolverBackend>> MakeCudaSolverBackend(int device) {
  SR_RETURN_IF_ERROR(UseCudaDevice(device));
  cudaStream_t stream = nullptr;
  SR_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return std::unique_ptr<SolverBackend>(new CudaSolverBackend(device, stream));
}

}  // namespace shrinkray
