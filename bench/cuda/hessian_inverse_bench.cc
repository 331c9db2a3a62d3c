// The GPU Hessian preparation (core/kernels/cuda/hessian_inverse_cuda.h), its
// two ways to U = chol(H^-1, upper) side by side in one run: the flipped
// Cholesky (potrf of J H J + trtri, 2n³/3 FLOPs, inverse_factor: flipped) and the
// reference's chain (potrf + potri + potrf, 4n³/3). This is the "hinv" phase
// of a GPTQ or SparseGPT solve, the largest in the Llama-3-8B job
// (docs/benchmarks-gpu.md). Per width: ms per Prepare (best of --reps after a
// warm-up; includes the diagonal read, the permutation, damping and the
// checks), TFLOP/s over each method's own FLOPs, and how well each factor
// inverts H: max over a few random v of |Uᵀ U H v − v| / |v| in float64 on the
// host. H is the accumulator's Gram matrix of t random tokens (one sample)
// with 16 outlier channels (×30), damped 1%, as GPTQ's. Exit status 2 when a factor is broken (residual > 1e-2).
//
//   hessian_inverse_bench [--tokens 32768] [--reps 3]     widths 4096 and 14336 (Llama-3-8B)
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include "bench_util.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/hessian_cuda.h"
#include "core/kernels/cuda/hessian_inverse_cuda.h"
#include "core/kernels/cuda/random_cuda.h"

