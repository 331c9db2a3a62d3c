// End-to-end layerwise GPTQ (or SparseGPT, or the bare forward) on the GPU
// for a synthetic model with Llama-3-8B shapes (random weights generated on
// the device, seeded), the reference's true-sequential order
// (numerics-reference.md, "Layerwise order"):
//   embed -> for each layer: rmsnorm -> H_qkv -> GPTQ q,k,v -> q/k/v with the
//   quantized weights, RoPE, attention -> H_o -> GPTQ o -> o_proj + residual
//   -> rmsnorm -> H_gateup -> GPTQ gate, up -> swiglu -> H_down -> GPTQ down
//   -> down_proj + residual = next layer's input; "save" packs qweight,
//   qzeros and fp16 scales in the GPTQ checkpoint layout on the GPU
//   (gptq_pack_cuda.h) and copies them and g_idx to pinned host memory.
// --method sparsegpt prunes every Linear in the same order instead (the
// forward then uses the pruned bf16 weights; "save" copies them to pinned
// host memory); --method forward runs only the layers' forward pass (no
// Hessian, no solve) and reports decoder tokens/s and TFLOP/s.
// A plain main() (not Google Benchmark) so that phases are timed separately
// with CUDA events. Prints one row per layer and the totals, next to the
// FLOP floor at H100 peak (docs/benchmarks-gpu.md explains the arithmetic).
//
//   gptq_llama8b_bench [--method gptq|sparsegpt|forward] (default gptq)
//                      [--layers 32] [--samples 128] [--seqlen 2048] [--bits 4] (2, 3, 4, 8)
//                      [--group 128] [--act-order] [--chunk 16] [--seed 0]
//                      [--inverse-factor flipped|chain]  (how Hinv is computed,
//                                       core/algo/hessian_inverse.h; the bench's
//                                       default flipped, the recipes' chain)
//                      [--sparsity 0.5] [--prune-n N --prune-m M]  (sparsegpt;
//                                       N:M replaces --sparsity when given)
//                      [--profile-ops]  (forward time per op kind: GEMM, attention, ...)
//                      [--budget-s S]  (stop early and extrapolate when the next
//                                       layer would end past S seconds)
//                      [--stream-from-host]  (the layers' weights live in pinned
//                                       host memory, as for a model larger than
//                                       the GPU; layer l+1 is copied on a copy
//                                       stream into a second buffer while layer
//                                       l computes; "load" is then the wait)
//                      [--hidden 4096 --intermediate 14336 --heads 32
//                       --kv-heads 8 --head-dim 128 --vocab 128256]
//
// Exit status: 0 on success, 1 on a CUDA/library error, 2 when the result is
// not finite (a numerics bug), 3 on bad flags.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/cuda/bench_util.h"
#include "core/algo/gptq.h"
#include "core/algo/sparsegpt.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/gptq_cuda.h"
#include "core/kernels/cuda/gptq_pack_cuda.h"
#include "core/kernels/cuda/hessian_cuda.h"
#include "core/kernels/cuda/ops.h"
#include "core/kernels/cuda/random_cuda.h"
#include "core/kernels/cuda/sparsegpt_cuda.h"

