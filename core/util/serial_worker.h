// A thread that runs tasks one at a time, in the order they were submitted,
// so that the caller's I/O (writing a finished layer, reading the next one)
// overlaps its compute. At most `max_waiting` tasks wait behind the running
// one; Submit blocks beyond that, which bounds what the waiting tasks hold
// (a layer's tensors each). The first task that fails stops the rest: later
// tasks are dropped unrun and Submit / Wait return that failure. InLine()
// gives the same contract with no thread (each task runs inside Submit), so a
// caller can turn the overlap off without a second code path.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/status/status.h"

namespace shrinkray {

class SerialWorker {
 public:
  explicit SerialWorker(int max_waiting = 1);
  static std::unique_ptr<SerialWorker> InLine();
  // Runs what is still queued (unless a task failed), then joins: a caller
  // that returns early on an error of its own still gets its queued writes.
  ~SerialWorker();
  SerialWorker(const SerialWorker&) = delete;
  SerialWorker& operator=(const SerialWorker&) = delete;

  // Queues `task`; blocks while max_waiting tasks wait. Returns the first
  // failure of an earlier task (and drops `task`), else OK.
  absl::Status Submit(std::function<absl::Status()> task);
  // Blocks until every submitted task has run; the first failure, else OK.
  absl::Status Wait();
  // Without blocking: every submitted task has run and none failed, so their
  // results can be used before the Wait that would collect them.
  bool DoneAndOk() const;
  // Seconds the caller spent blocked in Submit and Wait: what the overlap did
  // not hide (in line: all of the tasks' time).
  double blocked_seconds() const;

 private:
  struct InLineTag {};
  explicit SerialWorker(InLineTag);
  void Loop();

  const size_t max_waiting_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::deque<std::function<absl::Status()>> queue_;
  bool running_ = false;  // a task is out of the queue and running
  bool stopping_ = false;
  absl::Status failure_;
  double blocked_seconds_ = 0.0;
  std::thread thread_;  // last: started once the members above exist; none in line
};

}  // namespace shrinkray
