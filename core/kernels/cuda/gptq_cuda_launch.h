// Internal: raw launchers behind gptq_cuda.h (the .cu side, no abseil).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace shrinkray::kernels {

// The sweep kernel's shared tiles are sized for blocks of up to this many columns.
constexpr int kGptqMaxBlock = 128;

enum class GptqParamMode : int {
  kPerRow = 0,   // one grid per row, fitted once before the sweep (scales[r])
  kDynamic = 1,  // refit at every group start on the outer W (scales[g * rows + r])
  kStatic = 2,   // per original-column group, fitted before the sweep
};

struct GptqSweepArgs {
  const float* wk = nullptr;  // [rows, cols] permuted working W (read only in the kernel)
  const float* hinv = nullptr;  // [cols, cols] row-major upper factor
  const int32_t* perm = nullptr;  // [cols] processing position -> original column
  // [rows, cols] in original column order, 0 = pruned (optional): a pruned
  // entry is read as 0 when quantized and when a dynamic group is refitted,
  // whatever the updates wrote there (core/algo/gptq.cc's keep mask).
  const uint8_t* keep = nullptr;
  int rows = 0;
  int cols = 0;
  int i1 = 0;
  int i2 = 0;
  GptqParamMode mode = GptqParamMode::kPerRow;
  int group_size = 0;  // > 0 for kDynamic / kStatic
  float maxq = 15.0f;
  bool sym = true;
  float* scales = nullptr;   // [num_groups, rows]
  int32_t* zeros = nullptr;  // [num_groups, rows]
  uint8_t* codes = nullptr;  // [rows, cols], original column order
  float* q_f32 = nullptr;    // optional dequantized output, original order
  __nv_bfloat16* q_bf16 = nullptr;  // optional
  float* err = nullptr;      // [rows, kGptqMaxBlock] (ld kGptqMaxBlock)
  float* row_loss = nullptr;  // [rows], accumulated
};

// Fits min-max grids per (row, group of `group_size` columns) of w [rows, cols];
// entries of dead columns (dead[c] != 0, dead may be null) and pruned entries
// (keep[r * cols + c] == 0, keep may be null) are read as 0. group_size >=
// cols gives one grid per row.
cudaError_t LaunchGptqFitParams(const float* w, int rows, int cols, int group_size,
                                const uint8_t* dead, const uint8_t* keep, float maxq, bool sym,
                                float* scales, int32_t* zeros, cudaStream_t stream);
// wk[r, k] = dead[perm[k]] ? 0 : w[r, perm[k]].
cudaError_t LaunchGptqGatherColumns(float* wk, const float* w, int rows, int cols,
                                    const int32_t* perm, const uint8_t* dead, cudaStream_t stream);
// One block [i1, i2) of the column sweep.
cudaError_t LaunchGptqQuantizeBlock(const GptqSweepArgs& args, cudaStream_t stream);
// g_idx[c] for the three modes (kPerRow: 0; kStatic: c / gs; kDynamic: g_idx[perm[k]] = k / gs).
cudaError_t LaunchGptqGidx(int32_t* g_idx, int cols, GptqParamMode mode, int group_size,
                           const int32_t* perm, cudaStream_t stream);

}  // namespace shrinkray::kernels
