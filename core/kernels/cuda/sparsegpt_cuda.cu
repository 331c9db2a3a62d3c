// SparseGPT kernels: the exact k-th score selection for the unstructured mask
// and the in-block column sweep. The numerics follow core/algo/sparsegpt.cc:
// scores (w * w) / (d * d) and the sweep in fp32 with every product and
// difference rounded separately (no FMA contraction), so that one block
// matches the CPU bit for bit given the same inputs; the loss accumulates in
// double per row as on the CPU.
#include "core/kernels/cuda/ops.cuh"
#include "core/kernels/cuda/quant_grid.cuh"
#include "core/kernels/cuda/sparsegpt_cuda_launch.h"

namespace shrinkray::kernels {
namespace {

constexpr int kMaxBlock = kSparseGptMaxBlock;
constexpr int kHistThreads = 256;
constexpr int kBins = 256;
constexpr long kMaxHistBlocks = 132L * 4;

// The reference's score W1² / diag(Hinv1)², rounded as the CPU rounds it.
__device__ __forceinline__ float Score(float w, float d) {
  return __fdiv_rn(__fmul_rn(w, w), __fmul_rn(d, d));
}

// One pass of the radix select: histogram of the 8-bit digit at `shift` of
// the scores whose higher digits equal the prefix found so far.
__global__ void __launch_bounds__(kHistThreads)
    SparseGptHistKernel(const float* __restrict__ wk, const float* __restrict__ hinv, int rows,
                        int cols, int i1, int count, int pass, uint32_t* __restrict__ work) {
  __shared__ uint32_t hist[kBins];
  __shared__ float diag[kMaxBlock];
  for (int j = threadIdx.x; j < count; j += blockDim.x) {
    diag[j] = hinv[static_cast<long>(i1 + j) * cols + i1 + j];
  }
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) hist[b] = 0u;
  const uint32_t prefix = pass == 0 ? 0u : work[0];
  const int shift = 24 - 8 * pass;
  __syncthreads();
  const long n = static_cast<long>(rows) * count;
  for (long idx = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<long>(gridDim.x) * blockDim.x) {
    const long r = idx / count;
    const int j = static_cast<int>(idx - r * count);
    const uint32_t bits = __float_as_uint(Score(wk[r * cols + i1 + j], diag[j]));
    // pass 0 has no prefix (and a shift by 32 would be undefined).
    if (pass == 0 || (bits >> (shift + 8)) == prefix) atomicAdd(&hist[(bits >> shift) & 0xffu], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) {
    if (hist[b] != 0u) atomicAdd(&work[2 + b], hist[b]);
  }
}

// One CTA of kBins threads: finds the bin holding rank k, appends it to the
// prefix, keeps the rank left inside it, and clears the histogram.
__global__ void __launch_bounds__(kBins) SparseGptSelectKernel(uint32_t* work, int pass,
                                                               uint32_t kth) {
  __shared__ uint32_t hist[kBins];
  const int tid = threadIdx.x;
  const uint32_t k = pass == 0 ? kth : work[1];
  const uint32_t prefix = pass == 0 ? 0u : work[0];
  hist[tid] = work[2 + tid];
  work[2 + tid] = 0u;
  __syncthreads();  // every read of work[0..1] happened before the writes below
  if (tid < kWarpSize) {
    constexpr int kPerLane = kBins / kWarpSize;
    uint32_t sum = 0;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) sum += hist[tid * kPerLane + i];
    uint32_t incl = sum;
#pragma unroll
    for (int off = 1; off < kWarpSize; off <<= 1) {
      const uint32_t t = __shfl_up_sync(0xffffffffu, incl, off);
      if (tid >= off) incl += t;
    }
    const uint32_t excl = incl - sum;
    if (excl <= k && k < incl) {  // exactly one lane: the counts add up to more than k
      uint32_t below = excl;
      for (int i = 0; i < kPerLane; ++i) {
        const int b = tid * kPerLane + i;
        if (k < below + hist[b]) {
          work[0] = (prefix << 8) | static_cast<uint32_t>(b);
          work[1] = k - below;
          break;
        }
        below += hist[b];
      }
    }
  }
}

// The sweep's threads: kSweepLanes per row, lane t owning the block's
// columns j ≡ t (mod kSweepLanes) of its row; kSweepRows rows per CTA. The W
// tile's row stride puts a warp's 4 rows × 8 lanes (8 consecutive columns) in
// 32 distinct banks ((36·j + rr) mod 32 = 4·(j mod 8) + rr), as in
// gptq_cuda.cu.
constexpr int kSweepLanes = 8;
constexpr int kSweepRows = 32;
constexpr int kSweepThreads = kSweepRows * kSweepLanes;
constexpr int kLdW = kSweepRows + kWarpSize / kSweepLanes;
constexpr int kSweepSmem =
    (kMaxBlock * kMaxBlock + kMaxBlock * kLdW) * 4 + kMaxBlock * kSweepRows;
static_assert((kSweepLanes & (kSweepLanes - 1)) == 0 && kWarpSize % kSweepLanes == 0);
static_assert(kSweepRows % (kWarpSize / kSweepLanes) == 0);

// Rows are independent within a block (each has its own mask and in-block
// updates), so a row walks the block's columns in order. Its kSweepLanes
// threads split the work: column i's owner lane prunes or keeps it and hands
// err_i (and its loss term) to the others by shuffle, then each lane applies
// err_i to the later columns it owns: every entry sees the same operations
// in the same order as with one thread per row (and as the CPU), and the loss
// is summed in column order. Shared memory: Hinv[i1:i2, i1:i2] (broadcast
// reads), the W tile transposed to [col][row], and the keep tile [col][row].
// The unstructured mask comes from the block-start W (the tile as loaded);
// N:M groups are scored on the current (updated) W at their first column,
// which every lane of the row reads (after a __syncwarp: the other lanes
// wrote it), each ranking the group's columns it owns. Otherwise a lane
// touches only its own columns of its own row. After column i is processed
// its W slot holds err_i, and the tile is written out as Err1 for the
// trailing GEMM.
__global__ void __launch_bounds__(kSweepThreads) SparseGptPruneBlockKernel(SparseGptSweepArgs a) {
  extern __shared__ __align__(16) float smem[];
  float* hs = smem;
  float* ws = smem + kMaxBlock * kMaxBlock;
  uint8_t* ks = reinterpret_cast<uint8_t*>(ws + kMaxBlock * kLdW);
  const int B = a.i2 - a.i1;
  const int r0 = blockIdx.x * kSweepRows;
  const int tid = threadIdx.x;
  const bool nm = a.prune_n > 0;
  const float thresh = nm ? 0.0f : __uint_as_float(*a.thresh_bits);
  for (int idx = tid; idx < B * B; idx += kSweepThreads) {
    const int i = idx / B;
    const int j = idx - i * B;
    hs[i * kMaxBlock + j] = a.hinv[static_cast<long>(a.i1 + i) * a.cols + a.i1 + j];
  }
  for (int idx = tid; idx < kSweepRows * B; idx += kSweepThreads) {
    const int rr = idx / B;
    const int j = idx - rr * B;
    const int r = r0 + rr;
    const float w = r < a.rows ? a.wk[static_cast<long>(r) * a.cols + a.i1 + j] : 0.0f;
    ws[j * kLdW + rr] = w;
    uint8_t keep = 1;
    if (!nm) {
      const float d = a.hinv[static_cast<long>(a.i1 + j) * a.cols + a.i1 + j];
      keep = Score(w, d) <= thresh ? 0 : 1;  // the reference's "<=": ties are pruned
    }
    ks[j * kSweepRows + rr] = keep;
  }
  __syncthreads();

  // Every thread runs the column loop (the shuffles need whole warps); a row
  // past the end works on zeros and writes nothing.
  const int rr = tid / kSweepLanes;
  const int lane = tid % kSweepLanes;
  const int r = r0 + rr;
  const bool valid = r < a.rows;
  const bool quantize = a.maxq > 0.0f;
  const int gs = a.group_size;
  float scale = 1.0f;
  float zero = 0.0f;
  if (valid && quantize && gs == 0) {
    scale = a.scales[r];
    zero = static_cast<float>(a.zeros[r]);
  } else if (valid && quantize && a.i1 % gs != 0) {
    const long g = a.i1 / gs;  // the group began in an earlier block
    scale = a.scales[g * a.rows + r];
    zero = static_cast<float>(a.zeros[g * a.rows + r]);
  }
  const float* outer = a.wk + static_cast<long>(valid ? r : 0) * a.cols;  // stale during the block
  double loss = 0.0;
  unsigned pruned = 0;
  for (int i = 0; i < B; ++i) {
    const int c = a.i1 + i;
    if (valid && quantize && gs > 0 && c % gs == 0) {
      // GPTQ's rule on the outer W, which lacks this block's in-block updates
      // (the CPU's staleness). Every lane of the row computes the same grid;
      // lane 0 stores it.
      RangeParams(outer, c, min(a.cols, c + gs), nullptr, nullptr, a.maxq, a.sym, &scale, &zero);
      if (lane == 0) {
        const long g = c / gs;
        a.scales[g * a.rows + r] = scale;
        a.zeros[g * a.rows + r] = static_cast<int32_t>(zero);
      }
    }
    if (nm && i % a.prune_m == 0) {
      __syncwarp();  // the group's columns as their owners left them
      // Prune the N smallest of the group by stable rank (ties: lower
      // column first, as std::stable_sort in core/algo/nm_select.cc).
      for (int k = 0; k < a.prune_m; ++k) {
        if (((i + k) & (kSweepLanes - 1)) != lane) continue;
        const float sk = Score(ws[(i + k) * kLdW + rr], hs[(i + k) * kMaxBlock + i + k]);
        int rank = 0;
        for (int j = 0; j < a.prune_m; ++j) {
          const float sj = Score(ws[(i + j) * kLdW + rr], hs[(i + j) * kMaxBlock + i + j]);
          rank += (sj < sk || (sj == sk && j < k)) ? 1 : 0;
        }
        ks[(i + k) * kSweepRows + rr] = rank < a.prune_n ? 0 : 1;
      }
      __syncwarp();  // every lane has read the group before any writes to it
    }
    const int owner = i & (kSweepLanes - 1);
    float e = 0.0f;
    float term = 0.0f;
    if (lane == owner) {
      const float w = ws[i * kLdW + rr];
      const float d = hs[i * kMaxBlock + i];
      const bool keep = ks[i * kSweepRows + rr] != 0;
      float q = keep ? w : 0.0f;
      // On the grid: 0 (a pruned entry) is on it exactly (code = zero).
      const float code = quantize ? QuantizeCode(q, scale, zero, a.maxq) : 0.0f;
      if (quantize) q = DequantizeCode(code, scale, zero);
      const float diff = __fsub_rn(w, q);
      term = __fdiv_rn(__fmul_rn(diff, diff), __fmul_rn(d, d));
      e = __fdiv_rn(diff, d);
      if (valid) {
        const long out_idx = static_cast<long>(r) * a.cols + c;
        if (quantize && a.codes != nullptr) a.codes[out_idx] = static_cast<uint8_t>(code);
        if (a.out_f32 != nullptr) a.out_f32[out_idx] = q;
        if (a.out_bf16 != nullptr) a.out_bf16[out_idx] = __float2bfloat16_rn(q);
        if (a.keep != nullptr) a.keep[out_idx] = keep ? 1 : 0;
        pruned += keep ? 0u : 1u;
      }
      ws[i * kLdW + rr] = e;
    }
    e = __shfl_sync(0xffffffffu, e, owner, kSweepLanes);
    term = __shfl_sync(0xffffffffu, term, owner, kSweepLanes);
    loss += static_cast<double>(term);
    // e == 0 (a kept entry without quantization, or one on its grid): the
    // update would subtract zeros, skip it.
    if (e != 0.0f) {
      const float* hrow = hs + i * kMaxBlock;
      for (int j = i + 1 + ((lane - i - 1) & (kSweepLanes - 1)); j < B; j += kSweepLanes) {
        ws[j * kLdW + rr] = __fsub_rn(ws[j * kLdW + rr], __fmul_rn(e, hrow[j]));
      }
    }
  }
  if (valid && lane == 0) a.row_loss[r] += loss / 2.0;
  if (pruned != 0u) atomicAdd(a.pruned, static_cast<unsigned long long>(pruned));
  __syncthreads();
  for (int idx = tid; idx < kSweepRows * B; idx += kSweepThreads) {
    const int rr = idx / B;
    const int j = idx - rr * B;
    if (r0 + rr < a.rows) {
      a.err[static_cast<long>(r0 + rr) * kMaxBlock + j] = ws[j * kLdW + rr];
    }
  }
}

}  // namespace

