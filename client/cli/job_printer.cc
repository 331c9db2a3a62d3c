#include "client/cli/job_printer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "core/pipeline/job_runner.h"
#include "google/protobuf/util/json_util.h"

namespace shrinkray::cli {
namespace {

constexpr char kEraseLine[] = "\r\033[K";  // back to column 0, erase to end of line
// Label column of the key/value blocks (get, result).
constexpr int kLabelWidth = 12;

std::string Field(const std::string& label, const std::string& value) {
  return absl::StrFormat("%-*s%s\n", kLabelWidth, label, value);
}

// 0..1 -> the whole number of hundredths done, rounded down. The epsilon keeps
// 0.29 * 100 = 28.999... from printing 28%.
int Percent(double fraction) {
  fraction = std::clamp(std::isfinite(fraction) ? fraction : 0.0, 0.0, 1.0);
  return static_cast<int>(std::floor(fraction * 100.0 + 1e-9));
}

std::string OutputFormatName(v1::OutputFormat format) {
  switch (format) {
    case v1::OUTPUT_FORMAT_GPTQ: return "gptq";
    case v1::OUTPUT_FORMAT_COMPRESSED_TENSORS: return "compressed-tensors";
    default: return "dense";
  }
}

std::string DeviceName(v1::DevicePreference device) {
  switch (device) {
    case v1::DEVICE_PREFERENCE_CPU: return "cpu";
    case v1::DEVICE_PREFERENCE_CUDA: return "cuda";
    default: return "any";
  }
}

// Map fields iterate in no fixed order; output must be stable.
std::string SortedPairs(const google::protobuf::Map<std::string, std::string>& map, const char* separator) {
  std::map<std::string, std::string> sorted(map.begin(), map.end());
  return absl::StrJoin(sorted, separator, absl::PairFormatter("="));
}

std::string OrDefault(int64_t value) { return value == 0 ? "default" : absl::StrCat(value); }

}  // namespace

std::string JobStateName(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_QUEUED: return "queued";
    case v1::JOB_STATE_RUNNING: return "running";
    case v1::JOB_STATE_SUCCEEDED: return "succeeded";
    case v1::JOB_STATE_FAILED: return "failed";
    case v1::JOB_STATE_CANCELLED: return "cancelled";
    default: return "unknown";
  }
}

absl::StatusOr<v1::JobState> ParseJobState(const std::string& name) {
  for (v1::JobState state : {v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED,
                             v1::JOB_STATE_FAILED, v1::JOB_STATE_CANCELLED}) {
    if (name == JobStateName(state)) return state;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--state must be queued, running, succeeded, failed or cancelled, got '", name, "'"));
}

bool IsFinalState(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED || state == v1::JOB_STATE_CANCELLED;
}

std::string ProgressBar(double fraction, int width) {
  fraction = std::clamp(std::isfinite(fraction) ? fraction : 0.0, 0.0, 1.0);
  const int done = std::min(width, static_cast<int>(std::floor(fraction * width + 1e-9)));
  std::string bar;
  for (int i = 0; i < width; ++i) bar += i < done ? "\u2588" : "\u2591";
  return bar;
}

std::string FormatProgress(const v1::JobProgress& progress) {
  const std::string stage = progress.stage().empty() ? "job" : progress.stage();
  if (progress.num_layers() > 0) {
    const double fraction = static_cast<double>(progress.layer()) / progress.num_layers();
    // A distill stage counts optimizer steps; the others decoder layers.
    return absl::StrFormat("[%s] %s %d/%d %s %d%%", stage, stage == "distill" ? "step" : "layer", progress.layer(),
                           progress.num_layers(),
                           ProgressBar(fraction), Percent(fraction));
  }
  return absl::StrFormat("[%s] %s %d%% of job", stage, ProgressBar(progress.fraction()),
                         Percent(progress.fraction()));
}

std::string FormatBytes(int64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes) / 1024.0;
  int unit = 0;
  while (value >= 1024.0 && unit < 3) {
    value /= 1024.0;
    ++unit;
  }
  return absl::StrFormat("%.2f %s", value, kUnits[unit]);
}

std::string FormatTimestamp(const google::protobuf::Timestamp& time) {
  if (time.seconds() == 0 && time.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::FromUnixSeconds(time.seconds()), absl::UTCTimeZone());
}

