// SparseGPT on the GPU, numerically the CPU solver (core/algo/sparsegpt.{h,cc})
// and the reference's fasterprune: the same Hessian preparation as GptqCuda
// (HessianInverseCuda: dead columns, damping with auto increments, Hinv =
// chol(chol_inverse(chol(H)), upper) in fp32 by options.inverse_factor), blocks of block_size (<= 128)
// columns, and per block:
//   - unstructured: scores W1² / diag(Hinv1)² over the whole [rows, block]
//     tile at the block start, thresh = the int(numel · sparsity)-th smallest
//     (an exact radix select over the fp32 bit patterns on the device), prune
//     score <= thresh (the reference's tie rule: ties can prune more);
//   - N:M: at every in-block column i with i % M == 0, the current W1 columns
//     i..i+M scored, the N smallest per row pruned (ties: lower column first);
//   - the column sweep (pruned entries -> 0, error propagated in-block) and
//     the trailing update W[:, i2:] -= Err1 · Hinv[i1:i2, i2:] as one cuBLAS
//     fp32 GEMM (CUBLAS_COMPUTE_32F, no TF32).
//
// Differences from the CPU come only from rounding (the inverse factor's
// steps, cuSOLVER vs LAPACK, cuBLAS vs OpenBLAS): scores differ in the last bits, which can move
// an entry lying within that noise of the threshold to the other side (see
// tests/cuda/sparsegpt_cuda_test.cc for the bounds). The number of zeros per
// block is the same rule's: int(numel · sparsity) + 1 plus ties at the
// threshold.
//
// Joint quantization (bits > 0) as the CPU: a per-row grid fitted on the
// unpruned W before dead columns are zeroed, or per group of group_size
// columns refitted at its first column on the outer W; each kept value (and
// each pruned 0, which is on the grid) quantized in the sweep, its error
// propagated. Not supported here (Unimplemented): bits > 8, precision
// kFloat64, block_size > 128.
//
// Use: one SparseGptCuda per stream. PrepareHessian once per Hessian (q/k/v
// share one, gate/up share one), then Prune each weight that consumes it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/algo/solve_report.h"
#include "core/algo/sparsegpt.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/hessian_inverse_cuda.h"

namespace shrinkray {

// Device outputs of SparseGptCuda::Prune, caller-owned, [rows, cols]; each is
// optional (null: not written).
struct SparseGptCudaOutputs {
  float* weight = nullptr;               // pruned W, fp32 (pruned entries exactly 0)
  __nv_bfloat16* weight_bf16 = nullptr;  // pruned W, bf16
  uint8_t* keep = nullptr;               // 1 = kept, 0 = pruned
  // Joint quantization (options.bits > 0): required then, ignored otherwise.
  uint8_t* codes = nullptr;   // [rows, cols]
  float* scales = nullptr;    // [num_groups, rows] (SparseGptCuda::NumGroups)
  int32_t* zeros = nullptr;   // [num_groups, rows]
};

// Milliseconds spent per phase (CUDA events), accumulated until Reset.
struct SparseGptCudaTimes {
  double hinv_ms = 0.0;      // dead columns, damping, the inverse factor, check
  double mask_ms = 0.0;      // working-copy gather + unstructured threshold selects (N:M: ~0,
                             // its selection runs inside the sweep)
  double sweep_ms = 0.0;     // in-block column sweeps (mask applied, N:M selection)
  double trailing_ms = 0.0;  // trailing GEMMs
  void Reset() { *this = SparseGptCudaTimes(); }
};

struct SparseGptCudaReport {
  SolveReport report;  // loss (double, Σ rows), damping, dead columns, seconds
  int64_t pruned = 0;  // zeros in the mask
};

class SparseGptCuda {
 public:
  // Handles and workspaces are bound to `stream` (the current device).
  static absl::StatusOr<std::unique_ptr<SparseGptCuda>> Create(cudaStream_t stream);
  ~SparseGptCuda();
  SparseGptCuda(const SparseGptCuda&) = delete;
  SparseGptCuda& operator=(const SparseGptCuda&) = delete;

  // Dead columns, damping with increments and the inverse factor of h (device
  // [cols, cols] fp32, not modified). Synchronises the stream.
  absl::Status PrepareHessian(const float* h, int cols, const SparseGptOptions& options);

  // Prunes w (device [rows, cols] fp32, not modified) against the prepared
  // Hessian. Synchronises the stream.
  absl::StatusOr<SparseGptCudaReport> Prune(const float* w, int rows,
                                            const SparseGptOptions& options,
                                            const SparseGptCudaOutputs& out);

  int cols() const { return cols_; }
  // Quantization groups of the outputs' scales and zeros (1: per row).
  static int NumGroups(int cols, const SparseGptOptions& options) {
    return options.group_size > 0 ? (cols - 1) / options.group_size + 1 : 1;  // no overflow
  }

  // Timing with CUDA events (default on); times() accumulates.
  void set_timing(bool on) { timing_ = on; }
  const SparseGptCudaTimes& times() const { return times_; }
  SparseGptCudaTimes& mutable_times() { return times_; }

 private:
  explicit SparseGptCuda(cudaStream_t stream) : stream_(stream) {}

  cudaStream_t stream_;
  bool timing_ = true;
  SparseGptCudaTimes times_;
  CudaEventPool events_;

  std::unique_ptr<HessianInverseCuda> hinv_;
  int cols_ = 0;

  // Workspaces (grown on demand).
  DeviceBuffer<float> wk_;        // working W
  DeviceBuffer<float> err_;       // [rows, 128]
  DeviceBuffer<double> row_loss_;
  DeviceBuffer<uint32_t> select_;  // radix-select state + histogram
  DeviceBuffer<unsigned long long> pruned_;
};

// Convenience for tests and small tools: host in, host out, same result type
// as the CPU SparseGptPrune (quantized is never set: bits > 0 is Unimplemented).
absl::StatusOr<SparseGptResult> SparseGptPruneCuda(absl::Span<const float> w, int rows, int cols,
                                                   absl::Span<const float> h,
                                                   const SparseGptOptions& options,
                                                   cudaStream_t stream = nullptr);

// The same from an already prepared SparseGptCuda (PrepareHessian with these
// options' damping; `stream` is the one it was made for), so matrices that
// share a Hessian prepare it once. The caller has checked w's values
// (algo_internal::CheckMatrix); this checks its shape only. `h`: the
// Hessian as prepared (device, undamped), for report.output_error when
// options.output_error asks for it. `device_w`: w's values already on this
// device, read there instead of copying `w` up; null: copied.
absl::StatusOr<SparseGptResult> SparseGptPrunePrepared(SparseGptCuda& sgpt, absl::Span<const float> w, int rows,
                                                       const SparseGptOptions& options, cudaStream_t stream,
                                                       const float* h = nullptr, const float* device_w = nullptr);

}  // namespace shrinkray
