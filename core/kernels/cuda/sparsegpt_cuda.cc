#include "core/kernels/cuda/sparsegpt_cuda.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/algo/quantizer.h"
#include "core/algo/validation.h"
#include "core/kernels/cuda/blas.h"
#include "core/kernels/cuda/gptq_cuda_launch.h"
#include "core/kernels/cuda/output_error_cuda.h"
#include "core/kernels/cuda/sparsegpt_cuda_launch.h"

namespace shrinkray {
namespace {

using cuda_internal::Grow;
using kernels::kSparseGptMaxBlock;

// The CPU's checks (same messages), then what this backend lacks.
absl::Status ValidateOptions(const SparseGptOptions& o, int cols) {
  if (o.block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("block_size must be positive, got ", o.block_size));
  }
  SR_STATUS_RETURN_IF_ERROR(
      algo_internal::CheckNm(o.prune_n, o.prune_m, cols, std::min(o.block_size, cols)));
  if (o.prune_n == 0) SR_STATUS_RETURN_IF_ERROR(algo_internal::CheckSparsity(o.sparsity));
  if (o.bits != 0) {
    SR_STATUS_RETURN_IF_ERROR(algo_internal::CheckBits(o.bits, o.allow_wide_bits));
    SR_STATUS_RETURN_IF_ERROR(algo_internal::CheckGroupSize(o.group_size));
  }
  if (!(o.damp >= 0.0 && o.damp < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("damp must be in [0, 1), got ", o.damp));
  }
  if (!(o.damp_auto_increment >= 0.0 && o.damp_auto_increment < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("damp_auto_increment must be in [0, 1), got ", o.damp_auto_increment));
  }
  if (o.bits > 8) return absl::UnimplementedError("SparseGptCuda: bits > 8 (codes are uint8 here)");
  if (o.precision != HessianPrecision::kFloat32) {
    return absl::UnimplementedError(
        "SparseGptCuda: HessianPrecision::kFloat64 is not implemented on the GPU (fp32 only)");
  }
  // The block size decides the masks (one threshold per block), so it cannot
  // be clamped silently as GPTQ's can.
  if (std::min(o.block_size, cols) > kSparseGptMaxBlock) {
    return absl::UnimplementedError(absl::StrCat("SparseGptCuda: block_size ", o.block_size,
                                                 " > ", kSparseGptMaxBlock));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SparseGptCuda>> SparseGptCuda::Create(cudaStream_t stream) {
  std::unique_ptr<SparseGptCuda> s(new SparseGptCuda(stream));
  // Create the handles now so that a missing library fails here, early.
  SR_CUDA_ASSIGN_OR_RETURN(cublasHandle_t blas, CublasHandleFor(stream));
  (void)blas;
  SR_CUDA_ASSIGN_OR_RETURN(s->hinv_, HessianInverseCuda::Create(stream));
  SR_STATUS_RETURN_IF_ERROR(Grow(s->select_, kernels::kSparseGptSelectWords));
  SR_STATUS_RETURN_IF_ERROR(Grow(s->pruned_, 1));
  return s;
}

SparseGptCuda::~SparseGptCuda() = default;

absl::Status SparseGptCuda::PrepareHessian(const float* h, int cols,
                                           const SparseGptOptions& options) {
  if (cols <= 0 || h == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("PrepareHessian: bad cols ", cols));
  }
  SR_STATUS_RETURN_IF_ERROR(ValidateOptions(options, cols));
  cols_ = 0;  // not prepared until this succeeds
  SR_CUDA_ASSIGN_OR_RETURN(cudaEvent_t ev0, events_.Get(0));
  SR_CUDA_ASSIGN_OR_RETURN(cudaEvent_t ev1, events_.Get(1));
  if (timing_) SR_CUDA_RETURN_IF_ERROR(cudaEventRecord(ev0, stream_));
  SR_STATUS_RETURN_IF_ERROR(hinv_->Prepare(h, cols, /*act_order=*/false, options.damp,
                                           options.damp_auto_increment, options.inverse_factor));
  cols_ = cols;
  if (timing_) {
    SR_CUDA_RETURN_IF_ERROR(cudaEventRecord(ev1, stream_));
    SR_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(ev1));
    float ms = 0.0f;
    SR_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, ev0, ev1));
    times_.hinv_ms += ms;
  }
  return absl::OkStatus();
}

