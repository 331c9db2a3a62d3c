// The CUDA LayerExecutor (core/pipeline/layer_executor.h): this rank's hidden
// states live on the device in fp32 (forward_dtype float32, the reference) or
// bf16 (forward_dtype bfloat16); each RunLayer makes the device copy of the
// layer's weights current (the views of model.layer(l), compressed or not;
// for bf16 rounded to bf16 on the device, norms and biases kept fp32): the
// whole layer on its first pass, then only the groups WeightsChanged named
// (a true-sequential 8B-shape layer copied 5 x 0.87 GB in fp32 before, now
// 0.87 GB plus what compression changed), runs
// CudaLayerForwardStaged over the windows `batch_windows` at a time, and for
// a statistics pass accumulates each requested group's Hessian (fp32: 3xTF32,
// near-fp32 on tensor cores; bf16: tensor cores, fp32 accumulation) and Wanda
// norm on the device in the CPU accumulators' running form, then hands them
// to the LayerStatistics: the Wanda norms downloaded, the Hessians left on
// the device (HessianAccumulator::AssignOnDevice; a GPU solver backend reads
// them there, and the host copies one down only when something on the CPU
// needs it: at 8B shapes 1 GB a layer that no longer crosses PCIe twice).
// Only the embedding lookup runs on the host.
//
// Layers stream from host memory: the pipeline hands over the next layer as
// soon as it is in memory (Prefetch), and a host thread copies it into a
// page-locked staging buffer, slot by slot, each slot's DMA to the second
// device weight buffer queued on a copy stream as soon as it is staged (for
// bf16 the rounding runs there too); the next layer's first RunLayer then
// waits on an event instead of copying 0.87 GB (8B shapes, fp32) from
// pageable memory on the compute stream.
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
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/calib/device_hessian.h"
#include "core/kernels/cuda/activation_norm_cuda.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/hessian_cuda.h"
#include "core/kernels/cuda/hessian_merge_cuda.h"
#include "core/kernels/cuda/llama_cuda.h"
#include "core/kernels/cuda/random_cuda.h"
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

// A group's Hessian as the executor accumulated it, handed over in place.
class ExecutorHessian final : public DeviceHessian {
 public:
  ExecutorHessian(int device, int dim, DeviceBuffer<float> values)
      : device_(device), dim_(dim), values_(std::move(values)) {}
  ~ExecutorHessian() override {
    CudaDeviceGuard guard(device_);
    values_ = {};
  }
  int device() const override { return device_; }
  int dim() const override { return dim_; }
  const float* data() const override { return values_.data(); }
  absl::Status CopyToHost(absl::Span<float> out) const override {
    if (out.size() != values_.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("ExecutorHessian::CopyToHost: ", out.size(), " floats for ", values_.size()));
    }
    CudaDeviceGuard guard(device_);
    SR_CUDA_RETURN_IF_ERROR(cudaMemcpy(out.data(), values_.data(), out.size() * sizeof(float), cudaMemcpyDeviceToHost));
    return absl::OkStatus();
  }
  absl::StatusOr<std::optional<long>> MergeAcrossRanks(Communicator& comm, long n_samples) override {
    CudaDeviceGuard guard(device_);
    // The default stream: the executor synchronised its work before the hand-over.
    SR_ASSIGN_OR_RETURN(const long total, MergeHessianAcrossRanksCuda(values_.data(), dim_, n_samples, comm, nullptr));
    return std::optional<long>(total);
  }

 private:
  int device_;
  int dim_;
  DeviceBuffer<float> values_;
};

// T: the activation type, float or __nv_bfloat16 (forward_dtype).
template <typename T>
class CudaLayerExecutor final : public LayerExecutor {
 public:
  static constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;

