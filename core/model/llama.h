// Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) on the CPU in float32.
// Parameters are named views into one allocation (llm.c's ParameterTensors).
// The forward pass is split into embed / per-layer / head so that the
// calibration executor can stream one layer at a time and observe the inputs
// of each Linear. A model opened for streaming holds no weights until asked:
// each decoder layer (and the embeddings, and the final norm with lm_head) is
// read from the mapped checkpoint into its own allocation on demand and freed
// again, so that a model larger than memory can be processed layer by layer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/checkpoint.h"
#include "core/model/config.h"

namespace shrinkray {

struct CheckpointQuantization;

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

// RoPE inverse frequencies [head_dim/2] of `config` in double, rope_scaling
// applied: what LlamaModel::rope_inv_freq() holds, for code (the trainer) that
// runs the same decoder without a LlamaModel.
std::vector<double> RopeInverseFrequencies(const ModelConfig& config);

// cos/sin tables [seqlen, inv_freq.size()] of positions 0..seqlen-1, each
// angle evaluated in double and rounded once to T: the one table every
// forward (CPU, CUDA, training) uses, so they rotate by the same values.
// Instantiated for float and double.
template <typename T>
void RopeTables(const std::vector<double>& inv_freq, int seqlen, std::vector<T>* cos, std::vector<T>* sin);

// InvalidArgument "<who>: layer L is missing a weight view" when `w` lacks a
// view that a decoder layer of `config` needs (biases are optional).
absl::Status CheckLayerWeightViews(const ModelConfig& config, int layer, const LayerWeights& w,
                                   const char* who);

class LlamaModel {
 public:
  // Views point into the model's arenas, so a model is neither copied nor moved.
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;
  ~LlamaModel();

