// The CUDA LayerExecutor (core/pipeline/layer_executor.h): this rank's hidden
// states live on the device in fp32; each RunLayer uploads the layer's
// current weights (the views of model.layer(l), compressed or not), runs
// CudaLayerForward over the windows `batch_windows` at a time, and for a
// statistics pass accumulates each requested group's Hessian (fp32 GEMM,
// CUBLAS_COMPUTE_32F) and Wanda norm on the device in the CPU accumulators'
// running form, then hands them to the LayerStatistics (downloaded once per
// pass). Only the embedding lookup runs on the host.
//
// Between the passes of one layer it keeps what the layer's blocks computed
// (attention output, attention block output, MLP activation; all windows)
// when they fit in device memory, and the next pass starts from the latest
// one whose weights did not change since (WeightsChanged): a true-sequential
// layer then costs one forward (qkv pass: an RMSNorm; o pass: up to the
// attention; gate_up: o_proj; down: the MLP; output pass: down_proj) instead
// of 2.5 forwards of partial passes and the output pass.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/kernels/cuda/activation_norm_cuda.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/hessian_cuda.h"
#include "core/kernels/cuda/llama_cuda.h"
#include "core/pipeline/device_factories.h"
#include "core/pipeline/layer_executor.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

constexpr std::array<LinearGroup, 4> kGroups = {LinearGroup::kQkv, LinearGroup::kO, LinearGroup::kGateUp,
                                                LinearGroup::kDown};

// One group's statistics on the device during a pass.
struct DeviceGroupStats {
  DeviceBuffer<float> hessian;  // [cols, cols], empty when not requested
  long hessian_samples = 0;
  DeviceBuffer<float> act_norm;  // [cols], empty when not requested
  long act_norm_samples = 0;
};

class CudaLayerExecutor final : public LayerExecutor {
 public:
  CudaLayerExecutor(const LayerExecutorSpec& spec, int device, cudaStream_t stream)
      : spec_(spec), config_(*spec.config), device_(device), stream_(stream) {}
  ~CudaLayerExecutor() override {
    CudaDeviceGuard guard(device_);
    hidden_ = {};
    kept_ = {};
    weights_ = {};
    act_norm_workspace_ = {};
    workspace_.reset();
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }

  std::string device() const override { return "cuda"; }

  absl::Status Init(const std::vector<double>& inv_freq) {
    SR_RETURN_IF_ERROR(UseDevice());
    const ModelConfig& c = config_;
    const size_t window_floats = static_cast<size_t>(spec_.seqlen) * c.hidden_size;
    const long batch_rows = static_cast<long>(spec_.batch_windows) * spec_.seqlen;
    SR_ASSIGN_OR_RETURN(hidden_, DeviceBuffer<float>::Create(spec_.windows * window_floats));
    SR_ASSIGN_OR_RETURN(CudaLayerWorkspace ws,
                        CudaLayerWorkspace::Create(c, inv_freq, batch_rows, spec_.seqlen, stream_));
    workspace_ = std::make_unique<CudaLayerWorkspace>(std::move(ws));
    const int widest = std::max({c.hidden_size, c.q_dim(), c.intermediate_size});
    SR_ASSIGN_OR_RETURN(act_norm_workspace_,
                        DeviceBuffer<double>::Create(activation_norm_workspace_size(batch_rows, widest)));
    return KeepBlocks();
  }

