// Host side of the training attention ops declared in train_ops.h: the
// forward that also keeps lse for the backward, and the flash-attention-2
// backward (tensor cores for HD 64 / 128, SIMT for any other even HD <= 256).
// Argument checks, workspaces and launches; the kernels live in attention.cu
// and attention_backward.cu.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/strings/str_format.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/ops_launch.h"
#include "core/kernels/cuda/train_ops.h"

namespace shrinkray {
namespace {

using bf16 = __nv_bfloat16;

bool Aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

absl::Status CheckShape(const char* fn, int B, int T, int NH, int NKV, int HD) {
  if (B < 0 || T < 0 || NH <= 0 || NKV <= 0 || HD <= 0 || NH % NKV != 0 || HD % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: bad shape B=%d T=%d NH=%d NKV=%d HD=%d (need NH %% NKV == 0 and even HD)", fn, B, T,
        NH, NKV, HD));
  }
  return absl::OkStatus();
}

}  // namespace

// lse may be null (not wanted: the inference path of the trainer passes null).
absl::Status attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                               int B, int T, int NH, int NKV, int HD, int window,
                               cudaStream_t stream) {
  constexpr const char* kFn = "attention_forward";
  if (absl::Status st = CheckShape(kFn, B, T, NH, NKV, HD); !st.ok()) return st;
  if (HD > 256) {
    return absl::UnimplementedError(absl::StrFormat("%s: HD=%d > 256", kFn, HD));
  }
  if (static_cast<long>(B) * T == 0) return absl::OkStatus();
  if (out == nullptr) return absl::InvalidArgumentError("attention_forward: null out");
  if (q == nullptr) return absl::InvalidArgumentError("attention_forward: null q");
  if (k == nullptr) return absl::InvalidArgumentError("attention_forward: null k");
  if (v == nullptr) return absl::InvalidArgumentError("attention_forward: null v");
  if (out == q || out == k || out == v) {
    return absl::InvalidArgumentError("attention_forward: out aliases q, k or v");
  }
  if (kernels::AttentionTensorCoreOk(out, q, k, v, NH, NKV, HD)) {
    SR_CUDA_RETURN_IF_ERROR(
        kernels::LaunchAttentionTensorCore(out, lse, q, k, v, B, T, NH, NKV, HD, window, stream));
  } else {
    SR_CUDA_RETURN_IF_ERROR(
        kernels::LaunchAttentionSimt<bf16>(out, lse, q, k, v, B, T, NH, NKV, HD, window, stream));
  }
  return absl::OkStatus();
}

// Workspaces (fp32 dq accumulator [B, T, NH, HD] and delta [B, NH, T]) are
// taken from the stream-ordered allocator (cudaMallocAsync) and released with
// cudaFreeAsync on the same stream after the last kernel, so they live exactly
// as long as the enqueued work and nothing leaks on an error path.
absl::Status attention_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* out,
                                const float* lse, const bf16* q, const bf16* k, const bf16* v,
                                int B, int T, int NH, int NKV, int HD, int window,
                                cudaStream_t stream) {
  constexpr const char* kFn = "attention_backward";
  if (absl::Status st = CheckShape(kFn, B, T, NH, NKV, HD); !st.ok()) return st;
  if (HD > 256) {
    return absl::UnimplementedError(absl::StrFormat("%s: HD=%d > 256", kFn, HD));
  }
  // HD 64 / 128: the mma.sync flash-attention-2 kernel (16-byte aligned
  // pointers required); any other even HD: the SIMT kernels.
  const bool tensor_cores = HD == 64 || HD == 128;
  if (static_cast<long>(B) * T == 0) return absl::OkStatus();
  const struct {
    const void* p;
    const char* name;
  } args[] = {{dq, "dq"},   {dk, "dk"}, {dv, "dv"}, {dout, "dout"}, {out, "out"},
              {lse, "lse"}, {q, "q"},   {k, "k"},   {v, "v"}};
  for (const auto& a : args) {
    if (a.p == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: null %s", kFn, a.name));
    }
    if (tensor_cores && !Aligned16(a.p)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: %s is not 16-byte aligned", kFn, a.name));
    }
  }
  // Outputs are written while inputs are still being read by other CTAs.
  for (const void* o : {static_cast<const void*>(dq), static_cast<const void*>(dk),
                        static_cast<const void*>(dv)}) {
    for (const void* in : {static_cast<const void*>(dout), static_cast<const void*>(out),
                           static_cast<const void*>(q), static_cast<const void*>(k),
                           static_cast<const void*>(v)}) {
      if (o == in) {
        return absl::InvalidArgumentError("attention_backward: dq, dk or dv aliases an input");
      }
    }
  }
  if (dq == dk || dq == dv || dk == dv) {
    return absl::InvalidArgumentError("attention_backward: dq, dk and dv must be distinct");
  }

  const size_t n_dq = static_cast<size_t>(B) * T * NH * HD;
  const size_t n_delta = static_cast<size_t>(B) * NH * T;
  void* ws = nullptr;
  if (!tensor_cores) {
    // The SIMT kernels need only delta (dq is accumulated in registers).
    SR_CUDA_RETURN_IF_ERROR(cudaMallocAsync(&ws, n_delta * sizeof(float), stream));
    const cudaError_t launch = kernels::LaunchAttentionBackwardSimt(
        dq, dk, dv, dout, out, lse, q, k, v, static_cast<float*>(ws), B, T, NH, NKV, HD, window,
        stream);
    const cudaError_t freed = cudaFreeAsync(ws, stream);
    SR_CUDA_RETURN_IF_ERROR(launch);
    SR_CUDA_RETURN_IF_ERROR(freed);
    return absl::OkStatus();
  }
  // One allocation: dq accumulator, then delta (n_dq * 4 bytes keeps it aligned).
  SR_CUDA_RETURN_IF_ERROR(cudaMallocAsync(&ws, (n_dq + n_delta) * sizeof(float), stream));
  float* dq_acc = static_cast<float*>(ws);
  float* delta = dq_acc + n_dq;
  const cudaError_t launch = kernels::LaunchAttentionBackward(
      dq, dk, dv, dout, out, lse, q, k, v, dq_acc, delta, B, T, NH, NKV, HD, window, stream);
  const cudaError_t freed = cudaFreeAsync(ws, stream);
  SR_CUDA_RETURN_IF_ERROR(launch);
  SR_CUDA_RETURN_IF_ERROR(freed);
  return absl::OkStatus();
}

}  // namespace shrinkray
