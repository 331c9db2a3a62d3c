#include "core/model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/io/quantized_reader.h"
#include "core/kernels/cpu/ops.h"
#include "core/util/parallel.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::Status ValidateConfig(const ModelConfig& c) {
  if (c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_hidden_layers <= 0 ||
      c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 || c.head_dim <= 0 ||
      c.vocab_size <= 0) {
    return absl::InvalidArgumentError("model config has a non-positive size");
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_key_value_heads ", c.num_key_value_heads,
                                                   " does not divide num_attention_heads ",
                                                   c.num_attention_heads));
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("head_dim ", c.head_dim, " must be even"));
  }
  if (!(c.rope_theta > 0.0) || !(c.rms_norm_eps > 0.0f)) {
    return absl::InvalidArgumentError("rope_theta and rms_norm_eps must be positive");
  }
  return absl::OkStatus();
}

// RoPE inverse frequencies 1/theta^(2i/d), with llama3 rope_scaling applied as
// transformers' _compute_llama3_parameters does: long wavelengths are divided by
// `factor`, short ones kept, and the band between interpolated smoothly.
std::vector<double> ComputeInvFreq(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = 1.0 / std::pow(c.rope_theta, 2.0 * i / c.head_dim);
  }
  if (c.rope_scaling.has_value() && c.rope_scaling->rope_type == "llama3") {
    const RopeScaling& s = *c.rope_scaling;
    const double old_context = s.original_max_position_embeddings;
    const double low_freq_wavelen = old_context / s.low_freq_factor;
    const double high_freq_wavelen = old_context / s.high_freq_factor;
    for (double& f : inv_freq) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen < high_freq_wavelen) continue;  // high frequency: unchanged
      if (wavelen > low_freq_wavelen) {
        f /= s.factor;  // low frequency: fully interpolated
        continue;
      }
      const double smooth =
          (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      f = (1.0 - smooth) * f / s.factor + smooth * f;
    }
  }
  return inv_freq;
}

}  // namespace

absl::Status CheckLayerWeightViews(const ModelConfig& c, int layer, const LayerWeights& w, const char* who) {
  if (w.input_layernorm == nullptr || w.q_proj == nullptr || w.k_proj == nullptr || w.v_proj == nullptr ||
      w.o_proj == nullptr || w.post_attention_layernorm == nullptr || w.gate_proj == nullptr ||
      w.up_proj == nullptr || w.down_proj == nullptr || (c.qk_norm && (w.q_norm == nullptr || w.k_norm == nullptr))) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": layer ", layer, " is missing a weight view"));
  }
  return absl::OkStatus();
}

std::vector<double> RopeInverseFrequencies(const ModelConfig& config) {
  return ComputeInvFreq(config);
}

template <typename T>
void RopeTables(const std::vector<double>& inv_freq, int seqlen, std::vector<T>* cos, std::vector<T>* sin) {
  const size_t half = inv_freq.size();
  cos->assign(static_cast<size_t>(seqlen) * half, T(0));
  sin->assign(cos->size(), T(0));
  for (int t = 0; t < seqlen; ++t) {
    for (size_t i = 0; i < half; ++i) {
      const double angle = t * inv_freq[i];
      (*cos)[t * half + i] = static_cast<T>(std::cos(angle));
      (*sin)[t * half + i] = static_cast<T>(std::sin(angle));
    }
  }
}

template void RopeTables<float>(const std::vector<double>&, int, std::vector<float>*, std::vector<float>*);
template void RopeTables<double>(const std::vector<double>&, int, std::vector<double>*, std::vector<double>*);

template <typename Self, typename Fn>
void LlamaModel::VisitEmbeddings(Self& self, Fn&& fn) {
  const ModelConfig& c = self.config_;
  fn(std::string("model.embed_tokens.weight"),
     std::vector<int64_t>{c.vocab_size, c.hidden_size}, self.embed_tokens_);
}