absl::StatusOr<SparseGptCudaReport> SparseGptCuda::Prune(const float* w, int rows,
                                                         const SparseGptOptions& options,
                                                         const SparseGptCudaOutputs& out) {
  const int cols = cols_;
  if (cols == 0) return absl::FailedPreconditionError("SparseGptCuda::Prune: no prepared Hessian");
  SR_STATUS_RETURN_IF_ERROR(ValidateOptions(options, cols));
  if (options.inverse_factor != hinv_->method()) {
    return absl::InvalidArgumentError("SparseGptCuda::Prune: inverse_factor differs from PrepareHessian");
  }
  if (rows <= 0 || w == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("SparseGptCuda::Prune: bad rows ", rows,
                                                   " or null w"));
  }
  const int block = std::min(options.block_size, cols);  // <= 128 (validated)
  // The select counts in uint32 and the kernels index a tile in int.
  if (static_cast<long>(rows) * block >= (1L << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat("SparseGptCuda::Prune: rows * block (", rows, " * ", block, ") >= 2^31"));
  }
  const auto start = std::chrono::steady_clock::now();
  SR_STATUS_RETURN_IF_ERROR(Grow(wk_, static_cast<size_t>(rows) * cols));
  SR_STATUS_RETURN_IF_ERROR(Grow(err_, static_cast<size_t>(rows) * kSparseGptMaxBlock));
  SR_STATUS_RETURN_IF_ERROR(Grow(row_loss_, static_cast<size_t>(rows)));
  const bool nm = options.prune_n > 0;
  const int num_blocks = (cols + block - 1) / block;
  const bool quantize = options.bits > 0;
  if (quantize && (out.codes == nullptr || out.scales == nullptr || out.zeros == nullptr)) {
    return absl::InvalidArgumentError("SparseGptCuda::Prune: joint quantization needs codes, scales and zeros");
  }
  const float maxq = quantize ? MaxQ(options.bits) : 0.0f;
  // A group wider than W is one group: clamped, the kernel's c + gs cannot overflow.
  const int gs = quantize && options.group_size > 0 ? std::min(options.group_size, cols) : 0;

  // Events: [0] start, [1] after the gather, then per block (mask end,
  // sweep end, gemm end).
  size_t ev_count = 0;
  auto record = [&]() -> absl::Status {
    if (!timing_) return absl::OkStatus();
    SR_CUDA_ASSIGN_OR_RETURN(cudaEvent_t e, events_.Get(ev_count++));
    SR_CUDA_RETURN_IF_ERROR(cudaEventRecord(e, stream_));
    return absl::OkStatus();
  };
  SR_STATUS_RETURN_IF_ERROR(record());
  if (quantize && gs == 0) {
    // The row grids, on the unpruned W before dead columns are zeroed (the
    // CPU's order); groups are fitted in the sweep.
    SR_CUDA_RETURN_IF_ERROR(kernels::LaunchGptqFitParams(w, rows, cols, cols, nullptr, nullptr, maxq,
                                                         options.sym, out.scales, out.zeros, stream_));
  }
  // Working copy with dead columns zeroed (the permutation is the identity).
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchGptqGatherColumns(wk_.data(), w, rows, cols,
                                                           hinv_->perm(), hinv_->dead(), stream_));
  SR_STATUS_RETURN_IF_ERROR(row_loss_.Memset(0, stream_));
  SR_STATUS_RETURN_IF_ERROR(pruned_.Memset(0, stream_));
  SR_STATUS_RETURN_IF_ERROR(record());

  SR_CUDA_ASSIGN_OR_RETURN(cublasHandle_t blas, CublasHandleFor(stream_));
  kernels::SparseGptSweepArgs args;
  args.wk = wk_.data();
  args.hinv = hinv_->upper();
  args.rows = rows;
  args.cols = cols;
  args.prune_n = nm ? options.prune_n : 0;
  args.prune_m = nm ? options.prune_m : 0;
  args.thresh_bits = nm ? nullptr : select_.data();
  args.out_f32 = out.weight;
  args.out_bf16 = out.weight_bf16;
  args.keep = out.keep;
  args.maxq = maxq;
  args.sym = options.sym;
  args.group_size = gs;
  args.scales = quantize ? out.scales : nullptr;
  args.zeros = quantize ? out.zeros : nullptr;
  args.codes = quantize ? out.codes : nullptr;
  args.err = err_.data();
  args.row_loss = row_loss_.data();
  args.pruned = pruned_.data();
  const float minus_one = -1.0f;
  const float one = 1.0f;
  for (int i1 = 0; i1 < cols; i1 += block) {
    const int i2 = std::min(i1 + block, cols);
    args.i1 = i1;
    args.i2 = i2;
    if (!nm) {
      // thresh = sort(score)[int(numel · p)], numel of this block's tile (the
      // CPU's expression, in double, then truncated).
      const long numel = static_cast<long>(rows) * (i2 - i1);
      const auto kth = static_cast<long>(static_cast<double>(numel) * options.sparsity);
      SR_CUDA_RETURN_IF_ERROR(kernels::LaunchSparseGptSelectThreshold(
          wk_.data(), hinv_->upper(), rows, cols, i1, i2,
          static_cast<uint32_t>(std::min(kth, numel - 1)), select_.data(), stream_));
    }
    SR_STATUS_RETURN_IF_ERROR(record());
    SR_CUDA_RETURN_IF_ERROR(kernels::LaunchSparseGptPruneBlock(args, stream_));
    SR_STATUS_RETURN_IF_ERROR(record());
    if (i2 < cols) {
      // Row-major W[:, i2:] -= Err1[rows, B] · Hinv[i1:i2, i2:] in cuBLAS's
      // column-major view (as GptqCuda): C^T[cols-i2, rows] -= Hinv_blk^T ·
      // Err1^T, both already laid out that way. IEEE fp32, never TF32.
      SR_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(
          blas, CUBLAS_OP_N, CUBLAS_OP_N, cols - i2, rows, i2 - i1, &minus_one,
          hinv_->upper() + static_cast<size_t>(i1) * cols + i2, CUDA_R_32F, cols, err_.data(),
          CUDA_R_32F, kSparseGptMaxBlock, &one, wk_.data() + i2, CUDA_R_32F, cols,
          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    SR_STATUS_RETURN_IF_ERROR(record());
  }

  std::vector<double> losses(rows);
  SR_STATUS_RETURN_IF_ERROR(row_loss_.CopyToHost(absl::MakeSpan(losses), stream_));  // syncs
  unsigned long long pruned = 0;
  SR_STATUS_RETURN_IF_ERROR(pruned_.CopyToHost(absl::MakeSpan(&pruned, 1), stream_));
  if (timing_) {
    auto elapsed = [&](size_t a, size_t b) -> absl::StatusOr<double> {
      float ms = 0.0f;
      SR_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, events_[a], events_[b]));
      return static_cast<double>(ms);
    };
    SR_CUDA_ASSIGN_OR_RETURN(double gather, elapsed(0, 1));
    times_.mask_ms += gather;
    for (int b = 0; b < num_blocks; ++b) {
      const size_t e_prev = 1 + 3 * static_cast<size_t>(b);
      SR_CUDA_ASSIGN_OR_RETURN(double mask, elapsed(e_prev, e_prev + 1));
      SR_CUDA_ASSIGN_OR_RETURN(double sweep, elapsed(e_prev + 1, e_prev + 2));
      SR_CUDA_ASSIGN_OR_RETURN(double gemm, elapsed(e_prev + 2, e_prev + 3));
      times_.mask_ms += mask;
      times_.sweep_ms += sweep;
      times_.trailing_ms += gemm;
    }
  }
  SparseGptCudaReport result;
  SolveReport& report = result.report;
  for (double l : losses) report.loss += l;
  report.damp_used = hinv_->damp_used();
  report.damp_increments = hinv_->damp_increments();
  report.dead_columns = hinv_->dead_count();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.pruned = static_cast<int64_t>(pruned);
  return result;
}

