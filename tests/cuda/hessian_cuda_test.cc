// hessian_accumulate against a double-precision H = (2/n) Σ x xᵀ built from
// the same (bf16-rounded) inputs, over several batches of different sizes
// (the running form must equal the plain average). Without a device: SKIP.
//
// Tolerance: fp32 accumulation over ~10^3 products per entry gives relative
// errors ~1e-6 (nmse ~1e-12); tensor-core fp32 accumulation may truncate:
// nmse <= 1e-9 for bf16 inputs, <= 1e-10 for fp32 (IEEE) inputs.
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
                                        kBatchSamples[i], /*allow_tf32=*/false, stream_));
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

TEST_F(HessianCudaTest, RejectsBadArguments) {
  long n = 0;
  const float* x = nullptr;
  EXPECT_EQ(hessian_accumulate(nullptr, 4, &n, x, 2, 1, false, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(hessian_accumulate(nullptr, 0, &n, x, 2, 1, false, stream_).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shrinkray
