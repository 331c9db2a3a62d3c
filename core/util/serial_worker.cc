#include "core/util/serial_worker.h"

#include <algorithm>
#include <chrono>
#include <utility>

namespace shrinkray {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

SerialWorker::SerialWorker(int max_waiting)
    : max_waiting_(static_cast<size_t>(std::max(max_waiting, 0))), thread_([this] { Loop(); }) {}

SerialWorker::SerialWorker(InLineTag) : max_waiting_(0) {}

std::unique_ptr<SerialWorker> SerialWorker::InLine() { return std::unique_ptr<SerialWorker>(new SerialWorker(InLineTag{})); }

SerialWorker::~SerialWorker() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

absl::Status SerialWorker::Submit(std::function<absl::Status()> task) {
  const auto start = std::chrono::steady_clock::now();
  if (!thread_.joinable()) {  // in line
    if (!failure_.ok()) return failure_;
    absl::Status status = task();
    task = nullptr;
    blocked_seconds_ += SecondsSince(start);
    if (!status.ok()) failure_ = status;
    return status;
  }
  std::unique_lock<std::mutex> lock(mu_);
  // In flight after this one: at most the running task and max_waiting_.
  changed_.wait(lock, [&] { return !failure_.ok() || queue_.size() + (running_ ? 1 : 0) <= max_waiting_; });
  blocked_seconds_ += SecondsSince(start);
  if (!failure_.ok()) return failure_;
  queue_.push_back(std::move(task));
  changed_.notify_all();
  return absl::OkStatus();
}

absl::Status SerialWorker::Wait() {
  const auto start = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait(lock, [&] { return queue_.empty() && !running_; });
  blocked_seconds_ += SecondsSince(start);
  return failure_;
}

bool SerialWorker::DoneAndOk() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.empty() && !running_ && failure_.ok();
}

double SerialWorker::blocked_seconds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return blocked_seconds_;
}

void SerialWorker::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing left
    std::function<absl::Status()> task = std::move(queue_.front());
    queue_.pop_front();
    running_ = true;
    lock.unlock();
    absl::Status status = task();
    task = nullptr;  // its captures go before the caller hears it is done
    lock.lock();
    running_ = false;
    if (!status.ok() && failure_.ok()) failure_ = std::move(status);
    if (!failure_.ok()) queue_.clear();
    changed_.notify_all();
  }
}

}  // namespace shrinkray
