// Causal GQA attention without a T x T score matrix (flash-attention style):
// query tiles stream over key/value tiles keeping a running row max m, a
// running denominator l and an unnormalised output O, rescaled by
// exp(m_old - m_new) whenever the max grows.
//
// Two kernels:
//  * FlashFwdKernel: flash-attention-2 forward on bf16 tensor cores through
//    mma.sync.m16n8k16 (fp32 accumulate). A CTA of kWarps warps owns
//    16 * kWarps queries of one (b, h); each warp owns 16 query rows and keeps
//    its Q fragments, the S = Q K^T tile (16 x 64) and the O accumulator
//    (16 x HD) in registers. The online softmax runs on the S fragments
//    (exp2 with a log2(e)-prescaled scale); P is rounded to bf16 and reused in
//    registers as the A operand of P V (the m16n8 accumulator layout of two
//    adjacent 8-key tiles is exactly the m16k16 A-operand layout). K/V tiles of
//    64 keys are double-buffered in shared memory with cp.async and read with
//    ldmatrix (V with .trans); Q is staged once in the second K/V buffer and
//    moved to registers before that buffer is used. Key tiles are walked from the diagonal
//    backwards; tiles wholly outside the causal/window band are never loaded,
//    and the per-element mask runs only on tiles that straddle the band or T.
//    Optionally writes lse[B, NH, T] = log(sum_j exp(s_ij)) (natural log of
//    the scaled scores), which the backward (attention_backward.cu) needs.
//  * AttentionTiledF32Kernel: fp32 inputs with HD 64 or 128 (the reference
//    forward_dtype float32): 32 queries per CTA share K/V tiles in shared
//    memory, four threads per query, online softmax per tile.
//  * AttentionSimtKernel: one warp per query row, fp32, any HD <= 256 — the
//    fallback (odd head sizes, bf16 without tensor cores) and a cross-check
//    in the tests.
#include <cstdint>

#include "core/kernels/cuda/mma.cuh"
#include "core/kernels/cuda/ops.cuh"