std::string FormatEvalTable(const google::protobuf::RepeatedPtrField<v1::EvalRow>& rows) {
  // With sizes (servers that report them): the results table of core, one
  // row per stage, as the job's output folder has it.
  const bool sized = std::any_of(rows.begin(), rows.end(), [](const v1::EvalRow& r) { return r.bytes() > 0; });
  if (sized) {
    std::vector<JobEvalRow> table;
    for (const v1::EvalRow& r : rows) {
      JobEvalRow row;
      row.model = r.model();
      row.ppl = r.perplexity();
      row.change_percent = r.perplexity_change_percent();
      row.scored_tokens = r.scored_tokens();
      row.mean_kl = r.mean_kl();
      row.top1_agreement = r.top1_agreement();
      row.bytes = r.bytes();
      row.parameters = r.parameters();
      row.bits_per_parameter = r.bits_per_parameter();
      row.compression_ratio = r.compression_ratio();
      row.retention = r.retention();
      row.seconds = r.seconds();
      table.push_back(std::move(row));
    }
    return FormatResultsTable(table);
  }
  std::string out = absl::StrFormat("%-10s %10s %9s %10s %7s\n", "model", "ppl", "change", "KL", "top-1");
  for (const v1::EvalRow& row : rows) {
    const bool original = row.model() == "original";
    absl::StrAppend(&out, absl::StrFormat("%-10s %10.4f %9s %10s %7s\n", row.model(), row.perplexity(),
                                          original ? "-" : absl::StrFormat("%+.2f%%", row.perplexity_change_percent()),
                                          original ? "-" : absl::StrFormat("%.4g", row.mean_kl()),
                                          original ? "-" : absl::StrFormat("%.4f", row.top1_agreement())));
  }
  return out;
}

std::string FormatStageSeconds(const google::protobuf::Map<std::string, double>& seconds) {
  static const std::vector<std::string> kOrder = {"load", "calibrate", "distill", "write", "evaluate"};
  std::vector<std::string> parts;
  for (const std::string& stage : kOrder) {
    if (auto it = seconds.find(stage); it != seconds.end()) parts.push_back(absl::StrFormat("%s %.2f", stage, it->second));
  }
  const std::map<std::string, double> rest(seconds.begin(), seconds.end());
  for (const auto& [stage, value] : rest) {
    if (std::find(kOrder.begin(), kOrder.end(), stage) == kOrder.end()) {
      parts.push_back(absl::StrFormat("%s %.2f", stage, value));
    }
  }
  return absl::StrJoin(parts, ", ");
}

std::string FormatResult(const v1::JobResult& result) {
  std::string out = Field("output", result.output_path());
  if (result.input_bytes() > 0) {
    out += Field("size", absl::StrFormat("%s -> %s (%.1f%%)", FormatBytes(result.input_bytes()),
                                         FormatBytes(result.output_bytes()),
                                         100.0 * static_cast<double>(result.output_bytes()) /
                                             static_cast<double>(result.input_bytes())));
  } else {
    out += Field("size", FormatBytes(result.output_bytes()));
  }
  if (result.num_matrices() > 0) {
    out += Field("matrices", absl::StrFormat("%d, mean error %.6g", result.num_matrices(), result.mean_matrix_error()));
  }
  if (!result.stage_seconds().empty()) out += Field("seconds", FormatStageSeconds(result.stage_seconds()));
  if (!result.eval().empty()) out += FormatEvalTable(result.eval());
  return out;
}

