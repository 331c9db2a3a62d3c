// Device helpers for the mma.sync tensor-core kernels (attention.cu,
// attention_backward.cu): cp.async global->shared copies, ldmatrix fragment
// loads, the bf16 m16n8k16 MMA, bf16 packing and exp2 on the SFU (sm_80+).
// Include only from .cu files.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace shrinkray::kernels {

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; src_bytes = 0 zero-fills the destination
// without reading (src must still be a valid address).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SmemAddr(smem)),
               "l"(gmem), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kN>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kN) : "memory");
}

// Four 8x8 b16 matrices; lane i supplies the row address of row i % 8 of
// matrix i / 8; r[j] of lane l holds matrix j's (row l / 4, cols 2(l % 4),
// 2(l % 4) + 1), or with .trans its (rows 2(l % 4), 2(l % 4) + 1, col l / 4).
__device__ __forceinline__ void Ldmatrix4(uint32_t (&r)[4], const __nv_bfloat16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}
__device__ __forceinline__ void Ldmatrix4Trans(uint32_t (&r)[4], const __nv_bfloat16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}

// d[16x8] += a[16x16] b[16x8], bf16 in, fp32 accumulate. Fragments (g = lane / 4,
// t = lane % 4): a = {(g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)};
// b = {(k 2t..2t+1, n g), (k 2t+8.., n g)}; d = {(g, 2t), (g, 2t+1), (g+8, 2t),
// (g+8, 2t+1)}. The lower column (k) sits in the low half of each b32.
__device__ __forceinline__ void Mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<const uint32_t*>(&v);
}

// 2^x on the special function unit; 2^-inf = +0.
__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Issues cp.async copies of rows [row0, row0 + kRows) of a [*, stride] bf16
// matrix (kHD columns from src) into a shared tile with leading dimension
// kHD + 8; rows at or past T are zero-filled (so P * V never meets garbage).
template <int kRows, int kHD, int kThreads>
__device__ __forceinline__ void LoadTileAsync(__nv_bfloat16* dst, const __nv_bfloat16* src, long stride, int row0,
                                              int T) {
  constexpr int kChunks = kHD / 8;
  constexpr int kLd = kHD + 8;
  static_assert((kRows * kChunks) % kThreads == 0, "tile chunks must split evenly");
#pragma unroll
  for (int i = 0; i < kRows * kChunks / kThreads; ++i) {
    const int c = threadIdx.x + i * kThreads;
    const int r = c / kChunks;
    const int cc = c % kChunks;
    const int row = row0 + r;
    const bool ok = row < T;
    const __nv_bfloat16* g = src + static_cast<long>(ok ? row : 0) * stride + cc * 8;
    CpAsync16(dst + r * kLd + cc * 8, g, ok ? 16 : 0);
  }
}

}  // namespace shrinkray::kernels