namespace shrinkray::kernels {
namespace {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---- flash-attention-2 forward ------------------------------------------------

template <int kHD, int kWarps>
struct FwdCfg {
  static_assert(kWarps == 4 || kWarps == 8, "Q must fit in one K/V stage");
  static constexpr int kThreads = kWarps * kWarpSize;
  static constexpr int kBr = 16 * kWarps;  // queries per CTA
  static constexpr int kBc = 64;           // keys per tile
  // Rows padded by 16 bytes: the 8 row addresses of an ldmatrix 8x8 load (and
  // of the cp.async stores) then fall in 8 distinct 16-byte bank groups.
  static constexpr int kLd = kHD + 8;
  static constexpr int kTileElems = kBc * kLd;
  // Two stages of (K, V). Q is first staged in stage 1 (kBr <= 2 kBc rows),
  // read into registers, and only then is stage 1 filled with keys.
  static constexpr int kBytes = 4 * kTileElems * 2;
  static_assert(kHD % 16 == 0, "HD must be a multiple of 16");
};

template <int kHD, int kWarps, int kMinBlocks>
__global__ void __launch_bounds__(kWarps * kWarpSize, kMinBlocks)
    FlashFwdKernel(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ q,
                   const bf16* __restrict__ k, const bf16* __restrict__ v, int T, int NH, int NKV,
                   int window, float scale_log2) {
  using C = FwdCfg<kHD, kWarps>;
  constexpr int kBr = C::kBr;
  constexpr int kBc = C::kBc;
  constexpr int kLd = C::kLd;
  constexpr int kDT = kHD / 8;    // 8-column output tiles
  constexpr int kKS = kHD / 16;   // k-steps of Q K^T
  constexpr int kNT = kBc / 8;    // 8-key score tiles
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* kvs = reinterpret_cast<bf16*>(smem_raw);  // stage s: K at 2s tiles, V at 2s + 1
  bf16* qs = kvs + 2 * C::kTileElems;                 // Q staging: stage 1

  // The latest query blocks have the most key tiles: schedule them first.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kBr;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int kvh = h / (NH / NKV);
  const long q_stride = static_cast<long>(NH) * kHD;
  const long kv_stride = static_cast<long>(NKV) * kHD;
  const bf16* qb = q + static_cast<long>(b) * T * q_stride + static_cast<long>(h) * kHD;
  const bf16* kb = k + static_cast<long>(b) * T * kv_stride + static_cast<long>(kvh) * kHD;
  const bf16* vb = v + static_cast<long>(b) * T * kv_stride + static_cast<long>(kvh) * kHD;

  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int g = lane / 4;  // fragment row (and row + 8)
  const int t = lane % 4;  // fragment column pair

  // Key tiles this query block can see: up to its last valid query, and from
  // the first key inside the window of its first query.
  const int q_last = min(q0 + kBr, T) - 1;
  const int kt_end = q_last / kBc;
  const int kt_begin = window > 0 ? max(0, q0 - window + 1) / kBc : 0;
  const int n_tiles = kt_end - kt_begin + 1;

  LoadTileAsync<kBr, kHD, C::kThreads>(qs, qb, q_stride, q0, T);
  LoadTileAsync<kBc, kHD, C::kThreads>(kvs, kb, kv_stride, kt_end * kBc, T);
  LoadTileAsync<kBc, kHD, C::kThreads>(kvs + C::kTileElems, vb, kv_stride, kt_end * kBc, T);
  CpAsyncCommit();
  CpAsyncWait<0>();
  __syncthreads();

  // Q fragments of this warp's 16 rows, kept in registers for the whole key loop.
  uint32_t qf[kKS][4];
#pragma unroll
  for (int ks_ = 0; ks_ < kKS; ++ks_) {
    const bf16* p =
        qs + (warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * kLd + ks_ * 16 + (lane / 16) * 8;
    Ldmatrix4(qf[ks_], p);
  }
  __syncthreads();  // stage 1 (the Q staging area) is free for keys from here

  float o[kDT][4];
#pragma unroll
  for (int n = 0; n < kDT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  // Running max (raw score units) and this thread's partial row sums for rows
  // g and g + 8 of the warp; m is identical across a quad, l is a partial.
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
  const int qi0 = q0 + warp * 16 + g;
  const int qi1 = qi0 + 8;

  for (int it = 0; it < n_tiles; ++it) {
    const int kt = kt_end - it;
    const int k0 = kt * kBc;
    const bf16* ks = kvs + (it & 1) * 2 * C::kTileElems;
    const bf16* vs = ks + C::kTileElems;
    if (it + 1 < n_tiles) {
      // Prefetch the next tile into the other stage; its last readers (the
      // previous iteration) passed the barrier at the end of that iteration.
      bf16* kn = kvs + ((it + 1) & 1) * 2 * C::kTileElems;
      LoadTileAsync<kBc, kHD, C::kThreads>(kn, kb, kv_stride, k0 - kBc, T);
      LoadTileAsync<kBc, kHD, C::kThreads>(kn + C::kTileElems, vb, kv_stride, k0 - kBc, T);
      CpAsyncCommit();
      CpAsyncWait<1>();  // everything but the prefetch has landed
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();

    // S = Q K^T (16 x 64) in registers: s[n] is the 16x8 tile of keys 8n..8n+7.
    float s[kNT][4];
#pragma unroll
    for (int n = 0; n < kNT; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int ks_ = 0; ks_ < kKS; ++ks_) {
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        // K is [key][d]: the 8x8 blocks (keys, d) are the B fragments as is.
        // Matrices: (keys 16np+0..7, d lo), (same keys, d hi), (keys +8, d lo),
        // (keys +8, d hi) -> b0, b1 of tile 2np, then of tile 2np + 1.
        uint32_t bk[4];
        Ldmatrix4(bk, ks + (np * 16 + (lane % 8) + (lane / 16) * 8) * kLd + ks_ * 16 +
                          ((lane / 8) % 2) * 8);
        Mma16816(s[2 * np], qf[ks_], bk[0], bk[1]);
        Mma16816(s[2 * np + 1], qf[ks_], bk[2], bk[3]);
      }
    }

    // Mask only tiles that cross the causal diagonal, the window edge or T.
    const bool need_mask = k0 + kBc - 1 > q0 || k0 + kBc > T ||
                           (window > 0 && q0 + kBr - 1 - k0 >= window);
    if (need_mask) {
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int kj = k0 + n * 8 + 2 * t + (e & 1);
          const int qi = e < 2 ? qi0 : qi1;
          const bool visible = kj <= qi && kj < T && (window <= 0 || qi - kj < window);
          if (!visible) s[n][e] = -INFINITY;
        }
      }
    }

    // Online softmax. A row with nothing visible yet keeps m = -inf; its
    // exponent base is then taken as 0 so that p = 2^-inf = 0, never NaN.
    float mx0 = m0, mx1 = m1;
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
      mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
      mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float base0 = mx0 == -INFINITY ? 0.0f : mx0 * scale_log2;
    const float base1 = mx1 == -INFINITY ? 0.0f : mx1 * scale_log2;
    const float alpha0 = Exp2(m0 * scale_log2 - base0);  // m0 = -inf: 0
    const float alpha1 = Exp2(m1 * scale_log2 - base1);
    m0 = mx0;
    m1 = mx1;
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
      s[n][0] = Exp2(fmaf(s[n][0], scale_log2, -base0));
      s[n][1] = Exp2(fmaf(s[n][1], scale_log2, -base0));
      s[n][2] = Exp2(fmaf(s[n][2], scale_log2, -base1));
      s[n][3] = Exp2(fmaf(s[n][3], scale_log2, -base1));
      sum0 += s[n][0] + s[n][1];
      sum1 += s[n][2] + s[n][3];
    }
    l0 = l0 * alpha0 + sum0;
    l1 = l1 * alpha1 + sum1;
#pragma unroll
    for (int n = 0; n < kDT; ++n) {
      o[n][0] *= alpha0;
      o[n][1] *= alpha0;
      o[n][2] *= alpha1;
      o[n][3] *= alpha1;
    }

    // O += P V. The A fragment of keys 16kk..16kk+15 is the accumulator pair
    // (s[2kk], s[2kk+1]) rounded to bf16: a0 = (g, 2t..) of tile 2kk, a1 =
    // (g+8, 2t..) of tile 2kk, a2/a3 the same of tile 2kk + 1.
#pragma unroll
    for (int kk = 0; kk < kNT / 2; ++kk) {
      uint32_t pa[4];
      pa[0] = PackBf16(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = PackBf16(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = PackBf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = PackBf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < kDT / 2; ++dp) {
        // V is [key][d] = B row-major: .trans gives the (k = key, n = d)
        // fragments. Matrices: (keys lo, d 16dp..+7), (keys hi, same d),
        // (keys lo, d +8), (keys hi, d +8) -> b0, b1 of d tile 2dp, then 2dp+1.
        uint32_t bv[4];
        Ldmatrix4Trans(bv, vs + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * kLd + dp * 16 +
                               (lane / 16) * 8);
        Mma16816(o[2 * dp], pa, bv[0], bv[1]);
        Mma16816(o[2 * dp + 1], pa, bv[2], bv[3]);
      }
    }
    __syncthreads();  // this stage's K/V fully read before it is refilled
  }

  // Finish the row sums across the quad, normalise and store.
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f;
  const float inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  bf16* ob = out + static_cast<long>(b) * T * q_stride + static_cast<long>(h) * kHD;
  if (qi0 < T) {
    bf16* row = ob + static_cast<long>(qi0) * q_stride + 2 * t;
#pragma unroll
    for (int n = 0; n < kDT; ++n) {
      *reinterpret_cast<__nv_bfloat162*>(row + n * 8) =
          __floats2bfloat162_rn(o[n][0] * inv0, o[n][1] * inv0);
    }
  }
  if (qi1 < T) {
    bf16* row = ob + static_cast<long>(qi1) * q_stride + 2 * t;
#pragma unroll
    for (int n = 0; n < kDT; ++n) {
      *reinterpret_cast<__nv_bfloat162*>(row + n * 8) =
          __floats2bfloat162_rn(o[n][2] * inv1, o[n][3] * inv1);
    }
  }
  if (lse != nullptr && t == 0) {
    // lse = m * scale + ln(l) = (m * scale * log2(e) + log2(l)) * ln(2).
    float* lrow = lse + (static_cast<long>(b) * NH + h) * T;
    if (qi0 < T) lrow[qi0] = l0 > 0.0f ? (m0 * scale_log2 + log2f(l0)) * kLn2 : -INFINITY;
    if (qi1 < T) lrow[qi1] = l1 > 0.0f ? (m1 * scale_log2 + log2f(l1)) * kLn2 : -INFINITY;
  }
}

template <int kHD, int kWarps, int kMinBlocks>
cudaError_t LaunchFlashFwd(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                           int B, int T, int NH, int NKV, int window, cudaStream_t stream) {
  using C = FwdCfg<kHD, kWarps>;
  // Opt in to more than 48 KiB of dynamic shared memory (per device; cheap to repeat).
  cudaError_t err = cudaFuncSetAttribute(FlashFwdKernel<kHD, kWarps, kMinBlocks>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, C::kBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid((T + C::kBr - 1) / C::kBr, NH, B);
  const float scale_log2 = kLog2e / sqrtf(static_cast<float>(kHD));
  FlashFwdKernel<kHD, kWarps, kMinBlocks><<<grid, C::kThreads, C::kBytes, stream>>>(
      out, lse, q, k, v, T, NH, NKV, window, scale_log2);
  return cudaGetLastError();
}

// ---- fp32 tiled ----------------------------------------------------------------

// kTiledBr query rows of one (b, h) per CTA share each tile of kTiledBc keys
// staged in shared memory, so K and V come from memory once per kTiledBr
// queries (the SIMT kernel reads them once per query: at seqlen 2048 that is
// L2 traffic of ~8 TB a layer at 8B shapes). Four threads per query row:
// thread s of a row owns the float4s s + 4t (t < HD/16) of its q and output,
// so the four read 64 contiguous bytes of a K or V row at a time and the
// eight rows of a warp read the same bytes (a broadcast; no bank conflicts).
// A row's partial dot products meet by two shuffles. Per tile, all scores
// first (registers), then one rescale of the accumulator by
// exp(m_old - m_new) and the P V sum, in fp32 (expf, as the SIMT kernel).
constexpr int kTiledSlices = 4;                         // threads per query row
constexpr int kTiledBr = 32;                            // query rows per CTA
constexpr int kTiledBc = 32;                            // keys per tile
constexpr int kTiledThreads = kTiledBr * kTiledSlices;  // 128

__device__ __forceinline__ float Dot4(float4 a, float4 b, float acc) {
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  acc = fmaf(a.z, b.z, acc);
  return fmaf(a.w, b.w, acc);
}
__device__ __forceinline__ float4 Axpy4(float p, float4 x, float4 y) {
  return make_float4(fmaf(p, x.x, y.x), fmaf(p, x.y, y.y), fmaf(p, x.z, y.z), fmaf(p, x.w, y.w));
}
__device__ __forceinline__ float4 Scale4(float4 x, float c) {
  return make_float4(x.x * c, x.y * c, x.z * c, x.w * c);
}

template <int kHD>
__global__ void __launch_bounds__(kTiledThreads)
    AttentionTiledF32Kernel(float* __restrict__ out, const float* __restrict__ q,
                            const float* __restrict__ k, const float* __restrict__ v, int T, int NH, int NKV,
                            int window, float scale) {
  static_assert(kHD % (4 * kTiledSlices) == 0, "HD must be a multiple of 16");
  constexpr int kRow4 = kHD / 4;                  // float4s per row
  constexpr int kVec = kRow4 / kTiledSlices;      // float4s per thread
  __shared__ float4 ks[kTiledBc][kRow4];
  __shared__ float4 vs[kTiledBc][kRow4];
  const int b = blockIdx.z;
  const int h = blockIdx.y;
  const int q0 = blockIdx.x * kTiledBr;
  const int row = threadIdx.x / kTiledSlices;
  const int slice = threadIdx.x % kTiledSlices;
  const int i = q0 + row;
  const bool valid = i < T;  // rows past T compute nothing visible and write nothing
  const int kvh = h / (NH / NKV);
  const long q_stride = static_cast<long>(NH) * kHD;
  const long kv_stride = static_cast<long>(NKV) * kHD;

  float4 qr[kVec];
  float4 acc[kVec];
  const float4* qi =
      reinterpret_cast<const float4*>(q + (static_cast<long>(b) * T + (valid ? i : 0)) * q_stride +
                                      static_cast<long>(h) * kHD);
#pragma unroll
  for (int t = 0; t < kVec; ++t) {
    qr[t] = valid ? qi[slice + kTiledSlices * t] : make_float4(0.f, 0.f, 0.f, 0.f);
    acc[t] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float m = -INFINITY;
  float l = 0.0f;
  const int last = min(q0 + kTiledBr, T) - 1;  // the CTA's last query row
  const int lo = window > 0 ? max(0, q0 - window + 1) : 0;
  for (int j0 = lo / kTiledBc * kTiledBc; j0 <= last; j0 += kTiledBc) {
    __syncthreads();  // every row is done with the previous tile
    for (int e = threadIdx.x; e < kTiledBc * kRow4; e += kTiledThreads) {
      const int jj = e / kRow4;
      const int c = e % kRow4;
      const int j = j0 + jj;
      float4 kk = make_float4(0.f, 0.f, 0.f, 0.f), vv = kk;
      if (j < T) {
        const long at = (static_cast<long>(b) * T + j) * kv_stride + static_cast<long>(kvh) * kHD;
        kk = reinterpret_cast<const float4*>(k + at)[c];
        vv = reinterpret_cast<const float4*>(v + at)[c];
      }
      ks[jj][c] = kk;
      vs[jj][c] = vv;
    }
    __syncthreads();
    float s[kTiledBc];
    float tile_max = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < kTiledBc; ++jj) {
      float d = 0.0f;
#pragma unroll
      for (int t = 0; t < kVec; ++t) d = Dot4(qr[t], ks[jj][slice + kTiledSlices * t], d);
      // Every lane takes part (no branch above): the row's four partial sums.
      d += __shfl_xor_sync(0xffffffffu, d, 1);
      d += __shfl_xor_sync(0xffffffffu, d, 2);
      const int j = j0 + jj;
      const bool visible = valid && j <= i && (window <= 0 || j > i - window);
      s[jj] = visible ? d * scale : -INFINITY;
      tile_max = fmaxf(tile_max, s[jj]);
    }
    const float m_new = fmaxf(m, tile_max);
    if (m_new != -INFINITY) {  // else nothing of this row is visible yet
      const float corr = expf(m - m_new);  // m = -inf before the first visible key: 0
      l *= corr;
#pragma unroll
      for (int t = 0; t < kVec; ++t) acc[t] = Scale4(acc[t], corr);
#pragma unroll
      for (int jj = 0; jj < kTiledBc; ++jj) {
        const float p = expf(s[jj] - m_new);  // hidden keys: exp(-inf) = 0
        l += p;
#pragma unroll
        for (int t = 0; t < kVec; ++t) acc[t] = Axpy4(p, vs[jj][slice + kTiledSlices * t], acc[t]);
      }
      m = m_new;
    }
  }
  if (!valid) return;
  float4* oi = reinterpret_cast<float4*>(out + (static_cast<long>(b) * T + i) * q_stride +
                                         static_cast<long>(h) * kHD);
  const float inv = 1.0f / l;  // key i is always visible: l >= 1
#pragma unroll
  for (int t = 0; t < kVec; ++t) oi[slice + kTiledSlices * t] = Scale4(acc[t], inv);
}

template <int kHD>
cudaError_t LaunchTiledF32(float* out, const float* q, const float* k, const float* v, int B, int T, int NH,
                           int NKV, int window, cudaStream_t stream) {
  const dim3 grid((T + kTiledBr - 1) / kTiledBr, NH, B);
  const float scale = 1.0f / sqrtf(static_cast<float>(kHD));
  AttentionTiledF32Kernel<kHD><<<grid, kTiledThreads, 0, stream>>>(out, q, k, v, T, NH, NKV, window, scale);
  return cudaGetLastError();
}

// ---- SIMT fallback ------------------------------------------------------------

constexpr int kSimtMaxHD = 256;
constexpr int kSimtPerLane = kSimtMaxHD / kWarpSize;
constexpr int kSimtWarps = 4;

// One warp per (b, h, query i); lane owns dims lane + 32*e. The score of each
// key is a warp reduction; the online softmax runs in fp32.
template <typename T>
__global__ void __launch_bounds__(kSimtWarps * kWarpSize)
    AttentionSimtKernel(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ q,
                        const T* __restrict__ k, const T* __restrict__ v, int B, int T_, int NH,
                        int NKV, int HD, int window, float scale) {
  const long task = static_cast<long>(blockIdx.x) * kSimtWarps + threadIdx.x / kWarpSize;
  if (task >= static_cast<long>(B) * NH * T_) return;  // whole warps leave together
  const int lane = threadIdx.x % kWarpSize;
  const int i = static_cast<int>(task % T_);
  const int h = static_cast<int>((task / T_) % NH);
  const int b = static_cast<int>(task / (static_cast<long>(T_) * NH));
  const int kvh = h / (NH / NKV);
  const long q_stride = static_cast<long>(NH) * HD;
  const long kv_stride = static_cast<long>(NKV) * HD;
  const T* qi = q + (static_cast<long>(b) * T_ + i) * q_stride + static_cast<long>(h) * HD;
  const T* kb = k + static_cast<long>(b) * T_ * kv_stride + static_cast<long>(kvh) * HD;
  const T* vb = v + static_cast<long>(b) * T_ * kv_stride + static_cast<long>(kvh) * HD;

  float qr[kSimtPerLane];
  float acc[kSimtPerLane];
#pragma unroll
  for (int e = 0; e < kSimtPerLane; ++e) {
    const int d = lane + e * kWarpSize;
    qr[e] = d < HD ? ToFloat(qi[d]) : 0.0f;
    acc[e] = 0.0f;
  }
  float m = -INFINITY;
  float l = 0.0f;
  const int lo = window > 0 ? max(0, i - window + 1) : 0;
  for (int j = lo; j <= i; ++j) {
    const T* kj = kb + static_cast<long>(j) * kv_stride;
    float dot = 0.0f;
#pragma unroll
    for (int e = 0; e < kSimtPerLane; ++e) {
      const int d = lane + e * kWarpSize;
      if (d < HD) dot += qr[e] * ToFloat(kj[d]);
    }
    const float s = WarpSum(dot) * scale;
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new);  // m = -inf on the first key: 0
    const float p = expf(s - m_new);
    l = l * corr + p;
    const T* vj = vb + static_cast<long>(j) * kv_stride;
#pragma unroll
    for (int e = 0; e < kSimtPerLane; ++e) {
      const int d = lane + e * kWarpSize;
      if (d < HD) acc[e] = acc[e] * corr + p * ToFloat(vj[d]);
    }
    m = m_new;
  }
  T* oi = out + (static_cast<long>(b) * T_ + i) * q_stride + static_cast<long>(h) * HD;
  const float inv = 1.0f / l;
#pragma unroll
  for (int e = 0; e < kSimtPerLane; ++e) {
    const int d = lane + e * kWarpSize;
    if (d < HD) oi[d] = FromFloat<T>(acc[e] * inv);
  }
  // m is in scaled-score units, so lse = m + ln(l) (key i is always visible: l >= 1).
  if (lse != nullptr && lane == 0) lse[(static_cast<long>(b) * NH + h) * T_ + i] = m + logf(l);
}

}  // namespace

bool AttentionTensorCoreOk(const void* out, const void* q, const void* k, const void* v, int NH,
                           int NKV, int HD) {
  (void)NH;
  (void)NKV;
  return (HD == 64 || HD == 128) && IsAligned16(out) && IsAligned16(q) && IsAligned16(k) &&
         IsAligned16(v);
}

// 4 warps (64 queries; 68 KiB of shared memory and 242 registers at HD 128:
// two CTAs per SM). Measured on an H100 at B=16, T=2048, NH=32, NKV=8, causal:
// ~250 TFLOP/s for HD 128 and HD 64; 8-warp CTAs (128 queries) and 3 CTAs per
// SM (register-capped) were no faster.
constexpr int kFwdWarps = 4;
constexpr int kFwdMinBlocks = 2;

cudaError_t LaunchAttentionTensorCore(bf16* out, float* lse, const bf16* q, const bf16* k,
                                      const bf16* v, int B, int T, int NH, int NKV, int HD,
                                      int window, cudaStream_t stream) {
  if (B == 0 || T == 0 || NH == 0) return cudaSuccess;
  if (HD == 128) {
    return LaunchFlashFwd<128, kFwdWarps, kFwdMinBlocks>(out, lse, q, k, v, B, T, NH, NKV, window,
                                                         stream);
  }
  if (HD == 64) {
    return LaunchFlashFwd<64, kFwdWarps, kFwdMinBlocks>(out, lse, q, k, v, B, T, NH, NKV, window,
                                                        stream);
  }
  return cudaErrorInvalidValue;
}

bool AttentionTiledF32Ok(const void* out, const void* q, const void* k, const void* v, int HD) {
  return (HD == 64 || HD == 128) && IsAligned16(out) && IsAligned16(q) && IsAligned16(k) && IsAligned16(v);
}

cudaError_t LaunchAttentionTiledF32(float* out, const float* q, const float* k, const float* v, int B, int T,
                                    int NH, int NKV, int HD, int window, cudaStream_t stream) {
  if (B == 0 || T == 0 || NH == 0) return cudaSuccess;
  if (HD == 128) return LaunchTiledF32<128>(out, q, k, v, B, T, NH, NKV, window, stream);
  if (HD == 64) return LaunchTiledF32<64>(out, q, k, v, B, T, NH, NKV, window, stream);
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t LaunchAttentionSimt(T* out, float* lse, const T* q, const T* k, const T* v, int B,
                                int T_, int NH, int NKV, int HD, int window,
                                cudaStream_t stream) {
  const long tasks = static_cast<long>(B) * NH * T_;
  if (tasks == 0) return cudaSuccess;
  if (HD > kSimtMaxHD) return cudaErrorInvalidValue;
  const long blocks = (tasks + kSimtWarps - 1) / kSimtWarps;
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  AttentionSimtKernel<T><<<static_cast<unsigned>(blocks), kSimtWarps * kWarpSize, 0, stream>>>(
      out, lse, q, k, v, B, T_, NH, NKV, HD, window, scale);
  return cudaGetLastError();
}

template cudaError_t LaunchAttentionSimt<float>(float*, float*, const float*, const float*,
                                                const float*, int, int, int, int, int, int,
                                                cudaStream_t);
template cudaError_t LaunchAttentionSimt<bf16>(bf16*, float*, const bf16*, const bf16*,
                                               const bf16*, int, int, int, int, int, int,
                                               cudaStream_t);

}  // namespace shrinkray::kernels
