// The Hessian merge across ranks on the device (core/kernels/cuda/
// hessian_merge_cuda.h) against the host's (HessianAccumulator::
// MergeAcrossRanks): with a peer's contribution added by a fake 2-rank
// communicator (the same sums on device or host buffers), the merged H is the
// host's bit for bit and the total the same; a peer without samples leaves H
// as it is; through the accumulator the merge runs where the values are and
// nothing is fetched; a real 1-rank NCCL communicator (host-staged, as a GPU
// worker builds it) reaches the device and leaves H unchanged. Without a CUDA
// device every test SKIPS.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "core/calib/device_hessian.h"
#include "core/calib/hessian_accumulator.h"
#include "core/comm/communicator.h"
#include "core/comm/store.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/hessian_merge_cuda.h"
#include "compress_test_util.h"
#include "cuda_test_util.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

using cuda_test::CudaTest;

// The fake peer (compress_test_util.h) adding into device buffers.
class DevicePeerCommunicator final : public testing::PeerCommunicator {
 public:
  explicit DevicePeerCommunicator(std::vector<double> peer) : PeerCommunicator(std::move(peer)) {}

 protected:
  absl::Status AddPeer(double* data) override {
    std::vector<double> host(peer().size());
    if (cudaMemcpy(host.data(), data, host.size() * sizeof(double), cudaMemcpyDeviceToHost) != cudaSuccess) {
      return absl::InternalError("copy down");
    }
    for (size_t i = 0; i < host.size(); ++i) host[i] += peer()[i];
    if (cudaMemcpy(data, host.data(), host.size() * sizeof(double), cudaMemcpyHostToDevice) != cudaSuccess) {
      return absl::InternalError("copy up");
    }
    return absl::OkStatus();
  }
};

// A random symmetric H with a positive diagonal (what a Gram matrix looks like).
std::vector<float> RandomSymmetric(int dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> h(static_cast<size_t>(dim) * dim);
  for (int i = 0; i < dim; ++i) {
    for (int j = i; j < dim; ++j) {
      const float v = i == j ? 4.0f + std::abs(normal(rng)) : 0.3f * normal(rng);
      h[static_cast<size_t>(i) * dim + j] = v;
      h[static_cast<size_t>(j) * dim + i] = v;
    }
  }
  return h;
}

// The peer's sums in HessianMergeCount's layout.
std::vector<double> PeerSums(const std::vector<float>& h, int dim, long n) {
  std::vector<double> sums;
  sums.reserve(HessianMergeCount(dim));
  for (int i = 0; i < dim; ++i) {
    for (int j = i; j < dim; ++j) sums.push_back(static_cast<double>(h[static_cast<size_t>(i) * dim + j]) * n);
  }
  sums.push_back(static_cast<double>(n));
  return sums;
}

// The host's merge of `mine` (n_mine samples) with the peer's.
std::vector<float> HostMerged(const std::vector<float>& mine, int dim, long n_mine, const std::vector<double>& peer,
                              long* total) {
  HessianAccumulator acc(dim, HessianPrecision::kFloat32);
  EXPECT_TRUE(acc.Assign(mine, n_mine).ok());
  testing::PeerCommunicator comm(peer);
  const absl::Status st = acc.MergeAcrossRanks(comm);
  EXPECT_TRUE(st.ok()) << st;
  *total = acc.num_samples();
  return acc.HessianF32().value();
}

class HessianMergeCudaTest : public CudaTest {};

// Both merges read the upper triangle only: the lower one of `mine` is
// scrambled (a kernel reading it would differ) and the result is symmetric.
TEST_F(HessianMergeCudaTest, EqualsTheHostMergeBitForBit) {
  for (const int dim : {1, 7, 300, 1030}) {
    SCOPED_TRACE(absl::StrCat("dim ", dim));
    std::vector<float> mine = RandomSymmetric(dim, 100 + dim);
    for (int i = 1; i < dim; ++i) mine[static_cast<size_t>(i) * dim] += 1.0f + static_cast<float>(i);
    const std::vector<float> theirs = RandomSymmetric(dim, 200 + dim);
    const std::vector<double> peer = PeerSums(theirs, dim, 5);
    long host_total = 0;
    const std::vector<float> expected = HostMerged(mine, dim, 3, peer, &host_total);
    EXPECT_EQ(host_total, 8);

    SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<float> h, DeviceBuffer<float>::FromHost(mine, stream_));
    DevicePeerCommunicator comm(peer);
    SR_ASSERT_OK_AND_ASSIGN(const long total, MergeHessianAcrossRanksCuda(h.data(), dim, 3, comm, stream_));
    EXPECT_EQ(total, 8);
    EXPECT_EQ(comm.all_reduces, 1);
    std::vector<float> got(mine.size());
    SR_ASSERT_OK(h.CopyToHost(absl::MakeSpan(got), stream_));
    ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    long differing = 0;
    for (size_t i = 0; i < got.size(); ++i) differing += got[i] != expected[i];
    EXPECT_EQ(differing, 0) << "of " << got.size();
  }
}