template <typename Self, typename Fn>
void LlamaModel::VisitLayer(Self& self, int i, Fn&& fn) {
  const ModelConfig& c = self.config_;
  const int64_t C = c.hidden_size, I = c.intermediate_size;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim(), hd = c.head_dim;
  auto& w = self.layers_[i];
  const std::string p = absl::StrCat("model.layers.", i, ".");
  fn(p + "input_layernorm.weight", std::vector<int64_t>{C}, w.input_layernorm);
  fn(p + "self_attn.q_proj.weight", std::vector<int64_t>{qd, C}, w.q_proj);
  fn(p + "self_attn.k_proj.weight", std::vector<int64_t>{kvd, C}, w.k_proj);
  fn(p + "self_attn.v_proj.weight", std::vector<int64_t>{kvd, C}, w.v_proj);
  if (c.attention_bias) {
    fn(p + "self_attn.q_proj.bias", std::vector<int64_t>{qd}, w.q_bias);
    fn(p + "self_attn.k_proj.bias", std::vector<int64_t>{kvd}, w.k_bias);
    fn(p + "self_attn.v_proj.bias", std::vector<int64_t>{kvd}, w.v_bias);
  }
  if (c.qk_norm) {
    fn(p + "self_attn.q_norm.weight", std::vector<int64_t>{hd}, w.q_norm);
    fn(p + "self_attn.k_norm.weight", std::vector<int64_t>{hd}, w.k_norm);
  }
  fn(p + "self_attn.o_proj.weight", std::vector<int64_t>{C, qd}, w.o_proj);
  if (c.o_proj_bias) fn(p + "self_attn.o_proj.bias", std::vector<int64_t>{C}, w.o_bias);
  fn(p + "post_attention_layernorm.weight", std::vector<int64_t>{C}, w.post_attention_layernorm);
  fn(p + "mlp.gate_proj.weight", std::vector<int64_t>{I, C}, w.gate_proj);
  fn(p + "mlp.up_proj.weight", std::vector<int64_t>{I, C}, w.up_proj);
  fn(p + "mlp.down_proj.weight", std::vector<int64_t>{C, I}, w.down_proj);
}

template <typename Self, typename Fn>
void LlamaModel::VisitHead(Self& self, Fn&& fn) {
  const ModelConfig& c = self.config_;
  fn(std::string("model.norm.weight"), std::vector<int64_t>{c.hidden_size}, self.final_norm_);
  if (!c.tie_word_embeddings) {
    fn(std::string("lm_head.weight"), std::vector<int64_t>{c.vocab_size, c.hidden_size},
       self.lm_head_);
  }
}

template <typename Self, typename Fn>
void LlamaModel::VisitParameters(Self& self, Fn&& fn) {
  VisitEmbeddings(self, fn);
  for (int i = 0; i < self.config_.num_hidden_layers; ++i) VisitLayer(self, i, fn);
  VisitHead(self, fn);
}

template <typename Visit>
absl::Status LlamaModel::ReadInto(const Checkpoint& checkpoint,
                                  const CheckpointQuantization& quantization,
                                  std::vector<float>& arena, Visit&& visit) {
  // Two passes: size the arena, then point every view into it and fill it.
  int64_t total = 0;
  visit([&](const std::string&, const std::vector<int64_t>& shape, float*&) {
    total += Numel(shape);
  });
  arena.resize(static_cast<size_t>(total));
  int64_t offset = 0;
  absl::Status status;
  visit([&](const std::string& name, const std::vector<int64_t>& shape, float*& slot) {
    const int64_t n = Numel(shape);
    slot = arena.data() + offset;
    offset += n;
    if (!status.ok()) return;
    status = ReadWeightF32Into(checkpoint, quantization, name,
                               std::span<float>(slot, static_cast<size_t>(n)), shape);
  });
  return status;
}

