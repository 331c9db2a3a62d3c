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
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/model/config.h"
#include "core/model/llama.h"

namespace shrinkray {

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
  struct DeviceLayer {
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
  std::vector<DeviceLayer> layers_;
};

}  // namespace shrinkray
