#include "core/kernels/cuda/llama_cuda_trainer.h"

#include <cublas_v2.h>

#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/kernels/cuda/blas.h"
#include "core/kernels/cuda/ops.h"
#include "core/kernels/cuda/random_cuda.h"
#include "core/kernels/cuda/train_ops.h"
#include "core/model/llama.h"
#include "core/train/backward_ops.h"
#include "core/util/status_macros.h"

namespace shrinkray {

using bf16 = __nv_bfloat16;

// Gradient all-reduce beside the backward: a thread takes [begin, end) slices
// in the order the backward finishes them, waits for the slice's event and
// runs the (blocking) collective, which NCCL enqueues on its own stream. The
// compute stream goes on with the next layer meanwhile.
struct LlamaCudaTrainer::AllReducer {
  struct Slice {
    cudaEvent_t ready;
    float* data;
    size_t count;
  };
  Communicator* comm;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Slice> queue;
  bool closing = false;
  absl::Status status;
  std::thread thread;

  explicit AllReducer(Communicator* c) : comm(c) {
    thread = std::thread([this] { Run(); });
  }
  ~AllReducer() { (void)Finish(); }

  void Push(Slice s) {
    {
      std::lock_guard<std::mutex> lock(mu);
      queue.push_back(s);
    }
    cv.notify_one();
  }
  absl::Status Finish() {
    {
      std::lock_guard<std::mutex> lock(mu);
      closing = true;
    }
    cv.notify_one();
    if (thread.joinable()) thread.join();
    return status;
  }
  void Run() {
    for (;;) {
      Slice s;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return closing || !queue.empty(); });
        if (queue.empty()) return;
        s = queue.front();
        queue.pop_front();
      }
      if (!status.ok()) continue;  // drain after an error
      if (cudaError_t e = cudaEventSynchronize(s.ready); e != cudaSuccess) {
        status = absl::InternalError(
            absl::StrCat("gradient all-reduce: waiting for the backward: ", cudaGetErrorString(e)));
        continue;
      }
      status = comm->AllReduce(s.data, s.count, CommDType::kF32, ReduceOp::kSum);
    }
  }
};

LlamaCudaTrainer::~LlamaCudaTrainer() {
  reducer_.reset();
  for (cudaEvent_t e : layer_done_) (void)cudaEventDestroy(e);
}

