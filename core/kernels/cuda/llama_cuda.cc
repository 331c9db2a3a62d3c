#include "core/kernels/cuda/llama_cuda.h"

#include <cmath>
#include <limits>
#include <numbers>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/kernels/cuda/ops.h"
#include "core/util/status_macros.h"

namespace shrinkray {

LlamaCudaModel::~LlamaCudaModel() {
  weights_.clear();
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}

absl::Status CheckCudaForwardSupport(const ModelConfig& c) {
  if (c.rope_scaling.has_value() && c.rope_scaling->rope_type != "llama3") {
    return absl::UnimplementedError(
        absl::StrCat("LlamaCudaModel: rope_scaling type '", c.rope_scaling->rope_type, "'"));
  }
  if (c.head_dim > 256) {
    return absl::UnimplementedError(
        absl::StrCat("LlamaCudaModel: head_dim ", c.head_dim, " > 256 (fp32 attention kernel)"));
  }
  return absl::OkStatus();
}

absl::Status CheckLayerViews(const ModelConfig& c, int layer, const LayerWeights& w) {
  return CheckLayerWeightViews(c, layer, w, "LlamaCudaModel");
}

template <typename T>
absl::StatusOr<CudaLayerWorkspaceOf<T>> CudaLayerWorkspaceOf<T>::Create(const ModelConfig& c,
                                                                        const std::vector<double>& inv_freq,
                                                                        long max_rows, int seqlen,
                                                                        cudaStream_t stream) {
  if (max_rows <= 0 || seqlen <= 0 || max_rows % seqlen != 0 ||
      max_rows > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("CudaLayerWorkspace: ", max_rows,
                                                   " rows of windows of ", seqlen, " tokens"));
  }
  const int HD = c.head_dim, half = HD / 2;
  if (static_cast<int>(inv_freq.size()) != half) {
    return absl::InvalidArgumentError("CudaLayerWorkspace: inv_freq is not [head_dim/2]");
  }
  // RoPE tables exactly as LlamaModel::LayerForward builds them.
  std::vector<float> cos_table, sin_table;
  RopeTables(inv_freq, seqlen, &cos_table, &sin_table);
  CudaLayerWorkspaceOf<T> ws;
  ws.max_rows_ = max_rows;
  ws.seqlen_ = seqlen;
  const size_t n = static_cast<size_t>(max_rows);
  SR_ASSIGN_OR_RETURN(ws.cos_, DeviceBuffer<float>::FromHost(cos_table, stream));
  SR_ASSIGN_OR_RETURN(ws.sin_, DeviceBuffer<float>::FromHost(sin_table, stream));
  SR_ASSIGN_OR_RETURN(ws.normed_, DeviceBuffer<T>::Create(n * c.hidden_size));
  SR_ASSIGN_OR_RETURN(ws.q_, DeviceBuffer<T>::Create(n * c.q_dim()));
  SR_ASSIGN_OR_RETURN(ws.k_, DeviceBuffer<T>::Create(n * c.kv_dim()));
  SR_ASSIGN_OR_RETURN(ws.v_, DeviceBuffer<T>::Create(n * c.kv_dim()));
  SR_ASSIGN_OR_RETURN(ws.att_, DeviceBuffer<T>::Create(n * c.q_dim()));
  SR_ASSIGN_OR_RETURN(ws.proj_, DeviceBuffer<T>::Create(n * c.hidden_size));
  SR_ASSIGN_OR_RETURN(ws.mid_, DeviceBuffer<T>::Create(n * c.hidden_size));
  SR_ASSIGN_OR_RETURN(ws.gate_, DeviceBuffer<T>::Create(n * c.intermediate_size));
  SR_ASSIGN_OR_RETURN(ws.up_, DeviceBuffer<T>::Create(n * c.intermediate_size));
  return ws;
}
template class CudaLayerWorkspaceOf<float>;
template class CudaLayerWorkspaceOf<__nv_bfloat16>;

