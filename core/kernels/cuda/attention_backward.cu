// Flash-attention-2 backward for the causal GQA attention of attention.cu
// (bf16 tensor cores through mma.sync.m16n8k16, fp32 accumulation; HD in
// {64, 128}). Nothing of size T x T is ever written to global memory.
//
// Three kernels, enqueued by LaunchAttentionBackward:
//  1. AttnBwdPrepKernel: delta[b, h, i] = sum_d dout[b, i, h, d] * out[b, i, h, d]
//     (fp32; equals sum_j P_ij dP_ij, the softmax-backward correction term).
//  2. FlashBwdKernel: one CTA per (64-key block, kv head, batch), 4 warps, each
//     warp owning 16 keys. It loops over the NH / NKV query heads of its kv
//     head and, for each, over the 32-query blocks that can see its keys
//     (causal and window band), Q / dO / lse / delta double-buffered in shared
//     memory with cp.async. Per block, with the warp's keys as the M dimension:
//       S^T  = K Q^T                    (16 x 32, registers)
//       P^T  = exp(S^T * scale - lse)   (masked entries 0)
//       dV  += P^T dO                   (P^T reused in registers as A operand)
//       dP^T = V dO^T
//       dS^T = P^T * (dP^T - delta)
//       dK  += dS^T Q                   (dS^T reused in registers)
//       dQ  += dS K * scale             (dS^T goes through shared memory, read
//                                        back transposed with ldmatrix.trans;
//                                        fp32 atomicAdd into dq_acc)
//     dK (times scale) and dV of the whole group stay in registers and are
//     written once as bf16: no dk/dv workspace and no atomics for them.
//  3. AttnBwdDqConvertKernel: dq = bf16(dq_acc).
// The PTX helpers (cp.async, ldmatrix, mma.sync) are shared with attention.cu
// through mma.cuh.
//
// SIMT fallback for any even HD <= 256 (LaunchAttentionBackwardSimt; e.g.
// the head_dim 8 of small models), fp32 math on bf16 inputs, no T x T buffer,
// no atomics (deterministic), O(T^2 HD) work per head; lane d of a warp owns
// dims d, d + 32, ... as in the SIMT forward. Two kernels:
//  A. AttnBwdSimtDqKernel, one warp per (b, query head h, query i):
//       D_i  = dO_i . O_i                        (written to delta for B)
//       p_ij = exp(q_i . k_j * scale - lse_i)    over the visible keys j
//       dQ_i = scale * sum_j p_ij (dO_i . v_j - D_i) k_j
//  B. AttnBwdSimtDkvKernel, one warp per (b, kv head, key j): over the NH / NKV
//     query heads of the group and the queries i that see key j,
//       dV_j += p_ij dO_i,  dK_j += scale * p_ij (dO_i . v_j - D_i) q_i.
//     p_ij is recomputed (from lse) rather than stored.
#include <cstdint>

#include "core/kernels/cuda/mma.cuh"
#include "core/kernels/cuda/ops.cuh"