absl::StatusOr<std::unique_ptr<LlamaCudaTrainer>> LlamaCudaTrainer::Create(
    const ModelConfig& config, Mode mode, int max_batch, int max_seqlen, cudaStream_t stream) {
  SR_RETURN_IF_ERROR(train::ValidateTrainConfig(config));
  if (config.attention_bias || config.o_proj_bias || config.qk_norm) {
    return absl::UnimplementedError(
        "LlamaCudaTrainer: attention biases and q/k norms are not supported on the GPU yet");
  }
  if (config.rope_scaling.has_value() && config.rope_scaling->rope_type != "llama3") {
    return absl::UnimplementedError(
        absl::StrCat("LlamaCudaTrainer: rope_scaling type '", config.rope_scaling->rope_type, "'"));
  }
  if (max_batch <= 0 || max_seqlen <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("LlamaCudaTrainer: max_batch ", max_batch, " and max_seqlen ", max_seqlen,
                     " must be positive"));
  }
  std::unique_ptr<LlamaCudaTrainer> t(new LlamaCudaTrainer());
  t->config_ = config;
  t->mode_ = mode;
  t->stream_ = stream;
  t->max_rows_ = max_batch * max_seqlen;
  t->max_seqlen_ = max_seqlen;
  t->views_ = train::ParameterLayout(config);
  t->num_params_ = t->views_.back().offset + t->views_.back().numel;
  const int L = config.num_hidden_layers;
  t->layer_offsets_.assign(L, LayerOffsets{});
  for (const train::ParameterView& v : t->views_) {
    const std::string& n = v.name;
    auto ends_with = [&](std::string_view s) {
      return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0;
    };
    if (v.layer < 0) {
      if (n == "model.embed_tokens.weight") t->embed_ = v.offset;
      if (n == "model.norm.weight") t->final_norm_ = v.offset;
      if (n == "lm_head.weight") t->lm_head_ = v.offset;
      continue;
    }
    LayerOffsets& lo = t->layer_offsets_[v.layer];
    if (ends_with("input_layernorm.weight")) lo.ln1 = v.offset, lo.begin = v.offset;
    if (ends_with("q_proj.weight")) lo.q = v.offset;
    if (ends_with("k_proj.weight")) lo.k = v.offset;
    if (ends_with("v_proj.weight")) lo.v = v.offset;
    if (ends_with("o_proj.weight")) lo.o = v.offset;
    if (ends_with("post_attention_layernorm.weight")) lo.ln2 = v.offset;
    if (ends_with("gate_proj.weight")) lo.gate = v.offset;
    if (ends_with("up_proj.weight")) lo.up = v.offset;
    if (ends_with("down_proj.weight")) lo.down = v.offset, lo.end = v.offset + v.numel;
  }
  if (config.tie_word_embeddings) t->lm_head_ = t->embed_;

  SR_ASSIGN_OR_RETURN(t->params_bf16_, DeviceBuffer<bf16>::Create(t->num_params_));
  // fp32 master weights: the whole store in kTrain; kInference keeps only
  // the norm weights in fp32 (rmsnorm reads them so), compactly.
  if (mode == Mode::kTrain) {
    SR_ASSIGN_OR_RETURN(t->params_, DeviceBuffer<float>::Create(t->num_params_));
  } else {
    SR_ASSIGN_OR_RETURN(t->norm_weights_f32_, DeviceBuffer<float>::Create(
                                                  static_cast<size_t>(2 * L + 1) * config.hidden_size));
  }
  if (mode == Mode::kTrain) {
    SR_ASSIGN_OR_RETURN(t->grads_, DeviceBuffer<float>::Create(t->num_params_));
    SR_ASSIGN_OR_RETURN(t->m_, DeviceBuffer<float>::Create(t->num_params_));
    SR_ASSIGN_OR_RETURN(t->v_, DeviceBuffer<float>::Create(t->num_params_));
    SR_RETURN_IF_ERROR(t->grads_.Memset(0, stream));
    SR_RETURN_IF_ERROR(t->m_.Memset(0, stream));
    SR_RETURN_IF_ERROR(t->v_.Memset(0, stream));
    SR_RETURN_IF_ERROR(t->params_.Memset(0, stream));
    SR_ASSIGN_OR_RETURN(t->norm_sq_, DeviceBuffer<float>::Create(1));
    SR_ASSIGN_OR_RETURN(t->clip_scale_, DeviceBuffer<float>::Create(1));
    t->layer_done_.assign(L + 1, nullptr);
    for (cudaEvent_t& e : t->layer_done_) {
      SR_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
  }
  SR_RETURN_IF_ERROR(t->params_bf16_.Memset(0, stream));
  SR_RETURN_IF_ERROR(t->AllocateActivations(t->max_rows_));

  // RoPE tables for max_seqlen (positions restart in every row).
  std::vector<float> cos, sin;
  train::RopeTables<float>(RopeInverseFrequencies(config), max_seqlen, &cos, &sin);
  SR_ASSIGN_OR_RETURN(t->cos_, DeviceBuffer<float>::FromHost(cos, stream));
  SR_ASSIGN_OR_RETURN(t->sin_, DeviceBuffer<float>::FromHost(sin, stream));
  return t;
}

