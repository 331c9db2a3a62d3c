// Gloo with every rank a thread of this process (one TCP device and event
// loop per rank, loopback), meeting through an in-process store.
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/comm_scenarios.h"
#include "core/comm/communicator.h"
#include "core/comm/store.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

// Runs `body(comm, store)` on `size` threads; returns each rank's error text.
template <typename Body>
std::vector<std::string> OnThreads(int size, absl::Duration timeout, Body body) {
  std::shared_ptr<Store> store = MakePrefixStore(MakeInProcessStore(), "attempt-1");
  std::vector<std::string> errors(size);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < size; ++rank) {
    threads.emplace_back([&, rank] {
      CommOptions options;
      options.rank = rank;
      options.size = size;
      options.timeout = timeout;
      absl::StatusOr<std::unique_ptr<Communicator>> comm = MakeGlooCommunicator(store, options);
      if (!comm.ok()) {
        errors[rank] = comm.status().ToString();
        return;
      }
      errors[rank] = body(**comm, *store);
    });
  }
  for (std::thread& t : threads) t.join();
  return errors;
}

class GlooThreadTest : public ::testing::TestWithParam<int> {};

TEST_P(GlooThreadTest, EveryCollectiveEveryDType) {
  const std::vector<std::string> errors =
      OnThreads(GetParam(), absl::Seconds(30), [](Communicator& comm, Store& store) {
        if (comm.backend() != "gloo") return std::string("backend is ") + comm.backend();
        return comm_test::RunCollectives(comm, store);
      });
  for (size_t r = 0; r < errors.size(); ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

INSTANTIATE_TEST_SUITE_P(Ranks, GlooThreadTest, ::testing::Values(1, 2, 3),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return absl::StrCat(info.param, "Threads");
                         });

// Two of three ranks show up: both must get DeadlineExceeded naming the
// missing rank's key within the timeout (plus slack), not hang.
TEST(GlooThreadTest, MissingRankTimesOutAtRendezvous) {
  std::shared_ptr<Store> store = MakeInProcessStore();
  std::vector<absl::Status> results(2);
  std::vector<absl::Duration> took(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      CommOptions options;
      options.rank = rank;
      options.size = 3;
      options.timeout = absl::Seconds(1);
      const absl::Time start = absl::Now();
      results[rank] = MakeGlooCommunicator(store, options).status();
      took[rank] = absl::Now() - start;
    });
  }
  for (std::thread& t : threads) t.join();
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_TRUE(absl::IsDeadlineExceeded(results[rank])) << results[rank];
    EXPECT_NE(results[rank].message().find("gloo/2"), absl::string_view::npos) << results[rank];
    EXPECT_NE(results[rank].message().find(absl::StrCat("rank ", rank, " of 3")), absl::string_view::npos)
        << results[rank];
    EXPECT_LT(took[rank], absl::Seconds(10));
  }
}

// A new attempt on a fresh prefix of the same store works after the first
// communicator is gone (what a job retry does).
TEST(GlooThreadTest, SecondAttemptOnAFreshPrefix) {
  std::shared_ptr<Store> base = MakeInProcessStore();
  for (const char* attempt : {"attempt-1", "attempt-2"}) {
    std::vector<std::string> errors(2);
    std::vector<std::thread> threads;
    for (int rank = 0; rank < 2; ++rank) {
      threads.emplace_back([&, rank] {
        CommOptions options;
        options.rank = rank;
        options.size = 2;
        options.timeout = absl::Seconds(10);
        absl::StatusOr<std::unique_ptr<Communicator>> comm =
            MakeGlooCommunicator(MakePrefixStore(base, attempt), options);
        if (!comm.ok()) {
          errors[rank] = comm.status().ToString();
          return;
        }
        int32_t x = rank + 1;
        const absl::Status st = (*comm)->AllReduce(&x, 1, CommDType::kI32, ReduceOp::kSum);
        if (!st.ok() || x != 3) errors[rank] = absl::StrCat(st.ToString(), " x=", x);
      });
    }
    for (std::thread& t : threads) t.join();
    EXPECT_EQ(errors[0], "") << attempt;
    EXPECT_EQ(errors[1], "") << attempt;
  }
}