  CudaLayerExecutor(const LayerExecutorSpec& spec, int device, cudaStream_t stream)
      : spec_(spec), config_(*spec.config), device_(device), stream_(stream) {}
  ~CudaLayerExecutor() override {
    CudaDeviceGuard guard(device_);
    // A RunLayer that returned early (cancelled, failed) may have left
    // kernels queued that read the buffers freed below.
    if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
    (void)JoinAhead();  // a prefetch nothing used
    if (copy_stream_ != nullptr) {
      (void)cudaStreamSynchronize(copy_stream_);
      (void)cudaStreamDestroy(copy_stream_);
    }
    if (copied_ != nullptr) (void)cudaEventDestroy(copied_);
    hidden_ = {};
    kept_ = {};
    weights_ = {};
    weights_bf16_ = {};
    staging_ = {};
    act_norm_workspace_ = {};
    workspace_.reset();
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }

  std::string device() const override { return "cuda"; }
  long layers_prefetched() const override { return layers_prefetched_; }

  absl::Status Init(const std::vector<double>& inv_freq) {
    SR_RETURN_IF_ERROR(UseDevice());
    const ModelConfig& c = config_;
    const size_t window_floats = static_cast<size_t>(spec_.seqlen) * c.hidden_size;
    const long batch_rows = static_cast<long>(spec_.batch_windows) * spec_.seqlen;
    SR_ASSIGN_OR_RETURN(hidden_, DeviceBuffer<T>::Create(spec_.windows * window_floats));
    SR_ASSIGN_OR_RETURN(CudaLayerWorkspaceOf<T> ws,
                        CudaLayerWorkspaceOf<T>::Create(c, inv_freq, batch_rows, spec_.seqlen, stream_));
    workspace_ = std::make_unique<CudaLayerWorkspaceOf<T>>(std::move(ws));
    const int widest = std::max({c.hidden_size, c.q_dim(), c.intermediate_size});
    SR_ASSIGN_OR_RETURN(act_norm_workspace_,
                        DeviceBuffer<double>::Create(activation_norm_workspace_size(batch_rows, widest)));
    return KeepBlocks();
  }

  // What the rest of the job needs beside the executor's buffers (Hessians,
  // the solvers' workspaces, a layer's weights): 8 GiB or 15% of the device.
  static size_t Margin(size_t total_bytes) { return std::max<size_t>(size_t{8} << 30, total_bytes / 100 * 15); }

