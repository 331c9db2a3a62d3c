#include "core/train/llama_trainer_model.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/model/llama.h"
#include "core/train/backward_ops.h"
#include "core/util/status_macros.h"

namespace shrinkray::train {

template <typename T>
LlamaTrainerModel<T>::LlamaTrainerModel(const ModelConfig& config)
    : config_(config), inv_freq_(RopeInverseFrequencies(config)) {}

template <typename T>
absl::StatusOr<LlamaTrainerModel<T>> LlamaTrainerModel<T>::Create(const ModelConfig& config) {
  SR_RETURN_IF_ERROR(ValidateTrainConfig(config));
  LlamaTrainerModel<T> model(config);
  // Resolve every view's offset once: Forward/Backward then index the flat buffers.
  const std::vector<ParameterView> layout = ParameterLayout(config);
  auto offset = [&](const std::string& name) {
    for (const ParameterView& v : layout) {
      if (v.name == name) return v.offset;
    }
    return kAbsent;
  };
  model.embed_ = offset("model.embed_tokens.weight");
  model.final_norm_ = offset("model.norm.weight");
  model.lm_head_ = config.tie_word_embeddings ? model.embed_ : offset("lm_head.weight");
  for (int i = 0; i < config.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    model.layer_params_.push_back(LayerParams{
        offset(p + "input_layernorm.weight"), offset(p + "self_attn.q_proj.weight"),
        offset(p + "self_attn.k_proj.weight"), offset(p + "self_attn.v_proj.weight"),
        offset(p + "self_attn.q_proj.bias"), offset(p + "self_attn.k_proj.bias"),
        offset(p + "self_attn.v_proj.bias"), offset(p + "self_attn.q_norm.weight"),
        offset(p + "self_attn.k_norm.weight"), offset(p + "self_attn.o_proj.weight"),
        offset(p + "self_attn.o_proj.bias"), offset(p + "post_attention_layernorm.weight"),
        offset(p + "mlp.gate_proj.weight"), offset(p + "mlp.up_proj.weight"),
        offset(p + "mlp.down_proj.weight")});
  }
  return model;
}

template <typename T>
absl::Status LlamaTrainerModel<T>::CheckStore(const BasicParameterStore<T>& store) const {
  const std::vector<ParameterView> layout = ParameterLayout(config_);
  const std::vector<ParameterView>& views = store.views();
  bool same = views.size() == layout.size();
  for (size_t i = 0; same && i < views.size(); ++i) {
    same = views[i].name == layout[i].name && views[i].shape == layout[i].shape;
  }
  if (!same) {
    return absl::InvalidArgumentError(
        "the parameter store's layout does not match the trainer model's config");
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status LlamaTrainerModel<T>::Forward(const BasicParameterStore<T>& store,
                                           std::span<const int32_t> tokens, int batch,
                                           int seqlen, std::span<T> logits) {
  SR_RETURN_IF_ERROR(CheckStore(store));
  const ModelConfig& c = config_;
  if (batch <= 0 || seqlen <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Forward: batch ", batch, " and seqlen ", seqlen, " must be positive"));
  }
  const long rows = static_cast<long>(batch) * seqlen;
  if (static_cast<long>(tokens.size()) != rows) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: ", tokens.size(),
                                                   " tokens for batch ", batch, " x seqlen ",
                                                   seqlen));
  }
  // cblas takes int sizes (buffers are indexed in long / size_t).
  if (rows > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError("Forward: batch * seqlen too large");
  }
  if (static_cast<long>(logits.size()) != rows * c.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: logits has ", logits.size(),
                                                   " values, expected ", rows * c.vocab_size));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: token id ", tokens[i],
                                                     " at index ", i, " is outside [0, ",
                                                     c.vocab_size, ")"));
    }
  }
  const int N = static_cast<int>(rows);
  const int C = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int NH = c.num_attention_heads, NKV = c.num_key_value_heads, HD = c.head_dim;
  const int QD = c.q_dim(), KVD = c.kv_dim();
  const T eps = static_cast<T>(c.rms_norm_eps);
  const size_t n = static_cast<size_t>(N);
  const T* P = store.params().data();
  auto opt = [&](size_t off) { return off == kAbsent ? nullptr : P + off; };

  batch_ = batch;
  seqlen_ = seqlen;
  tokens_.assign(tokens.begin(), tokens.end());
  RopeTables<T>(inv_freq_, seqlen, &cos_, &sin_);
  layers_.resize(c.num_hidden_layers);

  std::vector<T> hidden(n * C), proj(n * C);
  EmbeddingForward(hidden.data(), tokens_.data(), P + embed_, N, C);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const LayerParams& w = layer_params_[l];
    LayerCache& a = layers_[l];
    a.x_in = hidden;
    a.n1.resize(n * C);
    a.rstd1.resize(n);
    RmsNormForward(a.n1.data(), a.rstd1.data(), a.x_in.data(), P + w.ln1, N, C, eps);
    a.q.resize(n * QD);
    a.k.resize(n * KVD);
    a.v.resize(n * KVD);
    if (c.qk_norm) {
      // Qwen3: RMSNorm over each head's vector between the projection and RoPE.
      a.q_lin.resize(n * QD);
      a.k_lin.resize(n * KVD);
      a.rstd_q.resize(n * NH);
      a.rstd_k.resize(n * NKV);
      LinearForward(a.q_lin.data(), a.n1.data(), P + w.q, opt(w.qb), N, C, QD);
      LinearForward(a.k_lin.data(), a.n1.data(), P + w.k, opt(w.kb), N, C, KVD);
      RmsNormForward(a.q.data(), a.rstd_q.data(), a.q_lin.data(), P + w.qn, n * NH, HD, eps);
      RmsNormForward(a.k.data(), a.rstd_k.data(), a.k_lin.data(), P + w.kn, n * NKV, HD, eps);
    } else {
      LinearForward(a.q.data(), a.n1.data(), P + w.q, opt(w.qb), N, C, QD);
      LinearForward(a.k.data(), a.n1.data(), P + w.k, opt(w.kb), N, C, KVD);
    }
    LinearForward(a.v.data(), a.n1.data(), P + w.v, opt(w.vb), N, C, KVD);
    RopeForward(a.q.data(), a.q.data(), cos_.data(), sin_.data(), batch, seqlen, NH, HD);
    RopeForward(a.k.data(), a.k.data(), cos_.data(), sin_.data(), batch, seqlen, NKV, HD);
    a.probs.resize(static_cast<size_t>(batch) * NH * seqlen * seqlen);
    a.att.resize(n * QD);
    AttentionForward(a.att.data(), a.probs.data(), a.q.data(), a.k.data(), a.v.data(), batch,
                     seqlen, NH, NKV, HD, c.LayerSlidingWindow(l).value_or(0));
    LinearForward(proj.data(), a.att.data(), P + w.o, opt(w.ob), N, QD, C);
    a.x_mid.resize(n * C);
    for (size_t i = 0; i < n * C; ++i) a.x_mid[i] = a.x_in[i] + proj[i];

    a.n2.resize(n * C);
    a.rstd2.resize(n);
    RmsNormForward(a.n2.data(), a.rstd2.data(), a.x_mid.data(), P + w.ln2, N, C, eps);
    a.gate.resize(n * I);
    a.up.resize(n * I);
    a.h.resize(n * I);
    LinearForward(a.gate.data(), a.n2.data(), P + w.gate, static_cast<const T*>(nullptr), N, C, I);
    LinearForward(a.up.data(), a.n2.data(), P + w.up, static_cast<const T*>(nullptr), N, C, I);
    SwigluForward(a.h.data(), a.gate.data(), a.up.data(), static_cast<long>(n * I));
    LinearForward(proj.data(), a.h.data(), P + w.down, static_cast<const T*>(nullptr), N, I, C);
    for (size_t i = 0; i < n * C; ++i) hidden[i] = a.x_mid[i] + proj[i];
  }
  x_final_ = std::move(hidden);
  n_final_.resize(n * C);
  rstd_final_.resize(n);
  RmsNormForward(n_final_.data(), rstd_final_.data(), x_final_.data(), P + final_norm_, N, C,
                 eps);
  // lm_head: a Linear with lm_head.weight, or with embed_tokens when tied.
  LinearForward(logits.data(), n_final_.data(), P + lm_head_, static_cast<const T*>(nullptr), N,
                C, V);
  return absl::OkStatus();
}

