#include "core/util/serial_worker.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <thread>
#include <vector>

namespace shrinkray {
namespace {

TEST(SerialWorkerTest, RunsTasksInSubmissionOrder) {
  std::vector<int> ran;
  SerialWorker worker(/*max_waiting=*/2);
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(worker.Submit([&ran, i] {
      ran.push_back(i);
      return absl::OkStatus();
    }).ok());
  }
  ASSERT_TRUE(worker.Wait().ok());
  ASSERT_EQ(ran.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(ran[i], i);
}

TEST(SerialWorkerTest, SubmitBlocksBeyondMaxWaiting) {
  // Tasks that wait for a gate: with max_waiting 1 the second Submit returns
  // (one running, one waiting) and the third blocks until the gate opens.
  std::promise<void> gate;
  std::shared_future<void> open = gate.get_future().share();
  std::atomic<int> finished{0};
  SerialWorker worker(/*max_waiting=*/1);
  auto task = [&] {
    open.wait();
    ++finished;
    return absl::OkStatus();
  };
  ASSERT_TRUE(worker.Submit(task).ok());
  ASSERT_TRUE(worker.Submit(task).ok());
  std::atomic<bool> third_returned{false};
  std::thread third([&] {
    EXPECT_TRUE(worker.Submit(task).ok());
    third_returned = true;
  });
  // Nothing has finished, so the third cannot have been queued.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(third_returned.load());
  EXPECT_EQ(finished.load(), 0);
  gate.set_value();
  third.join();
  EXPECT_TRUE(third_returned.load());
  ASSERT_TRUE(worker.Wait().ok());
  EXPECT_EQ(finished.load(), 3);
  EXPECT_GT(worker.blocked_seconds(), 0.0);
}

TEST(SerialWorkerTest, FirstFailureStopsLaterTasksAndIsReturned) {
  std::promise<void> gate;
  std::shared_future<void> open = gate.get_future().share();
  std::vector<int> ran;
  {
    SerialWorker worker(/*max_waiting=*/3);
    ASSERT_TRUE(worker.Submit([&] {
      open.wait();
      ran.push_back(1);
      return absl::OkStatus();
    }).ok());
    ASSERT_TRUE(worker.Submit([&] {
      ran.push_back(2);
      return absl::DataLossError("layer 2: disk full");
    }).ok());
    ASSERT_TRUE(worker.Submit([&] {
      ran.push_back(3);
      return absl::OkStatus();
    }).ok());
    gate.set_value();
    const absl::Status waited = worker.Wait();
    EXPECT_EQ(waited.code(), absl::StatusCode::kDataLoss);
    EXPECT_EQ(waited.message(), "layer 2: disk full");
    bool fourth_ran = false;
    const absl::Status submitted = worker.Submit([&] {
      fourth_ran = true;
      return absl::OkStatus();
    });
    EXPECT_EQ(submitted.code(), absl::StatusCode::kDataLoss);
    EXPECT_FALSE(fourth_ran);
  }
  EXPECT_EQ(ran, (std::vector<int>{1, 2}));
}

TEST(SerialWorkerTest, DestructorRunsWhatIsQueued) {
  // A caller that returns early on its own error still gets its writes.
  std::vector<int> ran;
  {
    SerialWorker worker(/*max_waiting=*/4);
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(worker.Submit([&ran, i] {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        ran.push_back(i);
        return absl::OkStatus();
      }).ok());
    }
  }
  EXPECT_EQ(ran, (std::vector<int>{0, 1, 2, 3}));
}

TEST(SerialWorkerTest, TaskCapturesAreReleasedBeforeWaitReturns) {
  // A task owns a layer's tensors; they must be gone once Wait returns.
  auto held = std::make_shared<int>(7);
  std::weak_ptr<int> watch = held;
  SerialWorker worker(/*max_waiting=*/0);
  ASSERT_TRUE(worker.Submit([held = std::move(held)] { return *held == 7 ? absl::OkStatus() : absl::InternalError("held"); }).ok());
  ASSERT_TRUE(worker.Wait().ok());
  EXPECT_TRUE(watch.expired());
}

TEST(SerialWorkerTest, InLineRunsEachTaskInsideSubmit) {
  std::unique_ptr<SerialWorker> worker = SerialWorker::InLine();
  const std::thread::id caller = std::this_thread::get_id();
  std::vector<int> ran;
  ASSERT_TRUE(worker->Submit([&] {
    EXPECT_EQ(std::this_thread::get_id(), caller);
    ran.push_back(1);
    return absl::OkStatus();
  }).ok());
  EXPECT_EQ(ran, (std::vector<int>{1}));  // before any Wait
  const absl::Status failed = worker->Submit([] { return absl::ResourceExhaustedError("no space"); });
  EXPECT_EQ(failed.code(), absl::StatusCode::kResourceExhausted);
  const absl::Status dropped = worker->Submit([&] {
    ran.push_back(3);
    return absl::OkStatus();
  });
  EXPECT_EQ(dropped.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(worker->Wait().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ran, (std::vector<int>{1}));
}

TEST(SerialWorkerTest, DoneAndOkIsTrueOnlyOnceEveryTaskRanWithoutFailure) {
  std::promise<void> gate;
  std::shared_future<void> open = gate.get_future().share();
  SerialWorker worker(/*max_waiting=*/1);
  EXPECT_TRUE(worker.DoneAndOk());  // nothing submitted
  std::promise<void> started;
  ASSERT_TRUE(worker.Submit([&] {
    started.set_value();
    open.wait();
    return absl::OkStatus();
  }).ok());
  started.get_future().wait();
  EXPECT_FALSE(worker.DoneAndOk());  // running (out of the queue), never blocks
  gate.set_value();
  while (!worker.DoneAndOk()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(worker.Submit([] { return absl::DataLossError("bad shard"); }).ok());
  ASSERT_EQ(worker.Wait().code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(worker.DoneAndOk());  // finished, but failed: its results are not there

  std::unique_ptr<SerialWorker> in_line = SerialWorker::InLine();
  ASSERT_TRUE(in_line->Submit([] { return absl::OkStatus(); }).ok());
  EXPECT_TRUE(in_line->DoneAndOk());
}

}  // namespace
}  // namespace shrinkray
