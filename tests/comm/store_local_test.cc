// Stores (in-process, file, prefix), the Local communicator and the NCCL
// entry point on this build.
#include <atomic>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/comm/communicator.h"
#include "core/comm/store.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray {
namespace {

std::vector<uint8_t> Bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

class StoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::shared_ptr<Store> Make() {
    if (GetParam() == "file") return MakeFileStore((testing::MakeTempDir("comm-store") / "kv").string());
    if (GetParam() == "prefix") return MakePrefixStore(MakeInProcessStore(), "job-7/attempt-0");
    return MakeInProcessStore();
  }
};

TEST_P(StoreTest, SetGetOverwrite) {
  std::shared_ptr<Store> store = Make();
  ASSERT_TRUE(store->Set("a", Bytes("one")).ok());
  absl::StatusOr<std::vector<uint8_t>> v = store->Get("a", absl::Seconds(1));
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, Bytes("one"));
  ASSERT_TRUE(store->Set("a", Bytes("two!")).ok());  // last write wins
  EXPECT_EQ(*store->Get("a", absl::Seconds(1)), Bytes("two!"));
  ASSERT_TRUE(store->Set("empty", {}).ok());
  v = store->Get("empty", absl::ZeroDuration());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->empty());
}

TEST_P(StoreTest, AwkwardKeysAndBinaryValues) {
  std::shared_ptr<Store> store = Make();
  const std::vector<std::string> keys = {"", ".", "..", "a/b/../c", "/abs", "sp ace", "%41", "A", "a",
                                         std::string("nul\0byte", 8), std::string(300, 'k')};
  std::vector<uint8_t> binary(256);
  for (int i = 0; i < 256; ++i) binary[i] = static_cast<uint8_t>(i);
  for (size_t i = 0; i < keys.size(); ++i) {
    std::vector<uint8_t> value = binary;
    value.push_back(static_cast<uint8_t>(i));
    ASSERT_TRUE(store->Set(keys[i], value).ok()) << i;
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    absl::StatusOr<std::vector<uint8_t>> v = store->Get(keys[i], absl::ZeroDuration());
    ASSERT_TRUE(v.ok()) << i << ": " << v.status();
    ASSERT_EQ(v->size(), 257u) << i;
    EXPECT_EQ(v->back(), static_cast<uint8_t>(i)) << "key " << i << " collided with another";
  }
}

TEST_P(StoreTest, GetOfAKeyNobodySetsTimesOut) {
  std::shared_ptr<Store> store = Make();
  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<uint8_t>> v = store->Get("nobody/sets/this", absl::Milliseconds(300));
  const absl::Duration took = absl::Now() - start;
  EXPECT_TRUE(absl::IsDeadlineExceeded(v.status())) << v.status();
  EXPECT_NE(v.status().message().find("nobody/sets/this"), absl::string_view::npos) << v.status();
  EXPECT_GE(took, absl::Milliseconds(290));
  EXPECT_LT(took, absl::Seconds(5));
}

TEST_P(StoreTest, WaitNamesOnlyTheMissingKeys) {
  std::shared_ptr<Store> store = Make();
  ASSERT_TRUE(store->Set("here", Bytes("x")).ok());
  const absl::Status st = store->Wait({"here", "gone-1", "gone-2"}, absl::Milliseconds(100));
  EXPECT_TRUE(absl::IsDeadlineExceeded(st)) << st;
  EXPECT_NE(st.message().find("gone-1"), absl::string_view::npos) << st;
  EXPECT_NE(st.message().find("gone-2"), absl::string_view::npos) << st;
  EXPECT_EQ(st.message().find("here"), absl::string_view::npos) << st;
  EXPECT_TRUE(store->Wait({"here"}, absl::ZeroDuration()).ok());
}

TEST_P(StoreTest, GetWakesWhenAnotherThreadSets) {
  std::shared_ptr<Store> store = Make();
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(100));
    ASSERT_TRUE(store->Set("late", Bytes("hello")).ok());
  });
  absl::StatusOr<std::vector<uint8_t>> v = store->Get("late", absl::Seconds(10));
  setter.join();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, Bytes("hello"));
  EXPECT_TRUE(store->Wait({"late"}, absl::Seconds(1)).ok());
}

