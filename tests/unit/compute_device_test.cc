// --device values (core/util/compute_device.h).
#include "core/util/compute_device.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

TEST(ParseComputeDevice, CpuCudaAndCudaN) {
  struct Case {
    std::string text;
    ComputeDevice want;
  };
  for (const Case& c : {Case{"cpu", ComputeDevice::Cpu()}, Case{"cuda", ComputeDevice::Cuda(0)},
                        Case{"cuda:0", ComputeDevice::Cuda(0)}, Case{"cuda:7", ComputeDevice::Cuda(7)},
                        Case{"cuda:12", ComputeDevice::Cuda(12)}, Case{"cuda:007", ComputeDevice::Cuda(7)}}) {
    absl::StatusOr<ComputeDevice> d = ParseComputeDevice(c.text);
    ASSERT_TRUE(d.ok()) << c.text << ": " << d.status();
    EXPECT_EQ(*d, c.want) << c.text;
  }
}

TEST(ParseComputeDevice, AnythingElseNamesTheValue) {
  for (const std::string bad : {"", "gpu", "CUDA", "Cpu", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "cuda: 1",
                                "cuda:1 ", " cuda", "cuda:1.0", "cuda:0x1", "cuda1", "cuda:1:2",
                                "cuda:99999999999", "cpu:0"}) {
    absl::StatusOr<ComputeDevice> d = ParseComputeDevice(bad);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << "'" << bad << "': " << d.status();
    EXPECT_EQ(d.status().message(), "device must be cpu, cuda or cuda:N, got '" + bad + "'");
  }
  // The caller names its field (a flag, a proto field).
  EXPECT_EQ(ParseComputeDevice("tpu", "--device").status().message(),
            "--device must be cpu, cuda or cuda:N, got 'tpu'");
}

TEST(ComputeDevice, ToStringRoundTrips) {
  EXPECT_EQ(ComputeDevice::Cpu().ToString(), "cpu");
  EXPECT_EQ(ComputeDevice::Cuda(0).ToString(), "cuda:0");
  EXPECT_EQ(ComputeDevice::Cuda(5).ToString(), "cuda:5");
  EXPECT_EQ(ComputeDevice().ToString(), "cpu");
  for (const ComputeDevice d : {ComputeDevice::Cpu(), ComputeDevice::Cuda(0), ComputeDevice::Cuda(3)}) {
    absl::StatusOr<ComputeDevice> back = ParseComputeDevice(d.ToString());
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, d);
  }
}

TEST(CudaNotBuiltError, NamesTheDeviceAndTheBuild) {
  const absl::Status st = CudaNotBuiltError(ComputeDevice::Cuda(1));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(st.message(),
            "device cuda:1: shrinkray was built without CUDA (configure with -DSHRINKRAY_CUDA=ON); use device cpu");
}

}  // namespace
}  // namespace shrinkray
