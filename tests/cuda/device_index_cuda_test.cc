// --device cuda:N on a real GPU (core/util/compute_device.h): every by-device
// factory and CUDA entry point refuses an index that is not visible, naming it
// (FailedPrecondition "device cuda:<count>: <count> CUDA device(s) visible"),
// and works on cuda:0; with two GPUs, what is made for cuda:1 works from a
// thread whose current device is 0, as a worker's job thread calls it.
// SKIPS without a CUDA device (the second-GPU case without two).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/comm/communicator.h"
#include "core/comm/store.h"
#include "core/distill/distill_device.h"
#include "core/model/synthetic.h"
#include "core/pipeline/device_factories.h"
#include "core/util/compute_device.h"
#include "cuda_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

using cuda_test::CudaTest;
using ::testing::HasSubstr;

class DeviceIndexTest : public CudaTest {
 protected:
  void SetUp() override {
    CudaTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    count_ = *CudaDeviceCount();
    config_ = MakeLlamaConfig(32, 64, 1, 4, 2, 64, 64, true);
    spec_.config = &config_;
    spec_.windows = 2;
    spec_.seqlen = 8;
  }

  int count_ = 0;
  ModelConfig config_;
  LayerExecutorSpec spec_;
};

TEST_F(DeviceIndexTest, AnIndexNotVisibleIsRefusedNamingIt) {
  const ComputeDevice missing = ComputeDevice::Cuda(count_);
  const std::string want = absl::StrCat("device cuda:", count_, ": ", count_, " CUDA device(s) visible");
  auto expect = [&](const absl::Status& st, const char* what) {
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << what << ": " << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(want)) << what;
  };
  expect(CheckComputeDevice(missing), "CheckComputeDevice");
  expect(MakeSolverBackend(missing).status(), "MakeSolverBackend");
  expect(MakeLayerExecutorFactory(missing).status(), "MakeLayerExecutorFactory");
  expect(MakeDistillRunnerFactory(missing).status(), "MakeDistillRunnerFactory");
  expect(MakeCudaSolverBackend(count_).status(), "MakeCudaSolverBackend");
  expect(MakeCudaLayerExecutor(count_, spec_).status(), "MakeCudaLayerExecutor");
  CommOptions comm;
  comm.device = count_;
  comm.timeout = absl::Seconds(5);
  expect(MakeNcclCommunicator(MakeInProcessStore(), comm).status(), "MakeNcclCommunicator");
  expect(MakeHostStagedNcclCommunicator(MakeInProcessStore(), comm).status(), "MakeHostStagedNcclCommunicator");

  const absl::Status negative = CheckComputeDevice(ComputeDevice::Cuda(-1));
  EXPECT_EQ(negative.code(), absl::StatusCode::kInvalidArgument) << negative;
  EXPECT_EQ(negative.message(), "device cuda:-1: the index must be >= 0");
}

TEST_F(DeviceIndexTest, CudaZeroWorks) {
  const ComputeDevice cuda0 = ComputeDevice::Cuda(0);
  EXPECT_TRUE(CheckComputeDevice(cuda0).ok());
  SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SolverBackend> solvers, MakeSolverBackend(cuda0));
  ASSERT_NE(solvers, nullptr);
  EXPECT_EQ(solvers->name(), "cuda");
  SR_ASSERT_OK_AND_ASSIGN(LayerExecutorFactory executors, MakeLayerExecutorFactory(cuda0));
  ASSERT_TRUE(executors);
  SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LayerExecutor> executor, executors(spec_));
  EXPECT_EQ(executor->device(), "cuda");
  SR_ASSERT_OK_AND_ASSIGN(distill::DistillRunnerFactory runners, MakeDistillRunnerFactory(cuda0));
  EXPECT_TRUE(runners);
  CommOptions comm;
  comm.device = 0;
  SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Communicator> nccl, MakeNcclCommunicator(MakeInProcessStore(), comm));
  EXPECT_TRUE(nccl->Barrier().ok());
}

// GPTQ of one matrix on `solvers`, called with device 0 current.
absl::StatusOr<GptqResult> SolveFromDeviceZero(SolverBackend& solvers) {
  constexpr int kRows = 16, kCols = 32, kSamples = 64;
  const std::vector<float> w = cuda_test::RandomNormal(kRows * kCols, 1.0f, 1);
  const std::vector<float> x = cuda_test::RandomNormal(kSamples * kCols, 1.0f, 2);
  std::vector<float> h(kCols * kCols, 0.0f);  // 2/n X^T X
  for (int s = 0; s < kSamples; ++s) {
    for (int i = 0; i < kCols; ++i) {
      for (int j = 0; j < kCols; ++j) h[i * kCols + j] += 2.0f / kSamples * x[s * kCols + i] * x[s * kCols + j];
    }
  }
  SR_CUDA_RETURN_IF_ERROR(cudaSetDevice(0));
  return solvers.Gptq(w, kRows, kCols, h, GptqOptions{});
}

TEST_F(DeviceIndexTest, SecondGpuWorksFromAThreadOnTheFirst) {
  if (count_ < 2) GTEST_SKIP() << "needs 2 GPUs, found " << count_;
  SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SolverBackend> on0, MakeSolverBackend(ComputeDevice::Cuda(0)));
  SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SolverBackend> on1, MakeSolverBackend(ComputeDevice::Cuda(1)));
  int current = -1;
  ASSERT_EQ(cudaGetDevice(&current), cudaSuccess);
  EXPECT_EQ(current, 1);  // UseCudaDevice: the device made current where state is made
  SR_ASSERT_OK_AND_ASSIGN(GptqResult a, SolveFromDeviceZero(*on0));
  SR_ASSERT_OK_AND_ASSIGN(GptqResult b, SolveFromDeviceZero(*on1));
  ASSERT_EQ(a.weight.size(), b.weight.size());
  double worst = 0.0;
  for (size_t i = 0; i < a.weight.size(); ++i) worst = std::max(worst, std::fabs(double{a.weight[i]} - b.weight[i]));
  EXPECT_LE(worst, 1e-5) << "the same solve on cuda:0 and cuda:1";

  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  SR_ASSERT_OK_AND_ASSIGN(LayerExecutorFactory executors, MakeLayerExecutorFactory(ComputeDevice::Cuda(1)));
  SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<LayerExecutor> executor, executors(spec_));
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  executor.reset();  // frees on its own device, whichever is current
  ASSERT_EQ(cudaGetDevice(&current), cudaSuccess);
  EXPECT_EQ(current, 0) << "the executor's destructor restores the caller's device";
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

}  // namespace
}  // namespace shrinkray
