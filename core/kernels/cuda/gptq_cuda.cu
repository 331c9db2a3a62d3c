// GPTQ kernels: grid fitting, the column gather and the
// in-block column sweep (gptq_quantize_block_kernel). The numerics follow
// core/algo/gptq.cc (and the reference): fp32 throughout, rint (half to
// even), products and differences rounded separately (no FMA contraction) so
// that one block matches the CPU bit for bit given the same inputs.
#include "core/kernels/cuda/gptq_cuda_launch.h"
#include "core/kernels/cuda/ops.cuh"
#include "core/kernels/cuda/quant_grid.cuh"

namespace shrinkray::kernels {
namespace {

constexpr int kThreads = kGridThreads;
constexpr long kMaxBlocks = kGridMaxBlocks;


// One warp per (row, group).
__global__ void GptqFitParamsKernel(const float* __restrict__ w, int rows, int cols,
                                    int group_size, const uint8_t* __restrict__ dead,
                                    const uint8_t* __restrict__ keep, float maxq, bool sym,
                                    float* __restrict__ scales, int32_t* __restrict__ zeros) {
  const int num_groups = (cols + group_size - 1) / group_size;
  const long tasks = static_cast<long>(rows) * num_groups;
  const int lane = threadIdx.x % kWarpSize;
  const long warps = static_cast<long>(gridDim.x) * (blockDim.x / kWarpSize);
  for (long t = static_cast<long>(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
       t < tasks; t += warps) {
    const int r = static_cast<int>(t % rows);
    const int g = static_cast<int>(t / rows);
    const int c0 = g * group_size;
    const int c1 = min(cols, c0 + group_size);
    const float* row = w + static_cast<long>(r) * cols;
    const uint8_t* keep_row = keep != nullptr ? keep + static_cast<long>(r) * cols : nullptr;
    float xmin = 0.0f;
    float xmax = 0.0f;
    for (int c = c0 + lane; c < c1; c += kWarpSize) {
      const bool zeroed = (dead != nullptr && dead[c] != 0) || (keep_row != nullptr && keep_row[c] == 0);
      const float x = zeroed ? 0.0f : row[c];
      xmin = fminf(xmin, x);
      xmax = fmaxf(xmax, x);
    }
#pragma unroll
    for (int off = kWarpSize / 2; off > 0; off >>= 1) {
      xmin = fminf(xmin, __shfl_xor_sync(0xffffffffu, xmin, off));
      xmax = fmaxf(xmax, __shfl_xor_sync(0xffffffffu, xmax, off));
    }
    if (lane == 0) {
      float scale, zero;
      ParamsFromRange(xmin, xmax, maxq, sym, &scale, &zero);
      scales[static_cast<long>(g) * rows + r] = scale;
      zeros[static_cast<long>(g) * rows + r] = static_cast<int32_t>(zero);
    }
  }
}

__global__ void GptqGatherColumnsKernel(float* __restrict__ wk, const float* __restrict__ w,
                                        int rows, int cols, const int32_t* __restrict__ perm,
                                        const uint8_t* __restrict__ dead) {
  const long total = static_cast<long>(rows) * cols;
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    const long r = i / cols;
    const int k = static_cast<int>(i - r * cols);
    const int c = perm[k];
    wk[i] = dead[c] != 0 ? 0.0f : w[r * cols + c];
  }
}

// The sweep's threads: kSweepLanes per row, lane t owning the block's
// columns j ≡ t (mod kSweepLanes) of its row; kSweepRows rows per CTA.
constexpr int kSweepLanes = 8;
constexpr int kSweepRows = 32;
constexpr int kSweepThreads = kSweepRows * kSweepLanes;
// The W tile is [col][row] with this row stride. A warp holds 4 rows × 8
// lanes, and at each step the 8 lanes of a row touch 8 consecutive columns
// (one of each residue): (36·j + rr) mod 32 = 4·(j mod 8) + rr puts the 32
// accesses in 32 distinct banks.
constexpr int kLdW = kSweepRows + kWarpSize / kSweepLanes;
constexpr int kSweepSmem = (kGptqMaxBlock * kGptqMaxBlock + kGptqMaxBlock * kLdW) * 4;
static_assert((kSweepLanes & (kSweepLanes - 1)) == 0 && kWarpSize % kSweepLanes == 0);
static_assert(kSweepRows % (kWarpSize / kSweepLanes) == 0);

// The first column after i that `lane` owns.
__device__ __forceinline__ int FirstOwnedAfter(int i, int lane) {
  return i + 1 + ((lane - i - 1) & (kSweepLanes - 1));
}

// gptq_quantize_block_kernel: rows are independent within a block (each has
// its own grid and in-block updates), so a row walks the block's columns in
// order. Its kSweepLanes threads split the work: column i's owner lane
// quantizes it and hands err_i (and its loss term) to the others by shuffle,
// then each lane applies err_i to the later columns it owns. Every entry sees
// the same operations in the same order as with one thread per row (and as
// the CPU), and the loss is summed in column order. Shared memory holds
// Hinv[i1:i2, i1:i2] (read by all threads, broadcast) and the W tile
// transposed to [col][row]; a lane reads and writes only its own columns of
// its own row, so no barrier is needed until the tile is written out. After
// column i is quantized its slot holds err_i, and the tile is written out as
// Err1 for the trailing GEMM.
__global__ void __launch_bounds__(kSweepThreads) GptqQuantizeBlockKernel(GptqSweepArgs a) {
  extern __shared__ __align__(16) float smem[];
  float* hs = smem;
  float* ws = smem + kGptqMaxBlock * kGptqMaxBlock;
  const int B = a.i2 - a.i1;
  const int r0 = blockIdx.x * kSweepRows;
  const int tid = threadIdx.x;
  for (int idx = tid; idx < B * B; idx += kSweepThreads) {
    const int i = idx / B;
    const int j = idx - i * B;
    hs[i * kGptqMaxBlock + j] = a.hinv[static_cast<long>(a.i1 + i) * a.cols + a.i1 + j];
  }
  for (int idx = tid; idx < kSweepRows * B; idx += kSweepThreads) {
    const int rr = idx / B;
    const int j = idx - rr * B;
    const int r = r0 + rr;
    ws[j * kLdW + rr] = r < a.rows ? a.wk[static_cast<long>(r) * a.cols + a.i1 + j] : 0.0f;
  }
  __syncthreads();

  // Every thread runs the column loop (the shuffles need whole warps); a row
  // past the end works on zeros and writes nothing.
  const int rr = tid / kSweepLanes;
  const int lane = tid % kSweepLanes;
  const int r = r0 + rr;
  const bool valid = r < a.rows;
  const int gs = a.group_size;
  float scale = 1.0f;
  float zero = 0.0f;
  int cur_group = -1;
  if (valid && a.mode == GptqParamMode::kPerRow) {
    scale = a.scales[r];
    zero = static_cast<float>(a.zeros[r]);
  } else if (valid && a.mode == GptqParamMode::kDynamic && a.i1 % gs != 0) {
    const long g = a.i1 / gs;  // the group began in an earlier block
    scale = a.scales[g * a.rows + r];
    zero = static_cast<float>(a.zeros[g * a.rows + r]);
  }
  const float* outer = a.wk + static_cast<long>(valid ? r : 0) * a.cols;  // stale during the block
  // The row's keep mask (original column order), or null: a pruned entry is
  // read as 0 (the updates may have moved it; the CPU reads it as 0 too).
  const uint8_t* keep_row = valid && a.keep != nullptr ? a.keep + static_cast<long>(r) * a.cols : nullptr;
  float loss = 0.0f;
  for (int i = 0; i < B; ++i) {
    const int c = a.i1 + i;
    const int orig = a.perm != nullptr ? a.perm[c] : c;
    if (valid && a.mode == GptqParamMode::kDynamic && c % gs == 0) {
      // Refit on the outer W, which lacks this block's in-block updates
      // (reference staleness, kept). Every lane of the row computes the same
      // grid (each quantizes some of the group's columns); lane 0 stores it.
      RangeParams(outer, c, min(a.cols, c + gs), keep_row, a.perm, a.maxq, a.sym, &scale, &zero);
      if (lane == 0) {
        const long g = c / gs;
        a.scales[g * a.rows + r] = scale;
        a.zeros[g * a.rows + r] = static_cast<int32_t>(zero);
      }
    } else if (valid && a.mode == GptqParamMode::kStatic) {
      const int g = orig / gs;
      if (g != cur_group) {
        cur_group = g;
        scale = a.scales[static_cast<long>(g) * a.rows + r];
        zero = static_cast<float>(a.zeros[static_cast<long>(g) * a.rows + r]);
      }
    }
    const int owner = i & (kSweepLanes - 1);
    float e = 0.0f;
    float term = 0.0f;
    if (lane == owner) {
      const float w = keep_row != nullptr && keep_row[orig] == 0 ? 0.0f : ws[i * kLdW + rr];
      const float d = hs[i * kGptqMaxBlock + i];
      const float code = QuantizeCode(w, scale, zero, a.maxq);
      const float q = DequantizeCode(code, scale, zero);
      const float diff = __fsub_rn(w, q);
      term = __fdiv_rn(__fmul_rn(diff, diff), __fmul_rn(d, d));
      e = __fdiv_rn(diff, d);
      if (valid) {
        const long out_idx = static_cast<long>(r) * a.cols + orig;
        a.codes[out_idx] = static_cast<uint8_t>(code);
        if (a.q_f32 != nullptr) a.q_f32[out_idx] = q;
        if (a.q_bf16 != nullptr) a.q_bf16[out_idx] = __float2bfloat16_rn(q);
      }
      ws[i * kLdW + rr] = e;
    }
    e = __shfl_sync(0xffffffffu, e, owner, kSweepLanes);
    term = __shfl_sync(0xffffffffu, term, owner, kSweepLanes);
    loss = __fadd_rn(loss, term);
    const float* hrow = hs + i * kGptqMaxBlock;
    for (int j = FirstOwnedAfter(i, lane); j < B; j += kSweepLanes) {
      ws[j * kLdW + rr] = __fsub_rn(ws[j * kLdW + rr], __fmul_rn(e, hrow[j]));
    }
  }
  if (valid && lane == 0) a.row_loss[r] += 0.5f * loss;
  __syncthreads();
  for (int idx = tid; idx < kSweepRows * B; idx += kSweepThreads) {
    const int rr = idx / B;
    const int j = idx - rr * B;
    if (r0 + rr < a.rows) {
      a.err[static_cast<long>(r0 + rr) * kGptqMaxBlock + j] = ws[j * kLdW + rr];
    }
  }
}

__global__ void GptqGidxKernel(int32_t* g_idx, int cols, GptqParamMode mode, int gs,
                               const int32_t* perm) {
  for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < cols; k += gridDim.x * blockDim.x) {
    switch (mode) {
      case GptqParamMode::kPerRow: g_idx[k] = 0; break;
      case GptqParamMode::kStatic: g_idx[k] = k / gs; break;
      case GptqParamMode::kDynamic: g_idx[perm[k]] = k / gs; break;
    }
  }
}

}  // namespace