absl::Status LlamaCudaTrainer::AllocateActivations(int rows) {
  const size_t N = rows, C = config_.hidden_size, I = config_.intermediate_size;
  const size_t QD = config_.q_dim(), KVD = config_.kv_dim(), V = config_.vocab_size;
  const size_t NH = config_.num_attention_heads;
  const int L = config_.num_hidden_layers;
  const bool train = mode_ == Mode::kTrain;
  residual_.resize(train ? L + 1 : 2);
  for (auto& r : residual_) {
    SR_ASSIGN_OR_RETURN(r, DeviceBuffer<bf16>::Create(N * C));
  }
  caches_.resize(train ? L : 1);
  for (LayerCache& c : caches_) {
    SR_ASSIGN_OR_RETURN(c.x_mid, DeviceBuffer<bf16>::Create(N * C));
    SR_ASSIGN_OR_RETURN(c.n1, DeviceBuffer<bf16>::Create(N * C));
    SR_ASSIGN_OR_RETURN(c.n2, DeviceBuffer<bf16>::Create(N * C));
    SR_ASSIGN_OR_RETURN(c.q, DeviceBuffer<bf16>::Create(N * QD));
    SR_ASSIGN_OR_RETURN(c.k, DeviceBuffer<bf16>::Create(N * KVD));
    SR_ASSIGN_OR_RETURN(c.v, DeviceBuffer<bf16>::Create(N * KVD));
    SR_ASSIGN_OR_RETURN(c.att, DeviceBuffer<bf16>::Create(N * QD));
    SR_ASSIGN_OR_RETURN(c.gate, DeviceBuffer<bf16>::Create(N * I));
    SR_ASSIGN_OR_RETURN(c.up, DeviceBuffer<bf16>::Create(N * I));
    SR_ASSIGN_OR_RETURN(c.h, DeviceBuffer<bf16>::Create(N * I));
    SR_ASSIGN_OR_RETURN(c.rstd1, DeviceBuffer<float>::Create(N));
    SR_ASSIGN_OR_RETURN(c.rstd2, DeviceBuffer<float>::Create(N));
    SR_ASSIGN_OR_RETURN(c.lse, DeviceBuffer<float>::Create(N * NH));
  }
  SR_ASSIGN_OR_RETURN(n_final_, DeviceBuffer<bf16>::Create(N * C));
  SR_ASSIGN_OR_RETURN(rstd_final_, DeviceBuffer<float>::Create(N));
  SR_ASSIGN_OR_RETURN(logits_, DeviceBuffer<bf16>::Create(N * V));
  SR_ASSIGN_OR_RETURN(tmp_, DeviceBuffer<bf16>::Create(N * C));
  if (train) {
    SR_ASSIGN_OR_RETURN(dx_, DeviceBuffer<bf16>::Create(N * C));
    SR_ASSIGN_OR_RETURN(dn_, DeviceBuffer<bf16>::Create(N * C));
    SR_ASSIGN_OR_RETURN(dh_, DeviceBuffer<bf16>::Create(N * I));
    SR_ASSIGN_OR_RETURN(datt_, DeviceBuffer<bf16>::Create(N * QD));
    SR_ASSIGN_OR_RETURN(dq_, DeviceBuffer<bf16>::Create(N * QD));
    SR_ASSIGN_OR_RETURN(dk_, DeviceBuffer<bf16>::Create(N * KVD));
    SR_ASSIGN_OR_RETURN(dv_, DeviceBuffer<bf16>::Create(N * KVD));
  }
  return absl::OkStatus();
}

// In kInference the norm weights live compactly in norm_weights_f32_: slot
// 2l for layer l's input norm, 2l+1 for its post-attention norm, 2L for the
// final norm.
namespace {
int NormSlot(const train::ParameterView& v, int num_layers) {
  if (v.layer < 0) return v.name == "model.norm.weight" ? 2 * num_layers : -1;
  if (v.name.find("input_layernorm") != std::string::npos) return 2 * v.layer;
  if (v.name.find("post_attention_layernorm") != std::string::npos) return 2 * v.layer + 1;
  return -1;
}
}  // namespace