  // Allocates the kept block outputs, in block order, while they fit beside
  // what the rest of the job needs (Hessians, the solvers' workspaces, a
  // layer's weights): a margin of 8 GiB or 15% of the device.
  absl::Status KeepBlocks() {
    size_t free_bytes = 0, total_bytes = 0;
    SR_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
    const size_t margin = std::max<size_t>(size_t{8} << 30, total_bytes / 100 * 15);
    const size_t rows = static_cast<size_t>(spec_.windows) * spec_.seqlen;
    const size_t widths[3] = {static_cast<size_t>(config_.q_dim()), static_cast<size_t>(config_.hidden_size),
                              static_cast<size_t>(config_.intermediate_size)};
    size_t used = 0;
    int kept = 0;
    for (int k = 0; k < std::min(spec_.max_kept_blocks, 3); ++k) {
      const size_t bytes = rows * widths[k] * sizeof(float);
      if (used + bytes + margin > free_bytes) break;
      SR_ASSIGN_OR_RETURN(kept_[k], DeviceBuffer<float>::Create(rows * widths[k]));
      used += bytes;
      kept = k + 1;
    }
    kept_blocks_ = KeptBlocks(kept);
    return absl::OkStatus();
  }

  absl::Status Embed(const LlamaModel& model, std::span<const int32_t> tokens) override {
    if (tokens.size() != static_cast<size_t>(spec_.windows) * spec_.seqlen) {
      return absl::InvalidArgumentError(absl::StrCat("cuda executor: ", tokens.size(), " tokens for ", spec_.windows,
                                                     " windows of ", spec_.seqlen));
    }
    // The lookup on the host (its table stays there), then one upload.
    std::vector<float> host(tokens.size() * static_cast<size_t>(config_.hidden_size));
    SR_RETURN_IF_ERROR(model.Embed(tokens, host));
    SR_RETURN_IF_ERROR(UseDevice());
    return hidden_.CopyFromHost(host, stream_);
  }

  absl::Status RunLayer(const LlamaModel& model, int layer, bool output, LayerStatistics* stats,
                        const CancellationToken* cancel) override {
    SR_RETURN_IF_ERROR(UseDevice());
    const ObservedGroups observed = stats != nullptr ? ObservedBy(*stats) : ObservedGroups();
    // A statistics pass with nothing to observe has nothing to do.
    if (!output && !observed.last.has_value()) return absl::OkStatus();
    SR_ASSIGN_OR_RETURN(CudaLayerWeights w, UploadLayer(model, layer));
    std::array<DeviceGroupStats, 4> groups;
    if (stats != nullptr) SR_RETURN_IF_ERROR(StartStatistics(*stats, groups));
    // From the latest kept block output before the first observed group.
    const int start = kept_blocks_.Start(layer, observed.first_block);
    const CudaLinearInputObserver observer =
        stats == nullptr ? CudaLinearInputObserver()
                         : [&](int, LinearGroup group, const float* x, long rows, int cols) {
                             return Observe(groups[static_cast<size_t>(group)], x, rows, cols);
                           };
    const ModelConfig& c = config_;
    const size_t window_rows = static_cast<size_t>(spec_.seqlen);
    for (int first_window = 0; first_window < spec_.windows; first_window += spec_.batch_windows) {
      SR_RETURN_IF_ERROR(CheckCancelled(cancel, absl::StrCat("layer ", layer)));
      const int b = std::min(spec_.batch_windows, spec_.windows - first_window);
      const size_t row0 = first_window * window_rows;
      float* hidden = hidden_.data() + row0 * c.hidden_size;
      CudaLayerBuffers buffers;
      buffers.input = hidden;
      buffers.attention = kept_[0].size() != 0 ? kept_[0].data() + row0 * c.q_dim() : workspace_->attention();
      // Without a kept copy the output pass works in place; a statistics
      // pass must leave the layer input as it is.
      buffers.middle = kept_[1].size() != 0 ? kept_[1].data() + row0 * c.hidden_size
                       : output            ? hidden
                                           : workspace_->middle();
      buffers.activation =
          kept_[2].size() != 0 ? kept_[2].data() + row0 * c.intermediate_size : workspace_->activation();
      buffers.output = hidden;
      SR_RETURN_IF_ERROR(CudaLayerForwardStaged(c, layer, w, b, spec_.seqlen, buffers, start, *workspace_, observer,
                                                stream_, observed.last));
    }
    if (stats != nullptr) SR_RETURN_IF_ERROR(FinishStatistics(groups, *stats));
    // Errors raised while the kernels ran show here.
    SR_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    kept_blocks_.PassDone(output, observed.last);
    return absl::OkStatus();
  }

