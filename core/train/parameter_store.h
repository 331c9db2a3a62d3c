// The trainable state of a Llama-family model: one contiguous allocation each
// for the parameters, their gradients and AdamW's two moments, with named
// views (HF tensor name -> offset, shape) in LlamaModel's parameter order.
// One allocation per role lets the optimizer, the gradient norm and (later)
// the all-reduce across ranks run over a single flat buffer.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/model/config.h"

namespace shrinkray {
class LlamaModel;
}

namespace shrinkray::train {

struct ParameterView {
  std::string name;            // HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // row-major, [out, in] for Linears
  size_t offset = 0;           // into each of the four allocations
  size_t numel = 0;
  int layer = -1;  // decoder layer, -1 for embeddings, final norm, lm_head
};

// Sizes that the trainer's decoder needs (positive sizes, kv heads dividing
// heads, even head_dim, positive eps and theta); InvalidArgument naming the field.
absl::Status ValidateTrainConfig(const ModelConfig& config);

// The parameter names and shapes of `config` in LlamaModel::Parameters()
// order; offsets packed in that order. No lm_head.weight when tied.
std::vector<ParameterView> ParameterLayout(const ModelConfig& config);

template <typename T>
class BasicParameterStore {
 public:
  static absl::StatusOr<BasicParameterStore> Create(const ModelConfig& config);

  const ModelConfig& config() const { return config_; }
  const std::vector<ParameterView>& views() const { return views_; }
  size_t size() const { return params_.size(); }
  // NotFound naming `name` when absent.
  absl::StatusOr<const ParameterView*> Find(std::string_view name) const;

  std::span<T> params() { return params_; }
  std::span<const T> params() const { return params_; }
  std::span<T> grads() { return grads_; }
  std::span<const T> grads() const { return grads_; }
  std::span<T> first_moment() { return m_; }
  std::span<T> second_moment() { return v_; }
  std::span<const T> first_moment() const { return m_; }
  std::span<const T> second_moment() const { return v_; }

  std::span<T> param(const ParameterView& v) { return params().subspan(v.offset, v.numel); }
  std::span<const T> param(const ParameterView& v) const {
    return params().subspan(v.offset, v.numel);
  }
  std::span<T> grad(const ParameterView& v) { return grads().subspan(v.offset, v.numel); }

  void ZeroGrads();
  // Deterministic initialisation from `seed` (SplitMix64, same values on every
  // machine): norm weights 1, biases 0, every matrix uniform with standard
  // deviation `stddev`. Moments and gradients are zeroed.
  void InitRandom(uint64_t seed, double stddev);

  // Copies the weights of `model` (which must have this config's names and
  // shapes, in order; a streaming model's unloaded weights are read from its
  // checkpoint) into params(); InvalidArgument naming the first mismatch.
  absl::Status LoadFrom(const LlamaModel& model);
  // Writes params() into `model`'s weight views (rounded to float); every
  // weight must be loaded, else FailedPrecondition.
  absl::Status StoreTo(LlamaModel& model) const;

 private:
  ModelConfig config_;
  std::vector<ParameterView> views_;
  absl::flat_hash_map<std::string, size_t> index_;  // name -> views_ index
  std::vector<T> params_, grads_, m_, v_;
};

using ParameterStore = BasicParameterStore<float>;

}  // namespace shrinkray::train
