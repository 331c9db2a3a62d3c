// hessian_accumulate against a double-precision H = (2/n) Σ x xᵀ built from
// the same (bf16-rounded) inputs, over several batches of different sizes
// (the running form must equal the plain average). Without a device: SKIP.
//
// Tolerance: fp32 accumulation over ~10^3 products per entry gives relative
// errors ~1e-6 (nmse ~1e-12); tensor-core fp32 accumulation may truncate:
// nmse <= 1e-9 for bf16 inputs, <= 1e-10 for fp32 (IEEE) inputs.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <vector>

#include "core/kernels/cuda/hessian_cuda.h"
#include "cuda/cuda_test_util.h"

namespace shrinkray {
namespace {

using cuda_test::Compare;
using cuda_test::CudaTest;
using cuda_test::Describe;
using cuda_test::RandomNormal;
using cuda_test::RoundToBf16;
using cuda_test::ToBf16;

class HessianCudaTest : public CudaTest {};

// Batches of (samples, tokens per sample).
const int kCols = 200;
const int kSeq = 16;
const int kBatchSamples[] = {4, 1, 7};

std::vector<double> Reference(const std::vector<std::vector<float>>& batches, int cols,
                              long n_samples) {
  std::vector<double> h(static_cast<size_t>(cols) * cols, 0.0);
  for (const auto& x : batches) {
    const long tokens = static_cast<long>(x.size()) / cols;
    for (long t = 0; t < tokens; ++t) {
      const float* row = x.data() + t * cols;
      for (int i = 0; i < cols; ++i) {
        for (int j = 0; j < cols; ++j) h[i * cols + j] += static_cast<double>(row[i]) * row[j];
      }
    }
  }
  for (double& v : h) v *= 2.0 / static_cast<double>(n_samples);
  return h;
}

TEST_F(HessianCudaTest, Bf16AndFp32RunningAverageMatchesDouble) {
  std::vector<std::vector<float>> batches;
  long total = 0;
  uint32_t seed = 100;
  for (int b : kBatchSamples) {
    batches.push_back(RoundToBf16(RandomNormal(static_cast<size_t>(b) * kSeq * kCols, 1.0f, seed++)));
    total += b;
  }
  const std::vector<double> ref_d = Reference(batches, kCols, total);
  const std::vector<float> ref(ref_d.begin(), ref_d.end());

  SR_ASSERT_OK_AND_ASSIGN(auto d_h, DeviceBuffer<float>::Create(ref.size()));
  SR_ASSERT_OK(d_h.Memset(0xff, stream_));  // NaN garbage: the first batch must not read it
  for (int precision = 0; precision < 2; ++precision) {
    long n = 0;
    for (size_t i = 0; i < batches.size(); ++i) {
      const long tokens = static_cast<long>(batches[i].size()) / kCols;
      if (precision == 0) {
        SR_ASSERT_OK_AND_ASSIGN(auto d_x,
                                DeviceBuffer<__nv_bfloat16>::FromHost(ToBf16(batches[i]), stream_));
        SR_ASSERT_OK(hessian_accumulate(d_h.data(), kCols, &n, d_x.data(), tokens,
                                        kBatchSamples[i], stream_));
        ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
      } else {
        SR_ASSERT_OK_AND_ASSIGN(auto d_x, DeviceBuffer<float>::FromHost(batches[i], stream_));
        SR_ASSERT_OK(hessian_accumulate(d_h.data(), kCols, &n, d_x.data(), tokens,
                                        kBatchSamples[i], Fp32HessianGemm::kFp32, stream_));
        ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
      }
    }
    EXPECT_EQ(n, total);
    std::vector<float> h(ref.size());
    SR_ASSERT_OK(d_h.CopyToHost(absl::MakeSpan(h), stream_));
    const auto e = Compare(h, ref);
    EXPECT_LE(e.nmse, precision == 0 ? 1e-9 : 1e-10)
        << (precision == 0 ? "bf16 " : "fp32 ") << Describe(e);
    EXPECT_TRUE(e.finite);
  }
}

// cols = 3072 takes the block-triangular path (2 x 2 tiles of 1536: the
// lower blocks by strided-batched GEMMs, the upper one mirrored): the same
// values as the double reference and an exactly symmetric H, over batches.
TEST_F(HessianCudaTest, BlockTriangularPathMatchesDoubleAndIsSymmetric) {
  const int cols = 3072;
  std::vector<std::vector<float>> batches;
  long total = 0;
  uint32_t seed = 300;
  for (int b : {3, 2}) {
    batches.push_back(RoundToBf16(RandomNormal(static_cast<size_t>(b) * kSeq * cols, 1.0f, seed++)));
    total += b;
  }
  const std::vector<double> ref_d = Reference(batches, cols, total);
  const std::vector<float> ref(ref_d.begin(), ref_d.end());
  SR_ASSERT_OK_AND_ASSIGN(auto d_h, DeviceBuffer<float>::Create(ref.size()));
  SR_ASSERT_OK(d_h.Memset(0xff, stream_));
  long n = 0;
  const int batch_samples[] = {3, 2};
  for (size_t i = 0; i < batches.size(); ++i) {
    SR_ASSERT_OK_AND_ASSIGN(auto d_x, DeviceBuffer<__nv_bfloat16>::FromHost(ToBf16(batches[i]), stream_));
    SR_ASSERT_OK(hessian_accumulate(d_h.data(), cols, &n, d_x.data(),
                                    static_cast<long>(batches[i].size()) / cols, batch_samples[i], stream_));
    ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  }
  std::vector<float> h(ref.size());
  SR_ASSERT_OK(d_h.CopyToHost(absl::MakeSpan(h), stream_));
  const auto e = Compare(h, ref);
  EXPECT_LE(e.nmse, 1e-9) << Describe(e);
  EXPECT_TRUE(e.finite);
  long asymmetric = 0;
  for (int r = 0; r < cols; ++r) {
    for (int c = 0; c < r; ++c) asymmetric += h[static_cast<size_t>(r) * cols + c] != h[static_cast<size_t>(c) * cols + r];
  }
  EXPECT_EQ(asymmetric, 0);
}

// fp32 activations (not bf16-rounded: full 24-bit mantissas) through the
// three ways, against the double reference. With few rows per product (cols
// 3072, the block-triangular path: 48 and 32) the products' rounding shows
// alone: 3xTF32 within 16x of the fp32 GEMM's error (or 1e-6 of max |H|) and
// plain TF32 at least 10x worse than 3xTF32 (so the split is what makes it
// close). With many (cols 200: a batch of 9008 rows spans five 2048-row
// splits, so only the first may rescale H) the tensor cores' accumulation
// may truncate: 3xTF32 within 1e-4 of max |H| (a bit-level model of
// per-product truncation without guard bits gives 3.9e-5 at 2048-row
// splits, 1.5e-4 at 8192). 3xTF32 (mirrored element by
// element) and the block path are symmetric bit for bit, and 3xTF32 is not
// the fp32 GEMM's result (it ran, rather than falling back).
TEST_F(HessianCudaTest, ThreeTf32MatchesFp32Accuracy) {
  struct Case {
    int cols;
    std::vector<int> samples;  // per batch, kSeq rows each
  };
  const Case cases[] = {{200, {3, 563, 2}}, {3072, {3, 2}}};
  for (const Case& c : cases) {
    const int cols = c.cols;
    SCOPED_TRACE(cols);
    std::vector<std::vector<float>> batches;
    long total = 0;
    uint32_t seed = 500;
    for (int b : c.samples) {
      std::vector<float> x = RandomNormal(static_cast<size_t>(b) * kSeq * cols, 1.0f, seed++);
      for (size_t i = 0; i < x.size(); i += 7) x[i] *= 30.0f;  // a few large activations, as LLMs have
      batches.push_back(std::move(x));
      total += b;
    }
    const std::vector<double> ref = Reference(batches, cols, total);
    double scale = 0.0;
    for (double v : ref) scale = std::max(scale, std::fabs(v));
    std::map<Fp32HessianGemm, double> error;
    std::map<Fp32HessianGemm, std::vector<float>> result;
    for (const Fp32HessianGemm gemm : {Fp32HessianGemm::kFp32, Fp32HessianGemm::k3xTf32, Fp32HessianGemm::kTf32}) {
      SR_ASSERT_OK_AND_ASSIGN(auto d_h, DeviceBuffer<float>::Create(ref.size()));
      SR_ASSERT_OK(d_h.Memset(0xff, stream_));  // NaN garbage: the first batch must not read it
      long n = 0;
      for (size_t i = 0; i < batches.size(); ++i) {
        SR_ASSERT_OK_AND_ASSIGN(auto d_x, DeviceBuffer<float>::FromHost(batches[i], stream_));
        SR_ASSERT_OK(hessian_accumulate(d_h.data(), cols, &n, d_x.data(),
                                        static_cast<long>(batches[i].size()) / cols, c.samples[i], gemm, stream_));
        ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
      }
      EXPECT_EQ(n, total);
      std::vector<float>& h = result[gemm];
      h.resize(ref.size());
      SR_ASSERT_OK(d_h.CopyToHost(absl::MakeSpan(h), stream_));
      double worst = 0.0;
      long asymmetric = 0;
      for (int r = 0; r < cols; ++r) {
        for (int col = 0; col < cols; ++col) {
          const size_t at = static_cast<size_t>(r) * cols + col;
          worst = std::max(worst, std::fabs(h[at] - ref[at]));
          asymmetric += h[at] != h[static_cast<size_t>(col) * cols + r];
        }
      }
      error[gemm] = std::isfinite(worst) ? worst / scale : 1.0;  // NaN fails every bound below
      // The fp32 GEMM's full product (cols 200) is not asserted symmetric, nor
      // plain TF32 (its diagonal blocks come straight from a GEMM whose two
      // operands cuBLAS may convert to TF32 differently).
      if ((cols == 3072 && gemm == Fp32HessianGemm::kFp32) || gemm == Fp32HessianGemm::k3xTf32) {
        EXPECT_EQ(asymmetric, 0);
      }
    }
    const double fp32 = error[Fp32HessianGemm::kFp32], three = error[Fp32HessianGemm::k3xTf32],
                 tf32 = error[Fp32HessianGemm::kTf32];
    std::printf("cols %d: max error / max |H|: fp32 %.3g, 3xTF32 %.3g, TF32 %.3g\n", cols, fp32, three, tf32);
    EXPECT_NE(result[Fp32HessianGemm::k3xTf32], result[Fp32HessianGemm::kFp32]);
    if (cols == 3072) {
      EXPECT_LE(three, std::max(16.0 * fp32, 1e-6));
      EXPECT_GE(tf32, 10.0 * three);
    } else {
      EXPECT_LE(three, 1e-4);
    }
  }
}

TEST_F(HessianCudaTest, RejectsBadArguments) {
  long n = 0;
  const float* x = nullptr;
  EXPECT_EQ(hessian_accumulate(nullptr, 4, &n, x, 2, 1, Fp32HessianGemm::kFp32, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(hessian_accumulate(nullptr, 0, &n, x, 2, 1, Fp32HessianGemm::k3xTf32, stream_).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shrinkray