absl::Status LlamaCudaTrainer::LoadParams(std::span<const float> host) {
  if (host.size() != num_params_) {
    return absl::InvalidArgumentError(absl::StrCat("LlamaCudaTrainer::LoadParams: ", host.size(),
                                                   " values for ", num_params_, " parameters"));
  }
  SR_ASSIGN_OR_RETURN(DeviceBuffer<float> staged,
                      DeviceBuffer<float>::FromHost(absl::MakeConstSpan(host.data(), host.size()),
                                                    stream_));
  SR_RETURN_IF_ERROR(convert_to_bf16(params_bf16_.data(), staged.data(),
                                     static_cast<long>(num_params_), stream_));
  if (mode_ == Mode::kTrain) {
    SR_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(params_.data(), staged.data(), num_params_ * sizeof(float),
                                            cudaMemcpyDeviceToDevice, stream_));
    SR_RETURN_IF_ERROR(grads_.Memset(0, stream_));
    SR_RETURN_IF_ERROR(m_.Memset(0, stream_));
    SR_RETURN_IF_ERROR(v_.Memset(0, stream_));
  } else {
    const size_t C = config_.hidden_size;
    for (const train::ParameterView& v : views_) {
      const int slot = NormSlot(v, config_.num_hidden_layers);
      if (slot < 0) continue;
      SR_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(norm_weights_f32_.data() + slot * C,
                                              staged.data() + v.offset, C * sizeof(float),
                                              cudaMemcpyDeviceToDevice, stream_));
    }
  }
  SR_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));  // `staged` dies here
  return absl::OkStatus();
}

absl::Status LlamaCudaTrainer::InitRandom(uint64_t seed, float stddev) {
  const size_t C = config_.hidden_size;
  for (size_t i = 0; i < views_.size(); ++i) {
    const train::ParameterView& v = views_[i];
    const bool is_norm = v.shape.size() == 1;
    if (mode_ == Mode::kTrain) {
      float* p = params_.data() + v.offset;
      if (is_norm) {
        SR_RETURN_IF_ERROR(fill_constant(p, static_cast<long>(v.numel), 1.0f, stream_));
      } else {
        SR_RETURN_IF_ERROR(fill_random_normal(p, static_cast<long>(v.numel), 0.0f, stddev,
                                              seed + 0x9E3779B97F4A7C15ull * (i + 1), stream_));
      }
      SR_RETURN_IF_ERROR(convert_to_bf16(params_bf16_.data() + v.offset, p,
                                         static_cast<long>(v.numel), stream_));
    } else if (is_norm) {
      const int slot = NormSlot(v, config_.num_hidden_layers);
      if (slot >= 0) {
        SR_RETURN_IF_ERROR(fill_constant(norm_weights_f32_.data() + slot * C,
                                         static_cast<long>(C), 1.0f, stream_));
      }
    } else {
      SR_RETURN_IF_ERROR(fill_random_normal(params_bf16_.data() + v.offset,
                                            static_cast<long>(v.numel), 0.0f, stddev,
                                            seed + 0x9E3779B97F4A7C15ull * (i + 1), stream_));
    }
  }
  if (mode_ == Mode::kTrain) {
    SR_RETURN_IF_ERROR(grads_.Memset(0, stream_));
    SR_RETURN_IF_ERROR(m_.Memset(0, stream_));
    SR_RETURN_IF_ERROR(v_.Memset(0, stream_));
  }
  return absl::OkStatus();
}

absl::Status LlamaCudaTrainer::DownloadParams(std::span<float> host) {
  if (mode_ != Mode::kTrain || host.size() != num_params_) {
    return absl::InvalidArgumentError("LlamaCudaTrainer::DownloadParams: needs kTrain and num_params values");
  }
  return params_.CopyToHost(absl::MakeSpan(host.data(), host.size()), stream_);
}

