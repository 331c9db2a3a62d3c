// The Llama decoder for training on one CUDA device, in bf16 mixed precision
// (core/kernels/cuda/train_ops.h): fp32 master parameters, gradients and Adam
// moments laid out exactly as the CPU ParameterStore (core/train/
// parameter_store.h: same names, order and offsets, so one flat buffer moves
// between them), a bf16 copy of the parameters for the GEMMs, bf16
// activations. The same op sequence as train::LlamaTrainerModel.
//
// A model made with Mode::kInference holds only the bf16 parameters (a
// teacher: forward without activation caches, about a quarter of the memory).
//
// Supported: Llama-style decoders (GQA, tied or separate lm_head, sliding
// windows, llama3 rope scaling). Biases and Qwen3 q/k norms are Unimplemented.
//
// Host-only header (plain g++ can include it).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/comm/communicator.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/model/config.h"
#include "core/train/parameter_store.h"

namespace shrinkray {

struct CudaAdamWOptions {
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  bool decay_vectors = false;  // as train::AdamWOptions: 1-D tensors do not decay
  float max_grad_norm = 0.0f;  // > 0: clip by global norm (on the device)
};

class LlamaCudaTrainer {
 public:
  enum class Mode { kTrain, kInference };

  LlamaCudaTrainer(const LlamaCudaTrainer&) = delete;
  LlamaCudaTrainer& operator=(const LlamaCudaTrainer&) = delete;
  ~LlamaCudaTrainer();

  // Allocates parameters (and, in kTrain, gradients, moments and the
  // activation caches) for batches of up to max_batch rows of max_seqlen
  // tokens, on the current device, working on `stream`. Parameters start at
  // zero: call LoadParams or InitRandom.
  static absl::StatusOr<std::unique_ptr<LlamaCudaTrainer>> Create(const ModelConfig& config,
                                                                  Mode mode, int max_batch,
                                                                  int max_seqlen,
                                                                  cudaStream_t stream);

  const ModelConfig& config() const { return config_; }
  const std::vector<train::ParameterView>& views() const { return views_; }
  size_t num_params() const { return num_params_; }
  Mode mode() const { return mode_; }

  // fp32 values in ParameterStore order (e.g. store.params()); sets the
  // master copy (kTrain) and the bf16 copy. Zeroes gradients and moments.
  absl::Status LoadParams(std::span<const float> host);
  // On the device, seeded: norm weights 1, every matrix N(0, stddev^2).
  absl::Status InitRandom(uint64_t seed, float stddev);
  // kTrain only: the fp32 master parameters / gradients to the host.
  absl::Status DownloadParams(std::span<float> host);
  absl::Status DownloadGrads(std::span<float> host);
  // kTrain only: the AdamW moments (ParameterStore's first_moment /
  // second_moment) to and from the host, for checkpoints. Load after
  // LoadParams, which zeroes them; the step count is the caller's (Step).
  absl::Status DownloadMoments(std::span<float> m, std::span<float> v);
  absl::Status LoadMoments(std::span<const float> m, std::span<const float> v);

  // tokens: device [batch, seqlen] ids (validated on the host by the caller).
  // Returns the device bf16 logits [batch*seqlen, vocab], valid until the next
  // Forward. kTrain keeps every activation for Backward.
  absl::StatusOr<__nv_bfloat16*> Forward(const int32_t* tokens, int batch, int seqlen);

  // kTrain only. Fused loss + dlogits on the last Forward's logits (which are
  // overwritten by their gradient): alpha, temperature and the teacher's
  // logits as in distill_loss_backward (teacher null: CE). targets: device
  // [batch*seqlen]. inv_rows / inv_labelled as there (whole global batch).
  // kl_rows / ce_rows: device [batch*seqlen] per-row values, may be null.
  absl::Status Loss(const __nv_bfloat16* teacher_logits, const int32_t* targets, float alpha,
                    float temperature, float inv_rows, float inv_labelled, float* kl_rows,
                    float* ce_rows);

  // kTrain only: gradients of every parameter from the last Forward's
  // dlogits (Loss), ADDED to the gradient buffer. With a communicator set,
  // each layer's gradient slice is all-reduced (summed, then averaged by the
  // optimizer step) on the communicator's stream as soon as the backward has
  // finished that layer, overlapping the layers still to come.
  absl::Status Backward();

  absl::Status ZeroGrads();

  // Data parallelism: gradients are all-reduced through `comm` (NCCL over
  // device buffers; not owned; null: single rank) during Backward.
  void SetGradientCommunicator(Communicator* comm) { comm_ = comm; }

  // kTrain only: clip (options.max_grad_norm), AdamW at `lr` with 1-based
  // `step`, refresh the bf16 copy. Gradients are divided by the communicator's
  // size first when one is set. Returns the global gradient norm before
  // clipping (one device-to-host copy).
  absl::StatusOr<float> Step(const CudaAdamWOptions& options, float lr, int step);

  cudaStream_t stream() const { return stream_; }

 private:
  struct LayerCache {
    DeviceBuffer<__nv_bfloat16> x_mid, n1, n2, q, k, v, att, gate, up, h;
    DeviceBuffer<float> rstd1, rstd2, lse;
  };
  struct LayerOffsets {
    size_t ln1, q, k, v, o, ln2, gate, up, down, begin, end;
  };

  LlamaCudaTrainer() = default;
  absl::Status AllocateActivations(int max_rows);
  const __nv_bfloat16* W(size_t offset) const { return params_bf16_.data() + offset; }
  const float* P(size_t offset) const { return params_.data() + offset; }
  float* G(size_t offset) { return grads_.data() + offset; }
  absl::Status AllReduceLayer(int layer);
  absl::Status FinishAllReduces();

  ModelConfig config_;
  Mode mode_ = Mode::kTrain;
  cudaStream_t stream_ = nullptr;
  int max_rows_ = 0, max_seqlen_ = 0;
  std::vector<train::ParameterView> views_;
  size_t num_params_ = 0;
  size_t embed_ = 0, final_norm_ = 0, lm_head_ = 0;
  std::vector<LayerOffsets> layer_offsets_;

  DeviceBuffer<float> params_, grads_, m_, v_;  // fp32 (kTrain)
  DeviceBuffer<__nv_bfloat16> params_bf16_;
  // kInference keeps the norm weights in fp32 here (rmsnorm reads fp32).
  DeviceBuffer<float> norm_weights_f32_;

  // Activations: residual stream per layer boundary (kTrain: L + 1 of them;
  // kInference: 2, ping-pong), one cache per layer (kInference: 1, reused).
  std::vector<DeviceBuffer<__nv_bfloat16>> residual_;
  std::vector<LayerCache> caches_;
  DeviceBuffer<__nv_bfloat16> n_final_, logits_, tmp_;
  DeviceBuffer<float> rstd_final_;
  DeviceBuffer<float> cos_, sin_;
  // Backward scratch.
  DeviceBuffer<__nv_bfloat16> dx_, dn_, dh_, datt_, dq_, dk_, dv_;
  DeviceBuffer<float> norm_sq_, clip_scale_;
  // The last Forward.
  const int32_t* tokens_ = nullptr;
  int batch_ = 0, seqlen_ = 0;
  bool have_forward_ = false;

  Communicator* comm_ = nullptr;
  std::vector<cudaEvent_t> layer_done_;  // recorded when a layer's grads are final
  struct AllReducer;
  std::unique_ptr<AllReducer> reducer_;
};

}  // namespace shrinkray