namespace shrinkray {
namespace {

using bench::kBf16PeakNominal;

using bf16 = __nv_bfloat16;

// Peak rates for the floor (H100 SXM; the nominal bf16 peak is in bench_util.h): bf16 as
// measured for large cuBLAS GEMMs, fp32 SIMT nominal.
constexpr double kBf16PeakMeasured = 790e12;
constexpr double kFp32Peak = 67e12;

struct Flags {
  int layers = 32;
  int samples = 128;
  int seqlen = 2048;
  int bits = 4;
  int group = 128;
  bool act_order = false;
  bool profile_ops = false;  // per-op forward times (CUDA events around every call)
  bool stream_from_host = false;  // weights in pinned host memory, prefetched a layer ahead
  int chunk = 16;  // samples per forward / Hessian chunk
  uint64_t seed = 0;
  double budget_s = 0.0;  // > 0: stop before a layer that would end past it (extrapolate)
  int hidden = 4096;
  int intermediate = 14336;
  int heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
  int vocab = 128256;
  std::string method = "gptq";  // gptq | sparsegpt | forward
  double sparsity = 0.5;        // sparsegpt, unstructured
  int prune_n = 0;              // sparsegpt N:M when > 0
  int prune_m = 0;
  std::string inverse_factor = "flipped";  // flipped | chain
};

bool ParseFlags(int argc, char** argv, Flags* f) {
  bench::FlagCursor a(argc, argv);
  while (a.Next()) {
    bool ok = true;
    if (a.Is("--layers")) ok = a.Int(&f->layers);
    else if (a.Is("--samples")) ok = a.Int(&f->samples);
    else if (a.Is("--seqlen")) ok = a.Int(&f->seqlen);
    else if (a.Is("--bits")) ok = a.Int(&f->bits);
    else if (a.Is("--group")) ok = a.Int(&f->group);
    else if (a.Is("--chunk")) ok = a.Int(&f->chunk);
    else if (a.Is("--hidden")) ok = a.Int(&f->hidden);
    else if (a.Is("--intermediate")) ok = a.Int(&f->intermediate);
    else if (a.Is("--heads")) ok = a.Int(&f->heads);
    else if (a.Is("--kv-heads")) ok = a.Int(&f->kv_heads);
    else if (a.Is("--head-dim")) ok = a.Int(&f->head_dim);
    else if (a.Is("--vocab")) ok = a.Int(&f->vocab);
    else if (a.Is("--prune-n")) ok = a.Int(&f->prune_n);
    else if (a.Is("--prune-m")) ok = a.Int(&f->prune_m);
    else if (a.Is("--act-order")) f->act_order = true;
    else if (a.Is("--profile-ops")) f->profile_ops = true;
    else if (a.Is("--stream-from-host")) f->stream_from_host = true;
    else if (a.Is("--sparsity")) ok = a.Double(&f->sparsity);
    else if (a.Is("--budget-s")) ok = a.Double(&f->budget_s);
    else if (a.Is("--seed")) ok = a.Uint64(&f->seed);
    else if (a.Is("--method")) ok = a.String(&f->method);
    else if (a.Is("--inverse-factor")) ok = a.String(&f->inverse_factor);
    else {
      std::fprintf(stderr, "unknown flag %s\n", a.name());
      return false;
    }
    if (!ok) {
      std::fprintf(stderr, "flag %s needs a value\n", a.name());
      return false;
    }
  }
  if (f->method != "gptq" && f->method != "sparsegpt" && f->method != "forward") {
    std::fprintf(stderr, "--method %s: expected gptq, sparsegpt or forward\n", f->method.c_str());
    return false;
  }
  if (f->inverse_factor != "flipped" && f->inverse_factor != "chain") {
    std::fprintf(stderr, "--inverse-factor %s: expected flipped or chain\n", f->inverse_factor.c_str());
    return false;
  }
  if (f->method == "sparsegpt") {
    if ((f->prune_n != 0 || f->prune_m != 0) &&
        !(f->prune_n > 0 && f->prune_m > f->prune_n && 128 % f->prune_m == 0)) {
      std::fprintf(stderr, "--prune-n/--prune-m: need 0 < N < M with M dividing 128\n");
      return false;
    }
    if (f->prune_n == 0 && !(f->sparsity >= 0.0 && f->sparsity < 1.0)) {
      std::fprintf(stderr, "--sparsity must be in [0, 1)\n");
      return false;
    }
  }
  if (f->layers < 1 || f->samples < 1 || f->seqlen < 1 || f->chunk < 1 || f->hidden < 1 ||
      f->intermediate < 1 || f->heads < 1 || f->kv_heads < 1 || f->head_dim < 2 ||
      f->heads % f->kv_heads != 0 || f->head_dim % 2 != 0 || (f->bits != 2 && f->bits != 3 && f->bits != 4 && f->bits != 8) ||
      f->vocab < 1) {
    std::fprintf(stderr, "bad flag values\n");
    return false;
  }
  if (f->chunk > f->samples) f->chunk = f->samples;
  if (static_cast<long>(f->chunk) * f->seqlen * std::max(f->hidden, f->intermediate) >
      (1L << 31) - 1) {
    std::fprintf(stderr, "--chunk too large for 32-bit GEMM sizes\n");
    return false;
  }
  return true;
}

// Phase timing with CUDA event pairs, collected once per layer.
enum Phase { kLoad, kForward, kHessian, kSave, kNumPhases };
const char* const kPhaseNames[kNumPhases] = {"load", "forward", "hessian", "save"};
// --profile-ops: the forward's time by kind of op (same timer, other slots).
enum OpKind { kOpGemm, kOpAttention, kOpNorm, kOpRope, kOpSwiglu, kOpResidual, kNumOpKinds };
const char* const kOpNames[kNumOpKinds] = {"gemm", "attention", "rmsnorm", "rope", "swiglu", "residual"};

class PhaseTimer {
 public:
  explicit PhaseTimer(cudaStream_t stream) : stream_(stream) {}
  ~PhaseTimer() {
    for (cudaEvent_t e : pool_) (void)cudaEventDestroy(e);
  }
  absl::Status Begin(int p) {
    absl::StatusOr<cudaEvent_t> e = Next();
    if (!e.ok()) return e.status();
    SR_CUDA_RETURN_IF_ERROR(cudaEventRecord(*e, stream_));
    open_ = *e;
    phase_ = p;
    return absl::OkStatus();
  }
  absl::Status End() {
    absl::StatusOr<cudaEvent_t> e = Next();
    if (!e.ok()) return e.status();
    SR_CUDA_RETURN_IF_ERROR(cudaEventRecord(*e, stream_));
    pairs_.push_back({open_, *e, phase_});
    return absl::OkStatus();
  }
  // Waits for the stream and adds the elapsed times into ms[phase].
  absl::Status Collect(double* ms) {
    SR_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    for (const Pair& p : pairs_) {
      float t = 0.0f;
      SR_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&t, p.a, p.b));
      ms[p.phase] += t;
    }
    pairs_.clear();
    used_ = 0;
    return absl::OkStatus();
  }

 private:
  struct Pair {
    cudaEvent_t a, b;
    int phase;
  };
  absl::StatusOr<cudaEvent_t> Next() {
    if (used_ == pool_.size()) {
      cudaEvent_t e = nullptr;
      SR_CUDA_RETURN_IF_ERROR(cudaEventCreate(&e));
      pool_.push_back(e);
    }
    return pool_[used_++];
  }
  cudaStream_t stream_;
  std::vector<cudaEvent_t> pool_;
  size_t used_ = 0;
  std::vector<Pair> pairs_;
  cudaEvent_t open_ = nullptr;
  int phase_ = 0;
};


// A forward op call, timed by kind when --profile-ops (needs `ops` and `f`).
#define BENCH_OP(kind, expr)                                  \
  do {                                                        \
    if (f.profile_ops) BENCH_CHECK_OK(ops.Begin(kind));       \
    BENCH_CHECK_OK(expr);                                     \
    if (f.profile_ops) BENCH_CHECK_OK(ops.End());             \
  } while (0)

// One Linear of a layer: its fp32 source weight, the quantized bf16 weight
// the forward uses, and the GPTQ outputs.
struct Linear {
  const char* name;
  int rows;  // out_features
  int cols;  // in_features
  float* w = nullptr;
  bf16* wq = nullptr;
  uint8_t* codes = nullptr;
  float* scales = nullptr;
  int32_t* zeros = nullptr;
  int32_t* g_idx = nullptr;
  long numel() const { return static_cast<long>(rows) * cols; }
};