LlamaModel::~LlamaModel() = default;

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const std::filesystem::path& dir) {
  SR_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  SR_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  return FromCheckpoint(config, *checkpoint);
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::FromCheckpoint(
    const ModelConfig& config, const Checkpoint& checkpoint) {
  SR_RETURN_IF_ERROR(ValidateConfig(config));
  std::unique_ptr<LlamaModel> model(new LlamaModel());
  model->config_ = config;
  model->layers_.resize(config.num_hidden_layers);
  model->inv_freq_ = ComputeInvFreq(config);
  // Linears may be stored quantized (GPTQ, compressed-tensors): read them
  // back dequantized, so that every output format of shrinkray evaluates.
  SR_ASSIGN_OR_RETURN(const CheckpointQuantization quantization,
                      ParseCheckpointQuantization(QuantizationConfigOf(config.raw)));
  SR_RETURN_IF_ERROR(ReadInto(checkpoint, quantization, model->arena_,
                              [&](auto&& fn) { VisitParameters(*model, fn); }));
  model->lm_head_ = config.tie_word_embeddings ? model->embed_tokens_ : model->lm_head_;
  return model;
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::OpenStreaming(
    const ModelConfig& config, const Checkpoint& checkpoint) {
  SR_RETURN_IF_ERROR(ValidateConfig(config));
  std::unique_ptr<LlamaModel> model(new LlamaModel());
  model->config_ = config;
  model->layers_.resize(config.num_hidden_layers);
  model->layer_arenas_.resize(config.num_hidden_layers);
  model->inv_freq_ = ComputeInvFreq(config);
  SR_ASSIGN_OR_RETURN(CheckpointQuantization quantization,
                      ParseCheckpointQuantization(QuantizationConfigOf(config.raw)));
  // Fail now rather than hours into a run on a missing or misshapen tensor.
  absl::Status status;
  VisitParameters(*model, [&](const std::string& name, const std::vector<int64_t>& shape,
                              float*&) {
    if (!status.ok()) return;
    absl::StatusOr<const TensorInfo*> info = checkpoint.Find(name);
    if (!info.ok()) {
      // A quantized Linear is stored under other names; it is checked when read.
      if (quantization.method == CheckpointQuantization::Method::kNone) status = info.status();
      return;
    }
    if ((*info)->shape != shape) {
      status = absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' in ", checkpoint.dir().string(), " has shape [",
          absl::StrJoin((*info)->shape, ", "), "] vs expected [", absl::StrJoin(shape, ", "), "]"));
    }
  });
  SR_RETURN_IF_ERROR(status);
  model->checkpoint_ = &checkpoint;
  model->quantization_ = std::make_unique<CheckpointQuantization>(std::move(quantization));
  return model;
}

absl::Status LlamaModel::CheckStreaming(const char* what) const {
  if (streaming()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(what, ": the model was not opened for streaming (OpenStreaming)"));
}

absl::Status LlamaModel::LoadLayer(int layer) {
  SR_RETURN_IF_ERROR(CheckStreaming("LoadLayer"));
  if (layer < 0 || layer >= config_.num_hidden_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("LoadLayer: layer ", layer, " outside [0, ", config_.num_hidden_layers, ")"));
  }
  if (layer_loaded(layer)) return absl::OkStatus();
  {
    std::lock_guard<std::mutex> lock(spare_arena_mutex_);
    layer_arenas_[layer].swap(spare_arena_);  // ReadInto overwrites every value
  }
  absl::Status status = ReadInto(*checkpoint_, *quantization_, layer_arenas_[layer],
                                 [&](auto&& fn) { VisitLayer(*this, layer, fn); });
  checkpoint_->ReleasePages(absl::StrCat("model.layers.", layer, "."));
  if (!status.ok()) ReleaseLayer(layer);
  return status;
}

void LlamaModel::ReleaseLayer(int layer) {
  if (!streaming() || layer < 0 || layer >= config_.num_hidden_layers) return;
  layers_[layer] = LayerWeights{};
  std::vector<float> arena;
  arena.swap(layer_arenas_[layer]);
  std::lock_guard<std::mutex> lock(spare_arena_mutex_);
  if (arena.capacity() > spare_arena_.capacity()) spare_arena_.swap(arena);  // the other is freed
}

bool LlamaModel::layer_loaded(int layer) const {
  if (layer < 0 || layer >= config_.num_hidden_layers) return false;
  return !streaming() || !layer_arenas_[layer].empty();
}

