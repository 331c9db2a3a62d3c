// Knowledge-distillation training throughput on one GPU: a student of
// Llama-3.2-1B shapes learns from a teacher of Llama-3.2-3B shapes (random
// weights made on the GPU, random tokens), bf16 mixed precision through
// LlamaCudaTrainer. Every step: teacher forward (no caches), student forward,
// fused KD+CE loss (alpha 0.5, T 2), backward, global-norm clip, fused AdamW.
// With --allreduce the gradients also go through a 1-rank NCCL communicator,
// layer by layer beside the backward (what a multi-GPU job does; on one GPU it
// measures the overhead of the overlap machinery).
//
//   kd_train_bench [--batch 4] [--seqlen 2048] [--steps 4] [--warmup 1]
//                  [--student-layers 16] [--teacher-layers 28] [--no-teacher]
//                  [--allreduce]
//
// Prints per-phase times, tokens/s and model FLOPs utilisation (MFU: model
// FLOPs, attention counted without the backward's recomputation, over the
// nominal bf16 dense peak of an H100 SXM, 989 TFLOP/s), and a RESULT line.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "bench/cuda/bench_util.h"
#include "core/comm/communicator.h"
#include "core/comm/store.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/llama_cuda_trainer.h"
#include "core/kernels/cuda/random_cuda.h"
#include "core/model/synthetic.h"

