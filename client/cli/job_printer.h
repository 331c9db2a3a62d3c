// Text for the service commands (submit, watch, get, list, cancel): pure
// functions from the CompressionService messages to what the terminal shows,
// so every line is testable without a server. No I/O here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shrinkray/v1/compression.pb.h"

namespace shrinkray::cli {

// "queued", "running", "succeeded", "failed", "cancelled" ("unknown" otherwise):
// the words the --state flag takes, too.
std::string JobStateName(v1::JobState state);
// The inverse of JobStateName; InvalidArgument naming --state otherwise.
absl::StatusOr<v1::JobState> ParseJobState(const std::string& name);
bool IsFinalState(v1::JobState state);

// `width` cells of "█" (done) and "░" (left); fraction is clamped to 0..1 and
// rounded down, so a bar is full only when the work is.
std::string ProgressBar(double fraction, int width = 10);

// "[calibrate] layer 3/5 ██████░░░░ 60%" while a stage counts layers;
// "[load] ██░░░░░░░░ 20% of job" (the job's fraction) when it does not.
std::string FormatProgress(const v1::JobProgress& progress);

// "1023 B", "4.00 KiB", "1.50 MiB", "2.25 GiB".
std::string FormatBytes(int64_t bytes);

// "2024-05-01 12:34:56 UTC", or "-" when the timestamp is unset.
std::string FormatTimestamp(const google::protobuf::Timestamp& time);

// The evaluation table: one row per EvalRow, columns model, ppl, change %, KL,
// top-1. The original's change/KL/top-1 are by definition 0/0/1 and print "-".
// Rows with sizes (bytes > 0) print as core's results table instead
// (FormatResultsTable: stage, bytes, bits/param, ratio, ppl, retention, KL,
// top-1, seconds), one row per stage of a distill chain.
std::string FormatEvalTable(const google::protobuf::RepeatedPtrField<v1::EvalRow>& rows);

// Stage seconds in pipeline order (load, calibrate, write, evaluate, then the
// rest by name): "load 0.12, calibrate 3.40, write 0.20".
std::string FormatStageSeconds(const google::protobuf::Map<std::string, double>& seconds);

// What a finished job produced: output path, sizes, matrices, eval table,
// stage seconds. Multi-line, ends with '\n'.
std::string FormatResult(const v1::JobResult& result);

// `shrinkray get`: id, state, spec summary, times, workers, progress, then the
// result (SUCCEEDED) or the error (FAILED / CANCELLED).
std::string FormatJob(const v1::Job& job);

// `shrinkray list`: a header and one row per job (id, state, created,
// progress, model), columns as wide as their widest cell.
std::string FormatJobTable(const std::vector<v1::Job>& jobs);

// The message as indented proto3 JSON (lowerCamelCase names, as
// MessageToJsonString writes them), ending with '\n'.
absl::StatusOr<std::string> ToJson(const google::protobuf::Message& message);

// How a finished job ends the command: OK for SUCCEEDED; the job's error code
// (UNKNOWN if unset) and message for FAILED; CANCELLED with the reason.
absl::Status JobOutcome(const v1::Job& job);

// `shrinkray watch` output, one message at a time. On a terminal the progress
// line is redrawn in place (\r, erase to end of line) and a new line is started
// for each stage; elsewhere (a pipe, a log file) each progress event is one
// plain line, except in a distill stage (hundreds of steps): a line per tenth
// of the steps and the last. Every method returns the text to write, in order.
class WatchPrinter {
 public:
  explicit WatchPrinter(bool tty, bool show_metrics = false) : tty_(tty), show_metrics_(show_metrics) {}

  // The state already shown elsewhere (submit printed "job <id> queued"), so
  // the snapshot that opens the stream does not repeat it.
  void SetShownState(const std::string& job_id, v1::JobState state);

  // The job snapshot that opens every WatchJob stream (also after a reconnect):
  // the state if it changed, and the progress while RUNNING.
  std::string OnSnapshot(const v1::Job& job);
  std::string OnEvent(const v1::JobEvent& event);
  // A line that is not from the job (reconnect notices): clears the progress
  // line first and redraws it after.
  std::string Note(const std::string& line);
  // Ends an open progress line; call before printing the result or an error.
  std::string Finish();

 private:
  std::string StateLine(v1::JobState state, const std::string& detail);
  std::string Line(const std::string& text);  // a full line, around the progress line
  std::string Progress(const v1::JobProgress& progress);

  bool tty_;
  bool show_metrics_;
  std::string job_id_;
  v1::JobState shown_state_ = v1::JOB_STATE_UNSPECIFIED;
  std::string progress_stage_;  // the stage of the progress line last shown
  std::string progress_line_;   // the progress line last shown; "" when none is open
  int progress_tenth_ = -1;     // pipe: the tenth of the training stage last shown
};

}  // namespace shrinkray::cli
