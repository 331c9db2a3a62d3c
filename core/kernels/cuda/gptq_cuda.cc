#include "core/kernels/cuda/gptq_cuda.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/algo/quantizer.h"
#include "core/kernels/cuda/blas.h"
#include "core/kernels/cuda/gptq_cuda_launch.h"
#include "core/kernels/cuda/output_error_cuda.h"

namespace shrinkray {
namespace {

using kernels::GptqParamMode;
using kernels::kGptqMaxBlock;
using cuda_internal::Grow;

absl::Status ValidateOptions(const GptqOptions& o) {
  if (o.bits < 2 || o.bits > 8) {
    return o.bits > 8 && o.bits <= 16 && o.allow_wide_bits
               ? absl::UnimplementedError("GptqCuda: bits > 8 (codes are uint8 here)")
               : absl::InvalidArgumentError(absl::StrCat("bits must be in [2, 8], got ", o.bits));
  }
  if (o.group_size == 0 || o.group_size < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("group_size must be -1 or positive, got ", o.group_size));
  }
  if (!(o.damp >= 0.0 && o.damp < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("damp must be in [0, 1), got ", o.damp));
  }
  if (!(o.damp_auto_increment >= 0.0 && o.damp_auto_increment < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("damp_auto_increment must be in [0, 1), got ", o.damp_auto_increment));
  }
  if (o.block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_size must be positive, got ", o.block_size));
  }
  if (o.precision != HessianPrecision::kFloat32) {
    return absl::UnimplementedError("GptqCuda: HessianPrecision::kFloat64");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<GptqCuda>> GptqCuda::Create(cudaStream_t stream) {
  std::unique_ptr<GptqCuda> g(new GptqCuda(stream));
  // Create the handles now so that a missing library fails here, early.
  SR_CUDA_ASSIGN_OR_RETURN(cublasHandle_t blas, CublasHandleFor(stream));
  (void)blas;
  SR_CUDA_ASSIGN_OR_RETURN(g->hinv_, HessianInverseCuda::Create(stream));
  return g;
}

GptqCuda::~GptqCuda() = default;

absl::Status GptqCuda::Reserve(int rows, int cols) {
  SR_STATUS_RETURN_IF_ERROR(Grow(wk_, static_cast<size_t>(rows) * cols));
  SR_STATUS_RETURN_IF_ERROR(Grow(err_, static_cast<size_t>(rows) * kGptqMaxBlock));
  SR_STATUS_RETURN_IF_ERROR(Grow(row_loss_, static_cast<size_t>(rows)));
  return absl::OkStatus();
}

absl::Status GptqCuda::PrepareHessian(const float* h, int cols, const GptqOptions& options) {
  SR_STATUS_RETURN_IF_ERROR(ValidateOptions(options));
  if (cols <= 0 || h == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("PrepareHessian: bad cols ", cols));
  }
  cols_ = 0;  // not prepared until this succeeds
  SR_CUDA_ASSIGN_OR_RETURN(cudaEvent_t ev0, events_.Get(0));
  SR_CUDA_ASSIGN_OR_RETURN(cudaEvent_t ev1, events_.Get(1));
  if (timing_) SR_CUDA_RETURN_IF_ERROR(cudaEventRecord(ev0, stream_));
  SR_STATUS_RETURN_IF_ERROR(hinv_->Prepare(h, cols, options.act_order, options.damp,
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

absl::StatusOr<SolveReport> GptqCuda::Quantize(const float* w, int rows,
                                               const GptqOptions& options,
                                               const GptqCudaOutputs& out, const uint8_t* keep) {
  SR_STATUS_RETURN_IF_ERROR(ValidateOptions(options));
  const int cols = cols_;
  if (cols == 0) return absl::FailedPreconditionError("GptqCuda::Quantize: no prepared Hessian");
  if (options.act_order != hinv_->act_order()) {
    return absl::InvalidArgumentError("GptqCuda::Quantize: act_order differs from PrepareHessian");
  }
  if (options.inverse_factor != hinv_->method()) {
    return absl::InvalidArgumentError("GptqCuda::Quantize: inverse_factor differs from PrepareHessian");
  }
  if (rows <= 0 || w == nullptr || out.codes == nullptr || out.scales == nullptr ||
      out.zeros == nullptr) {
    return absl::InvalidArgumentError("GptqCuda::Quantize: bad rows or null w/codes/scales/zeros");
  }
  if (options.keep_mask.empty() != (keep == nullptr)) {
    return absl::InvalidArgumentError("GptqCuda::Quantize: the device keep mask must be given exactly when "
                                      "options.keep_mask is");
  }
  if (!options.keep_mask.empty() && options.keep_mask.size() != static_cast<size_t>(rows) * cols) {
    return absl::InvalidArgumentError(absl::StrCat("keep_mask: shape mismatch, expected ",
                                                   static_cast<long>(rows) * cols, " entries, got ",
                                                   options.keep_mask.size()));
  }
  SR_STATUS_RETURN_IF_ERROR(Reserve(rows, cols));
  const auto start = std::chrono::steady_clock::now();
  // A group wider than W is one group: clamped, the kernels' c + gs cannot overflow.
  const int gs = options.group_size > 0 ? std::min(options.group_size, cols) : options.group_size;
  const bool grouped = gs > 0;
  const GptqParamMode mode = !grouped              ? GptqParamMode::kPerRow
                             : options.static_groups ? GptqParamMode::kStatic
                                                     : GptqParamMode::kDynamic;
  const float maxq = MaxQ(options.bits);
  const int block = std::min({options.block_size, cols, kGptqMaxBlock});
  const int num_blocks = (cols + block - 1) / block;

  // Events: [0] start, [1] after prepare, then per block (sweep end, gemm end).
  size_t ev_count = 0;
  auto record = [&]() -> absl::Status {
    if (!timing_) return absl::OkStatus();
    SR_CUDA_ASSIGN_OR_RETURN(cudaEvent_t e, events_.Get(ev_count++));
    SR_CUDA_RETURN_IF_ERROR(cudaEventRecord(e, stream_));
    return absl::OkStatus();
  };
  SR_STATUS_RETURN_IF_ERROR(record());

  // Grids fitted before the sweep: per row on the whole W before dead
  // zeroing (reference step 1), or static groups on the dead-zeroed W.
  if (mode == GptqParamMode::kPerRow) {
    SR_CUDA_RETURN_IF_ERROR(kernels::LaunchGptqFitParams(w, rows, cols, cols, nullptr, keep, maxq,
                                                         options.sym, out.scales, out.zeros,
                                                         stream_));
  } else if (mode == GptqParamMode::kStatic) {
    SR_CUDA_RETURN_IF_ERROR(kernels::LaunchGptqFitParams(w, rows, cols, gs, hinv_->dead(), keep, maxq,
                                                         options.sym, out.scales, out.zeros,
                                                         stream_));
  }
  SR_CUDA_RETURN_IF_ERROR(kernels::LaunchGptqGatherColumns(wk_.data(), w, rows, cols,
                                                           hinv_->perm(), hinv_->dead(), stream_));
  SR_STATUS_RETURN_IF_ERROR(row_loss_.Memset(0, stream_));
  if (out.g_idx != nullptr) {
    SR_CUDA_RETURN_IF_ERROR(
        kernels::LaunchGptqGidx(out.g_idx, cols, mode, grouped ? gs : 1, hinv_->perm(), stream_));
  }
  SR_STATUS_RETURN_IF_ERROR(record());

  SR_CUDA_ASSIGN_OR_RETURN(cublasHandle_t blas, CublasHandleFor(stream_));
  kernels::GptqSweepArgs args;
  args.wk = wk_.data();
  args.hinv = hinv_->upper();
  args.perm = options.act_order ? hinv_->perm() : nullptr;
  args.keep = keep;
  args.rows = rows;
  args.cols = cols;
  args.mode = mode;
  args.group_size = grouped ? gs : 0;
  args.maxq = maxq;
  args.sym = options.sym;
  args.scales = out.scales;
  args.zeros = out.zeros;
  args.codes = out.codes;
  args.q_f32 = out.weight;
  args.q_bf16 = out.weight_bf16;
  args.err = err_.data();
  args.row_loss = row_loss_.data();
  const float minus_one = -1.0f;
  const float one = 1.0f;
  for (int i1 = 0; i1 < cols; i1 += block) {
    const int i2 = std::min(i1 + block, cols);
    args.i1 = i1;
    args.i2 = i2;
    SR_CUDA_RETURN_IF_ERROR(kernels::LaunchGptqQuantizeBlock(args, stream_));
    SR_STATUS_RETURN_IF_ERROR(record());
    if (i2 < cols) {
      // Row-major W[:, i2:] -= Err1[rows, B] · Hinv[i1:i2, i2:] in cuBLAS's
      // column-major view: C^T[cols-i2, rows] -= Hinv_blk^T[cols-i2, B] ·
      // Err1^T[B, rows], both already laid out that way (no transposes).
      SR_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(
          blas, CUBLAS_OP_N, CUBLAS_OP_N, cols - i2, rows, i2 - i1, &minus_one,
          hinv_->upper() + static_cast<size_t>(i1) * cols + i2, CUDA_R_32F, cols, err_.data(),
          CUDA_R_32F, kGptqMaxBlock, &one, wk_.data() + i2, CUDA_R_32F, cols,
          allow_tf32_ ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    SR_STATUS_RETURN_IF_ERROR(record());
  }

  std::vector<float> losses(rows);
  SR_STATUS_RETURN_IF_ERROR(row_loss_.CopyToHost(absl::MakeSpan(losses), stream_));  // syncs
  if (timing_) {
    auto elapsed = [&](size_t a, size_t b) -> absl::StatusOr<double> {
      float ms = 0.0f;
      SR_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, events_[a], events_[b]));
      return static_cast<double>(ms);
    };
    SR_CUDA_ASSIGN_OR_RETURN(double prep, elapsed(0, 1));
    times_.prepare_ms += prep;
    for (int b = 0; b < num_blocks; ++b) {
      const size_t e_prev = 1 + 2 * static_cast<size_t>(b);
      SR_CUDA_ASSIGN_OR_RETURN(double sweep, elapsed(e_prev, e_prev + 1));
      SR_CUDA_ASSIGN_OR_RETURN(double gemm, elapsed(e_prev + 1, e_prev + 2));
      times_.sweep_ms += sweep;
      times_.trailing_ms += gemm;
    }
  }
  SolveReport report;
  for (float l : losses) report.loss += static_cast<double>(l);
  report.damp_used = hinv_->damp_used();
  report.damp_increments = hinv_->damp_increments();
  report.dead_columns = hinv_->dead_count();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

absl::StatusOr<GptqResult> GptqQuantizeCuda(absl::Span<const float> w, int rows, int cols,
                                            absl::Span<const float> h, const GptqOptions& options,
                                            cudaStream_t stream) {
  if (rows <= 0 || cols <= 0 || w.size() != static_cast<size_t>(rows) * cols ||
      h.size() != static_cast<size_t>(cols) * cols) {
    return absl::InvalidArgumentError("GptqQuantizeCuda: shape mismatch");
  }
  SR_CUDA_ASSIGN_OR_RETURN(std::unique_ptr<GptqCuda> gptq, GptqCuda::Create(stream));
  gptq->set_timing(false);
  SR_CUDA_ASSIGN_OR_RETURN(DeviceBuffer<float> d_h, DeviceBuffer<float>::FromHost(h, stream));
  SR_STATUS_RETURN_IF_ERROR(gptq->PrepareHessian(d_h.data(), cols, options));
  if (!options.output_error) d_h.Reset();  // not needed past the preparation
  return GptqQuantizePrepared(*gptq, w, rows, options, stream, d_h.data());
}

absl::StatusOr<GptqResult> GptqQuantizePrepared(GptqCuda& gptq, absl::Span<const float> w, int rows,
                                                const GptqOptions& options, cudaStream_t stream,
                                                const float* h, const float* device_w) {
  const int cols = gptq.cols();
  if (cols == 0) return absl::FailedPreconditionError("GptqQuantizePrepared: no prepared Hessian");
  if (rows <= 0 || w.size() != static_cast<size_t>(rows) * cols) {
    return absl::InvalidArgumentError("GptqQuantizePrepared: shape mismatch");
  }
  DeviceBuffer<float> d_w;
  if (device_w == nullptr) {
    SR_CUDA_ASSIGN_OR_RETURN(d_w, DeviceBuffer<float>::FromHost(w, stream));
    device_w = d_w.data();
  }
  DeviceBuffer<uint8_t> d_keep;
  if (!options.keep_mask.empty()) {
    SR_CUDA_ASSIGN_OR_RETURN(d_keep, DeviceBuffer<uint8_t>::FromHost(options.keep_mask, stream));
  }
  const int ng = GptqCuda::NumGroups(cols, options);
  const size_t numel = static_cast<size_t>(rows) * cols;
  SR_CUDA_ASSIGN_OR_RETURN(DeviceBuffer<uint8_t> d_codes, DeviceBuffer<uint8_t>::Create(numel));
  SR_CUDA_ASSIGN_OR_RETURN(DeviceBuffer<float> d_scales,
                           DeviceBuffer<float>::Create(static_cast<size_t>(ng) * rows));
  SR_CUDA_ASSIGN_OR_RETURN(DeviceBuffer<int32_t> d_zeros,
                           DeviceBuffer<int32_t>::Create(static_cast<size_t>(ng) * rows));
  SR_CUDA_ASSIGN_OR_RETURN(DeviceBuffer<int32_t> d_gidx, DeviceBuffer<int32_t>::Create(cols));
  SR_CUDA_ASSIGN_OR_RETURN(DeviceBuffer<float> d_q, DeviceBuffer<float>::Create(numel));
  GptqCudaOutputs out;
  out.codes = d_codes.data();
  out.scales = d_scales.data();
  out.zeros = d_zeros.data();
  out.g_idx = d_gidx.data();
  out.weight = d_q.data();
  // d_keep is empty (null) without a mask; Quantize checks the mask's shape.
  SR_CUDA_ASSIGN_OR_RETURN(SolveReport report, gptq.Quantize(device_w, rows, options, out, d_keep.data()));

  GptqResult result;
  result.report = report;
  if (options.output_error && h != nullptr) {
    // W (Quantize leaves it as it was) and Q are on the device already.
    SR_STATUS_RETURN_IF_ERROR(
        report_output_error(device_w, d_q.data(), rows, cols, h, stream, &result.report.output_error));
  }
  result.perm = gptq.perm();
  result.weight.resize(numel);
  SR_STATUS_RETURN_IF_ERROR(d_q.CopyToHost(absl::MakeSpan(result.weight), stream));
  QuantizedWeight& qw = result.quantized;
  const bool grouped = options.group_size > 0;
  qw.rows = rows;
  qw.cols = cols;
  qw.bits = options.bits;
  qw.group_size = grouped ? options.group_size : -1;
  qw.sym = options.sym;
  qw.act_order = options.act_order && grouped && !options.static_groups;
  qw.num_groups = ng;
  qw.codes.resize(numel);
  SR_STATUS_RETURN_IF_ERROR(d_codes.CopyToHost(absl::MakeSpan(qw.codes), stream));
  qw.scales.resize(static_cast<size_t>(ng) * rows);
  qw.zeros.resize(static_cast<size_t>(ng) * rows);
  qw.g_idx.resize(cols);
  SR_STATUS_RETURN_IF_ERROR(d_scales.CopyToHost(absl::MakeSpan(qw.scales), stream));
  SR_STATUS_RETURN_IF_ERROR(d_zeros.CopyToHost(absl::MakeSpan(qw.zeros), stream));
  SR_STATUS_RETURN_IF_ERROR(d_gidx.CopyToHost(absl::MakeSpan(qw.g_idx), stream));
  return result;
}

}  // namespace shrinkray