template <typename T>
absl::Status CudaLayerForwardStaged(const ModelConfig& c, int layer, const CudaLayerWeightsOf<T>& w,
                                    int batch, int seqlen, const CudaLayerBuffersOf<T>& b,
                                    int start_block, CudaLayerWorkspaceOf<T>& ws,
                                    const CudaLinearInputObserverOf<T>& observer, cudaStream_t s,
                                    std::optional<LinearGroup> stop_after) {
  const long rows_long = static_cast<long>(batch) * seqlen;
  if (batch <= 0 || seqlen != ws.seqlen() || rows_long > ws.max_rows()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CudaLayerForward: ", batch, " windows of ", seqlen, " tokens for a workspace of ",
        ws.max_rows(), " rows of windows of ", ws.seqlen()));
  }
  if (start_block < 0 || start_block > 3) {
    return absl::InvalidArgumentError(absl::StrCat("CudaLayerForward: start block ", start_block));
  }
  const int N = static_cast<int>(rows_long);
  const int C = c.hidden_size, I = c.intermediate_size;
  const int NH = c.num_attention_heads, NKV = c.num_key_value_heads, HD = c.head_dim;
  const int QD = c.q_dim(), KVD = c.kv_dim();
  const long NC = rows_long * C;
  auto observe = [&](LinearGroup group, const T* in, int cols) {
    return observer ? observer(layer, group, in, rows_long, cols) : absl::OkStatus();
  };
  auto stop = [&](LinearGroup group) { return stop_after.has_value() && *stop_after == group; };
  T* normed = ws.normed();
  T* proj = ws.proj();
  if (start_block <= 0) {
    T* q = ws.q();
    T* k = ws.k();
    T* v = ws.v();
    SR_RETURN_IF_ERROR(rmsnorm_forward(normed, nullptr, b.input, w.input_layernorm, N, C, c.rms_norm_eps, s));
    SR_RETURN_IF_ERROR(observe(LinearGroup::kQkv, normed, C));
    if (stop(LinearGroup::kQkv)) return absl::OkStatus();
    SR_RETURN_IF_ERROR(matmul_forward(q, normed, w.q_proj, w.q_bias, N, C, QD, s));
    SR_RETURN_IF_ERROR(matmul_forward(k, normed, w.k_proj, w.k_bias, N, C, KVD, s));
    SR_RETURN_IF_ERROR(matmul_forward(v, normed, w.v_proj, w.v_bias, N, C, KVD, s));
    if (c.qk_norm) {
      // In place: the CUDA rmsnorm allows out == inp.
      SR_RETURN_IF_ERROR(rmsnorm_forward(q, nullptr, q, w.q_norm, N * NH, HD, c.rms_norm_eps, s));
      SR_RETURN_IF_ERROR(rmsnorm_forward(k, nullptr, k, w.k_norm, N * NKV, HD, c.rms_norm_eps, s));
    }
    SR_RETURN_IF_ERROR(rope_forward(q, q, ws.cos(), ws.sin(), batch, seqlen, NH, HD, s));
    SR_RETURN_IF_ERROR(rope_forward(k, k, ws.cos(), ws.sin(), batch, seqlen, NKV, HD, s));
    SR_RETURN_IF_ERROR(attention_forward(b.attention, q, k, v, batch, seqlen, NH, NKV, HD,
                                         c.LayerSlidingWindow(layer).value_or(0), s));
  }
  if (start_block <= 1) {
    SR_RETURN_IF_ERROR(observe(LinearGroup::kO, b.attention, QD));
    if (stop(LinearGroup::kO)) return absl::OkStatus();
    SR_RETURN_IF_ERROR(matmul_forward(proj, b.attention, w.o_proj, w.o_bias, N, QD, C, s));
    SR_RETURN_IF_ERROR(residual_forward(b.middle, b.input, proj, NC, s));
  }
  if (start_block <= 2) {
    // MLP block: down(silu(gate(x)) * up(x)).
    T* gate = ws.activation();  // swiglu may write over it (b.activation may be it)
    T* up = ws.up();
    SR_RETURN_IF_ERROR(rmsnorm_forward(normed, nullptr, b.middle, w.post_attention_layernorm, N, C,
                                       c.rms_norm_eps, s));
    SR_RETURN_IF_ERROR(observe(LinearGroup::kGateUp, normed, C));
    if (stop(LinearGroup::kGateUp)) return absl::OkStatus();
    SR_RETURN_IF_ERROR(matmul_forward(gate, normed, w.gate_proj, nullptr, N, C, I, s));
    SR_RETURN_IF_ERROR(matmul_forward(up, normed, w.up_proj, nullptr, N, C, I, s));
    SR_RETURN_IF_ERROR(swiglu_forward(b.activation, gate, up, rows_long * I, s));
  }
  SR_RETURN_IF_ERROR(observe(LinearGroup::kDown, b.activation, I));
  if (stop(LinearGroup::kDown)) return absl::OkStatus();
  SR_RETURN_IF_ERROR(matmul_forward(proj, b.activation, w.down_proj, nullptr, N, I, C, s));
  SR_RETURN_IF_ERROR(residual_forward(b.output, b.middle, proj, NC, s));
  return absl::OkStatus();
}