std::string FormatJob(const v1::Job& job) {
  const v1::JobSpec& spec = job.spec();
  std::string state = JobStateName(job.state());
  if (job.attempt() > 1) absl::StrAppend(&state, " (attempt ", job.attempt(), ")");
  if (spec.dry_run()) absl::StrAppend(&state, " (dry run)");

  std::string out = Field("job", job.id());
  out += Field("state", state);
  out += Field("model", spec.model_path());
  out += Field("target", absl::StrCat(spec.output_path(), " [", OutputFormatName(spec.output_format()), "]",
                                      spec.overwrite() ? " (overwrite)" : ""));
  out += Field("calibration", absl::StrCat(spec.calibration().path(), " (", OrDefault(spec.calibration().num_samples()),
                                           " x ", OrDefault(spec.calibration().seqlen()), ", seed ",
                                           spec.calibration().seed(), ")"));
  if (!spec.evaluation().path().empty()) {
    out += Field("evaluation", absl::StrCat(spec.evaluation().path(), " (seqlen ", OrDefault(spec.evaluation().seqlen()),
                                            spec.evaluation().max_chars() > 0
                                                ? absl::StrCat(", first ", spec.evaluation().max_chars(), " chars")
                                                : std::string(),
                                            ")"));
  }
  out += Field("workers", absl::StrCat(std::max(1, spec.num_workers()), " on ", DeviceName(spec.device()),
                                       job.worker_ids().empty()
                                           ? std::string()
                                           : absl::StrCat(": ", absl::StrJoin(job.worker_ids(), ", "))));
  if (!spec.labels().empty()) out += Field("labels", SortedPairs(spec.labels(), ", "));
  out += Field("created", FormatTimestamp(job.create_time()));
  if (job.has_start_time()) out += Field("started", FormatTimestamp(job.start_time()));
  if (job.has_end_time()) out += Field("ended", FormatTimestamp(job.end_time()));
  if (job.state() == v1::JOB_STATE_RUNNING && job.has_progress()) {
    out += Field("progress", absl::StrFormat("%s (job %d%%)", FormatProgress(job.progress()),
                                             Percent(job.progress().fraction())));
  }
  if (job.state() == v1::JOB_STATE_SUCCEEDED && job.has_result()) out += FormatResult(job.result());
  if ((job.state() == v1::JOB_STATE_FAILED || job.state() == v1::JOB_STATE_CANCELLED) && job.has_error()) {
    const absl::Status outcome = JobOutcome(job);
    out += Field("error", absl::StrCat(absl::StatusCodeToString(outcome.code()), ": ",
                                       job.error().message().empty() ? "-" : job.error().message()));
  }
  return out;
}

std::string FormatJobTable(const std::vector<v1::Job>& jobs) {
  std::vector<std::vector<std::string>> rows = {{"ID", "STATE", "CREATED", "PROGRESS", "MODEL"}};
  for (const v1::Job& job : jobs) {
    std::string progress = "-";
    if (job.state() == v1::JOB_STATE_RUNNING) {
      progress = absl::StrCat(Percent(job.progress().fraction()), "%",
                              job.progress().stage().empty() ? "" : " ", job.progress().stage());
    } else if (job.state() == v1::JOB_STATE_SUCCEEDED) {
      progress = "100%";
    }
    rows.push_back({job.id(), JobStateName(job.state()), FormatTimestamp(job.create_time()), progress,
                    job.spec().model_path()});
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  std::string out;
  for (const auto& row : rows) {
    for (size_t c = 0; c + 1 < row.size(); ++c) {
      absl::StrAppend(&out, absl::StrFormat("%-*s  ", static_cast<int>(widths[c]), row[c]));
    }
    absl::StrAppend(&out, row.back(), "\n");
  }
  return out;
}

absl::StatusOr<std::string> ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  std::string json;
  if (auto status = google::protobuf::util::MessageToJsonString(message, &json, options); !status.ok()) {
    return absl::InternalError(absl::StrCat("cannot print as JSON: ", status.ToString()));
  }
  if (json.empty() || json.back() != '\n') json += '\n';
  return json;
}

absl::Status JobOutcome(const v1::Job& job) {
  const std::string& message = job.error().message();
  switch (job.state()) {
    case v1::JOB_STATE_SUCCEEDED:
      return absl::OkStatus();
    case v1::JOB_STATE_FAILED: {
      // A failed job always reports an error code; UNKNOWN covers a server
      // that left it unset (0 would read as success).
      const int code = job.error().code();
      const auto status_code = code > 0 && code <= 16 ? static_cast<absl::StatusCode>(code)
                                                      : absl::StatusCode::kUnknown;
      return absl::Status(status_code, absl::StrCat("job ", job.id(), " failed", message.empty() ? "" : ": ",
                                                    message));
    }
    case v1::JOB_STATE_CANCELLED:
      return absl::CancelledError(absl::StrCat("job ", job.id(), " cancelled", message.empty() ? "" : ": ", message));
    default:
      return absl::FailedPreconditionError(
          absl::StrCat("job ", job.id(), " is ", JobStateName(job.state()), ", not finished"));
  }
}

