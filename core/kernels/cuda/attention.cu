// Causal GQA attention without a T x T score matrix (flash-attention style):
// query tiles stream over key/value tiles keeping a running row max m, a
// running denominator l and an unnormalised output O, rescaled by
// exp(m_old - m_new) whenever the max grows.
//
// Two kernels:
//  * FlashAttentionTcKernel: bf16 tensor cores via WMMA (16x16x16, fp32
//    accumulate). A CTA of 4 warps owns 64 queries of one (b, h); each warp
//    owns 16 query rows. S = Q K^T goes through shared memory so that the
//    softmax can see whole rows (WMMA fragments have an opaque layout); O lives
//    in shared memory in fp32 for the same reason and is reloaded into
//    accumulator fragments for each P V product.
//  * AttentionSimtKernel: one warp per query row, fp32, any HD <= 256 — the
//    fallback (fp32 inputs, odd head sizes) and a cross-check in the tests.
#include <mma.h>

#include "core/kernels/cuda/ops.cuh"

namespace shrinkray::kernels {
namespace {

namespace wmma = nvcuda::wmma;
using bf16 = __nv_bfloat16;

constexpr int kBr = 64;  // queries per CTA
constexpr int kBc = 64;  // keys per tile
constexpr int kTcWarps = kBr / 16;
constexpr int kTcThreads = kTcWarps * kWarpSize;

template <int kHD>
struct TcLayout {
  // Leading dimensions padded against bank conflicts; multiples of 8 (bf16)
  // and 4 (fp32) as WMMA requires, and 16-row offsets stay 32-byte aligned.
  static constexpr int kLdQ = kHD + 8;  // bf16, for Q, K and V tiles
  static constexpr int kLdS = kBc + 4;  // fp32 scores
  static constexpr int kLdP = kBc + 8;  // bf16 probabilities
  static constexpr int kLdO = kHD + 4;  // fp32 output accumulator
  static constexpr int kQBytes = kBr * kLdQ * 2;
  static constexpr int kKBytes = kBc * kLdQ * 2;
  static constexpr int kSBytes = kBr * kLdS * 4;
  static constexpr int kPBytes = kBr * kLdP * 2;
  static constexpr int kOBytes = kBr * kLdO * 4;
  static constexpr int kOffK = kQBytes;
  static constexpr int kOffV = kOffK + kKBytes;
  static constexpr int kOffS = kOffV + kKBytes;
  static constexpr int kOffP = kOffS + kSBytes;
  static constexpr int kOffO = kOffP + kPBytes;
  static constexpr int kOffM = kOffO + kOBytes;
  static constexpr int kOffL = kOffM + kBr * 4;
  static constexpr int kBytes = kOffL + kBr * 4;
  static_assert(kOffK % 32 == 0 && kOffV % 32 == 0 && kOffS % 32 == 0 && kOffP % 32 == 0 &&
                    kOffO % 32 == 0,
                "WMMA tiles need 32-byte aligned bases");
};

// Copies `rows` rows of kHD bf16 (global row stride `stride` elements) into a
// shared tile with leading dimension ld, 16 bytes at a time; rows at or past
// `valid` are zero-filled.
template <int kHD>
__device__ __forceinline__ void LoadTile(bf16* dst, int ld, const bf16* src, long stride,
                                         int row0, int valid) {
  constexpr int kChunks = kHD / 8;
  for (int c = threadIdx.x; c < kBr * kChunks; c += kTcThreads) {
    const int r = c / kChunks;
    const int cc = c % kChunks;
    int4 val = make_int4(0, 0, 0, 0);
    if (row0 + r < valid) {
      val = *reinterpret_cast<const int4*>(src + static_cast<long>(row0 + r) * stride + cc * 8);
    }
    *reinterpret_cast<int4*>(dst + r * ld + cc * 8) = val;
  }
}

template <int kHD>
__global__ void __launch_bounds__(kTcThreads)
    FlashAttentionTcKernel(bf16* __restrict__ out, const bf16* __restrict__ q,
                           const bf16* __restrict__ k, const bf16* __restrict__ v, int T, int NH,
                           int NKV, int window, float scale) {
  using L = TcLayout<kHD>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem);
  bf16* ks = reinterpret_cast<bf16*>(smem + L::kOffK);
  bf16* vs = reinterpret_cast<bf16*>(smem + L::kOffV);
  float* ss = reinterpret_cast<float*>(smem + L::kOffS);
  bf16* ps = reinterpret_cast<bf16*>(smem + L::kOffP);
  float* os = reinterpret_cast<float*>(smem + L::kOffO);
  float* ms = reinterpret_cast<float*>(smem + L::kOffM);
  float* ls = reinterpret_cast<float*>(smem + L::kOffL);

