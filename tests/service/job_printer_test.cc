// The `shrinkray` service commands' text: progress lines, the eval table, the
// job and list views, the watch output on a terminal and in a pipe.
#include "client/cli/job_printer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

namespace shrinkray::cli {
namespace {

v1::JobProgress Progress(const std::string& stage, int layer, int num_layers, double fraction) {
  v1::JobProgress progress;
  progress.set_stage(stage);
  progress.set_layer(layer);
  progress.set_num_layers(num_layers);
  progress.set_fraction(fraction);
  return progress;
}

v1::JobResult Result() {
  v1::JobResult result;
  result.set_output_path("/shared/out/stories-w4");
  result.set_input_bytes(4 * 1024 * 1024);
  result.set_output_bytes(1024 * 1024 + 512 * 1024);
  result.set_num_matrices(35);
  result.set_mean_matrix_error(0.0123456);
  v1::EvalRow* original = result.add_eval();
  original->set_model("original");
  original->set_perplexity(4.08123);
  original->set_scored_tokens(5000);
  original->set_top1_agreement(1.0);
  v1::EvalRow* compressed = result.add_eval();
  compressed->set_model("compressed");
  compressed->set_perplexity(4.12341);
  compressed->set_perplexity_change_percent(1.0345);
  compressed->set_scored_tokens(5000);
  compressed->set_mean_kl(0.00123);
  compressed->set_top1_agreement(0.98123);
  (*result.mutable_stage_seconds())["write"] = 0.2;
  (*result.mutable_stage_seconds())["load"] = 0.125;
  (*result.mutable_stage_seconds())["calibrate"] = 3.4;
  (*result.mutable_stage_seconds())["evaluate"] = 1.1;
  (*result.mutable_stage_seconds())["queue"] = 0.5;
  return result;
}

v1::Job Job(const std::string& id, v1::JobState state) {
  v1::Job job;
  job.set_id(id);
  job.set_state(state);
  job.mutable_spec()->set_model_path("/shared/models/stories260K");
  job.mutable_create_time()->set_seconds(1714566896);  // 2024-05-01 12:34:56 UTC
  return job;
}

v1::JobEvent StateEvent(int64_t sequence, v1::JobState state, const std::string& reason = "") {
  v1::JobEvent event;
  event.set_sequence(sequence);
  event.mutable_state_change()->set_state(state);
  event.mutable_state_change()->set_reason(reason);
  return event;
}

v1::JobEvent ProgressEvent(int64_t sequence, const v1::JobProgress& progress) {
  v1::JobEvent event;
  event.set_sequence(sequence);
  *event.mutable_progress() = progress;
  return event;
}

v1::JobEvent LogEvent(int64_t sequence, const std::string& level, const std::string& text,
                      const std::string& worker = "") {
  v1::JobEvent event;
  event.set_sequence(sequence);
  event.mutable_log()->set_level(level);
  event.mutable_log()->set_text(text);
  event.mutable_log()->set_worker_id(worker);
  return event;
}

TEST(JobPrinterTest, StateNamesRoundTrip) {
  EXPECT_EQ(JobStateName(v1::JOB_STATE_QUEUED), "queued");
  EXPECT_EQ(JobStateName(v1::JOB_STATE_RUNNING), "running");
  EXPECT_EQ(JobStateName(v1::JOB_STATE_SUCCEEDED), "succeeded");
  EXPECT_EQ(JobStateName(v1::JOB_STATE_FAILED), "failed");
  EXPECT_EQ(JobStateName(v1::JOB_STATE_CANCELLED), "cancelled");
  EXPECT_EQ(JobStateName(v1::JOB_STATE_UNSPECIFIED), "unknown");
  EXPECT_EQ(*ParseJobState("failed"), v1::JOB_STATE_FAILED);
  absl::StatusOr<v1::JobState> bad = ParseJobState("done");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("--state"), absl::string_view::npos);
  EXPECT_TRUE(IsFinalState(v1::JOB_STATE_CANCELLED));
  EXPECT_FALSE(IsFinalState(v1::JOB_STATE_RUNNING));
}

TEST(JobPrinterTest, ProgressBarRoundsDownAndClamps) {
  EXPECT_EQ(ProgressBar(0.0), "░░░░░░░░░░");
  EXPECT_EQ(ProgressBar(0.6), "██████░░░░");
  EXPECT_EQ(ProgressBar(0.99), "█████████░");
  EXPECT_EQ(ProgressBar(1.0), "██████████");
  EXPECT_EQ(ProgressBar(1.7), "██████████");
  EXPECT_EQ(ProgressBar(-1.0, 4), "░░░░");
  EXPECT_EQ(ProgressBar(0.3, 10), "███░░░░░░░");  // 0.3 * 10 = 2.9999...
}

TEST(JobPrinterTest, ProgressLines) {
  EXPECT_EQ(FormatProgress(Progress("calibrate", 3, 5, 0.45)), "[calibrate] layer 3/5 ██████░░░░ 60%");
  EXPECT_EQ(FormatProgress(Progress("calibrate", 5, 5, 0.8)), "[calibrate] layer 5/5 ██████████ 100%");
  EXPECT_EQ(FormatProgress(Progress("load", 0, 0, 0.29)), "[load] ██░░░░░░░░ 29% of job");
  // A distill stage counts optimizer steps.
  EXPECT_EQ(FormatProgress(Progress("distill", 3, 6, 0.3)), "[distill] step 3/6 █████░░░░░ 50%");
  EXPECT_EQ(FormatProgress(Progress("", 0, 0, 0.0)), "[job] ░░░░░░░░░░ 0% of job");
}

TEST(JobPrinterTest, Bytes) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(4096), "4.00 KiB");
  EXPECT_EQ(FormatBytes(1536 * 1024), "1.50 MiB");
  EXPECT_EQ(FormatBytes(int64_t{9} << 30), "9.00 GiB");
}