template absl::Status CudaLayerForwardStaged<float>(const ModelConfig&, int, const CudaLayerWeightsOf<float>&, int,
                                                    int, const CudaLayerBuffersOf<float>&, int,
                                                    CudaLayerWorkspaceOf<float>&,
                                                    const CudaLinearInputObserverOf<float>&, cudaStream_t,
                                                    std::optional<LinearGroup>);
template absl::Status CudaLayerForwardStaged<__nv_bfloat16>(
    const ModelConfig&, int, const CudaLayerWeightsOf<__nv_bfloat16>&, int, int,
    const CudaLayerBuffersOf<__nv_bfloat16>&, int, CudaLayerWorkspaceOf<__nv_bfloat16>&,
    const CudaLinearInputObserverOf<__nv_bfloat16>&, cudaStream_t, std::optional<LinearGroup>);

absl::Status CudaLayerForward(const ModelConfig& c, int layer, const CudaLayerWeights& w, int batch,
                              int seqlen, float* hidden, CudaLayerWorkspace& ws, cudaStream_t s) {
  CudaLayerBuffers b;
  b.input = hidden;
  b.attention = ws.attention();
  b.middle = hidden;  // in place, as the CPU forward
  b.activation = ws.activation();
  b.output = hidden;
  return CudaLayerForwardStaged<float>(c, layer, w, batch, seqlen, b, 0, ws, {}, s);
}

absl::StatusOr<const float*> LlamaCudaModel::Upload(const float* host, size_t n) {
  if (host == nullptr) return static_cast<const float*>(nullptr);
  SR_ASSIGN_OR_RETURN(DeviceBuffer<float> buf,
                      DeviceBuffer<float>::FromHost(absl::MakeConstSpan(host, n), stream_));
  weights_.push_back(std::move(buf));
  return static_cast<const float*>(weights_.back().data());
}

absl::StatusOr<std::unique_ptr<LlamaCudaModel>> LlamaCudaModel::FromCpu(
    const LlamaModel& cpu_model) {
  const ModelConfig& c = cpu_model.config();
  SR_RETURN_IF_ERROR(CheckCudaForwardSupport(c));
  std::unique_ptr<LlamaCudaModel> m(new LlamaCudaModel());
  m->config_ = c;
  m->inv_freq_ = cpu_model.rope_inv_freq();  // the CPU model's, so both use the same table
  SR_CUDA_RETURN_IF_ERROR(cudaStreamCreate(&m->stream_));

  const float* host_embed = nullptr;
  const float* host_norm = nullptr;
  const float* host_lm_head = nullptr;
  for (const LlamaModel::NamedParameter& p : cpu_model.Parameters()) {
    if (p.name == "model.embed_tokens.weight") host_embed = p.data;
    if (p.name == "model.norm.weight") host_norm = p.data;
    if (p.name == "lm_head.weight") host_lm_head = p.data;
  }
  if (host_embed == nullptr || host_norm == nullptr ||
      (!c.tie_word_embeddings && host_lm_head == nullptr)) {
    return absl::InvalidArgumentError("LlamaCudaModel: model lacks embed_tokens, norm or lm_head");
  }
  const size_t C = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const size_t QD = c.q_dim(), KVD = c.kv_dim(), HD = c.head_dim;
  SR_ASSIGN_OR_RETURN(m->embed_tokens_, m->Upload(host_embed, V * C));
  SR_ASSIGN_OR_RETURN(m->final_norm_, m->Upload(host_norm, C));
  if (c.tie_word_embeddings) {
    m->lm_head_ = m->embed_tokens_;
  } else {
    SR_ASSIGN_OR_RETURN(m->lm_head_, m->Upload(host_lm_head, V * C));
  }
  m->layers_.resize(c.num_hidden_layers);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& w = cpu_model.layer(l);
    SR_RETURN_IF_ERROR(CheckLayerViews(c, l, w));
    CudaLayerWeights& d = m->layers_[l];
    SR_ASSIGN_OR_RETURN(d.input_layernorm, m->Upload(w.input_layernorm, C));
    SR_ASSIGN_OR_RETURN(d.q_proj, m->Upload(w.q_proj, QD * C));
    SR_ASSIGN_OR_RETURN(d.k_proj, m->Upload(w.k_proj, KVD * C));
    SR_ASSIGN_OR_RETURN(d.v_proj, m->Upload(w.v_proj, KVD * C));
    SR_ASSIGN_OR_RETURN(d.q_bias, m->Upload(w.q_bias, QD));
    SR_ASSIGN_OR_RETURN(d.k_bias, m->Upload(w.k_bias, KVD));
    SR_ASSIGN_OR_RETURN(d.v_bias, m->Upload(w.v_bias, KVD));
    if (c.qk_norm) {
      SR_ASSIGN_OR_RETURN(d.q_norm, m->Upload(w.q_norm, HD));
      SR_ASSIGN_OR_RETURN(d.k_norm, m->Upload(w.k_norm, HD));
    }
    SR_ASSIGN_OR_RETURN(d.o_proj, m->Upload(w.o_proj, C * QD));
    SR_ASSIGN_OR_RETURN(d.o_bias, m->Upload(w.o_bias, C));
    SR_ASSIGN_OR_RETURN(d.post_attention_layernorm, m->Upload(w.post_attention_layernorm, C));
    SR_ASSIGN_OR_RETURN(d.gate_proj, m->Upload(w.gate_proj, I * C));
    SR_ASSIGN_OR_RETURN(d.up_proj, m->Upload(w.up_proj, I * C));
    SR_ASSIGN_OR_RETURN(d.down_proj, m->Upload(w.down_proj, C * I));
  }
  return m;
}