  void WeightsChanged(int layer, LinearGroup group) override { kept_blocks_.WeightsChanged(layer, group); }

 private:
  // The pipeline may call from a thread whose current device differs.
  absl::Status UseDevice() {
    SR_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    return absl::OkStatus();
  }

  // Copies one weight into the layer's device buffer at *offset.
  absl::StatusOr<const float*> Put(const float* host, size_t n, size_t* offset) {
    if (host == nullptr) return static_cast<const float*>(nullptr);
    float* dst = weights_.data() + *offset;
    SR_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, host, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
    *offset += n;
    return static_cast<const float*>(dst);
  }

  absl::StatusOr<CudaLayerWeights> UploadLayer(const LlamaModel& model, int layer) {
    const ModelConfig& c = config_;
    const LayerWeights& h = model.layer(layer);
    SR_RETURN_IF_ERROR(CheckLayerViews(c, layer, h));
    const size_t C = c.hidden_size, I = c.intermediate_size, QD = c.q_dim(), KVD = c.kv_dim(), HD = c.head_dim;
    const size_t total = C + QD * C + 2 * KVD * C + QD + 2 * KVD + 2 * HD + C * QD + C + C + 3 * I * C;
    if (weights_.size() < total) {
      SR_ASSIGN_OR_RETURN(weights_, DeviceBuffer<float>::Create(total));
    }
    // The previous pass's kernels may still read the buffer.
    SR_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    size_t at = 0;
    CudaLayerWeights w;
    SR_ASSIGN_OR_RETURN(w.input_layernorm, Put(h.input_layernorm, C, &at));
    SR_ASSIGN_OR_RETURN(w.q_proj, Put(h.q_proj, QD * C, &at));
    SR_ASSIGN_OR_RETURN(w.k_proj, Put(h.k_proj, KVD * C, &at));
    SR_ASSIGN_OR_RETURN(w.v_proj, Put(h.v_proj, KVD * C, &at));
    SR_ASSIGN_OR_RETURN(w.q_bias, Put(h.q_bias, QD, &at));
    SR_ASSIGN_OR_RETURN(w.k_bias, Put(h.k_bias, KVD, &at));
    SR_ASSIGN_OR_RETURN(w.v_bias, Put(h.v_bias, KVD, &at));
    if (c.qk_norm) {
      SR_ASSIGN_OR_RETURN(w.q_norm, Put(h.q_norm, HD, &at));
      SR_ASSIGN_OR_RETURN(w.k_norm, Put(h.k_norm, HD, &at));
    }
    SR_ASSIGN_OR_RETURN(w.o_proj, Put(h.o_proj, C * QD, &at));
    SR_ASSIGN_OR_RETURN(w.o_bias, Put(h.o_bias, C, &at));
    SR_ASSIGN_OR_RETURN(w.post_attention_layernorm, Put(h.post_attention_layernorm, C, &at));
    SR_ASSIGN_OR_RETURN(w.gate_proj, Put(h.gate_proj, I * C, &at));
    SR_ASSIGN_OR_RETURN(w.up_proj, Put(h.up_proj, I * C, &at));
    SR_ASSIGN_OR_RETURN(w.down_proj, Put(h.down_proj, C * I, &at));
    return w;
  }

  // Device accumulators for the requested groups.
  absl::Status StartStatistics(LayerStatistics& stats, std::array<DeviceGroupStats, 4>& groups) {
    for (LinearGroup g : kGroups) {
      const size_t cols = static_cast<size_t>(LinearGroupInputDim(config_, g));
      DeviceGroupStats& d = groups[static_cast<size_t>(g)];
      if (stats.mutable_hessian(g) != nullptr) {
        SR_ASSIGN_OR_RETURN(d.hessian, DeviceBuffer<float>::Create(cols * cols));
      }
      if (stats.mutable_act_norm(g) != nullptr) {
        SR_ASSIGN_OR_RETURN(d.act_norm, DeviceBuffer<float>::Create(cols));
      }
    }
    return absl::OkStatus();
  }