absl::Status LlamaCudaTrainer::DownloadGrads(std::span<float> host) {
  if (mode_ != Mode::kTrain || host.size() != num_params_) {
    return absl::InvalidArgumentError("LlamaCudaTrainer::DownloadGrads: needs kTrain and num_params values");
  }
  return grads_.CopyToHost(absl::MakeSpan(host.data(), host.size()), stream_);
}

absl::Status LlamaCudaTrainer::DownloadMoments(std::span<float> m, std::span<float> v) {
  if (mode_ != Mode::kTrain || m.size() != num_params_ || v.size() != num_params_) {
    return absl::InvalidArgumentError("LlamaCudaTrainer::DownloadMoments: needs kTrain and num_params values");
  }
  SR_RETURN_IF_ERROR(m_.CopyToHost(absl::MakeSpan(m.data(), m.size()), stream_));
  return v_.CopyToHost(absl::MakeSpan(v.data(), v.size()), stream_);
}

absl::Status LlamaCudaTrainer::LoadMoments(std::span<const float> m, std::span<const float> v) {
  if (mode_ != Mode::kTrain || m.size() != num_params_ || v.size() != num_params_) {
    return absl::InvalidArgumentError("LlamaCudaTrainer::LoadMoments: needs kTrain and num_params values");
  }
  SR_RETURN_IF_ERROR(m_.CopyFromHost(absl::MakeConstSpan(m.data(), m.size()), stream_));
  return v_.CopyFromHost(absl::MakeConstSpan(v.data(), v.size()), stream_);
}

absl::Status LlamaCudaTrainer::ZeroGrads() {
  if (mode_ != Mode::kTrain) return absl::FailedPreconditionError("LlamaCudaTrainer: inference model");
  return grads_.Memset(0, stream_);
}

