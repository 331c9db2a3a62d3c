// GPTQ packing on the GPU against the CPU packer (core/io/gptq_format.h):
// byte-identical qweight and qzeros (v1 and v2) for 2, 3, 4 and 8 bits,
// fp16 scales identical to the CPU's rounding, and argument errors.
// Without a CUDA device every test SKIPS.
#include <cstdint>
#include <random>
#include <vector>

#include "core/io/gptq_format.h"
#include "core/kernels/cuda/gptq_pack_cuda.h"
#include "cuda/cuda_test_util.h"

namespace shrinkray {
namespace {

using cuda_test::CudaTest;

class GptqPackCudaTest : public CudaTest {};

TEST_F(GptqPackCudaTest, QweightAndQzerosMatchCpuPacker) {
  std::mt19937 rng(5);
  for (int bits : {2, 3, 4, 8}) {
    // 3 bits: runs of 32 values make 3 words, with values straddling words.
    const int rows = 96, cols = bits == 3 ? 256 : 160, groups = 5;
    const int maxq = (1 << bits) - 1;
    std::uniform_int_distribution<int> code(0, maxq), zero(1, maxq);
    std::vector<uint8_t> codes8(static_cast<size_t>(rows) * cols);
    for (uint8_t& c : codes8) c = static_cast<uint8_t>(code(rng));
    std::vector<int32_t> zeros(static_cast<size_t>(groups) * rows);
    for (int32_t& z : zeros) z = zero(rng);

    auto want_qw = PackGptqQweight(codes8, rows, cols, bits);
    ASSERT_TRUE(want_qw.ok()) << want_qw.status();
    SR_ASSERT_OK_AND_ASSIGN(auto d_codes, DeviceBuffer<uint8_t>::FromHost(codes8, stream_));
    SR_ASSERT_OK_AND_ASSIGN(auto d_qw, DeviceBuffer<int32_t>::Create(want_qw->size()));
    SR_ASSERT_OK(pack_gptq_qweight(d_qw.data(), d_codes.data(), rows, cols, bits, stream_));
    std::vector<int32_t> got_qw(want_qw->size());
    SR_ASSERT_OK(d_qw.CopyToHost(absl::MakeSpan(got_qw), stream_));
    EXPECT_EQ(got_qw, *want_qw) << bits << " bits";

    SR_ASSERT_OK_AND_ASSIGN(auto d_zeros, DeviceBuffer<int32_t>::FromHost(zeros, stream_));
    for (GptqZeroFormat format : {GptqZeroFormat::kV1, GptqZeroFormat::kV2}) {
      auto want_qz = PackGptqQzeros(zeros, groups, rows, bits, format);
      ASSERT_TRUE(want_qz.ok()) << want_qz.status();
      SR_ASSERT_OK_AND_ASSIGN(auto d_qz, DeviceBuffer<int32_t>::Create(want_qz->size()));
      SR_ASSERT_OK(pack_gptq_qzeros(d_qz.data(), d_zeros.data(), groups, rows, bits,
                                    format == GptqZeroFormat::kV1, stream_));
      std::vector<int32_t> got_qz(want_qz->size());
      SR_ASSERT_OK(d_qz.CopyToHost(absl::MakeSpan(got_qz), stream_));
      EXPECT_EQ(got_qz, *want_qz) << bits << " bits, " << GptqCheckpointFormatName(format);
    }
  }
}

TEST_F(GptqPackCudaTest, ScalesRoundToFp16LikeTheCpu) {
  const std::vector<float> scales = {1e-3f, 0.1234567f, 3.0e-5f, 65504.0f, 7.77e-8f, 0.5f + 1e-4f};
  SR_ASSERT_OK_AND_ASSIGN(auto d_in, DeviceBuffer<float>::FromHost(scales, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_out, DeviceBuffer<__half>::Create(scales.size()));
  SR_ASSERT_OK(convert_to_fp16(d_out.data(), d_in.data(), static_cast<long>(scales.size()), stream_));
  std::vector<__half> got(scales.size());
  SR_ASSERT_OK(d_out.CopyToHost(absl::MakeSpan(got), stream_));
  for (size_t i = 0; i < scales.size(); ++i) {
    EXPECT_EQ(__half2float(got[i]), __half2float(__float2half_rn(scales[i]))) << i;
  }
}

TEST_F(GptqPackCudaTest, RejectsBadArguments) {
  SR_ASSERT_OK_AND_ASSIGN(auto d_codes, DeviceBuffer<uint8_t>::Create(64));
  SR_ASSERT_OK_AND_ASSIGN(auto d_qw, DeviceBuffer<int32_t>::Create(64));
  EXPECT_EQ(pack_gptq_qweight(d_qw.data(), d_codes.data(), 2, 32, 5, stream_).code(),
            absl::StatusCode::kInvalidArgument);  // 5 bits
  EXPECT_EQ(pack_gptq_qweight(d_qw.data(), d_codes.data(), 2, 12, 4, stream_).code(),
            absl::StatusCode::kInvalidArgument);  // 12 * 4 not a multiple of 32
  EXPECT_EQ(pack_gptq_qweight(nullptr, d_codes.data(), 2, 32, 4, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pack_gptq_qzeros(d_qw.data(), nullptr, 1, 8, 4, true, stream_).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shrinkray