  // Allocates the kept block outputs, in block order, while they fit beside
  // the margin.
  absl::Status KeepBlocks() {
    size_t free_bytes = 0, total_bytes = 0;
    SR_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
    const size_t margin = Margin(total_bytes);
    const size_t rows = static_cast<size_t>(spec_.windows) * spec_.seqlen;
    const size_t widths[3] = {static_cast<size_t>(config_.q_dim()), static_cast<size_t>(config_.hidden_size),
                              static_cast<size_t>(config_.intermediate_size)};
    size_t used = 0;
    int kept = 0;
    for (int k = 0; k < std::min(spec_.max_kept_blocks, 3); ++k) {
      const size_t bytes = rows * widths[k] * sizeof(T);
      if (used + bytes + margin > free_bytes) break;
      SR_ASSIGN_OR_RETURN(kept_[k], DeviceBuffer<T>::Create(rows * widths[k]));
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
    if constexpr (!kBf16) {
      return hidden_.CopyFromHost(host, stream_);
    } else {
      // Rounded to bf16 on the device, a bounded piece at a time.
      const size_t piece = std::min(host.size(), size_t{64} << 20);
      SR_ASSIGN_OR_RETURN(DeviceBuffer<float> staging, DeviceBuffer<float>::Create(piece));
      for (size_t at = 0; at < host.size(); at += piece) {
        const size_t n = std::min(piece, host.size() - at);
        SR_RETURN_IF_ERROR(staging.CopyFromHost(absl::MakeConstSpan(host.data() + at, n), stream_));
        SR_RETURN_IF_ERROR(convert_to_bf16(hidden_.data() + at, staging.data(), static_cast<long>(n), stream_));
      }
      // The staging buffer is freed on return: the copies must be done.
      SR_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
      return absl::OkStatus();
    }
  }

  absl::Status RunLayer(const LlamaModel& model, int layer, bool output, LayerStatistics* stats,
                        const CancellationToken* cancel) override {
    SR_RETURN_IF_ERROR(UseDevice());
    const ObservedGroups observed = stats != nullptr ? ObservedBy(*stats) : ObservedGroups();
    // A statistics pass with nothing to observe has nothing to do.
    if (!output && !observed.last.has_value()) return absl::OkStatus();
    SR_ASSIGN_OR_RETURN(CudaLayerWeightsOf<T> w, UploadLayer(model, layer));
    // A pass that fails from here on may leave copies in flight: the weights
    // are then no layer's (DeviceWeight answers nothing; the next pass copies
    // the whole layer again).
    absl::Status ran = RunUploadedLayer(layer, output, stats, cancel, observed, w);
    if (!ran.ok()) uploaded_layer_ = -1;
    return ran;
  }

 private:
  absl::Status RunUploadedLayer(int layer, bool output, LayerStatistics* stats, const CancellationToken* cancel,
                                const ObservedGroups& observed, const CudaLayerWeightsOf<T>& w) {
    std::array<DeviceGroupStats, 4> groups;
    if (stats != nullptr) SR_RETURN_IF_ERROR(StartStatistics(*stats, groups));
    // From the latest kept block output before the first observed group.
    const int start = kept_blocks_.Start(layer, observed.first_block);
    const CudaLinearInputObserverOf<T> observer =
        stats == nullptr ? CudaLinearInputObserverOf<T>()
                         : [&](int, LinearGroup group, const T* x, long rows, int cols) {
                             return Observe(groups[static_cast<size_t>(group)], x, rows, cols);
                           };
    const ModelConfig& c = config_;
    const size_t window_rows = static_cast<size_t>(spec_.seqlen);
    for (int first_window = 0; first_window < spec_.windows; first_window += spec_.batch_windows) {
      SR_RETURN_IF_ERROR(CheckCancelled(cancel, absl::StrCat("layer ", layer)));
      const int b = std::min(spec_.batch_windows, spec_.windows - first_window);
      const size_t row0 = first_window * window_rows;
      T* hidden = hidden_.data() + row0 * c.hidden_size;
      CudaLayerBuffersOf<T> buffers;
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
    // Errors raised while the kernels ran show here; the statistics are
    // handed over only once they are complete (another stream reads them).
    SR_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    if (stats != nullptr) SR_RETURN_IF_ERROR(FinishStatistics(groups, *stats));
    kept_blocks_.PassDone(output, observed.last);
    return absl::OkStatus();
  }

 public:
  void WeightsChanged(int layer, LinearGroup group) override {
    kept_blocks_.WeightsChanged(layer, group);
    if (layer == uploaded_layer_) stale_[static_cast<size_t>(group)] = true;
    // Against the contract (a prefetched layer stays as it is until it
    // runs), but cheap to honour: the group is copied again on top.
    if (layer == ahead_layer_) ahead_stale_[static_cast<size_t>(group)] = true;
  }

  DeviceMatrix DeviceWeight(int layer, const float* host) const override {
    if (host == nullptr || layer != uploaded_layer_) return {};
    for (const Entry& e : uploaded_matrices_) {
      // weights_ holds the float32 values as copied (a bf16 forward rounds
      // them into weights_bf16_ besides).
      if (e.host == host && !stale_[static_cast<size_t>(*e.group)]) {
        return {device_, weights_[current_].data() + e.slot.offset};
      }
    }
    return {};
  }

  void Prefetch(const LlamaModel& model, int layer) override {
    if (layer < 0 || layer >= config_.num_hidden_layers) return;  // a hint: nothing to copy
    if (prefetch_off_ || layer == uploaded_layer_ || layer == ahead_layer_) return;
    // A bad layer is reported by its RunLayer; an earlier prefetch nothing
    // used is dropped (its error too: the layer it copied will not run).
    if (!CheckLayerViews(config_, layer, model.layer(layer)).ok()) return;
    (void)JoinAhead();
    if (!UseDevice().ok()) return;
    const absl::Status ready = PrepareAhead();
    if (!ready.ok()) {
      // A second weight buffer beside the margin, or page-locked memory, did
      // not fit: every layer is copied when it runs, as without prefetching.
      // (Copies an earlier prefetch queued may still read what is freed.)
      prefetch_off_ = true;
      if (copy_stream_ != nullptr) (void)cudaStreamSynchronize(copy_stream_);
      weights_[1 - current_] = {};
      weights_bf16_[1 - current_] = {};
      staging_ = {};
      (void)cudaGetLastError();
      return;
    }
    ahead_layer_ = layer;
    ahead_stale_ = {};
    // The views are copied; the thread reads only the values they point to.
    try {
      ahead_thread_ = std::thread([this, h = model.layer(layer), into = 1 - current_] {
        ahead_status_ = CopyAhead(h, into);
      });
    } catch (const std::exception&) {  // std::system_error, std::bad_alloc
      ahead_layer_ = -1;  // no thread to be had: copied when it runs
    }
  }

 private:
  // The pipeline may call from a thread whose current device differs.
  absl::Status UseDevice() {
    SR_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    return absl::OkStatus();
  }

  // Where each weight of a layer lives in weights_ (and, for the matrices,
  // weights_bf16_): fixed by the config, so a group's matrices can be
  // replaced alone. Every weight has its place whether or not the model has it.
  struct Slot {
    size_t offset = 0;
    size_t count = 0;
  };
  struct Layout {
    Slot input_layernorm, q_proj, k_proj, v_proj, q_bias, k_bias, v_bias, q_norm, k_norm, o_proj, o_bias,
        post_attention_layernorm, gate_proj, up_proj, down_proj;
    size_t total = 0;
  };
  static Layout LayoutOf(const ModelConfig& c) {
    const size_t C = c.hidden_size, I = c.intermediate_size, QD = c.q_dim(), KVD = c.kv_dim(), HD = c.head_dim;
    Layout l;
    // Matrices first, each at a multiple of 8 values (16-byte aligned in bf16).
    auto place = [&](Slot& slot, size_t count) {
      slot = {l.total, count};
      l.total += (count + 7) / 8 * 8;
    };
    place(l.q_proj, QD * C);
    place(l.k_proj, KVD * C);
    place(l.v_proj, KVD * C);
    place(l.o_proj, C * QD);
    place(l.gate_proj, I * C);
    place(l.up_proj, I * C);
    place(l.down_proj, C * I);
    place(l.input_layernorm, C);
    place(l.q_bias, QD);
    place(l.k_bias, KVD);
    place(l.v_bias, KVD);
    place(l.q_norm, HD);
    place(l.k_norm, HD);
    place(l.o_bias, C);
    place(l.post_attention_layernorm, C);
    return l;
  }

  // One weight of a layer: its host view (null: the model has none), its
  // slot, whether it is a matrix (rounded for bf16) and the group whose
  // compression changes it (none: norms and biases).
  struct Entry {
    const float* host;
    Slot slot;
    std::optional<LinearGroup> group;
  };
  std::array<Entry, 15> Entries(const LayerWeights& h) const {
    const Layout& L = layout_;
    const bool qk = config_.qk_norm;
    return {{{h.input_layernorm, L.input_layernorm, std::nullopt},
             {h.q_bias, L.q_bias, std::nullopt},
             {h.k_bias, L.k_bias, std::nullopt},
             {h.v_bias, L.v_bias, std::nullopt},
             {qk ? h.q_norm : nullptr, L.q_norm, std::nullopt},
             {qk ? h.k_norm : nullptr, L.k_norm, std::nullopt},
             {h.o_bias, L.o_bias, std::nullopt},
             {h.post_attention_layernorm, L.post_attention_layernorm, std::nullopt},
             {h.q_proj, L.q_proj, LinearGroup::kQkv},
             {h.k_proj, L.k_proj, LinearGroup::kQkv},
             {h.v_proj, L.v_proj, LinearGroup::kQkv},
             {h.o_proj, L.o_proj, LinearGroup::kO},
             {h.gate_proj, L.gate_proj, LinearGroup::kGateUp},
             {h.up_proj, L.up_proj, LinearGroup::kGateUp},
             {h.down_proj, L.down_proj, LinearGroup::kDown}}};
  }

  // Buffer `b` of weights_ (and weights_bf16_), allocated on first use.
  absl::Status AllocateWeights(int b) {
    const size_t total = layout_.total;
    if (weights_[b].size() < total) {
      SR_ASSIGN_OR_RETURN(weights_[b], DeviceBuffer<float>::Create(total));
    }
    // Checked on its own: a failed allocation of it after weights_[b]'s
    // must not leave a buffer that the next call takes for allocated.
    if constexpr (kBf16) {
      if (weights_bf16_[b].size() < total) {
        SR_ASSIGN_OR_RETURN(weights_bf16_[b], DeviceBuffer<__nv_bfloat16>::Create(total));
      }
    }
    return absl::OkStatus();
  }

  // Copies one weight from `host` (pageable or staged) to its slot of
  // buffer `b` on `stream`; a matrix of a bf16 forward is also rounded into
  // weights_bf16_[b].
  absl::Status Put(const float* host, const Entry& e, int b, cudaStream_t stream) {
    float* dst = weights_[b].data() + e.slot.offset;
    SR_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst, host, e.slot.count * sizeof(float), cudaMemcpyHostToDevice, stream));
    if constexpr (kBf16) {
      if (e.group.has_value()) {
        SR_RETURN_IF_ERROR(
            convert_to_bf16(weights_bf16_[b].data() + e.slot.offset, dst, static_cast<long>(e.slot.count), stream));
      }
    }
    return absl::OkStatus();
  }