absl::Status LlamaCudaModel::Forward(std::span<const int32_t> tokens, int batch, int seqlen,
                                     std::span<float> logits_host) {
  const ModelConfig& c = config_;
  if (batch <= 0 || seqlen <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("LlamaCudaModel::Forward: batch ", batch,
                                                   " and seqlen ", seqlen, " must be positive"));
  }
  const long rows_long = static_cast<long>(batch) * seqlen;
  if (rows_long > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError("LlamaCudaModel::Forward: batch * seqlen too large");
  }
  if (static_cast<long>(tokens.size()) != rows_long) {
    return absl::InvalidArgumentError(absl::StrCat("LlamaCudaModel::Forward: ", tokens.size(),
                                                   " tokens for batch ", batch, " x seqlen ",
                                                   seqlen));
  }
  const int N = static_cast<int>(rows_long);
  const int C = c.hidden_size, V = c.vocab_size;
  if (static_cast<long>(logits_host.size()) != rows_long * V) {
    return absl::InvalidArgumentError(absl::StrCat("LlamaCudaModel::Forward: logits has ",
                                                   logits_host.size(), " floats, expected ",
                                                   rows_long * V));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= V) {
      return absl::InvalidArgumentError(absl::StrCat("LlamaCudaModel::Forward: token id ",
                                                     tokens[i], " at index ", i,
                                                     " is outside [0, ", V, ")"));
    }
  }

  const size_t n = static_cast<size_t>(N);
  cudaStream_t s = stream_;
  SR_ASSIGN_OR_RETURN(auto d_tokens, DeviceBuffer<int32_t>::FromHost(
                                         absl::MakeConstSpan(tokens.data(), tokens.size()), s));
  SR_ASSIGN_OR_RETURN(CudaLayerWorkspace ws,
                      CudaLayerWorkspace::Create(c, inv_freq_, rows_long, seqlen, s));
  SR_ASSIGN_OR_RETURN(auto x, DeviceBuffer<float>::Create(n * C));
  SR_ASSIGN_OR_RETURN(auto normed, DeviceBuffer<float>::Create(n * C));
  SR_ASSIGN_OR_RETURN(auto logits, DeviceBuffer<float>::Create(n * V));

  SR_RETURN_IF_ERROR(embedding_forward(x.data(), d_tokens.data(), embed_tokens_, N, V, C, s));
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    SR_RETURN_IF_ERROR(CudaLayerForward(c, l, layers_[l], batch, seqlen, x.data(), ws, s));
  }
  // Head: final RMSNorm then lm_head.
  SR_RETURN_IF_ERROR(
      rmsnorm_forward(normed.data(), nullptr, x.data(), final_norm_, N, C, c.rms_norm_eps, s));
  SR_RETURN_IF_ERROR(matmul_forward(logits.data(), normed.data(), lm_head_, nullptr, N, C, V, s));
  // Synchronises the stream: any error raised while the kernels ran shows here.
  SR_RETURN_IF_ERROR(
      logits.CopyToHost(absl::MakeSpan(logits_host.data(), logits_host.size()), s));
  return absl::OkStatus();
}

}  // namespace shrinkray
