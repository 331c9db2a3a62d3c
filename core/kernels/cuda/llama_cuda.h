// The Llama-family forward pass (core/model/llama.h) on one CUDA device in
// fp32 (the layer forward also in bf16, for the layerwise executor): the same op sequence as LlamaModel::Forward, built from the CUDA twins
// in ops.h. Weights are uploaded once from a CPU LlamaModel; activations live
// on the device; logits come back to the host.
//
// Supported: Llama / Mistral / Qwen2 / Qwen3 as LlamaModel runs them (tied or
// untied lm_head, GQA, q/k/v and o_proj biases, Qwen3 q/k norm, sliding
// window, llama3 rope_scaling). RoPE cos/sin tables are computed on the host in
// double and rounded once to fp32, exactly as the CPU model does.
//
// Host-only header (plain g++ can include it).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/model/config.h"
#include "core/model/llama.h"

namespace shrinkray {

// One decoder layer's weights on the device, laid out as LayerWeights; null
// where the model has none (biases, Qwen3 q/k norms). T is the activation and
// weight-matrix type (float, or __nv_bfloat16 for the bf16 forward); the
// norm weights and biases stay fp32 in both (the ops take them so).
template <typename T>
struct CudaLayerWeightsOf {
  const float* input_layernorm = nullptr;
  const T* q_proj = nullptr;
  const T* k_proj = nullptr;
  const T* v_proj = nullptr;
  const float* q_bias = nullptr;
  const float* k_bias = nullptr;
  const float* v_bias = nullptr;
  const float* q_norm = nullptr;
  const float* k_norm = nullptr;
  const T* o_proj = nullptr;
  const float* o_bias = nullptr;
  const float* post_attention_layernorm = nullptr;
  const T* gate_proj = nullptr;
  const T* up_proj = nullptr;
  const T* down_proj = nullptr;
};
using CudaLayerWeights = CudaLayerWeightsOf<float>;

// The device twin of LinearInputObserver: x is a device pointer [rows, cols]
// whose values are ready in stream order (work enqueued on the layer's
// stream after the call may overwrite it). An error stops the forward.
template <typename T>
using CudaLinearInputObserverOf =
    std::function<absl::Status(int layer, LinearGroup group, const T* x, long rows, int cols)>;
using CudaLinearInputObserver = CudaLinearInputObserverOf<float>;

// Activations of a layer forward of up to `max_rows` rows, and the RoPE
// tables of one seqlen (computed on the host in double, rounded once to fp32,
// exactly as LlamaModel::LayerForward does; fp32 for either T).
template <typename T>
class CudaLayerWorkspaceOf {
 public:
  static absl::StatusOr<CudaLayerWorkspaceOf> Create(const ModelConfig& config,
                                                     const std::vector<double>& inv_freq,
                                                     long max_rows, int seqlen,
                                                     cudaStream_t stream);
  long max_rows() const { return max_rows_; }
  int seqlen() const { return seqlen_; }

  // Scratch [max_rows, width] for what a caller keeps nowhere else.
  T* attention() { return att_.data(); }    // [.., q_dim]
  T* middle() { return mid_.data(); }       // [.., C]
  T* activation() { return gate_.data(); }  // [.., I]

  // The forward's own scratch (CudaLayerForwardStaged).
  const float* cos() const { return cos_.data(); }
  const float* sin() const { return sin_.data(); }
  T* normed() { return normed_.data(); }  // [.., C]
  T* q() { return q_.data(); }            // [.., q_dim]
  T* k() { return k_.data(); }            // [.., kv_dim]
  T* v() { return v_.data(); }            // [.., kv_dim]
  T* proj() { return proj_.data(); }      // [.., C]
  T* up() { return up_.data(); }          // [.., I]

