// Fused forward-KL distillation + cross-entropy loss and its gradient w.r.t.
// the student logits (the GPU twin of train::DistillLoss with
// Divergence::kForwardKL and TeacherLogits), llm.c's fused-classifier scheme:
// one block per row; one read of the row computes every softmax statistic
// online in fp32, a second read writes the gradient over the logits in bf16.
#include <cmath>

#include "core/kernels/cuda/ops.cuh"
#include "core/kernels/cuda/train_ops_launch.h"

namespace shrinkray::kernels {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kDistillMaxThreads = 512;
constexpr int kDistillMinThreads = 64;

// Running (max, sum of exp(x - max)) of a stream of values; m = -inf, s = 0
// when empty. Finite inputs assumed (a -inf logit next to an empty state
// would give NaN; logits from a GEMM are finite).
__device__ __forceinline__ void Push(float& m, float& s, float x) {
  if (x > m) {
    s = s * __expf(m - x) + 1.0f;  // __expf(-inf) = 0 for the first value
    m = x;
  } else {
    s += __expf(x - m);
  }
}

// The same for the teacher, with a = sum exp(x - max) * w carried along
// (w = (t - s) / T: the KL's cross term).
__device__ __forceinline__ void PushWeighted(float& m, float& s, float& a, float x, float w) {
  if (x > m) {
    const float f = __expf(m - x);
    s = s * f + 1.0f;
    a = a * f + w;
    m = x;
  } else {
    const float e = __expf(x - m);
    s += e;
    a += e * w;
  }
}

// Merges (m2, s2[, a2]) into (m, s[, a]). Symmetric bit for bit (rounded
// products, no FMA contraction), so that every lane of a butterfly reduction
// ends with the same value.
__device__ __forceinline__ void Merge(float& m, float& s, float m2, float s2) {
  const float M = fmaxf(m, m2);
  if (M == -INFINITY) return;  // both empty
  s = __fadd_rn(__fmul_rn(s, __expf(m - M)), __fmul_rn(s2, __expf(m2 - M)));
  m = M;
}
__device__ __forceinline__ void MergeWeighted(float& m, float& s, float& a, float m2, float s2,
                                              float a2) {
  const float M = fmaxf(m, m2);
  if (M == -INFINITY) return;
  const float f1 = __expf(m - M);
  const float f2 = __expf(m2 - M);
  s = __fadd_rn(__fmul_rn(s, f1), __fmul_rn(s2, f2));
  a = __fadd_rn(__fmul_rn(a, f1), __fmul_rn(a2, f2));
  m = M;
}

// The per-row statistics: student at T (ms, ss), teacher at T (mt, st, at),
// student at T = 1 (m1, s1).
struct RowStats {
  float ms, ss, mt, st, at, m1, s1;
};

__device__ __forceinline__ RowStats EmptyStats() {
  return {-INFINITY, 0.0f, -INFINITY, 0.0f, 0.0f, -INFINITY, 0.0f};
}

__device__ __forceinline__ void MergeStats(RowStats& a, const RowStats& b) {
  Merge(a.ms, a.ss, b.ms, b.ss);
  MergeWeighted(a.mt, a.st, a.at, b.mt, b.st, b.at);
  Merge(a.m1, a.s1, b.m1, b.s1);
}

__device__ __forceinline__ RowStats ShuffleXor(const RowStats& a, int offset) {
  RowStats b;
  b.ms = __shfl_xor_sync(0xffffffffu, a.ms, offset);
  b.ss = __shfl_xor_sync(0xffffffffu, a.ss, offset);
  b.mt = __shfl_xor_sync(0xffffffffu, a.mt, offset);
  b.st = __shfl_xor_sync(0xffffffffu, a.st, offset);
  b.at = __shfl_xor_sync(0xffffffffu, a.at, offset);
  b.m1 = __shfl_xor_sync(0xffffffffu, a.m1, offset);
  b.s1 = __shfl_xor_sync(0xffffffffu, a.s1, offset);
  return b;
}

__device__ __forceinline__ RowStats WarpMergeStats(RowStats a) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    MergeStats(a, ShuffleXor(a, offset));
  }
  return a;
}

