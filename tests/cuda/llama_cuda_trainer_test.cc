// LlamaCudaTrainer (bf16 mixed precision on the GPU) against the CPU trainer
// (train::LlamaTrainerModel<float>) on the same bf16-rounded weights: logits,
// the distillation loss, every parameter's gradient, and a few AdamW steps.
// Without a CUDA device every test SKIPS.
//
// Tolerances. The CPU runs in fp32 throughout; the GPU rounds every
// activation and activation gradient to bf16 (relative rounding error <=
// 2^-9, rms ~1.1e-3, nmse ~1.3e-6 per rounding). A 2-layer forward passes
// ~12 such roundings before the logits and the backward ~20 more before a
// weight gradient, so independent errors give nmse ~2e-5 (logits) and ~5e-5
// (gradients); we allow 5x that: logits 1e-4, gradients 5e-4 (norm weights,
// whose gradient is a sum of products that cancel, 2e-3).
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/comm/communicator.h"
#include "core/comm/store.h"
#include "core/kernels/cuda/llama_cuda_trainer.h"
#include "core/model/synthetic.h"
#include "core/train/adamw.h"
#include "core/train/distill_loss.h"
#include "core/train/llama_trainer_model.h"
#include "core/train/parameter_store.h"
#include "cuda/cuda_test_util.h"

