// The GPU Hessian preparation (core/kernels/cuda/hessian_inverse_cuda.h) by
// both of its ways to U = chol(H^-1, upper): the flipped Cholesky (potrf of
// J H J and trtri, the recipe field inverse_factor: flipped) and the reference's chain (potrf, potri,
// potrf), against the CPU's chain in float64 (core/algo/hessian_inverse.h)
// on the same dead-column fix, act_order permutation and damping. Both are
// fp32, so each is held to the float64 factor within fp32 noise at these
// condition numbers (~1e-7 to 4e-7 of max |U| through LAPACK, both; the test
// prints them); failures name the same
// column either way, and damping retries count as the CPU's. Skipped
// without a CUDA device.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "core/algo/hessian_inverse.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/hessian_inverse_cuda.h"
#include "cuda_test_util.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

using cuda_test::CudaTest;
using cuda_test::RandomNormal;

constexpr InverseFactorMethod kMethods[] = {InverseFactorMethod::kFlippedCholesky,
                                            InverseFactorMethod::kCholeskyInverseChain};

const char* MethodName(InverseFactorMethod m) {
  return m == InverseFactorMethod::kFlippedCholesky ? "flipped" : "chain";
}

struct InverseCase {
  const char* name;
  int cols;
  int outliers;   // leading channels scaled by 30, as LLM activations have
  int dead_every;  // every k-th column has no activation (0: none)
  bool act_order;
};

// H = 2/t · XᵀX over t = cols + 40 tokens (ill-conditioned enough that the
// last fp32 bits matter), in double, then rounded to fp32.
std::vector<float> MakeHessian(const InverseCase& c, uint32_t seed) {
  const int n = c.cols, t = c.cols + 40;
  std::vector<float> x = RandomNormal(static_cast<size_t>(t) * n, 1.0f, seed);
  for (int r = 0; r < t; ++r) {
    for (int j = 0; j < n; ++j) {
      float& v = x[static_cast<size_t>(r) * n + j];
      if (j < c.outliers) v *= 30.0f;
      if (c.dead_every > 0 && j % c.dead_every == c.dead_every - 1) v = 0.0f;
    }
  }
  std::vector<float> h(static_cast<size_t>(n) * n);
  for (int i = 0; i < n; ++i) {
    for (int j = i; j < n; ++j) {
      double s = 0.0;
      for (int r = 0; r < t; ++r) s += static_cast<double>(x[static_cast<size_t>(r) * n + i]) * x[static_cast<size_t>(r) * n + j];
      h[static_cast<size_t>(i) * n + j] = h[static_cast<size_t>(j) * n + i] = static_cast<float>(2.0 * s / t);
    }
  }
  return h;
}

// The CPU preparation in float64: dead columns, the stable descending-diag
// order, the damped chain. `perm` gets the order.
HessianInverse CpuFactor64(const std::vector<float>& h, int n, bool act_order, double damp, double increment,
                           std::vector<int>* perm) {
  std::vector<double> hd(h.begin(), h.end());
  algo_internal::FixDeadColumns(hd, n);
  perm->resize(n);
  std::iota(perm->begin(), perm->end(), 0);
  if (act_order) {
    std::stable_sort(perm->begin(), perm->end(), [&](int a, int b) {
      return hd[static_cast<size_t>(a) * n + a] > hd[static_cast<size_t>(b) * n + b];
    });
  }
  absl::StatusOr<HessianInverse> inv =
      algo_internal::InvertHessian(algo_internal::PermuteSymmetric(hd, n, *perm), n, damp, increment);
  EXPECT_TRUE(inv.ok()) << inv.status();
  return inv.ok() ? *inv : HessianInverse{};
}

class HessianInverseCudaTest : public CudaTest, public ::testing::WithParamInterface<InverseCase> {};