  // Reads <dir>/config.json and the checkpoint (any float dtype -> float32).
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const std::filesystem::path& dir);
  static absl::StatusOr<std::unique_ptr<LlamaModel>> FromCheckpoint(const ModelConfig& config,
                                                                    const Checkpoint& checkpoint);
  // A model whose weights stay in `checkpoint` (which must outlive it) until
  // LoadLayer / LoadEmbeddings / LoadHead read them. Checks the config and
  // that every parameter is present with its shape (Linears stored quantized
  // are checked when loaded), with FromCheckpoint's errors.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> OpenStreaming(const ModelConfig& config,
                                                                   const Checkpoint& checkpoint);

  const ModelConfig& config() const { return config_; }
  long num_parameters() const;

  // Streaming models only (else FailedPrecondition): read decoder layer
  // `layer`'s weights into an allocation of their own and point layer(layer)
  // at them (a no-op when loaded); Release frees them (keeping one layer's
  // allocation for the next load) and nulls the views (a no-op for a model
  // loaded whole). Loading also drops the checkpoint pages it read from
  // memory. Forward needs every part loaded. Loading and releasing distinct
  // layers from two threads is safe.
  bool streaming() const { return checkpoint_ != nullptr; }
  absl::Status LoadLayer(int layer);
  void ReleaseLayer(int layer);
  bool layer_loaded(int layer) const;
  // embed_tokens, which Embed needs (and Head, when tied).
  absl::Status LoadEmbeddings();
  void ReleaseEmbeddings();
  // The final norm and an untied lm_head, which Head needs.
  absl::Status LoadHead();
  void ReleaseHead();

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
  // The same layer in four blocks, each starting at the input of one Linear
  // group (where the observer sees it):
  //   0 input -> RMSNorm -> [qkv] -> q/k/v, RoPE, attention -> attention
  //   1 attention -> [o] -> o_proj + input -> middle
  //   2 middle -> RMSNorm -> [gate_up] -> silu(gate) * up -> activation
  //   3 activation -> [down] -> down_proj + middle -> output
  // starting at `start_block` (the buffers then hold the valid outputs of
  // the blocks before it) and returning right after observing `stop_after`.
  // The layerwise executor resumes a layer's next statistics pass from what
  // the previous one computed; the values are those of LayerForward.
  struct LayerBuffers {
    const float* input = nullptr;  // [rows, C]
    float* attention = nullptr;    // [rows, q_dim]
    float* middle = nullptr;       // [rows, C]; may equal input
    float* activation = nullptr;   // [rows, I]
    float* output = nullptr;       // [rows, C]; may equal input or middle
  };
  absl::Status LayerForwardStaged(int layer, const LayerWeights& weights, int batch, int seqlen,
                                  const LayerBuffers& buffers, int start_block,
                                  const LinearInputObserver& observer = {},
                                  std::optional<LinearGroup> stop_after = std::nullopt) const;
  // Final RMSNorm then lm_head: hidden [rows, C] -> logits [rows, V].
  absl::Status Head(std::span<const float> hidden, long rows, std::span<float> logits) const;

  const LayerWeights& layer(int i) const { return layers_[i]; }
  LayerWeights& mutable_layer(int i) { return layers_[i]; }
  // The HF tensor names and views of every parameter, for writers. In a
  // streaming model `data` is null where the weights are not loaded.
  struct NamedParameter {
    std::string name;
    std::vector<int64_t> shape;
    float* data;
    int layer = -1;  // the decoder layer holding it; -1 for embeddings, norm, lm_head
  };
  std::vector<NamedParameter> Parameters() const;
  // Decoder layer `layer`'s parameters, in Parameters() order.
  std::vector<NamedParameter> LayerParameters(int layer) const;
  // The values of `p` (one of Parameters()): copied from its view when
  // loaded, else read from a streaming model's checkpoint without keeping it.
  absl::StatusOr<std::vector<float>> ReadParameter(const NamedParameter& p) const;
  // RoPE inverse frequencies [head_dim/2] in double, rope_scaling applied (the
  // CUDA model builds its cos/sin tables from the same values).
  const std::vector<double>& rope_inv_freq() const { return inv_freq_; }

 private:
  LlamaModel() = default;

  // Call fn(name, shape, slot) for every parameter in arena order, where slot
  // is the (possibly const) float* member that views it: all of them, or
  // those of the embeddings, of one decoder layer, or of the head.
  template <typename Self, typename Fn>
  static void VisitParameters(Self& self, Fn&& fn);
  template <typename Self, typename Fn>
  static void VisitEmbeddings(Self& self, Fn&& fn);
  template <typename Self, typename Fn>
  static void VisitLayer(Self& self, int layer, Fn&& fn);
  template <typename Self, typename Fn>
  static void VisitHead(Self& self, Fn&& fn);
  // Sizes `arena` for the parameters `visit` enumerates, points their views
  // into it and reads them from `checkpoint`.
  template <typename Visit>
  static absl::Status ReadInto(const Checkpoint& checkpoint,
                               const CheckpointQuantization& quantization,
                               std::vector<float>& arena, Visit&& visit);
  absl::Status CheckStreaming(const char* what) const;

  ModelConfig config_;
  std::vector<float> arena_;       // every parameter, one allocation (not streaming)
  // Streaming: where weights come from, and one allocation per loaded unit.
  const Checkpoint* checkpoint_ = nullptr;
  std::unique_ptr<CheckpointQuantization> quantization_;
  std::vector<float> embed_arena_;
  std::vector<float> head_arena_;
  std::vector<std::vector<float>> layer_arenas_;
  // A released layer's allocation, kept for the next LoadLayer: every layer
  // has the same size, so the next one is read into memory already mapped
  // instead of ~1 GB (8B shapes) of fresh zeroed pages. Load and Release run
  // on different threads in RunCompression (reader, pipeline).
  std::mutex spare_arena_mutex_;
  std::vector<float> spare_arena_;
  float* embed_tokens_ = nullptr;  // [V, C]
  float* final_norm_ = nullptr;    // [C]
  float* lm_head_ = nullptr;       // [V, C] (== embed_tokens_ when tied)
  std::vector<LayerWeights> layers_;
  std::vector<double> inv_freq_;  // [head_dim/2] RoPE frequencies, scaling applied
};

}  // namespace shrinkray