  // What prefetching needs besides the current buffer: the second weight
  // buffer, a page-locked staging buffer of a whole layer, the copy stream
  // and its event. Made on the first Prefetch.
  absl::Status PrepareAhead() {
    if (weights_[1 - current_].size() < layout_.total) {
      // Kept block outputs were sized for one layer's weights beside the
      // margin; the second must fit beside it too.
      size_t free_bytes = 0, total_bytes = 0;
      SR_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
      const size_t bytes = layout_.total * (sizeof(float) + (kBf16 ? sizeof(__nv_bfloat16) : 0));
      if (bytes + Margin(total_bytes) > free_bytes) {
        return absl::ResourceExhaustedError("no room for a second layer's weights beside the margin");
      }
    }
    SR_RETURN_IF_ERROR(AllocateWeights(1 - current_));
    if (staging_.size() < layout_.total) {
      SR_ASSIGN_OR_RETURN(staging_, PinnedHostBuffer<float>::Create(layout_.total));
    }
    if (copy_stream_ == nullptr) {
      SR_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking));
    }
    if (copied_ == nullptr) SR_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));
    return absl::OkStatus();
  }

  // The prefetch thread: each weight into the staging buffer, then its DMA
  // (and bf16 rounding) queued on the copy stream, so that the copies run
  // while the next weight is staged; `copied_` marks the end.
  absl::Status CopyAhead(const LayerWeights& h, int into) {
    SR_RETURN_IF_ERROR(UseDevice());  // this thread's current device
    // The previous prefetch's copies read the staging buffer.
    SR_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(copy_stream_));
    for (const Entry& e : Entries(h)) {
      if (e.host == nullptr) continue;
      float* staged = staging_.data() + e.slot.offset;
      std::memcpy(staged, e.host, e.slot.count * sizeof(float));
      SR_RETURN_IF_ERROR(Put(staged, e, into, copy_stream_));
    }
    SR_CUDA_RETURN_IF_ERROR(cudaEventRecord(copied_, copy_stream_));
    return absl::OkStatus();
  }

  // Ends the prefetch thread, if any: its status (the copies it queued may
  // still run; `copied_` marks them).
  absl::Status JoinAhead() {
    if (ahead_thread_.joinable()) ahead_thread_.join();
    ahead_layer_ = -1;
    return std::exchange(ahead_status_, absl::OkStatus());
  }

  // The device views of a layer whose weights are in buffer current_.
  const float* Vector(const float* host, Slot slot) const {
    return host == nullptr ? nullptr : weights_[current_].data() + slot.offset;
  }
  const T* Matrix(Slot slot) const {
    if constexpr (kBf16) {
      return weights_bf16_[current_].data() + slot.offset;
    } else {
      return weights_[current_].data() + slot.offset;
    }
  }

  // Makes the device copy of `layer`'s weights current: the prefetched copy
  // when there is one (waited for on the compute stream), else all of them
  // for a new layer; then the groups WeightsChanged named since (norms and
  // biases never change within a layer).
  absl::StatusOr<CudaLayerWeightsOf<T>> UploadLayer(const LlamaModel& model, int layer) {
    const ModelConfig& c = config_;
    const LayerWeights& h = model.layer(layer);
    SR_RETURN_IF_ERROR(CheckLayerViews(c, layer, h));
    const Layout& L = layout_;
    // The previous pass's kernels may still read the buffer.
    SR_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    bool whole = layer != uploaded_layer_;
    std::array<bool, 4> stale = stale_;
    // Until every copy below is enqueued the device copy is of no layer.
    uploaded_layer_ = -1;
    if (whole && ahead_layer_ == layer) {
      stale = ahead_stale_;
      const absl::Status ahead = JoinAhead();
      if (!ahead.ok()) {
        return absl::Status(ahead.code(), absl::StrCat("copying layer ", layer, "'s weights ahead: ", ahead.message()));
      }
      SR_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream_, copied_, 0));
      current_ = 1 - current_;
      whole = false;
      ++layers_prefetched_;
    }
    // A prefetch of another layer (the next one, handed over before this
    // layer's first pass) fills the other buffer meanwhile.
    SR_RETURN_IF_ERROR(AllocateWeights(current_));
    uploaded_matrices_.clear();
    for (const Entry& e : Entries(h)) {
      if (e.host == nullptr) continue;
      if (whole || (e.group.has_value() && stale[static_cast<size_t>(*e.group)])) {
        SR_RETURN_IF_ERROR(Put(e.host, e, current_, stream_));
      }
      if (e.group.has_value()) uploaded_matrices_.push_back(e);
    }
    uploaded_layer_ = layer;
    stale_ = {};

    const float* q_norm = c.qk_norm ? h.q_norm : nullptr;
    const float* k_norm = c.qk_norm ? h.k_norm : nullptr;
    CudaLayerWeightsOf<T> w;
    w.input_layernorm = Vector(h.input_layernorm, L.input_layernorm);
    w.q_proj = Matrix(L.q_proj);
    w.k_proj = Matrix(L.k_proj);
    w.v_proj = Matrix(L.v_proj);
    w.q_bias = Vector(h.q_bias, L.q_bias);
    w.k_bias = Vector(h.k_bias, L.k_bias);
    w.v_bias = Vector(h.v_bias, L.v_bias);
    w.q_norm = Vector(q_norm, L.q_norm);
    w.k_norm = Vector(k_norm, L.k_norm);
    w.o_proj = Matrix(L.o_proj);
    w.o_bias = Vector(h.o_bias, L.o_bias);
    w.post_attention_layernorm = Vector(h.post_attention_layernorm, L.post_attention_layernorm);
    w.gate_proj = Matrix(L.gate_proj);
    w.up_proj = Matrix(L.up_proj);
    w.down_proj = Matrix(L.down_proj);
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

  absl::Status Observe(DeviceGroupStats& d, const T* x, long rows, int cols) {
    if (d.hessian.size() == 0 && d.act_norm.size() == 0) return absl::OkStatus();
    const int samples = static_cast<int>(rows / spec_.seqlen);
    if (d.hessian.size() != 0) {
      if constexpr (kBf16) {
        SR_RETURN_IF_ERROR(hessian_accumulate(d.hessian.data(), cols, &d.hessian_samples, x, rows, samples, stream_));
      } else {
        // Near-fp32 on TF32 tensor cores (hessian_cuda.h): at 8B shapes
        // the Hessians are ~88 TFLOP a layer, 1.3 s on the fp32 cores.
        SR_RETURN_IF_ERROR(hessian_accumulate(d.hessian.data(), cols, &d.hessian_samples, x, rows, samples,
                                              Fp32HessianGemm::k3xTf32, stream_));
      }
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
        const int cols = LinearGroupInputDim(config_, g);
        SR_RETURN_IF_ERROR(stats.mutable_hessian(g)->AssignOnDevice(
            std::make_shared<ExecutorHessian>(device_, cols, std::move(d.hessian)), d.hessian_samples));
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
  DeviceBuffer<T> hidden_;   // [windows * seqlen, C]
  // Kept block outputs of the current layer, all windows: attention
  // [.., q_dim], middle [.., C], activation [.., I]; empty when not kept.
  std::array<DeviceBuffer<T>, 3> kept_;
  KeptBlocks kept_blocks_{0};  // kept_[0, kept()) are allocated
  Layout layout_ = LayoutOf(config_);
  // Two layers' weights (layout_), fp32 as uploaded: the current layer's in
  // weights_[current_], the prefetched one's in the other.
  std::array<DeviceBuffer<float>, 2> weights_;
  std::array<DeviceBuffer<__nv_bfloat16>, 2> weights_bf16_;  // bf16: the matrices rounded, same offsets
  int current_ = 0;
  int uploaded_layer_ = -1;  // whose weights weights_[current_] holds; -1: none (or a failed upload)
  std::array<bool, 4> stale_{};  // groups of uploaded_layer_ changed since (WeightsChanged)
  std::vector<Entry> uploaded_matrices_;  // uploaded_layer_'s Linears: host views and slots (DeviceWeight)
  // Prefetching (the second buffer): the layer, its thread and the thread's
  // status (read after the join), the staging buffer, the copy stream and
  // the event after a prefetch's last copy.
  int ahead_layer_ = -1;
  long layers_prefetched_ = 0;
  std::array<bool, 4> ahead_stale_{};
  std::thread ahead_thread_;
  absl::Status ahead_status_;
  bool prefetch_off_ = false;
  PinnedHostBuffer<float> staging_;
  cudaStream_t copy_stream_ = nullptr;
  cudaEvent_t copied_ = nullptr;
  DeviceBuffer<double> act_norm_workspace_;
  std::unique_ptr<CudaLayerWorkspaceOf<T>> workspace_;
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
  if (spec.forward_dtype == ForwardDtype::kBfloat16) {
    auto executor = std::make_unique<CudaLayerExecutor<__nv_bfloat16>>(spec, device, stream);
    SR_RETURN_IF_ERROR(executor->Init(RopeInverseFrequencies(*spec.config)));
    return std::unique_ptr<LayerExecutor>(std::move(executor));
  }
  auto executor = std::make_unique<CudaLayerExecutor<float>>(spec, device, stream);
  SR_RETURN_IF_ERROR(executor->Init(RopeInverseFrequencies(*spec.config)));
  return std::unique_ptr<LayerExecutor>(std::move(executor));
}

}  // namespace shrinkray