// Ranks that disagree (a caller's bug: other count, dtype, op, root, counts
// or collective) all get InvalidArgument naming both calls, and stay usable.
// Unchecked, gloo 2022 would terminate the process from its event loop.
TEST(GlooThreadTest, RanksThatDisagreeGetInvalidArgumentNotACrash) {
  std::vector<std::vector<absl::Status>> results(3);
  std::vector<std::string> errors = OnThreads(3, absl::Seconds(5), [&](Communicator& comm, Store&) {
    const int r = comm.rank();
    std::vector<float> x(r == 0 ? 10 : 20000, 1.0f), out(3 * 20000);
    std::vector<absl::Status>& mine = results[r];
    mine.push_back(comm.AllReduce(x.data(), x.size(), CommDType::kF32, ReduceOp::kSum));
    mine.push_back(comm.AllReduce(x.data(), 10, r == 2 ? CommDType::kI32 : CommDType::kF32, ReduceOp::kSum));
    mine.push_back(comm.AllReduce(x.data(), 10, CommDType::kF32, r == 1 ? ReduceOp::kMax : ReduceOp::kSum));
    mine.push_back(comm.Broadcast(x.data(), 10, CommDType::kF32, r == 0 ? 1 : 0));
    mine.push_back(comm.AllGatherV(x.data(), out.data(), r == 0 ? std::vector<size_t>{1, 2, 3}
                                                                 : std::vector<size_t>{2, 1, 3},
                                   CommDType::kF32));
    mine.push_back(r == 2 ? comm.Barrier() : comm.AllGather(x.data(), out.data(), 10, CommDType::kF32));
    mine.push_back(comm.AllGather(x.data(), out.data(), r == 1 ? 0 : 10, CommDType::kF32));
    // Still in step: a correct call works.
    float y = 1.0f;
    const absl::Status ok = comm.AllReduce(&y, 1, CommDType::kF32, ReduceOp::kSum);
    if (!ok.ok() || y != 3.0f) return absl::StrCat("after the mismatches: ", ok.ToString(), " y=", y);
    return std::string();
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(errors[r], "") << "rank " << r;
    ASSERT_EQ(results[r].size(), 7u);
    for (size_t i = 0; i < results[r].size(); ++i) {
      EXPECT_TRUE(absl::IsInvalidArgument(results[r][i])) << "rank " << r << " call " << i << ": " << results[r][i];
      EXPECT_NE(results[r][i].message().find("ranks disagree"), absl::string_view::npos) << results[r][i];
    }
  }
  std::cout << "e.g. " << results[0][0] << "\n";
}

TEST(GlooThreadTest, RejectsBadOptions) {
  CommOptions options;
  options.rank = 2;
  options.size = 2;
  EXPECT_TRUE(absl::IsInvalidArgument(MakeGlooCommunicator(MakeInProcessStore(), options).status()));
  options.rank = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(MakeGlooCommunicator(nullptr, options).status()));
  options.timeout = absl::ZeroDuration();
  EXPECT_TRUE(absl::IsInvalidArgument(MakeGlooCommunicator(MakeInProcessStore(), options).status()));
}

TEST(GlooThreadTest, UnresolvableInterfaceIsAnErrorNotAnException) {
  CommOptions options;
  options.interface_address = "no-such-host.invalid";
  options.timeout = absl::Seconds(1);
  const absl::Status st = MakeGlooCommunicator(MakeInProcessStore(), options).status();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("gloo rendezvous on rank 0 of 1"), absl::string_view::npos) << st;
}

}  // namespace
}  // namespace shrinkray