absl::StatusOr<bf16*> LlamaCudaTrainer::Forward(const int32_t* tokens, int batch, int seqlen) {
  if (batch <= 0 || seqlen <= 0 || seqlen > max_seqlen_ || batch * seqlen > max_rows_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LlamaCudaTrainer::Forward: batch ", batch, " x seqlen ", seqlen, " exceeds the ",
        max_rows_, " rows / seqlen ", max_seqlen_, " it was created for"));
  }
  const ModelConfig& c = config_;
  const int N = batch * seqlen, C = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int QD = c.q_dim(), KVD = c.kv_dim(), NH = c.num_attention_heads;
  const int NKV = c.num_key_value_heads, HD = c.head_dim, L = c.num_hidden_layers;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const bool train = mode_ == Mode::kTrain;
  cudaStream_t s = stream_;
  auto norm_w = [&](size_t offset, int slot) -> const float* {
    return train ? P(offset) : norm_weights_f32_.data() + static_cast<size_t>(slot) * C;
  };

  SR_RETURN_IF_ERROR(embedding_forward(residual_[0].data(), tokens, W(embed_), N, V, C, s));
  for (int l = 0; l < L; ++l) {
    const LayerOffsets& o = layer_offsets_[l];
    LayerCache& lc = caches_[train ? l : 0];
    bf16* x_in = residual_[train ? l : l % 2].data();
    bf16* x_out = residual_[train ? l + 1 : (l + 1) % 2].data();
    const int window = c.LayerSlidingWindow(l).value_or(0);
    SR_RETURN_IF_ERROR(rmsnorm_forward(lc.n1.data(), lc.rstd1.data(), x_in, norm_w(o.ln1, 2 * l), N, C, eps, s));
    SR_RETURN_IF_ERROR(matmul_forward(lc.q.data(), lc.n1.data(), W(o.q), nullptr, N, C, QD, s));
    SR_RETURN_IF_ERROR(matmul_forward(lc.k.data(), lc.n1.data(), W(o.k), nullptr, N, C, KVD, s));
    SR_RETURN_IF_ERROR(matmul_forward(lc.v.data(), lc.n1.data(), W(o.v), nullptr, N, C, KVD, s));
    SR_RETURN_IF_ERROR(rope_forward(lc.q.data(), lc.q.data(), cos_.data(), sin_.data(), batch, seqlen, NH, HD, s));
    SR_RETURN_IF_ERROR(rope_forward(lc.k.data(), lc.k.data(), cos_.data(), sin_.data(), batch, seqlen, NKV, HD, s));
    SR_RETURN_IF_ERROR(attention_forward(lc.att.data(), train ? lc.lse.data() : nullptr, lc.q.data(),
                                         lc.k.data(), lc.v.data(), batch, seqlen, NH, NKV, HD, window, s));
    SR_RETURN_IF_ERROR(matmul_forward(tmp_.data(), lc.att.data(), W(o.o), nullptr, N, QD, C, s));
    SR_RETURN_IF_ERROR(residual_forward(lc.x_mid.data(), x_in, tmp_.data(), static_cast<long>(N) * C, s));
    SR_RETURN_IF_ERROR(rmsnorm_forward(lc.n2.data(), lc.rstd2.data(), lc.x_mid.data(), norm_w(o.ln2, 2 * l + 1), N, C, eps, s));
    SR_RETURN_IF_ERROR(matmul_forward(lc.gate.data(), lc.n2.data(), W(o.gate), nullptr, N, C, I, s));
    SR_RETURN_IF_ERROR(matmul_forward(lc.up.data(), lc.n2.data(), W(o.up), nullptr, N, C, I, s));
    SR_RETURN_IF_ERROR(swiglu_forward(lc.h.data(), lc.gate.data(), lc.up.data(), static_cast<long>(N) * I, s));
    SR_RETURN_IF_ERROR(matmul_forward(tmp_.data(), lc.h.data(), W(o.down), nullptr, N, I, C, s));
    SR_RETURN_IF_ERROR(residual_forward(x_out, lc.x_mid.data(), tmp_.data(), static_cast<long>(N) * C, s));
  }
  const bf16* x_last = residual_[train ? L : L % 2].data();
  SR_RETURN_IF_ERROR(rmsnorm_forward(n_final_.data(), rstd_final_.data(), x_last,
                                     norm_w(final_norm_, 2 * L), N, C, eps, s));
  SR_RETURN_IF_ERROR(matmul_forward(logits_.data(), n_final_.data(), W(lm_head_), nullptr, N, C, V, s));
  tokens_ = tokens;
  batch_ = batch;
  seqlen_ = seqlen;
  have_forward_ = true;
  return logits_.data();
}

absl::Status LlamaCudaTrainer::Loss(const bf16* teacher_logits, const int32_t* targets, float alpha,
                                    float temperature, float inv_rows, float inv_labelled,
                                    float* kl_rows, float* ce_rows) {
  if (mode_ != Mode::kTrain || !have_forward_) {
    return absl::FailedPreconditionError("LlamaCudaTrainer::Loss: needs a kTrain Forward first");
  }
  return distill_loss_backward(logits_.data(), kl_rows, ce_rows, teacher_logits, targets,
                               batch_ * seqlen_, config_.vocab_size, alpha, temperature, inv_rows,
                               inv_labelled, stream_);
}

absl::Status LlamaCudaTrainer::AllReduceLayer(int slot) {
  if (comm_ == nullptr) return absl::OkStatus();
  // slot l < L: layer l; slot L: everything outside the layers, which the
  // backward finishes last (embedding, final norm, lm_head).
  SR_CUDA_RETURN_IF_ERROR(cudaEventRecord(layer_done_[slot], stream_));
  const int L = config_.num_hidden_layers;
  if (slot < L) {
    const LayerOffsets& o = layer_offsets_[slot];
    reducer_->Push({layer_done_[slot], G(o.begin), o.end - o.begin});
  } else {
    const size_t first_layer = layer_offsets_[0].begin;
    const size_t after_layers = layer_offsets_[L - 1].end;
    reducer_->Push({layer_done_[slot], G(0), first_layer});
    reducer_->Push({layer_done_[slot], G(after_layers), num_params_ - after_layers});
  }
  return absl::OkStatus();
}