cudaError_t LaunchSparseGptSelectThreshold(const float* wk, const float* hinv, int rows, int cols,
                                           int i1, int i2, uint32_t kth, uint32_t* work,
                                           cudaStream_t stream) {
  const int count = i2 - i1;
  const long n = static_cast<long>(rows) * count;
  if (rows <= 0 || count <= 0 || count > kMaxBlock || n >= (1L << 31) ||
      static_cast<long>(kth) >= n) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = cudaMemsetAsync(work, 0, kSparseGptSelectWords * sizeof(uint32_t), stream);
  if (err != cudaSuccess) return err;
  long blocks = (n + kHistThreads * 8L - 1) / (kHistThreads * 8L);
  blocks = blocks < 1 ? 1 : (blocks > kMaxHistBlocks ? kMaxHistBlocks : blocks);
  for (int pass = 0; pass < 4; ++pass) {
    SparseGptHistKernel<<<static_cast<unsigned>(blocks), kHistThreads, 0, stream>>>(
        wk, hinv, rows, cols, i1, count, pass, work);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    SparseGptSelectKernel<<<1, kBins, 0, stream>>>(work, pass, kth);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

cudaError_t LaunchSparseGptPruneBlock(const SparseGptSweepArgs& args, cudaStream_t stream) {
  if (args.rows == 0 || args.i2 <= args.i1) return cudaSuccess;
  const int count = args.i2 - args.i1;
  if (count > kMaxBlock || args.err == nullptr || args.row_loss == nullptr ||
      args.pruned == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (args.prune_n > 0 ? (args.prune_m <= args.prune_n || count % args.prune_m != 0)
                       : args.thresh_bits == nullptr) {
    return cudaErrorInvalidValue;
  }
  // > 48 KiB of dynamic shared memory needs an opt-in (per device; cheap to repeat).
  cudaError_t err = cudaFuncSetAttribute(SparseGptPruneBlockKernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, kSweepSmem);
  if (err != cudaSuccess) return err;
  const unsigned blocks = static_cast<unsigned>((args.rows + kSweepRows - 1) / kSweepRows);
  SparseGptPruneBlockKernel<<<blocks, kSweepThreads, kSweepSmem, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace shrinkray::kernels