absl::Status LlamaModel::LoadEmbeddings() {
  SR_RETURN_IF_ERROR(CheckStreaming("LoadEmbeddings"));
  if (!embed_arena_.empty()) return absl::OkStatus();
  absl::Status status = ReadInto(*checkpoint_, *quantization_, embed_arena_,
                                 [&](auto&& fn) { VisitEmbeddings(*this, fn); });
  checkpoint_->ReleasePages("model.embed_tokens.");
  if (!status.ok()) {
    ReleaseEmbeddings();
    return status;
  }
  if (config_.tie_word_embeddings) lm_head_ = embed_tokens_;
  return absl::OkStatus();
}

void LlamaModel::ReleaseEmbeddings() {
  if (!streaming()) return;
  std::vector<float>().swap(embed_arena_);
  embed_tokens_ = nullptr;
  if (config_.tie_word_embeddings) lm_head_ = nullptr;
}

absl::Status LlamaModel::LoadHead() {
  SR_RETURN_IF_ERROR(CheckStreaming("LoadHead"));
  if (!head_arena_.empty()) return absl::OkStatus();
  absl::Status status = ReadInto(*checkpoint_, *quantization_, head_arena_,
                                 [&](auto&& fn) { VisitHead(*this, fn); });
  checkpoint_->ReleasePages("model.norm.");
  checkpoint_->ReleasePages("lm_head.");
  if (!status.ok()) ReleaseHead();
  return status;
}

void LlamaModel::ReleaseHead() {
  if (!streaming()) return;
  std::vector<float>().swap(head_arena_);
  final_norm_ = nullptr;
  if (!config_.tie_word_embeddings) lm_head_ = nullptr;
}

long LlamaModel::num_parameters() const {
  long total = 0;
  VisitParameters(*this, [&](const std::string&, const std::vector<int64_t>& shape,
                             float* const&) { total += static_cast<long>(Numel(shape)); });
  return total;
}

std::vector<LlamaModel::NamedParameter> LlamaModel::Parameters() const {
  std::vector<NamedParameter> out;
  auto add = [&](int layer) {
    return [&out, layer](const std::string& name, const std::vector<int64_t>& shape,
                         float* const& slot) { out.push_back({name, shape, slot, layer}); };
  };
  VisitEmbeddings(*this, add(-1));
  for (int i = 0; i < config_.num_hidden_layers; ++i) VisitLayer(*this, i, add(i));
  VisitHead(*this, add(-1));
  return out;
}

std::vector<LlamaModel::NamedParameter> LlamaModel::LayerParameters(int layer) const {
  std::vector<NamedParameter> out;
  if (layer < 0 || layer >= config_.num_hidden_layers) return out;
  VisitLayer(*this, layer,
             [&](const std::string& name, const std::vector<int64_t>& shape, float* const& slot) {
               out.push_back({name, shape, slot, layer});
             });
  return out;
}

absl::StatusOr<std::vector<float>> LlamaModel::ReadParameter(const NamedParameter& p) const {
  if (p.data != nullptr) return std::vector<float>(p.data, p.data + Numel(p.shape));
  SR_RETURN_IF_ERROR(CheckStreaming("ReadParameter"));
  SR_ASSIGN_OR_RETURN(std::vector<float> values,
                      ReadWeightF32(*checkpoint_, *quantization_, p.name, p.shape));
  checkpoint_->ReleasePages(p.name);
  return values;
}

absl::Status LlamaModel::Forward(std::span<const int32_t> tokens, int batch, int seqlen,
                                 std::span<float> logits) const {
  if (batch <= 0 || seqlen <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Forward: batch ", batch, " and seqlen ", seqlen, " must be positive"));
  }
  const long rows = static_cast<long>(batch) * seqlen;
  if (static_cast<long>(tokens.size()) != rows) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: ", tokens.size(), " tokens for batch ",
                                                   batch, " x seqlen ", seqlen));
  }
  std::vector<float> hidden(static_cast<size_t>(rows) * config_.hidden_size);
  SR_RETURN_IF_ERROR(Embed(tokens, hidden));
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    SR_RETURN_IF_ERROR(LayerForward(l, layers_[l], batch, seqlen, hidden));
  }
  return Head(hidden, rows, logits);
}

