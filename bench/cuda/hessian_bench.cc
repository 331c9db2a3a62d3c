// Hessian accumulation on the GPU (core/kernels/cuda/hessian_cuda.h), the
// ways of computing it side by side in one run: fp32 activations through the
// fp32 cores (the reference), 3xTF32 (what the fp32 layer executor runs) and
// plain TF32 (only on request), and bf16 activations through tensor cores
// (forward_dtype bfloat16). Prints a table per width: ms per call (best of
// --reps after a warm-up), TFLOP/s (the block-triangular FLOPs each computes;
// 3xTF32 counts one product, as the result is one), and each H's largest
// difference from the fp32 one relative to max |H|; exit status 2 when
// 3xTF32 is off by more than 1e-4 (broken, not merely truncating: see
// hessian_cuda.h).
//
//   hessian_bench [--tokens 32768] [--reps 5]     widths 4096 and 14336 (Llama-3-8B)
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iterator>
#include <vector>

#include "bench_util.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/hessian_cuda.h"
#include "core/kernels/cuda/random_cuda.h"

namespace shrinkray {
namespace {

using bf16 = __nv_bfloat16;

int Main(int argc, char** argv) {
  int tokens = 32768, reps = 5;
  if (!bench::PositiveIntFlags(argc, argv, "hessian_bench", {{"--tokens", &tokens}, {"--reps", &reps}})) return 2;
  BENCH_ASSIGN_OR_FAIL(cudaStream_t stream, bench::FirstDeviceStream());
  double worst_3x = 0.0;
  std::vector<double> tflops_3x, tflops_fp32;
  for (const int cols : {4096, 14336}) {
    const long n = static_cast<long>(tokens) * cols;
    BENCH_ASSIGN_OR_FAIL(DeviceBuffer<float> x, DeviceBuffer<float>::Create(n));
    BENCH_ASSIGN_OR_FAIL(DeviceBuffer<bf16> x16, DeviceBuffer<bf16>::Create(n));
    BENCH_CHECK_OK(fill_random_normal(x.data(), n, 0.0f, 1.0f, 7, stream));
    BENCH_CHECK_OK(convert_to_bf16(x16.data(), x.data(), n, stream));
    const size_t hn = static_cast<size_t>(cols) * cols;
    BENCH_ASSIGN_OR_FAIL(DeviceBuffer<float> h, DeviceBuffer<float>::Create(hn));
    const double flops = hessian_accumulate_flops(cols, tokens);
    std::printf("\nH of width %d from %d tokens: %.3g FLOP per call\n", cols, tokens, flops);
    std::printf("%-28s %10s %10s %18s\n", "products", "ms", "TFLOP/s", "max|dH|/max|H|");
    std::vector<float> reference(hn), got(hn);
    struct Row {
      const char* name;
      std::function<absl::Status(long*)> run;
    };
    const Row rows[] = {
        {"fp32 (fp32 cores)",
         [&](long* s) { return hessian_accumulate(h.data(), cols, s, x.data(), tokens, 1, Fp32HessianGemm::kFp32, stream); }},
        {"fp32 via 3xTF32",
         [&](long* s) {
           return hessian_accumulate(h.data(), cols, s, x.data(), tokens, 1, Fp32HessianGemm::k3xTf32, stream);
         }},
        {"fp32 via TF32 (on request)",
         [&](long* s) { return hessian_accumulate(h.data(), cols, s, x.data(), tokens, 1, Fp32HessianGemm::kTf32, stream); }},
        {"bf16 (tensor cores)", [&](long* s) { return hessian_accumulate(h.data(), cols, s, x16.data(), tokens, 1, stream); }},
    };
    for (size_t r = 0; r < std::size(rows); ++r) {
      // n_samples 0 each call: H = (2/1) xᵀx, never read before written.
      BENCH_ASSIGN_OR_FAIL(const double ms, bench::BestMs(
                                                [&] {
                                                  long s = 0;
                                                  return rows[r].run(&s);
                                                },
                                                reps, stream));
      std::vector<float>& dst = r == 0 ? reference : got;
      BENCH_CHECK_OK(h.CopyToHost(absl::MakeSpan(dst), stream));
      double diff = 0.0, scale = 0.0;
      for (size_t i = 0; i < hn; ++i) {
        scale = std::max(scale, std::fabs(static_cast<double>(reference[i])));
        if (r > 0) diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - reference[i]));
      }
      const double rel = scale > 0 ? diff / scale : diff;
      if (r == 1) worst_3x = std::max(worst_3x, std::isfinite(rel) ? rel : 1.0);
      const double tf = flops / (ms * 1e-3) / 1e12;
      if (r == 0) tflops_fp32.push_back(tf);
      if (r == 1) tflops_3x.push_back(tf);
      std::printf("%-28s %10.3f %10.1f %18.3g\n", rows[r].name, ms, tf, rel);
    }
  }
  (void)cudaStreamDestroy(stream);
  std::printf("RESULT 3xTF32 %.0f / %.0f TFLOP/s (width 4096 / 14336) vs fp32 %.0f / %.0f; max rel diff %.3g\n",
              tflops_3x[0], tflops_3x[1], tflops_fp32[0], tflops_fp32[1], worst_3x);
  if (!(worst_3x <= 1e-4)) {
    std::fprintf(stderr, "hessian_bench: 3xTF32 differs from fp32 by %.3g of max |H|\n", worst_3x);
    return 2;
  }
  return 0;
}

}  // namespace
}  // namespace shrinkray

int main(int argc, char** argv) { return shrinkray::Main(argc, argv); }