 private:
  long max_rows_ = 0;
  int seqlen_ = 0;
  DeviceBuffer<float> cos_, sin_;
  DeviceBuffer<T> normed_, q_, k_, v_, att_, proj_, mid_, gate_, up_;
};
using CudaLayerWorkspace = CudaLayerWorkspaceOf<float>;

// A decoder layer's forward in four blocks, each starting at the input of one
// Linear group (where the observer sees it):
//   0 input -> RMSNorm -> [qkv] -> q/k/v, RoPE, attention -> attention
//   1 attention -> [o] -> o_proj + input -> middle
//   2 middle -> RMSNorm -> [gate_up] -> silu(gate) * up -> activation
//   3 activation -> [down] -> down_proj + middle -> output
// The buffers (device [rows, width]) hold what the blocks produce; a forward
// may start at block k when the buffers hold the valid outputs of the blocks
// before it (a statistics pass of the layerwise executor resumes from what the
// previous pass of the same layer computed instead of starting over).
// output may equal input or middle (in place); middle may equal input.
template <typename T>
struct CudaLayerBuffersOf {
  const T* input = nullptr;  // [rows, C]
  T* attention = nullptr;    // [rows, q_dim]
  T* middle = nullptr;       // [rows, C]
  T* activation = nullptr;   // [rows, I]
  T* output = nullptr;       // [rows, C]; written by block 3 only
};
using CudaLayerBuffers = CudaLayerBuffersOf<float>;

// Blocks start_block..3 (or up to stop_after's observation: a statistics pass
// needs nothing later) of decoder layer `layer` with `w`: LlamaModel::
// LayerForward's op sequence on the device, the observer called where the
// CPU calls its own. T = float: fp32 throughout (cuBLAS fp32 GEMMs, never
// TF32), the reference. T = __nv_bfloat16: bf16 activations and weights,
// tensor-core GEMMs with fp32 accumulation, norms, RoPE, softmax and SwiGLU
// computed in fp32 and rounded once to bf16 (ops.h), the tensor-core
// flash-attention kernel where the head size allows. Enqueued on `stream`;
// returns without waiting. Instantiated for float and __nv_bfloat16.
template <typename T>
absl::Status CudaLayerForwardStaged(const ModelConfig& config, int layer,
                                    const CudaLayerWeightsOf<T>& w, int batch, int seqlen,
                                    const CudaLayerBuffersOf<T>& buffers, int start_block,
                                    CudaLayerWorkspaceOf<T>& ws,
                                    const CudaLinearInputObserverOf<T>& observer,
                                    cudaStream_t stream,
                                    std::optional<LinearGroup> stop_after = std::nullopt);

// The whole layer in place: hidden [batch*seqlen, C] -> the layer's output.
absl::Status CudaLayerForward(const ModelConfig& config, int layer, const CudaLayerWeights& w,
                              int batch, int seqlen, float* hidden, CudaLayerWorkspace& ws,
                              cudaStream_t stream);

// What the fp32 CUDA forward cannot run (Unimplemented naming it): a
// rope_scaling other than llama3, head_dim > 256.
absl::Status CheckCudaForwardSupport(const ModelConfig& config);

// Which weights a layer needs: InvalidArgument naming the layer when a view
// of `w` is missing.
absl::Status CheckLayerViews(const ModelConfig& config, int layer, const LayerWeights& w);

class LlamaCudaModel {
 public:
  LlamaCudaModel(const LlamaCudaModel&) = delete;
  LlamaCudaModel& operator=(const LlamaCudaModel&) = delete;
  ~LlamaCudaModel();

  // Copies every weight of `cpu_model` (through its layer views, so a model
  // whose views were repointed is copied as it runs) to the current device.
  // The CPU model is not referenced afterwards.
  static absl::StatusOr<std::unique_ptr<LlamaCudaModel>> FromCpu(const LlamaModel& cpu_model);

  const ModelConfig& config() const { return config_; }

  // Same contract as LlamaModel::Forward: tokens [batch, seqlen] (host),
  // logits_host [batch*seqlen, vocab]. Positions restart at 0 in every row.
  // Synchronous: returns once the logits are on the host.
  absl::Status Forward(std::span<const int32_t> tokens, int batch, int seqlen,
                       std::span<float> logits_host);

 private:

  LlamaCudaModel() = default;

  // Copies `n` floats from `host` (null: returns null) into a new device
  // buffer owned by the model.
  absl::StatusOr<const float*> Upload(const float* host, size_t n);

  ModelConfig config_;
  std::vector<double> inv_freq_;  // [head_dim/2], as LlamaModel computes it
  cudaStream_t stream_ = nullptr;
  std::vector<DeviceBuffer<float>> weights_;  // owns every device weight
  const float* embed_tokens_ = nullptr;
  const float* final_norm_ = nullptr;
  const float* lm_head_ = nullptr;
  std::vector<CudaLayerWeights> layers_;
};

}  // namespace shrinkray
