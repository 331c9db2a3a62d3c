// The NCCL communicator (core/kernels/cuda/nccl_communicator.cc) on a real
// GPU: one rank (NCCL allows one rank per GPU), every collective and dtype on
// device buffers; two ranks on two threads when the machine has two GPUs; a
// rank whose peer never comes must fail within the timeout. Without a CUDA
// device every test SKIPS.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/comm/communicator.h"
#include "core/comm/store.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/tensor/convert.h"
#include "cuda_test_util.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

using cuda_test::CudaTest;

class NcclCommunicatorTest : public CudaTest {};

std::unique_ptr<Communicator> MakeOneRank(absl::Duration timeout = absl::Seconds(60)) {
  CommOptions options;
  options.timeout = timeout;
  absl::StatusOr<std::unique_ptr<Communicator>> comm = MakeNcclCommunicator(MakeInProcessStore(), options);
  EXPECT_TRUE(comm.ok()) << comm.status();
  return comm.ok() ? std::move(*comm) : nullptr;
}

template <typename T>
std::vector<T> RoundTrip(const std::vector<T>& host, const std::function<absl::Status(T*)>& op, absl::Status* st) {
  absl::StatusOr<DeviceBuffer<T>> dev = DeviceBuffer<T>::FromHost(host);
  if (!dev.ok()) {
    *st = dev.status();
    return {};
  }
  *st = op(dev->data());
  std::vector<T> out(host.size());
  if (st->ok()) *st = dev->CopyToHost(absl::MakeSpan(out));
  return out;
}

TEST_F(NcclCommunicatorTest, OneRankCollectives) {
  std::unique_ptr<Communicator> comm = MakeOneRank();
  ASSERT_NE(comm, nullptr);
  EXPECT_EQ(comm->backend(), "nccl");
  EXPECT_EQ(comm->size(), 1);
  for (size_t n : {size_t{1}, size_t{7}, size_t{1000003}}) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(i % 1000) - 500.0f;
    absl::Status st;
    std::vector<float> y = RoundTrip<float>(
        x, [&](float* d) { return comm->AllReduce(d, n, CommDType::kF32, ReduceOp::kSum); }, &st);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(y, x);
    y = RoundTrip<float>(x, [&](float* d) { return comm->AllReduce(d, n, CommDType::kF32, ReduceOp::kMax); }, &st);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(y, x);
    y = RoundTrip<float>(x, [&](float* d) { return comm->Broadcast(d, n, CommDType::kF32, 0); }, &st);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(y, x);

    std::vector<uint16_t> b(n);
    for (size_t i = 0; i < n; ++i) b[i] = F32ToBF16(static_cast<float>(i % 100) - 50.0f);
    std::vector<uint16_t> bo = RoundTrip<uint16_t>(
        b, [&](uint16_t* d) { return comm->AllReduce(d, n, CommDType::kBF16, ReduceOp::kSum); }, &st);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(bo, b);

    std::vector<double> f64(n, 2.5);
    std::vector<double> f64o = RoundTrip<double>(
        f64, [&](double* d) { return comm->AllReduce(d, n, CommDType::kF64, ReduceOp::kSum); }, &st);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(f64o, f64);
    std::vector<int32_t> i32(n, -7);
    std::vector<int32_t> i32o = RoundTrip<int32_t>(
        i32, [&](int32_t* d) { return comm->AllReduce(d, n, CommDType::kI32, ReduceOp::kMax); }, &st);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(i32o, i32);

    // AllGather / AllGatherV of one rank: a device-to-device copy.
    std::vector<uint8_t> u8(n);
    for (size_t i = 0; i < n; ++i) u8[i] = static_cast<uint8_t>(i * 31);
    SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<uint8_t> in, DeviceBuffer<uint8_t>::FromHost(u8));
    SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<uint8_t> out, DeviceBuffer<uint8_t>::Create(n));
    SR_ASSERT_OK(comm->AllGather(in.data(), out.data(), n, CommDType::kU8));
    std::vector<uint8_t> got(n);
    SR_ASSERT_OK(out.CopyToHost(absl::MakeSpan(got)));
    EXPECT_EQ(got, u8);
    SR_ASSERT_OK(out.Memset(0));
    SR_ASSERT_OK(comm->AllGatherV(in.data(), out.data(), {n}, CommDType::kU8));
    SR_ASSERT_OK(out.CopyToHost(absl::MakeSpan(got)));
    EXPECT_EQ(got, u8);
  }
  SR_ASSERT_OK(comm->Barrier());
  EXPECT_TRUE(absl::IsInvalidArgument(comm->Broadcast(nullptr, 0, CommDType::kF32, 1)));
  SR_ASSERT_OK(comm->Barrier());  // still usable after a bad argument
}

// Rank 0 of 2 whose peer never arrives: init must give up at the deadline.
TEST_F(NcclCommunicatorTest, MissingPeerTimesOut) {
  CommOptions options;
  options.rank = 0;
  options.size = 2;
  options.timeout = absl::Seconds(3);
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<Communicator>> comm = MakeNcclCommunicator(MakeInProcessStore(), options);
  const absl::Duration took = absl::Now() - start;
  EXPECT_FALSE(comm.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(comm.status())) << comm.status();
  EXPECT_LT(took, absl::Seconds(20));
}

// Two ranks need two GPUs (NCCL rejects two ranks on one device).
TEST_F(NcclCommunicatorTest, TwoRanksOnTwoGpus) {
  int devices = 0;
  ASSERT_EQ(cudaGetDeviceCount(&devices), cudaSuccess);
  if (devices < 2) GTEST_SKIP() << "needs 2 GPUs, found " << devices;
  std::shared_ptr<Store> store = MakeInProcessStore();
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      // Each rank names its GPU (CommOptions.device) from a thread whose
      // current device is 0, which the communicator leaves as it is.
      CommOptions options;
      options.rank = rank;
      options.size = 2;
      options.timeout = absl::Seconds(60);
      options.device = rank;
      absl::StatusOr<std::unique_ptr<Communicator>> comm = MakeNcclCommunicator(store, options);
      if (!comm.ok()) {
        errors[rank] = comm.status().ToString();
        return;
      }
      int current = -1;
      if (cudaGetDevice(&current) != cudaSuccess || current != 0) {
        errors[rank] = absl::StrCat("current device after MakeNcclCommunicator: ", current, ", want 0");
        return;
      }
      if (cudaSetDevice(rank) != cudaSuccess) {  // the buffer on the rank's GPU
        errors[rank] = "cudaSetDevice";
        return;
      }
      const size_t n = 1000003;
      std::vector<float> x(n, static_cast<float>(rank + 1));
      absl::StatusOr<DeviceBuffer<float>> d = DeviceBuffer<float>::FromHost(x);
      if (!d.ok()) {
        errors[rank] = d.status().ToString();
        return;
      }
      absl::Status st = (*comm)->AllReduce(d->data(), n, CommDType::kF32, ReduceOp::kSum);
      if (st.ok()) st = d->CopyToHost(absl::MakeSpan(x));
      if (!st.ok()) {
        errors[rank] = st.ToString();
        return;
      }
      for (float v : x) {
        if (v != 3.0f) {
          errors[rank] = absl::StrCat("AllReduce gave ", v);
          return;
        }
      }
      st = (*comm)->Barrier();
      if (!st.ok()) errors[rank] = st.ToString();
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
}

}  // namespace
}  // namespace shrinkray