namespace shrinkray::kernels {
namespace {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;

// ---- 1. delta = rowsum(dout * out) ------------------------------------------

constexpr int kPrepWarps = 8;

// One warp per (b, i, h) row; 16-byte loads (HD is a multiple of 8).
__global__ void __launch_bounds__(kPrepWarps * kWarpSize)
    AttnBwdPrepKernel(float* __restrict__ delta, const bf16* __restrict__ dout,
                      const bf16* __restrict__ out, int B, int T, int NH, int HD) {
  const long row = static_cast<long>(blockIdx.x) * kPrepWarps + threadIdx.x / kWarpSize;
  const long rows = static_cast<long>(B) * T * NH;
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarpSize;
  const bf16* a = dout + row * HD;
  const bf16* o = out + row * HD;
  float acc = 0.0f;
  for (int d = lane * 8; d < HD; d += kWarpSize * 8) {
    float fa[8], fo[8];
    LoadAsFloat<bf16, 8>(a + d, fa);
    LoadAsFloat<bf16, 8>(o + d, fo);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc += fa[e] * fo[e];
  }
  acc = WarpSum(acc);
  if (lane == 0) {
    const int h = static_cast<int>(row % NH);
    const int i = static_cast<int>((row / NH) % T);
    const int b = static_cast<int>(row / (static_cast<long>(NH) * T));
    delta[(static_cast<long>(b) * NH + h) * T + i] = acc;
  }
}

// ---- 3. dq = bf16(dq_acc) -------------------------------------------------------

__global__ void AttnBwdDqConvertKernel(bf16* __restrict__ dq, const float* __restrict__ acc,
                                       long n) {
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    dq[i] = __float2bfloat16_rn(acc[i]);
  }
}

// ---- 2. main kernel ---------------------------------------------------------------

template <int kHD>
struct BwdCfg {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * kWarpSize;
  static constexpr int kBc = 16 * kWarps;  // keys per CTA (16 per warp)
  static constexpr int kBr = 32;           // queries per inner block
  static constexpr int kLd = kHD + 8;      // padded bf16 rows (conflict-free ldmatrix)
  static constexpr int kLdS = kBr + 8;     // dS^T rows: 80 bytes, conflict-free too
  static constexpr int kKElems = kBc * kLd;
  static constexpr int kQElems = kBr * kLd;
  // Layout (bf16 first, all offsets multiples of 16 bytes): K, V, Q[2], dO[2],
  // dS^T, then fp32 lse[2][kBr] (pre-multiplied by log2 e) and delta[2][kBr].
  static constexpr int kOffV = kKElems;
  static constexpr int kOffQ = 2 * kKElems;
  static constexpr int kOffDo = kOffQ + 2 * kQElems;
  static constexpr int kOffDs = kOffDo + 2 * kQElems;
  static constexpr int kBf16Elems = kOffDs + kBc * kLdS;
  static constexpr int kBytes = kBf16Elems * 2 + 4 * kBr * 4;
  static_assert((kBf16Elems * 2) % 16 == 0, "fp32 arrays must stay aligned");
};

template <int kHD>
__global__ void __launch_bounds__(BwdCfg<kHD>::kThreads)
    FlashBwdKernel(float* __restrict__ dq_acc, bf16* __restrict__ dk, bf16* __restrict__ dv,
                   const bf16* __restrict__ dout, const float* __restrict__ lse,
                   const float* __restrict__ delta, const bf16* __restrict__ q,
                   const bf16* __restrict__ k, const bf16* __restrict__ v, int T, int NH, int NKV,
                   int window, float scale, float scale_log2) {
  using C = BwdCfg<kHD>;
  constexpr int kBr = C::kBr;
  constexpr int kBc = C::kBc;
  constexpr int kLd = C::kLd;
  constexpr int kLdS = C::kLdS;
  constexpr int kKS = kHD / 16;  // k-steps over HD
  constexpr int kDT = kHD / 8;   // 8-column tiles over HD
  constexpr int kNT = kBr / 8;   // 8-query tiles of a block
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sm = reinterpret_cast<bf16*>(smem_raw);
  bf16* ks = sm;
  bf16* vs = sm + C::kOffV;
  bf16* qs_base = sm + C::kOffQ;
  bf16* dos_base = sm + C::kOffDo;
  bf16* dst = sm + C::kOffDs;  // dS^T [key][query]
  float* lse_s = reinterpret_cast<float*>(smem_raw + C::kBf16Elems * 2);  // [2][kBr]
  float* delta_s = lse_s + 2 * kBr;                                       // [2][kBr]

  const int k0 = blockIdx.x * kBc;
  const int kvh = blockIdx.y;
  const int b = blockIdx.z;
  const int group = NH / NKV;
  const long q_stride = static_cast<long>(NH) * kHD;
  const long kv_stride = static_cast<long>(NKV) * kHD;
  const long kv_off = static_cast<long>(b) * T * kv_stride + static_cast<long>(kvh) * kHD;

  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int g = lane / 4;
  const int t = lane % 4;

  // Query blocks that see at least part of keys [k0, k0 + kBc): from the
  // diagonal (i >= j) up to the window's reach (i <= j + window - 1) or T.
  const int qb_begin = k0 / kBr;
  const int q_hi = window > 0 ? min(T - 1, k0 + kBc - 1 + window - 1) : T - 1;
  const int nqb = q_hi / kBr - qb_begin + 1;
  const int n_it = nqb * group;

  // Iteration it: query head kvh * group + it / nqb, query block qb_begin + it % nqb.
  auto load_block = [&](int it, int stage) {
    const int h = kvh * group + it / nqb;
    const int qs0 = (qb_begin + it % nqb) * kBr;
    const long q_off = static_cast<long>(b) * T * q_stride + static_cast<long>(h) * kHD;
    LoadTileAsync<kBr, kHD, C::kThreads>(qs_base + stage * C::kQElems, q + q_off, q_stride, qs0,
                                         T);
    LoadTileAsync<kBr, kHD, C::kThreads>(dos_base + stage * C::kQElems, dout + q_off, q_stride,
                                         qs0, T);
    if (threadIdx.x < kBr) {
      const int i = qs0 + threadIdx.x;
      const long idx = (static_cast<long>(b) * NH + h) * T + i;
      lse_s[stage * kBr + threadIdx.x] = i < T ? lse[idx] * kLog2e : 0.0f;
      delta_s[stage * kBr + threadIdx.x] = i < T ? delta[idx] : 0.0f;
    }
  };

  LoadTileAsync<kBc, kHD, C::kThreads>(ks, k + kv_off, kv_stride, k0, T);
  LoadTileAsync<kBc, kHD, C::kThreads>(vs, v + kv_off, kv_stride, k0, T);
  load_block(0, 0);
  CpAsyncCommit();

  float dk_acc[kDT][4];
  float dv_acc[kDT][4];
#pragma unroll
  for (int n = 0; n < kDT; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[n][e] = dv_acc[n][e] = 0.0f;
  }
  // This thread's two keys (rows g and g + 8 of the warp's 16).
  const int kj0 = k0 + warp * 16 + g;
  const int kj1 = kj0 + 8;
  // Row address (within a [16 x HD] A tile) that this lane feeds to ldmatrix.
  const int a_row = warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
  const int a_col = (lane / 16) * 8;

  for (int it = 0; it < n_it; ++it) {
    const int stage = it & 1;
    const int h = kvh * group + it / nqb;
    const int qs0 = (qb_begin + it % nqb) * kBr;
    if (it + 1 < n_it) {
      // The other stage was last read before the mid-iteration barrier of
      // iteration it - 1, which every thread has passed.
      load_block(it + 1, stage ^ 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    const bf16* qs = qs_base + stage * C::kQElems;
    const bf16* dos = dos_base + stage * C::kQElems;
    const float* lse_b = lse_s + stage * kBr;
    const float* delta_b = delta_s + stage * kBr;

    // S^T = K_w Q^T and dP^T = V_w dO^T (16 keys x 32 queries each). A = the
    // warp's K / V rows; B = Q / dO stored [query][d], i.e. the (k = d,
    // n = query) fragments without transposition.
    float s[kNT][4];
    float dp[kNT][4];
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < kKS; ++kk) {
      uint32_t ka[4], va[4];
      Ldmatrix4(ka, ks + a_row * kLd + kk * 16 + a_col);
      Ldmatrix4(va, vs + a_row * kLd + kk * 16 + a_col);
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        const int b_off = (np * 16 + (lane % 8) + (lane / 16) * 8) * kLd + kk * 16 +
                          ((lane / 8) % 2) * 8;
        uint32_t qb[4], ob[4];
        Ldmatrix4(qb, qs + b_off);
        Ldmatrix4(ob, dos + b_off);
        Mma16816(s[2 * np], ka, qb[0], qb[1]);
        Mma16816(s[2 * np + 1], ka, qb[2], qb[3]);
        Mma16816(dp[2 * np], va, ob[0], ob[1]);
        Mma16816(dp[2 * np + 1], va, ob[2], ob[3]);
      }
    }

    // P^T and dS^T = P^T (dP^T - delta) in place (s becomes P, dp becomes dS).
    // Element (n, e): key kj0 (e < 2) or kj1, query qs0 + 8n + 2t + (e & 1).
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 8 + 2 * t + (e & 1);
        const int qi = qs0 + c;
        const int kj = e < 2 ? kj0 : kj1;
        const bool visible = kj <= qi && qi < T && (window <= 0 || qi - kj < window);
        const float p = visible ? Exp2(fmaf(s[n][e], scale_log2, -lse_b[c])) : 0.0f;
        s[n][e] = p;
        dp[n][e] = p * (dp[n][e] - delta_b[c]);
      }
    }