cudaError_t LaunchGptqFitParams(const float* w, int rows, int cols, int group_size,
                                const uint8_t* dead, const uint8_t* keep, float maxq, bool sym,
                                float* scales, int32_t* zeros, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  const int gs = group_size >= cols || group_size <= 0 ? cols : group_size;
  const long tasks = static_cast<long>(rows) * ((cols + gs - 1) / gs);
  const long warps_per_block = kThreads / kWarpSize;
  long blocks = (tasks + warps_per_block - 1) / warps_per_block;
  blocks = blocks > kMaxBlocks ? kMaxBlocks : blocks;
  GptqFitParamsKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      w, rows, cols, gs, dead, keep, maxq, sym, scales, zeros);
  return cudaGetLastError();
}

cudaError_t LaunchGptqGatherColumns(float* wk, const float* w, int rows, int cols,
                                    const int32_t* perm, const uint8_t* dead,
                                    cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  GptqGatherColumnsKernel<<<GridFor(static_cast<long>(rows) * cols), kThreads, 0, stream>>>(
      wk, w, rows, cols, perm, dead);
  return cudaGetLastError();
}

cudaError_t LaunchGptqQuantizeBlock(const GptqSweepArgs& args, cudaStream_t stream) {
  if (args.rows == 0 || args.i2 <= args.i1) return cudaSuccess;
  if (args.i2 - args.i1 > kGptqMaxBlock) return cudaErrorInvalidValue;
  // > 48 KiB of dynamic shared memory needs an opt-in (per device; cheap to repeat).
  cudaError_t err = cudaFuncSetAttribute(GptqQuantizeBlockKernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, kSweepSmem);
  if (err != cudaSuccess) return err;
  const unsigned blocks = static_cast<unsigned>((args.rows + kSweepRows - 1) / kSweepRows);
  GptqQuantizeBlockKernel<<<blocks, kSweepThreads, kSweepSmem, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t LaunchGptqGidx(int32_t* g_idx, int cols, GptqParamMode mode, int group_size,
                           const int32_t* perm, cudaStream_t stream) {
  if (cols == 0) return cudaSuccess;
  GptqGidxKernel<<<GridFor(cols), kThreads, 0, stream>>>(g_idx, cols, mode, group_size, perm);
  return cudaGetLastError();
}

}  // namespace shrinkray::kernels