absl::Status LlamaModel::Embed(std::span<const int32_t> tokens, std::span<float> hidden) const {
  const long C = config_.hidden_size;
  if (embed_tokens_ == nullptr) {
    return absl::FailedPreconditionError("Embed: the embeddings are not loaded (LoadEmbeddings)");
  }
  if (hidden.size() != tokens.size() * C) {
    return absl::InvalidArgumentError(
        absl::StrCat("Embed: hidden has ", hidden.size(), " floats, expected ", tokens.size() * C));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t id = tokens[i];
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("Embed: token id ", id, " at index ", i,
                                                     " is outside [0, ", config_.vocab_size, ")"));
    }
    std::memcpy(hidden.data() + i * C, embed_tokens_ + id * C, C * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::LayerForward(int layer, const LayerWeights& w, int batch, int seqlen,
                                      std::span<float> hidden,
                                      const LinearInputObserver& observer) const {
  if (layer < 0 || layer >= config_.num_hidden_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("LayerForward: layer ", layer, " outside [0, ", config_.num_hidden_layers, ")"));
  }
  if (batch <= 0 || seqlen <= 0) {
    return absl::InvalidArgumentError("LayerForward: batch and seqlen must be positive");
  }
  const long rows = static_cast<long>(batch) * seqlen;
  if (static_cast<long>(hidden.size()) != rows * config_.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat("LayerForward: hidden has ", hidden.size(),
                                                   " floats, expected ", rows * config_.hidden_size));
  }
  std::vector<float> attention(static_cast<size_t>(rows) * config_.q_dim());
  std::vector<float> activation(static_cast<size_t>(rows) * config_.intermediate_size);
  LayerBuffers b;
  b.input = hidden.data();
  b.attention = attention.data();
  b.middle = hidden.data();  // in place
  b.activation = activation.data();
  b.output = hidden.data();
  return LayerForwardStaged(layer, w, batch, seqlen, b, 0, observer);
}

