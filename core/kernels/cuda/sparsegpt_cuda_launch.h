// Internal: raw launchers behind sparsegpt_cuda.h (the .cu side, no abseil).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace shrinkray::kernels {

// The sweep kernel's shared tiles are sized for blocks of up to this many columns.
constexpr int kSparseGptMaxBlock = 128;
// Radix-select workspace: [0] prefix of the k-th score's bits, [1] rank left
// inside that prefix, [2, 258) the 256-bin histogram of the current pass.
constexpr int kSparseGptSelectWords = 2 + 256;

struct SparseGptSweepArgs {
  const float* wk = nullptr;    // [rows, cols] working W (read only in the kernel)
  const float* hinv = nullptr;  // [cols, cols] row-major upper factor
  int rows = 0;
  int cols = 0;
  int i1 = 0;
  int i2 = 0;
  int prune_n = 0;  // > 0: N:M inside the sweep (prune_m divides i2 - i1)
  int prune_m = 0;
  // Unstructured (prune_n == 0): the block's threshold as float bits, from
  // LaunchSparseGptSelectThreshold (device; workspace word 0).
  const uint32_t* thresh_bits = nullptr;
  float* out_f32 = nullptr;          // optional [rows, cols]
  __nv_bfloat16* out_bf16 = nullptr;  // optional [rows, cols]
  uint8_t* keep = nullptr;           // optional [rows, cols]
  // Joint quantization (maxq > 0): each entry's kept value (or 0) is put on
  // its grid, the row's (group_size == 0: scales[r], fitted before the sweep)
  // or its group's, refitted at the group's first column on the outer W
  // (GPTQ's dynamic rule; scales[g * rows + r]).
  float maxq = 0.0f;
  bool sym = true;
  int group_size = 0;
  float* scales = nullptr;   // [num_groups, rows]
  int32_t* zeros = nullptr;  // [num_groups, rows]
  uint8_t* codes = nullptr;  // [rows, cols]
  float* err = nullptr;              // [rows, kSparseGptMaxBlock] (ld kSparseGptMaxBlock)
  double* row_loss = nullptr;        // [rows], accumulated
  unsigned long long* pruned = nullptr;  // accumulated count of zeros in the mask
};

// The k-th smallest (0-based) of the scores wk[r, c]² / hinv[c, c]² over the
// tile [rows, i1:i2), exactly (a 4-pass 8-bit radix select over the fp32 bit
// patterns, which order like the values since scores are >= +0). The result's
// bits land in work[0]; work holds kSparseGptSelectWords words. Requires
// rows * (i2 - i1) < 2^31 and kth < rows * (i2 - i1).
cudaError_t LaunchSparseGptSelectThreshold(const float* wk, const float* hinv, int rows, int cols,
                                           int i1, int i2, uint32_t kth, uint32_t* work,
                                           cudaStream_t stream);
// One block [i1, i2) of the column sweep (mask, prune, in-block updates, Err1).
cudaError_t LaunchSparseGptPruneBlock(const SparseGptSweepArgs& args, cudaStream_t stream);

}  // namespace shrinkray::kernels
