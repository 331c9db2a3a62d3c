#include "client/cli/job_watch.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"

namespace shrinkray::cli {
namespace {

using Clock = std::chrono::system_clock;

// How long to keep reconnecting without hearing from the coordinator.
constexpr auto kGiveUpAfter = std::chrono::seconds(60);
constexpr auto kFirstBackoff = std::chrono::milliseconds(500);
constexpr auto kMaxBackoff = std::chrono::seconds(8);

void Write(const std::string& text) {
  if (text.empty()) return;
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);  // progress must show as it happens, also through a pipe
}

// Codes that mean "the stream broke", not "this watch cannot work".
bool WorthReconnecting(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:  // the server closed the stream before the end (shutdown)
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:  // e.g. RST_STREAM from a dying server
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kDeadlineExceeded:
      return true;
    default:
      return false;
  }
}

}  // namespace

absl::Status WatchUntilFinished(CompressionClient& client, const std::string& job_id, WatchPrinter& printer,
                                bool reconnect_at_once, bool history) {
  int64_t last_sequence = 0;
  bool finished = false;    // a final state was seen
  bool have_final_job = false;
  v1::Job final_job;
  bool broken = false;      // reconnecting after a break
  auto on_message = [&](const v1::WatchJobResponse& message) -> absl::Status {
    if (broken) {
      Write(printer.Note("reconnected"));
      broken = false;
    }
    if (message.has_job()) {
      Write(printer.OnSnapshot(message.job()));
      if (IsFinalState(message.job().state())) {
        finished = have_final_job = true;
        final_job = message.job();
      }
    } else if (message.has_event()) {
      const v1::JobEvent& event = message.event();
      // After a reconnect the server replays from after_sequence; never show
      // an event twice.
      if (event.sequence() > 0 && event.sequence() <= last_sequence) return absl::OkStatus();
      last_sequence = std::max(last_sequence, event.sequence());
      Write(printer.OnEvent(event));
      if (event.has_state_change() && IsFinalState(event.state_change().state())) finished = true;
    }
    return absl::OkStatus();
  };

  bool heard = reconnect_at_once;  // anything from the coordinator yet
  auto last_news = Clock::now();
  auto backoff = std::chrono::duration_cast<std::chrono::milliseconds>(kFirstBackoff);
  while (true) {
    bool received = false;
    const absl::Status status =
        client.WatchJob(job_id, last_sequence, on_message, &received, history && last_sequence == 0);
    if (finished) break;  // the stream's own end status no longer matters
    if (received) {
      heard = true;
      last_news = Clock::now();
      backoff = kFirstBackoff;
    }
    if (!heard || !WorthReconnecting(status)) {
      Write(printer.Finish());
      if (status.ok()) return absl::UnavailableError(absl::StrCat("watch of job ", job_id, " ended early"));
      return status;
    }
    if (Clock::now() - last_news > kGiveUpAfter) {
      Write(printer.Finish());
      return absl::UnavailableError(absl::StrCat("lost the watch of job ", job_id, " and could not reconnect within ",
                                                 kGiveUpAfter.count(), " s; last error: ", status.ToString()));
    }
    if (!broken) {
      Write(printer.Note(absl::StrCat("watch stream broke (", status.ToString(), "); reconnecting")));
      broken = true;
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min<std::chrono::milliseconds>(backoff * 2, kMaxBackoff);
    // Waits out a restart without spinning; the loop's time check gives up.
    client.WaitForConnected(std::min(Clock::now() + kMaxBackoff, last_news + kGiveUpAfter));
  }

  Write(printer.Finish());
  if (!have_final_job) {
    // A final state change carries no result; the job itself does.
    auto job = client.GetJob(job_id);
    if (!job.ok()) return job.status();
    final_job = *std::move(job);
  }
  if (final_job.state() == v1::JOB_STATE_SUCCEEDED && final_job.has_result()) Write(FormatResult(final_job.result()));
  return JobOutcome(final_job);
}

}  // namespace shrinkray::cli