TEST(JobPrinterTest, Timestamp) {
  google::protobuf::Timestamp time;
  EXPECT_EQ(FormatTimestamp(time), "-");
  time.set_seconds(1714566896);
  EXPECT_EQ(FormatTimestamp(time), "2024-05-01 12:34:56 UTC");
}

TEST(JobPrinterTest, ResultsTableWhenRowsHaveSizes) {
  google::protobuf::RepeatedPtrField<v1::EvalRow> rows;
  const char* names[] = {"original", "distill", "gptq"};
  const int64_t bytes[] = {1000, 600, 150};
  for (int i = 0; i < 3; ++i) {
    v1::EvalRow* r = rows.Add();
    r->set_model(names[i]);
    r->set_bytes(bytes[i]);
    r->set_parameters(250);
    r->set_bits_per_parameter(8.0 * bytes[i] / 250);
    r->set_compression_ratio(1000.0 / bytes[i]);
    r->set_perplexity(4.0 + i);
    r->set_retention(4.0 / (4.0 + i));
    r->set_mean_kl(i == 0 ? 0.0 : 0.1 * i);
    r->set_top1_agreement(i == 0 ? 1.0 : 0.9);
    r->set_seconds(i == 0 ? 0.0 : 2.5);
  }
  const std::string table = FormatEvalTable(rows);
  EXPECT_THAT(table, ::testing::HasSubstr("stage"));
  EXPECT_THAT(table, ::testing::HasSubstr("retention"));
  EXPECT_THAT(table, ::testing::HasSubstr("6.67x"));
  EXPECT_THAT(table, ::testing::HasSubstr("0.6667"));
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 4);
}

TEST(JobPrinterTest, EvalTable) {
  EXPECT_EQ(FormatEvalTable(Result().eval()),
            "model             ppl    change         KL   top-1\n"
            "original       4.0812         -          -       -\n"
            "compressed     4.1234    +1.03%    0.00123  0.9812\n");
}

