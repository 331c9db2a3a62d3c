// Serialises writes on one gRPC callback stream: gRPC allows a single
// outstanding write, while the coordinator pushes messages from any thread.
// Messages are queued and written one after another; Close() finishes the
// stream once the queue drains. Shared (shared_ptr) between the reactor and
// whoever pushes, so a push after the client left is harmless.
#pragma once

#include <deque>
#include <functional>
#include <optional>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "grpcpp/support/status.h"

namespace shrinkray {

template <typename Message>
class StreamWriteQueue {
 public:
  using StartWriteFn = std::function<void(const Message*)>;
  using FinishFn = std::function<void(const grpc::Status&)>;

  StreamWriteQueue(StartWriteFn start_write, FinishFn finish)
      : start_write_(std::move(start_write)), finish_(std::move(finish)) {}

  void Push(Message message) {
    absl::MutexLock lock(&mu_);
    if (finished_ || detached_) return;
    queue_.push_back(std::move(message));
    PumpLocked();
  }

  // Finishes with `status` after every queued message is written.
  void Close(const grpc::Status& status) {
    absl::MutexLock lock(&mu_);
    if (closing_.has_value() || finished_ || detached_) return;
    closing_ = status;
    PumpLocked();
  }

  // Finishes at once, dropping what is queued (client cancelled, bad input).
  void Abort(const grpc::Status& status) {
    absl::MutexLock lock(&mu_);
    queue_.clear();
    if (!closing_.has_value()) closing_ = status;
    if (!writing_) PumpLocked();
  }

  void OnWriteDone(bool ok) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      queue_.clear();  // the client is gone; OnCancel/OnDone follow
      if (!closing_.has_value()) closing_ = grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    }
    PumpLocked();
  }

  // The reactor is done: nothing may touch it any more.
  void Detach() {
    absl::MutexLock lock(&mu_);
    detached_ = true;
    queue_.clear();
  }

 private:
  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_ || detached_) return;
    if (!queue_.empty()) {
      current_ = std::move(queue_.front());
      queue_.pop_front();
      writing_ = true;
      start_write_(&current_);
      return;
    }
    if (closing_.has_value()) {
      finished_ = true;
      finish_(*closing_);
    }
  }

  absl::Mutex mu_;
  StartWriteFn start_write_;
  FinishFn finish_;
  std::deque<Message> queue_ ABSL_GUARDED_BY(mu_);
  Message current_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool detached_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> closing_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shrinkray