absl::Status LlamaCudaTrainer::FinishAllReduces() {
  if (reducer_ == nullptr) return absl::OkStatus();
  absl::Status st = reducer_->Finish();
  reducer_.reset();
  return st;
}

absl::Status LlamaCudaTrainer::Backward() {
  if (mode_ != Mode::kTrain || !have_forward_) {
    return absl::FailedPreconditionError("LlamaCudaTrainer::Backward: needs a kTrain Forward first");
  }
  if (comm_ != nullptr && comm_->backend() != "nccl") {
    return absl::FailedPreconditionError(absl::StrCat(
        "LlamaCudaTrainer: gradients live on the device; the '", comm_->backend(),
        "' communicator takes host buffers (use nccl)"));
  }
  if (comm_ != nullptr) reducer_ = std::make_unique<AllReducer>(comm_);
  const ModelConfig& c = config_;
  const int B = batch_, T = seqlen_;
  const int N = B * T, C = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int QD = c.q_dim(), KVD = c.kv_dim(), NH = c.num_attention_heads;
  const int NKV = c.num_key_value_heads, HD = c.head_dim, L = c.num_hidden_layers;
  cudaStream_t s = stream_;

  auto run = [&]() -> absl::Status {
    // lm_head (tied: into the embedding's gradient) and the final norm.
    SR_RETURN_IF_ERROR(matmul_backward(dn_.data(), G(lm_head_), nullptr, logits_.data(),
                                       n_final_.data(), W(lm_head_), N, C, V, 0.0f, s));
    SR_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dx_.data(), 0, static_cast<size_t>(N) * C * sizeof(bf16), s));
    SR_RETURN_IF_ERROR(rmsnorm_backward(dx_.data(), G(final_norm_), dn_.data(), residual_[L].data(),
                                        P(final_norm_), rstd_final_.data(), N, C, s));
    for (int l = L - 1; l >= 0; --l) {
      const LayerOffsets& o = layer_offsets_[l];
      LayerCache& lc = caches_[l];
      const int window = c.LayerSlidingWindow(l).value_or(0);
      // dx: d loss / d residual_[l + 1] = x_mid + down(h).
      SR_RETURN_IF_ERROR(matmul_backward(dh_.data(), G(o.down), nullptr, dx_.data(), lc.h.data(),
                                         W(o.down), N, I, C, 0.0f, s));
      // gate/up caches are dead after this: their gradients overwrite them.
      SR_RETURN_IF_ERROR(swiglu_backward(lc.gate.data(), lc.up.data(), dh_.data(), lc.gate.data(),
                                         lc.up.data(), static_cast<long>(N) * I, s));
      SR_RETURN_IF_ERROR(matmul_backward(dn_.data(), G(o.gate), nullptr, lc.gate.data(), lc.n2.data(),
                                         W(o.gate), N, C, I, 0.0f, s));
      SR_RETURN_IF_ERROR(matmul_backward(dn_.data(), G(o.up), nullptr, lc.up.data(), lc.n2.data(),
                                         W(o.up), N, C, I, 1.0f, s));
      SR_RETURN_IF_ERROR(rmsnorm_backward(dx_.data(), G(o.ln2), dn_.data(), lc.x_mid.data(), P(o.ln2),
                                          lc.rstd2.data(), N, C, s));
      // dx: d loss / d x_mid = x_in + o_proj(att).
      SR_RETURN_IF_ERROR(matmul_backward(datt_.data(), G(o.o), nullptr, dx_.data(), lc.att.data(),
                                         W(o.o), N, QD, C, 0.0f, s));
      SR_RETURN_IF_ERROR(attention_backward(dq_.data(), dk_.data(), dv_.data(), datt_.data(),
                                            lc.att.data(), lc.lse.data(), lc.q.data(), lc.k.data(),
                                            lc.v.data(), B, T, NH, NKV, HD, window, s));
      SR_RETURN_IF_ERROR(rope_backward(dq_.data(), dq_.data(), cos_.data(), sin_.data(), B, T, NH, HD, s));
      SR_RETURN_IF_ERROR(rope_backward(dk_.data(), dk_.data(), cos_.data(), sin_.data(), B, T, NKV, HD, s));
      SR_RETURN_IF_ERROR(matmul_backward(dn_.data(), G(o.q), nullptr, dq_.data(), lc.n1.data(),
                                         W(o.q), N, C, QD, 0.0f, s));
      SR_RETURN_IF_ERROR(matmul_backward(dn_.data(), G(o.k), nullptr, dk_.data(), lc.n1.data(),
                                         W(o.k), N, C, KVD, 1.0f, s));
      SR_RETURN_IF_ERROR(matmul_backward(dn_.data(), G(o.v), nullptr, dv_.data(), lc.n1.data(),
                                         W(o.v), N, C, KVD, 1.0f, s));
      SR_RETURN_IF_ERROR(rmsnorm_backward(dx_.data(), G(o.ln1), dn_.data(), residual_[l].data(), P(o.ln1),
                                          lc.rstd1.data(), N, C, s));
      SR_RETURN_IF_ERROR(AllReduceLayer(l));
    }
    SR_RETURN_IF_ERROR(embedding_backward(G(embed_), dx_.data(), tokens_, N, V, C, s));
    return AllReduceLayer(L);
  };
  absl::Status st = run();
  absl::Status reduce_st = FinishAllReduces();
  have_forward_ = false;  // the logits now hold their gradient
  SR_RETURN_IF_ERROR(st);
  return reduce_st;
}