  const int q0 = blockIdx.x * kBr;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int kvh = h / (NH / NKV);
  const long q_stride = static_cast<long>(NH) * kHD;
  const long kv_stride = static_cast<long>(NKV) * kHD;
  const bf16* qb = q + static_cast<long>(b) * T * q_stride + static_cast<long>(h) * kHD;
  const bf16* kb = k + static_cast<long>(b) * T * kv_stride + static_cast<long>(kvh) * kHD;
  const bf16* vb = v + static_cast<long>(b) * T * kv_stride + static_cast<long>(kvh) * kHD;
  bf16* ob = out + static_cast<long>(b) * T * q_stride + static_cast<long>(h) * kHD;

  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;

  LoadTile<kHD>(qs, L::kLdQ, qb, q_stride, q0, T);
  for (int i = threadIdx.x; i < kBr * L::kLdO; i += kTcThreads) os[i] = 0.0f;
  for (int i = threadIdx.x; i < kBr; i += kTcThreads) {
    ms[i] = -INFINITY;
    ls[i] = 0.0f;
  }

  // Key tiles this query tile can see: up to its last (valid) query, and from
  // the first key inside the window of its first query.
  const int q_last = min(q0 + kBr, T) - 1;
  const int kt_end = q_last / kBc;
  const int kt_begin = window > 0 ? max(0, q0 - window + 1) / kBc : 0;

  // Softmax ownership: 2 lanes per row, each half of the kBc columns.
  const int my_row = warp * 16 + lane / 2;  // row within the CTA tile
  const int my_half = lane % 2;
  const int qi = q0 + my_row;               // query position

  for (int kt = kt_begin; kt <= kt_end; ++kt) {
    const int k0 = kt * kBc;
    __syncthreads();  // previous tile's K/V fully consumed (and Q/O init visible)
    LoadTile<kHD>(ks, L::kLdQ, kb, kv_stride, k0, T);
    LoadTile<kHD>(vs, L::kLdQ, vb, kv_stride, k0, T);
    __syncthreads();

    // S[16 x kBc] = Q_w K^T for this warp's rows.
    {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kBc / 16];
#pragma unroll
      for (int n = 0; n < kBc / 16; ++n) wmma::fill_fragment(acc[n], 0.0f);
#pragma unroll
      for (int kk = 0; kk < kHD; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
        wmma::load_matrix_sync(a, qs + warp * 16 * L::kLdQ + kk, L::kLdQ);
#pragma unroll
        for (int n = 0; n < kBc / 16; ++n) {
          // K stored [key][d] row-major is K^T [d][key] column-major.
          wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> bk;
          wmma::load_matrix_sync(bk, ks + n * 16 * L::kLdQ + kk, L::kLdQ);
          wmma::mma_sync(acc[n], a, bk, acc[n]);
        }
      }
#pragma unroll
      for (int n = 0; n < kBc / 16; ++n) {
        wmma::store_matrix_sync(ss + warp * 16 * L::kLdS + n * 16, acc[n], L::kLdS,
                                wmma::mem_row_major);
      }
    }
    __syncwarp();