int Run(const Flags& f) {
  int count = 0;
  {
    absl::StatusOr<int> c = CudaDeviceCount();
    BENCH_CHECK_OK(c.status());
    count = *c;
  }
  if (count == 0) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop{};
  BENCH_CHECK_OK(CudaStatus(cudaGetDeviceProperties(&prop, 0), "props", __FILE__, __LINE__));
  cudaStream_t stream = nullptr;
  BENCH_CHECK_OK(CudaStatus(cudaStreamCreate(&stream), "stream", __FILE__, __LINE__));

  const int C = f.hidden, I = f.intermediate, NH = f.heads, NKV = f.kv_heads, HD = f.head_dim;
  const int QD = NH * HD, KVD = NKV * HD;
  const int T = f.seqlen, S = f.samples;
  const long NT = static_cast<long>(S) * T;
  if (NT > (1L << 31) - 1) {
    std::fprintf(stderr, "samples * seqlen must fit in int\n");
    return 3;
  }
  const int chunk = f.chunk;
  const long chunk_tokens = static_cast<long>(chunk) * T;

  GptqOptions opt;
  opt.bits = f.bits;
  opt.group_size = f.group;
  opt.sym = true;
  opt.act_order = f.act_order;
  const bool flipped = f.inverse_factor == "flipped";
  opt.inverse_factor =
      flipped ? InverseFactorMethod::kFlippedCholesky : InverseFactorMethod::kCholeskyInverseChain;
  const bool is_gptq = f.method == "gptq";
  const bool is_sparse = f.method == "sparsegpt";
  const bool is_forward = f.method == "forward";
  SparseGptOptions sopt;
  sopt.sparsity = f.sparsity;
  sopt.prune_n = f.prune_n;
  sopt.prune_m = f.prune_m;
  sopt.inverse_factor = opt.inverse_factor;

  std::printf("device: %s (sm_%d%d, %d SMs, %.1f GiB)\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
  if (is_gptq) {
    std::printf("model: %d layers, hidden %d, mlp %d, heads %d/%d x %d, vocab %d; calibration %d x "
                "%d tokens (chunks of %d samples); gptq %d-bit group %d%s\n",
                f.layers, C, I, NH, NKV, HD, f.vocab, S, T, chunk, f.bits, f.group,
                f.act_order ? " act_order" : "");
  } else {
    char what[64];
    if (is_forward) {
      std::snprintf(what, sizeof(what), "forward only");
    } else if (f.prune_n > 0) {
      std::snprintf(what, sizeof(what), "sparsegpt %d:%d", f.prune_n, f.prune_m);
    } else {
      std::snprintf(what, sizeof(what), "sparsegpt %.0f%% unstructured", 100.0 * f.sparsity);
    }
    std::printf("model: %d layers, hidden %d, mlp %d, heads %d/%d x %d, vocab %d; %d x %d tokens "
                "(chunks of %d samples); %s\n",
                f.layers, C, I, NH, NKV, HD, f.vocab, S, T, chunk, what);
  }

  // ---- allocations -------------------------------------------------------------
  Linear lin[7] = {{"q_proj", QD, C},    {"k_proj", KVD, C},  {"v_proj", KVD, C},
                   {"o_proj", C, QD},    {"gate_proj", I, C}, {"up_proj", I, C},
                   {"down_proj", C, I}};
  long w_total = 0, groups_total = 0, cols_total = 0;
  for (const Linear& l : lin) {
    w_total += l.numel();
    groups_total += static_cast<long>(GptqCuda::NumGroups(l.cols, opt)) * l.rows;
    cols_total += l.cols;
  }
  BENCH_ASSIGN_OR_FAIL(auto w32, DeviceBuffer<float>::Create(w_total));
  BENCH_ASSIGN_OR_FAIL(auto w16, DeviceBuffer<bf16>::Create(w_total));
  BENCH_ASSIGN_OR_FAIL(auto codes, DeviceBuffer<uint8_t>::Create(w_total));
  // "save": the GPTQ checkpoint tensors, packed on the GPU (gptq_pack_cuda.h):
  // qweight int32 [in * bits / 32, out], qzeros int32 [groups, out * bits / 32],
  // fp16 scales, per Linear, back to back.
  const long qweight_words = w_total * f.bits / 32, qzeros_words = groups_total * f.bits / 32;
  BENCH_ASSIGN_OR_FAIL(auto qweight, DeviceBuffer<int32_t>::Create(qweight_words));
  BENCH_ASSIGN_OR_FAIL(auto qzeros, DeviceBuffer<int32_t>::Create(qzeros_words));
  BENCH_ASSIGN_OR_FAIL(auto scales16, DeviceBuffer<__half>::Create(groups_total));
  BENCH_ASSIGN_OR_FAIL(auto scales, DeviceBuffer<float>::Create(groups_total));
  BENCH_ASSIGN_OR_FAIL(auto zeros, DeviceBuffer<int32_t>::Create(groups_total));
  BENCH_ASSIGN_OR_FAIL(auto gidx, DeviceBuffer<int32_t>::Create(cols_total));
  {
    long wo = 0, go = 0, co = 0;
    for (Linear& l : lin) {
      l.w = w32.data() + wo;
      l.wq = w16.data() + wo;
      l.codes = codes.data() + wo;
      l.scales = scales.data() + go;
      l.zeros = zeros.data() + go;
      l.g_idx = gidx.data() + co;
      wo += l.numel();
      go += static_cast<long>(GptqCuda::NumGroups(l.cols, opt)) * l.rows;
      co += l.cols;
    }
  }
  const int hmax = std::max({C, QD, I});
  BENCH_ASSIGN_OR_FAIL(auto hbuf, DeviceBuffer<float>::Create(static_cast<size_t>(hmax) * hmax));
  BENCH_ASSIGN_OR_FAIL(auto tokens, DeviceBuffer<int32_t>::Create(NT));
  BENCH_ASSIGN_OR_FAIL(auto wte, DeviceBuffer<bf16>::Create(static_cast<size_t>(f.vocab) * C));
  BENCH_ASSIGN_OR_FAIL(auto hidden, DeviceBuffer<bf16>::Create(NT * C));
  BENCH_ASSIGN_OR_FAIL(auto normed, DeviceBuffer<bf16>::Create(NT * C));
  BENCH_ASSIGN_OR_FAIL(auto att, DeviceBuffer<bf16>::Create(NT * QD));
  BENCH_ASSIGN_OR_FAIL(auto act, DeviceBuffer<bf16>::Create(NT * I));
  BENCH_ASSIGN_OR_FAIL(auto qc, DeviceBuffer<bf16>::Create(chunk_tokens * QD));
  BENCH_ASSIGN_OR_FAIL(auto kc, DeviceBuffer<bf16>::Create(chunk_tokens * KVD));
  BENCH_ASSIGN_OR_FAIL(auto vc, DeviceBuffer<bf16>::Create(chunk_tokens * KVD));
  BENCH_ASSIGN_OR_FAIL(auto upc, DeviceBuffer<bf16>::Create(chunk_tokens * I));
  BENCH_ASSIGN_OR_FAIL(auto tmpc, DeviceBuffer<bf16>::Create(chunk_tokens * C));
  BENCH_ASSIGN_OR_FAIL(auto norm_w, DeviceBuffer<float>::Create(C));
  BENCH_CHECK_OK(fill_constant(norm_w.data(), C, 1.0f, stream));

  // RoPE tables (theta 500000, Llama 3), positions restart in every sample.
  const int half = HD / 2;
  std::vector<float> cos_h(static_cast<size_t>(T) * half), sin_h(cos_h.size());
  for (int t = 0; t < T; ++t) {
    for (int i = 0; i < half; ++i) {
      const double angle = t / std::pow(500000.0, 2.0 * i / HD);
      cos_h[static_cast<size_t>(t) * half + i] = static_cast<float>(std::cos(angle));
      sin_h[static_cast<size_t>(t) * half + i] = static_cast<float>(std::sin(angle));
    }
  }
  BENCH_ASSIGN_OR_FAIL(auto cos_d, DeviceBuffer<float>::FromHost(cos_h, stream));
  BENCH_ASSIGN_OR_FAIL(auto sin_d, DeviceBuffer<float>::FromHost(sin_h, stream));

  // Pinned host staging for "save": one layer's qweight, qzeros, scales, g_idx.
  const size_t code_bytes = static_cast<size_t>(qweight_words) * sizeof(int32_t);
  // sparsegpt saves the pruned bf16 weights instead.
  const size_t save_bytes = is_sparse ? static_cast<size_t>(w_total) * sizeof(bf16)
                                      : code_bytes + qzeros_words * sizeof(int32_t) +
                                            groups_total * sizeof(__half) + cols_total * sizeof(int32_t);
  void* pinned = nullptr;
  BENCH_CHECK_OK(CudaStatus(cudaMallocHost(&pinned, save_bytes), "cudaMallocHost", __FILE__,
                            __LINE__));
  std::unique_ptr<void, void (*)(void*)> pinned_guard(pinned, [](void* p) { (void)cudaFreeHost(p); });

  // --stream-from-host: every layer's fp32 source weights in pinned host
  // memory (made here, untimed: the same seeded values "load" would make),
  // two device buffers, a copy stream and the events that order them.
  DeviceBuffer<float> w32_next;
  float* w_buf[2] = {w32.data(), nullptr};
  float* host_weights = nullptr;
  std::unique_ptr<void, void (*)(void*)> host_weights_guard(nullptr, [](void* p) { (void)cudaFreeHost(p); });
  cudaStream_t copy_stream = nullptr;
  cudaEvent_t copied[2] = {nullptr, nullptr}, consumed[2] = {nullptr, nullptr};
  const size_t layer_bytes = static_cast<size_t>(w_total) * sizeof(float);
  if (f.stream_from_host) {
    BENCH_ASSIGN_OR_FAIL(w32_next, DeviceBuffer<float>::Create(w_total));
    w_buf[1] = w32_next.data();
    const auto p0 = std::chrono::steady_clock::now();
    void* hw = nullptr;
    BENCH_CHECK_OK(CudaStatus(cudaMallocHost(&hw, layer_bytes * f.layers), "cudaMallocHost weights",
                              __FILE__, __LINE__));
    host_weights_guard.reset(hw);
    host_weights = static_cast<float*>(hw);
    for (int layer = 0; layer < f.layers; ++layer) {
      for (int k = 0; k < 7; ++k) {
        BENCH_CHECK_OK(fill_random_normal(lin[k].w, lin[k].numel(), 0.0f, 0.02f,
                                          (f.seed + 1) * 7919 + layer * 64 + k, stream));
      }
      BENCH_CHECK_OK(CudaStatus(cudaMemcpyAsync(host_weights + static_cast<size_t>(layer) * w_total,
                                                w32.data(), layer_bytes, cudaMemcpyDeviceToHost, stream),
                                "stage weights", __FILE__, __LINE__));
    }
    BENCH_CHECK_OK(CudaStatus(cudaStreamSynchronize(stream), "stage sync", __FILE__, __LINE__));
    BENCH_CHECK_OK(CudaStatus(cudaStreamCreateWithFlags(&copy_stream, cudaStreamNonBlocking), "copy stream",
                              __FILE__, __LINE__));
    for (int b = 0; b < 2; ++b) {
      BENCH_CHECK_OK(CudaStatus(cudaEventCreateWithFlags(&copied[b], cudaEventDisableTiming), "event",
                                __FILE__, __LINE__));
      BENCH_CHECK_OK(CudaStatus(cudaEventCreateWithFlags(&consumed[b], cudaEventDisableTiming), "event",
                                __FILE__, __LINE__));
    }
    std::printf("stream-from-host: %.2f GiB of fp32 weights staged in pinned host memory in %.1f s "
                "(untimed); %.2f GiB copied per layer\n",
                layer_bytes * f.layers / 1073741824.0,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - p0).count(),
                layer_bytes / 1073741824.0);
  }
  // Enqueues layer `layer`'s weights into buffer layer % 2 on the copy stream,
  // after the layer that last used that buffer has finished with it.
  auto prefetch = [&](int layer) -> absl::Status {
    const int b = layer % 2;
    if (layer >= 2) SR_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(copy_stream, consumed[b], 0));
    SR_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(w_buf[b], host_weights + static_cast<size_t>(layer) * w_total,
                                            layer_bytes, cudaMemcpyHostToDevice, copy_stream));
    SR_CUDA_RETURN_IF_ERROR(cudaEventRecord(copied[b], copy_stream));
    return absl::OkStatus();
  };
  long lin_offset[7];  // each Linear's place in a layer's weight buffer (as laid out above)
  for (int k = 0; k < 7; ++k) lin_offset[k] = lin[k].w - w32.data();
  if (f.stream_from_host) BENCH_CHECK_OK(prefetch(0));

  size_t free_b = 0, total_b = 0;
  BENCH_CHECK_OK(CudaStatus(cudaMemGetInfo(&free_b, &total_b), "memgetinfo", __FILE__, __LINE__));
  std::printf("device memory: %.1f GiB used of %.1f GiB after allocation\n",
              (total_b - free_b) / 1073741824.0, total_b / 1073741824.0);

  std::unique_ptr<GptqCuda> gptq;
  std::unique_ptr<SparseGptCuda> sgpt;
  if (is_gptq) {
    BENCH_ASSIGN_OR_FAIL(gptq, GptqCuda::Create(stream));
  } else if (is_sparse) {
    BENCH_ASSIGN_OR_FAIL(sgpt, SparseGptCuda::Create(stream));
  }
  PhaseTimer timer(stream);
  PhaseTimer ops(stream);              // --profile-ops
  double op_ms[kNumOpKinds] = {};      // summed over the layers

  // ---- embed -----------------------------------------------------------------------
  const auto wall0 = std::chrono::steady_clock::now();
  double embed_ms[kNumPhases] = {};
  BENCH_CHECK_OK(timer.Begin(kLoad));
  BENCH_CHECK_OK(fill_random_normal(wte.data(), static_cast<long>(f.vocab) * C, 0.0f, 1.0f,
                                    f.seed * 1000003 + 17, stream));
  BENCH_CHECK_OK(fill_random_tokens(tokens.data(), NT, f.vocab, f.seed * 1000003 + 29, stream));
  BENCH_CHECK_OK(timer.End());
  BENCH_CHECK_OK(timer.Begin(kForward));
  BENCH_CHECK_OK(embedding_forward(hidden.data(), tokens.data(), wte.data(), static_cast<int>(NT),
                                   f.vocab, C, stream));
  BENCH_CHECK_OK(timer.End());
  BENCH_CHECK_OK(timer.Collect(embed_ms));

  // Accumulates H over `x` [NT, cols] in chunks of `chunk` samples (the
  // reference's batches), into hbuf.
  auto accumulate = [&](const bf16* x, int cols) -> absl::Status {
    long n = 0;
    for (int s0 = 0; s0 < S; s0 += chunk) {
      const int b = std::min(chunk, S - s0);
      absl::Status st = hessian_accumulate(hbuf.data(), cols, &n,
                                           x + static_cast<size_t>(s0) * T * cols,
                                           static_cast<long>(b) * T, b, stream);
      if (!st.ok()) return st;
    }
    return absl::OkStatus();
  };
  double loss[7] = {};
  auto quantize = [&](Linear& l) -> absl::Status {
    GptqCudaOutputs out;
    out.codes = l.codes;
    out.scales = l.scales;
    out.zeros = l.zeros;
    out.g_idx = l.g_idx;
    out.weight_bf16 = l.wq;
    absl::StatusOr<SolveReport> r = gptq->Quantize(l.w, l.rows, opt, out);
    if (!r.ok()) return r.status();
    loss[&l - lin] += r->loss;
    return absl::OkStatus();
  };
  long pruned_total = 0;
  auto prune = [&](Linear& l) -> absl::Status {
    SparseGptCudaOutputs out;
    out.weight_bf16 = l.wq;
    absl::StatusOr<SparseGptCudaReport> r = sgpt->Prune(l.w, l.rows, sopt, out);
    if (!r.ok()) return r.status();
    loss[&l - lin] += r->report.loss;
    pruned_total += r->pruned;
    return absl::OkStatus();
  };
  // The solver step after a block's inputs are ready: H over x, then GPTQ or
  // SparseGPT of the Linears that consume it (nothing for --method forward).
  auto solve = [&](const bf16* x, int cols, std::initializer_list<int> which) -> absl::Status {
    if (is_forward) return absl::OkStatus();
    absl::Status st = timer.Begin(kHessian);
    if (st.ok()) st = accumulate(x, cols);
    if (st.ok()) st = timer.End();
    if (st.ok()) {
      st = is_gptq ? gptq->PrepareHessian(hbuf.data(), cols, opt)
                   : sgpt->PrepareHessian(hbuf.data(), cols, sopt);
    }
    for (int k : which) {
      if (st.ok()) st = is_gptq ? quantize(lin[k]) : prune(lin[k]);
    }
    return st;
  };
  if (is_gptq) {
    std::printf("\n%5s %9s %9s %9s %9s %9s %9s %9s %9s %10s\n", "layer", "load", "forward",
                "hessian", "hinv", "gptq-prep", "sweep", "trailing", "save", "total(ms)");
  } else if (is_sparse) {
    std::printf("\n%5s %9s %9s %9s %9s %9s %9s %9s %9s %10s\n", "layer", "load", "forward",
                "hessian", "hinv", "mask", "sweep", "trailing", "save", "total(ms)");
  } else {
    std::printf("\n%5s %9s %9s %10s\n", "layer", "load", "forward", "total(ms)");
  }
  double total_ms[kNumPhases] = {};
  GptqCudaTimes total_g;
  SparseGptCudaTimes total_s;
  double total_wall_ms = 0.0;
  int layers_done = 0;
  for (int layer = 0; layer < f.layers; ++layer) {
    if (f.budget_s > 0.0 && layer > 0) {
      const double elapsed_s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
      if (elapsed_s + 1.2 * total_wall_ms / 1000.0 / layer > f.budget_s) {
        std::printf("stopping after %d layers: the next would pass --budget-s %.0f\n", layer,
                    f.budget_s);
        break;
      }
    }
    const auto lw0 = std::chrono::steady_clock::now();
    double ms[kNumPhases] = {};
    if (gptq) gptq->mutable_times().Reset();
    if (sgpt) sgpt->mutable_times().Reset();

    // load: this layer's weights (seeded per layer and matrix); streamed:
    // wait for the prefetched copy, then start the next layer's.
    BENCH_CHECK_OK(timer.Begin(kLoad));
    if (f.stream_from_host) {
      const int b = layer % 2;
      BENCH_CHECK_OK(CudaStatus(cudaStreamWaitEvent(stream, copied[b], 0), "wait copy", __FILE__, __LINE__));
      for (int k = 0; k < 7; ++k) {
        lin[k].w = w_buf[b] + lin_offset[k];
        if (is_forward) BENCH_CHECK_OK(convert_to_bf16(lin[k].wq, lin[k].w, lin[k].numel(), stream));
      }
      if (layer + 1 < f.layers) BENCH_CHECK_OK(prefetch(layer + 1));
    }
    for (int k = 0; k < 7 && !f.stream_from_host; ++k) {
      const float stddev = 0.02f;
      BENCH_CHECK_OK(fill_random_normal(lin[k].w, lin[k].numel(), 0.0f, stddev,
                                        (f.seed + 1) * 7919 + layer * 64 + k, stream));
      // forward: the source weights as they are (the solvers write wq).
      if (is_forward) BENCH_CHECK_OK(convert_to_bf16(lin[k].wq, lin[k].w, lin[k].numel(), stream));
    }
    BENCH_CHECK_OK(timer.End());

    // Attention block.
    BENCH_CHECK_OK(timer.Begin(kForward));
    BENCH_OP(kOpNorm, rmsnorm_forward(normed.data(), nullptr, hidden.data(), norm_w.data(),
                                   static_cast<int>(NT), C, 1e-5f, stream));
    BENCH_CHECK_OK(timer.End());
    BENCH_CHECK_OK(solve(normed.data(), C, {0, 1, 2}));

    BENCH_CHECK_OK(timer.Begin(kForward));
    for (int s0 = 0; s0 < S; s0 += chunk) {
      const int b = std::min(chunk, S - s0);
      const int n = b * T;
      const bf16* x = normed.data() + static_cast<size_t>(s0) * T * C;
      BENCH_OP(kOpGemm, matmul_forward(qc.data(), x, lin[0].wq, nullptr, n, C, QD, stream));
      BENCH_OP(kOpGemm, matmul_forward(kc.data(), x, lin[1].wq, nullptr, n, C, KVD, stream));
      BENCH_OP(kOpGemm, matmul_forward(vc.data(), x, lin[2].wq, nullptr, n, C, KVD, stream));
      BENCH_OP(kOpRope, rope_forward(qc.data(), qc.data(), cos_d.data(), sin_d.data(), b, T, NH, HD,
                                  stream));
      BENCH_OP(kOpRope, rope_forward(kc.data(), kc.data(), cos_d.data(), sin_d.data(), b, T, NKV, HD,
                                  stream));
      BENCH_OP(kOpAttention, attention_forward(att.data() + static_cast<size_t>(s0) * T * QD, qc.data(),
                                       kc.data(), vc.data(), b, T, NH, NKV, HD, 0, stream));
    }
    BENCH_CHECK_OK(timer.End());
    BENCH_CHECK_OK(solve(att.data(), QD, {3}));

    BENCH_CHECK_OK(timer.Begin(kForward));
    for (int s0 = 0; s0 < S; s0 += chunk) {
      const int n = std::min(chunk, S - s0) * T;
      bf16* h = hidden.data() + static_cast<size_t>(s0) * T * C;
      BENCH_OP(kOpGemm, matmul_forward(tmpc.data(), att.data() + static_cast<size_t>(s0) * T * QD,
                                    lin[3].wq, nullptr, n, QD, C, stream));
      BENCH_OP(kOpResidual, residual_forward(h, h, tmpc.data(), static_cast<long>(n) * C, stream));
    }
    // MLP block.
    BENCH_OP(kOpNorm, rmsnorm_forward(normed.data(), nullptr, hidden.data(), norm_w.data(),
                                   static_cast<int>(NT), C, 1e-5f, stream));
    BENCH_CHECK_OK(timer.End());
    BENCH_CHECK_OK(solve(normed.data(), C, {4, 5}));

    BENCH_CHECK_OK(timer.Begin(kForward));
    for (int s0 = 0; s0 < S; s0 += chunk) {
      const int n = std::min(chunk, S - s0) * T;
      const bf16* x = normed.data() + static_cast<size_t>(s0) * T * C;
      bf16* a = act.data() + static_cast<size_t>(s0) * T * I;
      BENCH_OP(kOpGemm, matmul_forward(a, x, lin[4].wq, nullptr, n, C, I, stream));  // gate
      BENCH_OP(kOpGemm, matmul_forward(upc.data(), x, lin[5].wq, nullptr, n, C, I, stream));
      BENCH_OP(kOpSwiglu, swiglu_forward(a, a, upc.data(), static_cast<long>(n) * I, stream));
    }
    BENCH_CHECK_OK(timer.End());
    BENCH_CHECK_OK(solve(act.data(), I, {6}));

    BENCH_CHECK_OK(timer.Begin(kForward));
    for (int s0 = 0; s0 < S; s0 += chunk) {
      const int n = std::min(chunk, S - s0) * T;
      bf16* h = hidden.data() + static_cast<size_t>(s0) * T * C;
      BENCH_OP(kOpGemm, matmul_forward(tmpc.data(), act.data() + static_cast<size_t>(s0) * T * I,
                                    lin[6].wq, nullptr, n, I, C, stream));
      BENCH_OP(kOpResidual, residual_forward(h, h, tmpc.data(), static_cast<long>(n) * C, stream));
    }
    BENCH_CHECK_OK(timer.End());

    // save: pack into the GPTQ checkpoint layout on the GPU and copy to
    // pinned host memory.
    if (is_sparse) {
      // save: the pruned bf16 weights to pinned host memory.
      BENCH_CHECK_OK(timer.Begin(kSave));
      BENCH_CHECK_OK(CudaStatus(cudaMemcpyAsync(pinned, w16.data(), save_bytes,
                                                cudaMemcpyDeviceToHost, stream),
                                "save weights", __FILE__, __LINE__));
      BENCH_CHECK_OK(timer.End());
    }
    if (is_gptq) BENCH_CHECK_OK(timer.Begin(kSave));
    if (is_gptq) {
      long qw = 0, qz = 0;
      for (const Linear& l : lin) {
        const int groups = GptqCuda::NumGroups(l.cols, opt);
        BENCH_CHECK_OK(pack_gptq_qweight(qweight.data() + qw, l.codes, l.rows, l.cols, f.bits, stream));
        // gptq_v2 zero points: asymmetric GPTQ can make a zero of 0, which
        // v1's zero - 1 cannot hold (the CPU writer checks; timing is the same).
        BENCH_CHECK_OK(pack_gptq_qzeros(qzeros.data() + qz, l.zeros, groups, l.rows, f.bits, false, stream));
        qw += l.numel() * f.bits / 32;
        qz += static_cast<long>(groups) * l.rows * f.bits / 32;
      }
      BENCH_CHECK_OK(convert_to_fp16(scales16.data(), scales.data(), groups_total, stream));
      uint8_t* host = static_cast<uint8_t*>(pinned);
      size_t at = 0;
      for (auto [src, bytes] : {std::pair<const void*, size_t>{qweight.data(), code_bytes},
                                {qzeros.data(), qzeros_words * sizeof(int32_t)},
                                {scales16.data(), groups_total * sizeof(__half)},
                                {gidx.data(), cols_total * sizeof(int32_t)}}) {
        BENCH_CHECK_OK(CudaStatus(cudaMemcpyAsync(host + at, src, bytes, cudaMemcpyDeviceToHost, stream),
                                  "save", __FILE__, __LINE__));
        at += bytes;
      }
    }
    if (is_gptq) BENCH_CHECK_OK(timer.End());
    if (f.stream_from_host) {
      BENCH_CHECK_OK(CudaStatus(cudaEventRecord(consumed[layer % 2], stream), "consumed", __FILE__, __LINE__));
    }
    BENCH_CHECK_OK(timer.Collect(ms));
    if (f.profile_ops) BENCH_CHECK_OK(ops.Collect(op_ms));

    const double wall =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - lw0).count();
    if (is_gptq) {
      const GptqCudaTimes& g = gptq->times();
      std::printf("%5d %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %10.1f\n", layer, ms[kLoad],
                  ms[kForward], ms[kHessian], g.hinv_ms, g.prepare_ms, g.sweep_ms, g.trailing_ms,
                  ms[kSave], wall);
      total_g.hinv_ms += g.hinv_ms;
      total_g.prepare_ms += g.prepare_ms;
      total_g.sweep_ms += g.sweep_ms;
      total_g.trailing_ms += g.trailing_ms;
    } else if (is_sparse) {
      const SparseGptCudaTimes& g = sgpt->times();
      std::printf("%5d %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %10.1f\n", layer, ms[kLoad],
                  ms[kForward], ms[kHessian], g.hinv_ms, g.mask_ms, g.sweep_ms, g.trailing_ms,
                  ms[kSave], wall);
      total_s.hinv_ms += g.hinv_ms;
      total_s.mask_ms += g.mask_ms;
      total_s.sweep_ms += g.sweep_ms;
      total_s.trailing_ms += g.trailing_ms;
    } else {
      std::printf("%5d %9.1f %9.1f %10.1f\n", layer, ms[kLoad], ms[kForward], wall);
    }
    std::fflush(stdout);
    for (int p = 0; p < kNumPhases; ++p) total_ms[p] += ms[p];
    total_wall_ms += wall;
    ++layers_done;
  }
  const double wall_all =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - wall0).count();
  if (is_gptq) {
    std::printf("%5s %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %10.1f\n", "sum",
                total_ms[kLoad] + embed_ms[kLoad], total_ms[kForward] + embed_ms[kForward],
                total_ms[kHessian], total_g.hinv_ms, total_g.prepare_ms, total_g.sweep_ms,
                total_g.trailing_ms, total_ms[kSave], wall_all);
  } else if (is_sparse) {
    std::printf("%5s %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %10.1f\n", "sum",
                total_ms[kLoad] + embed_ms[kLoad], total_ms[kForward] + embed_ms[kForward],
                total_ms[kHessian], total_s.hinv_ms, total_s.mask_ms, total_s.sweep_ms,
                total_s.trailing_ms, total_ms[kSave], wall_all);
  } else {
    std::printf("%5s %9.1f %9.1f %10.1f\n", "sum", total_ms[kLoad] + embed_ms[kLoad],
                total_ms[kForward] + embed_ms[kForward], wall_all);
  }

  // ---- sanity: the final hidden state is finite and of sane size ------------------
  {
    const size_t n = std::min<size_t>(NT * C, 1 << 20);
    std::vector<bf16> hs(n);
    BENCH_CHECK_OK(hidden.CopyToHost(absl::MakeSpan(hs), stream));
    double sq = 0.0;
    long bad = 0;
    for (bf16 v : hs) {
      const float x = __bfloat162float(v);
      if (!std::isfinite(x)) ++bad;
      sq += static_cast<double>(x) * x;
    }
    std::printf("\nfinal hidden: rms %.4g over %zu values, %ld non-finite\n", std::sqrt(sq / n), n,
                bad);
    if (!is_forward) {
      std::printf("%s loss (sum over layers): ", is_gptq ? "gptq" : "sparsegpt");
      for (int k = 0; k < 7; ++k) std::printf("%s %.4g  ", lin[k].name, loss[k]);
      std::printf("\n");
    }
    if (is_sparse) {
      std::printf("pruned: %ld of %.0f weights (%.4f%%)\n", pruned_total,
                  static_cast<double>(w_total) * layers_done,
                  100.0 * pruned_total / (static_cast<double>(w_total) * layers_done));
    }
    bool loss_ok = true;
    for (double l : loss) loss_ok = loss_ok && std::isfinite(l) && l >= 0.0;
    if (bad > 0 || !loss_ok) {
      std::printf("FAIL: non-finite hidden state or loss\n");
      return 2;
    }
  }

  // ---- FLOP floor ------------------------------------------------------------------
  const double L = layers_done;
  const double params_layer = static_cast<double>(w_total);
  const double fwd_linear = 2.0 * params_layer * NT * L;
  const double fwd_attn = 4.0 * T * static_cast<double>(T) * HD * NH / 2.0 * S * L;
  // What hessian_accumulate computes (block-triangular for large H): inputs
  // of q/k/v and gate/up (C), o (QD), down (I).
  const double hess = (2.0 * hessian_accumulate_flops(C, NT) + hessian_accumulate_flops(QD, NT) +
                       hessian_accumulate_flops(I, NT)) * L;
  double sweep = 0.0;
  for (const Linear& l : lin) sweep += static_cast<double>(l.rows) * l.cols * l.cols;
  sweep *= L;
  // The inverse factors: the chain 4n³/3 FLOPs each, the flipped one 2n³/3.
  const double chol = (flipped ? 2.0 : 4.0) / 3.0 *
                      (2.0 * std::pow(static_cast<double>(C), 3) + std::pow(QD, 3.0) +
                       std::pow(static_cast<double>(I), 3)) * L;
  const double per_layer_s = total_wall_ms / 1000.0 / layers_done;
  const double setup_s = wall_all / 1000.0 - total_wall_ms / 1000.0;  // embed + checks
  if (f.profile_ops && layers_done > 0) {
    // fwd_linear / fwd_attn above count the layers that ran (L = layers_done).
    double sum = 0.0;
    for (double t : op_ms) sum += t;
    std::printf("\nforward by op over %d layers (CUDA events around every call; %.1f ms in all):\n", layers_done,
                sum);
    for (int k = 0; k < kNumOpKinds; ++k) {
      std::printf("  %-10s %9.1f ms  %5.1f%%", kOpNames[k], op_ms[k], sum > 0 ? 100.0 * op_ms[k] / sum : 0.0);
      if (k == kOpGemm && op_ms[k] > 0) std::printf("  %.0f TFLOP/s", fwd_linear / (op_ms[k] / 1e3) / 1e12);
      if (k == kOpAttention && op_ms[k] > 0) {
        std::printf("  %.0f TFLOP/s", fwd_attn / (op_ms[k] / 1e3) / 1e12);
      }
      std::printf("\n");
    }
    std::printf("PROFILE");
    for (int k = 0; k < kNumOpKinds; ++k) std::printf(" %s_ms=%.1f", kOpNames[k], op_ms[k]);
    std::printf("\n");
  }
  if (is_forward) {
    // Decoder layers only (the embedding gather is not a layer's work).
    const double forward_s = total_ms[kForward] / 1000.0;
    const double flops = fwd_linear + fwd_attn;
    const double floor_meas = flops / kBf16PeakMeasured;
    std::printf("\nFLOPs: forward linear %.3g + attention %.3g (bf16); floor %.2f s at nominal "
                "989 TFLOP/s, %.2f s at measured 790 TFLOP/s; measured forward %.2f s (%.0f%% of "
                "the measured-peak floor's speed)\n",
                fwd_linear, fwd_attn, flops / kBf16PeakNominal, floor_meas, forward_s,
                100.0 * floor_meas / forward_s);
    std::printf("RESULT method=forward layers=%d/%d samples=%d seqlen=%d tokens=%ld forward_s=%.3f "
                "tokens_per_s=%.0f tflops=%.1f\n",
                layers_done, f.layers, S, T, NT, forward_s,
                static_cast<double>(NT) / forward_s * layers_done / f.layers,
                flops / forward_s / 1e12);
    BENCH_CHECK_OK(CudaStatus(cudaStreamDestroy(stream), "stream destroy", __FILE__, __LINE__));
    return 0;
  }
  const double bf16_flops = fwd_linear + fwd_attn + hess;
  const double fp32_flops = sweep + chol;
  if (is_sparse) {
    // The same GEMM/Cholesky work as GPTQ; the mask's radix select only
    // streams the scores (4 passes over each W: bytes, not FLOPs).
    std::printf("\nFLOPs: forward linear %.3g + attention %.3g, hessian %.3g (bf16); "
                "sparsegpt trailing ~%.3g + inverse factors (%s) ~%.3g (fp32)\n",
                fwd_linear, fwd_attn, hess, sweep, f.inverse_factor.c_str(), chol);
    const double floor_nom = bf16_flops / kBf16PeakNominal + fp32_flops / kFp32Peak;
    const double floor_meas = bf16_flops / kBf16PeakMeasured + fp32_flops / kFp32Peak;
    std::printf("floor: %.2f s at nominal peaks (bf16 989 TFLOP/s, fp32 67), %.2f s at measured "
                "bf16 790 TFLOP/s; measured %.2f s total (%.0f%% of the measured-peak floor's "
                "speed)\n",
                floor_nom, floor_meas, wall_all / 1000.0,
                100.0 * floor_meas / (wall_all / 1000.0));
    std::printf("achieved: forward %.0f TFLOP/s, hessian %.0f TFLOP/s, trailing gemm %.1f "
                "TFLOP/s\n",
                (fwd_linear + fwd_attn) / (total_ms[kForward] / 1000.0) / 1e12,
                hess / (total_ms[kHessian] / 1000.0) / 1e12,
                sweep / (total_s.trailing_ms / 1000.0) / 1e12);
    char pattern[32];
    if (f.prune_n > 0) {
      std::snprintf(pattern, sizeof(pattern), "%d:%d", f.prune_n, f.prune_m);
    } else {
      std::snprintf(pattern, sizeof(pattern), "%.3g", f.sparsity);
    }
    std::printf("RESULT method=sparsegpt layers=%d/%d samples=%d seqlen=%d sparsity=%s "
                "total_s=%.2f per_layer_s=%.3f est_%d_layers_s=%.1f inverse_factor=%s\n",
                layers_done, f.layers, S, T, pattern, wall_all / 1000.0, per_layer_s, f.layers,
                setup_s + per_layer_s * f.layers, f.inverse_factor.c_str());
    BENCH_CHECK_OK(CudaStatus(cudaStreamDestroy(stream), "stream destroy", __FILE__, __LINE__));
    return 0;
  }
  std::printf("\nFLOPs: forward linear %.3g + attention %.3g, hessian %.3g (bf16); "
              "gptq trailing ~%.3g + inverse factors (%s) ~%.3g (fp32)\n",
              fwd_linear, fwd_attn, hess, sweep, f.inverse_factor.c_str(), chol);
  const double floor_nom = bf16_flops / kBf16PeakNominal + fp32_flops / kFp32Peak;
  const double floor_meas = bf16_flops / kBf16PeakMeasured + fp32_flops / kFp32Peak;
  std::printf("floor: %.2f s at nominal peaks (bf16 989 TFLOP/s, fp32 67), %.2f s at measured "
              "bf16 790 TFLOP/s; measured %.2f s total (%.0f%% of the measured-peak floor's "
              "speed)\n",
              floor_nom, floor_meas, wall_all / 1000.0, 100.0 * floor_meas / (wall_all / 1000.0));
  std::printf("achieved: forward %.0f TFLOP/s, hessian %.0f TFLOP/s, trailing gemm %.1f TFLOP/s\n",
              (fwd_linear + fwd_attn) / (total_ms[kForward] / 1000.0) / 1e12,
              hess / (total_ms[kHessian] / 1000.0) / 1e12,
              sweep / (total_g.trailing_ms / 1000.0) / 1e12);
  std::printf("RESULT layers=%d/%d samples=%d seqlen=%d total_s=%.2f per_layer_s=%.3f "
              "est_%d_layers_s=%.1f inverse_factor=%s\n",
              layers_done, f.layers, S, T, wall_all / 1000.0, per_layer_s, f.layers,
              setup_s + per_layer_s * f.layers, f.inverse_factor.c_str());
  BENCH_CHECK_OK(CudaStatus(cudaStreamDestroy(stream), "stream destroy", __FILE__, __LINE__));
  return 0;
}

}  // namespace
}  // namespace shrinkray

int main(int argc, char** argv) {
  shrinkray::Flags flags;
  if (!shrinkray::ParseFlags(argc, argv, &flags)) return 3;
  return shrinkray::Run(flags);
}