absl::StatusOr<SparseGptResult> SparseGptPruneCuda(absl::Span<const float> w, int rows, int cols,
                                                   absl::Span<const float> h,
                                                   const SparseGptOptions& options,
                                                   cudaStream_t stream) {
  // The CPU's input checks (shape, finiteness) and option checks first, so
  // that both backends answer bad input alike.
  SR_STATUS_RETURN_IF_ERROR(algo_internal::CheckMatrix("w", w, rows, cols));
  SR_STATUS_RETURN_IF_ERROR(ValidateOptions(options, cols));
  SR_STATUS_RETURN_IF_ERROR(algo_internal::CheckMatrix("h", h, cols, cols));
  SR_CUDA_ASSIGN_OR_RETURN(std::unique_ptr<SparseGptCuda> sgpt, SparseGptCuda::Create(stream));
  sgpt->set_timing(false);
  SR_CUDA_ASSIGN_OR_RETURN(DeviceBuffer<float> d_h, DeviceBuffer<float>::FromHost(h, stream));
  SR_STATUS_RETURN_IF_ERROR(sgpt->PrepareHessian(d_h.data(), cols, options));
  if (!options.output_error) d_h.Reset();  // not needed past the preparation
  return SparseGptPrunePrepared(*sgpt, w, rows, options, stream, d_h.data());
}