    // Online softmax on this warp's 16 rows.
    {
      float* srow = ss + my_row * L::kLdS;
      bf16* prow = ps + my_row * L::kLdP;
      const int c_begin = my_half * (kBc / 2);
      float mx = -INFINITY;
      for (int c = c_begin; c < c_begin + kBc / 2; ++c) {
        const int kj = k0 + c;
        const bool visible = kj <= qi && kj < T && (window <= 0 || qi - kj < window);
        const float s = visible ? srow[c] * scale : -INFINITY;
        srow[c] = s;
        mx = fmaxf(mx, s);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float m_old = ms[my_row];
      const float m_new = fmaxf(m_old, mx);
      float sum = 0.0f;
      for (int c = c_begin; c < c_begin + kBc / 2; ++c) {
        const float s = srow[c];
        // A fully masked row so far has m_new = -inf: keep p = 0, not NaN.
        const float p = s == -INFINITY ? 0.0f : expf(s - m_new);
        const bf16 pb = __float2bfloat16_rn(p);
        prow[c] = pb;
        sum += __bfloat162float(pb);  // l sums what P V actually multiplies
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      const float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
      float* orow = os + my_row * L::kLdO;
      for (int d = my_half * (kHD / 2); d < (my_half + 1) * (kHD / 2); ++d) orow[d] *= alpha;
      __syncwarp();  // both lanes of the row read ms/ls before lane 0 writes
      if (my_half == 0) {
        ms[my_row] = m_new;
        ls[my_row] = ls[my_row] * alpha + sum;
      }
    }
    __syncwarp();

    // O_w += P_w V.
#pragma unroll
    for (int n = 0; n < kHD / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      float* optr = os + warp * 16 * L::kLdO + n * 16;
      wmma::load_matrix_sync(acc, optr, L::kLdO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kBc; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> bv;
        wmma::load_matrix_sync(a, ps + warp * 16 * L::kLdP + kk, L::kLdP);
        wmma::load_matrix_sync(bv, vs + kk * L::kLdQ + n * 16, L::kLdQ);
        wmma::mma_sync(acc, a, bv, acc);
      }
      wmma::store_matrix_sync(optr, acc, L::kLdO, wmma::mem_row_major);
    }
    __syncwarp();
  }
  __syncthreads();

  // out = O / l, 8 bf16 (16 bytes) per store.
  constexpr int kChunks = kHD / 8;
  for (int c = threadIdx.x; c < kBr * kChunks; c += kTcThreads) {
    const int r = c / kChunks;
    const int cc = c % kChunks;
    if (q0 + r >= T) continue;
    const float l = ls[r];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    float vals[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) vals[e] = os[r * L::kLdO + cc * 8 + e] * inv;
    StoreFromFloat<bf16, 8>(ob + static_cast<long>(q0 + r) * q_stride + cc * 8, vals);
  }
}

template <int kHD>
cudaError_t LaunchTc(bf16* out, const bf16* q, const bf16* k, const bf16* v, int B, int T, int NH,
                     int NKV, int window, cudaStream_t stream) {
  using L = TcLayout<kHD>;
  // Opt in to more than 48 KiB of dynamic shared memory (per device; cheap to repeat).
  cudaError_t err = cudaFuncSetAttribute(FlashAttentionTcKernel<kHD>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, L::kBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid((T + kBr - 1) / kBr, NH, B);
  const float scale = 1.0f / sqrtf(static_cast<float>(kHD));
  FlashAttentionTcKernel<kHD><<<grid, kTcThreads, L::kBytes, stream>>>(out, q, k, v, T, NH, NKV,
                                                                       window, scale);
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
    AttentionSimtKernel(T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ k,
                        const T* __restrict__ v, int B, int T_, int NH, int NKV, int HD,
                        int window, float scale) {
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
}

}  // namespace

bool AttentionTensorCoreOk(const void* out, const void* q, const void* k, const void* v, int NH,
                           int NKV, int HD) {
  (void)NH;
  (void)NKV;
  return (HD == 64 || HD == 128) && IsAligned16(out) && IsAligned16(q) && IsAligned16(k) &&
         IsAligned16(v);
}

cudaError_t LaunchAttentionTensorCore(bf16* out, const bf16* q, const bf16* k, const bf16* v,
                                      int B, int T, int NH, int NKV, int HD, int window,
                                      cudaStream_t stream) {
  if (B == 0 || T == 0 || NH == 0) return cudaSuccess;
  if (HD == 128) return LaunchTc<128>(out, q, k, v, B, T, NH, NKV, window, stream);
  if (HD == 64) return LaunchTc<64>(out, q, k, v, B, T, NH, NKV, window, stream);
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t LaunchAttentionSimt(T* out, const T* q, const T* k, const T* v, int B, int T_, int NH,
                                int NKV, int HD, int window, cudaStream_t stream) {
  const long tasks = static_cast<long>(B) * NH * T_;
  if (tasks == 0) return cudaSuccess;
  if (HD > kSimtMaxHD) return cudaErrorInvalidValue;
  const long blocks = (tasks + kSimtWarps - 1) / kSimtWarps;
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  AttentionSimtKernel<T><<<static_cast<unsigned>(blocks), kSimtWarps * kWarpSize, 0, stream>>>(
      out, q, k, v, B, T_, NH, NKV, HD, window, scale);
  return cudaGetLastError();
}

template cudaError_t LaunchAttentionSimt<float>(float*, const float*, const float*, const float*,
                                                int, int, int, int, int, int, cudaStream_t);
template cudaError_t LaunchAttentionSimt<bf16>(bf16*, const bf16*, const bf16*, const bf16*, int,
                                               int, int, int, int, int, cudaStream_t);

}  // namespace shrinkray::kernels
