// GPTQ on the GPU, numerically the CPU solver (core/algo/gptq.{h,cc}) and the
// reference's fasterquant: same dead-column rule, damping, Hinv =
// chol(chol_inverse(chol(H)), upper) (in fp32, by cuSOLVER's potrf/potri/potrf
// or, options.inverse_factor, potrf and trtri of the index-reversed H:
// HessianInverseCuda),
// act_order, static or dynamic groups with the stale-outer-W refit, rint
// rounding, and the 128-column blocked sweep with the trailing update
// W[:, i2:] -= Err1 · Hinv[i1:i2, i2:] as one cuBLAS GEMM per block (fp32,
// CUBLAS_COMPUTE_32F unless allow_tf32).
//
// Differences from the CPU result come only from rounding (the factor's
// steps, cuSOLVER vs LAPACK, cuBLAS vs OpenBLAS): W entries differ in the
// last bits after the first trailing update, which flips a code where w/scale lies within that
// noise of a rounding boundary; a flipped code then moves the rest of its
// row's errors (see tests/cuda/gptq_cuda_test.cc for the measured bound).
//
// A keep mask (GPTQ after pruning) reads each pruned entry as 0, as the CPU
// does: it quantizes to the zero point, dequantizes to exactly 0 and feeds no
// error forward. Not supported here (Unimplemented): precision kFloat64,
// bits > 8.
//
// Use: one GptqCuda per stream. PrepareHessian once per Hessian (q/k/v share
// one, gate/up share one), then Quantize each weight that consumes it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/algo/gptq.h"
#include "core/algo/solve_report.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/hessian_inverse_cuda.h"

namespace shrinkray {

// Device outputs of GptqCuda::Quantize, caller-owned, original column order.
struct GptqCudaOutputs {
  uint8_t* codes = nullptr;             // [rows, cols], required
  float* scales = nullptr;              // [num_groups, rows], required
  int32_t* zeros = nullptr;             // [num_groups, rows], required
  int32_t* g_idx = nullptr;             // [cols], optional
  float* weight = nullptr;              // [rows, cols] dequantized fp32, optional
  __nv_bfloat16* weight_bf16 = nullptr;  // [rows, cols] dequantized bf16, optional
};

// Milliseconds spent per phase (CUDA events), accumulated until Reset.
struct GptqCudaTimes {
  double hinv_ms = 0.0;      // dead columns, permutation, damping, the inverse factor, check
  double prepare_ms = 0.0;   // per weight: grid fits, column gather
  double sweep_ms = 0.0;     // in-block column sweeps
  double trailing_ms = 0.0;  // trailing GEMMs
  void Reset() { *this = GptqCudaTimes(); }
};

class GptqCuda {
 public:
  // Handles and workspaces are bound to `stream` (the current device).
  static absl::StatusOr<std::unique_ptr<GptqCuda>> Create(cudaStream_t stream);
  ~GptqCuda();
  GptqCuda(const GptqCuda&) = delete;
  GptqCuda& operator=(const GptqCuda&) = delete;

  // Dead columns, act_order permutation (from options.act_order), damping
  // with GPTQModel-style increments, and the inverse factor of h (device
  // [cols, cols] fp32, not modified). Synchronises the stream (it needs the
  // diagonal and cuSOLVER's info on the host).
  absl::Status PrepareHessian(const float* h, int cols, const GptqOptions& options);

  // Quantizes w (device [rows, cols] fp32, not modified) against the prepared
  // Hessian; options must agree with PrepareHessian's on act_order and the
  // inverse factor. `keep`: the device copy of options.keep_mask ([rows,
  // cols], original column order), given exactly when the options have one.
  // Returns the report (loss, damping, dead columns); synchronises the stream.
  absl::StatusOr<SolveReport> Quantize(const float* w, int rows, const GptqOptions& options,
                                       const GptqCudaOutputs& out, const uint8_t* keep = nullptr);

  int cols() const { return cols_; }
  // The prepared permutation (perm[k] = original column processed k-th).
  const std::vector<int32_t>& perm() const { return hinv_->perm_host(); }
  static int NumGroups(int cols, const GptqOptions& options) {
    return options.group_size > 0 ? (cols - 1) / options.group_size + 1 : 1;  // no overflow
  }

  // Timing with CUDA events (default on); times() accumulates.
  void set_timing(bool on) { timing_ = on; }
  const GptqCudaTimes& times() const { return times_; }
  GptqCudaTimes& mutable_times() { return times_; }
  // Trailing GEMM in TF32 (CUBLAS_COMPUTE_32F_FAST_TF32): only on request.
  void set_allow_tf32(bool on) { allow_tf32_ = on; }

 private:
  explicit GptqCuda(cudaStream_t stream) : stream_(stream) {}
  absl::Status Reserve(int rows, int cols);

  cudaStream_t stream_;
  bool timing_ = true;
  bool allow_tf32_ = false;
  GptqCudaTimes times_;
  CudaEventPool events_;

  // Prepared Hessian (dead columns, permutation, inverse factor): shared
  // with SparseGptCuda.
  std::unique_ptr<HessianInverseCuda> hinv_;
  int cols_ = 0;

  // Workspaces (grown on demand).
  DeviceBuffer<float> wk_;      // permuted working W
  DeviceBuffer<float> err_;     // [rows, 128]
  DeviceBuffer<float> row_loss_;
};

// Convenience for tests and small tools: host in, host out, same result type
// as the CPU GptqQuantize.
absl::StatusOr<GptqResult> GptqQuantizeCuda(absl::Span<const float> w, int rows, int cols,
                                            absl::Span<const float> h, const GptqOptions& options,
                                            cudaStream_t stream = nullptr);

// The same from an already prepared GptqCuda (PrepareHessian with these
// options' act_order and damping; `stream` is the one it was made for): what
// GptqQuantizeCuda does after its PrepareHessian, so matrices that share a
// Hessian prepare it once. `h`: the Hessian as prepared (device, undamped),
// for report.output_error when options.output_error asks for it.
// `device_w`: w's values already on this device (the GPU executor's copy of
// the layer), read there instead of copying `w` up; null: copied.
absl::StatusOr<GptqResult> GptqQuantizePrepared(GptqCuda& gptq, absl::Span<const float> w, int rows,
                                                const GptqOptions& options, cudaStream_t stream,
                                                const float* h = nullptr, const float* device_w = nullptr);

}  // namespace shrinkray