  absl::Status Observe(DeviceGroupStats& d, const float* x, long rows, int cols) {
    if (d.hessian.size() == 0 && d.act_norm.size() == 0) return absl::OkStatus();
    const int samples = static_cast<int>(rows / spec_.seqlen);
    if (d.hessian.size() != 0) {
      SR_RETURN_IF_ERROR(hessian_accumulate(d.hessian.data(), cols, &d.hessian_samples, x, rows, samples,
                                            /*allow_tf32=*/false, stream_));
    }
    if (d.act_norm.size() != 0) {
      SR_RETURN_IF_ERROR(activation_norm_accumulate(d.act_norm.data(), cols, &d.act_norm_samples, x, rows, samples,
                                                    act_norm_workspace_.data(), stream_));
    }
    return absl::OkStatus();
  }

  absl::Status FinishStatistics(std::array<DeviceGroupStats, 4>& groups, LayerStatistics& stats) {
    for (LinearGroup g : kGroups) {
      DeviceGroupStats& d = groups[static_cast<size_t>(g)];
      if (d.hessian.size() != 0) {
        std::vector<float> h(d.hessian.size());
        SR_RETURN_IF_ERROR(d.hessian.CopyToHost(absl::MakeSpan(h), stream_));
        SR_RETURN_IF_ERROR(stats.mutable_hessian(g)->Assign(std::move(h), d.hessian_samples));
      }
      if (d.act_norm.size() != 0) {
        std::vector<float> a(d.act_norm.size());
        SR_RETURN_IF_ERROR(d.act_norm.CopyToHost(absl::MakeSpan(a), stream_));
        SR_RETURN_IF_ERROR(stats.mutable_act_norm(g)->Assign(std::move(a), d.act_norm_samples));
      }
    }
    return absl::OkStatus();
  }

  LayerExecutorSpec spec_;
  ModelConfig config_;
  int device_;
  cudaStream_t stream_;
  DeviceBuffer<float> hidden_;   // [windows * seqlen, C]
  // Kept block outputs of the current layer, all windows: attention
  // [.., q_dim], middle [.., C], activation [.., I]; empty when not kept.
  std::array<DeviceBuffer<float>, 3> kept_;
  KeptBlocks kept_blocks_{0};  // kept_[0, kept()) are allocated
  DeviceBuffer<float> weights_;  // the current layer's weights, packed
  DeviceBuffer<double> act_norm_workspace_;
  std::unique_ptr<CudaLayerWorkspace> workspace_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<LayerExecutor>> MakeCudaLayerExecutor(int device, const LayerExecutorSpec& spec) {
  if (spec.config == nullptr || spec.windows <= 0 || spec.seqlen <= 0 || spec.batch_windows <= 0) {
    return absl::InvalidArgumentError("cuda executor: empty spec");
  }
  if (spec.precision != HessianPrecision::kFloat32) {
    return absl::UnimplementedError("float64 Hessians are accumulated on the CPU (the GPU accumulates in float32)");
  }
  SR_RETURN_IF_ERROR(CheckCudaForwardSupport(*spec.config));
  SR_RETURN_IF_ERROR(UseCudaDevice(device));
  cudaStream_t stream = nullptr;
  SR_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  auto executor = std::make_unique<CudaLayerExecutor>(spec, device, stream);
  SR_RETURN_IF_ERROR(executor->Init(RopeInverseFrequencies(*spec.config)));
  return std::unique_ptr<LayerExecutor>(std::move(executor));
}

}  // namespace shrinkray