absl::StatusOr<float> LlamaCudaTrainer::Step(const CudaAdamWOptions& options, float lr, int step) {
  if (mode_ != Mode::kTrain) return absl::FailedPreconditionError("LlamaCudaTrainer::Step: inference model");
  if (step < 1 || !(lr >= 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("LlamaCudaTrainer::Step: step ", step, " lr ", lr));
  }
  cudaStream_t s = stream_;
  if (comm_ != nullptr && comm_->size() > 1) {
    SR_ASSIGN_OR_RETURN(cublasHandle_t h, CublasHandleFor(s));
    const float inv = 1.0f / static_cast<float>(comm_->size());
    SR_CUBLAS_RETURN_IF_ERROR(cublasSscal_64(h, static_cast<int64_t>(num_params_), &inv, grads_.data(), 1));
  }
  SR_RETURN_IF_ERROR(global_norm_squared(norm_sq_.data(), grads_.data(), static_cast<long>(num_params_), s));
  SR_RETURN_IF_ERROR(clip_scale(clip_scale_.data(), norm_sq_.data(), options.max_grad_norm, s));
  for (const train::ParameterView& v : views_) {
    const bool is_vector = v.shape.size() == 1;
    const float wd = (is_vector && !options.decay_vectors) ? 0.0f : options.weight_decay;
    SR_RETURN_IF_ERROR(adamw_update(params_.data() + v.offset, params_bf16_.data() + v.offset,
                                    grads_.data() + v.offset, m_.data() + v.offset, v_.data() + v.offset,
                                    static_cast<long>(v.numel), lr, options.beta1, options.beta2,
                                    options.eps, wd, step, 1.0f, clip_scale_.data(), s));
  }
  float norm_sq = 0;
  SR_RETURN_IF_ERROR(norm_sq_.CopyToHost(absl::MakeSpan(&norm_sq, 1), s));
  return std::sqrt(norm_sq);
}

}  // namespace shrinkray