TEST_F(HessianMergeCudaTest, APeerWithoutSamplesLeavesHAsItIs) {
  const int dim = 257;
  const std::vector<float> mine = RandomSymmetric(dim, 7);
  const std::vector<double> peer = PeerSums(std::vector<float>(mine.size(), 0.0f), dim, 0);
  SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<float> h, DeviceBuffer<float>::FromHost(mine, stream_));
  DevicePeerCommunicator comm(peer);
  SR_ASSERT_OK_AND_ASSIGN(const long total, MergeHessianAcrossRanksCuda(h.data(), dim, 4, comm, stream_));
  EXPECT_EQ(total, 4);
  std::vector<float> got(mine.size());
  SR_ASSERT_OK(h.CopyToHost(absl::MakeSpan(got), stream_));
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  EXPECT_TRUE(got == mine);

  // No samples anywhere: Internal, as on the host.
  DevicePeerCommunicator none(peer);
  const auto empty = MergeHessianAcrossRanksCuda(h.data(), dim, 0, none, stream_);
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(empty.status().message(), "no samples on any rank");
  EXPECT_EQ(MergeHessianAcrossRanksCuda(nullptr, dim, 1, none, stream_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A device H as the GPU executor hands it over, merging where it is.
class TestDeviceHessian final : public DeviceHessian {
 public:
  TestDeviceHessian(int dim, DeviceBuffer<float> values) : dim_(dim), values_(std::move(values)) {}
  int device() const override { return 0; }
  int dim() const override { return dim_; }
  const float* data() const override { return values_.data(); }
  absl::Status CopyToHost(absl::Span<float> out) const override {
    ++fetches;
    return values_.CopyToHost(out);
  }
  absl::StatusOr<std::optional<long>> MergeAcrossRanks(Communicator& comm, long n_samples) override {
    absl::StatusOr<long> total = MergeHessianAcrossRanksCuda(values_.data(), dim_, n_samples, comm, nullptr);
    if (!total.ok()) return total.status();
    return std::optional<long>(*total);
  }
  std::vector<float> Values() const {
    std::vector<float> out(values_.size());
    EXPECT_TRUE(values_.CopyToHost(absl::MakeSpan(out)).ok());
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    return out;
  }
  mutable int fetches = 0;

 private:
  int dim_;
  DeviceBuffer<float> values_;
};

TEST_F(HessianMergeCudaTest, TheAccumulatorMergesOnTheDeviceItsCommunicatorReaches) {
  const int dim = 96;
  const std::vector<float> mine = RandomSymmetric(dim, 31), theirs = RandomSymmetric(dim, 32);
  const std::vector<double> peer = PeerSums(theirs, dim, 2);
  long host_total = 0;
  const std::vector<float> expected = HostMerged(mine, dim, 6, peer, &host_total);

  SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<float> values, DeviceBuffer<float>::FromHost(mine));
  auto device = std::make_shared<TestDeviceHessian>(dim, std::move(values));
  HessianAccumulator acc(dim, HessianPrecision::kFloat32);
  SR_ASSERT_OK(acc.AssignOnDevice(device, 6));
  DevicePeerCommunicator device_side(peer);
  testing::PeerCommunicator comm(peer, /*reach=*/0, &device_side);
  SR_ASSERT_OK(acc.MergeAcrossRanks(comm));
  EXPECT_EQ(device_side.all_reduces, 1);
  EXPECT_EQ(comm.all_reduces, 0);
  EXPECT_EQ(device->fetches, 0);
  EXPECT_TRUE(acc.host_pending());
  EXPECT_EQ(acc.num_samples(), host_total);
  EXPECT_TRUE(device->Values() == expected);
  // What the host reads afterwards is the merged H.
  EXPECT_TRUE(acc.HessianF32().value() == expected);
}

TEST_F(HessianMergeCudaTest, AOneRankHostStagedNcclCommunicatorMergesOnTheDevice) {
  CommOptions options;
  options.timeout = absl::Seconds(60);
  absl::StatusOr<std::unique_ptr<Communicator>> staged = MakeHostCommunicator("nccl", MakeInProcessStore(), options);
  ASSERT_TRUE(staged.ok()) << staged.status();
  Communicator* on_device = (*staged)->OnDevice(0);
  ASSERT_NE(on_device, nullptr);
  EXPECT_EQ(on_device->OnDevice(0), on_device);
  EXPECT_EQ((*staged)->OnDevice(1), nullptr);

  const int dim = 515;
  const std::vector<float> mine = RandomSymmetric(dim, 9);
  SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<float> values, DeviceBuffer<float>::FromHost(mine));
  auto device = std::make_shared<TestDeviceHessian>(dim, std::move(values));
  HessianAccumulator acc(dim, HessianPrecision::kFloat32);
  SR_ASSERT_OK(acc.AssignOnDevice(device, 11));
  SR_ASSERT_OK(acc.MergeAcrossRanks(**staged));
  EXPECT_EQ(device->fetches, 0);
  EXPECT_EQ(acc.num_samples(), 11);
  EXPECT_TRUE(device->Values() == mine);
  // The communicator is still usable through the host.
  std::vector<double> host = {1.5, -2.0};
  SR_ASSERT_OK((*staged)->AllReduce(host.data(), host.size(), CommDType::kF64, ReduceOp::kSum));
  EXPECT_EQ(host, (std::vector<double>{1.5, -2.0}));
}

}  // namespace
}  // namespace shrinkray