    // dV += P^T dO and dK += dS^T Q: A from registers (the accumulator pair of
    // query tiles 2kk, 2kk + 1 is the A fragment of queries 16kk..16kk+15);
    // B = dO / Q stored [query][d] = row-major (k = query, n = d): .trans.
#pragma unroll
    for (int kk = 0; kk < kNT / 2; ++kk) {
      uint32_t pa[4], sa[4];
      pa[0] = PackBf16(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = PackBf16(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = PackBf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = PackBf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      sa[0] = PackBf16(dp[2 * kk][0], dp[2 * kk][1]);
      sa[1] = PackBf16(dp[2 * kk][2], dp[2 * kk][3]);
      sa[2] = PackBf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
      sa[3] = PackBf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
      for (int dp2 = 0; dp2 < kDT / 2; ++dp2) {
        const int b_off = (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * kLd + dp2 * 16 +
                          (lane / 16) * 8;
        uint32_t ob[4], qb[4];
        Ldmatrix4Trans(ob, dos + b_off);
        Ldmatrix4Trans(qb, qs + b_off);
        Mma16816(dv_acc[2 * dp2], pa, ob[0], ob[1]);
        Mma16816(dv_acc[2 * dp2 + 1], pa, ob[2], ob[3]);
        Mma16816(dk_acc[2 * dp2], sa, qb[0], qb[1]);
        Mma16816(dk_acc[2 * dp2 + 1], sa, qb[2], qb[3]);
      }
      // dS^T (bf16, the values dK just used) to shared memory for dQ.
      // Rows: this warp's keys; columns: queries 16kk + (0..15).
      bf16* r0 = dst + (warp * 16 + g) * kLdS + kk * 16 + 2 * t;
      bf16* r1 = r0 + 8 * kLdS;
      *reinterpret_cast<uint32_t*>(r0) = sa[0];
      *reinterpret_cast<uint32_t*>(r1) = sa[1];
      *reinterpret_cast<uint32_t*>(r0 + 8) = sa[2];
      *reinterpret_cast<uint32_t*>(r1 + 8) = sa[3];
    }
    __syncthreads();  // dS^T of all four warps is in shared memory

    // dQ[32 x HD] += dS (32 queries x 64 keys) K (64 keys x HD) * scale. Warp w
    // takes query rows 16 (w % 2)..+15 and d columns (w / 2) * HD / 2..+HD/2.
    // A = dS stored transposed ([key][query]): .trans gives the (m = query,
    // k = key) fragments; matrices (q lo, keys lo), (q hi, keys lo), (q lo,
    // keys hi), (q hi, keys hi). B = K [key][d] row-major (k = key): .trans.
    {
      const int mt = warp % 2;
      const int d0 = (warp / 2) * (kHD / 2);
      float acc[kDT / 2][4];
#pragma unroll
      for (int n = 0; n < kDT / 2; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kBc / 16; ++kk) {
        uint32_t a[4];
        Ldmatrix4Trans(a, dst + (kk * 16 + (lane % 8) + (lane / 16) * 8) * kLdS + mt * 16 +
                              ((lane / 8) % 2) * 8);
#pragma unroll
        for (int dp2 = 0; dp2 < kDT / 4; ++dp2) {
          uint32_t kb[4];
          Ldmatrix4Trans(kb, ks + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * kLd + d0 +
                                 dp2 * 16 + (lane / 16) * 8);
          Mma16816(acc[2 * dp2], a, kb[0], kb[1]);
          Mma16816(acc[2 * dp2 + 1], a, kb[2], kb[3]);
        }
      }
      const int qi0 = qs0 + mt * 16 + g;
      const int qi1 = qi0 + 8;
      float* dq_h = dq_acc + static_cast<long>(b) * T * q_stride + static_cast<long>(h) * kHD +
                    d0 + 2 * t;
      if (qi0 < T) {
        float* row = dq_h + static_cast<long>(qi0) * q_stride;
#pragma unroll
        for (int n = 0; n < kDT / 2; ++n) {
          atomicAdd(row + n * 8, acc[n][0] * scale);
          atomicAdd(row + n * 8 + 1, acc[n][1] * scale);
        }
      }
      if (qi1 < T) {
        float* row = dq_h + static_cast<long>(qi1) * q_stride;
#pragma unroll
        for (int n = 0; n < kDT / 2; ++n) {
          atomicAdd(row + n * 8, acc[n][2] * scale);
          atomicAdd(row + n * 8 + 1, acc[n][3] * scale);
        }
      }
    }
    // The next iteration's first barrier orders these dS^T reads before the
    // next dS^T writes; no barrier needed here.
  }

  // dK = scale * sum dS^T Q, dV = sum P^T dO over the whole group: bf16 once.
  bf16* dkb = dk + kv_off + 2 * t;
  bf16* dvb = dv + kv_off + 2 * t;
  if (kj0 < T) {
    const long off = static_cast<long>(kj0) * kv_stride;
#pragma unroll
    for (int n = 0; n < kDT; ++n) {
      *reinterpret_cast<__nv_bfloat162*>(dkb + off + n * 8) =
          __floats2bfloat162_rn(dk_acc[n][0] * scale, dk_acc[n][1] * scale);
      *reinterpret_cast<__nv_bfloat162*>(dvb + off + n * 8) =
          __floats2bfloat162_rn(dv_acc[n][0], dv_acc[n][1]);
    }
  }
  if (kj1 < T) {
    const long off = static_cast<long>(kj1) * kv_stride;
#pragma unroll
    for (int n = 0; n < kDT; ++n) {
      *reinterpret_cast<__nv_bfloat162*>(dkb + off + n * 8) =
          __floats2bfloat162_rn(dk_acc[n][2] * scale, dk_acc[n][3] * scale);
      *reinterpret_cast<__nv_bfloat162*>(dvb + off + n * 8) =
          __floats2bfloat162_rn(dv_acc[n][2], dv_acc[n][3]);
    }
  }
}

template <int kHD>
cudaError_t LaunchFlashBwd(float* dq_acc, bf16* dk, bf16* dv, const bf16* dout, const float* lse,
                           const float* delta, const bf16* q, const bf16* k, const bf16* v, int B,
                           int T, int NH, int NKV, int window, cudaStream_t stream) {
  using C = BwdCfg<kHD>;
  cudaError_t err = cudaFuncSetAttribute(FlashBwdKernel<kHD>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, C::kBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid((T + C::kBc - 1) / C::kBc, NKV, B);
  const float scale = 1.0f / sqrtf(static_cast<float>(kHD));
  FlashBwdKernel<kHD><<<grid, C::kThreads, C::kBytes, stream>>>(
      dq_acc, dk, dv, dout, lse, delta, q, k, v, T, NH, NKV, window, scale, scale * kLog2e);
  return cudaGetLastError();
}

// ---- SIMT fallback (any even HD <= 256) -----------------------------------------

constexpr int kSimtBwdMaxHD = 256;
constexpr int kSimtBwdPerLane = kSimtBwdMaxHD / kWarpSize;
constexpr int kSimtBwdWarps = 4;

// A: dq and delta. Task = (b, h, i), i fastest (neighbouring warps share keys).
__global__ void __launch_bounds__(kSimtBwdWarps * kWarpSize)
    AttnBwdSimtDqKernel(bf16* __restrict__ dq, float* __restrict__ delta,
                        const bf16* __restrict__ dout, const bf16* __restrict__ out,
                        const float* __restrict__ lse, const bf16* __restrict__ q,
                        const bf16* __restrict__ k, const bf16* __restrict__ v, int B, int T,
                        int NH, int NKV, int HD, int window, float scale) {
  const long task = static_cast<long>(blockIdx.x) * kSimtBwdWarps + threadIdx.x / kWarpSize;
  if (task >= static_cast<long>(B) * NH * T) return;  // whole warps leave together
  const int lane = threadIdx.x % kWarpSize;
  const int i = static_cast<int>(task % T);
  const int h = static_cast<int>((task / T) % NH);
  const int b = static_cast<int>(task / (static_cast<long>(T) * NH));
  const int kvh = h / (NH / NKV);
  const long q_stride = static_cast<long>(NH) * HD;
  const long kv_stride = static_cast<long>(NKV) * HD;
  const long row = (static_cast<long>(b) * T + i) * q_stride + static_cast<long>(h) * HD;
  const bf16* kb = k + static_cast<long>(b) * T * kv_stride + static_cast<long>(kvh) * HD;
  const bf16* vb = v + static_cast<long>(b) * T * kv_stride + static_cast<long>(kvh) * HD;

  float qr[kSimtBwdPerLane], dor[kSimtBwdPerLane], acc[kSimtBwdPerLane];
  float dsum = 0.0f;
#pragma unroll
  for (int e = 0; e < kSimtBwdPerLane; ++e) {
    const int d = lane + e * kWarpSize;
    const bool in = d < HD;
    qr[e] = in ? ToFloat(q[row + d]) : 0.0f;
    dor[e] = in ? ToFloat(dout[row + d]) : 0.0f;
    if (in) dsum += dor[e] * ToFloat(out[row + d]);
    acc[e] = 0.0f;
  }
  const float D = WarpSum(dsum);
  const long stat = (static_cast<long>(b) * NH + h) * T + i;
  const float lse_i = lse[stat];
  const int lo = window > 0 ? max(0, i - window + 1) : 0;
  for (int j = lo; j <= i; ++j) {
    const bf16* kj = kb + static_cast<long>(j) * kv_stride;
    const bf16* vj = vb + static_cast<long>(j) * kv_stride;
    float kr[kSimtBwdPerLane];
    float sdot = 0.0f, pdot = 0.0f;
#pragma unroll
    for (int e = 0; e < kSimtBwdPerLane; ++e) {
      const int d = lane + e * kWarpSize;
      kr[e] = 0.0f;
      if (d < HD) {
        kr[e] = ToFloat(kj[d]);
        sdot += qr[e] * kr[e];
        pdot += dor[e] * ToFloat(vj[d]);
      }
    }
    const float s = WarpSum(sdot) * scale;
    const float dp = WarpSum(pdot);
    const float p = expf(s - lse_i);  // lse_i >= s: p in [0, 1]
    const float ds = p * (dp - D);
#pragma unroll
    for (int e = 0; e < kSimtBwdPerLane; ++e) acc[e] += ds * kr[e];
  }
#pragma unroll
  for (int e = 0; e < kSimtBwdPerLane; ++e) {
    const int d = lane + e * kWarpSize;
    if (d < HD) dq[row + d] = __float2bfloat16_rn(acc[e] * scale);
  }
  if (lane == 0) delta[stat] = D;
}

// B: dk and dv. Task = (b, kvh, j), j fastest. Reads delta from kernel A.
__global__ void __launch_bounds__(kSimtBwdWarps * kWarpSize)
    AttnBwdSimtDkvKernel(bf16* __restrict__ dk, bf16* __restrict__ dv,
                         const bf16* __restrict__ dout, const float* __restrict__ lse,
                         const float* __restrict__ delta, const bf16* __restrict__ q,
                         const bf16* __restrict__ k, const bf16* __restrict__ v, int B, int T,
                         int NH, int NKV, int HD, int window, float scale) {
  const long task = static_cast<long>(blockIdx.x) * kSimtBwdWarps + threadIdx.x / kWarpSize;
  if (task >= static_cast<long>(B) * NKV * T) return;
  const int lane = threadIdx.x % kWarpSize;
  const int j = static_cast<int>(task % T);
  const int kvh = static_cast<int>((task / T) % NKV);
  const int b = static_cast<int>(task / (static_cast<long>(T) * NKV));
  const int group = NH / NKV;
  const long q_stride = static_cast<long>(NH) * HD;
  const long kv_stride = static_cast<long>(NKV) * HD;
  const long kv_row = (static_cast<long>(b) * T + j) * kv_stride + static_cast<long>(kvh) * HD;

  float kr[kSimtBwdPerLane], vr[kSimtBwdPerLane], dk_acc[kSimtBwdPerLane],
      dv_acc[kSimtBwdPerLane];
#pragma unroll
  for (int e = 0; e < kSimtBwdPerLane; ++e) {
    const int d = lane + e * kWarpSize;
    kr[e] = d < HD ? ToFloat(k[kv_row + d]) : 0.0f;
    vr[e] = d < HD ? ToFloat(v[kv_row + d]) : 0.0f;
    dk_acc[e] = dv_acc[e] = 0.0f;
  }
  // Queries that see key j: the diagonal up to the window's reach (or T).
  const int hi = window > 0 ? min(T - 1, j + window - 1) : T - 1;
  for (int g = 0; g < group; ++g) {
    const int h = kvh * group + g;
    const bf16* qh = q + static_cast<long>(b) * T * q_stride + static_cast<long>(h) * HD;
    const bf16* doh = dout + static_cast<long>(b) * T * q_stride + static_cast<long>(h) * HD;
    const long stat0 = (static_cast<long>(b) * NH + h) * T;
    for (int i = j; i <= hi; ++i) {
      const bf16* qi = qh + static_cast<long>(i) * q_stride;
      const bf16* doi = doh + static_cast<long>(i) * q_stride;
      float qv[kSimtBwdPerLane], dov[kSimtBwdPerLane];
      float sdot = 0.0f, pdot = 0.0f;
#pragma unroll
      for (int e = 0; e < kSimtBwdPerLane; ++e) {
        const int d = lane + e * kWarpSize;
        qv[e] = dov[e] = 0.0f;
        if (d < HD) {
          qv[e] = ToFloat(qi[d]);
          dov[e] = ToFloat(doi[d]);
          sdot += qv[e] * kr[e];
          pdot += dov[e] * vr[e];
        }
      }
      const float s = WarpSum(sdot) * scale;
      const float dp = WarpSum(pdot);
      const float p = expf(s - lse[stat0 + i]);
      const float ds = p * (dp - delta[stat0 + i]);
#pragma unroll
      for (int e = 0; e < kSimtBwdPerLane; ++e) {
        dv_acc[e] += p * dov[e];
        dk_acc[e] += ds * qv[e];
      }
    }
  }
#pragma unroll
  for (int e = 0; e < kSimtBwdPerLane; ++e) {
    const int d = lane + e * kWarpSize;
    if (d < HD) {
      dk[kv_row + d] = __float2bfloat16_rn(dk_acc[e] * scale);
      dv[kv_row + d] = __float2bfloat16_rn(dv_acc[e]);
    }
  }
}

}  // namespace

cudaError_t LaunchAttentionBackwardSimt(bf16* dq, bf16* dk, bf16* dv, const bf16* dout,
                                        const bf16* out, const float* lse, const bf16* q,
                                        const bf16* k, const bf16* v, float* delta, int B, int T,
                                        int NH, int NKV, int HD, int window,
                                        cudaStream_t stream) {
  if (B == 0 || T == 0) return cudaSuccess;
  if (HD <= 0 || HD > kSimtBwdMaxHD || NKV <= 0 || NH % NKV != 0) return cudaErrorInvalidValue;
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  const long q_tasks = static_cast<long>(B) * NH * T;
  AttnBwdSimtDqKernel<<<static_cast<unsigned>((q_tasks + kSimtBwdWarps - 1) / kSimtBwdWarps),
                        kSimtBwdWarps * kWarpSize, 0, stream>>>(
      dq, delta, dout, out, lse, q, k, v, B, T, NH, NKV, HD, window, scale);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const long kv_tasks = static_cast<long>(B) * NKV * T;
  AttnBwdSimtDkvKernel<<<static_cast<unsigned>((kv_tasks + kSimtBwdWarps - 1) / kSimtBwdWarps),
                         kSimtBwdWarps * kWarpSize, 0, stream>>>(
      dk, dv, dout, lse, delta, q, k, v, B, T, NH, NKV, HD, window, scale);
  return cudaGetLastError();
}

cudaError_t LaunchAttentionBackward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout,
                                    const bf16* out, const float* lse, const bf16* q,
                                    const bf16* k, const bf16* v, float* dq_acc, float* delta,
                                    int B, int T, int NH, int NKV, int HD, int window,
                                    cudaStream_t stream) {
  if (B == 0 || T == 0) return cudaSuccess;
  if (HD != 64 && HD != 128) return cudaErrorInvalidValue;
  const long rows = static_cast<long>(B) * T * NH;
  const long n = rows * HD;
  cudaError_t err = cudaMemsetAsync(dq_acc, 0, static_cast<size_t>(n) * sizeof(float), stream);
  if (err != cudaSuccess) return err;
  AttnBwdPrepKernel<<<static_cast<unsigned>((rows + kPrepWarps - 1) / kPrepWarps),
                      kPrepWarps * kWarpSize, 0, stream>>>(delta, dout, out, B, T, NH, HD);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  err = HD == 128 ? LaunchFlashBwd<128>(dq_acc, dk, dv, dout, lse, delta, q, k, v, B, T, NH, NKV,
                                        window, stream)
                  : LaunchFlashBwd<64>(dq_acc, dk, dv, dout, lse, delta, q, k, v, B, T, NH, NKV,
                                       window, stream);
  if (err != cudaSuccess) return err;
  AttnBwdDqConvertKernel<<<GridFor(n), kGridThreads, 0, stream>>>(dq, dq_acc, n);
  return cudaGetLastError();
}

}  // namespace shrinkray::kernels
