// The Llama-family forward pass (core/model/llama.h) on one CUDA device in
// fp32: the same op sequence as LlamaModel::Forward, built from the CUDA twins
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

// One decoder layer's fp32 weights on the device, laid out as LayerWeights;
// null where the model has none (biases, Qwen3 q/k norms).
struct CudaLayerWeights {
  const float* input_layernorm = nullptr;
  const float* q_proj = nullptr;
  const float* k_proj = nullptr;
  const float* v_proj = nullptr;
  const float* q_bias = nullptr;
  const float* k_bias = nullptr;
  const float* v_bias = nullptr;
  const float* q_norm = nullptr;
  const float* k_norm = nullptr;
  const float* o_proj = nullptr;
  const float* o_bias = nullptr;
  const float* post_attention_layernorm = nullptr;
  const float* gate_proj = nullptr;
  const float* up_proj = nullptr;
  const float* down_proj = nullptr;
};

// The device twin of LinearInputObserver: x is a device pointer [rows, cols]
// whose values are ready in stream order (work enqueued on the layer's
// stream after the call may overwrite it). An error stops the forward.
using CudaLinearInputObserver =
    std::function<absl::Status(int layer, LinearGroup group, const float* x, long rows, int cols)>;

struct CudaLayerBuffers;

// Activations of a layer forward of up to `max_rows` rows, and the RoPE
// tables of one seqlen (computed on the host in double, rounded once to fp32,
// exactly as LlamaModel::LayerForward does).
class CudaLayerWorkspace {
 public:
  static absl::StatusOr<CudaLayerWorkspace> Create(const ModelConfig& config,
                                                   const std::vector<double>& inv_freq,
                                                   long max_rows, int seqlen,
                                                   cudaStream_t stream);
  long max_rows() const { return max_rows_; }
  int seqlen() const { return seqlen_; }

  // Scratch [max_rows, width] for what a caller keeps nowhere else.
  float* attention() { return att_.data(); }    // [.., q_dim]
  float* middle() { return mid_.data(); }       // [.., C]
  float* activation() { return gate_.data(); }  // [.., I]

 private:
  friend absl::Status CudaLayerForwardStaged(const ModelConfig&, int, const CudaLayerWeights&, int,
                                             int, const CudaLayerBuffers&, int,
                                             CudaLayerWorkspace&, const CudaLinearInputObserver&,
                                             cudaStream_t, std::optional<LinearGroup>);
  long max_rows_ = 0;
  int seqlen_ = 0;
  DeviceBuffer<float> cos_, sin_, normed_, q_, k_, v_, att_, proj_, mid_, gate_, up_;
};

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
struct CudaLayerBuffers {
  const float* input = nullptr;  // [rows, C]
  float* attention = nullptr;    // [rows, q_dim]
  float* middle = nullptr;       // [rows, C]
  float* activation = nullptr;   // [rows, I]
  float* output = nullptr;       // [rows, C]; written by block 3 only
};

// Blocks start_block..3 (or up to stop_after's observation: a statistics pass
// needs nothing later) of decoder layer `layer` with `w`: LlamaModel::
// LayerForward's op sequence on the device in fp32 (cuBLAS fp32 GEMMs, never
// TF32), the observer called where the CPU calls its own. Enqueued on
// `stream`; returns without waiting.
absl::Status CudaLayerForwardStaged(const ModelConfig& config, int layer,
                                    const CudaLayerWeights& w, int batch, int seqlen,
                                    const CudaLayerBuffers& buffers, int start_block,
                                    CudaLayerWorkspace& ws,
                                    const CudaLinearInputObserver& observer, cudaStream_t stream,
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