// Readers never see a partial value: every value is N copies of byte N.
TEST_P(StoreTest, ReadersNeverSeePartialValues) {
  std::shared_ptr<Store> store = Make();
  ASSERT_TRUE(store->Set("k", std::vector<uint8_t>(1, 1)).ok());
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (int w = 0; w < 2; ++w) {
    writers.emplace_back([&, w] {
      for (int i = 0; !stop.load(); ++i) {
        const uint8_t n = static_cast<uint8_t>(1 + (i * 2 + w) % 250);
        ASSERT_TRUE(store->Set("k", std::vector<uint8_t>(static_cast<size_t>(n) * 1000, n)).ok());
      }
    });
  }
  int checked = 0;
  const absl::Time end = absl::Now() + absl::Milliseconds(300);
  while (absl::Now() < end) {
    absl::StatusOr<std::vector<uint8_t>> v = store->Get("k", absl::Seconds(1));
    ASSERT_TRUE(v.ok()) << v.status();
    ASSERT_FALSE(v->empty());
    const uint8_t n = (*v)[0];
    const size_t want = n == 1 && v->size() == 1 ? 1 : static_cast<size_t>(n) * 1000;
    ASSERT_EQ(v->size(), want) << "torn value";
    for (uint8_t b : *v) ASSERT_EQ(b, n) << "torn value";
    ++checked;
  }
  stop = true;
  for (std::thread& t : writers) t.join();
  EXPECT_GT(checked, 10);
}

INSTANTIATE_TEST_SUITE_P(Kinds, StoreTest, ::testing::Values("in_process", "file", "prefix"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

TEST(FileStoreTest, TwoStoresOnOneDirectoryShareKeysAndLeaveNoTemporaries) {
  const std::filesystem::path dir = testing::MakeTempDir("comm-store") / "kv";
  std::shared_ptr<Store> a = MakeFileStore(dir.string());
  std::shared_ptr<Store> b = MakeFileStore(dir.string());
  ASSERT_TRUE(a->Set("job/1/rank/0", Bytes("addr")).ok());
  absl::StatusOr<std::vector<uint8_t>> v = b->Get("job/1/rank/0", absl::Seconds(1));
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, Bytes("addr"));
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    ++files;
    EXPECT_NE(entry.path().filename().string()[0], '.') << entry.path();  // no temporary left
    EXPECT_EQ(entry.path().filename().string().find('/'), std::string::npos);
  }
  EXPECT_EQ(files, 1);
}

TEST(FileStoreTest, UnwritableDirectoryIsAnError) {
  std::shared_ptr<Store> store = MakeFileStore("/proc/definitely/not/writable");
  const absl::Status st = store->Set("k", Bytes("v"));
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("/proc/definitely/not/writable"), absl::string_view::npos) << st;
}

TEST(PrefixStoreTest, KeysLandUnderThePrefix) {
  std::shared_ptr<Store> base = MakeInProcessStore();
  std::shared_ptr<Store> p = MakePrefixStore(base, "job-3");
  ASSERT_TRUE(p->Set("0", Bytes("x")).ok());
  EXPECT_TRUE(base->Get("job-3/0", absl::ZeroDuration()).ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(base->Get("0", absl::ZeroDuration()).status()));
  const absl::Status st = p->Wait({"1"}, absl::Milliseconds(10));
  EXPECT_NE(st.message().find("job-3/1"), absl::string_view::npos) << st;
}

TEST(CommDTypeTest, SizesAndNames) {
  EXPECT_EQ(CommDTypeSize(CommDType::kF32), 4u);
  EXPECT_EQ(CommDTypeSize(CommDType::kF64), 8u);
  EXPECT_EQ(CommDTypeSize(CommDType::kBF16), 2u);
  EXPECT_EQ(CommDTypeSize(CommDType::kI32), 4u);
  EXPECT_EQ(CommDTypeSize(CommDType::kU8), 1u);
  EXPECT_EQ(CommDTypeName(CommDType::kBF16), "BF16");
  EXPECT_EQ(CommDTypeName(CommDType::kU8), "U8");
}