namespace shrinkray {
namespace {

constexpr int kOutliers = 16;
constexpr float kOutlierScale = 30.0f;
constexpr double kDamp = 0.01;

// max over `probes` random v of |Uᵀ(U(H v)) − v| / |v|, U upper (row-major
// upper triangle of u), in float64.
double Residual(const std::vector<float>& h, const std::vector<float>& u, int n, int probes) {
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal;
  std::vector<double> v(n), hv(n), w(n), r(n);
  double worst = 0.0;
  for (int p = 0; p < probes; ++p) {
    for (double& x : v) x = normal(rng);
    for (int i = 0; i < n; ++i) {
      const float* row = h.data() + static_cast<size_t>(i) * n;
      double s = 0.0;
      for (int j = 0; j < n; ++j) s += row[j] * v[j];
      hv[i] = s;
    }
    for (int i = 0; i < n; ++i) {  // w = U hv
      const float* row = u.data() + static_cast<size_t>(i) * n;
      double s = 0.0;
      for (int j = i; j < n; ++j) s += row[j] * hv[j];
      w[i] = s;
    }
    std::fill(r.begin(), r.end(), 0.0);
    for (int i = 0; i < n; ++i) {  // r = Uᵀ w
      const float* row = u.data() + static_cast<size_t>(i) * n;
      for (int j = i; j < n; ++j) r[j] += row[j] * w[i];
    }
    double num = 0.0, den = 0.0;
    for (int i = 0; i < n; ++i) {
      num += (r[i] - v[i]) * (r[i] - v[i]);
      den += v[i] * v[i];
    }
    worst = std::max(worst, std::sqrt(num / den));
  }
  return worst;
}

int Main(int argc, char** argv) {
  int tokens = 32768, reps = 3;
  if (!bench::PositiveIntFlags(argc, argv, "hessian_inverse_bench", {{"--tokens", &tokens}, {"--reps", &reps}})) return 2;
  BENCH_ASSIGN_OR_FAIL(cudaStream_t stream, bench::FirstDeviceStream());
  const InverseFactorMethod methods[] = {InverseFactorMethod::kFlippedCholesky,
                                         InverseFactorMethod::kCholeskyInverseChain};
  const char* names[] = {"flipped (potrf + trtri)", "chain (potrf + potri + potrf)"};
  double ms_of[2][2] = {{0, 0}, {0, 0}};
  double worst_residual = 0.0;
  const int widths[] = {4096, 14336};
  for (int wi = 0; wi < 2; ++wi) {
    const int cols = widths[wi];
    const size_t hn = static_cast<size_t>(cols) * cols;
    std::vector<float> h(hn);
    {
      const long n = static_cast<long>(tokens) * cols;
      BENCH_ASSIGN_OR_FAIL(DeviceBuffer<float> x, DeviceBuffer<float>::Create(n));
      BENCH_ASSIGN_OR_FAIL(DeviceBuffer<float> d_h, DeviceBuffer<float>::Create(hn));
      BENCH_CHECK_OK(fill_random_normal(x.data(), n, 0.0f, 1.0f, 17, stream));
      long samples = 0;
      BENCH_CHECK_OK(hessian_accumulate(d_h.data(), cols, &samples, x.data(), tokens, 1, Fp32HessianGemm::kFp32, stream));
      BENCH_CHECK_OK(d_h.CopyToHost(absl::MakeSpan(h), stream));
    }
    // Outlier channels: X's first columns scaled, i.e. H's rows and columns.
    for (int i = 0; i < cols; ++i) {
      for (int j = 0; j < cols; ++j) {
        if (i < kOutliers) h[static_cast<size_t>(i) * cols + j] *= kOutlierScale;
        if (j < kOutliers) h[static_cast<size_t>(i) * cols + j] *= kOutlierScale;
      }
    }
    BENCH_ASSIGN_OR_FAIL(DeviceBuffer<float> d_h, DeviceBuffer<float>::FromHost(h, stream));
    // The residual is against the damped H the factor inverts.
    std::vector<float> damped = h;
    double diag = 0.0;
    for (int j = 0; j < cols; ++j) diag += h[static_cast<size_t>(j) * cols + j];
    const float add = static_cast<float>(kDamp) * static_cast<float>(diag / cols);
    for (int j = 0; j < cols; ++j) damped[static_cast<size_t>(j) * cols + j] += add;

    const double n3 = static_cast<double>(cols) * cols * cols;
    std::printf("\nH of width %d (%d tokens, %d outlier channels, damp %.2g)\n", cols, tokens, kOutliers, kDamp);
    std::printf("%-32s %10s %10s %14s\n", "inverse factor", "ms", "TFLOP/s", "|UᵀUHv-v|/|v|");
    std::vector<float> u(hn);
    for (int m = 0; m < 2; ++m) {
      BENCH_ASSIGN_OR_FAIL(std::unique_ptr<HessianInverseCuda> inv, HessianInverseCuda::Create(stream));
      BENCH_ASSIGN_OR_FAIL(const double ms,
                           bench::BestMs([&] { return inv->Prepare(d_h.data(), cols, false, kDamp, 0.0, methods[m]); }, reps, stream));
      BENCH_CHECK_OK(CudaStatus(cudaMemcpyAsync(u.data(), inv->upper(), hn * sizeof(float), cudaMemcpyDeviceToHost, stream),
                                "cudaMemcpyAsync", __FILE__, __LINE__));
      BENCH_CHECK_OK(CudaStatus(cudaStreamSynchronize(stream), "cudaStreamSynchronize", __FILE__, __LINE__));
      const double residual = Residual(damped, u, cols, 2);
      worst_residual = std::max(worst_residual, std::isfinite(residual) ? residual : 1e30);
      const double flops = (m == 0 ? 2.0 : 4.0) / 3.0 * n3;
      ms_of[m][wi] = ms;
      std::printf("%-32s %10.2f %10.1f %14.3g\n", names[m], ms, flops / (ms * 1e-3) / 1e12, residual);
    }
  }
  (void)cudaStreamDestroy(stream);
  std::printf("RESULT hinv flipped %.1f / %.1f ms (width 4096 / 14336) vs chain %.1f / %.1f ms (%.2fx / %.2fx); "
              "worst residual %.3g\n",
              ms_of[0][0], ms_of[0][1], ms_of[1][0], ms_of[1][1], ms_of[1][0] / ms_of[0][0], ms_of[1][1] / ms_of[0][1],
              worst_residual);
  if (!(worst_residual <= 1e-2)) {
    std::fprintf(stderr, "hessian_inverse_bench: a factor does not invert H (residual %.3g)\n", worst_residual);
    return 2;
  }
  return 0;
}

}  // namespace
}  // namespace shrinkray

int main(int argc, char** argv) { return shrinkray::Main(argc, argv); }