TEST(JobPrinterTest, StageSecondsInPipelineOrder) {
  EXPECT_EQ(FormatStageSeconds(Result().stage_seconds()),
            "load 0.12, calibrate 3.40, write 0.20, evaluate 1.10, queue 0.50");
}

TEST(JobPrinterTest, Result) {
  EXPECT_EQ(FormatResult(Result()),
            "output      /shared/out/stories-w4\n"
            "size        4.00 MiB -> 1.50 MiB (37.5%)\n"
            "matrices    35, mean error 0.0123456\n"
            "seconds     load 0.12, calibrate 3.40, write 0.20, evaluate 1.10, queue 0.50\n"
            "model             ppl    change         KL   top-1\n"
            "original       4.0812         -          -       -\n"
            "compressed     4.1234    +1.03%    0.00123  0.9812\n");
  v1::JobResult dry;  // a dry run: nothing written, no sizes known
  EXPECT_EQ(FormatResult(dry), "output      \nsize        0 B\n");
}

TEST(JobPrinterTest, RunningJob) {
  v1::Job job = Job("j-1", v1::JOB_STATE_RUNNING);
  v1::JobSpec* spec = job.mutable_spec();
  spec->set_output_path("/shared/out/w4");
  spec->set_output_format(v1::OUTPUT_FORMAT_GPTQ);
  spec->mutable_calibration()->set_path("/shared/calib.txt");
  spec->mutable_calibration()->set_num_samples(128);
  spec->mutable_calibration()->set_seed(7);
  spec->set_num_workers(2);
  spec->set_device(v1::DEVICE_PREFERENCE_CUDA);
  (*spec->mutable_labels())["team"] = "ml";
  (*spec->mutable_labels())["run"] = "a";
  job.set_attempt(2);
  job.add_worker_ids("w-0");
  job.add_worker_ids("w-1");
  job.mutable_start_time()->set_seconds(1714566900);
  *job.mutable_progress() = Progress("calibrate", 3, 5, 0.45);
  EXPECT_EQ(FormatJob(job),
            "job         j-1\n"
            "state       running (attempt 2)\n"
            "model       /shared/models/stories260K\n"
            "target      /shared/out/w4 [gptq]\n"
            "calibration /shared/calib.txt (128 x default, seed 7)\n"
            "workers     2 on cuda: w-0, w-1\n"
            "labels      run=a, team=ml\n"
            "created     2024-05-01 12:34:56 UTC\n"
            "started     2024-05-01 12:35:00 UTC\n"
            "progress    [calibrate] layer 3/5 ██████░░░░ 60% (job 45%)\n");
}

TEST(JobPrinterTest, FailedAndSucceededJobs) {
  v1::Job failed = Job("j-2", v1::JOB_STATE_FAILED);
  failed.mutable_error()->set_code(static_cast<int>(absl::StatusCode::kResourceExhausted));
  failed.mutable_error()->set_message("out of memory on w-0");
  const std::string text = FormatJob(failed);
  EXPECT_NE(text.find("state       failed\n"), std::string::npos) << text;
  EXPECT_NE(text.find("error       RESOURCE_EXHAUSTED: out of memory on w-0\n"), std::string::npos) << text;

  v1::Job done = Job("j-3", v1::JOB_STATE_SUCCEEDED);
  *done.mutable_result() = Result();
  done.mutable_spec()->set_dry_run(true);
  const std::string done_text = FormatJob(done);
  EXPECT_NE(done_text.find("state       succeeded (dry run)\n"), std::string::npos) << done_text;
  EXPECT_NE(done_text.find("compressed     4.1234    +1.03%    0.00123  0.9812\n"), std::string::npos) << done_text;
}