TEST_P(HessianInverseCudaTest, BothMethodsGiveTheFloat64Factor) {
  const InverseCase& c = GetParam();
  const int n = c.cols;
  const std::vector<float> h = MakeHessian(c, 11u + n);
  std::vector<int> perm;
  const HessianInverse ref = CpuFactor64(h, n, c.act_order, 0.01, 0.0, &perm);
  ASSERT_EQ(ref.upper.size(), static_cast<size_t>(n) * n);
  double scale = 0.0;
  for (float v : ref.upper) scale = std::max(scale, std::fabs(static_cast<double>(v)));
  ASSERT_GT(scale, 0.0);
  long dead = 0;
  for (int j = 0; j < n; ++j) dead += h[static_cast<size_t>(j) * n + j] == 0.0f;

  SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<float> d_h, DeviceBuffer<float>::FromHost(h, stream_));
  for (const InverseFactorMethod method : kMethods) {
    SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<HessianInverseCuda> inv, HessianInverseCuda::Create(stream_));
    SR_ASSERT_OK(inv->Prepare(d_h.data(), n, c.act_order, 0.01, 0.0, method));
    EXPECT_EQ(inv->method(), method);
    EXPECT_EQ(inv->cols(), n);
    EXPECT_EQ(inv->damp_used(), 0.01);
    EXPECT_EQ(inv->damp_increments(), 0);
    EXPECT_EQ(inv->dead_count(), dead);
    EXPECT_EQ(inv->perm_host(), std::vector<int32_t>(perm.begin(), perm.end()));
    std::vector<float> u(static_cast<size_t>(n) * n);
    SR_ASSERT_OK(CudaStatus(cudaMemcpyAsync(u.data(), inv->upper(), u.size() * sizeof(float),
                                            cudaMemcpyDeviceToHost, stream_),
                            "cudaMemcpyAsync", __FILE__, __LINE__));
    SR_ASSERT_OK(CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize", __FILE__, __LINE__));
    double worst = 0.0;
    bool finite = true;
    for (int i = 0; i < n; ++i) {
      for (int j = i; j < n; ++j) {  // the upper triangle: all the solvers read
        const size_t k = static_cast<size_t>(i) * n + j;
        finite = finite && std::isfinite(u[k]);
        worst = std::max(worst, std::fabs(static_cast<double>(u[k]) - ref.upper[k]));
      }
      EXPECT_GT(u[static_cast<size_t>(i) * n + i], 0.0f) << MethodName(method) << " diagonal " << i;
    }
    EXPECT_TRUE(finite) << MethodName(method);
    std::printf("[hinv-cuda %s] %s: max |U - U64| / max |U64| = %.3g\n", c.name, MethodName(method),
                worst / scale);
    // fp32 factors of these matrices (condition ~1e3-1e4) sit ~1e-6 from the
    // float64 one; a wrong triangle, order or reversal is O(1) off.
    EXPECT_LE(worst / scale, 2e-5) << MethodName(method);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, HessianInverseCudaTest,
                         ::testing::Values(InverseCase{"One", 1, 0, 0, false}, InverseCase{"Two", 2, 0, 0, false},
                                           InverseCase{"Odd7ActOrder", 7, 1, 0, true},
                                           InverseCase{"Dead300ActOrder", 300, 4, 7, true},
                                           InverseCase{"Outliers1024", 1024, 16, 0, false},
                                           InverseCase{"Dead1030ActOrder", 1030, 16, 97, true}),
                         [](const ::testing::TestParamInfo<InverseCase>& info) { return std::string(info.param.name); });

// H = I but for column `bad`, whose diagonal is negative beyond the damping:
// both methods fail there and name that column; nothing is prepared.
TEST_F(HessianInverseCudaTest, BothMethodsNameTheColumnThatIsNotPositive) {
  const int n = 16, bad = 5;
  std::vector<float> h(static_cast<size_t>(n) * n, 0.0f);
  for (int j = 0; j < n; ++j) h[static_cast<size_t>(j) * n + j] = j == bad ? -1.0f : 1.0f;
  SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<float> d_h, DeviceBuffer<float>::FromHost(h, stream_));
  for (const InverseFactorMethod method : kMethods) {
    SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<HessianInverseCuda> inv, HessianInverseCuda::Create(stream_));
    const absl::Status st = inv->Prepare(d_h.data(), n, false, 0.01, 0.0, method);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << MethodName(method) << ": " << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "cholesky(H) failed")) << MethodName(method) << ": " << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "column 5 ")) << MethodName(method) << ": " << st;
    EXPECT_EQ(inv->cols(), 0);
  }
}

// Column 3's diagonal is -0.03: the damping (percdamp · mean diag, mean
// 0.87125) reaches it only at 0.04, after three increments of 0.01, on the
// CPU and with either GPU method; the factor is then the CPU's.
TEST_F(HessianInverseCudaTest, DampingRetriesCountAsTheCpus) {
  const int n = 8;
  std::vector<float> h(static_cast<size_t>(n) * n, 0.0f);
  for (int j = 0; j < n; ++j) h[static_cast<size_t>(j) * n + j] = j == 3 ? -0.03f : 1.0f;
  std::vector<int> perm;
  const HessianInverse ref = CpuFactor64(h, n, false, 0.01, 0.01, &perm);
  ASSERT_EQ(ref.damp_increments, 3);
  SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<float> d_h, DeviceBuffer<float>::FromHost(h, stream_));
  for (const InverseFactorMethod method : kMethods) {
    SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<HessianInverseCuda> inv, HessianInverseCuda::Create(stream_));
    SR_ASSERT_OK(inv->Prepare(d_h.data(), n, false, 0.01, 0.01, method));
    EXPECT_EQ(inv->damp_increments(), ref.damp_increments) << MethodName(method);
    EXPECT_EQ(inv->damp_used(), ref.damp_used) << MethodName(method);
    std::vector<float> u(static_cast<size_t>(n) * n);
    SR_ASSERT_OK(CudaStatus(cudaMemcpyAsync(u.data(), inv->upper(), u.size() * sizeof(float),
                                            cudaMemcpyDeviceToHost, stream_),
                            "cudaMemcpyAsync", __FILE__, __LINE__));
    SR_ASSERT_OK(CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize", __FILE__, __LINE__));
    for (int i = 0; i < n; ++i) {
      for (int j = i; j < n; ++j) {
        const size_t k = static_cast<size_t>(i) * n + j;
        EXPECT_NEAR(u[k], ref.upper[k], 1e-5 * std::fabs(ref.upper[k]) + 1e-7) << MethodName(method) << " [" << i
                                                                              << ", " << j << "]";
      }
    }
  }
}

}  // namespace
}  // namespace shrinkray
