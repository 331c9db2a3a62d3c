#include "core/train/parameter_store.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/model/llama.h"
#include "core/model/synthetic.h"
#include "core/util/status_macros.h"

namespace shrinkray::train {

absl::Status ValidateTrainConfig(const ModelConfig& c) {
  const std::pair<const char*, int> sizes[] = {
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"vocab_size", c.vocab_size}};
  for (const auto& [field, value] : sizes) {
    if (value <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("model config ", field, " = ", value, " must be positive"));
    }
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config num_key_value_heads ", c.num_key_value_heads,
                     " does not divide num_attention_heads ", c.num_attention_heads));
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config head_dim ", c.head_dim, " must be even (RoPE)"));
  }
  if (!(c.rms_norm_eps > 0.0f) || !(c.rope_theta > 0.0)) {
    return absl::InvalidArgumentError("model config rms_norm_eps and rope_theta must be positive");
  }
  return absl::OkStatus();
}

std::vector<ParameterView> ParameterLayout(const ModelConfig& c) {
  std::vector<ParameterView> views;
  size_t offset = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape, int layer) {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    views.push_back({std::move(name), std::move(shape), offset, n, layer});
    offset += n;
  };
  const int64_t C = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim(), hd = c.head_dim;
  // The order of LlamaModel's VisitParameters; LoadFrom checks it.
  add("model.embed_tokens.weight", {V, C}, -1);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    add(p + "input_layernorm.weight", {C}, i);
    add(p + "self_attn.q_proj.weight", {qd, C}, i);
    add(p + "self_attn.k_proj.weight", {kvd, C}, i);
    add(p + "self_attn.v_proj.weight", {kvd, C}, i);
    if (c.attention_bias) {
      add(p + "self_attn.q_proj.bias", {qd}, i);
      add(p + "self_attn.k_proj.bias", {kvd}, i);
      add(p + "self_attn.v_proj.bias", {kvd}, i);
    }
    if (c.qk_norm) {
      add(p + "self_attn.q_norm.weight", {hd}, i);
      add(p + "self_attn.k_norm.weight", {hd}, i);
    }
    add(p + "self_attn.o_proj.weight", {C, qd}, i);
    if (c.o_proj_bias) add(p + "self_attn.o_proj.bias", {C}, i);
    add(p + "post_attention_layernorm.weight", {C}, i);
    add(p + "mlp.gate_proj.weight", {I, C}, i);
    add(p + "mlp.up_proj.weight", {I, C}, i);
    add(p + "mlp.down_proj.weight", {C, I}, i);
  }
  add("model.norm.weight", {C}, -1);
  if (!c.tie_word_embeddings) add("lm_head.weight", {V, C}, -1);
  return views;
}

template <typename T>
absl::StatusOr<BasicParameterStore<T>> BasicParameterStore<T>::Create(const ModelConfig& config) {
  SR_RETURN_IF_ERROR(ValidateTrainConfig(config));
  BasicParameterStore<T> store;
  store.config_ = config;
  store.views_ = ParameterLayout(config);
  const ParameterView& last = store.views_.back();
  const size_t total = last.offset + last.numel;
  for (size_t i = 0; i < store.views_.size(); ++i) store.index_[store.views_[i].name] = i;
  store.params_.assign(total, T(0));
  store.grads_.assign(total, T(0));
  store.m_.assign(total, T(0));
  store.v_.assign(total, T(0));
  return store;
}

template <typename T>
absl::StatusOr<const ParameterView*> BasicParameterStore<T>::Find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat("no parameter named '", std::string(name), "'"));
  }
  return &views_[it->second];
}

template <typename T>
void BasicParameterStore<T>::ZeroGrads() {
  std::fill(grads_.begin(), grads_.end(), T(0));
}

template <typename T>
void BasicParameterStore<T>::InitRandom(uint64_t seed, double stddev) {
  SplitMix64 rng(seed);
  // Uniform on [-a, a) has standard deviation a / sqrt(3).
  const double a = stddev * std::sqrt(3.0);
  for (const ParameterView& v : views_) {
    std::span<T> p = param(v);
    const bool is_norm = v.name.find("norm") != std::string::npos;
    for (T& x : p) {
      if (v.shape.size() >= 2) {
        x = static_cast<T>(a * rng.NextSymmetric());
      } else {
        x = is_norm ? T(1) : T(0);
      }
    }
  }
  std::fill(grads_.begin(), grads_.end(), T(0));
  std::fill(m_.begin(), m_.end(), T(0));
  std::fill(v_.begin(), v_.end(), T(0));
}

template <typename T>
absl::Status BasicParameterStore<T>::LoadFrom(const LlamaModel& model) {
  const std::vector<LlamaModel::NamedParameter> named = model.Parameters();
  if (named.size() != views_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("LoadFrom: the model has ", named.size(),
                                                   " parameters, the store ", views_.size()));
  }
  for (size_t i = 0; i < named.size(); ++i) {
    const ParameterView& v = views_[i];
    if (named[i].name != v.name || named[i].shape != v.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LoadFrom: model parameter ", i, " is '", named[i].name, "' [",
          absl::StrJoin(named[i].shape, ", "), "], the store expects '", v.name, "' [",
          absl::StrJoin(v.shape, ", "), "]"));
    }
    SR_ASSIGN_OR_RETURN(const std::vector<float> values, model.ReadParameter(named[i]));
    std::copy(values.begin(), values.end(), param(v).begin());
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status BasicParameterStore<T>::StoreTo(LlamaModel& model) const {
  const std::vector<LlamaModel::NamedParameter> named = model.Parameters();
  if (named.size() != views_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("StoreTo: the model has ", named.size(),
                                                   " parameters, the store ", views_.size()));
  }
  for (size_t i = 0; i < named.size(); ++i) {
    const ParameterView& v = views_[i];
    if (named[i].name != v.name || named[i].shape != v.shape) {
      return absl::InvalidArgumentError(absl::StrCat("StoreTo: model parameter ", i, " is '",
                                                     named[i].name, "', the store expects '",
                                                     v.name, "'"));
    }
    if (named[i].data == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("StoreTo: '", v.name, "' is not loaded in the model"));
    }
    std::span<const T> src = param(v);
    for (size_t j = 0; j < v.numel; ++j) named[i].data[j] = static_cast<float>(src[j]);
  }
  return absl::OkStatus();
}

template class BasicParameterStore<float>;
template class BasicParameterStore<double>;

}  // namespace shrinkray::train