TEST(LocalCommunicatorTest, CollectivesOfOneRank) {
  std::unique_ptr<Communicator> comm = MakeLocalCommunicator(absl::Seconds(5));
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  EXPECT_EQ(comm->backend(), "local");
  EXPECT_EQ(comm->timeout(), absl::Seconds(5));
  std::vector<float> x = {1.5f, -2.0f, 3.0f};
  ASSERT_TRUE(comm->AllReduce(x.data(), x.size(), CommDType::kF32, ReduceOp::kSum).ok());
  ASSERT_TRUE(comm->AllReduce(x.data(), x.size(), CommDType::kF32, ReduceOp::kMax).ok());
  EXPECT_EQ(x, (std::vector<float>{1.5f, -2.0f, 3.0f}));
  ASSERT_TRUE(comm->Broadcast(x.data(), x.size(), CommDType::kF32, 0).ok());
  EXPECT_EQ(x, (std::vector<float>{1.5f, -2.0f, 3.0f}));
  EXPECT_TRUE(absl::IsInvalidArgument(comm->Broadcast(x.data(), x.size(), CommDType::kF32, 1)));
  std::vector<float> out(3, 0.0f);
  ASSERT_TRUE(comm->AllGather(x.data(), out.data(), 3, CommDType::kF32).ok());
  EXPECT_EQ(out, x);
  std::vector<uint16_t> h = {7, 8}, hout(2, 0);
  ASSERT_TRUE(comm->AllGatherV(h.data(), hout.data(), {2}, CommDType::kBF16).ok());
  EXPECT_EQ(hout, h);
  EXPECT_TRUE(absl::IsInvalidArgument(comm->AllGatherV(h.data(), hout.data(), {1, 1}, CommDType::kBF16)));
  EXPECT_TRUE(absl::IsInvalidArgument(comm->AllReduce(nullptr, 2, CommDType::kF32, ReduceOp::kSum)));
  EXPECT_TRUE(comm->AllReduce(nullptr, 0, CommDType::kF32, ReduceOp::kSum).ok());
  EXPECT_TRUE(comm->Barrier().ok());
}

// Without CUDA the NCCL entry point says so; with CUDA but no GPU it must
// fail cleanly (a Status, no crash). With a GPU: tests/cuda/nccl_communicator_test.cc.
TEST(NcclEntryPointTest, FailsCleanlyWithoutAGpuOrCuda) {
  CommOptions options;
  options.timeout = absl::Seconds(2);
  absl::StatusOr<std::unique_ptr<Communicator>> comm = MakeNcclCommunicator(MakeInProcessStore(), options);
#ifndef SHRINKRAY_HAVE_CUDA
  EXPECT_TRUE(absl::IsUnimplemented(comm.status())) << comm.status();
  EXPECT_NE(comm.status().message().find("built without CUDA"), absl::string_view::npos) << comm.status();
#else
  if (comm.ok()) GTEST_SKIP() << "this machine has a GPU: covered by shrinkray_cuda_tests";
  EXPECT_FALSE(comm.status().ok());
#endif
}

// The backend by name, as the worker's --comm-backend picks it: gloo works
// for one rank, nccl is the host-staged NCCL (Unimplemented without CUDA, a
// clean error without a GPU), anything else names itself.
TEST(HostCommunicatorTest, PicksTheBackendByName) {
  CommOptions options;
  options.timeout = absl::Seconds(2);
  absl::StatusOr<std::unique_ptr<Communicator>> gloo = MakeHostCommunicator("gloo", MakeInProcessStore(), options);
  ASSERT_TRUE(gloo.ok()) << gloo.status();
  EXPECT_EQ((*gloo)->backend(), "gloo");
  absl::StatusOr<std::unique_ptr<Communicator>> nccl = MakeHostCommunicator("nccl", MakeInProcessStore(), options);
#ifndef SHRINKRAY_HAVE_CUDA
  EXPECT_TRUE(absl::IsUnimplemented(nccl.status())) << nccl.status();
#else
  if (nccl.ok()) {
    EXPECT_EQ((*nccl)->backend(), "nccl");
  } else {
    EXPECT_FALSE(nccl.status().ok());
  }
#endif
  const absl::Status other = MakeHostCommunicator("mpi", MakeInProcessStore(), options).status();
  EXPECT_TRUE(absl::IsInvalidArgument(other)) << other;
  EXPECT_NE(other.message().find("gloo or nccl, got 'mpi'"), absl::string_view::npos) << other;
}

}  // namespace
}  // namespace shrinkray