namespace shrinkray {
namespace {

using cuda_test::Compare;
using cuda_test::CudaTest;
using cuda_test::Describe;
using cuda_test::FromBf16;
using cuda_test::RandomNormal;
using cuda_test::RoundToBf16;
using cuda_test::ToBf16;
using bf16 = __nv_bfloat16;

constexpr double kNmseLogits = 1e-4;
constexpr double kNmseGrad = 5e-4;
constexpr double kNmseNormGrad = 2e-3;

class LlamaCudaTrainerTest : public CudaTest {
 protected:
  void RunGradientCheck(bool tied, int B, int T, float alpha, float temp);
};

// head_dim 64 (the tensor-core attention path), GQA 4:2, 2 layers.
ModelConfig TinyConfig(bool tied) {
  ModelConfig c = MakeLlamaConfig(/*hidden=*/256, /*intermediate=*/384, /*layers=*/2, /*heads=*/4,
                                  /*kv_heads=*/2, /*vocab=*/320, /*max_positions=*/128, tied);
  return c;
}

struct Batch {
  std::vector<int32_t> tokens, targets;
  std::vector<float> teacher;  // bf16-representable logits [N, V]
};

Batch MakeBatch(const ModelConfig& c, int B, int T, uint32_t seed) {
  Batch b;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> tok(0, c.vocab_size - 1);
  for (int i = 0; i < B * T; ++i) b.tokens.push_back(tok(rng));
  for (int i = 0; i < B * T; ++i) b.targets.push_back(i % 7 == 3 ? -100 : tok(rng));
  b.teacher = RoundToBf16(RandomNormal(static_cast<size_t>(B) * T * c.vocab_size, 2.0f, seed + 1));
  return b;
}

void LlamaCudaTrainerTest::RunGradientCheck(bool tied, int B, int T, float alpha, float temp) {
  cudaStream_t stream = stream_;
  const ModelConfig c = TinyConfig(tied);
  auto store_or = train::ParameterStore::Create(c);
  ASSERT_TRUE(store_or.ok()) << store_or.status();
  train::ParameterStore store = std::move(*store_or);
  store.InitRandom(7, 0.05);
  const std::vector<float> w = RoundToBf16(store.params());
  std::copy(w.begin(), w.end(), store.params().begin());

  const Batch batch = MakeBatch(c, B, T, 11);
  const long N = static_cast<long>(B) * T;
  const int V = c.vocab_size;

  // CPU reference.
  auto cpu_or = train::LlamaTrainerModel<float>::Create(c);
  ASSERT_TRUE(cpu_or.ok()) << cpu_or.status();
  std::vector<float> cpu_logits(N * V), cpu_dlogits(N * V);
  SR_ASSERT_OK(cpu_or->Forward(store, batch.tokens, B, T, cpu_logits));
  train::DistillLossOptions lo;
  lo.alpha = alpha;
  lo.temperature = temp;
  train::TeacherLogits<float> teacher{batch.teacher, V};
  auto loss_or = train::DistillLoss<float>(lo, cpu_logits, N, V, teacher, batch.targets, cpu_dlogits);
  ASSERT_TRUE(loss_or.ok()) << loss_or.status();
  store.ZeroGrads();
  SR_ASSERT_OK(cpu_or->Backward(store, cpu_dlogits));

  // GPU.
  SR_ASSERT_OK_AND_ASSIGN(auto gpu, LlamaCudaTrainer::Create(c, LlamaCudaTrainer::Mode::kTrain, B, T, stream));
  ASSERT_EQ(gpu->num_params(), store.size());
  SR_ASSERT_OK(gpu->LoadParams(store.params()));
  SR_ASSERT_OK_AND_ASSIGN(auto d_tokens, DeviceBuffer<int32_t>::FromHost(batch.tokens, stream));
  SR_ASSERT_OK_AND_ASSIGN(auto d_targets, DeviceBuffer<int32_t>::FromHost(batch.targets, stream));
  SR_ASSERT_OK_AND_ASSIGN(auto d_teacher, DeviceBuffer<bf16>::FromHost(ToBf16(batch.teacher), stream));
  SR_ASSERT_OK_AND_ASSIGN(auto d_kl, DeviceBuffer<float>::Create(N));
  SR_ASSERT_OK_AND_ASSIGN(auto d_ce, DeviceBuffer<float>::Create(N));
  SR_ASSERT_OK_AND_ASSIGN(bf16 * d_logits, gpu->Forward(d_tokens.data(), B, T));
  std::vector<bf16> logits16(N * V);
  ASSERT_EQ(cudaMemcpy(logits16.data(), d_logits, logits16.size() * sizeof(bf16), cudaMemcpyDeviceToHost),
            cudaSuccess);
  const auto le = Compare(FromBf16(logits16), cpu_logits);
  EXPECT_TRUE(le.finite);
  EXPECT_LE(le.nmse, kNmseLogits) << "logits " << Describe(le);

  long labelled = 0;
  for (int32_t t : batch.targets) labelled += t >= 0;
  SR_ASSERT_OK(gpu->Loss(d_teacher.data(), d_targets.data(), alpha, temp, 1.0f / N, 1.0f / labelled,
                         d_kl.data(), d_ce.data()));
  std::vector<float> kl(N), ce(N);
  SR_ASSERT_OK(d_kl.CopyToHost(absl::MakeSpan(kl), stream));
  SR_ASSERT_OK(d_ce.CopyToHost(absl::MakeSpan(ce), stream));
  double kl_mean = 0, ce_mean = 0;
  for (long i = 0; i < N; ++i) kl_mean += kl[i] / N, ce_mean += ce[i] / labelled;
  EXPECT_NEAR(kl_mean, loss_or->divergence, 1e-2 * std::abs(loss_or->divergence) + 1e-4);
  EXPECT_NEAR(ce_mean, loss_or->cross_entropy, 1e-2 * std::abs(loss_or->cross_entropy) + 1e-4);

  SR_ASSERT_OK(gpu->ZeroGrads());
  SR_ASSERT_OK(gpu->Backward());
  std::vector<float> grads(gpu->num_params());
  SR_ASSERT_OK(gpu->DownloadGrads(grads));
  for (const train::ParameterView& v : store.views()) {
    const std::span<const float> ref = store.grads().subspan(v.offset, v.numel);
    const auto e = Compare(absl::MakeConstSpan(grads.data() + v.offset, v.numel),
                           absl::MakeConstSpan(ref.data(), ref.size()));
    EXPECT_TRUE(e.finite) << v.name;
    EXPECT_LE(e.nmse, v.shape.size() == 1 ? kNmseNormGrad : kNmseGrad) << v.name << " " << Describe(e);
  }
}

TEST_F(LlamaCudaTrainerTest, TiedGradientsMatchCpuTrainer) {
  RunGradientCheck(/*tied=*/true, /*B=*/2, /*T=*/48, /*alpha=*/0.5f, /*temp=*/2.0f);
}

TEST_F(LlamaCudaTrainerTest, UntiedGradientsMatchCpuTrainerOddLength) {
  // T = 37: attention tiles with a ragged end; alpha 1: pure KD.
  RunGradientCheck(/*tied=*/false, /*B=*/3, /*T=*/37, /*alpha=*/1.0f, /*temp=*/1.0f);
}

TEST_F(LlamaCudaTrainerTest, CrossEntropyOnlyGradientsMatchCpuTrainer) {
  RunGradientCheck(/*tied=*/true, /*B=*/1, /*T=*/64, /*alpha=*/0.0f, /*temp=*/1.0f);
}

TEST_F(LlamaCudaTrainerTest, InferenceForwardEqualsTrainingForward) {
  const ModelConfig c = TinyConfig(true);
  const int B = 2, T = 33;
  SR_ASSERT_OK_AND_ASSIGN(auto train, LlamaCudaTrainer::Create(c, LlamaCudaTrainer::Mode::kTrain, B, T, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto infer, LlamaCudaTrainer::Create(c, LlamaCudaTrainer::Mode::kInference, B, T, stream_));
  auto store = train::ParameterStore::Create(c);
  ASSERT_TRUE(store.ok());
  store->InitRandom(3, 0.05);
  SR_ASSERT_OK(train->LoadParams(store->params()));
  SR_ASSERT_OK(infer->LoadParams(store->params()));
  const Batch batch = MakeBatch(c, B, T, 5);
  SR_ASSERT_OK_AND_ASSIGN(auto d_tokens, DeviceBuffer<int32_t>::FromHost(batch.tokens, stream_));
  const size_t n = static_cast<size_t>(B) * T * c.vocab_size;
  std::vector<bf16> a(n), b(n);
  SR_ASSERT_OK_AND_ASSIGN(bf16 * la, train->Forward(d_tokens.data(), B, T));
  ASSERT_EQ(cudaMemcpy(a.data(), la, n * sizeof(bf16), cudaMemcpyDeviceToHost), cudaSuccess);
  SR_ASSERT_OK_AND_ASSIGN(bf16 * lb, infer->Forward(d_tokens.data(), B, T));
  ASSERT_EQ(cudaMemcpy(b.data(), lb, n * sizeof(bf16), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(FromBf16(a), FromBf16(b));
}

// Five AdamW steps with clipping on the GPU follow the CPU trainer's loss
// curve (losses within 2%: bf16 activations, fp32 vs double optimizer math)
// and the loss falls.
TEST_F(LlamaCudaTrainerTest, AdamWStepsFollowCpuLosses) {
  const ModelConfig c = TinyConfig(true);
  const int B = 2, T = 32;
  const long N = static_cast<long>(B) * T;
  const int V = c.vocab_size;
  auto store_or = train::ParameterStore::Create(c);
  ASSERT_TRUE(store_or.ok());
  train::ParameterStore store = std::move(*store_or);
  store.InitRandom(9, 0.05);
  const std::vector<float> w = RoundToBf16(store.params());
  std::copy(w.begin(), w.end(), store.params().begin());
  const Batch batch = MakeBatch(c, B, T, 21);
  long labelled = 0;
  for (int32_t t : batch.targets) labelled += t >= 0;

  train::AdamWOptions ao;
  ao.weight_decay = 0.1;
  auto adam = train::AdamW::Create(ao);
  ASSERT_TRUE(adam.ok());
  auto cpu = train::LlamaTrainerModel<float>::Create(c);
  ASSERT_TRUE(cpu.ok());
  const double lr = 3e-3, max_norm = 1.0;
  train::DistillLossOptions lo;
  lo.alpha = 0.5;
  lo.temperature = 2.0;
  train::TeacherLogits<float> teacher{batch.teacher, V};

  SR_ASSERT_OK_AND_ASSIGN(auto gpu, LlamaCudaTrainer::Create(c, LlamaCudaTrainer::Mode::kTrain, B, T, stream_));
  SR_ASSERT_OK(gpu->LoadParams(store.params()));
  SR_ASSERT_OK_AND_ASSIGN(auto d_tokens, DeviceBuffer<int32_t>::FromHost(batch.tokens, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_targets, DeviceBuffer<int32_t>::FromHost(batch.targets, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_teacher, DeviceBuffer<bf16>::FromHost(ToBf16(batch.teacher), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_kl, DeviceBuffer<float>::Create(N));
  SR_ASSERT_OK_AND_ASSIGN(auto d_ce, DeviceBuffer<float>::Create(N));
  CudaAdamWOptions go;
  go.weight_decay = 0.1f;
  go.max_grad_norm = static_cast<float>(max_norm);

  std::vector<float> logits(N * V), dlogits(N * V), kl(N), ce(N);
  double first_gpu = 0, last_gpu = 0;
  for (int step = 1; step <= 5; ++step) {
    SR_ASSERT_OK(cpu->Forward(store, batch.tokens, B, T, logits));
    auto loss = train::DistillLoss<float>(lo, logits, N, V, teacher, batch.targets, dlogits);
    ASSERT_TRUE(loss.ok());
    store.ZeroGrads();
    SR_ASSERT_OK(cpu->Backward(store, dlogits));
    double sq = 0;
    for (float g : store.grads()) sq += static_cast<double>(g) * g;
    const double cpu_norm = std::sqrt(sq);
    const double scale = std::min(1.0, max_norm / (cpu_norm + 1e-6));
    for (float& g : store.grads()) g = static_cast<float>(g * scale);
    SR_ASSERT_OK(adam->Step(store, lr));

    SR_ASSERT_OK(gpu->Forward(d_tokens.data(), B, T).status());
    SR_ASSERT_OK(gpu->Loss(d_teacher.data(), d_targets.data(), 0.5f, 2.0f, 1.0f / N, 1.0f / labelled,
                           d_kl.data(), d_ce.data()));
    SR_ASSERT_OK(gpu->ZeroGrads());
    SR_ASSERT_OK(gpu->Backward());
    SR_ASSERT_OK_AND_ASSIGN(float gpu_norm, gpu->Step(go, static_cast<float>(lr), step));
    SR_ASSERT_OK(d_kl.CopyToHost(absl::MakeSpan(kl), stream_));
    SR_ASSERT_OK(d_ce.CopyToHost(absl::MakeSpan(ce), stream_));
    double kl_mean = 0, ce_mean = 0;
    for (long i = 0; i < N; ++i) kl_mean += kl[i] / N, ce_mean += ce[i] / labelled;
    const double gpu_loss = 0.5 * 4.0 * kl_mean + 0.5 * ce_mean;
    EXPECT_NEAR(gpu_loss, loss->loss, 0.02 * loss->loss) << "step " << step;
    EXPECT_NEAR(gpu_norm, cpu_norm, 0.02 * cpu_norm) << "step " << step;
    if (step == 1) first_gpu = gpu_loss;
    last_gpu = gpu_loss;
  }
  EXPECT_LT(last_gpu, 0.99 * first_gpu);
}

// The gradient all-reduce beside the backward (a 1-rank NCCL communicator:
// the collective is a copy) leaves the gradients as they were; the optimizer
// step then sees the same norm.
TEST_F(LlamaCudaTrainerTest, OverlappedAllReduceKeepsGradients) {
  const ModelConfig c = TinyConfig(false);
  const int B = 2, T = 32;
  const long N = static_cast<long>(B) * T;
  auto store = train::ParameterStore::Create(c);
  ASSERT_TRUE(store.ok());
  store->InitRandom(4, 0.05);
  const Batch batch = MakeBatch(c, B, T, 8);
  SR_ASSERT_OK_AND_ASSIGN(auto d_tokens, DeviceBuffer<int32_t>::FromHost(batch.tokens, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_targets, DeviceBuffer<int32_t>::FromHost(batch.targets, stream_));
  auto comm = MakeNcclCommunicator(MakeInProcessStore(), CommOptions{});
  ASSERT_TRUE(comm.ok()) << comm.status();
  std::vector<float> grads[2];
  for (int with_comm = 0; with_comm < 2; ++with_comm) {
    SR_ASSERT_OK_AND_ASSIGN(auto gpu, LlamaCudaTrainer::Create(c, LlamaCudaTrainer::Mode::kTrain, B, T, stream_));
    SR_ASSERT_OK(gpu->LoadParams(store->params()));
    if (with_comm) gpu->SetGradientCommunicator(comm->get());
    SR_ASSERT_OK(gpu->Forward(d_tokens.data(), B, T).status());
    SR_ASSERT_OK(gpu->Loss(nullptr, d_targets.data(), 0.0f, 1.0f, 1.0f / N, 1.0f / N, nullptr, nullptr));
    SR_ASSERT_OK(gpu->ZeroGrads());
    SR_ASSERT_OK(gpu->Backward());
    grads[with_comm].resize(gpu->num_params());
    SR_ASSERT_OK(gpu->DownloadGrads(grads[with_comm]));
  }
  // Only the embedding's fp32 atomics may sum in another order.
  const auto e = Compare(grads[1], grads[0]);
  EXPECT_LE(e.nmse, 1e-12) << Describe(e);
  EXPECT_TRUE(e.finite);
}

TEST_F(LlamaCudaTrainerTest, RejectsBadShapes) {
  const ModelConfig c = TinyConfig(true);
  SR_ASSERT_OK_AND_ASSIGN(auto gpu, LlamaCudaTrainer::Create(c, LlamaCudaTrainer::Mode::kTrain, 2, 16, stream_));
  EXPECT_EQ(gpu->Forward(nullptr, 2, 17).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu->Backward().code(), absl::StatusCode::kFailedPrecondition);
  std::vector<float> wrong(3);
  EXPECT_EQ(gpu->LoadParams(wrong).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LlamaCudaTrainer::Create(c, LlamaCudaTrainer::Mode::kTrain, 0, 16, stream_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shrinkray