absl::Status LlamaModel::LayerForwardStaged(int layer, const LayerWeights& w, int batch, int seqlen,
                                            const LayerBuffers& b, int start_block,
                                            const LinearInputObserver& observer,
                                            std::optional<LinearGroup> stop_after) const {
  const ModelConfig& c = config_;
  if (layer < 0 || layer >= c.num_hidden_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("LayerForward: layer ", layer, " outside [0, ", c.num_hidden_layers, ")"));
  }
  if (batch <= 0 || seqlen <= 0) {
    return absl::InvalidArgumentError("LayerForward: batch and seqlen must be positive");
  }
  if (start_block < 0 || start_block > 3) {
    return absl::InvalidArgumentError(absl::StrCat("LayerForward: start block ", start_block));
  }
  const long rows_long = static_cast<long>(batch) * seqlen;
  // cblas takes int sizes.
  if (rows_long > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError("LayerForward: batch * seqlen too large");
  }
  const int N = static_cast<int>(rows_long);
  const int C = c.hidden_size, I = c.intermediate_size;
  const int NH = c.num_attention_heads, NKV = c.num_key_value_heads, HD = c.head_dim;
  const int QD = c.q_dim(), KVD = c.kv_dim();
  SR_RETURN_IF_ERROR(CheckLayerWeightViews(c, layer, w, "LayerForward"));
  auto observe = [&](LinearGroup group, const float* x, int cols) {
    if (observer) observer(layer, group, x, rows_long, cols);
  };
  auto stop = [&](LinearGroup group) { return stop_after.has_value() && *stop_after == group; };
  const size_t n = static_cast<size_t>(N);
  std::vector<float> normed(n * C);
  std::vector<float> proj(n * C);

  if (start_block <= 0) {
    // Attention block.
    rmsnorm_forward(normed.data(), nullptr, b.input, w.input_layernorm, N, C, c.rms_norm_eps);
    observe(LinearGroup::kQkv, normed.data(), C);
    if (stop(LinearGroup::kQkv)) return absl::OkStatus();
    std::vector<float> q(n * QD), k(n * KVD), v(n * KVD);
    matmul_forward(q.data(), normed.data(), w.q_proj, w.q_bias, N, C, QD);
    matmul_forward(k.data(), normed.data(), w.k_proj, w.k_bias, N, C, KVD);
    matmul_forward(v.data(), normed.data(), w.v_proj, w.v_bias, N, C, KVD);
    if (c.qk_norm) {
      // Qwen3: RMSNorm over each head's vector, before RoPE (rows are [token, head]).
      rmsnorm_forward(q.data(), nullptr, q.data(), w.q_norm, N * NH, HD, c.rms_norm_eps);
      rmsnorm_forward(k.data(), nullptr, k.data(), w.k_norm, N * NKV, HD, c.rms_norm_eps);
    }
    // Positions restart at 0 in each row.
    std::vector<float> cos_table, sin_table;
    RopeTables(inv_freq_, seqlen, &cos_table, &sin_table);
    rope_forward(q.data(), q.data(), cos_table.data(), sin_table.data(), batch, seqlen, NH, HD);
    rope_forward(k.data(), k.data(), cos_table.data(), sin_table.data(), batch, seqlen, NKV, HD);
    attention_forward(b.attention, q.data(), k.data(), v.data(), batch, seqlen, NH, NKV, HD,
                      c.LayerSlidingWindow(layer).value_or(0));
  }
  if (start_block <= 1) {
    observe(LinearGroup::kO, b.attention, QD);
    if (stop(LinearGroup::kO)) return absl::OkStatus();
    matmul_forward(proj.data(), b.attention, w.o_proj, w.o_bias, N, QD, C);
    residual_forward(b.middle, b.input, proj.data(), static_cast<long>(n * C));
  }
  if (start_block <= 2) {
    // MLP block: down(silu(gate(x)) * up(x)).
    rmsnorm_forward(normed.data(), nullptr, b.middle, w.post_attention_layernorm, N, C, c.rms_norm_eps);
    observe(LinearGroup::kGateUp, normed.data(), C);
    if (stop(LinearGroup::kGateUp)) return absl::OkStatus();
    std::vector<float> gate(n * I), up(n * I);
    matmul_forward(gate.data(), normed.data(), w.gate_proj, nullptr, N, C, I);
    matmul_forward(up.data(), normed.data(), w.up_proj, nullptr, N, C, I);
    // Element-wise and exp-heavy: split across threads by blocks of rows.
    constexpr int kRowsPerTask = 16;
    ParallelFor((N + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t task) {
      const long begin = task * kRowsPerTask * static_cast<long>(I);
      const long end = std::min<long>(n * I, begin + kRowsPerTask * static_cast<long>(I));
      swiglu_forward(b.activation + begin, gate.data() + begin, up.data() + begin, end - begin);
    });
  }
  observe(LinearGroup::kDown, b.activation, I);
  if (stop(LinearGroup::kDown)) return absl::OkStatus();
  matmul_forward(proj.data(), b.activation, w.down_proj, nullptr, N, I, C);
  residual_forward(b.output, b.middle, proj.data(), static_cast<long>(n * C));
  return absl::OkStatus();
}

absl::Status LlamaModel::Head(std::span<const float> hidden, long rows,
                              std::span<float> logits) const {
  const long C = config_.hidden_size, V = config_.vocab_size;
  if (rows <= 0 || rows > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("Head: rows ", rows, " out of range"));
  }
  if (static_cast<long>(hidden.size()) != rows * C ||
      static_cast<long>(logits.size()) != rows * V) {
    return absl::InvalidArgumentError(absl::StrCat("Head: hidden has ", hidden.size(),
                                                   " floats and logits ", logits.size(),
                                                   ", expected ", rows * C, " and ", rows * V));
  }
  if (final_norm_ == nullptr || lm_head_ == nullptr) {
    return absl::FailedPreconditionError(
        "Head: the final norm or lm_head is not loaded (LoadHead; LoadEmbeddings when tied)");
  }
  std::vector<float> normed(static_cast<size_t>(rows * C));
  rmsnorm_forward(normed.data(), nullptr, hidden.data(), final_norm_, static_cast<int>(rows),
                  static_cast<int>(C), config_.rms_norm_eps);
  matmul_forward(logits.data(), normed.data(), lm_head_, nullptr, static_cast<int>(rows),
                 static_cast<int>(C), static_cast<int>(V));
  return absl::OkStatus();
}

}  // namespace shrinkray
