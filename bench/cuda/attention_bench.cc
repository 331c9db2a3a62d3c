// Causal GQA attention forward on the GPU, the three kernels side by side in
// one run (core/kernels/cuda/attention.cu): fp32 tiled (what forward_dtype
// float32 runs for head sizes 64/128), fp32 one warp per query (the fallback
// it replaced there), bf16 flash-attention on tensor cores (forward_dtype
// bfloat16). Prints a table: ms per call (best of --reps after a warm-up),
// TFLOP/s (4·HD per visible query-key pair and head), and the largest
// difference of each output from the fp32 tiled one; exit status 2 when the
// fp32 kernels differ by more than 1e-4 (or bf16 by more than 5e-2).
//
//   attention_bench [--batch 8] [--seqlen 2048] [--heads 32] [--kv-heads 8] [--head-dim 128] [--reps 5]
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/ops.h"
#include "core/kernels/cuda/random_cuda.h"

namespace shrinkray {
namespace {

using bf16 = __nv_bfloat16;

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0.0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(static_cast<double>(a[i]) - b[i]));
  return d;
}

int Main(int argc, char** argv) {
  int B = 8, T = 2048, NH = 32, NKV = 8, HD = 128, reps = 5;
  if (!bench::PositiveIntFlags(argc, argv, "attention_bench",
                               {{"--batch", &B}, {"--seqlen", &T}, {"--heads", &NH}, {"--kv-heads", &NKV},
                                {"--head-dim", &HD}, {"--reps", &reps}})) {
    return 2;
  }
  if (HD != 64 && HD != 128) {
    std::fprintf(stderr, "attention_bench: --head-dim must be 64 or 128 (the tiled and tensor-core kernels)\n");
    return 2;
  }
  BENCH_ASSIGN_OR_FAIL(cudaStream_t stream, bench::FirstDeviceStream());
  const long nq = static_cast<long>(B) * T * NH * HD;
  const long nkv = static_cast<long>(B) * T * NKV * HD;
  BENCH_ASSIGN_OR_FAIL(DeviceBuffer<float> q, DeviceBuffer<float>::Create(nq));
  BENCH_ASSIGN_OR_FAIL(DeviceBuffer<float> k, DeviceBuffer<float>::Create(nkv));
  BENCH_ASSIGN_OR_FAIL(DeviceBuffer<float> v, DeviceBuffer<float>::Create(nkv));
  BENCH_ASSIGN_OR_FAIL(DeviceBuffer<float> out, DeviceBuffer<float>::Create(nq));
  BENCH_CHECK_OK(fill_random_normal(q.data(), nq, 0.0f, 1.0f, 1, stream));
  BENCH_CHECK_OK(fill_random_normal(k.data(), nkv, 0.0f, 1.0f, 2, stream));
  BENCH_CHECK_OK(fill_random_normal(v.data(), nkv, 0.0f, 1.0f, 3, stream));
  BENCH_ASSIGN_OR_FAIL(DeviceBuffer<bf16> q16, DeviceBuffer<bf16>::Create(nq));
  BENCH_ASSIGN_OR_FAIL(DeviceBuffer<bf16> k16, DeviceBuffer<bf16>::Create(nkv));
  BENCH_ASSIGN_OR_FAIL(DeviceBuffer<bf16> v16, DeviceBuffer<bf16>::Create(nkv));
  BENCH_ASSIGN_OR_FAIL(DeviceBuffer<bf16> out16, DeviceBuffer<bf16>::Create(nq));
  BENCH_CHECK_OK(convert_to_bf16(q16.data(), q.data(), nq, stream));
  BENCH_CHECK_OK(convert_to_bf16(k16.data(), k.data(), nkv, stream));
  BENCH_CHECK_OK(convert_to_bf16(v16.data(), v.data(), nkv, stream));

  const double pairs = static_cast<double>(T) * (T + 1) / 2.0;
  const double flops = 4.0 * B * NH * HD * pairs;
  std::printf("causal attention forward: B %d, T %d, heads %d / %d kv, head dim %d; %.3g FLOP per call\n", B, T,
              NH, NKV, HD, flops);
  std::printf("%-34s %10s %10s %14s\n", "kernel", "ms", "TFLOP/s", "max|diff|");

  std::vector<float> tiled(nq), other(nq);
  double ms_of[3] = {0, 0, 0}, diff_of[3] = {0, 0, 0};
  struct Row {
    const char* name;
    std::function<absl::Status()> run;
    bool bf16_out;
  };
  const Row rows[] = {
      {"fp32 tiled (32 queries per tile)",
       [&] { return attention_forward(out.data(), q.data(), k.data(), v.data(), B, T, NH, NKV, HD, 0, stream); },
       false},
      {"fp32 SIMT (one warp per query)",
       [&] { return attention_forward_simt(out.data(), q.data(), k.data(), v.data(), B, T, NH, NKV, HD, 0, stream); },
       false},
      {"bf16 flash (tensor cores)",
       [&] {
         return attention_forward(out16.data(), q16.data(), k16.data(), v16.data(), B, T, NH, NKV, HD, 0, stream);
       },
       true},
  };
  for (size_t r = 0; r < std::size(rows); ++r) {
    BENCH_ASSIGN_OR_FAIL(const double ms, bench::BestMs(rows[r].run, reps, stream));
    std::vector<float>& got = r == 0 ? tiled : other;
    if (rows[r].bf16_out) {
      std::vector<bf16> host16(nq);
      BENCH_CHECK_OK(out16.CopyToHost(absl::MakeSpan(host16), stream));
      for (long i = 0; i < nq; ++i) got[i] = __bfloat162float(host16[i]);
    } else {
      BENCH_CHECK_OK(out.CopyToHost(absl::MakeSpan(got), stream));
    }
    const double diff = r == 0 ? 0.0 : MaxAbsDiff(other, tiled);
    ms_of[r] = ms;
    diff_of[r] = diff;
    std::printf("%-34s %10.3f %10.2f %14.3g\n", rows[r].name, ms, flops / (ms * 1e-3) / 1e12, diff);
  }
  (void)cudaStreamDestroy(stream);
  auto tflops = [&](double ms) { return flops / (ms * 1e-3) / 1e12; };
  std::printf("RESULT fp32 tiled %.1f TFLOP/s (%.1fx the one-warp kernel's %.1f); bf16 flash %.1f\n", tflops(ms_of[0]),
              ms_of[1] / ms_of[0], tflops(ms_of[1]), tflops(ms_of[2]));
  // The two fp32 kernels differ by summation order only (outputs of size ~1);
  // bf16 by its rounding of q, k, v and P.
  if (!(diff_of[1] <= 1e-4) || !(diff_of[2] <= 5e-2)) {
    std::fprintf(stderr, "attention_bench: outputs disagree (fp32 %.3g, bf16 %.3g)\n", diff_of[1], diff_of[2]);
    return 2;
  }
  return 0;
}

}  // namespace
}  // namespace shrinkray

int main(int argc, char** argv) { return shrinkray::Main(argc, argv); }