template <typename T>
absl::Status LlamaTrainerModel<T>::Backward(BasicParameterStore<T>& store,
                                            std::span<const T> dlogits) {
  SR_RETURN_IF_ERROR(CheckStore(store));
  const ModelConfig& c = config_;
  if (batch_ == 0) return absl::FailedPreconditionError("Backward: no Forward to go back through");
  const int N = batch_ * seqlen_;
  const int C = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int NH = c.num_attention_heads, NKV = c.num_key_value_heads, HD = c.head_dim;
  const int QD = c.q_dim(), KVD = c.kv_dim();
  const size_t n = static_cast<size_t>(N);
  if (dlogits.size() != n * V) {
    return absl::InvalidArgumentError(absl::StrCat("Backward: dlogits has ", dlogits.size(),
                                                   " values, expected ", n * V));
  }
  const T* P = store.params().data();
  T* G = store.grads().data();
  auto gopt = [&](size_t off) { return off == kAbsent ? nullptr : G + off; };

  // Tied: lm_head's gradient lands in the embeddings' (G + embed_).
  std::vector<T> dn(n * C, T(0)), dx(n * C, T(0));
  LinearBackward(dn.data(), G + lm_head_, static_cast<T*>(nullptr), dlogits.data(),
                 n_final_.data(), P + lm_head_, N, C, V);
  RmsNormBackward(dx.data(), G + final_norm_, dn.data(), x_final_.data(), P + final_norm_,
                  rstd_final_.data(), N, C);

  std::vector<T> dh(n * I), dgate(n * I), dup(n * I), datt(n * QD), dq(n * QD), dk(n * KVD),
      dv(n * KVD), dq_pre(n * QD), dk_pre(n * KVD), dq_lin, dk_lin;
  for (int l = c.num_hidden_layers - 1; l >= 0; --l) {
    const LayerParams& w = layer_params_[l];
    const LayerCache& a = layers_[l];
    // dx holds d(layer output); the MLP branch adds to it, giving d(x_mid).
    std::fill(dh.begin(), dh.end(), T(0));
    std::fill(dgate.begin(), dgate.end(), T(0));
    std::fill(dup.begin(), dup.end(), T(0));
    std::fill(dn.begin(), dn.end(), T(0));
    LinearBackward(dh.data(), G + w.down, static_cast<T*>(nullptr), dx.data(), a.h.data(),
                   P + w.down, N, I, C);
    SwigluBackward(dgate.data(), dup.data(), dh.data(), a.gate.data(), a.up.data(),
                   static_cast<long>(n * I));
    LinearBackward(dn.data(), G + w.gate, static_cast<T*>(nullptr), dgate.data(), a.n2.data(),
                   P + w.gate, N, C, I);
    LinearBackward(dn.data(), G + w.up, static_cast<T*>(nullptr), dup.data(), a.n2.data(),
                   P + w.up, N, C, I);
    RmsNormBackward(dx.data(), G + w.ln2, dn.data(), a.x_mid.data(), P + w.ln2, a.rstd2.data(),
                    N, C);

    // Attention branch: d(x_mid) -> d(x_in).
    std::fill(datt.begin(), datt.end(), T(0));
    std::fill(dq.begin(), dq.end(), T(0));
    std::fill(dk.begin(), dk.end(), T(0));
    std::fill(dv.begin(), dv.end(), T(0));
    std::fill(dq_pre.begin(), dq_pre.end(), T(0));
    std::fill(dk_pre.begin(), dk_pre.end(), T(0));
    std::fill(dn.begin(), dn.end(), T(0));
    LinearBackward(datt.data(), G + w.o, gopt(w.ob), dx.data(), a.att.data(), P + w.o, N, QD, C);
    AttentionBackward(dq.data(), dk.data(), dv.data(), datt.data(), a.q.data(), a.k.data(),
                      a.v.data(), a.probs.data(), batch_, seqlen_, NH, NKV, HD,
                      c.LayerSlidingWindow(l).value_or(0));
    RopeBackward(dq_pre.data(), dq.data(), cos_.data(), sin_.data(), batch_, seqlen_, NH, HD);
    RopeBackward(dk_pre.data(), dk.data(), cos_.data(), sin_.data(), batch_, seqlen_, NKV, HD);
    const T* dq_proj = dq_pre.data();
    const T* dk_proj = dk_pre.data();
    if (c.qk_norm) {
      dq_lin.assign(n * QD, T(0));
      dk_lin.assign(n * KVD, T(0));
      RmsNormBackward(dq_lin.data(), G + w.qn, dq_pre.data(), a.q_lin.data(), P + w.qn,
                      a.rstd_q.data(), n * NH, HD);
      RmsNormBackward(dk_lin.data(), G + w.kn, dk_pre.data(), a.k_lin.data(), P + w.kn,
                      a.rstd_k.data(), n * NKV, HD);
      dq_proj = dq_lin.data();
      dk_proj = dk_lin.data();
    }
    LinearBackward(dn.data(), G + w.q, gopt(w.qb), dq_proj, a.n1.data(), P + w.q, N, C, QD);
    LinearBackward(dn.data(), G + w.k, gopt(w.kb), dk_proj, a.n1.data(), P + w.k, N, C, KVD);
    LinearBackward(dn.data(), G + w.v, gopt(w.vb), dv.data(), a.n1.data(), P + w.v, N, C, KVD);
    RmsNormBackward(dx.data(), G + w.ln1, dn.data(), a.x_in.data(), P + w.ln1, a.rstd1.data(), N,
                    C);
  }
  EmbeddingBackward(G + embed_, dx.data(), tokens_.data(), N, C);
  return absl::OkStatus();
}

template class LlamaTrainerModel<float>;
template class LlamaTrainerModel<double>;

}  // namespace shrinkray::train