void WatchPrinter::SetShownState(const std::string& job_id, v1::JobState state) {
  job_id_ = job_id;
  shown_state_ = state;
}

std::string WatchPrinter::Line(const std::string& text) {
  if (!tty_ || progress_line_.empty()) return absl::StrCat(text, "\n");
  // Erase the progress line, print above it, then draw it again underneath.
  return absl::StrCat(kEraseLine, text, "\n", progress_line_);
}

std::string WatchPrinter::Finish() {
  std::string out = tty_ && !progress_line_.empty() ? "\n" : "";
  progress_line_.clear();
  progress_stage_.clear();
  return out;
}

std::string WatchPrinter::StateLine(v1::JobState state, const std::string& detail) {
  shown_state_ = state;
  // A new state starts a new progress history (a re-queued job runs again).
  std::string out = Finish();
  absl::StrAppend(&out, "job ", job_id_, " ", JobStateName(state), detail.empty() ? "" : ": ", detail, "\n");
  return out;
}

std::string WatchPrinter::Progress(const v1::JobProgress& progress) {
  const std::string line = FormatProgress(progress);
  if (line == progress_line_) return "";  // nothing new to show
  if (!tty_) {
    // A training stage counts hundreds of steps: through a pipe, a line per
    // tenth of the stage (and its last step) rather than one per step.
    if (progress.stage() == "distill" && progress.num_layers() > 0) {
      const int tenth = static_cast<int>(10L * progress.layer() / progress.num_layers());
      if (progress.stage() == progress_stage_ && tenth == progress_tenth_) return "";
      progress_tenth_ = tenth;
    }
    progress_line_ = line;
    progress_stage_ = progress.stage();
    return absl::StrCat(line, "\n");
  }
  // Keep the finished stage's line on screen; redraw within a stage.
  std::string out = !progress_line_.empty() && progress.stage() != progress_stage_ ? "\n" : "";
  absl::StrAppend(&out, kEraseLine, line);
  progress_line_ = line;
  progress_stage_ = progress.stage();
  return out;
}

std::string WatchPrinter::OnSnapshot(const v1::Job& job) {
  job_id_ = job.id();
  std::string out;
  if (job.state() != shown_state_) {
    std::string detail;
    if (job.state() == v1::JOB_STATE_RUNNING) {
      detail = absl::StrCat("attempt ", std::max(1, job.attempt()));
      if (!job.worker_ids().empty()) absl::StrAppend(&detail, " on ", absl::StrJoin(job.worker_ids(), ", "));
    }
    out += StateLine(job.state(), detail);
  }
  if (job.state() == v1::JOB_STATE_RUNNING && job.has_progress() &&
      (!job.progress().stage().empty() || job.progress().fraction() > 0)) {
    out += Progress(job.progress());
  }
  return out;
}

std::string WatchPrinter::OnEvent(const v1::JobEvent& event) {
  switch (event.kind_case()) {
    case v1::JobEvent::kStateChange:
      if (event.state_change().state() == shown_state_) return "";
      return StateLine(event.state_change().state(), event.state_change().reason());
    case v1::JobEvent::kProgress:
      return Progress(event.progress());
    case v1::JobEvent::kMetric: {
      if (!show_metrics_) return "";
      const v1::MetricPoint& metric = event.metric();
      std::string text = absl::StrFormat("metric %s=%.6g step=%d", metric.name(), metric.value(), metric.step());
      if (!metric.labels().empty()) absl::StrAppend(&text, " ", SortedPairs(metric.labels(), " "));
      return Line(text);
    }
    case v1::JobEvent::kLog: {
      const v1::LogLine& log = event.log();
      return Line(absl::StrCat(log.level().empty() ? "info" : log.level(), ": ",
                               log.worker_id().empty() ? "" : log.worker_id() + ": ", log.text()));
    }
    default:
      return "";  // an event kind newer than this client
  }
}

std::string WatchPrinter::Note(const std::string& line) { return Line(line); }

}  // namespace shrinkray::cli