TEST(JobPrinterTest, JobTable) {
  v1::Job running = Job("0123456789abcdef", v1::JOB_STATE_RUNNING);
  *running.mutable_progress() = Progress("calibrate", 3, 5, 0.45);
  v1::Job queued = Job("j-2", v1::JOB_STATE_QUEUED);
  queued.mutable_spec()->set_model_path("/m");
  v1::Job done = Job("j-3", v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(FormatJobTable({running, queued, done}),
            "ID                STATE      CREATED                  PROGRESS       MODEL\n"
            "0123456789abcdef  running    2024-05-01 12:34:56 UTC  45% calibrate  /shared/models/stories260K\n"
            "j-2               queued     2024-05-01 12:34:56 UTC  -              /m\n"
            "j-3               succeeded  2024-05-01 12:34:56 UTC  100%           /shared/models/stories260K\n");
  EXPECT_EQ(FormatJobTable({}), "ID  STATE  CREATED  PROGRESS  MODEL\n");
}

TEST(JobPrinterTest, OutcomeOfFinishedJobs) {
  EXPECT_TRUE(JobOutcome(Job("a", v1::JOB_STATE_SUCCEEDED)).ok());

  v1::Job failed = Job("b", v1::JOB_STATE_FAILED);
  failed.mutable_error()->set_code(static_cast<int>(absl::StatusCode::kNotFound));
  failed.mutable_error()->set_message("/shared/models/x: no config.json");
  EXPECT_EQ(JobOutcome(failed), absl::NotFoundError("job b failed: /shared/models/x: no config.json"));
  failed.mutable_error()->set_code(0);  // a server that forgot the code must not read as success
  EXPECT_EQ(JobOutcome(failed).code(), absl::StatusCode::kUnknown);

  v1::Job cancelled = Job("c", v1::JOB_STATE_CANCELLED);
  cancelled.mutable_error()->set_message("user asked");
  EXPECT_EQ(JobOutcome(cancelled), absl::CancelledError("job c cancelled: user asked"));
  EXPECT_EQ(JobOutcome(Job("d", v1::JOB_STATE_RUNNING)).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(JobPrinterTest, Json) {
  absl::StatusOr<std::string> json = ToJson(Job("j-1", v1::JOB_STATE_RUNNING));
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_NE(json->find("\"id\": \"j-1\""), std::string::npos) << *json;
  EXPECT_NE(json->find("\"state\": \"JOB_STATE_RUNNING\""), std::string::npos) << *json;
  EXPECT_NE(json->find("\"createTime\": \"2024-05-01T12:34:56Z\""), std::string::npos) << *json;
  EXPECT_EQ(json->back(), '\n');
}

TEST(WatchPrinterTest, PipeGetsOnePlainLinePerUpdate) {
  WatchPrinter printer(/*tty=*/false);
  std::string out = printer.OnSnapshot(Job("j-1", v1::JOB_STATE_QUEUED));
  out += printer.OnEvent(StateEvent(1, v1::JOB_STATE_RUNNING, "assigned to w-0"));
  out += printer.OnEvent(ProgressEvent(2, Progress("load", 0, 0, 0.05)));
  out += printer.OnEvent(ProgressEvent(3, Progress("calibrate", 1, 2, 0.3)));
  out += printer.OnEvent(ProgressEvent(4, Progress("calibrate", 1, 2, 0.3)));  // same line: not repeated
  out += printer.OnEvent(LogEvent(5, "warning", "kept 1 matrix dense", "w-0"));
  out += printer.OnEvent(ProgressEvent(6, Progress("calibrate", 2, 2, 0.6)));
  v1::JobEvent metric;
  metric.mutable_metric()->set_name("matrix_error");
  out += printer.OnEvent(metric);  // metrics only with --metrics
  out += printer.OnEvent(LogEvent(7, "", "writing"));
  out += printer.OnEvent(StateEvent(8, v1::JOB_STATE_SUCCEEDED));
  out += printer.Finish();
  EXPECT_EQ(out,
            "job j-1 queued\n"
            "job j-1 running: assigned to w-0\n"
            "[load] ░░░░░░░░░░ 5% of job\n"
            "[calibrate] layer 1/2 █████░░░░░ 50%\n"
            "warning: w-0: kept 1 matrix dense\n"
            "[calibrate] layer 2/2 ██████████ 100%\n"
            "info: writing\n"
            "job j-1 succeeded\n");
}

TEST(WatchPrinterTest, PipeShowsTrainingStepsByTenths) {
  WatchPrinter printer(/*tty=*/false);
  printer.SetShownState("j-1", v1::JOB_STATE_RUNNING);
  std::string out;
  for (int step = 0; step <= 40; ++step) {
    out += printer.OnEvent(ProgressEvent(step + 1, Progress("distill", step, 40, 0.6 * step / 40)));
  }
  out += printer.OnEvent(ProgressEvent(50, Progress("gptq", 1, 2, 0.8)));
  out += printer.OnEvent(ProgressEvent(51, Progress("gptq", 2, 2, 0.9)));
  // Steps 0, 4, 8, ... 36 open a tenth each; 40 is the last.
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 11 + 2) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("[distill] step 0/40 "));
  EXPECT_THAT(out, ::testing::HasSubstr("[distill] step 4/40 "));
  EXPECT_THAT(out, ::testing::Not(::testing::HasSubstr("[distill] step 5/40 ")));
  EXPECT_THAT(out, ::testing::HasSubstr("[distill] step 40/40 ██████████ 100%\n[gptq] layer 1/2"));
}

TEST(WatchPrinterTest, TerminalRedrawsTheProgressLine) {
  WatchPrinter printer(/*tty=*/true);
  printer.SetShownState("j-1", v1::JOB_STATE_QUEUED);  // submit printed "job j-1 queued"
  v1::Job running = Job("j-1", v1::JOB_STATE_RUNNING);
  running.set_attempt(1);
  running.add_worker_ids("w-0");
  *running.mutable_progress() = Progress("calibrate", 1, 4, 0.2);
  EXPECT_EQ(printer.OnSnapshot(running),
            "job j-1 running: attempt 1 on w-0\n"
            "\r\033[K[calibrate] layer 1/4 ██░░░░░░░░ 25%");
  // Same stage: redrawn in place.
  EXPECT_EQ(printer.OnEvent(ProgressEvent(1, Progress("calibrate", 2, 4, 0.4))),
            "\r\033[K[calibrate] layer 2/4 █████░░░░░ 50%");
  // A log line goes above the progress line, which is drawn again.
  EXPECT_EQ(printer.OnEvent(LogEvent(2, "info", "layer 2 done")),
            "\r\033[Kinfo: layer 2 done\n[calibrate] layer 2/4 █████░░░░░ 50%");
  // A new stage keeps the old line and starts a new one.
  EXPECT_EQ(printer.OnEvent(ProgressEvent(3, Progress("write", 0, 0, 0.9))),
            "\n\r\033[K[write] █████████░ 90% of job");
  EXPECT_EQ(printer.Note("reconnected"), "\r\033[Kreconnected\n[write] █████████░ 90% of job");
  // The snapshot after a reconnect repeats nothing already shown.
  v1::Job again = running;
  *again.mutable_progress() = Progress("write", 0, 0, 0.9);
  EXPECT_EQ(printer.OnSnapshot(again), "");
  // A final state ends the progress line first.
  EXPECT_EQ(printer.OnEvent(StateEvent(4, v1::JOB_STATE_FAILED, "worker lost")), "\njob j-1 failed: worker lost\n");
  EXPECT_EQ(printer.Finish(), "");
}

TEST(WatchPrinterTest, MetricsWhenAsked) {
  WatchPrinter printer(/*tty=*/false, /*show_metrics=*/true);
  v1::JobEvent metric;
  metric.mutable_metric()->set_name("matrix_error");
  metric.mutable_metric()->set_value(0.0125);
  metric.mutable_metric()->set_step(3);
  (*metric.mutable_metric()->mutable_labels())["module"] = "layers.0.self_attn.q_proj";
  EXPECT_EQ(printer.OnEvent(metric), "metric matrix_error=0.0125 step=3 module=layers.0.self_attn.q_proj\n");
}

}  // namespace
}  // namespace shrinkray::cli