namespace shrinkray {
namespace {

using bench::kBf16PeakNominal;



struct Flags {
  int batch = 4;
  int seqlen = 2048;
  int steps = 4;
  int warmup = 1;
  int student_layers = 16;
  int teacher_layers = 28;
  bool teacher = true;
  bool allreduce = false;
};

bool ParseFlags(int argc, char** argv, Flags* f) {
  bench::FlagCursor a(argc, argv);
  while (a.Next()) {
    bool ok = true;
    if (a.Is("--batch")) ok = a.Int(&f->batch);
    else if (a.Is("--seqlen")) ok = a.Int(&f->seqlen);
    else if (a.Is("--steps")) ok = a.Int(&f->steps);
    else if (a.Is("--warmup")) ok = a.Int(&f->warmup);
    else if (a.Is("--student-layers")) ok = a.Int(&f->student_layers);
    else if (a.Is("--teacher-layers")) ok = a.Int(&f->teacher_layers);
    else if (a.Is("--no-teacher")) f->teacher = false;
    else if (a.Is("--allreduce")) f->allreduce = true;
    else {
      std::fprintf(stderr, "unknown flag %s\n", a.name());
      return false;
    }
    if (!ok) {
      std::fprintf(stderr, "flag %s needs a value\n", a.name());
      return false;
    }
  }
  if (f->batch < 1 || f->seqlen < 1 || f->steps < 1 || f->warmup < 0 || f->student_layers < 1 ||
      f->teacher_layers < 1) {
    std::fprintf(stderr, "bad flag values\n");
    return false;
  }
  return true;
}

ModelConfig Llama32(int hidden, int intermediate, int layers, int heads, int kv_heads) {
  ModelConfig c = MakeLlamaConfig(hidden, intermediate, layers, heads, kv_heads, 128256, 131072,
                                  /*tie_embeddings=*/true);
  c.rope_theta = 500000.0;
  return c;
}

// Matmul parameters (what every token multiplies by): the decoder's linears
// and the lm_head; the embedding lookup costs nothing.
double MatmulParams(const ModelConfig& c) {
  const double C = c.hidden_size, I = c.intermediate_size, QD = c.q_dim(), KVD = c.kv_dim();
  const double per_layer = C * (QD + 2 * KVD) + QD * C + 3 * C * I;
  return per_layer * c.num_hidden_layers + C * c.vocab_size;
}

// Causal attention forward FLOPs (QK^T and PV over the lower triangle).
double AttentionForwardFlops(const ModelConfig& c, int batch, int seqlen) {
  const double pairs = static_cast<double>(seqlen) * (seqlen + 1) / 2;
  return 4.0 * batch * c.num_attention_heads * c.head_dim * pairs * c.num_hidden_layers;
}

enum Phase { kTeacher, kStudentForward, kLoss, kBackward, kOptimizer, kNumPhases };
const char* const kPhaseNames[kNumPhases] = {"teacher fwd", "student fwd", "loss", "backward",
                                             "optimizer"};

int Run(const Flags& f) {
  const ModelConfig student = Llama32(2048, 8192, f.student_layers, 32, 8);
  const ModelConfig teacher = Llama32(3072, 8192, f.teacher_layers, 24, 8);
  const int B = f.batch, T = f.seqlen, N = B * T;
  cudaDeviceProp prop{};
  BENCH_CHECK_OK(cudaGetDeviceProperties(&prop, 0) == cudaSuccess ? absl::OkStatus()
                                                                   : absl::InternalError("no device"));
  std::printf("device: %s, %.1f GiB\n", prop.name, prop.totalGlobalMem / 1073741824.0);
  std::printf("student: Llama-3.2-1B shapes, %d layers; teacher: %s; %d x %d tokens per step\n",
              student.num_hidden_layers,
              f.teacher ? ("Llama-3.2-3B shapes, " + std::to_string(teacher.num_hidden_layers) + " layers").c_str()
                        : "none (CE only)",
              B, T);

  cudaStream_t stream;
  BENCH_CHECK_OK(cudaStreamCreate(&stream) == cudaSuccess ? absl::OkStatus() : absl::InternalError("stream"));
  auto s_or = LlamaCudaTrainer::Create(student, LlamaCudaTrainer::Mode::kTrain, B, T, stream);
  BENCH_CHECK_OK(s_or.status());
  std::unique_ptr<LlamaCudaTrainer> s = std::move(*s_or);
  BENCH_CHECK_OK(s->InitRandom(1, 0.02f));
  std::unique_ptr<LlamaCudaTrainer> t;
  if (f.teacher) {
    auto t_or = LlamaCudaTrainer::Create(teacher, LlamaCudaTrainer::Mode::kInference, B, T, stream);
    BENCH_CHECK_OK(t_or.status());
    t = std::move(*t_or);
    BENCH_CHECK_OK(t->InitRandom(2, 0.02f));
  }
  std::unique_ptr<Communicator> comm;
  if (f.allreduce) {
    CommOptions co;
    auto c_or = MakeNcclCommunicator(MakeInProcessStore(), co);
    BENCH_CHECK_OK(c_or.status());
    comm = std::move(*c_or);
    s->SetGradientCommunicator(comm.get());
  }
  std::printf("student parameters %.3f B (%.3f B in matmuls), teacher %.3f B\n", s->num_params() / 1e9,
              MatmulParams(student) / 1e9, t ? t->num_params() / 1e9 : 0.0);

  auto tokens_or = DeviceBuffer<int32_t>::Create(N);
  auto targets_or = DeviceBuffer<int32_t>::Create(N);
  auto kl_or = DeviceBuffer<float>::Create(N);
  auto ce_or = DeviceBuffer<float>::Create(N);
  BENCH_CHECK_OK(tokens_or.status());
  BENCH_CHECK_OK(targets_or.status());
  BENCH_CHECK_OK(kl_or.status());
  BENCH_CHECK_OK(ce_or.status());
  DeviceBuffer<int32_t> tokens = std::move(*tokens_or), targets = std::move(*targets_or);
  DeviceBuffer<float> kl = std::move(*kl_or), ce = std::move(*ce_or);

  CudaEventPool events;
  BENCH_CHECK_OK(events.Get(kNumPhases).status());
  double phase_ms[kNumPhases] = {};
  double step_ms_total = 0;
  const float alpha = f.teacher ? 0.5f : 0.0f, temperature = 2.0f;
  CudaAdamWOptions adam;
  adam.weight_decay = 0.1f;
  adam.max_grad_norm = 1.0f;
  std::vector<float> kl_host(N), ce_host(N);

  for (int step = 1; step <= f.warmup + f.steps; ++step) {
    BENCH_CHECK_OK(fill_random_tokens(tokens.data(), N, student.vocab_size, 100 + step, stream));
    BENCH_CHECK_OK(fill_random_tokens(targets.data(), N, student.vocab_size, 200 + step, stream));
    auto mark = [&](int i) { return cudaEventRecord(events[i], stream) == cudaSuccess
                                        ? absl::OkStatus()
                                        : absl::InternalError("event"); };
    BENCH_CHECK_OK(mark(0));
    const __nv_bfloat16* teacher_logits = nullptr;
    if (t) {
      auto tl = t->Forward(tokens.data(), B, T);
      BENCH_CHECK_OK(tl.status());
      teacher_logits = *tl;
    }
    BENCH_CHECK_OK(mark(1));
    BENCH_CHECK_OK(s->Forward(tokens.data(), B, T).status());
    BENCH_CHECK_OK(mark(2));
    BENCH_CHECK_OK(s->Loss(teacher_logits, targets.data(), alpha, temperature, 1.0f / N, 1.0f / N,
                           kl.data(), ce.data()));
    BENCH_CHECK_OK(mark(3));
    BENCH_CHECK_OK(s->ZeroGrads());
    BENCH_CHECK_OK(s->Backward());
    BENCH_CHECK_OK(mark(4));
    auto norm = s->Step(adam, 1e-4f, step);
    BENCH_CHECK_OK(norm.status());
    BENCH_CHECK_OK(mark(5));
    BENCH_CHECK_OK(cudaStreamSynchronize(stream) == cudaSuccess ? absl::OkStatus()
                                                                 : absl::InternalError(cudaGetErrorString(cudaGetLastError())));
    BENCH_CHECK_OK(kl.CopyToHost(absl::MakeSpan(kl_host), stream));
    BENCH_CHECK_OK(ce.CopyToHost(absl::MakeSpan(ce_host), stream));
    double klm = 0, cem = 0;
    for (int i = 0; i < N; ++i) klm += kl_host[i] / N, cem += ce_host[i] / N;
    float ms[kNumPhases];
    for (int p = 0; p < kNumPhases; ++p) cudaEventElapsedTime(&ms[p], events[p], events[p + 1]);
    float step_ms = 0;
    cudaEventElapsedTime(&step_ms, events[0], events[kNumPhases]);
    std::printf("step %d%s: %.1f ms (teacher %.1f, fwd %.1f, loss %.1f, bwd %.1f, adam %.1f)  kl %.4f ce %.4f "
                "grad norm %.3f\n",
                step, step <= f.warmup ? " (warm-up)" : "", step_ms, ms[0], ms[1], ms[2], ms[3], ms[4], klm,
                cem, *norm);
    if (step > f.warmup) {
      for (int p = 0; p < kNumPhases; ++p) phase_ms[p] += ms[p];
      step_ms_total += step_ms;
    }
  }
  const double step_s = step_ms_total / f.steps / 1000.0;
  const double tokens_per_s = N / step_s;
  const double student_flops = 6.0 * MatmulParams(student) * N + 3.0 * AttentionForwardFlops(student, B, T);
  const double teacher_flops = t ? 2.0 * MatmulParams(teacher) * N + AttentionForwardFlops(teacher, B, T) : 0.0;
  const double flops = student_flops + teacher_flops;
  std::printf("\n%-12s %10s %8s\n", "phase", "ms/step", "share");
  for (int p = 0; p < kNumPhases; ++p) {
    std::printf("%-12s %10.1f %7.1f%%\n", kPhaseNames[p], phase_ms[p] / f.steps,
                100.0 * phase_ms[p] / step_ms_total);
  }
  std::printf("\nmodel FLOPs per step: student 6PN + 3 attn = %.3g, teacher 2PN + attn = %.3g\n", student_flops,
              teacher_flops);
  std::printf("tokens/s %.0f, %.0f TFLOP/s, MFU %.1f%% of 989 TFLOP/s (student alone: %.1f%%)\n", tokens_per_s,
              flops / step_s / 1e12, 100.0 * flops / step_s / kBf16PeakNominal,
              100.0 * student_flops / (step_s - phase_ms[kTeacher] / f.steps / 1000.0) / kBf16PeakNominal);
  std::printf("RESULT method=kd_train student_layers=%d teacher_layers=%d batch=%d seqlen=%d step_s=%.3f "
              "tokens_per_s=%.0f tflops=%.1f mfu=%.3f allreduce=%d\n",
              student.num_hidden_layers, t ? teacher.num_hidden_layers : 0, B, T, step_s, tokens_per_s,
              flops / step_s / 1e12, flops / step_s / kBf16PeakNominal, f.allreduce ? 1 : 0);
  return 0;
}

}  // namespace
}  // namespace shrinkray

int main(int argc, char** argv) {
  shrinkray::Flags f;
  if (!shrinkray::ParseFlags(argc, argv, &f)) return 2;
  return shrinkray::Run(f);
}