absl::StatusOr<SparseGptResult> SparseGptPrunePrepared(SparseGptCuda& sgpt, absl::Span<const float> w,
                                                       int rows, const SparseGptOptions& options,
                                                       cudaStream_t stream, const float* h, const float* device_w) {
  const int cols = sgpt.cols();
  if (cols == 0) return absl::FailedPreconditionError("SparseGptPrunePrepared: no prepared Hessian");
  // Its callers check w's values (CheckMatrix, in the CPU solver's order);
  // only the shape here, so that the d·rows scan is not made twice.
  if (rows <= 0 || w.size() != static_cast<size_t>(rows) * cols) {
    return absl::InvalidArgumentError("SparseGptPrunePrepared: shape mismatch");
  }
  DeviceBuffer<float> d_w;
  if (device_w == nullptr) {
    SR_CUDA_ASSIGN_OR_RETURN(d_w, DeviceBuffer<float>::FromHost(w, stream));
    device_w = d_w.data();
  }
  const size_t numel = static_cast<size_t>(rows) * cols;
  SR_CUDA_ASSIGN_OR_RETURN(DeviceBuffer<float> d_q, DeviceBuffer<float>::Create(numel));
  SR_CUDA_ASSIGN_OR_RETURN(DeviceBuffer<uint8_t> d_keep, DeviceBuffer<uint8_t>::Create(numel));
  SparseGptCudaOutputs out;
  out.weight = d_q.data();
  out.keep = d_keep.data();
  const bool quantize = options.bits > 0;
  const int ng = SparseGptCuda::NumGroups(cols, options);
  DeviceBuffer<uint8_t> d_codes;
  DeviceBuffer<float> d_scales;
  DeviceBuffer<int32_t> d_zeros;
  if (quantize) {
    SR_CUDA_ASSIGN_OR_RETURN(d_codes, DeviceBuffer<uint8_t>::Create(numel));
    SR_CUDA_ASSIGN_OR_RETURN(d_scales, DeviceBuffer<float>::Create(static_cast<size_t>(ng) * rows));
    SR_CUDA_ASSIGN_OR_RETURN(d_zeros, DeviceBuffer<int32_t>::Create(static_cast<size_t>(ng) * rows));
    out.codes = d_codes.data();
    out.scales = d_scales.data();
    out.zeros = d_zeros.data();
  }
  SR_CUDA_ASSIGN_OR_RETURN(SparseGptCudaReport rep, sgpt.Prune(device_w, rows, options, out));

  SparseGptResult result;
  result.weight.resize(numel);
  result.keep.resize(numel);
  SR_STATUS_RETURN_IF_ERROR(d_q.CopyToHost(absl::MakeSpan(result.weight), stream));
  SR_STATUS_RETURN_IF_ERROR(d_keep.CopyToHost(absl::MakeSpan(result.keep), stream));
  result.pruned = rep.pruned;
  result.report = rep.report;
  if (quantize) {
    // The CPU's packed form: groups in column order (g_idx = c / group_size).
    QuantizedWeight qw =
        QuantizedWeight::InColumnGroups(rows, cols, options.bits, options.group_size, options.sym);
    qw.codes.resize(numel);
    SR_STATUS_RETURN_IF_ERROR(d_codes.CopyToHost(absl::MakeSpan(qw.codes), stream));
    SR_STATUS_RETURN_IF_ERROR(d_scales.CopyToHost(absl::MakeSpan(qw.scales), stream));
    SR_STATUS_RETURN_IF_ERROR(d_zeros.CopyToHost(absl::MakeSpan(qw.zeros), stream));
    result.quantized = std::move(qw);
  }
  if (options.output_error && h != nullptr) {
    // W (Prune leaves it as it was) and the result are on the device already.
    SR_STATUS_RETURN_IF_ERROR(
        report_output_error(device_w, d_q.data(), rows, cols, h, stream, &result.report.output_error));
  }
  return result;
}

}  // namespace shrinkray
