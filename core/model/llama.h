// Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) on the CPU in float32.
// Parameters are named views into one allocation (llm.c's ParameterTensors).
// The forward pass is split into embed / per-layer / head so that the
// calibration executor can stream one layer at a time and observe the inputs
// of each Linear.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/checkpoint.h"
#include "core/model/config.h"

namespace shrinkray {

// The Linear groups of a decoder layer that share an input, in the
// true-sequential order of GPTQ's llama.py: {q,k,v} -> {o} -> {gate,up} -> {down}.
enum class LinearGroup { kQkv = 0, kO = 1, kGateUp = 2, kDown = 3 };

// Views into one layer's weights (row-major [out, in] as in HF checkpoints).
struct LayerWeights {
  float* input_layernorm = nullptr;           // [C]
  float* q_proj = nullptr;                    // [q_dim, C]
  float* k_proj = nullptr;                    // [kv_dim, C]
  float* v_proj = nullptr;                    // [kv_dim, C]
  float* q_bias = nullptr;                    // [q_dim]  (Qwen2; else null)
  float* k_bias = nullptr;                    // [kv_dim] (Qwen2; else null)
  float* v_bias = nullptr;                    // [kv_dim] (Qwen2; else null)
  float* q_norm = nullptr;                    // [head_dim] (Qwen3; else null)
  float* k_norm = nullptr;                    // [head_dim] (Qwen3; else null)
  float* o_proj = nullptr;                    // [C, q_dim]
  float* o_bias = nullptr;                    // [C] (Llama/Qwen3 attention_bias; else null)
  float* post_attention_layernorm = nullptr;  // [C]
  float* gate_proj = nullptr;                 // [I, C]
  float* up_proj = nullptr;                   // [I, C]
  float* down_proj = nullptr;                 // [C, I]
};

// Called with the input rows of a Linear group during a layer's forward, just
// before the group's matmuls: x is [rows, cols] row-major (rows = batch*seqlen
// tokens; cols = C for kQkv and kGateUp, q_dim for kO, I for kDown). x is only
// valid during the call.
using LinearInputObserver =
    std::function<void(int layer, LinearGroup group, const float* x, long rows, int cols)>;

class LlamaModel {
 public:
  // Views point into arena_, so a model is neither copied nor moved.
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  // Reads <dir>/config.json and the checkpoint (any float dtype -> float32).
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const std::filesystem::path& dir);
  static absl::StatusOr<std::unique_ptr<LlamaModel>> FromCheckpoint(const ModelConfig& config,
                                                                    const Checkpoint& checkpoint);

  const ModelConfig& config() const { return config_; }
  long num_parameters() const;

  // tokens: [batch, seqlen]; logits: [batch*seqlen, vocab]. Positions restart at
  // 0 in every row; causal mask (plus the sliding window when configured).
  // Exactly Embed, LayerForward for every layer, then Head.
  absl::Status Forward(std::span<const int32_t> tokens, int batch, int seqlen,
                       std::span<float> logits) const;

  // The pieces of Forward, for layer streaming.
  absl::Status Embed(std::span<const int32_t> tokens, std::span<float> hidden) const;  // [B*T, C]
  // hidden [B*T, C] in/out through decoder layer `layer` using `weights`.
  absl::Status LayerForward(int layer, const LayerWeights& weights, int batch, int seqlen,
                            std::span<float> hidden,
                            const LinearInputObserver& observer = {}) const;
  // Final RMSNorm then lm_head: hidden [rows, C] -> logits [rows, V].
  absl::Status Head(std::span<const float> hidden, long rows, std::span<float> logits) const;

  const LayerWeights& layer(int i) const { return layers_[i]; }
  LayerWeights& mutable_layer(int i) { return layers_[i]; }
  // The HF tensor names and views of every parameter, for writers.
  struct NamedParameter {
    std::string name;
    std::vector<int64_t> shape;
    float* data;
  };
  std::vector<NamedParameter> Parameters() const;
  // RoPE inverse frequencies [head_dim/2] in double, rope_scaling applied (the
  // CUDA model builds its cos/sin tables from the same values).
  const std::vector<double>& rope_inv_freq() const { return inv_freq_; }

 private:
  LlamaModel() = default;

  // Calls fn(name, shape, slot) for every parameter in arena order, where slot
  // is the (possibly const) float* member that views it.
  template <typename Self, typename Fn>
  static void VisitParameters(Self& self, Fn&& fn);

  ModelConfig config_;
  std::vector<float> arena_;       // every parameter, one allocation
  float* embed_tokens_ = nullptr;  // [V, C]
  float* final_norm_ = nullptr;    // [C]
  float* lm_head_ = nullptr;       // [V, C] (== embed_tokens_ when tied)
  std::vector<LayerWeights> layers_;
  std::vector<double> inv_freq_;  // [head_dim/2] RoPE frequencies, scaling applied
};

}  // namespace shrinkray