// Every thread of the block gets the merged statistics (blockDim.x a multiple
// of 32, at most 1024).
__device__ __forceinline__ RowStats BlockMergeStats(RowStats a) {
  __shared__ RowStats partial[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  a = WarpMergeStats(a);
  if (lane == 0) partial[warp] = a;
  __syncthreads();
  const int num_warps = blockDim.x / kWarpSize;
  a = lane < num_warps ? partial[lane] : EmptyStats();
  return WarpMergeStats(a);
}

// One block per row of logits [N, V] (bf16, overwritten with the gradient).
// kVec elements per access (8 = 128 bits when V and the pointers allow it).
//
// Pass 1 (reads the row once): online max/sum of u = s/T (student at T),
// v = t/T (teacher at T, with a = sum exp(v - max_v) (v - u)) and s (student
// at T = 1). Then lse_* = max + log(sum), and
//   KL(p_T || q_T) = sum_j p_j (v_j - u_j) - lse_t + lse_u
//                  = a / sum_t - lse_t + lse_u   (sum_j p_j = 1),
//   CE = lse_1 - s[target].
// Pass 2 writes, for every j,
//   d loss / d s_j = alpha T inv_rows (q_T,j - p_T,j)
//                  + (1 - alpha) inv_labelled (q_1,j - [j == target]).
// Every element of the row is read in pass 1 before the block barrier inside
// BlockMergeStats and, in pass 2, is read and written by one thread, so the
// in-place overwrite is race-free. The CE's s[target] is read in pass 1.
template <int kVec>
__global__ void __launch_bounds__(kDistillMaxThreads)
    DistillLossKernel(bf16* logits, float* __restrict__ kl_rows, float* __restrict__ ce_rows,
                      const bf16* __restrict__ teacher, const int32_t* __restrict__ targets,
                      int V, float alpha, float temperature, float inv_rows,
                      float inv_labelled) {
  const long row = blockIdx.x;
  bf16* s_row = logits + row * V;
  const bf16* t_row = teacher != nullptr ? teacher + row * V : nullptr;
  const bool has_teacher = t_row != nullptr;
  const int32_t target = targets[row];
  // A target >= V cannot be reported from here: it is ignored like a negative one.
  const bool labelled = target >= 0 && target < V;
  const float inv_t = 1.0f / temperature;
  const int num_vec = V / kVec;

  RowStats st = EmptyStats();
  float s_target = 0.0f;
  if (threadIdx.x == 0 && labelled) s_target = ToFloat(s_row[target]);
  for (int i = threadIdx.x; i < num_vec; i += blockDim.x) {
    float s[kVec];
    LoadAsFloat<bf16, kVec>(s_row + i * kVec, s);
    if (has_teacher) {
      float t[kVec];
      LoadAsFloat<bf16, kVec>(t_row + i * kVec, t);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const float u = s[k] * inv_t;
        const float v = t[k] * inv_t;
        Push(st.ms, st.ss, u);
        PushWeighted(st.mt, st.st, st.at, v, v - u);
      }
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) Push(st.m1, st.s1, s[k]);
  }
  st = BlockMergeStats(st);

  const float lse_1 = st.m1 + logf(st.s1);
  const float lse_u = has_teacher ? st.ms + logf(st.ss) : 0.0f;
  const float lse_v = has_teacher ? st.mt + logf(st.st) : 0.0f;
  if (threadIdx.x == 0) {
    if (kl_rows != nullptr) kl_rows[row] = has_teacher ? st.at / st.st - lse_v + lse_u : 0.0f;
    if (ce_rows != nullptr) ce_rows[row] = labelled ? lse_1 - s_target : 0.0f;
  }

  const float kd_scale = has_teacher ? alpha * temperature * inv_rows : 0.0f;
  const float ce_scale = labelled ? (1.0f - alpha) * inv_labelled : 0.0f;
  for (int i = threadIdx.x; i < num_vec; i += blockDim.x) {
    float s[kVec];
    float t[kVec];
    LoadAsFloat<bf16, kVec>(s_row + i * kVec, s);
    if (has_teacher) {
      LoadAsFloat<bf16, kVec>(t_row + i * kVec, t);
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      float g = 0.0f;
      if (has_teacher) {
        const float q = __expf(s[k] * inv_t - lse_u);
        const float p = __expf(t[k] * inv_t - lse_v);
        g = kd_scale * (q - p);
      }
      const int j = i * kVec + k;
      const float q1 = __expf(s[k] - lse_1);
      g += ce_scale * (q1 - (j == target ? 1.0f : 0.0f));
      s[k] = g;
    }
    StoreFromFloat<bf16, kVec>(s_row + i * kVec, s);
  }
}

template <int kVec>
void LaunchDistillVec(bf16* logits, float* kl_rows, float* ce_rows, const bf16* teacher,
                      const int32_t* targets, int N, int V, float alpha, float temperature,
                      float inv_rows, float inv_labelled, cudaStream_t stream) {
  // About one vector per thread for narrow rows, up to kDistillMaxThreads.
  const int num_vec = V / kVec;
  int threads = (num_vec + kWarpSize - 1) / kWarpSize * kWarpSize;
  threads = threads < kDistillMinThreads
                ? kDistillMinThreads
                : (threads > kDistillMaxThreads ? kDistillMaxThreads : threads);
  DistillLossKernel<kVec><<<N, threads, 0, stream>>>(logits, kl_rows, ce_rows, teacher, targets,
                                                     V, alpha, temperature, inv_rows,
                                                     inv_labelled);
}

}  // namespace

cudaError_t LaunchDistillLossBackward(bf16* logits, float* kl_rows, float* ce_rows,
                                      const bf16* teacher, const int32_t* targets, int N, int V,
                                      float alpha, float temperature, float inv_rows,
                                      float inv_labelled, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  constexpr int kVec = kVec128<bf16>;
  const bool vec = V % kVec == 0 && IsAligned16(logits) &&
                   (teacher == nullptr || IsAligned16(teacher));
  if (vec) {
    LaunchDistillVec<kVec>(logits, kl_rows, ce_rows, teacher, targets, N, V, alpha, temperature,
                           inv_rows, inv_labelled, stream);
  } else {
    LaunchDistillVec<1>(logits, kl_rows, ce_rows, teacher, targets, N, V, alpha, temperature,
                        inv_rows, inv_labelled, stream);
  }
  return cudaGetLastError();
}

}  // namespace shrinkray::kernels
