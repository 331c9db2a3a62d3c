// The Llama-family decoder for training: whole-model forward to logits that
// keeps every activation the backward needs, and the backward from dlogits to
// the gradients of every parameter (added into the store's gradient views).
// Same math and, in float, the same rounding steps as LlamaModel::Forward
// (Llama, Mistral windows, Qwen2 q/k/v biases, Qwen3 q/k norms, tied or
// separate lm_head); instantiated for float and double (gradient checks).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/model/config.h"
#include "core/train/parameter_store.h"

namespace shrinkray::train {

template <typename T>
class LlamaTrainerModel {
 public:
  static absl::StatusOr<LlamaTrainerModel> Create(const ModelConfig& config);

  const ModelConfig& config() const { return config_; }

  // tokens [batch, seqlen] -> logits [batch*seqlen, vocab] with `store`'s
  // parameters; positions restart at 0 in every row. Keeps the activations
  // for Backward (which must then be given the same store, unchanged).
  absl::Status Forward(const BasicParameterStore<T>& store, std::span<const int32_t> tokens,
                       int batch, int seqlen, std::span<T> logits);
  // dlogits [batch*seqlen, vocab] of the last Forward -> adds the gradient of
  // every parameter into store.grads() (zero them first for a fresh one).
  absl::Status Backward(BasicParameterStore<T>& store, std::span<const T> dlogits);

 private:
  struct LayerCache {
    std::vector<T> x_in, rstd1, n1;      // block input, its norm
    std::vector<T> q_lin, k_lin;         // q/k projections (before q/k norm; Qwen3)
    std::vector<T> rstd_q, rstd_k;       // q/k norm caches (Qwen3)
    std::vector<T> q, k, v;              // q, k after RoPE; v
    std::vector<T> probs, att;           // attention softmax [B,NH,S,S], output
    std::vector<T> x_mid, rstd2, n2;     // after the attention residual, its norm
    std::vector<T> gate, up, h;          // MLP: projections and silu(gate)*up
  };
  // Parameter pointers of one layer (biases / q,k norms null when absent).
  struct LayerParams {
    size_t ln1, q, k, v, qb, kb, vb, qn, kn, o, ob, ln2, gate, up, down;
  };
  static constexpr size_t kAbsent = static_cast<size_t>(-1);

  explicit LlamaTrainerModel(const ModelConfig& config);
  absl::Status CheckStore(const BasicParameterStore<T>& store) const;

  ModelConfig config_;
  std::vector<double> inv_freq_;
  size_t embed_ = 0, final_norm_ = 0, lm_head_ = 0;  // offsets into the store
  std::vector<LayerParams> layer_params_;
  // The last Forward's shapes and activations.
  int batch_ = 0, seqlen_ = 0;
  std::vector<int32_t> tokens_;
  std::vector<T> cos_, sin_;
  std::vector<LayerCache> layers_;
  std::vector<T> x_final_, rstd_final_, n_final_;
};

}  // namespace shrinkray::train
